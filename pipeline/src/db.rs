//! The Postgres pool and the schema: PGMQ installation plus the sqlx migrations in
//! `migrations/` at the workspace root.

use sha2::Digest;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

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

/// A stable 64-bit advisory-lock key for `value` in `namespace` (the first 8 bytes of a SHA-256):
/// every replica computes the same key, and a collision only makes two callers take turns.
pub fn advisory_key(namespace: &str, value: &str) -> i64 {
    let digest = sha2::Sha256::new().chain_update(namespace).chain_update([0]).chain_update(value).finalize();
    let mut word = [0u8; 8];
    word.copy_from_slice(&digest[..8]);
    i64::from_le_bytes(word)
}

/// Takes transaction-level advisory locks on `keys`, each once and in sorted order, so callers
/// locking overlapping sets cannot deadlock. They are released at the end of the transaction.
pub async fn lock_in_order(conn: &mut PgConnection, mut keys: Vec<i64>) -> Result<()> {
    keys.sort_unstable();
    keys.dedup();
    sqlx::query("SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k")
        .bind(&keys)
        .execute(conn)
        .await?;
    Ok(())
}

/// Drops and recreates the database `<name of url's database>_<suffix>` next to the one `url`
/// names, migrates it, and returns a pool on it: a scratch database for benchmarks and load
/// tests, so they never touch the real data.
pub async fn scratch_database(url: &str, suffix: &str) -> Result<PgPool> {
    let options: PgConnectOptions = url.parse()?;
    let name = format!("{}_{suffix}", options.get_database().unwrap_or("offer_router"));
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut admin).await?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut admin).await?;
    admin.close().await?;
    let url = options.database(&name).to_url_lossy().to_string();
    let pool = connect(&DbConfig { max_connections: 8, ..DbConfig::new(url) }).await?;
    migrate(&pool).await?;
    Ok(pool)
}
