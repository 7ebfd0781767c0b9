//! `rulec diff`: the change impact of a rule change, exactly. Which leads does the new rule
//! set send somewhere else than the old one did, and which are decided by another rule?
//! (Margrave's change-impact queries and cedar's `analyze compare` ask the same of policies.)
//!
//! Both rule sets are read over one **joint lead space**: the new schema's fields, plus the
//! fields only the old schema has (leads may still carry them; the new rules ignore them). A
//! field both schemas declare with types a value can have in both (enum and string, int and
//! int, decimal and decimal of one scale, bool and bool) is one field of the new type; a field
//! whose type changed otherwise cannot be read by the old rules, so for them it is missing.
//! The fields are cut into atoms by the tests of both rule sets together ([`crate::atoms`]), so
//! a point (one atom per field) is decided by each rule set in one way.
//!
//! The search is a case analysis over atoms, like the decision DAG's ([`crate::dag`]): a
//! sub-problem is what is left of both first-match lists once some fields are known; it
//! splits on a field until each list has decided (its first rule surely matches, or none is
//! left). Rules identical in both sets (name, route and condition) and in the same relative
//! order (the longest such run, found once) cannot make a difference, so a sub-problem in
//! which only they are left is settled at once, and the split prefers the fields that confine
//! the rules that changed. Every leaf is an exact region of the space, so the findings, their
//! shares of the atom space, and "nothing moves" are proven, not sampled. Past a node budget
//! the search hands over to Z3 ([`Solver::first_match_difference`]), which proves equality or
//! names the differing decision pairs one by one (without shares).
//!
//! Every witness is decoded into a lead and run through the reference interpreter on both
//! rule sets, with their own schemas, before it is reported.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use serde_json::{Map, Value, json};

use crate::atoms::{AtomSet, Atoms, Formula};
use crate::dag::normalize;
use crate::finding::Severity;
use crate::interp::{Lead, test};
use crate::model::{Cond, Field, FieldType, RuleSet, format_units};
use crate::report::Report;
use crate::solver::{Solver, Z3Solver};
use crate::source::Source;
use crate::{Error, Result};

/// Sub-problems the case analysis may solve before Z3 takes over.
pub const CASE_BUDGET: usize = 400_000;
/// Decision pairs Z3 is asked for, one by one, when it takes over.
pub const SOLVER_PAIRS: usize = 200;

/// A rules file read for a diff: parsed and type-checked.
#[derive(Debug, Clone)]
pub struct Side {
    /// The checked rules.
    pub rules: RuleSet,
    /// The file.
    pub source: Source,
}

impl Side {
    /// Reads a rules file; a file with syntax or type errors cannot be compared, and gives
    /// its `rulec check`-style report instead.
    pub fn read(name: &str, bytes: &[u8]) -> std::result::Result<Side, Box<Report>> {
        match crate::report::read_rules(name, bytes) {
            (Some((rules, source)), findings) if findings.iter().all(|f| f.severity() != Severity::Error) => {
                Ok(Side { rules, source })
            }
            (checked, findings) => {
                let rules_checked = checked.as_ref().map_or(0, |(r, _)| r.rules.len());
                let source = checked.map_or_else(
                    || Source::new(name, String::from_utf8_lossy(bytes).into_owned()),
                    |(_, source)| source,
                );
                Err(Box::new(Report { source, rules_checked, findings, stats: Default::default() }))
            }
        }
    }
}

/// What a rule set decides for a lead, by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Decision {
    /// The deciding rule; `None` when no rule matched.
    pub rule: Option<String>,
    /// Where the lead goes: the rule's route, the default route, or nowhere (unmatched).
    pub route: Option<String>,
}

impl Decision {
    fn describe(&self) -> String {
        match (&self.rule, &self.route) {
            (Some(rule), Some(route)) => format!("`{rule}` -> {route}"),
            (None, Some(route)) => format!("no rule -> default {route}"),
            (_, None) => "no rule -> unmatched".to_owned(),
        }
    }
}

/// How a region of leads changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The leads go to another route.
    Moves,
    /// Same route, decided by another rule (matters for reports and per-rule counts).
    Reattributed,
}

impl Kind {
    /// The name in JSON and SARIF.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Moves => "moves",
            Kind::Reattributed => "reattributed",
        }
    }
}

/// One (old decision → new decision) pair that some leads take.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Moves or reattributed.
    pub kind: Kind,
    /// What the old rules decide for these leads.
    pub from: Decision,
    /// What the new rules decide for them.
    pub to: Decision,
    /// The share of the joint atom space (every atom combination counts once) in this pair;
    /// `None` when Z3 found the pair (it does not count).
    pub share: Option<f64>,
    /// A lead in the pair, checked with the interpreter on both rule sets.
    pub witness: Map<String, Value>,
}

/// A byte range of a rules file.
type Span = std::ops::Range<usize>;

/// A difference between the two schemas.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SchemaChange {
    /// The field (or `timezone`).
    pub field: String,
    /// `added`, `removed`, `retyped` (the old rules read it as missing), `domain` (same kind,
    /// other values or bounds) or `timezone`.
    pub change: &'static str,
    /// The old type, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    /// The new type, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
}

/// A rule whose text changed (by name), and how.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleEdit {
    /// The rule.
    pub rule: String,
    /// What changed: `when`, `priority`, `route`, `enabled`.
    pub aspects: Vec<&'static str>,
}

/// How the equality, or the differences, were established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Proof {
    /// Case analysis over every atom combination (exact, with shares).
    CaseAnalysis,
    /// Z3 (the case analysis was over budget): equality proven, or pairs found one by one.
    Solver,
}

/// Figures of one diff.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct DiffStats {
    /// Rules taking part in the old and in the new set.
    pub rules: (usize, usize),
    /// Rules not in the common, same-order run of identical rules (old, new).
    pub changed_rules: (usize, usize),
    /// Atom combinations of the joint space (as a float: it can be astronomically large).
    pub atom_space: f64,
    /// Sub-problems the case analysis solved.
    pub nodes: usize,
    /// Queries sent to Z3.
    pub solver_calls: usize,
}

/// The change impact of going from one rule set to another.
#[derive(Debug, Clone)]
pub struct Diff {
    /// The old file's name.
    pub old: String,
    /// The new file's name.
    pub new: String,
    /// Schema differences.
    pub schema: Vec<SchemaChange>,
    /// Rules only in the new set.
    pub added: Vec<String>,
    /// Rules only in the old set.
    pub removed: Vec<String>,
    /// Rules in both whose text differs.
    pub edited: Vec<RuleEdit>,
    /// Every pair that changes: moves first, then by share, largest first.
    pub changes: Vec<Change>,
    /// How it was established.
    pub proof: Proof,
    /// Figures.
    pub stats: DiffStats,
    /// Where each change's rules are, for the human and SARIF forms: (old span, new span) of
    /// the deciding rules' `when`.
    spans: Vec<(Option<Span>, Option<Span>)>,
}

// ---- the joint lead space ----------------------------------------------------------------

/// A field type, shortly (`int 0..120`, `enum [a, b]`).
fn describe(ty: &FieldType) -> String {
    match ty {
        FieldType::Enum(values) => format!("enum [{}]", values.join(", ")),
        FieldType::String => "string".to_owned(),
        FieldType::Int { min, max } => format!("int {min}..{max}"),
        FieldType::Decimal { scale, min, max } => {
            format!("decimal({scale}) {}..{}", format_units(*min, *scale), format_units(*max, *scale))
        }
        FieldType::Bool => "bool".to_owned(),
    }
}

/// Whether a value of the new type is a value of the old type as well.
fn readable(old: &FieldType, new: &FieldType) -> bool {
    use FieldType::*;
    match (old, new) {
        (Enum(_) | String, Enum(_) | String) | (Int { .. }, Int { .. }) | (Bool, Bool) => true,
        (Decimal { scale: a, .. }, Decimal { scale: b, .. }) => a == b,
        _ => false,
    }
}

/// The joint fields and, per old field, its joint index (`None`: the old rules read it as
/// missing).
struct Joint {
    fields: Vec<Field>,
    old_map: Vec<Option<usize>>,
    schema: Vec<SchemaChange>,
}

impl Joint {
    fn new(old: &RuleSet, new: &RuleSet) -> Joint {
        let mut fields = new.fields.clone();
        let mut schema = Vec::new();
        let mut old_map = Vec::new();
        for field in &old.fields {
            match new.field_index(&field.name) {
                Some(j) => {
                    let now = &new.fields[j].ty;
                    let can_read = readable(&field.ty, now);
                    if field.ty != *now {
                        schema.push(SchemaChange {
                            field: field.name.clone(),
                            change: if can_read { "domain" } else { "retyped" },
                            old: Some(describe(&field.ty)),
                            new: Some(describe(now)),
                        });
                    }
                    old_map.push(can_read.then_some(j));
                }
                None => {
                    schema.push(SchemaChange {
                        field: field.name.clone(),
                        change: "removed",
                        old: Some(describe(&field.ty)),
                        new: None,
                    });
                    old_map.push(Some(fields.len()));
                    fields.push(field.clone());
                }
            }
        }
        for field in new.fields.iter().filter(|f| old.field_index(&f.name).is_none()) {
            schema.push(SchemaChange {
                field: field.name.clone(),
                change: "added",
                old: None,
                new: Some(describe(&field.ty)),
            });
        }
        if old.timezone != new.timezone {
            schema.push(SchemaChange {
                field: "timezone".to_owned(),
                change: "timezone",
                old: Some(old.timezone.clone()),
                new: Some(new.timezone.clone()),
            });
        }
        Joint { fields, old_map, schema }
    }

    /// The lead as the old rules read it: without the fields they cannot read.
    fn old_view(&self, old: &RuleSet, lead: &Map<String, Value>) -> Map<String, Value> {
        let mut view = lead.clone();
        for (field, map) in old.fields.iter().zip(&self.old_map) {
            if map.is_none() {
                view.remove(&field.name);
            }
        }
        view
    }
}

/// `cond` over the joint fields: a test on a field the old rules cannot read becomes the
/// constant it has on a missing value (an empty `and` is true, an empty `or` false).
fn remap(cond: &Cond, map: &[Option<usize>]) -> Cond {
    match cond {
        Cond::And(items) => Cond::And(items.iter().map(|c| remap(c, map)).collect()),
        Cond::Or(items) => Cond::Or(items.iter().map(|c| remap(c, map)).collect()),
        Cond::Not(inner) => Cond::Not(Box::new(remap(inner, map))),
        Cond::Test(field, pred, span) => match map[*field] {
            Some(j) => Cond::Test(j, pred.clone(), span.clone()),
            None if test(pred, None) => Cond::And(Vec::new()),
            None => Cond::Or(Vec::new()),
        },
    }
}

/// One rule set over the joint atoms: its first-match order and formulas.
struct Lowered {
    order: Vec<usize>,
    formulas: Vec<Formula>,
}

// ---- the case analysis -------------------------------------------------------------------

/// A first-match list: (rule identity, what is left of its formula), in order.
type List = Vec<(u32, Formula)>;
/// A decision pair: first-match positions in the old and in the new set (`None`: no rule).
type Pair = (Option<usize>, Option<usize>);
/// The atoms a witness takes on some fields: (field, atom).
type Assigned = Vec<(usize, usize)>;
/// Per differing pair found under a sub-problem: its share of the sub-problem's space and
/// the atoms a witness takes on the fields split below it.
type Summary = Vec<(Pair, f64, Assigned)>;
/// A differing pair, its share (when counted), and a point in it.
type Found = (Pair, Option<f64>, Vec<usize>);

struct Search<'a> {
    domains: Vec<usize>,
    /// Per identity: its position in the old and in the new order.
    old_position: Vec<Option<usize>>,
    new_position: Vec<Option<usize>>,
    /// Identities outside the common run (the rules that changed).
    changed: Vec<bool>,
    /// Whether two positions decide alike (same rule name and route); `None` is no rule.
    same: &'a dyn Fn(Pair) -> bool,
    memo: HashMap<(List, List), Rc<Summary>>,
    nodes: usize,
    budget: usize,
}

/// The list's decision, once it has one: `Some(Some(id))` a rule, `Some(None)` no rule.
fn decided(list: &List) -> Option<Option<u32>> {
    match list.first() {
        None => Some(None),
        Some((id, Formula::True)) => Some(Some(*id)),
        Some(_) => None,
    }
}

/// An atom of `set` for a witness: the first value atom, or "missing" if that is all.
fn pick(set: &AtomSet) -> usize {
    set.iter().find(|&a| a != 0).or_else(|| set.iter().next()).unwrap_or(0)
}

/// Over budget: the case analysis stops and Z3 takes over.
struct OverBudget;

impl Search<'_> {
    fn solve(&mut self, old: List, new: List) -> std::result::Result<Rc<Summary>, OverBudget> {
        if let (Some(a), Some(b)) = (decided(&old), decided(&new)) {
            let pair =
                (a.and_then(|id| self.old_position[id as usize]), b.and_then(|id| self.new_position[id as usize]));
            return Ok(Rc::new(if (self.same)(pair) { Vec::new() } else { vec![(pair, 1.0, Vec::new())] }));
        }
        // Only rules of the common run are left, in the same order: decided alike, except
        // where no rule matches and the default routes differ.
        if old == new && (self.same)((None, None)) {
            return Ok(Rc::new(Vec::new()));
        }
        let key = (old, new);
        if let Some(known) = self.memo.get(&key) {
            return Ok(known.clone());
        }
        self.nodes += 1;
        if self.nodes > self.budget {
            return Err(OverBudget);
        }
        let (old, new) = &key;
        let field = self.split_field(old, new);
        let users = |list: &List| -> Vec<usize> { (0..list.len()).filter(|&i| list[i].1.mentions(field)).collect() };
        let (old_users, new_users) = (users(old), users(new));
        // Group the field's atoms by what they leave of both lists.
        let mut groups: Vec<(Vec<Formula>, AtomSet)> = Vec::new();
        let mut by_signature: HashMap<Vec<Formula>, usize> = HashMap::new();
        let n = self.domains[field];
        for atom in 0..n {
            let signature: Vec<Formula> = old_users
                .iter()
                .map(|&i| old[i].1.restrict(field, atom))
                .chain(new_users.iter().map(|&i| new[i].1.restrict(field, atom)))
                .collect();
            let slot = *by_signature.entry(signature.clone()).or_insert_with(|| {
                groups.push((signature, AtomSet::empty(n)));
                groups.len() - 1
            });
            groups[slot].1.insert(atom);
        }
        let mut merged: Summary = Vec::new();
        let mut index: HashMap<Pair, usize> = HashMap::new();
        for (signature, atoms) in groups {
            let (old_part, new_part) = signature.split_at(old_users.len());
            let mut old_child = old.clone();
            for (&i, f) in old_users.iter().zip(old_part) {
                old_child[i].1 = f.clone();
            }
            let mut new_child = new.clone();
            for (&i, f) in new_users.iter().zip(new_part) {
                new_child[i].1 = f.clone();
            }
            let child = self.solve(normalize(old_child), normalize(new_child))?;
            let weight = atoms.count() as f64 / n as f64;
            for (pair, share, witness) in child.iter() {
                match index.get(pair) {
                    Some(&k) => merged[k].1 += weight * share,
                    None => {
                        let mut witness = witness.clone();
                        witness.push((field, pick(&atoms)));
                        index.insert(*pair, merged.len());
                        merged.push((*pair, weight * share, witness));
                    }
                }
            }
        }
        let summary = Rc::new(merged);
        self.memo.insert(key, summary.clone());
        Ok(summary)
    }

    /// The field to split on: among the fields the changed rules still test, the one on which
    /// they leave the fewest atoms alive (so most of the space is settled at once); without
    /// such a field, the one most rules test (as the decision DAG does). Ties: fewer atoms.
    fn split_field(&self, old: &List, new: &List) -> usize {
        let changed: Vec<&Formula> = old
            .iter()
            .chain(new)
            .filter(|(id, f)| self.changed[*id as usize] && *f != Formula::True)
            .map(|(_, f)| f)
            .collect();
        // Per field: the share of its atoms on which some changed rule is still alive (a rule
        // that does not test the field is alive on all of it), as parts per million.
        let live = |field: usize| -> (u64, usize) {
            let n = self.domains[field];
            let mut alive = AtomSet::empty(n);
            let mut users = 0;
            for formula in changed.iter().filter(|c| c.mentions(field)) {
                users += 1;
                alive = alive.or(&formula.project(&self.domains)[field]);
            }
            let share = if users < changed.len() { 1_000_000 } else { alive.count() as u64 * 1_000_000 / n as u64 };
            (share, users)
        };
        let best = (0..self.domains.len())
            .filter(|&f| changed.iter().any(|c| c.mentions(f)))
            .map(|f| {
                let (share, users) = live(f);
                (std::cmp::Reverse(share), users, std::cmp::Reverse(self.domains[f]), f)
            })
            .max();
        if let Some((_, _, _, field)) = best {
            return field;
        }
        (0..self.domains.len())
            .filter_map(|f| {
                let users = old.iter().chain(new).filter(|(_, formula)| formula.mentions(f)).count();
                (users > 0).then_some((users, std::cmp::Reverse(self.domains[f]), f))
            })
            .max()
            .map_or(0, |(_, _, f)| f)
    }
}

/// The identities of the longest common same-order run of two id sequences (each id at most
/// once per sequence): a longest increasing subsequence of the new positions, in O(n log n).
fn common_run(old: &[u32], new: &[u32]) -> HashSet<u32> {
    let new_at: HashMap<u32, usize> = new.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let seq: Vec<(u32, usize)> = old.iter().filter_map(|id| new_at.get(id).map(|&p| (*id, p))).collect();
    // tails[k]: index in `seq` of the smallest tail of an increasing run of length k + 1.
    let mut tails: Vec<usize> = Vec::new();
    let mut prev: Vec<Option<usize>> = vec![None; seq.len()];
    for i in 0..seq.len() {
        let k = tails.partition_point(|&t| seq[t].1 < seq[i].1);
        prev[i] = k.checked_sub(1).map(|k| tails[k]);
        if k == tails.len() {
            tails.push(i);
        } else {
            tails[k] = i;
        }
    }
    let mut run = HashSet::new();
    let mut at = tails.last().copied();
    while let Some(i) = at {
        run.insert(seq[i].0);
        at = prev[i];
    }
    run
}

// ---- the diff ----------------------------------------------------------------------------

/// Compares two rule sets over the joint lead space (see the module documentation).
pub fn diff(old: &Side, new: &Side) -> Result<Diff> {
    diff_with_budget(old, new, CASE_BUDGET)
}

/// [`diff`] with another case-analysis budget (tests use a tiny one to exercise Z3).
pub fn diff_with_budget(old_side: &Side, new_side: &Side, budget: usize) -> Result<Diff> {
    let (old, new) = (&old_side.rules, &new_side.rules);
    let joint = Joint::new(old, new);
    let identity: Vec<Option<usize>> = (0..new.fields.len()).map(Some).collect();
    let remapped = |rules: &RuleSet, map: &[Option<usize>]| -> Vec<Option<Cond>> {
        rules.rules.iter().map(|r| r.cond.as_ref().map(|c| remap(c, map))).collect()
    };
    let (old_conds, new_conds) = (remapped(old, &joint.old_map), remapped(new, &identity));
    // Atoms cut by the tests of both sets: a rule set over the joint fields holding them all.
    let carrier = RuleSet {
        timezone: new.timezone.clone(),
        default_route: None,
        routes: Vec::new(),
        fields: joint.fields.clone(),
        rules: old
            .rules
            .iter()
            .zip(&old_conds)
            .chain(new.rules.iter().zip(&new_conds))
            .map(|(rule, cond)| crate::model::Rule { cond: cond.clone(), ..rule.clone() })
            .collect(),
        max_candidates: new.max_candidates,
    };
    let atoms = Atoms::new(&carrier);
    let domains = atoms.domains();
    let lower = |rules: &RuleSet, conds: &[Option<Cond>]| -> Lowered {
        let order = rules.order();
        let formulas =
            order.iter().map(|&i| conds[i].as_ref().map_or(Formula::False, |c| Formula::of(&atoms, c))).collect();
        Lowered { order, formulas }
    };
    let (lo, ln) = (lower(old, &old_conds), lower(new, &new_conds));

    // Identities: one per distinct (name, route, formula).
    let mut ids: HashMap<(&str, &str, &Formula), u32> = HashMap::new();
    let old_ids = identities(&mut ids, old, &lo);
    let new_ids = identities(&mut ids, new, &ln);
    let count = ids.len();
    let mut old_position = vec![None; count];
    let mut new_position = vec![None; count];
    old_ids.iter().enumerate().for_each(|(k, &id)| old_position[id as usize] = Some(k));
    new_ids.iter().enumerate().for_each(|(k, &id)| new_position[id as usize] = Some(k));
    let run = common_run(&old_ids, &new_ids);
    let changed: Vec<bool> = (0..count as u32).map(|id| !run.contains(&id)).collect();

    let decision = |rules: &RuleSet, lowered: &Lowered, k: Option<usize>| -> Decision {
        match k {
            Some(k) => {
                let rule = &rules.rules[lowered.order[k]];
                Decision { rule: Some(rule.name.clone()), route: Some(rule.route.clone()) }
            }
            None => Decision { rule: None, route: rules.default_route.clone() },
        }
    };
    let same = |(a, b): Pair| decision(old, &lo, a) == decision(new, &ln, b);
    let mut stats = DiffStats {
        rules: (lo.order.len(), ln.order.len()),
        changed_rules: (
            old_ids.iter().filter(|id| !run.contains(id)).count(),
            new_ids.iter().filter(|id| !run.contains(id)).count(),
        ),
        atom_space: domains.iter().map(|&n| n as f64).product(),
        ..DiffStats::default()
    };

    let mut search = Search {
        domains: domains.clone(),
        old_position,
        new_position,
        changed,
        same: &same,
        memo: HashMap::new(),
        nodes: 0,
        budget,
    };
    let start_old = normalize(old_ids.iter().copied().zip(lo.formulas.iter().cloned()));
    let start_new = normalize(new_ids.iter().copied().zip(ln.formulas.iter().cloned()));
    let outcome = search.solve(start_old, start_new);
    stats.nodes = search.nodes;
    drop(search);
    let (proof, found): (Proof, Vec<Found>) = match outcome {
        Ok(summary) => {
            let found = summary
                .iter()
                .map(|(pair, share, assigned)| {
                    let mut point = vec![0; domains.len()];
                    assigned.iter().for_each(|&(field, atom)| point[field] = atom);
                    (*pair, Some(*share), point)
                })
                .collect();
            (Proof::CaseAnalysis, found)
        }
        Err(OverBudget) => {
            let formulas: Vec<Formula> = lo.formulas.iter().chain(&ln.formulas).cloned().collect();
            let mut solver = Z3Solver::new(&domains, formulas);
            let decisions = |rules: &RuleSet, lowered: &Lowered| -> Vec<Decision> {
                (0..lowered.order.len()).map(Some).chain([None]).map(|k| decision(rules, lowered, k)).collect()
            };
            let found =
                by_solver(&mut solver, (&lo.formulas, &ln.formulas), &decisions(old, &lo), &decisions(new, &ln))?;
            stats.solver_calls = solver.calls();
            (Proof::Solver, found.into_iter().map(|(pair, point)| (pair, None, point)).collect())
        }
    };

    let mut changes = Vec::new();
    let mut spans = Vec::new();
    for ((a, b), share, point) in found {
        let (from, to) = (decision(old, &lo, a), decision(new, &ln, b));
        let witness = atoms.lead_of(&point).to_json(&carrier);
        verify(old, new, &joint, &witness, &from, &to)?;
        let kind = if from.route == to.route { Kind::Reattributed } else { Kind::Moves };
        spans.push((
            a.map(|k| old.rules[lo.order[k]].raw.when.span.clone()),
            b.map(|k| new.rules[ln.order[k]].raw.when.span.clone()),
        ));
        changes.push(Change { kind, from, to, share, witness });
    }
    let mut order: Vec<usize> = (0..changes.len()).collect();
    order.sort_by(|&x, &y| {
        let (cx, cy) = (&changes[x], &changes[y]);
        (cx.kind, std::cmp::Reverse(ordered(cx.share)), &cx.from, &cx.to).cmp(&(
            cy.kind,
            std::cmp::Reverse(ordered(cy.share)),
            &cy.from,
            &cy.to,
        ))
    });
    let changes: Vec<Change> = order.iter().map(|&i| changes[i].clone()).collect();
    let spans = order.iter().map(|&i| spans[i].clone()).collect();
    let (added, removed, edited) = edits(old, new);
    Ok(Diff {
        old: old_side.source.name.clone(),
        new: new_side.source.name.clone(),
        schema: joint.schema,
        added,
        removed,
        edited,
        changes,
        proof,
        stats,
        spans,
    })
}

/// Each rule's identity, one per distinct (name, route, formula): shared by the two sets for
/// rules that decide the same leads the same way.
fn identities<'a>(
    ids: &mut HashMap<(&'a str, &'a str, &'a Formula), u32>,
    rules: &'a RuleSet,
    lowered: &'a Lowered,
) -> Vec<u32> {
    (0..lowered.order.len())
        .map(|k| {
            let rule = &rules.rules[lowered.order[k]];
            let next = ids.len() as u32;
            *ids.entry((rule.name.as_str(), rule.route.as_str(), &lowered.formulas[k])).or_insert(next)
        })
        .collect()
}

/// A share as a sortable integer (parts per 10^12).
fn ordered(share: Option<f64>) -> u64 {
    share.map_or(0, |s| (s * 1e12) as u64)
}

/// The differing pairs, found by Z3 one at a time (each found pair is excluded from the next
/// query), with a point of each. `old` and `new` are each side's decisions by first-match
/// position, "no rule" last; the solver holds the old formulas, then the new ones.
fn by_solver(
    solver: &mut dyn Solver,
    formulas: (&[Formula], &[Formula]),
    old: &[Decision],
    new: &[Decision],
) -> Result<Vec<(Pair, Vec<usize>)>> {
    let (m, n) = (old.len() - 1, new.len() - 1);
    // Decisions alike (same rule name and route) get the same label on both sides.
    let mut labels: HashMap<&Decision, i64> = HashMap::new();
    let mut label = |d| {
        let next = labels.len() as i64;
        *labels.entry(d).or_insert(next)
    };
    let old_labels: Vec<i64> = old.iter().map(&mut label).collect();
    let new_labels: Vec<i64> = new.iter().map(&mut label).collect();
    let (left, right): (Vec<usize>, Vec<usize>) = ((0..m).collect(), (m..m + n).collect());
    let mut found: Vec<(Pair, Vec<usize>)> = Vec::new();
    let mut excluded: Vec<(Option<usize>, Option<usize>)> = Vec::new();
    while found.len() < SOLVER_PAIRS {
        let sides = [(&left[..], &old_labels[..]), (&right[..], &new_labels[..])];
        let Some(point) = solver.first_match_difference(sides, &excluded)? else { break };
        let a = formulas.0.iter().position(|f| f.eval(&point));
        let b = formulas.1.iter().position(|f| f.eval(&point));
        excluded.push((a, b));
        found.push(((a, b), point));
    }
    Ok(found)
}

/// Re-checks a witness with the interpreter: the old rules (reading only the fields they
/// can) must decide `from`, the new ones `to`.
fn verify(
    old: &RuleSet,
    new: &RuleSet,
    joint: &Joint,
    witness: &Map<String, Value>,
    from: &Decision,
    to: &Decision,
) -> Result<()> {
    let decide = |rules: &RuleSet, lead: &Map<String, Value>| -> Option<Decision> {
        let lead = Lead::from_json(rules, &Value::Object(lead.clone())).ok()?;
        let d = rules.decide(&lead);
        Some(Decision { rule: d.rule.map(|r| r.name.clone()), route: d.route.map(str::to_owned) })
    };
    let old_view = joint.old_view(old, witness);
    if decide(old, &old_view).as_ref() == Some(from) && decide(new, witness).as_ref() == Some(to) {
        return Ok(());
    }
    Err(Error::WitnessMismatch {
        code: "diff",
        rules: [&from.rule, &to.rule].into_iter().flatten().cloned().collect(),
        witness: Value::Object(witness.clone()).to_string(),
    })
}

/// Rules added, removed, and edited (by name, comparing the text of each part).
fn edits(old: &RuleSet, new: &RuleSet) -> (Vec<String>, Vec<String>, Vec<RuleEdit>) {
    let find = |rules: &RuleSet, name: &str| rules.rules.iter().find(|r| r.name == name).cloned();
    let added = new.rules.iter().filter(|r| find(old, &r.name).is_none()).map(|r| r.name.clone()).collect();
    let removed = old.rules.iter().filter(|r| find(new, &r.name).is_none()).map(|r| r.name.clone()).collect();
    let edited = new
        .rules
        .iter()
        .filter_map(|now| {
            let was = find(old, &now.name)?;
            let mut aspects = Vec::new();
            if was.raw.when.value.split_whitespace().ne(now.raw.when.value.split_whitespace()) {
                aspects.push("when");
            }
            if was.priority != now.priority {
                aspects.push("priority");
            }
            if was.route != now.route {
                aspects.push("route");
            }
            if was.enabled != now.enabled {
                aspects.push("enabled");
            }
            (!aspects.is_empty()).then(|| RuleEdit { rule: now.name.clone(), aspects })
        })
        .collect();
    (added, removed, edited)
}

// ---- output ------------------------------------------------------------------------------

impl Diff {
    /// Pairs in which leads go to another route.
    pub fn moves(&self) -> usize {
        self.changes.iter().filter(|c| c.kind == Kind::Moves).count()
    }

    /// Pairs in which leads keep their route but another rule decides.
    pub fn reattributions(&self) -> usize {
        self.changes.len() - self.moves()
    }

    /// The share of the atom space whose route changes (`None` when Z3 found the pairs).
    pub fn moved_share(&self) -> Option<f64> {
        self.changes.iter().filter(|c| c.kind == Kind::Moves).map(|c| c.share).sum()
    }

    /// Whether every lead is decided by the same rule, to the same route, by both sets.
    pub fn equivalent(&self) -> bool {
        self.changes.is_empty()
    }

    /// The stable JSON shape (README, "Change impact: `rulec diff`").
    pub fn to_json(&self) -> Value {
        let changes: Vec<Value> = self
            .changes
            .iter()
            .map(|c| {
                json!({
                    "kind": c.kind,
                    "from": c.from,
                    "to": c.to,
                    "share": c.share,
                    "witness": c.witness,
                })
            })
            .collect();
        json!({
            "old": self.old,
            "new": self.new,
            "equivalent": self.equivalent(),
            "proof": self.proof,
            "moves": self.moves(),
            "reattributions": self.reattributions(),
            "moved_share": self.moved_share(),
            "schema": self.schema,
            "rules": { "added": self.added, "removed": self.removed, "edited": self.edited },
            "changes": changes,
        })
    }

    /// `` `a` -> x  =>  `b` -> y (1.2% of the atom space) ``
    fn message(change: &Change) -> String {
        let share = change.share.map_or_else(String::new, |s| format!(" ({} of the atom space)", percent(s)));
        format!("{}  =>  {}{share}", change.from.describe(), change.to.describe())
    }

    /// SARIF 2.1.0: one result per change, located at the new deciding rule (or, for leads
    /// that no new rule takes, at the old one in the old file).
    pub fn to_sarif(&self, old: &Source, new: &Source) -> Value {
        let rules: Vec<Value> = [(Kind::Moves, "warning"), (Kind::Reattributed, "note")]
            .iter()
            .map(|(kind, level)| {
                json!({
                    "id": kind.as_str(),
                    "defaultConfiguration": { "level": level },
                    "shortDescription": { "text": format!("rulec diff: leads that {}", match kind {
                        Kind::Moves => "go to another route",
                        Kind::Reattributed => "are decided by another rule, same route",
                    }) },
                })
            })
            .collect();
        let results: Vec<Value> = self
            .changes
            .iter()
            .zip(&self.spans)
            .map(|(c, (old_span, new_span))| {
                let located = match (new_span, old_span) {
                    (Some(span), _) => Some((new, span)),
                    (None, Some(span)) => Some((old, span)),
                    (None, None) => None,
                };
                let locations: Vec<Value> =
                    located.into_iter().map(|(source, span)| crate::report::sarif_location(source, span)).collect();
                json!({
                    "ruleId": c.kind.as_str(),
                    "level": if c.kind == Kind::Moves { "warning" } else { "note" },
                    "message": { "text": format!(
                        "Leads {}: {}. Example lead: {}",
                        if c.kind == Kind::Moves { "move" } else { "keep their route, another rule decides" },
                        Self::message(c),
                        Value::Object(c.witness.clone())
                    ) },
                    "locations": locations,
                    "properties": { "from": c.from, "to": c.to, "share": c.share },
                })
            })
            .collect();
        crate::report::sarif_log(rules, results)
    }

    /// For people: schema and rule edits, each change with its example lead and the rules'
    /// lines, and a verdict line.
    pub fn to_human(&self, old: &Source, new: &Source) -> String {
        let mut out = format!("rulec diff {} -> {}\n", self.old, self.new);
        for change in &self.schema {
            let what = match (&change.old, &change.new) {
                (Some(o), Some(n)) => format!("{o} -> {n}"),
                (Some(o), None) => o.clone(),
                (None, Some(n)) => n.clone(),
                (None, None) => String::new(),
            };
            let note = match change.change {
                "removed" => " (the new rules ignore it; leads may still carry it)",
                "retyped" => " (the old rules cannot read the new values: missing for them)",
                _ => "",
            };
            out.push_str(&format!("  schema: `{}` {}: {what}{note}\n", change.field, change.change));
        }
        let list = |names: &[String]| names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
        if !self.added.is_empty() {
            out.push_str(&format!("  rules added: {}\n", list(&self.added)));
        }
        if !self.removed.is_empty() {
            out.push_str(&format!("  rules removed: {}\n", list(&self.removed)));
        }
        for edit in &self.edited {
            out.push_str(&format!("  rule `{}` edited: {}\n", edit.rule, edit.aspects.join(", ")));
        }
        let at = |source: &Source, span: &Option<Span>| {
            span.as_ref().map(|s| {
                let (line, _) = source.line_col(s.start);
                format!("{}:{line}", source.name)
            })
        };
        for (change, (old_span, new_span)) in self.changes.iter().zip(&self.spans) {
            out.push_str(&format!("\n{}: {}\n", change.kind.as_str(), Self::message(change)));
            let places: Vec<String> = [("was", at(old, old_span)), ("now", at(new, new_span))]
                .into_iter()
                .filter_map(|(label, place)| place.map(|p| format!("{label} {p}")))
                .collect();
            if !places.is_empty() {
                out.push_str(&format!("  rules: {}\n", places.join(", ")));
            }
            out.push_str(&format!("  example lead: {}\n", Value::Object(change.witness.clone())));
        }
        let proof = match self.proof {
            Proof::CaseAnalysis => "case analysis over every atom combination",
            Proof::Solver => "Z3",
        };
        out.push('\n');
        if self.equivalent() {
            out.push_str(&format!("no decision changes: every lead is decided alike (proved by {proof})\n"));
        } else {
            let share =
                self.moved_share().map_or_else(String::new, |s| format!(", {} of the atom space moves", percent(s)));
            out.push_str(&format!(
                "{} pair(s) of decisions move, {} reattributed{share} (proved by {proof})\n",
                self.moves(),
                self.reattributions()
            ));
        }
        out
    }
}

/// A share as a percentage with enough digits to be non-zero when it is.
fn percent(share: f64) -> String {
    let p = share * 100.0;
    if p == 0.0 || p >= 1.0 {
        format!("{p:.1}%")
    } else {
        let digits = (-p.log10()).ceil() as usize + 1;
        format!("{p:.digits$}%")
    }
}
