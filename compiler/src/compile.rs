//! `rulec compile`: check, build the decision DAG, prove it equal to the first
//! `max_candidates` matches in first-match order (translation validation), emit and verify
//! the Wasm module, and write its manifest (with the DAG's candidate lists).

use std::time::{Duration, Instant};

use abi::manifest::{FieldKind, FieldLayout, Manifest, OtherClass, RuleEntry};

use crate::atoms::{Atoms, Encoded, FieldAtoms, Formula};
use crate::dag::{Dag, DagStats};
use crate::finding::Severity;
use crate::model::RuleSet;
use crate::solver::{Solver, Z3Solver};
use crate::wasm::{self, MemoryPlan};
use crate::{Error, Result};

/// Up to this many atom combinations, translation validation enumerates them all.
pub const ENUMERATION_LIMIT: u64 = 200_000;
/// Node visits the symbolic case analysis may make before the validation falls back to Z3.
pub const SYMBOLIC_BUDGET: usize = 2_000_000;

/// How the DAG was proven equal to the first `k` matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Validation {
    /// Every atom combination was tried.
    Enumeration,
    /// Symbolic case analysis over atom sets covered every path (`Dag::validate_symbolic`).
    CaseAnalysis,
    /// Z3 found no counterexample.
    Solver,
}

/// A compiled rule set.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The module.
    pub wasm: Vec<u8>,
    /// Its manifest.
    pub manifest: Manifest,
    /// The DAG's figures.
    pub dag: DagStats,
    /// How it was validated.
    pub validation: Validation,
    /// Time of each stage: DAG, validation, emission.
    pub timings: [Duration; 3],
}

/// The pieces of a compile before emission, for tests that want to tamper with the DAG.
pub struct Lowered {
    /// The atoms.
    pub atoms: Atoms,
    /// Rule formulas in first-match order.
    pub formulas: Vec<Formula>,
    /// The DAG.
    pub dag: Dag,
    /// Rule indices (in `RuleSet::rules`) in first-match order.
    pub order: Vec<usize>,
}

/// Builds the atoms, formulas and DAG (of the first `rules.max_candidates` matches) of a
/// checked rule set.
pub fn lower(rules: &RuleSet) -> Lowered {
    // The same encoding the analysis checked ([`Encoded`]), plus the DAG.
    let Encoded { atoms, order, formulas } = Encoded::new(rules);
    let dag = Dag::build(&atoms.domains(), &formulas, rules.max_candidates);
    Lowered { atoms, formulas, dag, order }
}

/// Proves the DAG equal to the first `rules.max_candidates` matches over the formulas, in
/// first-match order, at every lead; a counterexample is an error.
pub fn validate(rules: &RuleSet, lowered: &Lowered) -> Result<Validation> {
    if lowered.dag.max_candidates != rules.max_candidates {
        return Err(Error::TranslationValidation {
            lead: format!(
                "any lead (the DAG gives {} candidates, the rules ask for {})",
                lowered.dag.max_candidates, rules.max_candidates
            ),
        });
    }
    let domains = lowered.atoms.domains();
    let counterexample = match lowered.dag.validate_by_enumeration(&domains, &lowered.formulas, ENUMERATION_LIMIT) {
        Ok(Some(())) => return Ok(Validation::Enumeration),
        Err(point) => Some(point),
        Ok(None) => match lowered.dag.validate_symbolic(&domains, &lowered.formulas, SYMBOLIC_BUDGET) {
            Ok(true) => return Ok(Validation::CaseAnalysis),
            Err(point) => Some(point),
            Ok(false) => Z3Solver::new(&domains, lowered.formulas.clone()).dag_counterexample(&lowered.dag)?,
        },
    };
    match counterexample {
        None => Ok(Validation::Solver),
        Some(point) => {
            let lead = serde_json::Value::Object(lowered.atoms.lead_of(&point).to_json(rules)).to_string();
            Err(Error::TranslationValidation { lead })
        }
    }
}

/// Compiles a checked rule set (`source` is the rules file, for its hash). Refuses a rule
/// set with error-level findings, or whose `max_candidates` is outside
/// [`crate::model::CANDIDATES`].
pub fn compile(rules: &RuleSet, findings: &[crate::finding::Finding], source: &[u8]) -> Result<Compiled> {
    let errors = findings.iter().filter(|f| f.severity() == Severity::Error).count();
    if errors > 0 {
        return Err(Error::NotCompilable(errors));
    }
    if !crate::model::CANDIDATES.contains(&rules.max_candidates) {
        return Err(Error::Candidates(rules.max_candidates));
    }
    let started = Instant::now();
    let lowered = lower(rules);
    let dag_time = started.elapsed();
    let started = Instant::now();
    let validation = validate(rules, &lowered)?;
    let validation_time = started.elapsed();
    let started = Instant::now();
    let wasm = wasm::emit(&lowered.dag, &lowered.atoms)?;
    wasm::verify(&wasm)?;
    let emit_time = started.elapsed();
    let stats = lowered.dag.stats();
    let manifest = manifest(rules, &lowered, &wasm, source, &stats);
    Ok(Compiled { wasm, manifest, dag: stats, validation, timings: [dag_time, validation_time, emit_time] })
}

fn manifest(rules: &RuleSet, lowered: &Lowered, wasm: &[u8], source: &[u8], stats: &DagStats) -> Manifest {
    let plan = MemoryPlan::new(&lowered.atoms);
    let mut number = 0;
    let fields = rules
        .fields
        .iter()
        .zip(&lowered.atoms.fields)
        .enumerate()
        .map(|(i, (field, atoms))| {
            let kind = match atoms {
                FieldAtoms::Enum { values } => FieldKind::Enum { values: values.clone() },
                FieldAtoms::Bool => FieldKind::Bool,
                FieldAtoms::Str { literals, others } => {
                    let (prefixes, suffixes) = lowered.atoms.affixes(i);
                    let longest = |list: &[String], test: &dyn Fn(&str) -> bool| {
                        list.iter().filter(|x| test(x)).max_by_key(|x| x.len()).cloned()
                    };
                    FieldKind::String {
                        literals: literals.clone(),
                        prefixes: prefixes.to_vec(),
                        suffixes: suffixes.to_vec(),
                        others: others
                            .iter()
                            .map(|o| OtherClass {
                                prefix: longest(prefixes, &|p| o.starts_with(p)),
                                suffix: longest(suffixes, &|s| o.ends_with(s)),
                            })
                            .collect(),
                    }
                }
                FieldAtoms::Numeric { .. } => {
                    let (min, max) = field.ty.numeric_domain().unwrap_or((0, 0));
                    let kind = FieldKind::Number {
                        value_offset: plan.layout.value(number),
                        scale: field.ty.scale(),
                        min: i64::try_from(min).unwrap_or(i64::MIN),
                        max: i64::try_from(max).unwrap_or(i64::MAX),
                    };
                    number += 1;
                    kind
                }
            };
            FieldLayout { name: field.name.clone(), slot: plan.layout.slot(i), kind }
        })
        .collect();
    Manifest {
        abi_version: abi::ABI_VERSION,
        rule_set_hash: abi::sha256_hex(source),
        module_hash: abi::sha256_hex(wasm),
        compiler_version: env!("CARGO_PKG_VERSION").to_owned(),
        record_size: plan.layout.record_size(),
        max_batch: plan.max_batch,
        output_offset: plan.output_offset,
        default_route: rules.default_route.clone(),
        fields,
        rules: lowered
            .order
            .iter()
            .enumerate()
            .map(|(index, &i)| RuleEntry {
                index,
                name: rules.rules[i].name.clone(),
                route: rules.rules[i].route.clone(),
                target: rules.rules[i].target.clone(),
                fallthrough: rules.rules[i].fallthrough,
                priority: rules.rules[i].priority,
            })
            .collect(),
        // Positions in first-match order are indices into the rule table above.
        max_candidates: lowered.dag.max_candidates,
        candidate_lists: lowered
            .dag
            .decisions
            .iter()
            .map(|list| list.iter().map(|&p| u32::try_from(p).unwrap_or(u32::MAX)).collect())
            .collect(),
        dag: serde_json::to_value(stats).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules_of(text: &str, k: usize) -> RuleSet {
        let (mut rules, findings) = crate::model::check(&crate::syntax::document::read(text).0);
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(rules.max_candidates, crate::model::DEFAULT_CANDIDATES);
        rules.max_candidates = k;
        rules
    }

    fn example(k: usize) -> RuleSet {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/rules.yaml"))
            .expect("the example rules");
        rules_of(&text, k)
    }

    /// Three overlapping age bands and a catch-all: small enough to enumerate.
    const BANDS: &str = "version: 1\nroutes: [x, y, z]\nfields:\n  age: { type: int, min: 0, max: 120 }\n  vip: { type: bool }\nrules:\n  - { name: young, priority: 10, when: age < 40, route: x }\n  - { name: older, priority: 20, when: age >= 30, route: y }\n  - { name: vips, priority: 30, when: vip, route: z }\n  - { name: adults, priority: 40, when: age >= 18, route: x }\n";

    /// The first `k` matches at a point, by the formulas alone.
    fn expected(lowered: &Lowered, point: &[usize]) -> Vec<usize> {
        let k = lowered.dag.max_candidates;
        lowered.formulas.iter().enumerate().filter(|(_, f)| f.eval(point)).map(|(i, _)| i).take(k).collect()
    }

    /// The same DAG with the leaf at `point` answering a wrong list.
    fn corrupted(lowered: &Lowered, point: &[usize]) -> Dag {
        let right = lowered.dag.eval(point).to_vec();
        let wrong = match right.as_slice() {
            [] => vec![0],
            [only] => vec![only + 1],
            [first, ..] => vec![*first],
        };
        let mut dag = lowered.dag.clone();
        dag.corrupt_leaf_at(point, &wrong);
        dag
    }

    #[test]
    fn the_dag_is_proven_through_the_solver_seam() {
        let text = "version: 1\nroutes: [x, y]\nfields:\n  age: { type: int, min: 0, max: 120 }\nrules:\n  - { name: young, priority: 10, when: age < 40, route: x }\n  - { name: older, priority: 20, when: age >= 30, route: y }\n";
        for k in 1..=3 {
            let lowered = lower(&rules_of(text, k));
            let solver: &mut dyn Solver = &mut Z3Solver::new(&lowered.atoms.domains(), lowered.formulas.clone());
            assert!(matches!(solver.dag_counterexample(&lowered.dag), Ok(None)), "k = {k}");
            assert_eq!(solver.calls(), 1);
        }
    }

    #[test]
    fn with_one_candidate_the_dag_is_the_first_match_dag() {
        let lowered = lower(&example(1));
        // The figures of the first-match DAG this compiler built before it named candidates.
        let stats = lowered.dag.stats();
        assert_eq!((stats.nodes, stats.edges, stats.max_depth), (407, 972, 8));
        assert!(lowered.dag.decisions.iter().all(|list| list.len() <= 1));
    }

    #[test]
    fn leaves_hold_the_first_k_matches_and_every_validator_proves_them() {
        for k in 1..=3 {
            let rules = rules_of(BANDS, k);
            let lowered = lower(&rules);
            assert_eq!(validate(&rules, &lowered).expect("valid"), Validation::Enumeration);
            let domains = lowered.atoms.domains();
            let lead = |json: serde_json::Value| {
                lowered.atoms.point_of(&crate::interp::Lead::from_json(&rules, &json).expect("a lead"))
            };
            // 35 and a VIP: young, older, vips, adults.
            let all = [0, 1, 2, 3];
            assert_eq!(lowered.dag.eval(&lead(serde_json::json!({"age": 35, "vip": true}))), &all[..k]);
            assert_eq!(lowered.dag.eval(&lead(serde_json::json!({"age": 10}))), &[0][..]);
            assert!(lowered.dag.eval(&lead(serde_json::json!({}))).is_empty());
            // Symbolic case analysis and Z3 prove the same DAG.
            assert_eq!(lowered.dag.validate_symbolic(&domains, &lowered.formulas, SYMBOLIC_BUDGET), Ok(true));
            let mut z3 = Z3Solver::new(&domains, lowered.formulas.clone());
            assert_eq!(z3.dag_counterexample(&lowered.dag).expect("solver runs"), None, "k = {k}");
            // Every lead the interpreter sees, the same candidates.
            let order = rules.order();
            for age in [0, 17, 18, 29, 30, 39, 40, 120] {
                for vip in [None, Some(false), Some(true)] {
                    let json = serde_json::json!({"age": age, "vip": vip});
                    let typed = crate::interp::Lead::from_json(&rules, &json).expect("a lead");
                    let names: Vec<&str> =
                        rules.candidates(&typed).iter().map(|&i| rules.rules[i].name.as_str()).collect();
                    let from_dag: Vec<&str> = lowered
                        .dag
                        .eval(&lowered.atoms.point_of(&typed))
                        .iter()
                        .map(|&p| rules.rules[order[p]].name.as_str())
                        .collect();
                    assert_eq!(names, from_dag, "k = {k}: {json}");
                }
            }
        }
    }

    #[test]
    fn a_corrupted_leaf_is_caught_by_each_validator() {
        for k in 1..=3 {
            // Enumeration, through `validate`.
            let rules = rules_of(BANDS, k);
            let mut lowered = lower(&rules);
            let point = lowered.atoms.point_of(
                &crate::interp::Lead::from_json(&rules, &serde_json::json!({"age": 35, "vip": true})).expect("lead"),
            );
            lowered.dag = corrupted(&lowered, &point);
            let error = validate(&rules, &lowered).expect_err("enumeration catches it");
            assert!(error.to_string().contains("translation validation failed"), "{error}");
            let found =
                lowered.dag.validate_by_enumeration(&lowered.atoms.domains(), &lowered.formulas, ENUMERATION_LIMIT);
            let found = found.expect_err("a counterexample");
            assert_ne!(lowered.dag.eval(&found), expected(&lowered, &found).as_slice());

            // Symbolic case analysis and Z3, on the example (too many points to enumerate).
            let rules = example(k);
            let mut lowered = lower(&rules);
            let domains = lowered.atoms.domains();
            assert_eq!(validate(&rules, &lowered).expect("valid"), Validation::CaseAnalysis);
            let json = serde_json::json!({"site": "degreefinder", "state": "CA", "age": 30, "program": "nursing"});
            let point = lowered.atoms.point_of(&crate::interp::Lead::from_json(&rules, &json).expect("lead"));
            lowered.dag = corrupted(&lowered, &point);
            let found = lowered.dag.validate_symbolic(&domains, &lowered.formulas, SYMBOLIC_BUDGET);
            let found = found.expect_err("case analysis catches it");
            assert_ne!(lowered.dag.eval(&found), expected(&lowered, &found).as_slice(), "k = {k}");
            let mut z3 = Z3Solver::new(&domains, lowered.formulas.clone());
            let found = z3.dag_counterexample(&lowered.dag).expect("solver runs").expect("Z3 catches it");
            assert_ne!(lowered.dag.eval(&found), expected(&lowered, &found).as_slice(), "k = {k}");
        }
    }

    #[test]
    fn z3_proves_the_first_k_matches_of_the_example() {
        let lowered = lower(&example(3));
        assert!(lowered.dag.decisions.iter().any(|list| list.len() == 3));
        let mut z3 = Z3Solver::new(&lowered.atoms.domains(), lowered.formulas.clone());
        assert_eq!(z3.dag_counterexample(&lowered.dag).expect("solver runs"), None);
    }

    #[test]
    fn candidates_outside_one_to_eight_are_refused() {
        for k in [0, 9] {
            let rules = rules_of(BANDS, k);
            let error = compile(&rules, &[], BANDS.as_bytes()).expect_err("refused");
            assert!(matches!(error, Error::Candidates(n) if n == k), "{error}");
        }
        let compiled = compile(&rules_of(BANDS, 8), &[], BANDS.as_bytes()).expect("compiles");
        compiled.manifest.check().expect("a consistent manifest");
        assert_eq!(compiled.manifest.max_candidates, 8);
        assert_eq!(compiled.manifest.candidate_lists[0], Vec::<u32>::new());
    }
}
