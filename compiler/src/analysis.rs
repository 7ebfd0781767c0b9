//! The analysis behind `rulec check`: unsatisfiable, conflicting, shadowed (also by a union
//! of rules), duplicate, redundant and overlapping rules, partners a rule can never sell to
//! and rules that can never deliver (`unreachable`), and gaps (also per partner unavailable:
//! leads whose fall-through chain ends nowhere), each with a witness lead where one exists,
//! re-checked by the reference interpreter before it is reported.
//!
//! Rules are compared over atoms ([`crate::atoms`]). Cheap per-field bounds (each rule's
//! projection on every field, indexed per atom) settle most questions: rules whose bounds do
//! not meet cannot overlap, conjunctions whose bounds meet do overlap (the witness is read
//! off the bounds), and a greedy point often shows that a rule decides some lead. Only what
//! is left goes to the solver, through the [`Solver`] seam, which keeps its state between
//! queries.

use crate::atoms::{AtomSet, Atoms, Encoded, Formula};
use crate::finding::{Code, Finding};
use crate::model::{RuleSet, Target};
use crate::solver::{Answer, Lit, Solver};
use crate::{Error, Result};

/// What the analysis knows of the partners beyond the rules file: the ones that can never take
/// a lead (a cap of 0, a schedule that never opens), each with why. Empty when nothing is
/// known (`rulec check` without `--partners`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartnerFacts {
    /// Partner → why it never takes a lead ("its daily cap is 0").
    pub never: std::collections::BTreeMap<String, String>,
}

/// Figures of one analysis run (for `rulec check --stats` and the benchmark).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Rules that take part (enabled, type-correct).
    pub rules: usize,
    /// Pairs of such rules.
    pub pairs: usize,
    /// Pairs whose per-field bounds meet (the rest were settled by the bounds alone).
    pub candidate_pairs: usize,
    /// Queries sent to the solver.
    pub solver_calls: usize,
}

/// The rules in first-match order with everything the analysis derives from them.
struct Ctx<'a> {
    rules: &'a RuleSet,
    atoms: &'a Atoms,
    /// Rule index (in `rules.rules`) of each position.
    order: &'a [usize],
    formulas: &'a [Formula],
    /// Per position, per field: the atoms the rule's formula allows (its bounds).
    boxes: Vec<Vec<AtomSet>>,
    /// Per position: whether the bounds are exactly the formula (a conjunction).
    exact: Vec<bool>,
    /// Per field, per atom: the satisfiable positions whose bounds allow it.
    index: Vec<Vec<AtomSet>>,
}

impl<'a> Ctx<'a> {
    /// Each rule's bounds, derived once from the formulas the compile uses too; the index
    /// waits for [`satisfiable`], since only satisfiable rules are compared.
    fn new(rules: &'a RuleSet, encoded: &'a Encoded) -> Self {
        let domains = encoded.atoms.domains();
        let boxes = encoded.formulas.iter().map(|f| f.project(&domains)).collect();
        let exact = encoded.formulas.iter().map(Formula::is_conjunction).collect();
        let (atoms, order, formulas) = (&encoded.atoms, &encoded.order[..], &encoded.formulas[..]);
        Ctx { rules, atoms, order, formulas, boxes, exact, index: Vec::new() }
    }

    /// Per field, per atom, the positions of `live` whose bounds allow it: what lets
    /// [`Ctx::overlapping`] find a rule's candidates without comparing it with every rule.
    fn index_of(&self, live: &AtomSet) -> Vec<Vec<AtomSet>> {
        let n = self.order.len();
        self.atoms
            .domains()
            .iter()
            .enumerate()
            .map(|(field, &atoms)| {
                (0..atoms)
                    .map(|atom| {
                        let mut set = AtomSet::empty(n);
                        for k in live.iter().filter(|&k| self.boxes[k][field].contains(atom)) {
                            set.insert(k);
                        }
                        set
                    })
                    .collect()
            })
            .collect()
    }

    fn name(&self, k: usize) -> &str {
        &self.rules.rules[self.order[k]].name
    }

    fn route(&self, k: usize) -> &str {
        &self.rules.rules[self.order[k]].route
    }

    /// Whether the earlier rule at `e` keeps the rule at `k` from deciding the leads it takes:
    /// it holds them (`fallthrough: false`), or `k` sells only to partners of `e`, which are
    /// unavailable whenever `e`'s leads fall through.
    fn blocks(&self, e: usize, k: usize) -> bool {
        let (earlier, rule) = (&self.rules.rules[self.order[e]], &self.rules.rules[self.order[k]]);
        let theirs = earlier.target.partners();
        !earlier.fallthrough || rule.target.partners().iter().all(|p| theirs.contains(p))
    }

    fn priority(&self, k: usize) -> i64 {
        self.rules.rules[self.order[k]].priority
    }

    fn when_span(&self, k: usize) -> std::ops::Range<usize> {
        self.rules.rules[self.order[k]].raw.when.span.clone()
    }

    fn quote(&self, positions: &[usize]) -> String {
        let names: Vec<String> = positions.iter().map(|&p| format!("`{}`", self.name(p))).collect();
        match names.len() {
            0 => String::new(),
            1 => names[0].clone(),
            n => format!("{} and {}", names[..n - 1].join(", "), names[n - 1]),
        }
    }

    /// Positions (other than `k`) whose bounds meet `k`'s on every field.
    fn overlapping(&self, k: usize, live: &AtomSet) -> AtomSet {
        let mut out = live.clone();
        for (field, allowed) in self.boxes[k].iter().enumerate() {
            if allowed.is_full() {
                continue;
            }
            let mut any = AtomSet::empty(self.order.len());
            for atom in allowed.iter() {
                any = any.or(&self.index[field][atom]);
            }
            out = out.and(&any);
        }
        let mut without = AtomSet::empty(self.order.len());
        without.insert(k);
        out.and(&without.complement())
    }

    /// An atom of `set`: "missing" for an unconstrained field, else the first value atom.
    fn pick(set: &AtomSet) -> usize {
        if set.is_full() { 0 } else { set.iter().find(|&a| a != 0).or_else(|| set.iter().next()).unwrap_or(0) }
    }

    fn meet_point(&self, a: usize, b: usize) -> Vec<usize> {
        self.boxes[a].iter().zip(&self.boxes[b]).map(|(x, y)| Self::pick(&x.and(y))).collect()
    }

    /// A point in `k`'s bounds allowed by as few of `others` as possible, per field.
    fn greedy_point(&self, k: usize, others: &[usize]) -> Vec<usize> {
        self.boxes[k]
            .iter()
            .enumerate()
            .map(|(field, allowed)| {
                // Count, per atom, the others that allow it; a rule unconstrained on this
                // field allows every atom alike, so it does not change the choice.
                let mut counts = vec![0u32; allowed.universe()];
                for &o in others {
                    let theirs = &self.boxes[o][field];
                    if !theirs.is_full() {
                        theirs.iter().for_each(|atom| counts[atom] += 1);
                    }
                }
                allowed.iter().min_by_key(|&atom| (counts[atom], usize::from(atom == 0))).unwrap_or(0)
            })
            .collect()
    }

    /// A point satisfying all of `formulas`, found without the solver, if the search finds one.
    fn quick_point(&self, formula: &Formula) -> Option<Vec<usize>> {
        let full: Vec<AtomSet> = self.atoms.domains().iter().map(|&n| AtomSet::full(n)).collect();
        let bounds = formula.find_bounds(full)?;
        let point: Vec<usize> = bounds.iter().map(Self::pick).collect();
        formula.eval(&point).then_some(point)
    }

    /// A finding about rules `k` (the subject) and `e` that both match the witness `point`,
    /// verified with the interpreter first.
    fn pair_finding(
        &self,
        code: Code,
        k: usize,
        e: usize,
        message: String,
        labels: (String, String),
        point: &[usize],
    ) -> Result<Finding> {
        self.verify(code, point, &[e, k], &[])?;
        let mut f = Finding::new(code, message)
            .rule(self.name(k))
            .rule(self.name(e))
            .label(self.when_span(k), labels.0)
            .label(self.when_span(e), labels.1);
        f.witness = Some(self.witness(point));
        Ok(f)
    }

    /// A finding about rule `k` (the subject) and the rules `related`, each labelled.
    fn group_finding(
        &self,
        code: Code,
        k: usize,
        message: String,
        subject_label: &str,
        related: &[usize],
        label: impl Fn(usize) -> String,
    ) -> Finding {
        let mut f = Finding::new(code, message).rule(self.name(k)).label(self.when_span(k), subject_label);
        for &r in related {
            f = f.rule(self.name(r)).label(self.when_span(r), label(r));
        }
        f
    }

    fn witness(&self, point: &[usize]) -> serde_json::Map<String, serde_json::Value> {
        self.atoms.lead_of(point).to_json(self.rules)
    }

    /// Re-checks a witness with the interpreter: `matching` must match, `missing` must not.
    fn verify(&self, code: Code, point: &[usize], matching: &[usize], missing: &[usize]) -> Result<()> {
        let lead = self.atoms.lead_of(point);
        let ok = matching.iter().all(|&k| self.rules.matches(self.order[k], &lead))
            && missing.iter().all(|&k| !self.rules.matches(self.order[k], &lead));
        if ok {
            Ok(())
        } else {
            Err(Error::WitnessMismatch {
                code: code.as_str(),
                rules: matching.iter().chain(missing).map(|&k| self.name(k).to_owned()).collect(),
                witness: serde_json::Value::Object(lead.to_json(self.rules)).to_string(),
            })
        }
    }

    /// First-match "decided by a rule of another route than `route`" over `positions`
    /// (ascending), or by the fall-through when `fall_through_differs`.
    fn decided_elsewhere(&self, positions: &[usize], route: &str, fall_through_differs: bool) -> Formula {
        let mut parts = Vec::new();
        for (i, &p) in positions.iter().enumerate() {
            if self.route(p) != route {
                let mut conj = vec![self.formulas[p].clone()];
                conj.extend(positions[..i].iter().map(|&q| self.formulas[q].not()));
                parts.push(Formula::and(conj));
            }
        }
        if fall_through_differs {
            parts.push(Formula::and(positions.iter().map(|&q| self.formulas[q].not()).collect()));
        }
        Formula::or(parts)
    }
}

/// Whether some point satisfies both `a` and `b`; returns it.
fn overlap(ctx: &Ctx<'_>, solver: &mut dyn Solver, a: usize, b: usize) -> Result<Option<Vec<usize>>> {
    if ctx.exact[a] && ctx.exact[b] {
        return Ok(Some(ctx.meet_point(a, b)));
    }
    if let Some(point) = ctx.quick_point(&Formula::and(vec![ctx.formulas[a].clone(), ctx.formulas[b].clone()])) {
        return Ok(Some(point));
    }
    Ok(match solver.check(&[Lit::Matches(a), Lit::Matches(b)], None)? {
        Answer::Sat(point) => Some(point),
        Answer::Unsat(_) => None,
    })
}

/// Shrinks an unsat core of `Misses` literals (with `Matches(k)`) to a minimal one.
fn minimize(solver: &mut dyn Solver, k: usize, core: Vec<usize>) -> Result<Vec<usize>> {
    let mut core = core;
    let mut i = 0;
    while core.len() > 1 && i < core.len() {
        let mut trial: Vec<Lit> = vec![Lit::Matches(k)];
        trial.extend(core.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, &e)| Lit::Misses(e)));
        match solver.check(&trial, None)? {
            Answer::Unsat(_) => {
                core.remove(i);
            }
            Answer::Sat(_) => i += 1,
        }
    }
    Ok(core)
}

/// Analyzes the type-correct, enabled rules of `rules`, lowered as `encoded` (the rule
/// set's [`Encoded`], which the compile lowers the same way), asking `solver` (made for
/// `encoded.formulas`) only what the bounds cannot settle.
pub fn analyze(
    rules: &RuleSet,
    encoded: &Encoded,
    solver: &mut dyn Solver,
    partners: &PartnerFacts,
) -> Result<(Vec<Finding>, Stats)> {
    let calls_before = solver.calls();
    let mut ctx = Ctx::new(rules, encoded);
    let n = ctx.order.len();
    let mut findings = Vec::new();
    let mut stats = Stats { rules: n, pairs: n * n.saturating_sub(1) / 2, ..Stats::default() };
    let live = satisfiable(&ctx, solver, &mut findings)?;
    ctx.index = ctx.index_of(&live);
    for k in live.iter().collect::<Vec<_>>() {
        stats.candidate_pairs += examine(&ctx, solver, &live, k, &mut findings)?;
    }
    unreachable(&ctx, &live, partners, &mut findings);
    if rules.default_route.is_none() {
        gap(&ctx, solver, &live, &mut findings)?;
        fall_through_gaps(&ctx, solver, &live, partners, &mut findings)?;
    }
    stats.solver_calls = solver.calls() - calls_before;
    Ok((findings, stats))
}

/// The positions of the rules some lead satisfies; each other rule is reported
/// unsatisfiable here, and left out of every later comparison (it would shadow nothing and
/// overlap nothing).
fn satisfiable(ctx: &Ctx<'_>, solver: &mut dyn Solver, findings: &mut Vec<Finding>) -> Result<AtomSet> {
    let mut live = AtomSet::empty(ctx.order.len());
    for k in 0..ctx.order.len() {
        let sat = if ctx.boxes[k].iter().any(AtomSet::is_empty) {
            false
        } else if ctx.exact[k] || ctx.quick_point(&ctx.formulas[k]).is_some() {
            true
        } else {
            matches!(solver.check(&[Lit::Matches(k)], None)?, Answer::Sat(_))
        };
        if sat {
            live.insert(k);
        } else {
            findings.push(
                Finding::new(
                    Code::Unsatisfiable,
                    format!("rule `{}` can never match: its condition contradicts itself", ctx.name(k)),
                )
                .rule(ctx.name(k))
                .label(ctx.when_span(k), "no lead satisfies this"),
            );
        }
    }
    Ok(live)
}

/// Every finding about the live rule `k` against the rules whose bounds meet its own:
/// conflicts, then whether it decides any lead (if not: shadowed, duplicate or redundant),
/// then whether removing it would change a decision, then overlaps. Returns how many earlier
/// rules were candidates (for [`Stats::candidate_pairs`]).
fn examine(
    ctx: &Ctx<'_>,
    solver: &mut dyn Solver,
    live: &AtomSet,
    k: usize,
    findings: &mut Vec<Finding>,
) -> Result<usize> {
    let candidates = ctx.overlapping(k, live);
    let earlier: Vec<usize> = candidates.iter().filter(|&e| e < k).collect();
    let later: Vec<usize> = candidates.iter().filter(|&l| l > k).collect();
    let conflicting = conflicts(ctx, solver, k, &earlier, findings)?;
    // Under fall-through, an earlier rule keeps `k` from deciding only where it blocks it.
    let blocking: Vec<usize> = earlier.iter().copied().filter(|&e| ctx.blocks(e, k)).collect();
    let first = match decides(ctx, solver, k, &blocking)? {
        Decides::Never { covering } => {
            report_never_decides(ctx, solver, findings, k, &blocking, &covering, &conflicting)?;
            return Ok(earlier.len());
        }
        Decides::Lead(point) if blocking.len() == earlier.len() => Decides::Lead(point),
        Decides::Lead(_) => decides(ctx, solver, k, &earlier)?,
    };
    let point = match first {
        Decides::Lead(point) => point,
        Decides::Never { covering } => {
            // A backup: it decides only leads that fall through from earlier rules.
            let message = format!(
                "rule `{}` decides only leads that fall through from {} (when their partners are unavailable)",
                ctx.name(k),
                ctx.quote(&covering)
            );
            let mut f = Finding::new(Code::Overlap, message).rule(ctx.name(k));
            for &c in &covering {
                f = f.rule(ctx.name(c));
            }
            findings.push(f.label(ctx.when_span(k), "matches only leads taken first by earlier rules"));
            return Ok(earlier.len());
        }
    };
    if let Some(finding) = redundant(ctx, solver, k, &earlier, &later, &point)? {
        // A rule that changes nothing is reported once, not also for its overlaps.
        findings.push(finding);
        return Ok(earlier.len());
    }
    overlaps(ctx, solver, k, &earlier, findings)?;
    Ok(earlier.len())
}

/// Reports the earlier rules of `k`'s priority that route elsewhere and share a lead with
/// it (RULES.md's `conflict`); returns them, so a rule equivalent to one of them is not
/// reported again as shadowed.
fn conflicts(
    ctx: &Ctx<'_>,
    solver: &mut dyn Solver,
    k: usize,
    earlier: &[usize],
    findings: &mut Vec<Finding>,
) -> Result<Vec<usize>> {
    let mut conflicting = Vec::new();
    for &e in earlier.iter().filter(|&&e| ctx.priority(e) == ctx.priority(k) && ctx.route(e) != ctx.route(k)) {
        if let Some(point) = overlap(ctx, solver, e, k)? {
            conflicting.push(e);
            let message = format!(
                "rules `{}` and `{}` have the same priority ({}) and both match some leads, but route to `{}` and `{}`",
                ctx.name(k),
                ctx.name(e),
                ctx.priority(k),
                ctx.route(k),
                ctx.route(e)
            );
            let labels = (format!("routes to `{}`", ctx.route(k)), format!("routes to `{}`", ctx.route(e)));
            findings.push(ctx.pair_finding(Code::Conflict, k, e, message, labels, &point)?);
        }
    }
    Ok(conflicting)
}

/// Whether a rule decides some lead, and if not, which earlier rules take all of its leads.
enum Decides {
    /// A lead the rule decides.
    Lead(Vec<usize>),
    /// A minimal set of earlier positions (ascending) that together match every lead it does.
    Never { covering: Vec<usize> },
}

/// Whether `k` decides some lead, that is matches it while every earlier candidate misses
/// it. Tried cheapest first: the greedy point, a search over the bounds, then the solver,
/// whose unsat core (made minimal) names the rules that shadow `k`.
fn decides(ctx: &Ctx<'_>, solver: &mut dyn Solver, k: usize, earlier: &[usize]) -> Result<Decides> {
    let decides_here = |p: &Vec<usize>| ctx.formulas[k].eval(p) && earlier.iter().all(|&e| !ctx.formulas[e].eval(p));
    let point = ctx.greedy_point(k, earlier);
    if decides_here(&point) {
        return Ok(Decides::Lead(point));
    }
    let mut parts = vec![ctx.formulas[k].clone()];
    parts.extend(earlier.iter().map(|&e| ctx.formulas[e].not()));
    if let Some(point) = ctx.quick_point(&Formula::and(parts)).filter(decides_here) {
        return Ok(Decides::Lead(point));
    }
    let mut query = vec![Lit::Matches(k)];
    query.extend(earlier.iter().map(|&e| Lit::Misses(e)));
    Ok(match solver.check(&query, None)? {
        Answer::Sat(point) => Decides::Lead(point),
        Answer::Unsat(core) => {
            let covering: Vec<usize> =
                core.into_iter().filter_map(|l| if let Lit::Misses(e) = l { Some(e) } else { None }).collect();
            let mut covering = minimize(solver, k, covering)?;
            covering.sort_unstable();
            Decides::Never { covering }
        }
    })
}

/// The `redundant` finding for `k`, which decides `point`, when removing it would send every
/// lead it decides to the same route anyway (through later rules of its route or the default
/// route). Only asked when some later rule or the default route shares `k`'s route and
/// `point` itself would stay on it.
fn redundant(
    ctx: &Ctx<'_>,
    solver: &mut dyn Solver,
    k: usize,
    earlier: &[usize],
    later: &[usize],
    point: &[usize],
) -> Result<Option<Finding>> {
    let default_route = ctx.rules.default_route.as_deref();
    let default_same = default_route == Some(ctx.route(k));
    let later_same: Vec<usize> = later.iter().copied().filter(|&l| ctx.route(l) == ctx.route(k)).collect();
    if later_same.is_empty() && !default_same {
        return Ok(None);
    }
    let next = later.iter().find(|&&l| ctx.formulas[l].eval(point)).map_or(default_route, |&l| Some(ctx.route(l)));
    // An equivalent later twin is reported there, as a duplicate.
    let twin = later_same.iter().any(|&l| ctx.boxes[l] == ctx.boxes[k] && ctx.exact[l] && ctx.exact[k]);
    if next != Some(ctx.route(k)) || twin {
        return Ok(None);
    }
    let mut query = vec![Lit::Matches(k)];
    query.extend(earlier.iter().map(|&e| Lit::Misses(e)));
    let elsewhere = ctx.decided_elsewhere(later, ctx.route(k), !default_same);
    if let Answer::Sat(_) = solver.check(&query, Some(&elsewhere))? {
        return Ok(None);
    }
    let through = if later_same.is_empty() {
        "the default route".to_owned()
    } else if default_same {
        format!("{} or the default route", ctx.quote(&later_same))
    } else {
        ctx.quote(&later_same)
    };
    let message = format!(
        "removing rule `{}` changes no decision: every lead it decides would still go to `{}` through {through}",
        ctx.name(k),
        ctx.route(k)
    );
    Ok(Some(ctx.group_finding(Code::Redundant, k, message, "redundant", &later_same, |l| {
        format!("also routes to `{}`", ctx.route(l))
    })))
}

/// Reports the earlier rules of other priorities and routes that share a lead with `k`
/// (RULES.md's `overlap`, informational: priority decides).
fn overlaps(
    ctx: &Ctx<'_>,
    solver: &mut dyn Solver,
    k: usize,
    earlier: &[usize],
    findings: &mut Vec<Finding>,
) -> Result<()> {
    for &e in earlier.iter().filter(|&&e| ctx.priority(e) != ctx.priority(k) && ctx.route(e) != ctx.route(k)) {
        if let Some(point) = overlap(ctx, solver, e, k)? {
            let message = format!(
                "rules `{}` (priority {}, route `{}`) and `{}` (priority {}, route `{}`) both match some leads; `{}` decides them",
                ctx.name(e),
                ctx.priority(e),
                ctx.route(e),
                ctx.name(k),
                ctx.priority(k),
                ctx.route(k),
                ctx.name(e)
            );
            let labels = ("overlaps".to_owned(), "takes the shared leads".to_owned());
            findings.push(ctx.pair_finding(Code::Overlap, k, e, message, labels, &point)?);
        }
    }
    Ok(())
}

/// Reports `k`, which never decides because `covering` takes its leads first: as a
/// duplicate of an equivalent earlier rule of its route, not at all when the equivalent rule
/// is one it conflicts with (already reported), as redundant when every rule before it that
/// matches its leads routes them to its route anyway, else as shadowed.
fn report_never_decides(
    ctx: &Ctx<'_>,
    solver: &mut dyn Solver,
    findings: &mut Vec<Finding>,
    k: usize,
    earlier: &[usize],
    covering: &[usize],
    conflicting: &[usize],
) -> Result<()> {
    // An equivalent earlier rule: a duplicate (same route), the conflict already reported (same
    // priority), or shadowing by that one rule.
    for &e in earlier.iter().filter(|&&e| ctx.boxes[e] == ctx.boxes[k]) {
        let equivalent = (ctx.exact[e] && ctx.exact[k])
            || (matches!(solver.check(&[Lit::Matches(e), Lit::Misses(k)], None)?, Answer::Unsat(_))
                && matches!(solver.check(&[Lit::Matches(k), Lit::Misses(e)], None)?, Answer::Unsat(_)));
        if !equivalent {
            continue;
        }
        if ctx.route(e) == ctx.route(k) {
            findings.push(
                Finding::new(
                    Code::Duplicate,
                    format!(
                        "rules `{}` and `{}` match exactly the same leads and both route to `{}`",
                        ctx.name(k),
                        ctx.name(e),
                        ctx.route(k)
                    ),
                )
                .rule(ctx.name(k))
                .rule(ctx.name(e))
                .label(ctx.when_span(k), "the same leads")
                .label(ctx.when_span(e), "as this rule"),
            );
            return Ok(());
        }
        if conflicting.contains(&e) {
            return Ok(());
        }
        findings.push(shadowed(ctx, k, &[e]));
        return Ok(());
    }
    let elsewhere = ctx.decided_elsewhere(earlier, ctx.route(k), false);
    let same_route_only = matches!(elsewhere, Formula::False)
        || matches!(solver.check(&[Lit::Matches(k)], Some(&elsewhere))?, Answer::Unsat(_));
    if same_route_only {
        let message = format!(
            "rule `{}` never decides, and {} already send every lead it matches to `{}`: removing it changes nothing",
            ctx.name(k),
            ctx.quote(covering),
            ctx.route(k)
        );
        let f = ctx.group_finding(Code::Redundant, k, message, "redundant", covering, |c| {
            format!("routes to `{}` first", ctx.route(c))
        });
        findings.push(f);
    } else {
        findings.push(shadowed(ctx, k, covering));
    }
    Ok(())
}

/// The `shadowed` finding: `covering` takes every lead `k` matches.
fn shadowed(ctx: &Ctx<'_>, k: usize, covering: &[usize]) -> Finding {
    let message = format!(
        "rule `{}` never decides: every lead it matches is taken first by {}",
        ctx.name(k),
        ctx.quote(covering)
    );
    ctx.group_finding(Code::Shadowed, k, message, "never decides", covering, |c| {
        format!("priority {}, routes to `{}`", ctx.priority(c), ctx.route(c))
    })
}

/// The `gap` finding, asked only without a default route: a lead no live rule matches
/// (first the lead missing every field, which the solver need not find).
fn gap(ctx: &Ctx<'_>, solver: &mut dyn Solver, live: &AtomSet, findings: &mut Vec<Finding>) -> Result<()> {
    let all: Vec<usize> = live.iter().collect();
    let missing_everything = vec![0; ctx.atoms.fields.len()];
    let point = if all.iter().all(|&k| !ctx.formulas[k].eval(&missing_everything)) {
        Some(missing_everything)
    } else {
        let query: Vec<Lit> = all.iter().map(|&k| Lit::Misses(k)).collect();
        match solver.check(&query, None)? {
            Answer::Sat(point) => Some(point),
            Answer::Unsat(_) => None,
        }
    };
    if let Some(point) = point {
        ctx.verify(Code::Gap, &point, &[], &all)?;
        let mut f = Finding::new(Code::Gap, "some leads match no rule and there is no `default_route`");
        f.witness = Some(ctx.witness(&point));
        findings.push(f);
    }
    Ok(())
}

/// Why partner `partner` of the rule at position `k` never gets a lead from it, if it does not.
fn never_gets(ctx: &Ctx<'_>, k: usize, partner: &str, partners: &PartnerFacts) -> Option<String> {
    let rule = &ctx.rules.rules[ctx.order[k]];
    if let Target::Split { split } = &rule.target
        && split.get(partner) == Some(&0)
    {
        return Some("its split weight is 0".to_owned());
    }
    partners.never.get(partner).cloned()
}

/// `unreachable`: each partner of a live rule that never gets a lead from it, and each live rule
/// none of whose partners ever does (its leads fall through, or wait forever if it holds them).
fn unreachable(ctx: &Ctx<'_>, live: &AtomSet, partners: &PartnerFacts, findings: &mut Vec<Finding>) {
    for k in live.iter() {
        let rule = &ctx.rules.rules[ctx.order[k]];
        let names = rule.target.partners();
        let never: Vec<(&str, String)> =
            names.iter().filter_map(|&p| never_gets(ctx, k, p, partners).map(|why| (p, why))).collect();
        if never.is_empty() {
            continue;
        }
        if never.len() == names.len() {
            let whys: Vec<String> = never.iter().map(|(p, why)| format!("`{p}`: {why}")).collect();
            let then = if rule.fallthrough {
                "every lead it decides falls through to the next matching rule"
            } else {
                "it holds every lead it decides (`fallthrough: false`) for partners that never take one"
            };
            findings.push(
                Finding::new(
                    Code::Unreachable,
                    format!("rule `{}` can never deliver ({}): {then}", rule.name, whys.join("; ")),
                )
                .rule(&rule.name)
                .label(rule.raw.route.span.clone(), "no partner here takes a lead"),
            );
        } else {
            for (partner, why) in never {
                findings.push(
                    Finding::new(
                        Code::Unreachable,
                        format!("partner `{partner}` never gets a lead from rule `{}`: {why}", rule.name),
                    )
                    .rule(&rule.name)
                    .label(rule.raw.route.span.clone(), "in this route"),
                );
            }
        }
    }
}

/// `gap` per partner unavailable (capped, closed by its schedule, paused or its circuit open):
/// leads every matching rule of which falls through and sells only to that partner (or to
/// partners that never take a lead), so their chain ends nowhere, with no default route.
fn fall_through_gaps(
    ctx: &Ctx<'_>,
    solver: &mut dyn Solver,
    live: &AtomSet,
    partners: &PartnerFacts,
    findings: &mut Vec<Finding>,
) -> Result<()> {
    let all: Vec<usize> = live.iter().collect();
    let mut names: Vec<&str> = all.iter().flat_map(|&k| ctx.rules.rules[ctx.order[k]].target.partners()).collect();
    names.sort_unstable();
    names.dedup();
    for partner in names {
        // The rules that leave a lead nowhere to go while `partner` is unavailable.
        let stuck: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&k| {
                let rule = &ctx.rules.rules[ctx.order[k]];
                rule.fallthrough
                    && rule.target.partners().contains(&partner)
                    && rule.target.partners().iter().all(|&p| p == partner || never_gets(ctx, k, p, partners).is_some())
            })
            .collect();
        if stuck.is_empty() {
            continue;
        }
        let others: Vec<usize> = all.iter().copied().filter(|k| !stuck.contains(k)).collect();
        let some_stuck = Formula::or(stuck.iter().map(|&k| ctx.formulas[k].clone()).collect());
        let query: Vec<Lit> = others.iter().map(|&k| Lit::Misses(k)).collect();
        let Answer::Sat(point) = solver.check(&query, Some(&some_stuck))? else { continue };
        let matching: Vec<usize> = stuck.iter().copied().filter(|&k| ctx.formulas[k].eval(&point)).collect();
        ctx.verify(Code::Gap, &point, &matching, &others)?;
        let mut f = Finding::new(
            Code::Gap,
            format!(
                "while `{partner}` is unavailable (capped, closed by its schedule, paused or its circuit open), some \
                 leads have no rule to fall through to from {} and there is no `default_route`: they wait for \
                 `{partner}`",
                ctx.quote(&matching)
            ),
        );
        for &k in &matching {
            f = f.rule(ctx.name(k));
        }
        f.witness = Some(ctx.witness(&point));
        findings.push(f);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::solver::Z3Solver;

    /// Z3 behind the seam, recording what the analysis asks it (the answers are Z3's own).
    struct Recording {
        z3: Z3Solver,
        queries: Vec<Vec<Lit>>,
    }

    impl Solver for Recording {
        fn check(&mut self, assumptions: &[Lit], extra: Option<&Formula>) -> Result<Answer> {
            self.queries.push(assumptions.to_vec());
            self.z3.check(assumptions, extra)
        }

        fn dag_counterexample(&mut self, dag: &crate::dag::Dag) -> Result<Option<Vec<usize>>> {
            self.z3.dag_counterexample(dag)
        }

        fn first_match_difference(
            &mut self,
            sides: [(&[usize], &[i64]); 2],
            excluded: &[(Option<usize>, Option<usize>)],
        ) -> Result<Option<Vec<usize>>> {
            self.z3.first_match_difference(sides, excluded)
        }

        fn calls(&self) -> usize {
            self.z3.calls()
        }
    }

    fn analyzed(rules_yaml: &str) -> (Vec<Finding>, Stats, Vec<Vec<Lit>>) {
        let text = format!(
            "version: 1\ndefault_route: unsold\nroutes: [x, y, z, unsold]\nfields:\n  age: {{ type: int, min: 0, max: 120 }}\n  state: {{ type: enum, values: [CA, NY] }}\nrules:\n{rules_yaml}"
        );
        let (doc, syntax) = crate::syntax::document::read(&text);
        let (rules, types) = crate::model::check(&doc);
        assert!(syntax.is_empty() && types.is_empty(), "{syntax:?} {types:?}");
        let encoded = Encoded::new(&rules);
        let z3 = Z3Solver::new(&encoded.atoms.domains(), encoded.formulas.clone());
        let mut solver = Recording { z3, queries: Vec::new() };
        let (findings, stats) =
            analyze(&rules, &encoded, &mut solver, &PartnerFacts::default()).expect("the analysis runs");
        assert_eq!(stats.solver_calls, solver.queries.len(), "every call goes through the seam");
        (findings, stats, solver.queries)
    }

    #[test]
    fn disjoint_bounds_need_no_solver() {
        let (findings, stats, queries) = analyzed(
            "  - { name: ca, priority: 10, when: 'state == \"CA\"', route: x }\n  - { name: ny, priority: 20, when: 'state == \"NY\"', route: y }\n",
        );
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!((stats.rules, stats.pairs, stats.candidate_pairs), (2, 1, 0));
        assert!(queries.is_empty(), "{queries:?}");
    }

    #[test]
    fn a_union_shadow_is_proven_by_the_solver() {
        let (findings, _, queries) = analyzed(
            "  - { name: young, priority: 10, when: age < 40, route: x, fallthrough: false }\n  - { name: older, priority: 20, when: age >= 30, route: y, fallthrough: false }\n  - { name: adults, priority: 30, when: age between 18 and 60, route: z }\n",
        );
        let shadowed: Vec<&Finding> = findings.iter().filter(|f| f.code == Code::Shadowed).collect();
        assert_eq!(shadowed.len(), 1, "{findings:?}");
        assert_eq!(shadowed[0].rules, ["adults", "young", "older"]);
        assert!(queries.contains(&vec![Lit::Matches(2), Lit::Misses(0), Lit::Misses(1)]), "{queries:?}");
        let overlap = findings.iter().find(|f| f.code == Code::Overlap).expect("young and older overlap");
        assert_eq!(overlap.rules, ["older", "young"]);
    }

    #[test]
    fn a_covered_rule_of_another_partner_is_a_fall_through_backup_not_shadowed() {
        let (findings, _, _) = analyzed(
            "  - { name: young, priority: 10, when: age < 40, route: x }\n  - { name: older, priority: 20, when: age >= 30, route: y }\n  - { name: adults, priority: 30, when: age between 18 and 60, route: z }\n  - { name: again, priority: 40, when: age < 20, route: x }\n",
        );
        assert!(findings.iter().all(|f| f.code != Code::Shadowed || f.rules[0] == "again"), "{findings:?}");
        let backup = findings.iter().find(|f| f.rules.first().is_some_and(|r| r == "adults")).expect("adults");
        assert_eq!((backup.code, &backup.rules[1..]), (Code::Overlap, &["young".to_owned(), "older".to_owned()][..]));
        // `again` sells only to `x`, unavailable whenever `young`'s leads fall through.
        let again = findings.iter().find(|f| f.rules.first().is_some_and(|r| r == "again")).expect("again");
        assert_eq!(again.code, Code::Redundant, "{again:?}");
    }

    fn with_partner_facts(rules_yaml: &str, never: &[(&str, &str)], default_route: bool) -> Vec<Finding> {
        let text = format!(
            "version: 1\n{}routes: [x, y, z, unsold]\nfields:\n  state: {{ type: enum, values: [CA, NY] }}\nrules:\n{rules_yaml}",
            if default_route { "default_route: unsold\n" } else { "" }
        );
        let facts = PartnerFacts { never: never.iter().map(|(p, why)| ((*p).to_owned(), (*why).to_owned())).collect() };
        crate::report::check_rules_with("t.yaml", text.as_bytes(), &facts).expect("runs").1
    }

    #[test]
    fn partners_that_never_take_a_lead_are_unreachable_and_a_rule_of_only_such_never_delivers() {
        let findings = with_partner_facts(
            "  - { name: ca, priority: 10, when: 'state == \"CA\"', route: { split: { x: 1, y: 1 } } }\n  - { name: ny, priority: 20, when: 'state == \"NY\"', route: { shared: [y, z] }, fallthrough: false }\n",
            &[("y", "its daily cap is 0"), ("z", "its schedule never opens")],
            true,
        );
        let messages: Vec<(&str, &str)> = findings
            .iter()
            .map(|f| (f.code.as_str(), f.message.as_str()))
            .filter(|(c, _)| *c == "unreachable")
            .collect();
        assert_eq!(messages.len(), 2, "{findings:?}");
        assert!(
            messages[0].1.contains("partner `y` never gets a lead from rule `ca`: its daily cap is 0"),
            "{messages:?}"
        );
        assert!(
            messages[1].1.contains("rule `ny` can never deliver") && messages[1].1.contains("holds every lead"),
            "{messages:?}"
        );
    }

    #[test]
    fn a_fall_through_chain_that_ends_nowhere_is_a_gap_for_that_partner() {
        let rules = "  - { name: ca, priority: 10, when: 'state == \"CA\"', route: x }\n  - { name: any, priority: 20, when: 'state == \"CA\" or state == \"NY\"', route: y }\n";
        let gaps = |findings: &[Finding]| -> Vec<String> {
            findings.iter().filter(|f| f.code == Code::Gap).map(|f| f.message.clone()).collect()
        };
        // CA leads fall from `ca` (x) to `any` (y); NY leads have only `any`: y down leaves them nowhere.
        let findings = with_partner_facts(rules, &[], false);
        let found = gaps(&findings);
        assert_eq!(found.len(), 2, "{findings:?}"); // the plain gap (no state) and y's
        assert!(found.iter().any(|m| m.starts_with("while `y` is unavailable")), "{found:?}");
        assert!(!found.iter().any(|m| m.starts_with("while `x`")), "{found:?}");
        let witness = findings.iter().find(|f| f.message.starts_with("while `y`")).and_then(|f| f.witness.clone());
        assert_eq!(witness.and_then(|w| w.get("state").cloned()), Some(serde_json::json!("NY")));
        // A default route catches them.
        assert!(gaps(&with_partner_facts(rules, &[], true)).is_empty());
    }
}
