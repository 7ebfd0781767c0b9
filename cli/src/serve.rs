//! `offer-router serve`: connects, migrates, starts the HTTP server and the workers, and
//! shuts everything down gracefully on SIGTERM or Ctrl-C.

use std::time::Duration;

use anyhow::Context;
use pipeline::config::{ConsumerConfig, ServiceConfig};
use pipeline::consumer::Consumer;
use pipeline::queue::{self, QueueName};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use workers::identify::Identify;

/// Runs the daemon until a shutdown signal arrives.
pub(crate) async fn run(config: ServiceConfig) -> anyhow::Result<()> {
    let pool = pipeline::db::connect(&config.db).await.context("connecting to Postgres")?;
    if config.migrate_on_start {
        let install = pipeline::db::migrate(&pool).await.context("migrating the database")?;
        tracing::info!(pgmq = ?install, "database is up to date");
    }

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding the HTTP server to {}", config.http_addr))?;
    let addr = listener.local_addr().context("reading the HTTP server's address")?;
    tracing::info!("HTTP server listening on http://{addr} (health: /healthz, readiness: /readyz)");

    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let api = api::Api::start(pool.clone(), config.submit.clone(), shutdown.clone())
        .await
        .context("starting the HTTP API")?;
    let http_shutdown = shutdown.clone();
    tasks.spawn(async move { api.serve(listener, http_shutdown).await.context("HTTP server failed") });

    // The pipeline workers, each a consumer loop that stops at the shutdown token. The router,
    // deliver, compile and queue-metrics workers join here as they are built.
    for replica in 0..config.identify_workers {
        let mut consumer_config = ConsumerConfig::new("identify", QueueName::new(queue::fixed::SUBMISSIONS)?)?;
        consumer_config.max_retries = config.identify_max_retries;
        consumer_config.defaults = config.consumer.clone();
        let handler = Identify::new(config.submit.phone_region)?;
        let consumer = Consumer::new(pool.clone(), consumer_config, handler);
        let stop = shutdown.clone();
        tracing::debug!(replica, "starting identify consumer");
        tasks.spawn(async move {
            consumer.run(stop).await;
            Ok(())
        });
    }

    // Run until a signal, or until a task ends on its own (which is an error for a daemon).
    // `biased`: on a signal the tasks end too (they watch the same token); that is a normal stop.
    tokio::select! {
        biased;
        () = shutdown.cancelled() => tracing::info!("shutting down: finishing batches in hand"),
        Some(ended) = tasks.join_next() => {
            shutdown.cancel();
            let result = ended.context("a service task panicked")?;
            result?;
            anyhow::bail!("a service task stopped unexpectedly");
        }
    }
    drain(&mut tasks, config.shutdown_grace).await;
    pool.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Waits for every task to finish, up to `grace`; aborts the rest (their messages reappear
/// after the visibility timeout, so nothing is lost).
async fn drain(tasks: &mut JoinSet<anyhow::Result<()>>, grace: Duration) {
    let all_done = async {
        while let Some(ended) = tasks.join_next().await {
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(error = format!("{error:#}"), "task failed while stopping"),
                Err(error) => tracing::error!(%error, "task panicked while stopping"),
            }
        }
    };
    if tokio::time::timeout(grace, all_done).await.is_err() {
        tracing::warn!(grace_secs = grace.as_secs(), "tasks still running after the grace period; aborting them");
        tasks.abort_all();
    }
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    shutdown.cancel();
}
