//! `rulec compile`: check, build the decision DAG, prove it equal to first match
//! (translation validation), emit and verify the Wasm module, and write its manifest.

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

/// How the DAG was proven equal to first match.
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

/// Builds the atoms, formulas and DAG of a checked rule set.
pub fn lower(rules: &RuleSet) -> Lowered {
    // The same encoding the analysis checked ([`Encoded`]), plus the DAG.
    let Encoded { atoms, order, formulas } = Encoded::new(rules);
    let dag = Dag::build(&atoms.domains(), &formulas);
    Lowered { atoms, formulas, dag, order }
}

/// Proves the DAG equal to first match over the formulas; a counterexample is an error.
pub fn validate(rules: &RuleSet, lowered: &Lowered) -> Result<Validation> {
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
/// set with error-level findings.
pub fn compile(rules: &RuleSet, findings: &[crate::finding::Finding], source: &[u8]) -> Result<Compiled> {
    let errors = findings.iter().filter(|f| f.severity() == Severity::Error).count();
    if errors > 0 {
        return Err(Error::NotCompilable(errors));
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
        dag: serde_json::to_value(stats).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dag_is_proven_through_the_solver_seam() {
        let text = "version: 1\nroutes: [x, y]\nfields:\n  age: { type: int, min: 0, max: 120 }\nrules:\n  - { name: young, priority: 10, when: age < 40, route: x }\n  - { name: older, priority: 20, when: age >= 30, route: y }\n";
        let (rules, findings) = crate::model::check(&crate::syntax::document::read(text).0);
        assert!(findings.is_empty(), "{findings:?}");
        let lowered = lower(&rules);
        let solver: &mut dyn Solver = &mut Z3Solver::new(&lowered.atoms.domains(), lowered.formulas.clone());
        assert!(matches!(solver.dag_counterexample(&lowered.dag), Ok(None)));
        assert_eq!(solver.calls(), 1);
    }
}
