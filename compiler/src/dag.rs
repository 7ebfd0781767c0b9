//! The decision DAG: one field tested per node, edges labelled with the atoms that lead to
//! each child, leaves naming a lead's candidates: the first `k` matching rules (by
//! first-match position, in first-match order), the first of which decides.
//!
//! Built top-down over "sub-problems": the first-match positions already known to match
//! (the matched prefix, at most `k`) and the rules still in play, each reduced to what is
//! left of its formula once the fields tested on the path are known. Normalizing a
//! sub-problem drops rules that can no longer match, moves a leading rule that surely
//! matches into the prefix (repeatedly), and drops every rule after the one that surely
//! matches and fills the prefix to `k` (none after it can be among the first `k`). A leaf
//! is reached when the prefix has `k` entries or no rule is left; it names its list by an
//! index into [`Dag::decisions`], where list 0 is the empty list (no rule matches).
//! Identical sub-problems are one node (hash-consing), so the DAG shares every repeated
//! subtree. The split field is the one most of the remaining rules test (ties: fewer
//! atoms), which keeps paths short; every split settles its field for good, so no path is
//! longer than the number of fields. With `k = 1` this is the first-match DAG.
//!
//! `compile::validate` proves a DAG equal to "the first `k` matches in first-match order"
//! over the rules with the checks here ([`Dag::validate_by_enumeration`],
//! [`Dag::validate_symbolic`]) or, as a last resort, with Z3 (see `solver`).

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
    /// The decision: the index of its candidate list in [`Dag::decisions`] (0: no match).
    Leaf(usize),
}

/// A decision DAG over atoms.
#[derive(Debug, Clone)]
pub struct Dag {
    /// Nodes and atom-labelled edges.
    pub graph: DiGraph<Node, AtomSet>,
    /// Where every decision starts.
    pub root: NodeIndex,
    /// The distinct candidate lists the leaves name: first-match positions of the first
    /// `max_candidates` matching rules, in first-match order. List 0 is the empty list (no
    /// rule matches), whether or not a leaf names it.
    pub decisions: Vec<Vec<usize>>,
    /// `k`: the most candidates a list holds.
    pub max_candidates: usize,
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

/// A sub-problem: the first-match positions known to match on every lead that reaches it
/// (at most `k`), and the rules still in play with what is left of their formulas.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Problem {
    matched: Vec<usize>,
    rules: Vec<(usize, Formula)>,
}

impl Problem {
    /// The normalized sub-problem of `matched` followed by `rules` (in first-match order):
    /// `False` rules dropped, a leading `True` rule moved into `matched` (repeatedly), and
    /// everything after the `True` rule that brings the known matches to `k` dropped. With
    /// `k = 1` its rules are [`normalize`]'s, less a leading `True` rule.
    fn new(k: usize, mut matched: Vec<usize>, rules: impl IntoIterator<Item = (usize, Formula)>) -> Problem {
        let mut out = Vec::new();
        // `True` rules kept in `out` (not leading).
        let mut sure = 0;
        for (rule, formula) in rules {
            if matched.len() + sure >= k {
                break;
            }
            match formula {
                Formula::False => {}
                Formula::True if out.is_empty() => matched.push(rule),
                Formula::True => {
                    out.push((rule, Formula::True));
                    sure += 1;
                }
                other => out.push((rule, other)),
            }
        }
        Problem { matched, rules: out }
    }

    /// Whether the candidates are known: `k` of them, or no rule left to match.
    fn settled(&self, k: usize) -> bool {
        self.matched.len() >= k || self.rules.is_empty()
    }

    /// The sub-problem on the atoms `atoms` of `field` (the rules restricted, normalized).
    fn restrict_to(&self, k: usize, field: usize, atoms: &AtomSet) -> Problem {
        Problem::new(k, self.matched.clone(), self.rules.iter().map(|(r, f)| (*r, f.restrict_to(field, atoms))))
    }
}

/// Drops rules that can no longer match and everything after one that surely matches (each
/// rule named by a `T`: a first-match position here, an identity in `diff`). First match
/// only: the DAG's sub-problems generalize it to `k` candidates.
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

/// The first `k` first-match positions of `formulas` that hold at `point`.
fn first_matches(formulas: &[Formula], point: &[usize], k: usize) -> impl Iterator<Item = usize> {
    formulas.iter().enumerate().filter(|(_, f)| f.eval(point)).map(|(i, _)| i).take(k)
}

/// What [`Dag::eval`] answers for a leaf whose index is outside [`Dag::decisions`]: no
/// rule has this position, so it differs from every real list.
const NO_LIST: &[usize] = &[usize::MAX];

struct Builder<'a> {
    domains: &'a [usize],
    k: usize,
    graph: DiGraph<Node, AtomSet>,
    memo: HashMap<Problem, NodeIndex>,
    leaves: HashMap<Vec<usize>, NodeIndex>,
    decisions: Vec<Vec<usize>>,
}

impl Builder<'_> {
    fn leaf(&mut self, list: Vec<usize>) -> NodeIndex {
        if let Some(&known) = self.leaves.get(&list) {
            return known;
        }
        let index = if list.is_empty() {
            0
        } else {
            self.decisions.push(list.clone());
            self.decisions.len() - 1
        };
        let node = self.graph.add_node(Node::Leaf(index));
        self.leaves.insert(list, node);
        node
    }

    fn node(&mut self, problem: Problem) -> NodeIndex {
        if problem.settled(self.k) {
            return self.leaf(problem.matched);
        }
        if let Some(&known) = self.memo.get(&problem) {
            return known;
        }
        let rules = &problem.rules;
        let field = (0..self.domains.len())
            .filter_map(|f| {
                let users = rules.iter().filter(|(_, formula)| formula.mentions(f)).count();
                (users > 0).then_some((users, std::cmp::Reverse(self.domains[f]), f))
            })
            .max()
            .map_or(0, |(_, _, f)| f);
        // Group the field's atoms by what they leave of the rules that test the field.
        let users: Vec<usize> = (0..rules.len()).filter(|&i| rules[i].1.mentions(field)).collect();
        let mut groups: Vec<(Vec<Formula>, AtomSet)> = Vec::new();
        let mut by_signature: HashMap<Vec<Formula>, usize> = HashMap::new();
        for atom in 0..self.domains[field] {
            let signature: Vec<Formula> = users.iter().map(|&i| rules[i].1.restrict(field, atom)).collect();
            let slot = *by_signature.entry(signature.clone()).or_insert_with(|| {
                groups.push((signature, AtomSet::empty(self.domains[field])));
                groups.len() - 1
            });
            groups[slot].1.insert(atom);
        }
        let node = self.graph.add_node(Node::Test { field });
        for (signature, atoms) in groups {
            let mut restricted = problem.rules.clone();
            for (&i, formula) in users.iter().zip(signature) {
                restricted[i].1 = formula;
            }
            let child = self.node(Problem::new(self.k, problem.matched.clone(), restricted));
            self.graph.add_edge(node, child, atoms);
        }
        self.memo.insert(problem, node);
        node
    }
}

impl Dag {
    /// Builds the DAG of the first `k` matches over `formulas` (in first-match order), for
    /// fields with `domains[f]` atoms each. `k` is at least 1 (the first match).
    pub fn build(domains: &[usize], formulas: &[Formula], k: usize) -> Dag {
        let k = k.max(1);
        let mut builder = Builder {
            domains,
            k,
            graph: DiGraph::new(),
            memo: HashMap::new(),
            leaves: HashMap::new(),
            decisions: vec![Vec::new()],
        };
        let root = builder.node(Problem::new(k, Vec::new(), formulas.iter().cloned().enumerate()));
        Dag { graph: builder.graph, root, decisions: builder.decisions, max_candidates: k }
    }

    /// The candidate list with this index (a leaf's): first-match positions in first-match
    /// order; `None` outside the table.
    pub fn list(&self, index: usize) -> Option<&[usize]> {
        self.decisions.get(index).map(Vec::as_slice)
    }

    /// The candidates at a point (one atom per field): the first-match positions of the
    /// first `max_candidates` matching rules, in first-match order (empty: no match). A leaf
    /// naming a list outside the table answers `[usize::MAX]`, which no rule is.
    pub fn eval(&self, point: &[usize]) -> &[usize] {
        let mut node = self.root;
        loop {
            match self.graph[node] {
                Node::Leaf(index) => return self.list(index).unwrap_or(NO_LIST),
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

    /// Checks the DAG against the first `max_candidates` matches over `formulas` at every
    /// atom combination, when there are at most `limit` of them. `Ok(None)`: too many to
    /// enumerate; `Ok(Some(()))`: equal everywhere; `Err(point)`: a counterexample.
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
            if !self.eval(&point).iter().copied().eq(first_matches(formulas, &point, self.max_candidates)) {
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

    /// Proves the DAG equal to the first `max_candidates` matches over `formulas` by
    /// symbolic case analysis: walks every edge with per-field atom sets ("boxes"),
    /// restricts the rules to each box itself (independently of how the DAG was built), and
    /// at each leaf checks that the candidates are the same at every point of the box,
    /// splitting the box on a field wherever a rule is still undecided. Visits of (node,
    /// sub-problem) are memoized. Gives up after `budget` visits (`Ok(false)`); `Err(point)`
    /// is a counterexample.
    pub fn validate_symbolic(
        &self,
        domains: &[usize],
        formulas: &[Formula],
        budget: usize,
    ) -> Result<bool, Vec<usize>> {
        let boxes: Vec<AtomSet> = domains.iter().map(|&n| AtomSet::full(n)).collect();
        let problem = Problem::new(self.max_candidates, Vec::new(), formulas.iter().cloned().enumerate());
        let mut walk = Walk { dag: self, seen: std::collections::HashSet::new(), budget };
        walk.visit(self.root, boxes, problem)
    }

    /// Replaces the candidates of the leaf reached at `point` by `list` (test hook for
    /// translation validation: a broken DAG must be caught).
    #[doc(hidden)]
    pub fn corrupt_leaf_at(&mut self, point: &[usize], list: &[usize]) {
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
        let index = match self.decisions.iter().position(|known| known == list) {
            Some(index) => index,
            None => {
                self.decisions.push(list.to_vec());
                self.decisions.len() - 1
            }
        };
        let leaf = self.graph.add_node(Node::Leaf(index));
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
    /// `Ok(true)`: equal on the whole box; `Ok(false)`: out of budget.
    fn visit(&mut self, node: NodeIndex, mut boxes: Vec<AtomSet>, problem: Problem) -> Result<bool, Vec<usize>> {
        if self.budget == 0 {
            return Ok(false);
        }
        self.budget -= 1;
        if self.seen.contains(&(node, problem.clone())) {
            return Ok(true);
        }
        let k = self.dag.max_candidates;
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
                    let restricted = problem.restrict_to(k, field, &meet);
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
            Node::Leaf(index) => {
                // Every point of the box has `problem.matched` as its first matches (the
                // rules before them are false on the whole box), so the leaf's list must
                // start with them, and be them once the problem is settled.
                let Some(list) = self.dag.list(index) else { return Err(boxes.iter().map(pick).collect()) };
                if !list.starts_with(&problem.matched) || (problem.settled(k) && list != problem.matched) {
                    return Err(boxes.iter().map(pick).collect());
                }
                if !problem.settled(k) {
                    // Undecided: split the box on a field the first open rule tests (after
                    // normalization the first rule left is neither true nor false).
                    let field = problem.rules.first().and_then(|(_, formula)| formula.some_field()).unwrap_or(0);
                    for atom in boxes[field].iter().collect::<Vec<_>>() {
                        let mut one = AtomSet::empty(boxes[field].universe());
                        one.insert(atom);
                        let restricted = problem.restrict_to(k, field, &one);
                        let mut inner = boxes.clone();
                        inner[field] = one;
                        if !self.visit(node, inner, restricted)? {
                            return Ok(false);
                        }
                    }
                }
            }
        }
        self.seen.insert((node, problem));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `field`'s atom is one of `atoms` (of `len`).
    fn is_in(field: usize, len: usize, atoms: &[usize]) -> Formula {
        let mut set = AtomSet::empty(len);
        for &a in atoms {
            set.insert(a);
        }
        Formula::In(field, set)
    }

    /// Two fields of 4 and 3 atoms; five rules that overlap in many ways.
    fn rules() -> (Vec<usize>, Vec<Formula>) {
        let domains = vec![4, 3];
        let formulas = vec![
            is_in(0, 4, &[1, 2]),
            Formula::or(vec![is_in(1, 3, &[1]), is_in(0, 4, &[3])]),
            is_in(1, 3, &[1, 2]),
            Formula::and(vec![is_in(0, 4, &[0, 1]), is_in(1, 3, &[0, 2])]),
            is_in(0, 4, &[1, 2, 3]),
        ];
        (domains, formulas)
    }

    fn points(domains: &[usize]) -> Vec<Vec<usize>> {
        (0..domains[0]).flat_map(|a| (0..domains[1]).map(move |b| vec![a, b])).collect()
    }

    #[test]
    fn normalizing_keeps_what_can_be_among_the_first_k() {
        let open = || is_in(0, 4, &[1]);
        let rules = || vec![(0, Formula::False), (1, Formula::True), (2, open()), (3, Formula::True), (4, open())];
        // k = 1: the leading true rule decides; nothing else matters.
        let one = Problem::new(1, Vec::new(), rules());
        assert_eq!((one.matched.as_slice(), one.rules.len()), (&[1][..], 0));
        assert!(one.settled(1));
        // k = 2: rule 2 may be second; rule 3 surely is if 2 is not; 4 never.
        let two = Problem::new(2, Vec::new(), rules());
        assert_eq!(two.matched, vec![1]);
        assert_eq!(two.rules, vec![(2, open()), (3, Formula::True)]);
        // k = 3: rule 4 may be third.
        let three = Problem::new(3, Vec::new(), rules());
        assert_eq!(three.rules, vec![(2, open()), (3, Formula::True), (4, open())]);
        // With k = 1 the rules are first match's `normalize`, less a leading true rule.
        let list = vec![(0, Formula::False), (2, open()), (3, Formula::True), (4, open())];
        assert_eq!(Problem::new(1, Vec::new(), list.clone()).rules, normalize(list));
    }

    #[test]
    fn leaves_name_the_first_k_matches_for_k_1_2_3() {
        let (domains, formulas) = rules();
        let mut sizes = Vec::new();
        for k in 1..=3 {
            let dag = Dag::build(&domains, &formulas, k);
            assert_eq!((dag.max_candidates, dag.decisions[0].as_slice()), (k, &[][..]));
            assert!(dag.decisions.iter().skip(1).all(|l| !l.is_empty() && l.len() <= k && l.is_sorted()));
            for point in points(&domains) {
                let expected: Vec<usize> = first_matches(&formulas, &point, k).collect();
                assert_eq!(dag.eval(&point), expected.as_slice(), "k = {k} at {point:?}");
            }
            // Every list is named by a leaf (list 0 only when some point matches nothing).
            let named: std::collections::BTreeSet<usize> = dag
                .graph
                .node_weights()
                .filter_map(|n| match n {
                    Node::Leaf(i) => Some(*i),
                    Node::Test { .. } => None,
                })
                .collect();
            assert!((1..dag.decisions.len()).all(|i| named.contains(&i)));
            assert_eq!(dag.validate_by_enumeration(&domains, &formulas, 1_000), Ok(Some(())));
            assert_eq!(dag.validate_symbolic(&domains, &formulas, 10_000), Ok(true));
            sizes.push(dag.graph.node_count());
        }
        // Point (1, 1) matches rules 0, 1, 2, 4: the lists grow with k.
        let at = |k| Dag::build(&domains, &formulas, k).eval(&[1, 1]).to_vec();
        assert_eq!((at(1), at(2), at(3)), (vec![0], vec![0, 1], vec![0, 1, 2]));
        assert!(sizes.is_sorted(), "{sizes:?}");
    }

    #[test]
    fn a_corrupted_leaf_is_caught_by_enumeration_and_case_analysis() {
        let (domains, formulas) = rules();
        for k in 1..=3 {
            let right = Dag::build(&domains, &formulas, k);
            for point in points(&domains) {
                let truth = right.eval(&point).to_vec();
                // A wrong list: one candidate fewer, or another first candidate.
                let wrong = match truth.as_slice() {
                    [_, .., _] => truth[..truth.len() - 1].to_vec(),
                    [3] => Vec::new(),
                    _ => vec![3],
                };
                let mut dag = right.clone();
                dag.corrupt_leaf_at(&point, &wrong);
                assert_eq!(dag.eval(&point), wrong.as_slice());
                let found = dag.validate_by_enumeration(&domains, &formulas, 1_000).expect_err("enumeration");
                assert!(!dag.eval(&found).iter().copied().eq(first_matches(&formulas, &found, k)));
                let found = dag.validate_symbolic(&domains, &formulas, 10_000).expect_err("case analysis");
                assert!(!dag.eval(&found).iter().copied().eq(first_matches(&formulas, &found, k)), "k = {k}");
            }
        }
    }
}
