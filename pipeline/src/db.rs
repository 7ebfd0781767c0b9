//! The Postgres pool and the schema: PGMQ installation plus the sqlx migrations in
//! `migrations/` at the workspace root.

use sha2::Digest;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::config::DbConfig;
use crate::queue::Pgmq;
use crate::{Error, Result};

/// The workspace's SQL migrations, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Opens a pool. Statement logging is turned down to `debug` so a busy worker does not flood
/// the logs at `info`. Refuses Supabase's transaction pooler (see [`is_transaction_pooler`]).
pub async fn connect(config: &DbConfig) -> Result<PgPool> {
    let options: PgConnectOptions = config.url.parse()?;
    if is_transaction_pooler(options.get_host(), options.get_port()) {
        return Err(Error::TransactionPooler(format!("{}:{}", options.get_host(), options.get_port())));
    }
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

/// Whether `host:port` is one of Supabase's transaction poolers (Supavisor's transaction mode,
/// `*.pooler.supabase.com:6543`, or the dedicated PgBouncer, `db.<ref>.supabase.co:6543`). A
/// transaction pooler hands each transaction a different server connection, so what lives in
/// a session breaks there: the router's `LISTEN` (hot reload), the migrations' session advisory
/// lock, and named prepared statements (sqlx prepares every query).
pub fn is_transaction_pooler(host: &str, port: u16) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    port == 6543 && (host.ends_with(".pooler.supabase.com") || host.ends_with(".supabase.co"))
}

/// Installs (or upgrades) PGMQ, then applies every pending migration, and returns what the
/// database's PGMQ then is ([`Pgmq::detect`]). Safe to run concurrently from several processes
/// and to run again: both steps take locks and skip what is already applied.
pub async fn migrate(pool: &PgPool) -> Result<Pgmq> {
    install_pgmq(pool).await?;
    MIGRATOR.run(pool).await?;
    Pgmq::detect(pool).await
}

/// Installs PGMQ: the extension where the server has it and it is not already installed as
/// SQL, otherwise the SQL embedded in the `pgmq` crate. An installed extension is left at its
/// version (upgrading it is the operator's `ALTER EXTENSION pgmq UPDATE`; on Supabase, the
/// platform's).
async fn install_pgmq(pool: &PgPool) -> Result<()> {
    let (extension_installed, extension_available, sql_installed): (bool, bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pgmq'),
                EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pgmq'),
                to_regclass('pgmq.__pgmq_migrations') IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    if extension_installed {
        return Ok(());
    }
    if extension_available && !sql_installed {
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pgmq").execute(pool).await.map_err(Error::CreateExtension)?;
        return Ok(());
    }
    pgmq::install::install_sql_from_embedded(pool).await?;
    Ok(())
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

/// Whether `error` says the connection is gone (the server restarted, or dropped it), rather
/// than that the statement failed: I/O errors, and the server's `57P` (operator intervention,
/// such as a shutdown) and `08` (connection exception) classes.
pub fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|code| code.starts_with("57P") || code.starts_with("08")),
        _ => false,
    }
}

/// Whether `error` says the database cannot be reached now (a lost connection, or the pool
/// could not give one), rather than anything about the statement that met it.
pub fn unreachable(error: &sqlx::Error) -> bool {
    connection_lost(error) || matches!(error, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supabase_transaction_poolers_are_recognised() {
        assert!(is_transaction_pooler("aws-0-eu-central-1.pooler.supabase.com", 6543));
        assert!(is_transaction_pooler("db.abcdefghijklmnop.supabase.co", 6543));
        assert!(is_transaction_pooler("AWS-0-US-EAST-1.POOLER.SUPABASE.COM.", 6543));
        // The session pooler and the direct connection are what the README recommends.
        assert!(!is_transaction_pooler("aws-0-eu-central-1.pooler.supabase.com", 5432));
        assert!(!is_transaction_pooler("db.abcdefghijklmnop.supabase.co", 5432));
        // Port 6543 elsewhere is someone else's choice.
        assert!(!is_transaction_pooler("127.0.0.1", 6543));
        assert!(!is_transaction_pooler("notsupabase.com", 6543));
    }
}
