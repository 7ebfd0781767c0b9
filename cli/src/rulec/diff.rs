//! `rulec diff`: the change impact of a rules change (`compiler::diff`), from two files or
//! from a file and its version at a git revision, in human, JSON or SARIF form.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use compiler::diff::Side;

use crate::{Exit, Format, read_limited};

/// Where the old rule set comes from.
pub(crate) enum Old<'a> {
    /// A file.
    File(&'a Path),
    /// The new file as it is at this git revision.
    Revision(&'a str),
}

/// `rulec diff`: [`Exit::Clean`] when no lead moves, [`Exit::Findings`] when some do.
pub(crate) fn run(old: Old<'_>, new: &Path, format: Format, stats: bool) -> anyhow::Result<Exit> {
    let (old_name, old_bytes) = match old {
        Old::File(path) => (
            path.display().to_string(),
            read_limited(path).with_context(|| format!("cannot read `{}`", path.display()))?,
        ),
        Old::Revision(revision) => (format!("{revision}:{}", new.display()), at_revision(new, revision)?),
    };
    let new_bytes = read_limited(new).with_context(|| format!("cannot read `{}`", new.display()))?;
    let read = |name: &str, bytes: &[u8]| -> anyhow::Result<Side> {
        Side::read(name, bytes).map_err(|report| {
            eprint!("{}", report.to_human(std::io::stderr().is_terminal()));
            anyhow::anyhow!("`{name}` has syntax or type errors; it cannot be compared")
        })
    };
    let (old_side, new_side) = (read(&old_name, &old_bytes)?, read(&new.display().to_string(), &new_bytes)?);
    let started = std::time::Instant::now();
    let diff = compiler::diff::diff(&old_side, &new_side)?;
    let elapsed = started.elapsed();
    let output = match format {
        Format::Human => diff.to_human(&old_side.source, &new_side.source),
        Format::Json => format!("{:#}\n", diff.to_json()),
        Format::Sarif => format!("{:#}\n", diff.to_sarif(&old_side.source, &new_side.source)),
    };
    std::io::stdout().lock().write_all(output.as_bytes()).context("cannot write the report")?;
    if stats {
        let s = diff.stats;
        eprintln!(
            "rules: {} -> {}, changed: {} -> {}, atom space: {:.3e}, sub-problems: {}, solver calls: {}, {:.1} ms",
            s.rules.0,
            s.rules.1,
            s.changed_rules.0,
            s.changed_rules.1,
            s.atom_space,
            s.nodes,
            s.solver_calls,
            elapsed.as_secs_f64() * 1e3
        );
    }
    Ok(if diff.moves() > 0 { Exit::Findings } else { Exit::Clean })
}

/// The file's content at a git revision (`git show REV:./FILE`, run in the file's folder).
fn at_revision(file: &Path, revision: &str) -> anyhow::Result<Vec<u8>> {
    let folder = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = file.file_name().with_context(|| format!("`{}` is not a file", file.display()))?;
    let output = Command::new("git")
        .arg("-C")
        .arg(folder)
        .arg("show")
        .arg(format!("{revision}:./{}", name.to_string_lossy()))
        .output()
        .context("cannot run git")?;
    if !output.status.success() {
        bail!("cannot read `{}` at `{revision}`: {}", file.display(), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(output.stdout)
}

/// `rulec bench --diff`: per size, a generated set against itself with `changes` rules
/// changed (`compiler::generate::changed_pair`, seed 1): reading both, and the diff, each the
/// best of three runs, with what it found.
pub(crate) fn bench(sizes: &[usize], changes: usize) -> anyhow::Result<()> {
    println!(
        "{:>7} {:>8} {:>9} {:>9} {:>6} {:>7} {:>7} {:>10} {:>13}  proof",
        "rules", "changes", "changed", "nodes", "pairs", "moves", "read ms", "diff ms", "moved share"
    );
    for &size in sizes {
        let (old, new) = compiler::generate::changed_pair(size, 1, changes);
        let read = |name: &str, text: &str| {
            Side::read(name, text.as_bytes())
                .map_err(|r| anyhow::anyhow!("generated set invalid: {}", r.to_human(false)))
        };
        let (mut best_read, mut best_diff, mut last) = (f64::MAX, f64::MAX, None);
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let (a, b) = (read("old", &old)?, read("new", &new)?);
            best_read = best_read.min(started.elapsed().as_secs_f64() * 1e3);
            let started = std::time::Instant::now();
            let diff = compiler::diff::diff(&a, &b)?;
            best_diff = best_diff.min(started.elapsed().as_secs_f64() * 1e3);
            last = Some(diff);
        }
        let diff = last.context("no run")?;
        let s = diff.stats;
        println!(
            "{:>7} {:>8} {:>9} {:>9} {:>6} {:>7} {:>7.1} {:>10.1} {:>13} {}",
            size,
            changes,
            format!("{}/{}", s.changed_rules.0, s.changed_rules.1),
            s.nodes,
            diff.changes.len(),
            diff.moves(),
            best_read,
            best_diff,
            diff.moved_share().map_or_else(|| "-".to_owned(), |x| format!("{:.3e}", x)),
            serde_json::to_value(diff.proof)?.as_str().unwrap_or("?"),
        );
    }
    Ok(())
}
