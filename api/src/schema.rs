//! The field schema of the active rule set, as the ingest path checks offer fields against it:
//! the manifest of the active decision tree, re-read every few seconds. Until a tree is
//! active, offer fields are only checked for shape.

use std::sync::Arc;
use std::time::Duration;

use abi::encode::Encoder;
use abi::manifest::Manifest;
use arc_swap::ArcSwapOption;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// One active schema.
pub(crate) struct Schema {
    /// The decision tree it came from.
    pub(crate) version: i64,
    pub(crate) encoder: Encoder,
}

/// The schema now in force, swapped atomically when a new tree becomes active.
#[derive(Default)]
pub(crate) struct ActiveSchema {
    current: ArcSwapOption<Schema>,
}

impl ActiveSchema {
    pub(crate) fn get(&self) -> Option<Arc<Schema>> {
        self.current.load_full()
    }

    /// Re-reads the active tree if its version changed.
    pub(crate) async fn refresh(&self, pool: &PgPool) -> crate::Result<()> {
        let row: Option<(i64, serde_json::Value)> =
            sqlx::query_as("SELECT version, manifest FROM decision_trees WHERE active").fetch_optional(pool).await?;
        match row {
            None => self.current.store(None),
            Some((version, _)) if self.get().is_some_and(|s| s.version == version) => {}
            Some((version, manifest)) => match serde_json::from_value::<Manifest>(manifest) {
                Ok(manifest) => {
                    let encoder = Encoder::new(&manifest);
                    tracing::info!(version, fields = manifest.fields.len(), "ingest checks offer fields against tree");
                    self.current.store(Some(Arc::new(Schema { version, encoder })));
                }
                Err(error) => tracing::error!(version, %error, "the active tree's manifest does not parse"),
            },
        }
        Ok(())
    }

    /// Refreshes every `every` until `shutdown`.
    pub(crate) async fn keep_fresh(self: Arc<Self>, pool: PgPool, every: Duration, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.refresh(&pool).await {
                tracing::warn!(%error, "cannot read the active rule set's schema");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}
