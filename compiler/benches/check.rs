//! `rulec check` on generated realistic rule sets of 100, 1,000 and 10,000 rules: wall time,
//! candidate pairs (bounds met) against all pairs, and solver calls.
//!
//! Run: `cargo bench -p compiler --bench check` (or `./dev bench`). Options: `--sizes 100,1000`.

use std::time::Instant;

fn main() {
    let mut sizes = vec![100usize, 1_000, 10_000];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--sizes"
            && let Some(list) = args.next()
        {
            sizes = list.split(',').filter_map(|s| s.trim().parse().ok()).collect();
        }
    }
    println!("rulec check on generated rule sets (compiler::generate, seed 1)");
    println!(
        "{:>7} {:>9} {:>12} {:>12} {:>10} {:>7} {:>7} {:>9}",
        "rules", "seconds", "pairs", "candidates", "solver", "errors", "warns", "overlaps"
    );
    for n in sizes {
        let text = compiler::generate::rule_set(n, 1);
        let started = Instant::now();
        let report = match compiler::report::check("generated.yaml", text.as_bytes()) {
            Ok(report) => report,
            Err(error) => {
                eprintln!("check failed on {n} rules: {error}");
                std::process::exit(1);
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        let overlaps = report.findings.iter().filter(|f| f.code == compiler::finding::Code::Overlap).count();
        println!(
            "{n:>7} {seconds:>9.2} {:>12} {:>12} {:>10} {:>7} {:>7} {overlaps:>9}",
            report.stats.pairs,
            report.stats.candidate_pairs,
            report.stats.solver_calls,
            report.errors(),
            report.warnings()
        );
    }
}
