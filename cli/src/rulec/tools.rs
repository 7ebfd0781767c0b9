//! `rulec compile`, `eval`, `explain` and `bench`: the decision module's side of `rulec`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use compiler::compile::Compiled;
use compiler::interp::Lead;
use compiler::model::RuleSet;
use runtime::host::{Program, Session};
use serde_json::{Value, json};

/// Reads and checks a rules file; refuses (with the report on stderr) when it has errors.
pub(crate) fn checked(file: &Path) -> anyhow::Result<(RuleSet, Vec<compiler::finding::Finding>, Vec<u8>)> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read `{}`", file.display()))?;
    let name = file.display().to_string();
    let (checked, findings, stats) = compiler::report::check_rules(&name, &bytes)?;
    let errors = findings.iter().filter(|f| f.severity() == compiler::finding::Severity::Error).count();
    if errors > 0 || checked.is_none() {
        let source = checked
            .as_ref()
            .map_or_else(|| compiler::source::Source::new(&name, String::from_utf8_lossy(&bytes)), |(_, s)| s.clone());
        let report = compiler::report::Report {
            rules_checked: checked.as_ref().map_or(0, |(r, _)| r.rules.len()),
            source,
            findings,
            stats,
        };
        eprint!("{}", report.to_human(false));
        bail!(Refused(errors.max(1)));
    }
    let (rules, _) = checked.context("no rule set")?;
    Ok((rules, findings, bytes))
}

/// The rule set has error-level findings (exit 1, not 2).
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) usize);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the rule set has {} error-level findings; nothing compiled", self.0)
    }
}

impl std::error::Error for Refused {}

fn compile_checked(file: &Path) -> anyhow::Result<(RuleSet, Compiled)> {
    let (rules, findings, bytes) = checked(file)?;
    let compiled = compiler::compile::compile(&rules, &findings, &bytes)?;
    Ok((rules, compiled))
}

fn program(compiled: &Compiled) -> anyhow::Result<std::sync::Arc<Program>> {
    let engine = runtime::host::engine()?;
    Ok(std::sync::Arc::new(Program::load(&engine, &compiled.wasm, compiled.manifest.clone())?))
}

/// `rulec compile FILE -o OUT`: writes `OUT` and `OUT`'s `.manifest.json`.
pub(crate) fn compile(file: &Path, out: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let (_, compiled) = compile_checked(file)?;
    let manifest_path = manifest_path(out);
    std::fs::write(out, &compiled.wasm).with_context(|| format!("cannot write `{}`", out.display()))?;
    let manifest = serde_json::to_string_pretty(&compiled.manifest)?;
    std::fs::write(&manifest_path, manifest + "\n")
        .with_context(|| format!("cannot write `{}`", manifest_path.display()))?;
    let d = compiled.dag;
    eprintln!(
        "compiled {} rules: DAG {} nodes, {} edges, depth max {} avg {:.2}; validated by {:?}; module {} bytes -> {} and {} ({:.2} s: DAG {:.2} s, validation {:.2} s, emission {:.2} s)",
        compiled.manifest.rules.len(),
        d.nodes,
        d.edges,
        d.max_depth,
        d.avg_depth,
        compiled.validation,
        compiled.wasm.len(),
        out.display(),
        manifest_path.display(),
        started.elapsed().as_secs_f64(),
        compiled.timings[0].as_secs_f64(),
        compiled.timings[1].as_secs_f64(),
        compiled.timings[2].as_secs_f64()
    );
    Ok(())
}

/// `tree.wasm` → `tree.manifest.json`.
pub(crate) fn manifest_path(out: &Path) -> PathBuf {
    out.with_extension("manifest.json")
}

/// Which engine `eval` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Engine {
    /// The compiled Wasm module (through the runtime's encoder).
    Module,
    /// The reference interpreter.
    Interpreter,
}

/// `rulec eval FILE LEADS`: one JSON answer per lead line.
pub(crate) fn eval(file: &Path, leads: &Path, engine: Engine) -> anyhow::Result<bool> {
    let reader = std::io::BufReader::new(
        std::fs::File::open(leads).with_context(|| format!("cannot read `{}`", leads.display()))?,
    );
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut all_ok = true;
    let (rules, mut session) = match engine {
        Engine::Interpreter => (checked(file)?.0, None),
        Engine::Module => {
            let (rules, compiled) = compile_checked(file)?;
            (rules, Some(program(&compiled)?.session()?))
        }
    };
    for (number, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading line {}", number + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = serde_json::from_str::<Value>(&line)
            .map_err(|e| format!("line {}: not JSON: {e}", number + 1))
            .and_then(|lead| decide(&rules, session.as_mut(), &lead).map_err(|e| format!("line {}: {e}", number + 1)));
        let answer = answer.unwrap_or_else(|error| {
            all_ok = false;
            json!({ "error": error })
        });
        writeln!(out, "{answer}")?;
    }
    out.flush()?;
    Ok(all_ok)
}

fn decide(rules: &RuleSet, session: Option<&mut Session>, lead: &Value) -> Result<Value, String> {
    match session {
        Some(session) => {
            let d = session.decide_json(lead).map_err(|e| e.to_string())?;
            Ok(json!({ "route": d.route, "rule": d.rule.map(|r| r.name.as_str()) }))
        }
        None => {
            let lead = Lead::from_json(rules, lead).map_err(|e| e.to_string())?;
            let d = rules.decide(&lead);
            Ok(json!({ "route": d.route, "rule": d.rule.map(|r| r.name.as_str()) }))
        }
    }
}

/// `rulec explain FILE LEAD`: which rule decided, and why each earlier rule did not.
pub(crate) fn explain(file: &Path, lead_file: &Path) -> anyhow::Result<()> {
    let (rules, _, bytes) = checked(file)?;
    let text = String::from_utf8_lossy(&bytes);
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(lead_file).with_context(|| format!("cannot read `{}`", lead_file.display()))?,
    )
    .context("the lead is not JSON")?;
    let lead = Lead::from_json(&rules, &json)?;
    let source = compiler::source::Source::new(file.display().to_string(), text.clone().into_owned());
    let mut out = String::new();
    for &i in &rules.order() {
        let rule = &rules.rules[i];
        let Some(cond) = &rule.cond else { continue };
        match compiler::interp::first_failure(cond, &lead) {
            Some(span) => {
                let (line, column) = source.line_col(span.start);
                out.push_str(&format!(
                    "  no   {} (priority {}): `{}` is false ({}:{line}:{column})\n",
                    rule.name,
                    rule.priority,
                    text.get(span).unwrap_or("?"),
                    source.name
                ));
            }
            None => {
                out.push_str(&format!(
                    "  YES  {} (priority {}) matches: route `{}`\n",
                    rule.name, rule.priority, rule.route
                ));
                println!("{out}decided by `{}` -> `{}`", rule.name, rule.route);
                return Ok(());
            }
        }
    }
    match &rules.default_route {
        Some(route) => println!("{out}no rule matched -> default route `{route}`"),
        None => println!("{out}no rule matched and there is no default route: unmatched"),
    }
    Ok(())
}

fn per_lead(started: Instant, count: usize, rounds: usize) -> f64 {
    started.elapsed().as_nanos() as f64 / (count * rounds) as f64
}

/// Leads per router batch in the "encode + decide" figure (`ROUTER_BATCH_SIZE`'s default).
const ROUTER_BATCH: usize = 500;

/// `rulec bench`: ns per decision of each engine.
pub(crate) fn bench(file: Option<&Path>, sizes: &[usize], leads: usize) -> anyhow::Result<()> {
    let sets: Vec<(String, Vec<u8>)> = match file {
        Some(f) => {
            vec![(f.display().to_string(), std::fs::read(f).with_context(|| format!("cannot read `{}`", f.display()))?)]
        }
        None => {
            sizes.iter().map(|&n| (format!("generated {n}"), compiler::generate::rule_set(n, 1).into_bytes())).collect()
        }
    };
    println!(
        "{:<16} {:>7} {:>9} {:>7} {:>6} {:>9} {:>11} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "rule set",
        "rules",
        "compile s",
        "nodes",
        "depth",
        "wasm B",
        "interp ns",
        "single ns",
        "batch ns",
        "encode ns",
        "enc+dec ns",
        "cold ns",
        "agree"
    );
    for (name, bytes) in sets {
        let (checked, findings, _) = compiler::report::check_rules(&name, &bytes)?;
        let (rules, _) = checked.context("the rule set does not parse")?;
        // Generated sets have deliberate conflicts; benchmark their error-free part.
        let rules = drop_erroneous(rules, &findings);
        let started = Instant::now();
        let compiled = compiler::compile::compile(&rules, &[], &bytes)?;
        let compile_s = started.elapsed().as_secs_f64();
        let program = program(&compiled)?;
        let mut session = program.session()?;
        let leads_json = compiler::generate::leads(&rules, leads, 7);
        let typed: Vec<Lead> = leads_json.iter().map(|l| Lead::from_json(&rules, l)).collect::<Result<_, _>>()?;
        let size = program.manifest().record_size;
        let mut records = vec![0u8; size * leads];
        for (lead, record) in leads_json.iter().zip(records.chunks_mut(size)) {
            program.encoder().encode(lead, record)?;
        }
        let order = rules.order();
        let rounds = (2_000_000 / leads.max(1)).max(1);

        // Each figure is the best of three runs: this machine's timing noise is one-sided.
        let mut sink = 0usize;
        let mut answers = Vec::with_capacity(leads);
        let mut scratch = vec![0u8; size * leads];
        let (mut interp, mut single, mut batch, mut encode_only, mut encode_decide, mut fresh) =
            (f64::MAX, f64::MAX, f64::MAX, f64::MAX, f64::MAX, f64::MAX);
        let texts: Vec<String> = leads_json.iter().map(Value::to_string).collect();
        let maps: Vec<&serde_json::Map<String, Value>> = leads_json.iter().filter_map(Value::as_object).collect();
        let mut decided = Vec::with_capacity(leads);
        for _ in 0..3 {
            // The interpreter is slow on big sets: fewer rounds, about the same total work.
            let interp_rounds = (20_000_000 / (leads.max(1) * order.len().max(1))).max(1);
            let started = Instant::now();
            for _ in 0..interp_rounds {
                for lead in &typed {
                    sink += rules.decide_in(&order, lead).rule.map_or(0, |r| r.position);
                }
            }
            interp = interp.min(per_lead(started, leads, interp_rounds));

            let started = Instant::now();
            for _ in 0..rounds {
                for record in records.chunks(size) {
                    sink += session.decide_record(record)?.unwrap_or(0);
                }
            }
            single = single.min(per_lead(started, leads, rounds));

            let started = Instant::now();
            for _ in 0..rounds {
                answers.clear();
                session.decide_records(&records, &mut answers)?;
            }
            batch = batch.min(per_lead(started, leads, rounds));

            let started = Instant::now();
            for _ in 0..rounds.div_ceil(4) {
                for (lead, record) in leads_json.iter().zip(scratch.chunks_mut(size)) {
                    program.encoder().encode(lead, record)?;
                }
            }
            encode_only = encode_only.min(per_lead(started, leads, rounds.div_ceil(4)));

            let started = Instant::now();
            for _ in 0..rounds.div_ceil(4) {
                decided.clear();
                session.decide_leads(maps.iter().copied(), &mut decided)?;
            }
            encode_decide = encode_decide.min(per_lead(started, leads, rounds.div_ceil(4)));

            // As the router does it: a batch is decoded from its messages' JSON text, then
            // encoded and decided at once (only that is timed), so its leads are fresh in cache.
            let mut timed = Duration::ZERO;
            for _ in 0..rounds.div_ceil(8) {
                for batch in texts.chunks(ROUTER_BATCH) {
                    let parsed: Vec<Value> = batch.iter().map(|t| serde_json::from_str(t)).collect::<Result<_, _>>()?;
                    let started = Instant::now();
                    decided.clear();
                    session.decide_leads(parsed.iter().filter_map(Value::as_object), &mut decided)?;
                    timed += started.elapsed();
                }
            }
            fresh = fresh.min(timed.as_nanos() as f64 / (leads * rounds.div_ceil(8)) as f64);
        }

        answers.clear();
        session.decide_records(&records, &mut answers)?;
        let agree = answers.len() == typed.len()
            && typed.iter().zip(&answers).all(|(lead, answer)| {
                let expected = rules.decide_in(&order, lead).rule.map(|r| r.name.as_str());
                answer.map(|i| program.manifest().rules[i].name.as_str()) == expected
            });
        std::hint::black_box(sink);
        println!(
            "{:<16} {:>7} {:>9.2} {:>7} {:>6} {:>9} {:>11.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>12}",
            name,
            program.manifest().rules.len(),
            compile_s,
            compiled.dag.nodes,
            compiled.dag.max_depth,
            compiled.wasm.len(),
            interp,
            single,
            batch,
            encode_only,
            fresh,
            encode_decide,
            if agree { format!("{leads}/{leads}") } else { "DISAGREE".to_owned() }
        );
        if !agree {
            bail!("the module and the interpreter disagree on {name}");
        }
    }
    Ok(())
}

/// The rule set without the rules that error-level findings name (so generated sets with
/// deliberate conflicts can be compiled for the benchmark).
fn drop_erroneous(mut rules: RuleSet, findings: &[compiler::finding::Finding]) -> RuleSet {
    let bad = compiler::finding::rules_with_errors(findings);
    for rule in &mut rules.rules {
        if bad.contains(rule.name.as_str()) {
            rule.enabled = false;
        }
    }
    rules
}
