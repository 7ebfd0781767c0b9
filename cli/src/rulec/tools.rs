//! `rulec compile`, `eval`, `explain` and `bench`: the decision module's side of `rulec`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use compiler::compile::Compiled;
use compiler::interp::Lead;
use compiler::model::RuleSet;
use runtime::host::{Candidates, Program, Session};
use serde_json::{Value, json};

use crate::Exit;

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

/// The rule set has error-level findings ([`Exit::Findings`], not [`Exit::CannotRun`]).
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

/// `rulec eval FILE LEADS`: one JSON answer per lead line (the route, the deciding rule and
/// the candidates: the first `max_candidates` matching rules' names, in first-match order);
/// [`Exit::Findings`] when some lead could not be decided.
pub(crate) fn eval(file: &Path, leads: &Path, engine: Engine) -> anyhow::Result<Exit> {
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
    Ok(if all_ok { Exit::Clean } else { Exit::Findings })
}

fn decide(rules: &RuleSet, session: Option<&mut Session>, lead: &Value) -> Result<Value, String> {
    match session {
        Some(session) => {
            let program = std::sync::Arc::clone(session.program());
            let table = &program.manifest().rules;
            let d = session.decide_json(lead).map_err(|e| e.to_string())?;
            let candidates: Vec<&str> =
                d.candidates.iter().filter_map(|&i| table.get(i as usize)).map(|r| r.name.as_str()).collect();
            Ok(json!({ "route": d.route, "rule": d.rule.map(|r| r.name.as_str()), "candidates": candidates }))
        }
        None => {
            let lead = Lead::from_json(rules, lead).map_err(|e| e.to_string())?;
            let d = rules.decide(&lead);
            let candidates: Vec<&str> =
                rules.candidates(&lead).into_iter().map(|i| rules.rules[i].name.as_str()).collect();
            Ok(json!({ "route": d.route, "rule": d.rule.map(|r| r.name.as_str()), "candidates": candidates }))
        }
    }
}

/// `rulec explain FILE LEAD`: which rule decided, and why each earlier rule did not
/// (`compiler::interp::explain`), as text or JSON.
pub(crate) fn explain(
    file: &Path,
    lead_file: &Path,
    format: crate::ExplainFormat,
    unavailable: &[String],
) -> anyhow::Result<()> {
    let (rules, _, bytes) = checked(file)?;
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(lead_file).with_context(|| format!("cannot read `{}`", lead_file.display()))?,
    )
    .context("the lead is not JSON")?;
    let lead = Lead::from_json(&rules, &json)?;
    let name = file.display().to_string();
    let source = compiler::source::Source::new(&name, String::from_utf8_lossy(&bytes).into_owned());
    let explanation = compiler::interp::explain(&rules, &source, &lead);
    // The candidates, and where the lead goes with the partners named unavailable, by the
    // router's own allocation.
    let candidates: Vec<(String, compiler::model::Target, bool)> = rules
        .candidates(&lead)
        .into_iter()
        .map(|i| (rules.rules[i].name.clone(), rules.rules[i].target.clone(), rules.rules[i].fallthrough))
        .collect();
    let down: Vec<&str> = unavailable.iter().map(String::as_str).collect();
    let (sends, routing) = router::preview(&candidates, rules.default_route.as_deref(), &down);
    match format {
        crate::ExplainFormat::Human => {
            print!("{}", explanation.to_human(&name));
            println!("candidates (the first {} matching rules, the order a lead falls through):", rules.max_candidates);
            for (i, (rule, target, fallthrough)) in candidates.iter().enumerate() {
                let holds = if *fallthrough { "" } else { " (holds its leads: fallthrough false)" };
                println!("  {}. {rule} -> {}{holds}", i + 1, target.label());
            }
            if candidates.is_empty() {
                println!("  none");
            }
            if !down.is_empty() {
                println!("with {} unavailable:", down.join(", "));
                for tried in routing.candidates.iter().filter(|t| t.skipped.is_some()) {
                    println!("  skipped {} ({})", tried.partner, tried.rule.as_deref().unwrap_or("default route"));
                }
                let went: Vec<String> = sends
                    .iter()
                    .map(|(p, rule)| format!("{p} ({})", rule.as_deref().unwrap_or("default route")))
                    .collect();
                match (&routing.held, went.is_empty()) {
                    (Some(why), _) => println!("  held for {}: {why}", went.join(", ")),
                    (None, true) => println!("  unmatched"),
                    (None, false) => println!("  goes to {}", went.join(" and ")),
                }
            }
        }
        crate::ExplainFormat::Json => {
            let mut out = serde_json::to_value(&explanation)?;
            out["candidates"] = serde_json::json!(candidates
                .iter()
                .map(|(rule, target, fallthrough)| serde_json::json!({"rule": rule, "route": target, "fallthrough": fallthrough}))
                .collect::<Vec<_>>());
            if !down.is_empty() {
                out["unavailable"] = serde_json::json!(down);
                out["routing"] = serde_json::to_value(&routing)?;
                out["sends"] = serde_json::json!(
                    sends.iter().map(|(p, r)| serde_json::json!({"partner": p, "rule": r})).collect::<Vec<_>>()
                );
            }
            println!("{out:#}");
        }
    }
    Ok(())
}

fn per_lead(started: Instant, count: usize, rounds: usize) -> f64 {
    started.elapsed().as_nanos() as f64 / (count * rounds) as f64
}

/// Leads per router batch in the "encode + decide" figure (`ROUTER_BATCH_SIZE`'s default).
const ROUTER_BATCH: usize = 500;

/// `rulec bench`: ns per decision of each engine, one row per rule set: generate (or read)
/// the sets, then per set prepare it (with `candidates` per lead, when given), measure, and
/// report.
pub(crate) fn bench(
    file: Option<&Path>,
    sizes: &[usize],
    leads: usize,
    candidates: Option<usize>,
) -> anyhow::Result<()> {
    let sets = bench_sets(file, sizes)?;
    print_bench_header();
    for (name, bytes) in sets {
        let subject = BenchSubject::prepare(&name, &bytes, leads, candidates)?;
        let mut session = subject.program.session()?;
        let figures = Figures::measure(&subject, &mut session)?;
        let agree = subject.agrees(&mut session)?;
        print_bench_row(&name, &subject, &figures, agree);
        if !agree {
            bail!("the module and the interpreter disagree on {name}");
        }
    }
    Ok(())
}

/// The rule sets to measure: the file, or a generated set per size (seed 1, so runs compare).
fn bench_sets(file: Option<&Path>, sizes: &[usize]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    Ok(match file {
        Some(f) => {
            vec![(f.display().to_string(), std::fs::read(f).with_context(|| format!("cannot read `{}`", f.display()))?)]
        }
        None => {
            sizes.iter().map(|&n| (format!("generated {n}"), compiler::generate::rule_set(n, 1).into_bytes())).collect()
        }
    })
}

/// One rule set ready to measure: compiled and loaded, with its generated leads as JSON, as
/// the interpreter's leads and as encoded records.
struct BenchSubject {
    rules: RuleSet,
    compiled: Compiled,
    compile_s: f64,
    program: std::sync::Arc<Program>,
    leads_json: Vec<Value>,
    typed: Vec<Lead>,
    records: Vec<u8>,
    /// Bytes per record.
    size: usize,
    /// Rounds of the module figures: about two million decisions each.
    rounds: usize,
}

impl BenchSubject {
    /// Checks and compiles a set (without its rules that have errors; with `candidates` per
    /// lead, when given), loads it and generates `leads` leads (seed 7) in the three forms
    /// the figures need.
    fn prepare(name: &str, bytes: &[u8], leads: usize, candidates: Option<usize>) -> anyhow::Result<Self> {
        let (checked, findings, _) = compiler::report::check_rules(name, bytes)?;
        let (rules, _) = checked.context("the rule set does not parse")?;
        // Generated sets have deliberate conflicts; benchmark their error-free part.
        let mut rules = drop_erroneous(rules, &findings);
        rules.max_candidates = candidates.unwrap_or(rules.max_candidates);
        let started = Instant::now();
        let compiled = compiler::compile::compile(&rules, &[], bytes)?;
        let compile_s = started.elapsed().as_secs_f64();
        let program = program(&compiled)?;
        let leads_json = compiler::generate::leads(&rules, leads, 7);
        let typed: Vec<Lead> = leads_json.iter().map(|l| Lead::from_json(&rules, l)).collect::<Result<_, _>>()?;
        let size = program.manifest().record_size;
        let mut records = vec![0u8; size * leads];
        for (lead, record) in leads_json.iter().zip(records.chunks_mut(size)) {
            program.encoder().encode(lead, record)?;
        }
        let rounds = (2_000_000 / leads.max(1)).max(1);
        Ok(Self { rules, compiled, compile_s, program, leads_json, typed, records, size, rounds })
    }

    /// Leads per round.
    fn leads(&self) -> usize {
        self.leads_json.len()
    }

    /// Whether the module gives every lead the interpreter's candidates (so the same
    /// deciding rule).
    fn agrees(&self, session: &mut Session) -> anyhow::Result<bool> {
        let mut answers = Vec::with_capacity(self.leads());
        session.decide_records(&self.records, &mut answers)?;
        let (order, k) = (self.rules.order(), self.rules.max_candidates);
        let table = &self.program.manifest().rules;
        Ok(answers.len() == self.typed.len()
            && self.typed.iter().zip(&answers).all(|(lead, &answer)| {
                let expected = self.rules.candidates_in(&order, lead, k);
                let got = self.program.candidates(answer);
                got.len() == expected.len()
                    && got.iter().zip(&expected).all(|(&g, &e)| table[g as usize].name == self.rules.rules[e].name)
            }))
    }
}

/// ns per decision of each way of deciding, each the best of three runs: this machine's
/// timing noise is one-sided.
struct Figures {
    /// The reference interpreter.
    interp: f64,
    /// The module, one `decide` call per encoded record.
    single: f64,
    /// The module, `decide_batch` over encoded records.
    batch: f64,
    /// Encoding alone.
    encode_only: f64,
    /// Encode and decide as the router does: each batch freshly parsed from JSON text
    /// (`enc+dec ns`).
    router: f64,
    /// Encode and decide all the leads, parsed up front (`cold ns`).
    cold: f64,
}

impl Figures {
    /// Runs every figure three times, in turn, and keeps each one's best.
    fn measure(subject: &BenchSubject, session: &mut Session) -> anyhow::Result<Self> {
        let leads = subject.leads();
        let texts: Vec<String> = subject.leads_json.iter().map(Value::to_string).collect();
        let maps: Vec<&serde_json::Map<String, Value>> =
            subject.leads_json.iter().filter_map(Value::as_object).collect();
        let mut answers = Vec::with_capacity(leads);
        let mut decided = Vec::with_capacity(leads);
        let mut scratch = vec![0u8; subject.size * leads];
        let mut best = Figures {
            interp: f64::MAX,
            single: f64::MAX,
            batch: f64::MAX,
            encode_only: f64::MAX,
            router: f64::MAX,
            cold: f64::MAX,
        };
        for _ in 0..3 {
            best.interp = best.interp.min(time_interpreter(subject));
            best.single = best.single.min(time_single(subject, session)?);
            best.batch = best.batch.min(time_batch(subject, session, &mut answers)?);
            best.encode_only = best.encode_only.min(time_encode(subject, &mut scratch)?);
            best.cold = best.cold.min(time_cold(subject, session, &maps, &mut decided)?);
            best.router = best.router.min(time_router(subject, session, &texts, &mut decided)?);
        }
        Ok(best)
    }
}

/// The reference interpreter over the typed leads.
fn time_interpreter(subject: &BenchSubject) -> f64 {
    let (leads, order) = (subject.leads(), subject.rules.order());
    // The interpreter is slow on big sets: fewer rounds, about the same total work.
    let rounds = (20_000_000 / (leads.max(1) * order.len().max(1))).max(1);
    let mut sink = 0usize;
    let started = Instant::now();
    for _ in 0..rounds {
        for lead in &subject.typed {
            sink += subject.rules.decide_in(&order, lead).rule.map_or(0, |r| r.position);
        }
    }
    let figure = per_lead(started, leads, rounds);
    std::hint::black_box(sink);
    figure
}

/// The module, one call per encoded record.
fn time_single(subject: &BenchSubject, session: &mut Session) -> anyhow::Result<f64> {
    let mut sink = 0usize;
    let started = Instant::now();
    for _ in 0..subject.rounds {
        for record in subject.records.chunks(subject.size) {
            sink += session.decide_record(record)?.index();
        }
    }
    let figure = per_lead(started, subject.leads(), subject.rounds);
    std::hint::black_box(sink);
    Ok(figure)
}

/// The module, batched over all the encoded records.
fn time_batch(subject: &BenchSubject, session: &mut Session, answers: &mut Vec<Candidates>) -> anyhow::Result<f64> {
    let started = Instant::now();
    for _ in 0..subject.rounds {
        answers.clear();
        session.decide_records(&subject.records, answers)?;
    }
    Ok(per_lead(started, subject.leads(), subject.rounds))
}

/// Encoding alone, into a scratch area (fewer rounds: it is the slow part).
fn time_encode(subject: &BenchSubject, scratch: &mut [u8]) -> anyhow::Result<f64> {
    let rounds = subject.rounds.div_ceil(4);
    let started = Instant::now();
    for _ in 0..rounds {
        for (lead, record) in subject.leads_json.iter().zip(scratch.chunks_mut(subject.size)) {
            subject.program.encoder().encode(lead, record)?;
        }
    }
    Ok(per_lead(started, subject.leads(), rounds))
}

/// Encode and decide all the leads, parsed up front, straight into the module's memory.
fn time_cold(
    subject: &BenchSubject,
    session: &mut Session,
    maps: &[&serde_json::Map<String, Value>],
    decided: &mut Vec<runtime::Result<Candidates>>,
) -> anyhow::Result<f64> {
    let rounds = subject.rounds.div_ceil(4);
    let started = Instant::now();
    for _ in 0..rounds {
        decided.clear();
        session.decide_leads(maps.iter().copied(), decided)?;
    }
    Ok(per_lead(started, subject.leads(), rounds))
}

/// As the router does it: a batch is decoded from its messages' JSON text, then encoded and
/// decided at once (only that is timed), so its leads are fresh in cache.
fn time_router(
    subject: &BenchSubject,
    session: &mut Session,
    texts: &[String],
    decided: &mut Vec<runtime::Result<Candidates>>,
) -> anyhow::Result<f64> {
    let rounds = subject.rounds.div_ceil(8);
    let mut timed = Duration::ZERO;
    for _ in 0..rounds {
        for batch in texts.chunks(ROUTER_BATCH) {
            let parsed: Vec<Value> = batch.iter().map(|t| serde_json::from_str(t)).collect::<Result<_, _>>()?;
            let started = Instant::now();
            decided.clear();
            session.decide_leads(parsed.iter().filter_map(Value::as_object), decided)?;
            timed += started.elapsed();
        }
    }
    Ok(timed.as_nanos() as f64 / (subject.leads() * rounds) as f64)
}

/// The column heads of `rulec bench` (the figures of README, "Benchmarks").
fn print_bench_header() {
    println!(
        "{:<16} {:>7} {:>2} {:>9} {:>7} {:>6} {:>6} {:>13} {:>9} {:>11} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "rule set",
        "rules",
        "k",
        "compile s",
        "nodes",
        "depth",
        "lists",
        "proof",
        "wasm B",
        "interp ns",
        "single ns",
        "batch ns",
        "encode ns",
        "enc+dec ns",
        "cold ns",
        "agree"
    );
}

/// One rule set's row.
fn print_bench_row(name: &str, subject: &BenchSubject, figures: &Figures, agree: bool) {
    let leads = subject.leads();
    let manifest = subject.program.manifest();
    println!(
        "{:<16} {:>7} {:>2} {:>9.2} {:>7} {:>6} {:>6} {:>13} {:>9} {:>11.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>12}",
        name,
        manifest.rules.len(),
        manifest.max_candidates,
        subject.compile_s,
        subject.compiled.dag.nodes,
        subject.compiled.dag.max_depth,
        manifest.candidate_lists.len(),
        format!("{:?}", subject.compiled.validation),
        subject.compiled.wasm.len(),
        figures.interp,
        figures.single,
        figures.batch,
        figures.encode_only,
        figures.router,
        figures.cold,
        if agree { format!("{leads}/{leads}") } else { "DISAGREE".to_owned() }
    );
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
