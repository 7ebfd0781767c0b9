//! Sites and their API keys: creating a site (its key is shown once), rotating and revoking
//! keys, and authenticating `Authorization: Bearer <key>` with a short-lived cache.
//!
//! A key is `ors_` followed by 48 hex digits (192 random bits). Only its SHA-256 is stored,
//! with the first 12 characters (`key_prefix`) so operators can tell keys apart. Random keys
//! of that length need no slow password hash: the hash only keeps a database leak from
//! revealing usable keys.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Error, Result};

const KEY_PREFIX: &str = "ors_";
const KEY_RANDOM_BYTES: usize = 24;
const SHOWN_PREFIX_LEN: usize = 12;

/// A site as the ingest path knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The site's id.
    pub id: Uuid,
    /// Its name, which is also the `site` routing field.
    pub name: String,
}

/// A freshly made key: the only time the key itself exists outside the caller.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedKey {
    /// The site's id.
    pub site_id: Uuid,
    /// The site's name.
    pub site: String,
    /// The API key; shown once, never stored.
    pub api_key: String,
}

/// One row of the site list (no secrets).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SiteInfo {
    /// The site's id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// The first characters of its key.
    pub key_prefix: String,
    /// When its key was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When the site was created.
    pub created_at: DateTime<Utc>,
}

fn new_key() -> String {
    let mut bytes = [0u8; KEY_RANDOM_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{KEY_PREFIX}{hex}")
}

fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn shown_prefix(key: &str) -> String {
    key.chars().take(SHOWN_PREFIX_LEN).collect()
}

/// Creates site `name` with a new key.
pub async fn create_site(pool: &PgPool, name: &str) -> Result<IssuedKey> {
    let key = new_key();
    let id: Uuid =
        sqlx::query_scalar("INSERT INTO sites (name, api_key_hash, key_prefix) VALUES ($1, $2, $3) RETURNING id")
            .bind(name)
            .bind(&key_hash(&key)[..])
            .bind(shown_prefix(&key))
            .fetch_one(pool)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(d) if d.is_unique_violation() => Error::SiteExists(name.to_owned()),
                sqlx::Error::Database(d) if d.is_check_violation() => Error::BadSiteName(name.to_owned()),
                _ => Error::Database(e),
            })?;
    Ok(IssuedKey { site_id: id, site: name.to_owned(), api_key: key })
}

/// Gives site `name` a new key (the old one stops working, within the cache lifetime) and
/// lifts a revocation.
pub async fn rotate_key(pool: &PgPool, name: &str) -> Result<IssuedKey> {
    let key = new_key();
    let id: Option<Uuid> = sqlx::query_scalar(
        "UPDATE sites SET api_key_hash = $2, key_prefix = $3, revoked_at = NULL, updated_at = now()
         WHERE name = $1 RETURNING id",
    )
    .bind(name)
    .bind(&key_hash(&key)[..])
    .bind(shown_prefix(&key))
    .fetch_optional(pool)
    .await?;
    let id = id.ok_or_else(|| Error::UnknownSite(name.to_owned()))?;
    Ok(IssuedKey { site_id: id, site: name.to_owned(), api_key: key })
}

/// Revokes site `name`'s key: its posts get 401 (within the cache lifetime).
pub async fn revoke_key(pool: &PgPool, name: &str) -> Result<()> {
    let updated =
        sqlx::query("UPDATE sites SET revoked_at = coalesce(revoked_at, now()), updated_at = now() WHERE name = $1")
            .bind(name)
            .execute(pool)
            .await?
            .rows_affected();
    if updated == 0 {
        return Err(Error::UnknownSite(name.to_owned()));
    }
    Ok(())
}

/// Every site, by name.
pub async fn list_sites(pool: &PgPool) -> Result<Vec<SiteInfo>> {
    Ok(sqlx::query_as("SELECT id, name, key_prefix, revoked_at, created_at FROM sites ORDER BY name")
        .fetch_all(pool)
        .await?)
}

/// Authenticates keys against `sites`, remembering answers for `ttl` so the ingest path does
/// not query the database on every post. A revoked or rotated key keeps working for at most
/// `ttl`; unknown keys are not remembered (so a new key works at once).
pub struct SiteKeys {
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], (Site, Instant)>>,
}

/// Entries beyond which the cache is cleared rather than grown (keys are few; this bounds memory
/// if many valid keys are used in a burst).
const MAX_CACHED_KEYS: usize = 10_000;

impl SiteKeys {
    /// A cache whose answers live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, cache: Mutex::new(HashMap::new()) }
    }

    /// The site whose current, unrevoked key is `key`.
    pub async fn authenticate(&self, pool: &PgPool, key: &str) -> Result<Option<Site>> {
        if !key.starts_with(KEY_PREFIX) {
            return Ok(None);
        }
        let hash = key_hash(key);
        if let Some((site, at)) = self.lock().get(&hash)
            && at.elapsed() < self.ttl
        {
            return Ok(Some(site.clone()));
        }
        let row: Option<(Uuid, String)> =
            sqlx::query_as("SELECT id, name FROM sites WHERE api_key_hash = $1 AND revoked_at IS NULL")
                .bind(&hash[..])
                .fetch_optional(pool)
                .await?;
        let mut cache = self.lock();
        match row {
            Some((id, name)) => {
                if cache.len() >= MAX_CACHED_KEYS {
                    cache.clear();
                }
                let site = Site { id, name };
                cache.insert(hash, (site.clone(), Instant::now()));
                Ok(Some(site))
            }
            None => {
                cache.remove(&hash);
                Ok(None)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Site, Instant)>> {
        // The map holds plain data; a panic elsewhere cannot leave it half-updated.
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_prefixed() {
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        assert!(a.starts_with("ors_") && a.len() == 4 + 48, "{a}");
        assert_eq!(shown_prefix(&a).len(), 12);
        assert_ne!(key_hash(&a), key_hash(&b));
    }

    #[sqlx::test(migrations = false)]
    async fn create_rotate_revoke(pool: PgPool) {
        pipeline::db::migrate(&pool).await.expect("migrate");
        let keys = SiteKeys::new(Duration::ZERO);
        let issued = create_site(&pool, "degreefinder").await.expect("created");
        let site = keys.authenticate(&pool, &issued.api_key).await.expect("query");
        assert_eq!(site.map(|s| s.name), Some("degreefinder".to_owned()));
        assert!(matches!(create_site(&pool, "degreefinder").await, Err(Error::SiteExists(_))));
        assert!(matches!(create_site(&pool, "Bad Name").await, Err(Error::BadSiteName(_))));

        let rotated = rotate_key(&pool, "degreefinder").await.expect("rotated");
        assert_eq!(keys.authenticate(&pool, &issued.api_key).await.expect("query"), None, "old key still works");
        assert!(keys.authenticate(&pool, &rotated.api_key).await.expect("query").is_some());

        revoke_key(&pool, "degreefinder").await.expect("revoked");
        assert_eq!(keys.authenticate(&pool, &rotated.api_key).await.expect("query"), None, "revoked key works");
        assert!(matches!(revoke_key(&pool, "nope").await, Err(Error::UnknownSite(_))));
        let listed = list_sites(&pool).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert!(listed[0].revoked_at.is_some() && rotated.api_key.starts_with(&listed[0].key_prefix));
    }
}
