//! Atoms: each field's values cut into the classes the rules can tell apart, so a lead is
//! (for the rules) one atom per field, and every test is a set of atoms.
//!
//! - numbers (`int`, `decimal`): elementary half-open intervals between the bounds that tests
//!   use, within the field's domain;
//! - `enum`: one atom per value; `bool`: false, true;
//! - `string`: one atom per literal the rules compare with, plus one "other" atom per
//!   realizable combination of (longest `starts_with` prefix, longest `ends_with` suffix);
//!
//! and atom 0 of every field is "missing". This is what lets the analysis (and later the
//! decision DAG) work without a string theory or unbounded numbers, and exactly: two values
//! in one atom satisfy the same tests.

use std::collections::BTreeSet;

use crate::interp::{Lead, Value, eval};
use crate::model::{Cond, FieldType, Pred, RuleSet};

/// A set of atom indices of one field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AtomSet {
    words: Vec<u64>,
    len: usize,
}

impl AtomSet {
    /// No atom.
    pub fn empty(len: usize) -> Self {
        Self { words: vec![0; len.div_ceil(64)], len }
    }

    /// Every atom.
    pub fn full(len: usize) -> Self {
        let mut set = Self::empty(len);
        for i in 0..len {
            set.insert(i);
        }
        set
    }

    /// Number of atoms of the field.
    pub fn universe(&self) -> usize {
        self.len
    }

    /// Adds an atom.
    pub fn insert(&mut self, atom: usize) {
        self.words[atom / 64] |= 1 << (atom % 64);
    }

    /// Whether it holds `atom`.
    pub fn contains(&self, atom: usize) -> bool {
        atom < self.len && self.words[atom / 64] & (1 << (atom % 64)) != 0
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// Whether it holds every atom.
    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }

    /// How many atoms it holds.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The atoms, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(w * 64 + bit)
            })
        })
    }

    /// The atoms not in it.
    pub fn complement(&self) -> Self {
        let mut out = Self::full(self.len);
        for (o, w) in out.words.iter_mut().zip(&self.words) {
            *o &= !w;
        }
        out
    }

    /// Intersection.
    pub fn and(&self, other: &Self) -> Self {
        Self { words: self.words.iter().zip(&other.words).map(|(a, b)| a & b).collect(), len: self.len }
    }

    /// Union.
    pub fn or(&self, other: &Self) -> Self {
        Self { words: self.words.iter().zip(&other.words).map(|(a, b)| a | b).collect(), len: self.len }
    }

    /// Whether the two share an atom.
    pub fn intersects(&self, other: &Self) -> bool {
        self.words.iter().zip(&other.words).any(|(a, b)| a & b != 0)
    }

    /// Maximal runs of consecutive atoms, as inclusive `(first, last)` pairs.
    pub fn runs(&self) -> Vec<(usize, usize)> {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for i in self.iter() {
            match runs.last_mut() {
                Some((_, last)) if *last + 1 == i => *last = i,
                _ => runs.push((i, i)),
            }
        }
        runs
    }
}

/// How one field's values are cut into atoms (atom 0 is always "missing").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldAtoms {
    /// Atom `i` (from 1) is `[bounds[i-1], bounds[i])` in units.
    Numeric {
        /// Ascending cut points, first = domain min, last = domain max + 1.
        bounds: Vec<i128>,
    },
    /// Atom `i` (from 1) is `values[i-1]`.
    Enum {
        /// The enum's values.
        values: Vec<String>,
    },
    /// Atom 1 is false, atom 2 is true.
    Bool,
    /// Atoms 1..=n are the literals, then one atom per "other" class with a representative.
    Str {
        /// Strings the rules compare with.
        literals: Vec<String>,
        /// A representative of each other class.
        others: Vec<String>,
    },
}

impl FieldAtoms {
    /// Number of atoms, "missing" included.
    pub fn len(&self) -> usize {
        1 + match self {
            FieldAtoms::Numeric { bounds } => bounds.len() - 1,
            FieldAtoms::Enum { values } => values.len(),
            FieldAtoms::Bool => 2,
            FieldAtoms::Str { literals, others } => literals.len() + others.len(),
        }
    }

    /// Always false: every field has at least the "missing" atom.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// A value in `atom` (`None` for "missing"): the number nearest zero for intervals.
    pub fn representative(&self, atom: usize) -> Option<Value> {
        if atom == 0 {
            return None;
        }
        Some(match self {
            FieldAtoms::Numeric { bounds } => {
                let (lo, hi) = (bounds[atom - 1], bounds[atom] - 1);
                Value::Num(0i128.clamp(lo, hi))
            }
            FieldAtoms::Enum { values } => Value::Str(values[atom - 1].clone()),
            FieldAtoms::Bool => Value::Bool(atom == 2),
            FieldAtoms::Str { literals, others } => {
                Value::Str(literals.get(atom - 1).cloned().unwrap_or_else(|| others[atom - 1 - literals.len()].clone()))
            }
        })
    }

    /// The atom a value falls in (for strings, literals only; `Atoms::point_of` classifies all).
    fn atom_of(&self, value: Option<&Value>) -> usize {
        let Some(value) = value else { return 0 };
        match (self, value) {
            (FieldAtoms::Numeric { bounds }, Value::Num(n)) => {
                let i = bounds.partition_point(|b| b <= n);
                if i == 0 || i >= bounds.len() { 0 } else { i }
            }
            (FieldAtoms::Enum { values }, Value::Str(s)) => values.iter().position(|v| v == s).map_or(0, |i| i + 1),
            (FieldAtoms::Bool, Value::Bool(b)) => 1 + usize::from(*b),
            // Other strings need the tested affixes to classify: see `Atoms::point_of`.
            (FieldAtoms::Str { literals, .. }, Value::Str(s)) => {
                literals.iter().position(|l| l == s).map_or(0, |i| i + 1)
            }
            _ => 0,
        }
    }
}

/// The atoms of every field of a rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Atoms {
    /// Indexed like `RuleSet::fields`.
    pub fields: Vec<FieldAtoms>,
    /// For string fields: the prefixes and suffixes tested (to classify values).
    affixes: Vec<(Vec<String>, Vec<String>)>,
}

fn collect_preds<'c>(cond: &'c Cond, out: &mut Vec<(usize, &'c Pred)>) {
    match cond {
        Cond::And(items) | Cond::Or(items) => items.iter().for_each(|c| collect_preds(c, out)),
        Cond::Not(inner) => collect_preds(inner, out),
        Cond::Test(field, pred, _) => out.push((*field, pred)),
    }
}

fn longest(candidates: &[String], test: impl Fn(&str) -> bool) -> Option<&str> {
    candidates.iter().filter(|c| test(c)).max_by_key(|c| c.len()).map(String::as_str)
}

impl Atoms {
    /// Cuts every field of `rules` by the tests of its type-correct rules.
    pub fn new(rules: &RuleSet) -> Self {
        let mut preds = Vec::new();
        for rule in &rules.rules {
            if let Some(cond) = &rule.cond {
                collect_preds(cond, &mut preds);
            }
        }
        let mut fields = Vec::new();
        let mut affixes = Vec::new();
        for (index, field) in rules.fields.iter().enumerate() {
            let mine = preds.iter().filter(|(f, _)| *f == index).map(|(_, p)| *p);
            affixes.push((Vec::new(), Vec::new()));
            fields.push(match &field.ty {
                FieldType::Bool => FieldAtoms::Bool,
                FieldType::Enum(values) => FieldAtoms::Enum { values: values.clone() },
                FieldType::Int { min, max } | FieldType::Decimal { min, max, .. } => {
                    let mut cuts = BTreeSet::from([*min, *max + 1]);
                    for pred in mine {
                        if let Pred::Num(ranges) = pred {
                            for &(lo, hi) in ranges {
                                cuts.extend([lo, hi].into_iter().filter(|c| *min < *c && *c <= *max));
                            }
                        }
                    }
                    FieldAtoms::Numeric { bounds: cuts.into_iter().collect() }
                }
                FieldType::String => {
                    let (mut literals, mut prefixes, mut suffixes) =
                        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
                    for pred in mine {
                        match pred {
                            Pred::Str(set) => literals.extend(set.iter().cloned()),
                            Pred::StartsWith(p) => {
                                prefixes.insert(p.clone());
                            }
                            Pred::EndsWith(s) => {
                                suffixes.insert(s.clone());
                            }
                            _ => {}
                        }
                    }
                    let literals: Vec<String> = literals.into_iter().collect();
                    let prefixes: Vec<String> = prefixes.into_iter().collect();
                    let suffixes: Vec<String> = suffixes.into_iter().collect();
                    let others = other_classes(&literals, &prefixes, &suffixes);
                    affixes[index] = (prefixes, suffixes);
                    FieldAtoms::Str { literals, others }
                }
            });
        }
        Self { fields, affixes }
    }

    /// The prefixes and suffixes tested on string field `field` (empty for other fields).
    pub fn affixes(&self, field: usize) -> (&[String], &[String]) {
        let (p, s) = &self.affixes[field];
        (p, s)
    }

    /// Number of atoms of each field.
    pub fn domains(&self) -> Vec<usize> {
        self.fields.iter().map(FieldAtoms::len).collect()
    }

    /// The atoms of `field` that satisfy `pred`.
    pub fn pred_set(&self, field: usize, pred: &Pred) -> AtomSet {
        let atoms = &self.fields[field];
        let mut set = AtomSet::empty(atoms.len());
        if matches!(pred, Pred::Missing) {
            set.insert(0);
            return set;
        }
        for atom in 1..atoms.len() {
            if crate::interp::test(pred, atoms.representative(atom).as_ref()) {
                set.insert(atom);
            }
        }
        set
    }

    /// The atom of each field for `lead`.
    pub fn point_of(&self, lead: &Lead) -> Vec<usize> {
        self.fields
            .iter()
            .enumerate()
            .map(|(i, atoms)| {
                let value = lead.values.get(i).and_then(Option::as_ref);
                match (atoms, value) {
                    (FieldAtoms::Str { literals, others }, Some(Value::Str(s))) if !literals.contains(s) => {
                        let (prefixes, suffixes) = &self.affixes[i];
                        let want = (longest(prefixes, |p| s.starts_with(p)), longest(suffixes, |x| s.ends_with(x)));
                        others
                            .iter()
                            .position(|o| {
                                (longest(prefixes, |p| o.starts_with(p)), longest(suffixes, |x| o.ends_with(x))) == want
                            })
                            .map_or(0, |k| literals.len() + k + 1)
                    }
                    _ => atoms.atom_of(value),
                }
            })
            .collect()
    }

    /// A lead whose atoms are `point` (representative values).
    pub fn lead_of(&self, point: &[usize]) -> Lead {
        Lead { values: self.fields.iter().zip(point).map(|(atoms, &atom)| atoms.representative(atom)).collect() }
    }
}

/// One representative per realizable (longest prefix, longest suffix) class of strings that
/// equal no literal.
fn other_classes(literals: &[String], prefixes: &[String], suffixes: &[String]) -> Vec<String> {
    const FILLERS: [&str; 8] = ["other", "0", "x", "zz", "_", "~", "q7", "\u{b7}"];
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let prefix_choices: Vec<Option<&String>> = std::iter::once(None).chain(prefixes.iter().map(Some)).collect();
    let suffix_choices: Vec<Option<&String>> = std::iter::once(None).chain(suffixes.iter().map(Some)).collect();
    for p in &prefix_choices {
        for s in &suffix_choices {
            let want = (p.map(String::as_str), s.map(String::as_str));
            for filler in FILLERS {
                let candidate = format!("{}{filler}{}", p.map_or("", |x| x), s.map_or("", |x| x));
                let got =
                    (longest(prefixes, |x| candidate.starts_with(x)), longest(suffixes, |x| candidate.ends_with(x)));
                if got == want && !literals.contains(&candidate) {
                    if seen.insert(want) {
                        out.push(candidate);
                    }
                    break;
                }
            }
        }
    }
    out
}

/// A rule set lowered onto its atoms: the rules in first-match order and each one's formula.
/// The one place rules become formulas, so the analysis ([`crate::analysis::analyze`]) and
/// the compile ([`crate::compile::lower`]) reason about exactly the same encoding.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The atoms of every field.
    pub atoms: Atoms,
    /// Rule indices (in `RuleSet::rules`) in first-match order.
    pub order: Vec<usize>,
    /// Each rule's formula, in first-match order (`False` for a rule without a condition).
    pub formulas: Vec<Formula>,
}

impl Encoded {
    /// Cuts the fields into atoms and translates every enabled rule, in first-match order.
    pub fn new(rules: &RuleSet) -> Self {
        let order = rules.order();
        let atoms = Atoms::new(rules);
        let formulas = order
            .iter()
            .map(|&i| rules.rules[i].cond.as_ref().map_or(Formula::False, |c| Formula::of(&atoms, c)))
            .collect();
        Self { atoms, order, formulas }
    }
}

/// A condition over atoms, negation pushed into the sets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Formula {
    /// Always.
    True,
    /// Never.
    False,
    /// All.
    And(Vec<Formula>),
    /// Any.
    Or(Vec<Formula>),
    /// Field `.0`'s atom is in `.1`.
    In(usize, AtomSet),
}

impl Formula {
    /// Translates a checked condition.
    pub fn of(atoms: &Atoms, cond: &Cond) -> Formula {
        Self::build(atoms, cond, true)
    }

    fn build(atoms: &Atoms, cond: &Cond, positive: bool) -> Formula {
        match cond {
            Cond::Not(inner) => Self::build(atoms, inner, !positive),
            Cond::And(items) | Cond::Or(items) => {
                let parts = items.iter().map(|c| Self::build(atoms, c, positive)).collect();
                if matches!(cond, Cond::And(_)) == positive { Self::and(parts) } else { Self::or(parts) }
            }
            Cond::Test(field, pred, _) => {
                let set = atoms.pred_set(*field, pred);
                Self::set(*field, if positive { set } else { set.complement() })
            }
        }
    }

    fn set(field: usize, set: AtomSet) -> Formula {
        if set.is_empty() {
            Formula::False
        } else if set.is_full() {
            Formula::True
        } else {
            Formula::In(field, set)
        }
    }

    /// Conjunction, simplified (sets on one field are intersected).
    pub fn and(parts: Vec<Formula>) -> Formula {
        let mut out: Vec<Formula> = Vec::new();
        for part in parts {
            match part {
                Formula::True => {}
                Formula::False => return Formula::False,
                Formula::And(inner) => out.extend(inner),
                other => out.push(other),
            }
        }
        // merge sets of the same field
        let mut merged: Vec<Formula> = Vec::new();
        for part in out {
            if let Formula::In(field, set) = &part
                && let Some(Formula::In(_, existing)) =
                    merged.iter_mut().find(|m| matches!(m, Formula::In(f, _) if f == field))
            {
                *existing = existing.and(set);
                if existing.is_empty() {
                    return Formula::False;
                }
                continue;
            }
            merged.push(part);
        }
        match merged.len() {
            0 => Formula::True,
            1 => merged.remove(0),
            _ => Formula::And(merged),
        }
    }

    /// Disjunction, simplified.
    pub fn or(parts: Vec<Formula>) -> Formula {
        let mut out: Vec<Formula> = Vec::new();
        for part in parts {
            match part {
                Formula::False => {}
                Formula::True => return Formula::True,
                Formula::Or(inner) => out.extend(inner),
                other => out.push(other),
            }
        }
        match out.len() {
            0 => Formula::False,
            1 => out.remove(0),
            _ => Formula::Or(out),
        }
    }

    /// Negation (pushed into the sets).
    pub fn not(&self) -> Formula {
        match self {
            Formula::True => Formula::False,
            Formula::False => Formula::True,
            Formula::And(items) => Self::or(items.iter().map(Formula::not).collect()),
            Formula::Or(items) => Self::and(items.iter().map(Formula::not).collect()),
            Formula::In(field, set) => Self::set(*field, set.complement()),
        }
    }

    /// Its value at a point (one atom per field).
    pub fn eval(&self, point: &[usize]) -> bool {
        match self {
            Formula::True => true,
            Formula::False => false,
            Formula::And(items) => items.iter().all(|f| f.eval(point)),
            Formula::Or(items) => items.iter().any(|f| f.eval(point)),
            Formula::In(field, set) => set.contains(point[*field]),
        }
    }

    /// Per field, the atoms any satisfying point may take (exact for conjunctions).
    pub fn project(&self, domains: &[usize]) -> Vec<AtomSet> {
        match self {
            Formula::True => domains.iter().map(|&n| AtomSet::full(n)).collect(),
            Formula::False => domains.iter().map(|&n| AtomSet::empty(n)).collect(),
            Formula::In(field, set) => {
                let mut out: Vec<AtomSet> = domains.iter().map(|&n| AtomSet::full(n)).collect();
                out[*field] = set.clone();
                out
            }
            Formula::And(items) => {
                let mut out: Vec<AtomSet> = domains.iter().map(|&n| AtomSet::full(n)).collect();
                for item in items {
                    for (o, p) in out.iter_mut().zip(item.project(domains)) {
                        *o = o.and(&p);
                    }
                }
                out
            }
            Formula::Or(items) => {
                let mut out: Vec<AtomSet> = domains.iter().map(|&n| AtomSet::empty(n)).collect();
                for item in items {
                    for (o, p) in out.iter_mut().zip(item.project(domains)) {
                        *o = o.or(&p);
                    }
                }
                out
            }
        }
    }

    /// Looks for bounds (a set per field) inside `bounds` on which the formula holds at every
    /// point, trying the branches of each `or` in turn. Sound but incomplete: `None` means
    /// "not found", not "unsatisfiable". A cheap pre-check before asking the solver.
    pub fn find_bounds(&self, bounds: Vec<AtomSet>) -> Option<Vec<AtomSet>> {
        let mut budget = 64usize;
        self.search(bounds, &mut budget)
    }

    fn search(&self, mut bounds: Vec<AtomSet>, budget: &mut usize) -> Option<Vec<AtomSet>> {
        match self {
            Formula::True => Some(bounds),
            Formula::False => None,
            Formula::In(field, set) => {
                bounds[*field] = bounds[*field].and(set);
                (!bounds[*field].is_empty()).then_some(bounds)
            }
            Formula::And(items) => items.iter().try_fold(bounds, |b, item| item.search(b, budget)),
            Formula::Or(items) => items.iter().find_map(|item| {
                if *budget == 0 {
                    return None;
                }
                *budget -= 1;
                item.search(bounds.clone(), budget)
            }),
        }
    }

    /// The formula once field `field` is known to be in atom `atom`.
    pub fn restrict(&self, field: usize, atom: usize) -> Formula {
        match self {
            Formula::True | Formula::False => self.clone(),
            Formula::In(f, set) if *f == field => {
                if set.contains(atom) {
                    Formula::True
                } else {
                    Formula::False
                }
            }
            Formula::In(..) => self.clone(),
            Formula::And(items) => Self::and(items.iter().map(|i| i.restrict(field, atom)).collect()),
            Formula::Or(items) => Self::or(items.iter().map(|i| i.restrict(field, atom)).collect()),
        }
    }

    /// The formula once field `field` is known to be in `atoms` (exact: a set test becomes
    /// `True`/`False` when `atoms` is inside/outside it, else is narrowed to `atoms`).
    pub fn restrict_to(&self, field: usize, atoms: &AtomSet) -> Formula {
        match self {
            Formula::True | Formula::False => self.clone(),
            Formula::In(f, set) if *f == field => {
                let meet = set.and(atoms);
                if meet.is_empty() {
                    Formula::False
                } else if meet == *atoms {
                    Formula::True
                } else {
                    Formula::In(field, meet)
                }
            }
            Formula::In(..) => self.clone(),
            Formula::And(items) => Self::and(items.iter().map(|i| i.restrict_to(field, atoms)).collect()),
            Formula::Or(items) => Self::or(items.iter().map(|i| i.restrict_to(field, atoms)).collect()),
        }
    }

    /// Some field the formula tests.
    pub fn some_field(&self) -> Option<usize> {
        match self {
            Formula::True | Formula::False => None,
            Formula::In(f, _) => Some(*f),
            Formula::And(items) | Formula::Or(items) => items.iter().find_map(Formula::some_field),
        }
    }

    /// Whether the formula tests `field`.
    pub fn mentions(&self, field: usize) -> bool {
        match self {
            Formula::True | Formula::False => false,
            Formula::In(f, _) => *f == field,
            Formula::And(items) | Formula::Or(items) => items.iter().any(|i| i.mentions(field)),
        }
    }

    /// Whether it is a conjunction of sets (its projection is then exact).
    pub fn is_conjunction(&self) -> bool {
        match self {
            Formula::True | Formula::False | Formula::In(..) => true,
            Formula::And(items) => items.iter().all(|f| matches!(f, Formula::In(..))),
            Formula::Or(_) => false,
        }
    }
}

/// Checks, for tests, that a lead's atoms satisfy a formula exactly when the condition holds.
pub fn agrees(atoms: &Atoms, cond: &Cond, lead: &Lead) -> bool {
    Formula::of(atoms, cond).eval(&atoms.point_of(lead)) == eval(cond, lead)
}
