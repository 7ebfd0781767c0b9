//! `rulec diff` on fixture pairs (`tests/fixtures/diff/base.yaml` against each other file,
//! with its expected changes in its `# expect:` header and its JSON report checked in
//! beside it), the Z3 path against the case analysis, and a property test on random pairs
//! that compares the diff with the reference interpreter.
//!
//! To refresh the snapshots after an intended change: `UPDATE_SNAPSHOTS=1 cargo test -p compiler`,
//! then review the diff.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use compiler::diff::{Decision, Diff, Kind, Side, diff, diff_with_budget};
use compiler::interp::Lead;
use compiler::model::RuleSet;
use proptest::prelude::*;
use serde_json::Value;

use crate::check::{HEADER, expr, lead, rule_set};

fn folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diff")
}

fn side(path: &Path) -> Side {
    let bytes = std::fs::read(path).expect("readable fixture");
    let name = format!("fixtures/{}", path.file_name().expect("name").to_string_lossy());
    Side::read(&name, &bytes).unwrap_or_else(|report| panic!("{}", report.to_human(false)))
}

/// `(kind, from, to)` of every change, as in the `# expect:` headers
/// (`moves RULE ROUTE -> RULE ROUTE`, `-` for no rule or no route).
fn summary(diff: &Diff) -> BTreeSet<String> {
    let show = |d: &Decision| format!("{} {}", d.rule.as_deref().unwrap_or("-"), d.route.as_deref().unwrap_or("-"));
    diff.changes.iter().map(|c| format!("{} {} -> {}", c.kind.as_str(), show(&c.from), show(&c.to))).collect()
}

/// Decides a witness with each rule set's interpreter (fields a set does not declare, or
/// cannot read, are left out of its view).
fn decide(rules: &RuleSet, lead: &serde_json::Map<String, Value>) -> Decision {
    let mut view = lead.clone();
    view.retain(|name, value| {
        rules.field_index(name).is_some()
            && Lead::from_json(rules, &serde_json::json!({ name.clone(): value.clone() })).is_ok()
    });
    let lead = Lead::from_json(rules, &Value::Object(view)).expect("the witness fits");
    let d = rules.decide(&lead);
    Decision { rule: d.rule.map(|r| r.name.clone()), route: d.route.map(str::to_owned) }
}

#[test]
fn every_fixture_pair_reports_its_expected_changes() {
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let base = side(&folder().join("base.yaml"));
    let mut names = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder())
        .expect("fixtures folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("base.yaml"))
        .collect();
    files.sort();
    for path in files {
        let new = side(&path);
        let result = diff(&base, &new).expect("the diff runs");
        let text = std::fs::read_to_string(&path).expect("text");
        let header = text.lines().next().and_then(|l| l.strip_prefix("# expect: ")).expect("an `# expect:` header");
        let expected: BTreeSet<String> =
            if header == "nothing" { BTreeSet::new() } else { header.split("; ").map(str::to_owned).collect() };
        assert_eq!(summary(&result), expected, "{}", path.display());
        assert_eq!(result.equivalent(), expected.is_empty(), "{}", path.display());
        for change in &result.changes {
            assert_eq!(decide(&base.rules, &change.witness), change.from, "{}: {change:?}", path.display());
            assert_eq!(decide(&new.rules, &change.witness), change.to, "{}: {change:?}", path.display());
            let share = change.share.expect("the case analysis counts");
            assert!(share > 0.0 && share <= 1.0, "{}: {share}", path.display());
        }
        let actual = format!("{:#}\n", result.to_json());
        let snapshot = path.with_extension("json");
        if update {
            std::fs::write(&snapshot, &actual).expect("write snapshot");
        }
        let stored = std::fs::read_to_string(&snapshot)
            .unwrap_or_else(|_| panic!("no snapshot {}: run with UPDATE_SNAPSHOTS=1", snapshot.display()));
        assert_eq!(actual, stored, "{} differs from its snapshot", path.display());
        names.push(path.file_stem().expect("stem").to_string_lossy().into_owned());
    }
    for wanted in ["reordered", "route-renamed", "narrowed", "new-field", "disabled", "refactor"] {
        assert!(names.iter().any(|n| n == wanted), "fixture `{wanted}` is missing: {names:?}");
    }
}

#[test]
fn shares_are_exact_on_a_small_space() {
    // state has 4 values + missing; `state == "CA"` vs `state in ["CA", "NV"]`: NV leads move.
    let rules = |when: &str| {
        let text = format!(
            "version: 1\ndefault_route: u\nroutes: [a, u]\nfields:\n  state: {{ type: enum, values: [CA, NV, NY, TX] }}\nrules:\n  - {{ name: r, priority: 1, when: '{when}', route: a }}\n"
        );
        Side::read("s.yaml", text.as_bytes()).expect("valid")
    };
    let result = diff(&rules("state in [\"CA\", \"NV\"]"), &rules("state == \"CA\"")).expect("runs");
    assert_eq!(result.changes.len(), 1);
    assert_eq!(result.changes[0].kind, Kind::Moves);
    // 5 atoms (missing, CA, NV, NY, TX): one moves.
    assert_eq!(result.changes[0].share, Some(0.2));
    assert_eq!(result.changes[0].witness.get("state"), Some(&Value::from("NV")));
}

#[test]
fn z3_finds_the_same_pairs_as_the_case_analysis() {
    let base = side(&folder().join("base.yaml"));
    for name in ["reordered", "narrowed", "new-field", "refactor", "split", "retyped", "default-changed"] {
        let new = side(&folder().join(format!("{name}.yaml")));
        let exact = diff(&base, &new).expect("runs");
        let by_z3 = diff_with_budget(&base, &new, 0).expect("runs");
        assert_eq!(by_z3.proof, compiler::diff::Proof::Solver, "{name}");
        assert_eq!(summary(&by_z3), summary(&exact), "{name}");
        assert!(by_z3.changes.iter().all(|c| c.share.is_none()), "{name}: Z3 does not count");
    }
}

/// One generated rule: priority, route, condition, enabled.
type Generated = (i64, &'static str, String, bool);

fn render(rules: &[Generated], default: bool) -> String {
    let mut text = HEADER.to_owned();
    if default {
        text.push_str("default_route: c\n");
    }
    text.push_str("rules:\n");
    for (i, (priority, route, when, enabled)) in rules.iter().enumerate() {
        text.push_str(&format!(
            "  - name: r{i}\n    priority: {priority}\n    when: '{when}'\n    route: {route}\n    enabled: {enabled}\n"
        ));
    }
    text
}

/// A random rule set and the same set after a few edits of the kinds authors make: another
/// condition, route or priority, a rule disabled or added, the default route toggled.
fn edited_pair() -> impl Strategy<Value = (String, String)> {
    let routes = || prop::sample::select(vec!["a", "b", "c"]);
    let rule = (1i64..=3, routes(), expr());
    let edit = (0usize..8, 0usize..5, 1i64..=3, routes(), expr());
    (prop::collection::vec(rule, 1..=7), any::<bool>(), prop::collection::vec(edit, 1..=3), 0u8..4).prop_map(
        |(rules, default, edits, toggle)| {
            let mut rules: Vec<Generated> = rules.into_iter().map(|(p, r, w)| (p, r, w, true)).collect();
            let old = render(&rules, default);
            for (at, kind, priority, route, when) in edits {
                let i = at % rules.len();
                match kind {
                    0 => rules[i].2 = when,
                    1 => rules[i].1 = route,
                    2 => rules[i].0 = priority,
                    3 => rules[i].3 = false,
                    _ => rules.push((priority, route, when, true)),
                }
            }
            (old, render(&rules, default != (toggle == 0)))
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn witnesses_move_and_nothing_moves_means_agreement(
        (old, new) in prop_oneof![edited_pair(), (rule_set(), rule_set())],
        leads in prop::collection::vec(lead(), 96),
    ) {
        let (old, new) = (Side::read("old.yaml", old.as_bytes()).expect("valid"), Side::read("new.yaml", new.as_bytes()).expect("valid"));
        let result = diff(&old, &new).expect("the diff runs");
        for change in &result.changes {
            let (from, to) = (decide(&old.rules, &change.witness), decide(&new.rules, &change.witness));
            prop_assert_eq!(&from, &change.from);
            prop_assert_eq!(&to, &change.to);
            prop_assert!(from != to);
        }
        let total: f64 = result.changes.iter().filter_map(|c| c.share).sum();
        prop_assert!(total <= 1.0 + 1e-9, "{total}");
        // Every random lead on which the two differ is in a reported pair; with no pair,
        // every lead agrees.
        let pairs: BTreeSet<(Decision, Decision)> = result.changes.iter().map(|c| (c.from.clone(), c.to.clone())).collect();
        for json in &leads {
            let lead = json.as_object().expect("object");
            let mut present = lead.clone();
            present.retain(|_, v| !v.is_null());
            let (a, b) = (decide(&old.rules, &present), decide(&new.rules, &present));
            if a != b {
                prop_assert!(pairs.contains(&(a.clone(), b.clone())), "{a:?} -> {b:?} on {json} not reported");
            }
        }
    }

    #[test]
    fn the_z3_path_agrees_with_the_case_analysis((old, new) in edited_pair()) {
        let (old, new) = (Side::read("old.yaml", old.as_bytes()).expect("valid"), Side::read("new.yaml", new.as_bytes()).expect("valid"));
        let exact = diff(&old, &new).expect("runs");
        let by_z3 = diff_with_budget(&old, &new, 0).expect("runs");
        prop_assert_eq!(summary(&by_z3), summary(&exact));
    }

    #[test]
    fn a_set_is_equivalent_to_itself(text in rule_set()) {
        let side = Side::read("same.yaml", text.as_bytes()).expect("valid");
        let result = diff(&side, &side).expect("runs");
        prop_assert!(result.equivalent(), "{:?}", result.changes);
    }
}
