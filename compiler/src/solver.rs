//! The seam between the analysis and Z3 (after cedar's `symcc/solver.rs`): the analysis
//! asks [`Solver::check`] whether some lead makes a set of rules match or miss (plus an
//! optional extra formula), and gets a point (one atom per field) or an unsat core; the
//! compile's translation validation asks [`Solver::dag_counterexample`] for a lead on which
//! the decision DAG's candidates and the first `k` matches disagree. Both take the trait,
//! so they can run behind another solver; only this file knows Z3.
//!
//! Encoding: one integer per field, `0 <= x_f < atoms(f)`; each rule `i` gets two indicator
//! literals `m_i => φ_i` and `n_i => ¬φ_i`, asserted once, the first time they are used, so
//! every query reuses the solver's state through `check_assumptions`.

use std::collections::HashMap;

use petgraph::Direction;
use petgraph::visit::EdgeRef;
use z3::ast::{Bool, Int};
use z3::{SatResult, Solver as Z3};

use crate::atoms::{AtomSet, Formula};
use crate::dag::{Dag, Node};
use crate::{Error, Result};

/// An assumption about one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lit {
    /// The rule matches.
    Matches(usize),
    /// The rule does not match.
    Misses(usize),
}

/// The solver's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A point satisfying everything.
    Sat(Vec<usize>),
    /// No such point; a subset of the assumptions that is already contradictory.
    Unsat(Vec<Lit>),
}

/// What the analysis and the translation validation need from a solver. A solver is made
/// for one rule set: rule `i` of a [`Lit`] is the `i`th of its formulas in first-match order.
pub trait Solver {
    /// Is there a point satisfying `assumptions` (and `extra`, when given)?
    fn check(&mut self, assumptions: &[Lit], extra: Option<&Formula>) -> Result<Answer>;
    /// Looks for a point where `dag`'s candidates and the first `dag.max_candidates` matches
    /// over the rules (in order) disagree; `None` proves them equal.
    fn dag_counterexample(&mut self, dag: &Dag) -> Result<Option<Vec<usize>>>;
    /// Looks for a point where first match over two lists of this solver's formulas gives
    /// differently labelled decisions. Each side is (formula indices in first-match order, a
    /// label per position and one more for "no rule"); the (old, new) position pairs in
    /// `excluded` are ruled out. `None` proves the two alike everywhere else.
    fn first_match_difference(
        &mut self,
        sides: [(&[usize], &[i64]); 2],
        excluded: &[(Option<usize>, Option<usize>)],
    ) -> Result<Option<Vec<usize>>>;
    /// Queries answered so far.
    fn calls(&self) -> usize;
}

/// Z3 behind the [`Solver`] seam.
pub struct Z3Solver {
    solver: Z3,
    vars: Vec<Int>,
    rules: Vec<Formula>,
    indicators: HashMap<Lit, Bool>,
    by_name: HashMap<String, Lit>,
    calls: usize,
}

impl Z3Solver {
    /// A solver over fields with `domains[f]` atoms each, for these rule formulas.
    pub fn new(domains: &[usize], rules: Vec<Formula>) -> Self {
        let solver = Z3::new();
        let vars: Vec<Int> = (0..domains.len()).map(|f| Int::new_const(format!("x{f}"))).collect();
        for (var, &n) in vars.iter().zip(domains) {
            solver.assert(var.ge(Int::from_i64(0)));
            solver.assert(var.le(Int::from_i64(n as i64 - 1)));
        }
        Self { solver, vars, rules, indicators: HashMap::new(), by_name: HashMap::new(), calls: 0 }
    }

    fn set(&self, field: usize, set: &AtomSet) -> Bool {
        let var = &self.vars[field];
        // Encode the smaller of the set and its complement as ranges.
        let (runs, negate) = {
            let direct = set.runs();
            let complement = set.complement().runs();
            if complement.len() < direct.len() { (complement, true) } else { (direct, false) }
        };
        let parts: Vec<Bool> = runs
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    var.eq(Int::from_i64(lo as i64))
                } else {
                    Bool::and(&[var.ge(Int::from_i64(lo as i64)), var.le(Int::from_i64(hi as i64))])
                }
            })
            .collect();
        let any = Bool::or(&parts);
        if negate { any.not() } else { any }
    }

    fn encode(&self, formula: &Formula) -> Bool {
        match formula {
            Formula::True => Bool::from_bool(true),
            Formula::False => Bool::from_bool(false),
            Formula::And(items) => Bool::and(&items.iter().map(|f| self.encode(f)).collect::<Vec<_>>()),
            Formula::Or(items) => Bool::or(&items.iter().map(|f| self.encode(f)).collect::<Vec<_>>()),
            Formula::In(field, set) => self.set(*field, set),
        }
    }

    fn indicator(&mut self, lit: Lit) -> Bool {
        if let Some(b) = self.indicators.get(&lit) {
            return b.clone();
        }
        let (name, body) = match lit {
            Lit::Matches(i) => (format!("m{i}"), self.encode(&self.rules[i])),
            Lit::Misses(i) => (format!("n{i}"), self.encode(&self.rules[i]).not()),
        };
        let b = Bool::new_const(name.as_str());
        self.solver.assert(b.implies(&body));
        self.indicators.insert(lit, b.clone());
        self.by_name.insert(name, lit);
        b
    }

    /// The point of the model of the last satisfiable check: one atom per field.
    fn model_point(&self) -> Result<Vec<usize>> {
        let model = self.solver.get_model().ok_or_else(|| Error::SolverUnknown("no model".to_owned()))?;
        Ok(self
            .vars
            .iter()
            .map(|v| model.eval(v, true).and_then(|x| x.as_i64()).map_or(0, |x| usize::try_from(x).unwrap_or(0)))
            .collect())
    }

    /// Checks what was asserted since the last `push`, then pops it: a point, or `None`.
    fn point_then_pop(&mut self) -> Result<Option<Vec<usize>>> {
        let result = match self.solver.check() {
            SatResult::Unsat => Ok(None),
            SatResult::Sat => self.model_point().map(Some),
            SatResult::Unknown => Err(Error::SolverUnknown(self.solver.get_reason_unknown().unwrap_or_default())),
        };
        self.solver.pop(1);
        result
    }

    fn run(&mut self, assumptions: &[Lit]) -> Result<Answer> {
        self.calls += 1;
        let bools: Vec<Bool> = assumptions.iter().map(|&l| self.indicator(l)).collect();
        match self.solver.check_assumptions(&bools) {
            SatResult::Sat => Ok(Answer::Sat(self.model_point()?)),
            SatResult::Unsat => {
                let core = self
                    .solver
                    .get_unsat_core()
                    .iter()
                    .filter_map(|b| self.by_name.get(&b.to_string()).copied())
                    .collect();
                Ok(Answer::Unsat(core))
            }
            SatResult::Unknown => Err(Error::SolverUnknown(self.solver.get_reason_unknown().unwrap_or_default())),
        }
    }
}

impl Solver for Z3Solver {
    fn check(&mut self, assumptions: &[Lit], extra: Option<&Formula>) -> Result<Answer> {
        match extra {
            None => self.run(assumptions),
            Some(formula) => {
                // Define the indicators outside the scope: an assertion made after `push`
                // is gone after `pop`, but the indicator would stay cached.
                for &lit in assumptions {
                    self.indicator(lit);
                }
                self.solver.push();
                let encoded = self.encode(formula);
                self.solver.assert(&encoded);
                let answer = self.run(assumptions);
                self.solver.pop(1);
                answer
            }
        }
    }

    fn dag_counterexample(&mut self, dag: &Dag) -> Result<Option<Vec<usize>>> {
        let k = dag.max_candidates.max(1);
        // Per node, its candidates as `k` terms: the `j`th candidate's position, -1 for none
        // (-2 for a leaf naming no list, which no position equals).
        let mut terms: HashMap<petgraph::graph::NodeIndex, Vec<Int>> = HashMap::new();
        let mut order: Vec<petgraph::graph::NodeIndex> = petgraph::algo::toposort(&dag.graph, None)
            .map_err(|_| Error::SolverUnknown("the decision DAG has a cycle".to_owned()))?;
        order.reverse();
        for node in order {
            let term = match dag.graph[node] {
                Node::Leaf(index) => (0..k)
                    .map(|j| Int::from_i64(dag.list(index).map_or(-2, |list| list.get(j).map_or(-1, |&p| p as i64))))
                    .collect(),
                Node::Test { field } => {
                    let edges: Vec<_> = dag.graph.edges_directed(node, Direction::Outgoing).collect();
                    let Some((last, rest)) = edges.split_last() else { continue };
                    let mut acc = terms[&last.target()].clone();
                    for edge in rest.iter().rev() {
                        let test = self.set(field, edge.weight());
                        let then = &terms[&edge.target()];
                        acc = then.iter().zip(&acc).map(|(then, other)| test.ite(then, other)).collect();
                    }
                    acc
                }
            };
            terms.insert(node, term);
        }
        // The first k matches: with c_0 = 0 and c_{i+1} = c_i + [f_i] (matches before rule
        // i), the `j`th match is the first `i` with f_i and c_i = j (for j = 0, the first
        // f_i: the plain first-match chain).
        let conds: Vec<Bool> = self.rules.iter().map(|f| self.encode(f)).collect();
        let (zero, one) = (Int::from_i64(0), Int::from_i64(1));
        let mut before = vec![zero.clone()];
        if k > 1 {
            for (i, cond) in conds.iter().enumerate() {
                let count = &before[i] + cond.ite(&one, &zero);
                before.push(count);
            }
        }
        let root = &terms[&dag.root];
        let mut differs = Vec::with_capacity(k);
        for (j, dag_j) in root.iter().enumerate() {
            let mut position = Int::from_i64(-1);
            for i in (j..conds.len()).rev() {
                let hit = if j == 0 {
                    conds[i].clone()
                } else {
                    Bool::and(&[&conds[i], &before[i].eq(Int::from_i64(j as i64))])
                };
                position = hit.ite(&Int::from_i64(i as i64), &position);
            }
            differs.push(dag_j.eq(&position).not());
        }
        self.calls += 1;
        self.solver.push();
        self.solver.assert(Bool::or(&differs));
        self.point_then_pop()
    }

    fn first_match_difference(
        &mut self,
        sides: [(&[usize], &[i64]); 2],
        excluded: &[(Option<usize>, Option<usize>)],
    ) -> Result<Option<Vec<usize>>> {
        // First match as nested if-then-else over each side's formulas, once with the labels
        // and once with the positions (-1: no rule).
        let chain = |conds: &[Bool], values: &[i64]| -> Int {
            let mut acc = Int::from_i64(values[conds.len()]);
            for (cond, &value) in conds.iter().zip(values).rev() {
                acc = cond.ite(&Int::from_i64(value), &acc);
            }
            acc
        };
        let [(old, old_labels), (new, new_labels)] = sides;
        let encode =
            |formulas: &[usize]| -> Vec<Bool> { formulas.iter().map(|&f| self.encode(&self.rules[f])).collect() };
        let (old_conds, new_conds) = (encode(old), encode(new));
        let positions = |n: usize| -> Vec<i64> { (0..n as i64).chain([-1]).collect() };
        let (old_at, new_at) = (chain(&old_conds, &positions(old.len())), chain(&new_conds, &positions(new.len())));
        let position = |p: Option<usize>| Int::from_i64(p.map_or(-1, |p| p as i64));
        self.calls += 1;
        self.solver.push();
        self.solver.assert(chain(&old_conds, old_labels).eq(chain(&new_conds, new_labels)).not());
        for &(a, b) in excluded {
            self.solver.assert(Bool::and(&[old_at.eq(position(a)), new_at.eq(position(b))]).not());
        }
        self.point_then_pop()
    }

    fn calls(&self) -> usize {
        self.calls
    }
}
