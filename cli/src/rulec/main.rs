//! `rulec`: the rule compiler's command line. `check` reports every finding of a rules file
//! (RULES.md, "Checks") in human, JSON or SARIF form; `compile` writes the decision module
//! and its manifest; `eval`, `explain` and `bench` run them (`explain --submission` explains a
//! lead stored in the service's database instead). Every command ends with an
//! [`Exit`]: 0 fine, 1 error-level findings (or warnings with `--deny warnings`; for
//! `compile`/`eval`, a refused rule set or a lead that cannot be decided), 2 the tool could
//! not run.

mod diff;
mod stored;
mod tools;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Termination};

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "rulec", version, about = "Offer Router's rule compiler")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a rules file: syntax, types, and conflicts, shadowed, duplicate, redundant and
    /// overlapping rules and gaps, each with an example lead.
    Check {
        /// The rules file (YAML).
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        /// Treat these findings as errors for the exit code (`warnings`).
        #[arg(long, value_enum)]
        deny: Vec<Deny>,
        /// Print analysis figures (rules, candidate pairs, solver calls) to stderr.
        #[arg(long)]
        stats: bool,
        /// A partners file: partners whose caps or schedule never let them take a lead are
        /// reported (`unreachable`) with the rules that sell to them.
        #[arg(long)]
        partners: Option<PathBuf>,
    },
    /// Show which leads a rules change sends elsewhere: the exact difference of the two rule
    /// sets' decisions, one finding per (old decision -> new decision) pair with an example
    /// lead and its share of the atom space. Exit 0 when no lead moves, 1 when some do.
    Diff {
        /// `OLD NEW`, or with `--base` just the rules file.
        #[arg(num_args = 1..=2, required = true)]
        files: Vec<PathBuf>,
        /// Compare the file with its version at this git revision (e.g. `origin/main`).
        #[arg(long)]
        base: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        /// Print figures (changed rules, atom space, sub-problems, time) to stderr.
        #[arg(long)]
        stats: bool,
    },
    /// Compile a rules file to a Wasm decision module and its manifest
    /// (`OUT` and `OUT` with `.manifest.json`); refuses a rule set with errors.
    Compile {
        /// The rules file.
        file: PathBuf,
        /// The module to write.
        #[arg(short, long, default_value = "tree.wasm")]
        output: PathBuf,
    },
    /// Decide every lead of a JSON-lines file; prints `{"route": .., "rule": ..}` per line.
    Eval {
        /// The rules file.
        file: PathBuf,
        /// One lead (JSON object) per line.
        leads: PathBuf,
        /// Which engine decides.
        #[arg(long, value_enum, default_value_t = tools::Engine::Module)]
        engine: tools::Engine,
    },
    /// Show which rule decides a lead and why each earlier rule did not match; with
    /// `--submission`, a stored lead instead: what routed it, the decision replayed under that
    /// rules version, and what the current rules would do (from the service's database).
    Explain {
        /// The rules file.
        #[arg(required_unless_present = "submission", conflicts_with = "submission")]
        file: Option<PathBuf>,
        /// A file with one lead (JSON object).
        #[arg(required_unless_present = "submission", conflicts_with = "submission")]
        lead: Option<PathBuf>,
        /// The submission id of a stored lead, explained from the database.
        #[arg(long, requires = "database_url")]
        submission: Option<uuid::Uuid>,
        /// The service's database (with `--submission`).
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExplainFormat::Human)]
        format: ExplainFormat,
        /// Partners to take as unavailable (as if capped, closed, paused or down),
        /// comma-separated: shows where the lead falls through to.
        #[arg(long, value_delimiter = ',', conflicts_with = "submission")]
        unavailable: Vec<String>,
    },
    /// Measure ns per decision of the interpreter and the module (single, batched, and
    /// encode + decide), on a rules file or on generated sets.
    Bench {
        /// A rules file; without it, generated sets of `--rules` sizes.
        file: Option<PathBuf>,
        /// Sizes of the generated sets (default 100,1000,10000; with `--diff` 1000,10000).
        #[arg(long, value_delimiter = ',')]
        rules: Vec<usize>,
        /// Leads per set.
        #[arg(long, default_value_t = 10_000)]
        leads: usize,
        /// Measure `rulec diff` instead: each generated set against itself with `--changes`
        /// rules changed (sizes from `--rules`, default 1,000 and 10,000).
        #[arg(long)]
        diff: bool,
        /// Rules changed per set, with `--diff`.
        #[arg(long, default_value_t = 10)]
        changes: usize,
        /// Candidates per lead the modules answer (1 to 8; default: the rule set's, 3), to
        /// compare the costs of `k`.
        #[arg(long)]
        candidates: Option<usize>,
    },
    /// Print a generated, realistic rules file (for benchmarks and trying the tools).
    Generate {
        /// Number of rules.
        #[arg(long, default_value_t = 1000)]
        rules: usize,
        /// Seed: the same seed gives the same file.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    /// Compiler-style diagnostics with source lines and carets.
    Human,
    /// The stable JSON shape of RULES.md.
    Json,
    /// SARIF 2.1.0 for code-scanning UIs.
    Sarif,
}

/// How `explain` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExplainFormat {
    /// One line per rule tried, then the decision.
    Human,
    /// The explanation as JSON (`compiler::interp::Explanation`; with `--submission`, the
    /// stored lead's story as `GET /api/leads/{id}/explain` answers it).
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Deny {
    /// Warnings fail the check too.
    Warnings,
}

/// `rulec`'s exit status (RULES.md, "Checks"), the one thing every command ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// 0: no error-level finding; the command did what it was asked.
    Clean = 0,
    /// 1: error-level findings (or warnings with `--deny warnings`), a refused rule set, or
    /// a lead that cannot be decided.
    Findings = 1,
    /// 2: the tool could not run (bad arguments, an unreadable file, an internal error).
    CannotRun = 2,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

impl Termination for Exit {
    fn report(self) -> ExitCode {
        self.into()
    }
}

fn main() -> Exit {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // `--help` and `--version` come this way too, and are not failures.
            return if error.use_stderr() { Exit::CannotRun } else { Exit::Clean };
        }
    };
    match cli.command {
        Command::Check { file, format, deny, stats, partners } => {
            check(&file, partners.as_deref(), format, deny.contains(&Deny::Warnings), stats)
        }
        Command::Diff { files, base, format, stats } => {
            let run = match (&base, &files[..]) {
                (Some(revision), [file]) => diff::run(diff::Old::Revision(revision), file, format, stats),
                (None, [old, new]) => diff::run(diff::Old::File(old), new, format, stats),
                (Some(_), _) => Err(anyhow::anyhow!("with --base, give just the rules file")),
                (None, _) => Err(anyhow::anyhow!("give the old and the new rules file (or --base REV FILE)")),
            };
            exit(run)
        }
        Command::Compile { file, output } => exit(tools::compile(&file, &output).map(|()| Exit::Clean)),
        Command::Eval { file, leads, engine } => exit(tools::eval(&file, &leads, engine)),
        Command::Explain { submission: Some(submission), database_url, format, .. } => {
            exit(stored::explain(database_url.as_deref().unwrap_or_default(), submission, format))
        }
        Command::Explain { file: Some(file), lead: Some(lead), format, unavailable, .. } => {
            exit(tools::explain(&file, &lead, format, &unavailable).map(|()| Exit::Clean))
        }
        Command::Explain { .. } => {
            eprintln!("error: give a rules file and a lead file, or --submission");
            Exit::CannotRun
        }
        Command::Bench { diff: true, rules, changes, .. } => {
            let sizes = if rules.is_empty() { vec![1000, 10000] } else { rules };
            exit(diff::bench(&sizes, changes).map(|()| Exit::Clean))
        }
        Command::Bench { file, rules, leads, candidates, .. } => {
            let rules = if rules.is_empty() { vec![100, 1000, 10000] } else { rules };
            exit(tools::bench(file.as_deref(), &rules, leads, candidates).map(|()| Exit::Clean))
        }
        Command::Generate { rules, seed } => {
            let text = compiler::generate::rule_set(rules, seed);
            if std::io::stdout().lock().write_all(text.as_bytes()).is_err() {
                return Exit::CannotRun;
            }
            Exit::Clean
        }
    }
}

fn check(
    file: &std::path::Path,
    partners: Option<&std::path::Path>,
    format: Format,
    deny_warnings: bool,
    stats: bool,
) -> Exit {
    let bytes = match read_limited(file) {
        Ok(bytes) => bytes,
        Err(error) => {
            eprintln!("error: cannot read `{}`: {error}", file.display());
            return Exit::CannotRun;
        }
    };
    let facts = match partners.map(partner_facts).transpose() {
        Ok(facts) => facts.unwrap_or_default(),
        Err(error) => {
            eprintln!("error: {error:#}");
            return Exit::CannotRun;
        }
    };
    let report = match compiler::report::check_with(&file.display().to_string(), &bytes, &facts) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: {error}");
            return Exit::CannotRun;
        }
    };
    let output = match format {
        Format::Human => report.to_human(std::io::stdout().is_terminal()),
        Format::Json => format!("{:#}\n", report.to_json()),
        Format::Sarif => format!("{:#}\n", report.to_sarif()),
    };
    if std::io::stdout().lock().write_all(output.as_bytes()).is_err() {
        return Exit::CannotRun;
    }
    if stats {
        eprintln!(
            "rules: {}, pairs: {}, candidate pairs: {}, solver calls: {}",
            report.stats.rules, report.stats.pairs, report.stats.candidate_pairs, report.stats.solver_calls
        );
    }
    let failed = report.errors() > 0 || (deny_warnings && report.warnings() > 0);
    if failed { Exit::Findings } else { Exit::Clean }
}

/// Reads at most one byte more than the compiler accepts, so a huge file is refused by the
/// compiler's size check without being loaded whole.
fn read_limited(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(compiler::report::MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Maps a tool result to the exit code: a refused rule set is [`Exit::Findings`], anything
/// else that went wrong [`Exit::CannotRun`].
fn exit(result: anyhow::Result<Exit>) -> Exit {
    match result {
        Ok(exit) => exit,
        Err(error) if error.downcast_ref::<tools::Refused>().is_some() => {
            eprintln!("error: {error}");
            Exit::Findings
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            Exit::CannotRun
        }
    }
}

/// The partners of a partners file that can never take a lead, with why.
fn partner_facts(path: &std::path::Path) -> anyhow::Result<compiler::report::PartnerFacts> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let file = pipeline::partners::parse_file(&text).with_context(|| format!("`{}`", path.display()))?;
    Ok(compiler::report::PartnerFacts { never: pipeline::partners::never_taking(&file.partners) })
}
