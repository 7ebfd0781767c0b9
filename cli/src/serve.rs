//! `offer-router serve`: connects, migrates, starts the HTTP server and the workers, and
//! shuts everything down gracefully on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pipeline::config::{ConsumerConfig, ServiceConfig};
use pipeline::consumer::{Consumer, Handler};
use pipeline::distribution::{PartnerStates, system_clock};
use pipeline::queue::{self, Pgmq, QueueName};
use pipeline::wake::Wakeups;
use router::{ActiveTree, Router};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use workers::compile::Compile;
use workers::deliver::{Breakers, DeliverContext};
use workers::identify::Identify;

use crate::config::Seeds;

/// The daemon's long-running tasks: each ends only at shutdown (or on a failure).
type Tasks = JoinSet<anyhow::Result<()>>;

/// Runs the daemon until a shutdown signal arrives: the database made ready and seeded, the
/// HTTP server, the workers and the side tasks started, then a graceful stop.
pub(crate) async fn run(config: ServiceConfig, seeds: &Seeds) -> anyhow::Result<()> {
    let pool = pipeline::db::connect(&config.db).await.context("connecting to Postgres")?;
    let pgmq = prepare_database(&pool, config.migrate_on_start).await?;
    seed(&pool, seeds).await?;
    let _mock = match seeds.mock_partners {
        Some(addr) => {
            let mock = workers::mock_partner::MockPartner::start(addr)
                .await
                .with_context(|| format!("starting the mock partners on {addr}"))?;
            tracing::info!("mock partners on http://{} (PUT /control/<route> to change one)", mock.addr());
            Some(mock)
        }
        None => None,
    };

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let mut tasks = Tasks::new();
    let registry = Arc::new(pipeline::metrics::Registry::default());
    let addr = spawn_http(&mut tasks, &pool, &config, &registry, &shutdown).await?;
    // One listener wakes every consumer of the process when messages are sent to its queue,
    // and tells the queue metrics which queues were sent to.
    let wakeups = Wakeups::new();
    spawn_until_shutdown(&mut tasks, Arc::clone(&wakeups).listen(pool.clone(), shutdown.clone()));
    spawn_workers(&mut tasks, &pool, &config, &registry, &wakeups, &shutdown)?;
    if let Some(demo) = seeds.demo.clone() {
        let (pool, pgmq, stop) = (pool.clone(), pgmq.clone(), shutdown.clone());
        tasks.spawn(async move {
            if let Err(error) = crate::demo::run(&pool, &pgmq, addr, &demo, stop.clone()).await {
                tracing::error!(error = format!("{error:#}"), "the demo failed");
            }
            // The demo ending is not the service ending.
            stop.cancelled().await;
            Ok(())
        });
    }
    spawn_until_shutdown(
        &mut tasks,
        workers::queue_metrics::run(
            pool.clone(),
            pgmq,
            wakeups,
            Arc::clone(&registry),
            config.queue_metrics,
            shutdown.clone(),
        ),
    );

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

/// Migrates (or, with `NO_MIGRATE`, only reads the schema's PGMQ) and returns what the
/// database's PGMQ offers, read once: the queue metrics are chosen from it.
async fn prepare_database(pool: &PgPool, migrate: bool) -> anyhow::Result<Pgmq> {
    if migrate {
        let pgmq = pipeline::db::migrate(pool).await.context("migrating the database")?;
        tracing::info!(%pgmq, "database is up to date");
        Ok(pgmq)
    } else {
        let pgmq = Pgmq::detect(pool).await.context("reading the database's pgmq")?;
        tracing::info!(%pgmq, "not migrating (NO_MIGRATE)");
        Ok(pgmq)
    }
}

/// Seeds what an empty database lacks: the rules file into a rule set that has no version yet,
/// the partners file into an empty `partners`; and requests a recompile of an active tree built
/// for another decision-module ABI.
async fn seed(pool: &PgPool, seeds: &Seeds) -> anyhow::Result<()> {
    if let Some(file) = &seeds.rules
        && pipeline::rules::version(pool).await? == 0
    {
        let loaded = crate::rules::load_file(pool, file, false).await?;
        tracing::info!(file = %file.display(), rules = loaded.rules, version = loaded.version, "seeded the rule set");
    }
    workers::compile::recompile_if_stale(pool).await.context("checking the active tree's ABI")?;
    if let Some(file) = &seeds.partners
        && pipeline::partners::count(pool).await? == 0
    {
        crate::partners::apply(pool, file).await?;
    }
    Ok(())
}

/// Binds the HTTP server and serves the API and `/metrics` until `shutdown`; returns its address.
async fn spawn_http(
    tasks: &mut Tasks,
    pool: &PgPool,
    config: &ServiceConfig,
    registry: &Arc<pipeline::metrics::Registry>,
    shutdown: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding the HTTP server to {}", config.http_addr))?;
    let addr = listener.local_addr().context("reading the HTTP server's address")?;
    tracing::info!("HTTP server listening on http://{addr} (health: /healthz, readiness: /readyz)");
    let mut api =
        api::Api::start(pool.clone(), config.api.clone(), shutdown.clone()).await.context("starting the HTTP API")?;
    api.router = api.router.merge(api::metrics_router(Arc::clone(registry)));
    let http_shutdown = shutdown.clone();
    tasks.spawn(async move { api.serve(listener, http_shutdown).await.context("HTTP server failed") });
    Ok(addr)
}

/// The pipeline workers, each a consumer loop that stops at the shutdown token: identify,
/// compile, the router (with its tree watcher) and deliver (one consumer per partner).
fn spawn_workers(
    tasks: &mut Tasks,
    pool: &PgPool,
    config: &ServiceConfig,
    registry: &Arc<pipeline::metrics::Registry>,
    wakeups: &Arc<Wakeups>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let consumer_config = |worker: &str, queue: &str, max_retries: u32| -> anyhow::Result<ConsumerConfig> {
        let mut c = ConsumerConfig::new(worker, QueueName::new(queue)?)?;
        c.max_retries = max_retries;
        c.defaults = config.consumer.clone();
        Ok(c)
    };
    // Every consumer of the process reads on these (one round trip a read).
    let readers = queue::Readers::new(pool);
    for _ in 0..config.identify_workers {
        let handler = Identify::new(config.api.submit.phone_region)?;
        let consumer = Consumer::new(
            pool.clone(),
            consumer_config("identify", queue::fixed::SUBMISSIONS, config.identify_max_retries)?,
            handler,
        )
        .with_readers(&readers)
        .with_wakeups(wakeups);
        spawn_consumer(tasks, registry, consumer, shutdown.clone());
    }
    for _ in 0..config.compile_workers {
        let consumer = Consumer::new(pool.clone(), consumer_config("compile", queue::fixed::COMPILE, 3)?, Compile)
            .with_readers(&readers)
            .with_wakeups(wakeups);
        spawn_consumer(tasks, registry, consumer, shutdown.clone());
    }
    if config.router_workers > 0 {
        let tree = Arc::new(ActiveTree::new().context("starting the decision-module engine")?);
        spawn_until_shutdown(tasks, Arc::clone(&tree).watch(pool.clone(), config.tree_poll, shutdown.clone()));
        // The routers' view of partner availability (settings and circuits), trusted as long
        // as deliver trusts its breakers.
        let partners = Arc::new(PartnerStates::new(config.deliver.breaker_cache));
        for _ in 0..config.router_workers {
            let mut router_config = consumer_config("router", queue::fixed::ROUTING, config.routing_max_retries)?;
            router_config.defaults.batch_size = config.router_batch_size;
            let router = Router::with(Arc::clone(&tree), Arc::clone(&partners), system_clock());
            let consumer =
                Consumer::new(pool.clone(), router_config, router).with_readers(&readers).with_wakeups(wakeups);
            spawn_consumer(tasks, registry, consumer, shutdown.clone());
        }
    }
    if config.deliver.workers > 0 {
        let context = DeliverContext {
            pool: pool.clone(),
            readers,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .context("building the HTTP client")?,
            env: Arc::new(config.deliver.env.clone()),
            breakers: Arc::new(Breakers::new(config.deliver.breaker_cache)),
            owner: format!("{}-{}", hostname(), std::process::id()),
            clock: system_clock(),
            claims: workers::deliver::Claims::start(pool),
        };
        spawn_until_shutdown(
            tasks,
            workers::deliver::run(
                context,
                Arc::clone(wakeups),
                Arc::clone(registry),
                config.consumer.clone(),
                config.deliver.workers,
                config.deliver.partners_refresh,
                shutdown.clone(),
            ),
        );
    }
    Ok(())
}

/// Runs `task`, which returns at shutdown.
fn spawn_until_shutdown(tasks: &mut Tasks, task: impl Future<Output = ()> + Send + 'static) {
    tasks.spawn(async move {
        task.await;
        Ok(())
    });
}

/// Runs `consumer` until `shutdown`.
fn spawn_consumer<H: Handler>(
    tasks: &mut Tasks,
    registry: &pipeline::metrics::Registry,
    consumer: Consumer<H>,
    shutdown: CancellationToken,
) {
    let (worker, queue) = consumer.names();
    registry.register(worker, queue, consumer.stats());
    tasks.spawn(async move {
        consumer.run(shutdown).await;
        Ok(())
    });
}

/// Waits for every task to finish, up to `grace`; aborts the rest (their messages reappear
/// after the visibility timeout, so nothing is lost).
async fn drain(tasks: &mut Tasks, grace: Duration) {
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
pub(crate) async fn cancel_on_signal(shutdown: CancellationToken) {
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

/// This machine's name, for probe-lease owners (falls back to `localhost`).
fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "localhost".to_owned())
}
