//! Logging and Sentry, set up once per process.
//!
//! Logs go to stderr through `tracing`. With a Sentry DSN, the same `tracing` data also goes
//! to Sentry: `error!` events become Sentry events (with their fields as context), lower
//! levels become breadcrumbs, and spans become performance spans when traces are sampled.
//! Without a DSN nothing leaves the process.

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
                .maybe_release(sentry::release_name!())
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
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false))
        .with(sentry_layers)
        .try_init()
        .map_err(|e| Error::Telemetry(e.to_string()))?;
    Ok(TelemetryGuard { _sentry: sentry })
}
