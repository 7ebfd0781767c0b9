//! `offer-router`: the service daemon and its operator commands. `main` parses arguments,
//! builds the config once, dispatches, and maps the result to an exit code.

mod config;
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
    Serve(ServeArgs),
    /// Install PGMQ and apply every pending migration, then exit.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        telemetry: TelemetryArgs,
    },
    /// Print every queue's depth, oldest message age and total (pgmq.metrics_all).
    Queues {
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
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
            let config = args.config();
            let _telemetry = pipeline::telemetry::init(&config.telemetry, "offer-router")?;
            serve::run(config).await
        }
        Command::Migrate { db, telemetry } => {
            let _telemetry = pipeline::telemetry::init(&telemetry.config(), "offer-router")?;
            let pool = pipeline::db::connect(&db.config()).await.context("connecting to Postgres")?;
            let install = pipeline::db::migrate(&pool).await.context("migrating the database")?;
            tracing::info!(pgmq = ?install, "database is up to date");
            Ok(())
        }
        Command::Queues { db, json } => {
            let pool = pipeline::db::connect(&db.config()).await.context("connecting to Postgres")?;
            let metrics = pipeline::queue::metrics_all(&pool).await.context("reading queue metrics")?;
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
