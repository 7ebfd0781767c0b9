//! `offer-router`: the service daemon and its operator commands. `main` parses arguments,
//! builds the config once, dispatches, and maps the result to an exit code.

mod config;
mod demo;
mod dlq;
mod partners;
mod recompile;
mod rules;
mod serve;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{DbArgs, ServeArgs, TelemetryArgs};

#[derive(Debug, Parser)]
#[command(name = "offer-router", version, about = "Offer Router: lead identification, routing and delivery")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: HTTP API (health, readiness) and the workers.
    Serve(Box<ServeArgs>),
    /// Install PGMQ and apply every pending migration, then exit.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        telemetry: TelemetryArgs,
    },
    /// Load a rules file into the service's rule set (refused if it has syntax or type
    /// errors); the compile worker compiles and activates it unless it has error findings.
    Rules {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        action: RulesAction,
    },
    /// Recompile the active tree's rules version from its kept document (e.g. after an
    /// upgrade to another decision-module ABI while the newest version is refused), and wait
    /// until the new tree is active. A daemon's compile worker does the compile.
    Recompile {
        #[command(flatten)]
        db: DbArgs,
        /// Seconds to wait for the new tree.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
        /// Print JSON (the request and the resulting tree) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create sites and rotate, revoke or list their API keys. A key is printed once, when it
    /// is made; only its hash is stored.
    Sites {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        action: SitesAction,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Apply a partners file (YAML) or list the partners with their circuit state.
    Partners {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        action: PartnersAction,
    },
    /// Serve the mock partner API (for the demo and manual tests) until Ctrl-C.
    MockPartners {
        /// Address to listen on.
        #[arg(long, env = "MOCK_PARTNERS_ADDR", default_value = "127.0.0.1:18181")]
        addr: std::net::SocketAddr,
    },
    /// Inspect dead-letter queues (`<queue>_dlq`) and replay their letters into the source queue.
    Dlq {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        action: dlq::DlqAction,
    },
    /// Read a password on stdin (one line) and print its Argon2id hash for `ADMIN_USERS_FILE`
    /// (`<name> <viewer|editor> <hash>`).
    HashPassword,
    /// Print every queue's depth, oldest message age and total (pgmq.metrics_all).
    Queues {
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PartnersAction {
    /// Create or update every partner of FILE (with its queues and circuit breaker).
    Apply {
        /// The partners file (see examples/partners.yaml).
        file: std::path::PathBuf,
    },
    /// List the partners and their circuit state.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum RulesAction {
    /// Replace the stored rule set with FILE (a RULES.md rules file).
    Load {
        /// The rules file.
        file: std::path::PathBuf,
        /// Check only; store nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SitesAction {
    /// Create a site and print its new API key.
    Create {
        /// The site's name (a-z, 0-9, `_`, `-`); it becomes the `site` routing field.
        name: String,
    },
    /// Give a site a new key (the old one stops working) and print it.
    Rotate {
        /// The site's name.
        name: String,
    },
    /// Revoke a site's key: its posts get 401 until the key is rotated.
    Revoke {
        /// The site's name.
        name: String,
    },
    /// List the sites (names, key prefixes, revocations).
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = args.config()?;
            let _telemetry = pipeline::telemetry::init(&config.telemetry, "offer-router")?;
            serve::run(config, &args.seeds()).await
        }
        Command::Migrate { db, telemetry } => {
            let _telemetry = pipeline::telemetry::init(&telemetry.config(), "offer-router")?;
            let pool = pipeline::db::connect(&db.config()).await.context("connecting to Postgres")?;
            let pgmq = pipeline::db::migrate(&pool).await.context("migrating the database")?;
            tracing::info!(%pgmq, "database is up to date");
            Ok(())
        }
        Command::Rules { db, action: RulesAction::Load { file, dry_run } } => {
            let pool = pipeline::db::connect(&db.config()).await.context("connecting to Postgres")?;
            let loaded = rules::load_file(&pool, &file, dry_run).await?;
            let verb = if dry_run { "checked (not stored)" } else { "loaded" };
            println!(
                "{verb} {} rules from {}: {} errors, {} warnings; rules version {}",
                loaded.rules,
                file.display(),
                loaded.errors,
                loaded.warnings,
                loaded.version
            );
            if loaded.errors > 0 {
                println!("the rule set has error findings: it is stored but will not be activated");
            }
            Ok(())
        }
        Command::Recompile { db, timeout_secs, json } => {
            let pool = pipeline::db::connect(&db.config()).await.context("connecting to Postgres")?;
            recompile::run(&pool, std::time::Duration::from_secs(timeout_secs), json).await
        }
        Command::Sites { db, action, json } => {
            let pool = pipeline::db::connect(&db.config()).await.context("connecting to Postgres")?;
            sites(&pool, action, json).await
        }
        Command::Dlq { db, action } => dlq::run(&db, action).await,
        Command::Partners { db, action } => {
            let pool = pipeline::db::connect(&db.config()).await.context("connecting to Postgres")?;
            match action {
                PartnersAction::Apply { file } => partners::apply(&pool, &file).await,
                PartnersAction::List { json } => partners::list(&pool, json).await,
            }
        }
        Command::MockPartners { addr } => partners::mock(addr).await,
        Command::HashPassword => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password).context("reading the password from stdin")?;
            let password = password.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(password.chars().count() >= 8, "use a password of at least 8 characters");
            println!("{}", api::hash_password(password).context("hashing the password")?);
            Ok(())
        }
        Command::Queues { db, json } => {
            let pool = pipeline::db::connect(&db.config()).await.context("connecting to Postgres")?;
            let pgmq = pipeline::queue::Pgmq::detect(&pool).await.context("reading the database's pgmq")?;
            let metrics = pgmq.metrics_all(&pool).await.context("reading queue metrics")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&metrics)?);
            } else {
                println!("{:<40} {:>10} {:>10} {:>12} {:>12}", "queue", "length", "visible", "oldest (s)", "total");
                for m in metrics {
                    let oldest = m.oldest_msg_age_sec.map_or_else(|| "-".to_owned(), |s| s.to_string());
                    println!(
                        "{:<40} {:>10} {:>10} {:>12} {:>12}",
                        m.queue_name, m.queue_length, m.queue_visible_length, oldest, m.total_messages
                    );
                }
            }
            Ok(())
        }
    }
}

async fn sites(pool: &sqlx::PgPool, action: SitesAction, json: bool) -> anyhow::Result<()> {
    let issued = match action {
        SitesAction::Create { name } => api::sites::create_site(pool, &name).await?,
        SitesAction::Rotate { name } => api::sites::rotate_key(pool, &name).await?,
        SitesAction::Revoke { name } => {
            api::sites::revoke_key(pool, &name).await?;
            if json {
                println!("{}", serde_json::json!({ "site": name, "revoked": true }));
            } else {
                println!("revoked the key of site `{name}`; `offer-router sites rotate {name}` issues a new one");
            }
            return Ok(());
        }
        SitesAction::List => {
            let sites = api::sites::list_sites(pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sites)?);
            } else {
                println!("{:<32} {:<14} {:<26} revoked", "site", "key prefix", "created");
                for site in sites {
                    let revoked = site.revoked_at.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339());
                    println!(
                        "{:<32} {:<14} {:<26} {}",
                        site.name,
                        site.key_prefix,
                        site.created_at.to_rfc3339(),
                        revoked
                    );
                }
            }
            return Ok(());
        }
    };
    if json {
        println!("{}", serde_json::to_string(&issued)?);
    } else {
        println!("site:    {} ({})", issued.site, issued.site_id);
        println!("api key: {}", issued.api_key);
        println!("Store the key now: it is not shown again (only its hash is kept).");
    }
    Ok(())
}
