//! The decision DAG: one field tested per node, edges labelled with the atoms that lead to
//! each child, leaves naming the deciding rule (by first-match position) or "no match".
//!
//! Built top-down over "sub-problems": the rules still in play, each reduced to what is left
//! of its formula once the fields tested on the path are known. Identical sub-problems are
//! one node (hash-consing), so the DAG shares every repeated subtree. The split field is the
//! one most of the remaining rules test (ties: fewer atoms), which keeps paths short; every
//! split settles its field for good, so no path is longer than the number of fields.
//!
//! `compile::validate` proves a DAG equal to first match over the rules with the checks
//! here ([`Dag::validate_by_enumeration`], [`Dag::validate_symbolic`]) or, as a last resort,
//! with Z3 (see `solver`).

use std::collections::HashMap;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::atoms::{AtomSet, Formula};

/// A DAG node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    /// Branch on a field's atom.
    Test {
        /// The field.
        field: usize,
    },
    /// The decision: the first-match position of the deciding rule, or `None` (no match).
    Leaf(Option<usize>),
}

/// A decision DAG over atoms.
#[derive(Debug, Clone)]
pub struct Dag {
    /// Nodes and atom-labelled edges.
    pub graph: DiGraph<Node, AtomSet>,
    /// Where every decision starts.
    pub root: NodeIndex,
}

/// Size and shape of a DAG.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DagStats {
    /// Nodes, leaves included.
    pub nodes: usize,
    /// Edges.
    pub edges: usize,
    /// Longest root-to-leaf path (tests).
    pub max_depth: usize,
    /// Mean number of tests per decision, weighting each edge by its share of its field's atoms.
    pub avg_depth: f64,
}

type Problem = Vec<(usize, Formula)>;

/// Drops rules that can no longer match and everything after one that surely matches (each
/// rule named by a `T`: a first-match position here, an identity in `diff`).
pub(crate) fn normalize<T>(candidates: impl IntoIterator<Item = (T, Formula)>) -> Vec<(T, Formula)> {
    let mut out = Vec::new();
    for (rule, formula) in candidates {
        match formula {
            Formula::False => {}
            Formula::True => {
                out.push((rule, Formula::True));
                break;
            }
            other => out.push((rule, other)),
        }
    }
    out
}

struct Builder<'a> {
    domains: &'a [usize],
    graph: DiGraph<Node, AtomSet>,
    memo: HashMap<Problem, NodeIndex>,
    leaves: HashMap<Option<usize>, NodeIndex>,
}

impl Builder<'_> {
    fn leaf(&mut self, decision: Option<usize>) -> NodeIndex {
        *self.leaves.entry(decision).or_insert_with(|| self.graph.add_node(Node::Leaf(decision)))
    }

    fn node(&mut self, problem: Problem) -> NodeIndex {
        match problem.first() {
            None => return self.leaf(None),
            Some((rule, Formula::True)) => return self.leaf(Some(*rule)),
            Some(_) => {}
        }
        if let Some(&known) = self.memo.get(&problem) {
            return known;
        }
        let field = (0..self.domains.len())
            .filter_map(|f| {
                let users = problem.iter().filter(|(_, formula)| formula.mentions(f)).count();
                (users > 0).then_some((users, std::cmp::Reverse(self.domains[f]), f))
            })
            .max()
            .map_or(0, |(_, _, f)| f);
        // Group the field's atoms by what they leave of the rules that test the field.
        let users: Vec<usize> = (0..problem.len()).filter(|&i| problem[i].1.mentions(field)).collect();
        let mut groups: Vec<(Vec<Formula>, AtomSet)> = Vec::new();
        let mut by_signature: HashMap<Vec<Formula>, usize> = HashMap::new();
        for atom in 0..self.domains[field] {
            let signature: Vec<Formula> = users.iter().map(|&i| problem[i].1.restrict(field, atom)).collect();
            let slot = *by_signature.entry(signature.clone()).or_insert_with(|| {
                groups.push((signature, AtomSet::empty(self.domains[field])));
                groups.len() - 1
            });
            groups[slot].1.insert(atom);
        }
        let node = self.graph.add_node(Node::Test { field });
        for (signature, atoms) in groups {
            let mut restricted = problem.clone();
            for (&i, formula) in users.iter().zip(signature) {
                restricted[i].1 = formula;
            }
            let child = self.node(normalize(restricted));
            self.graph.add_edge(node, child, atoms);
        }
        self.memo.insert(problem, node);
        node
    }
}

impl Dag {
    /// Builds the DAG of first match over `formulas` (in first-match order), for fields with
    /// `domains[f]` atoms each.
    pub fn build(domains: &[usize], formulas: &[Formula]) -> Dag {
        let mut builder = Builder { domains, graph: DiGraph::new(), memo: HashMap::new(), leaves: HashMap::new() };
        let root = builder.node(normalize(formulas.iter().cloned().enumerate()));
        Dag { graph: builder.graph, root }
    }

    /// The decision at a point (one atom per field).
    pub fn eval(&self, point: &[usize]) -> Option<usize> {
        let mut node = self.root;
        loop {
            match self.graph[node] {
                Node::Leaf(decision) => return decision,
                Node::Test { field } => {
                    let atom = point[field];
                    node = self
                        .graph
                        .edges_directed(node, Direction::Outgoing)
                        .find(|e| e.weight().contains(atom))
                        .map_or(node, |e| e.target());
                }
            }
        }
    }

    /// The children of a test node with their atoms.
    pub fn children(&self, node: NodeIndex) -> Vec<(AtomSet, NodeIndex)> {
        let mut out: Vec<(AtomSet, NodeIndex)> =
            self.graph.edges_directed(node, Direction::Outgoing).map(|e| (e.weight().clone(), e.target())).collect();
        out.sort_by_key(|(atoms, _)| atoms.iter().next());
        out
    }

    /// Size and depth figures.
    pub fn stats(&self) -> DagStats {
        let mut depth: HashMap<NodeIndex, (usize, f64)> = HashMap::new();
        let (max_depth, avg_depth) = self.depths(self.root, &mut depth);
        DagStats { nodes: self.graph.node_count(), edges: self.graph.edge_count(), max_depth, avg_depth }
    }

    fn depths(&self, node: NodeIndex, memo: &mut HashMap<NodeIndex, (usize, f64)>) -> (usize, f64) {
        if let Some(&known) = memo.get(&node) {
            return known;
        }
        let result = match self.graph[node] {
            Node::Leaf(_) => (0, 0.0),
            Node::Test { .. } => {
                let children = self.children(node);
                let total: usize = children.iter().map(|(atoms, _)| atoms.count()).sum();
                let mut max = 0;
                let mut avg = 0.0;
                for (atoms, child) in children {
                    let (m, a) = self.depths(child, memo);
                    max = max.max(m + 1);
                    avg += (atoms.count() as f64 / total.max(1) as f64) * (a + 1.0);
                }
                (max, avg)
            }
        };
        memo.insert(node, result);
        result
    }

    /// Checks the DAG against first match over `formulas` at every atom combination, when
    /// there are at most `limit` of them. `Ok(None)`: too many to enumerate; `Ok(Some(()))`:
    /// equal everywhere; `Err(point)`: a counterexample.
    pub fn validate_by_enumeration(
        &self,
        domains: &[usize],
        formulas: &[Formula],
        limit: u64,
    ) -> Result<Option<()>, Vec<usize>> {
        let total = domains.iter().try_fold(1u64, |acc, &n| acc.checked_mul(n as u64));
        if total.is_none_or(|t| t > limit) {
            return Ok(None);
        }
        let mut point = vec![0usize; domains.len()];
        loop {
            let expected = formulas.iter().position(|f| f.eval(&point));
            if self.eval(&point) != expected {
                return Err(point);
            }
            // next combination (odometer)
            let mut i = 0;
            loop {
                if i == domains.len() {
                    return Ok(Some(()));
                }
                point[i] += 1;
                if point[i] < domains[i] {
                    break;
                }
                point[i] = 0;
                i += 1;
            }
        }
    }

    /// Proves the DAG equal to first match over `formulas` by symbolic case analysis: walks
    /// every edge with per-field atom sets ("boxes"), restricts the rules to each box itself
    /// (independently of how the DAG was built), and at each leaf checks that first match is
    /// the same at every point of the box, splitting the box on a field wherever a rule is
    /// still undecided. Visits of (node, remaining rules) are memoized. Gives up after
    /// `budget` visits (`Ok(false)`); `Err(point)` is a counterexample.
    pub fn validate_symbolic(
        &self,
        domains: &[usize],
        formulas: &[Formula],
        budget: usize,
    ) -> Result<bool, Vec<usize>> {
        let boxes: Vec<AtomSet> = domains.iter().map(|&n| AtomSet::full(n)).collect();
        let problem = normalize(formulas.iter().cloned().enumerate());
        let mut walk = Walk { dag: self, seen: std::collections::HashSet::new(), budget };
        walk.visit(self.root, boxes, problem)
    }

    /// Replaces the decision of the leaf reached at `point` (test hook for translation
    /// validation: a broken DAG must be caught).
    #[doc(hidden)]
    pub fn corrupt_leaf_at(&mut self, point: &[usize], decision: Option<usize>) {
        let mut node = self.root;
        while let Node::Test { field } = self.graph[node] {
            let Some(next) = self
                .graph
                .edges_directed(node, Direction::Outgoing)
                .find(|e| e.weight().contains(point[field]))
                .map(|e| e.target())
            else {
                return;
            };
            node = next;
        }
        let leaf = self.graph.add_node(Node::Leaf(decision));
        let parents: Vec<_> = self.graph.edges_directed(node, Direction::Incoming).map(|e| e.id()).collect();
        for edge in parents {
            if let Some((from, _)) = self.graph.edge_endpoints(edge) {
                let atoms = self.graph[edge].clone();
                self.graph.remove_edge(edge);
                self.graph.add_edge(from, leaf, atoms);
            }
        }
        if node == self.root {
            self.root = leaf;
        }
    }
}

struct Walk<'a> {
    dag: &'a Dag,
    seen: std::collections::HashSet<(NodeIndex, Problem)>,
    budget: usize,
}

fn pick(set: &AtomSet) -> usize {
    set.iter().next().unwrap_or(0)
}

impl Walk<'_> {
    fn restrict(problem: &Problem, field: usize, atoms: &AtomSet) -> Problem {
        normalize(problem.iter().map(|(r, f)| (*r, f.restrict_to(field, atoms))))
    }

    /// `Ok(true)`: equal on the whole box; `Ok(false)`: out of budget.
    fn visit(&mut self, node: NodeIndex, mut boxes: Vec<AtomSet>, problem: Problem) -> Result<bool, Vec<usize>> {
        if self.budget == 0 {
            return Ok(false);
        }
        self.budget -= 1;
        if self.seen.contains(&(node, problem.clone())) {
            return Ok(true);
        }
        match self.dag.graph[node] {
            Node::Test { field } => {
                // The edges must partition the field's atoms that are still possible.
                let mut covered = AtomSet::empty(boxes[field].universe());
                for (atoms, child) in self.dag.children(node) {
                    if atoms.intersects(&covered) {
                        return Err(boxes.iter().map(pick).collect());
                    }
                    covered = covered.or(&atoms);
                    let meet = atoms.and(&boxes[field]);
                    if meet.is_empty() {
                        continue;
                    }
                    let restricted = Self::restrict(&problem, field, &meet);
                    let mut inner = boxes.clone();
                    inner[field] = meet;
                    if !self.visit(child, inner, restricted)? {
                        return Ok(false);
                    }
                }
                let uncovered = boxes[field].and(&covered.complement());
                if !uncovered.is_empty() {
                    boxes[field] = uncovered;
                    return Err(boxes.iter().map(pick).collect());
                }
            }
            Node::Leaf(decision) => match problem.first() {
                None if decision.is_none() => {}
                Some((rule, Formula::True)) if decision == Some(*rule) => {}
                Some((_, formula)) if !matches!(formula, Formula::True) => {
                    // Undecided: split the box on a field the first open rule tests.
                    let field = formula.some_field().unwrap_or(0);
                    for atom in boxes[field].iter().collect::<Vec<_>>() {
                        let mut one = AtomSet::empty(boxes[field].universe());
                        one.insert(atom);
                        let restricted = Self::restrict(&problem, field, &one);
                        let mut inner = boxes.clone();
                        inner[field] = one;
                        if !self.visit(node, inner, restricted)? {
                            return Ok(false);
                        }
                    }
                }
                _ => return Err(boxes.iter().map(pick).collect()),
            },
        }
        self.seen.insert((node, problem));
        Ok(true)
    }
}
