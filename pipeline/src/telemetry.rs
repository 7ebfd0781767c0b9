//! Logging and Sentry, set up once per process.
//!
//! Logs go to stderr through `tracing`. With a Sentry DSN, the same `tracing` data also goes
//! to Sentry: `error!` events become Sentry events (with their own fields as context, so an
//! event names its queue, message and partner itself, and the trace of the span around it),
//! `info!` and `warn!` become breadcrumbs, and `info` spans become performance spans when
//! traces are sampled; `sentry::metrics` calls become trace metrics.
//! The log filter (`RUST_LOG`) applies to the logs only: quieting them does not quiet Sentry.
//! Without a DSN nothing leaves the process.
//!
//! Spans per lead ([`LeadSpans`]) go to Sentry directly rather than through `tracing`: a
//! worker handles thousands of leads a second, and a `tracing` span per lead would cost a
//! span in every layer whether or not the batch's trace is sampled.

use sentry::integrations::tracing::{BreadcrumbLayer, ErrorLayer, SpanLayer};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::TelemetryConfig;
use crate::{Error, Result};

/// Keeps Sentry alive; dropping it flushes pending events.
#[must_use = "dropping the guard shuts Sentry down"]
pub struct TelemetryGuard {
    _sentry: Option<sentry::ClientInitGuard>,
}

impl TelemetryGuard {
    /// Whether events are sent to Sentry.
    pub fn sentry_enabled(&self) -> bool {
        self._sentry.as_ref().is_some_and(|guard| guard.is_enabled())
    }
}

/// Installs the global `tracing` subscriber and, with a DSN, the Sentry client. Call once, at
/// the start of `main`.
pub fn init(config: &TelemetryConfig, service: &'static str) -> Result<TelemetryGuard> {
    let sentry = match config.sentry_dsn.as_deref().map(str::trim).filter(|dsn| !dsn.is_empty()) {
        Some(dsn) => {
            dsn.parse::<sentry::types::Dsn>().map_err(|e| Error::Telemetry(format!("invalid SENTRY_DSN: {e}")))?;
            let options = sentry::ClientOptions::new()
                .dsn(dsn)
                // The service and the workspace's version (`release_name!` here would name this crate).
                .release(format!("{service}@{}", env!("CARGO_PKG_VERSION")))
                .environment(config.environment.clone().unwrap_or_else(|| "development".to_owned()))
                .traces_sample_rate(config.traces_sample_rate.clamp(0.0, 1.0))
                .server_name(service);
            Some(sentry::init(options))
        }
        None => None,
    };

    let filter = EnvFilter::try_new(config.log_filter.as_deref().unwrap_or("info"))
        .map_err(|e| Error::Telemetry(format!("invalid log filter: {e}")))?;
    // Errors become Sentry events, info and warnings breadcrumbs on them, spans Sentry spans.
    let sentry_layers = sentry.as_ref().map(|_| {
        ErrorLayer::new()
            .with_filter(LevelFilter::ERROR)
            .and_then(BreadcrumbLayer::new().with_filter(LevelFilter::INFO))
            .and_then(SpanLayer::new().with_filter(LevelFilter::INFO))
    });
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_filter(filter))
        .with(sentry_layers)
        .try_init()
        .map_err(|e| Error::Telemetry(e.to_string()))?;
    Ok(TelemetryGuard { _sentry: sentry })
}

/// The spans of one batch's leads, children of the Sentry span current when it was made (the
/// batch's `tracing` span, entered). Only a sampled batch gets them: otherwise [`start`] does
/// nothing and costs nothing but a branch, so per-lead spans are free when traces are off.
///
/// [`start`]: LeadSpans::start
pub struct LeadSpans {
    parent: Option<sentry::TransactionOrSpan>,
}

impl LeadSpans {
    /// Under the current Sentry span, if there is one and its trace is sampled.
    pub fn current() -> Self {
        #[expect(
            deprecated,
            reason = "`is_sampled` is deprecated for trace propagation, where `false` may mean \"not decided yet\"; \
                      here `true` (the span will be sent) is the answer needed"
        )]
        let parent = sentry::Hub::current().configure_scope(|scope| scope.get_span()).filter(|span| span.is_sampled());
        Self { parent }
    }

    /// Starts the span of one lead: `op` (e.g. `identify.lead`), described by the lead's
    /// submission id, which is also recorded as `submission_id`. It ends when dropped.
    pub fn start(&self, op: &str, submission_id: impl std::fmt::Display) -> LeadSpan {
        LeadSpan(self.parent.as_ref().map(|parent| {
            let id = submission_id.to_string();
            let span = parent.start_child(op, &id);
            span.set_data("submission_id", id.into());
            span
        }))
    }
}

/// One lead's span (see [`LeadSpans`]); finished when dropped.
#[must_use = "the span ends when dropped"]
pub struct LeadSpan(Option<sentry::Span>);

impl LeadSpan {
    /// Records `value` as the span's `key` (nothing when the batch is not sampled; the value
    /// is converted only when it is).
    pub fn record(&self, key: &str, value: impl Into<sentry::protocol::Value>) {
        if let Some(span) = &self.0 {
            span.set_data(key, value.into());
        }
    }

    /// Marks the lead as failed (the span's status becomes `internal_error`).
    pub fn failed(&self) {
        if let Some(span) = &self.0 {
            span.set_status(sentry::protocol::SpanStatus::InternalError);
        }
    }
}

impl Drop for LeadSpan {
    fn drop(&mut self) {
        if let Some(span) = self.0.take() {
            span.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use sentry::protocol::EnvelopeItem;

    use super::*;

    /// Keeps what the client sends.
    #[derive(Default)]
    struct Captured(Mutex<Vec<sentry::Envelope>>);

    impl sentry::Transport for Captured {
        fn send_envelope(&self, envelope: sentry::Envelope) {
            self.0.lock().unwrap().push(envelope);
        }
    }

    /// Runs a batch of two leads under a transaction, at `sample_rate`; returns whether lead
    /// spans were made, and the spans sent.
    fn batch(sample_rate: f32) -> (bool, Vec<sentry::protocol::Span>) {
        let captured = Arc::new(Captured::default());
        let options = sentry::ClientOptions::new()
            .dsn("http://public@127.0.0.1:1/1")
            .transport(Arc::clone(&captured))
            .traces_sample_rate(sample_rate);
        let hub = Arc::new(sentry::Hub::new(Some(Arc::new(options.into())), Arc::default()));
        let made = sentry::Hub::run(hub, || {
            let transaction = sentry::start_transaction(sentry::TransactionContext::new("consumer.batch", "test"));
            sentry::configure_scope(|scope| scope.set_span(Some(transaction.clone().into())));
            let spans = LeadSpans::current();
            for (id, msg_id) in [("lead-1", 1), ("lead-2", 2)] {
                let span = spans.start("test.lead", id);
                span.record("msg_id", msg_id);
                if msg_id == 2 {
                    span.failed();
                }
            }
            transaction.finish();
            spans.parent.is_some()
        });
        let envelopes = captured.0.lock().unwrap();
        let transactions = envelopes.iter().flat_map(|e| e.items()).filter_map(|item| match item {
            EnvelopeItem::Transaction(t) => Some(t.spans.clone()),
            _ => None,
        });
        (made, transactions.flatten().collect())
    }

    #[test]
    fn a_sampled_batch_sends_a_span_per_lead() {
        let (made, spans) = batch(1.0);
        assert!(made);
        let leads: Vec<_> = spans
            .iter()
            .map(|s| (s.op.as_deref(), s.description.as_deref(), s.data["msg_id"].clone(), s.status))
            .collect();
        let failed = Some(sentry::protocol::SpanStatus::InternalError);
        assert_eq!(
            leads,
            [
                (Some("test.lead"), Some("lead-1"), 1.into(), None),
                (Some("test.lead"), Some("lead-2"), 2.into(), failed)
            ]
        );
        assert!(spans.iter().all(|s| s.data["submission_id"] == s.description.as_deref().unwrap_or_default()));
    }

    #[test]
    fn an_unsampled_batch_makes_no_lead_spans() {
        assert_eq!(batch(0.0), (false, Vec::new()));
        sentry::Hub::run(Arc::new(sentry::Hub::new(None, Arc::default())), || {
            assert!(LeadSpans::current().parent.is_none(), "no client, no spans");
        });
    }
}
