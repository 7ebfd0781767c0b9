//! The Postgres pool and the schema: PGMQ installation plus the sqlx migrations in
//! `migrations/` at the workspace root.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::Result;
use crate::config::DbConfig;

/// The workspace's SQL migrations, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Opens a pool. Statement logging is turned down to `debug` so a busy worker does not flood
/// the logs at `info`.
pub async fn connect(config: &DbConfig) -> Result<PgPool> {
    let options: PgConnectOptions = config.url.parse()?;
    let options = options
        .application_name("offer-router")
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, std::time::Duration::from_secs(1));
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// How PGMQ got into the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgmqInstall {
    /// `CREATE EXTENSION pgmq` (the server ships the extension, e.g. Supabase).
    Extension,
    /// The SQL embedded in the `pgmq` crate (plain Debian Postgres).
    EmbeddedSql,
}

/// Installs (or upgrades) PGMQ, then applies every pending migration. Safe to run
/// concurrently from several processes and to run again: both steps take advisory locks and
/// skip what is already applied.
pub async fn migrate(pool: &PgPool) -> Result<PgmqInstall> {
    let install = install_pgmq(pool).await?;
    MIGRATOR.run(pool).await?;
    Ok(install)
}

/// Installs PGMQ: the extension where the server has it and it is not already installed as
/// SQL, otherwise the SQL embedded in the `pgmq` crate.
async fn install_pgmq(pool: &PgPool) -> Result<PgmqInstall> {
    let (extension_installed, extension_available, sql_installed): (bool, bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pgmq'),
                EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pgmq'),
                to_regclass('pgmq.__pgmq_migrations') IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    if extension_installed || (extension_available && !sql_installed) {
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pgmq").execute(pool).await?;
        return Ok(PgmqInstall::Extension);
    }
    pgmq::install::install_sql_from_embedded(pool).await?;
    Ok(PgmqInstall::EmbeddedSql)
}
