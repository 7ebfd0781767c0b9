//! The decision module end to end: compiled by `compiler`, loaded and called through
//! `runtime`, and compared with the reference interpreter (the deciding rule and the
//! candidates); translation validation catching a broken DAG; the host refusing bad modules
//! and manifests; hot swapping under load.

use std::path::Path;
use std::sync::Arc;

use compiler::compile::{self, Compiled};
use compiler::interp::Lead;
use compiler::model::RuleSet;
use compiler::report::check_rules;
use compiler::solver::Solver;
use proptest::prelude::*;
use runtime::host::{self, Candidates, Handle, Program, Worker};
use runtime::manifest::Manifest;
use serde_json::{Value, json};

use crate::check::{lead, rule_set};

fn rules_of(text: &str) -> (RuleSet, Vec<u8>) {
    let (checked, findings, _) = check_rules("t.yaml", text.as_bytes()).expect("runs");
    assert!(
        findings.iter().all(|f| !matches!(f.code, compiler::finding::Code::Syntax | compiler::finding::Code::Type)),
        "{findings:?}"
    );
    (checked.expect("parses").0, text.as_bytes().to_vec())
}

/// Compiles whatever the rules say (findings are not a reason to refuse here).
fn compiled(text: &str) -> (RuleSet, Compiled) {
    compiled_with(text, compiler::model::DEFAULT_CANDIDATES)
}

/// [`compiled`] with `k` candidates per lead.
fn compiled_with(text: &str, k: usize) -> (RuleSet, Compiled) {
    let (mut rules, bytes) = rules_of(text);
    rules.max_candidates = k;
    let compiled = compile::compile(&rules, &[], &bytes).expect("compiles");
    compiler::wasm::verify(&compiled.wasm).expect("a verified module");
    (rules, compiled)
}

/// The names of a module's candidates.
fn names(program: &Program, candidates: Candidates) -> Vec<String> {
    program.candidates(candidates).iter().map(|&i| program.manifest().rules[i as usize].name.clone()).collect()
}

/// The names of the interpreter's candidates.
fn expected_names(rules: &RuleSet, json: &Value) -> Vec<String> {
    let lead = Lead::from_json(rules, json).expect("lead");
    rules.candidates(&lead).into_iter().map(|i| rules.rules[i].name.clone()).collect()
}

fn program(compiled: &Compiled) -> Arc<Program> {
    let engine = host::engine().expect("engine");
    Arc::new(Program::load(&engine, &compiled.wasm, compiled.manifest.clone()).expect("loads"))
}

fn example() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/rules.yaml"))
        .expect("example rules")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// With one candidate (first match alone) and with three, on the same rule set.
    #[test]
    fn the_module_decides_like_the_interpreter(text in rule_set(), leads in prop::collection::vec(lead(), 96)) {
        for k in [1, 3] {
            let (rules, compiled) = compiled_with(&text, k);
            let program = program(&compiled);
            prop_assert_eq!(program.manifest().max_candidates, k);
            let mut session = program.session().expect("session");
            let mut records = vec![0u8; program.manifest().record_size * leads.len()];
            for (lead, record) in leads.iter().zip(records.chunks_mut(program.manifest().record_size)) {
                program.encoder().encode(lead, record).expect("encodes");
            }
            let mut batched = Vec::new();
            session.decide_records(&records, &mut batched).expect("batch");
            for (json, from_batch) in leads.iter().zip(batched) {
                let expected = rules.decide(&Lead::from_json(&rules, json).expect("lead"));
                let candidates = expected_names(&rules, json);
                prop_assert!(candidates.len() <= k);
                prop_assert_eq!(candidates.first().map(String::as_str), expected.rule.map(|r| r.name.as_str()));
                let got = session.decide_json(json).expect("decides");
                prop_assert_eq!(got.rule.map(|r| r.name.as_str()), expected.rule.map(|r| r.name.as_str()), "{}\n{}", json, text);
                prop_assert_eq!(got.route, expected.route);
                let got_names: Vec<String> =
                    got.candidates.iter().map(|&i| program.manifest().rules[i as usize].name.clone()).collect();
                prop_assert_eq!(&got_names, &candidates, "k = {}: {}\n{}", k, json, text);
                prop_assert_eq!(names(&program, from_batch), candidates);
            }
        }
    }
}

#[test]
fn the_example_module_agrees_with_the_interpreter_on_the_sample_leads() {
    let (rules, compiled) = compiled(&example());
    let program = program(&compiled);
    let mut session = program.session().expect("session");
    let leads =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/leads.jsonl")).expect("leads");
    let mut decided = 0;
    for line in leads.lines().filter(|l| !l.trim().is_empty()) {
        let json: Value = serde_json::from_str(line).expect("JSON lead");
        let expected = rules.decide(&Lead::from_json(&rules, &json).expect("lead"));
        let got = session.decide_json(&json).expect("decides");
        assert_eq!(got.rule.map(|r| r.name.as_str()), expected.rule.map(|r| r.name.as_str()), "{json}");
        assert_eq!(got.route, expected.route);
        let got_names: Vec<String> =
            got.candidates.iter().map(|&i| program.manifest().rules[i as usize].name.clone()).collect();
        assert_eq!(got_names, expected_names(&rules, &json), "{json}");
        decided += 1;
    }
    assert!(decided >= 40);
    assert!(compiled.dag.max_depth <= rules.fields.len());
}

#[test]
fn a_broken_dag_is_caught_by_translation_validation() {
    let text = example();
    let (rules, _) = rules_of(&text);
    let mut lowered = compile::lower(&rules);
    compile::validate(&rules, &lowered).expect("the real DAG is valid");
    // Send the example's first sample lead somewhere else.
    let lead = Lead::from_json(&rules, &json!({"site": "degreefinder", "state": "FL", "age": 41})).expect("lead");
    let point = lowered.atoms.point_of(&lead);
    let right = lowered.dag.eval(&point).to_vec();
    assert_eq!(right.len(), rules.candidates(&lead).len());
    // The right first candidate, but the others dropped.
    lowered.dag.corrupt_leaf_at(&point, &right[..1]);
    let error = compile::validate(&rules, &lowered).expect_err("a broken DAG must not validate");
    assert!(error.to_string().contains("translation validation failed"), "{error}");
    // The Z3 fallback finds it too, and its counterexample really is one.
    let mut z3 = compiler::solver::Z3Solver::new(&lowered.atoms.domains(), lowered.formulas.clone());
    let found = z3.dag_counterexample(&lowered.dag).expect("solver runs").expect("a counterexample");
    let first_k: Vec<usize> = (0..lowered.formulas.len())
        .filter(|&i| lowered.formulas[i].eval(&found))
        .take(lowered.dag.max_candidates)
        .collect();
    assert_ne!(lowered.dag.eval(&found), first_k.as_slice());

    // The same on a rule set small enough to validate by enumeration.
    let small = "version: 1\nroutes: [a, b]\nfields:\n  age: { type: int, min: 0, max: 9 }\nrules:\n  - name: young\n    priority: 1\n    when: age < 5\n    route: a\n";
    let (rules, _) = rules_of(small);
    let mut lowered = compile::lower(&rules);
    assert_eq!(compile::validate(&rules, &lowered).expect("valid"), compile::Validation::Enumeration);
    let point = lowered.atoms.point_of(&Lead::from_json(&rules, &json!({"age": 3})).expect("lead"));
    lowered.dag.corrupt_leaf_at(&point, &[]);
    assert!(compile::validate(&rules, &lowered).is_err());
}

#[test]
fn rule_sets_with_errors_are_not_compiled() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check/conflict.yaml"))
            .expect("fixture");
    let (checked, findings, _) = check_rules("c.yaml", text.as_bytes()).expect("runs");
    let (rules, _) = checked.expect("parses");
    let error = compile::compile(&rules, &findings, text.as_bytes()).expect_err("refused");
    assert!(error.to_string().contains("error-level findings"), "{error}");
}

#[test]
fn the_host_refuses_bad_modules_and_manifests() {
    let (_, compiled) = compiled(&example());
    let engine = host::engine().expect("engine");
    let load = |wasm: &[u8], manifest: Manifest| {
        Program::load(&engine, wasm, manifest).err().map(|e| e.to_string()).unwrap_or_default()
    };

    // A manifest that belongs to another module.
    let mut other = compiled.manifest.clone();
    other.module_hash = "00".repeat(32);
    assert!(load(&compiled.wasm, other).contains("does not match the module"));

    // A truncated module (with a manifest that names exactly those bytes).
    let truncated = &compiled.wasm[..compiled.wasm.len() / 2];
    let mut manifest = compiled.manifest.clone();
    manifest.module_hash = host::sha256_hex(truncated);
    assert!(load(truncated, manifest).contains("invalid decision module"));

    // A module that imports something.
    let mut module = wasm_encoder::Module::new();
    let mut types = wasm_encoder::TypeSection::new();
    types.ty().function([], []);
    let mut imports = wasm_encoder::ImportSection::new();
    imports.import("env", "clock", wasm_encoder::EntityType::Function(0));
    module.section(&types).section(&imports);
    let importing = module.finish();
    let mut manifest = compiled.manifest.clone();
    manifest.module_hash = host::sha256_hex(&importing);
    assert!(load(&importing, manifest).contains("imports nothing"));

    // A manifest with a wrong layout or ABI version.
    let mut manifest = compiled.manifest.clone();
    manifest.record_size += 8;
    assert!(load(&compiled.wasm, manifest).contains("record_size"));
    let mut manifest = compiled.manifest.clone();
    manifest.abi_version = 99;
    assert!(load(&compiled.wasm, manifest).contains("ABI version"));
    assert!(Manifest::from_json("{\"abi_version\": 1}").is_err());

    // A bad candidate table: each is refused on load.
    let lists = compiled.manifest.candidate_lists.len();
    assert!(lists > 2 && compiled.manifest.candidate_lists.iter().any(|l| l.len() == 3));
    let rules = compiled.manifest.rules.len() as u32;
    type Spoil = fn(&mut Manifest, u32);
    let bad_tables: [(&str, Spoil); 7] = [
        ("list 0 not empty", |m, _| m.candidate_lists[0] = vec![0]),
        ("no table", |m, _| m.candidate_lists.clear()),
        ("an empty list past 0", |m, _| m.candidate_lists[1].clear()),
        ("a rule outside the table", |m, rules| m.candidate_lists[1] = vec![rules]),
        ("out of first-match order", |m, _| m.candidate_lists[1] = vec![2, 1]),
        ("too many candidates", |m, _| m.max_candidates = 2),
        ("k outside 1..=8", |m, _| m.max_candidates = 9),
    ];
    for (what, spoil) in bad_tables {
        let mut manifest = compiled.manifest.clone();
        spoil(&mut manifest, rules);
        let error = load(&compiled.wasm, manifest);
        assert!(error.contains("candidate") || error.contains("max_candidates"), "{what}: {error}");
    }
    // An ABI 2 manifest (no table) still parses, for the ingest's schema, but is refused.
    let mut old = serde_json::to_value(&compiled.manifest).expect("JSON");
    let object = old.as_object_mut().expect("an object");
    object.remove("candidate_lists");
    object.remove("max_candidates");
    object.insert("abi_version".to_owned(), json!(2));
    let old: Manifest = serde_json::from_value(old).expect("an older manifest parses");
    assert!(load(&compiled.wasm, old).contains("ABI version 2"));

    // Verification: the emitted module passes; garbage and a loop in `decide` do not.
    assert!(compiler::wasm::verify(&compiled.wasm).is_ok());
    assert!(compiler::wasm::verify(b"\0asm\x01\0\0\0\x05").is_err());
    let mut module = wasm_encoder::Module::new();
    let mut types = wasm_encoder::TypeSection::new();
    types.ty().function([], [wasm_encoder::ValType::I32]);
    let mut funcs = wasm_encoder::FunctionSection::new();
    funcs.function(0).function(0);
    let mut code = wasm_encoder::CodeSection::new();
    let mut version = wasm_encoder::Function::new([]);
    version.instructions().i32_const(1).end();
    let mut looping = wasm_encoder::Function::new([]);
    looping.instructions().loop_(wasm_encoder::BlockType::Empty).end().i32_const(0).end();
    code.function(&version).function(&looping);
    module.section(&types).section(&funcs).section(&code);
    let error = compiler::wasm::verify(&module.finish()).expect_err("a loop in decide");
    assert!(error.to_string().contains("loop in the per-lead path"), "{error}");
}

#[test]
fn leads_that_do_not_fit_get_clear_errors() {
    let (_, compiled) = compiled(&example());
    let program = program(&compiled);
    let mut session = program.session().expect("session");
    for (lead, problem) in [
        (json!({"age": "old"}), "`age`: `\"old\"` is not exact with 0 digits after the point"),
        (json!({"age": 1000}), "`age`: `1000` is outside the field's domain"),
        (json!({"age": true}), "`age`: expected a number, got true"),
        (json!({"state": "ZZ"}), "`state`: `ZZ` is not one of the field's values"),
        (json!({"state": 5}), "`state`: expected a string, got 5"),
        (json!({"zip": ["9"]}), "`zip`: expected a string, got [\"9\"]"),
        (json!({"has_diploma": "yes"}), "`has_diploma`: expected true or false, got \"yes\""),
        (json!({"loan_amount": 10.555}), "`loan_amount`: `10.555` is not exact with 2 digits after the point"),
        (json!([1, 2]), "JSON object"),
    ] {
        let error = session.decide_json(&lead).expect_err("refused").to_string();
        assert!(error.contains(problem), "{lead}: {error}");
    }
}

#[test]
fn workers_switch_to_a_swapped_module_between_calls() {
    let (_, first) = compiled(
        "version: 1\nroutes: [a, b]\nfields:\n  age: { type: int, min: 0, max: 99 }\nrules:\n  - name: old\n    priority: 1\n    when: age >= 50\n    route: a\n",
    );
    let (_, second) = compiled(
        "version: 1\nroutes: [a, b]\nfields:\n  age: { type: int, min: 0, max: 99 }\nrules:\n  - name: young\n    priority: 1\n    when: age < 50\n    route: b\n",
    );
    let engine = host::engine().expect("engine");
    let load = |c: &Compiled| Program::load(&engine, &c.wasm, c.manifest.clone()).expect("loads");
    let handle = Arc::new(Handle::new(load(&first)));
    let lead = json!({"age": 30});

    let mut worker = Worker::new(Arc::clone(&handle)).expect("worker");
    assert_eq!(worker.session().expect("session").decide_json(&lead).expect("decides").rule, None);
    handle.swap(load(&second));
    assert_eq!(worker.session().expect("session").decide_json(&lead).expect("decides").route, Some("b"));

    // Under load: every answer comes from one of the two modules, none fails.
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let handle = Arc::clone(&handle);
            std::thread::spawn(move || {
                let mut worker = Worker::new(handle).expect("worker");
                for i in 0..5_000 {
                    let session = worker.session().expect("session");
                    let route =
                        session.decide_json(&json!({"age": i % 100})).expect("decides").route.map(str::to_owned);
                    let age = i % 100;
                    assert!(
                        route.is_none()
                            || (route.as_deref() == Some("a") && age >= 50)
                            || (route.as_deref() == Some("b") && age < 50)
                    );
                }
            })
        })
        .collect();
    for i in 0..20 {
        handle.swap(load(if i % 2 == 0 { &first } else { &second }));
    }
    for t in threads {
        t.join().expect("no panic");
    }
}

/// Every way a lead can be decided (one record, a batch of records, one JSON lead, a batch
/// of leads) against the interpreter.
fn assert_decides_like_the_interpreter(rules: &RuleSet, program: &Arc<Program>, leads: &[Value]) {
    let mut session = program.session().expect("session");
    let size = program.manifest().record_size;
    let mut records = vec![0u8; size * leads.len()];
    for (lead, record) in leads.iter().zip(records.chunks_mut(size)) {
        program.encoder().encode(lead, record).expect("encodes");
    }
    let mut batched = Vec::new();
    session.decide_records(&records, &mut batched).expect("batch");
    let mut in_place = Vec::new();
    session.decide_leads(leads.iter().filter_map(Value::as_object), &mut in_place).expect("leads");
    assert_eq!((batched.len(), in_place.len()), (leads.len(), leads.len()));
    for (((json, record), from_batch), from_leads) in leads.iter().zip(records.chunks(size)).zip(batched).zip(in_place)
    {
        let expected = expected_names(rules, json);
        assert_eq!(names(program, session.decide_record(record).expect("one record")), expected, "{json}");
        assert_eq!(names(program, from_batch), expected, "{json}");
        assert_eq!(names(program, from_leads.expect("encodes")), expected, "{json}");
        let decided = session.decide_json(json).expect("decides");
        assert_eq!(decided.rule.map(|r| r.name.clone()), expected.first().cloned(), "{json}");
        assert_eq!(decided.candidates, program.candidates(from_batch), "{json}");
    }
}

#[test]
fn wide_and_huge_number_fields_decide_like_the_interpreter() {
    // `amount` has a domain too big for a lookup table and more than 64 intervals (its nodes
    // test the interval in two steps); `age` gets a lookup table; `score` a short search.
    let mut text = String::from(
        "version: 1\nroutes: [a, b, c]\ndefault_route: c\nfields:\n  amount: { type: decimal, scale: 2, min: 0, max: 1000000 }\n  age: { type: int, min: 0, max: 120 }\n  score: { type: int, min: -5000000, max: 5000000 }\n  tier: { type: enum, values: [gold, silver] }\nrules:\n",
    );
    let cuts: Vec<i64> = (1..=90).map(|k| k * 1111 + k * k).collect();
    for (i, cut) in cuts.iter().enumerate() {
        let (age, tier) = (18 + (i % 7) * 9, if i % 3 == 0 { "gold" } else { "silver" });
        text.push_str(&format!(
            "  - name: r{i}\n    priority: {}\n    when: amount < {}.{:02} and age >= {age} and (tier == \"{tier}\" or score > {})\n    route: {}\n",
            i + 1,
            cut,
            i % 100,
            (i as i64 - 45) * 1000,
            ["a", "b"][i % 2]
        ));
    }
    let (rules, compiled) = compiled(&text);
    assert!(compile::lower(&rules).atoms.fields[0].len() > 64, "`amount` has enough intervals to be split");
    let program = program(&compiled);
    // Every cut, one unit either side, the ends of each domain, and leads missing fields.
    let mut leads = Vec::new();
    for (i, cut) in cuts.iter().enumerate() {
        for delta in [-1i64, 0, 1] {
            let units = cut * 100 + (i % 100) as i64 + delta;
            let amount = serde_json::Number::from_f64(units as f64 / 100.0).map_or(Value::Null, Value::Number);
            let age = ([0, 17, 18 + (i % 7) as i64 * 9, 120][i % 4] + delta).clamp(0, 120);
            let score = [(i as i64 - 45) * 1000 + delta, -5_000_000, 5_000_000][i % 3];
            let tier = ["gold", "silver"][i % 2];
            leads.push(json!({"amount": amount, "age": age, "score": score, "tier": tier}));
            leads.push(json!({"amount": amount, "tier": "gold"}));
        }
    }
    leads.extend([json!({}), json!({"amount": 0, "age": 120}), json!({"amount": 1_000_000, "score": 0})]);
    assert!(leads.len() % compiler::wasm::LANES != 0, "the batch ends in a partial group");
    assert_decides_like_the_interpreter(&rules, &program, &leads);
}

#[test]
fn a_batch_of_leads_keeps_each_answer_in_place_across_calls_and_errors() {
    let text = compiler::generate::rule_set(300, 3);
    let (checked, findings, _) = check_rules("g.yaml", text.as_bytes()).expect("runs");
    let (rules, _) = checked.expect("parses");
    let compiled = compile::compile(&rules, &[], text.as_bytes()).expect("compiles");
    assert!(
        findings.iter().all(|f| !matches!(f.code, compiler::finding::Code::Syntax | compiler::finding::Code::Type))
    );
    let program = program(&compiled);
    // More than one module call's worth, with leads that cannot be encoded among them.
    let mut leads = compiler::generate::leads(&rules, 2 * program.manifest().max_batch + 37, 11);
    for i in (5..leads.len()).step_by(97) {
        leads[i] = json!({"state": "ZZ"});
    }
    let mut session = program.session().expect("session");
    let mut answers = Vec::new();
    session.decide_leads(leads.iter().filter_map(Value::as_object), &mut answers).expect("decides");
    assert_eq!(answers.len(), leads.len());
    for (i, (json, answer)) in leads.iter().zip(answers).enumerate() {
        if i >= 5 && (i - 5) % 97 == 0 {
            assert!(answer.expect_err("refused").to_string().contains("`ZZ` is not one of"));
            continue;
        }
        assert_eq!(names(&program, answer.expect("encodes")), expected_names(&rules, json), "{json}");
    }
    // The same leads through every other entry point.
    leads.retain(|l| l.get("state") != Some(&json!("ZZ")));
    assert_decides_like_the_interpreter(&rules, &program, &leads);
}
