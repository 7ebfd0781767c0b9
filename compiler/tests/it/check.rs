//! `rulec check` end to end on files: one fixture per finding code and error kind with its
//! expected JSON report checked in beside it, hostile inputs, and property tests on random
//! rule sets that compare the analysis with the reference interpreter.
//!
//! To refresh the snapshots after an intended change: `UPDATE_SNAPSHOTS=1 cargo test -p compiler`,
//! then review the diff.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use compiler::finding::Code;
use compiler::interp::Lead;
use compiler::report::{Report, check, check_rules};
use proptest::prelude::*;
use serde_json::{Value, json};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn report_of(path: &Path) -> Report {
    let bytes = std::fs::read(path).expect("readable fixture");
    let name = format!("fixtures/{}", path.file_name().expect("name").to_string_lossy());
    check(&name, &bytes).expect("the analysis runs")
}

#[test]
fn every_fixture_matches_its_snapshot_and_its_expectation() {
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut codes_covered = BTreeSet::new();
    for path in fixtures() {
        let report = report_of(&path);
        let actual = format!("{:#}\n", report.to_json());
        let snapshot = path.with_extension("json");
        if update {
            std::fs::write(&snapshot, &actual).expect("write snapshot");
        }
        let expected = std::fs::read_to_string(&snapshot)
            .unwrap_or_else(|_| panic!("no snapshot {}: run with UPDATE_SNAPSHOTS=1", snapshot.display()));
        assert_eq!(actual, expected, "{} differs from its snapshot", path.display());

        // The `# expect: CODE` header names the one finding code (overlap infos aside).
        let text = std::fs::read_to_string(&path).expect("text");
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .map(|l| l.split_whitespace().next().unwrap_or(""));
        let expect = expect.unwrap_or("syntax"); // the empty file has no header
        let reported: BTreeSet<&str> = report
            .findings
            .iter()
            .map(|f| f.code.as_str())
            .filter(|c| *c != "overlap" || expect == "overlap")
            .collect();
        assert_eq!(reported, BTreeSet::from([expect]), "{}", path.display());
        codes_covered.extend(reported.into_iter().map(str::to_owned));
    }
    let all: BTreeSet<String> = Code::ALL.iter().map(|c| c.as_str().to_owned()).collect();
    assert_eq!(codes_covered, all, "a fixture per finding code");
}

#[test]
fn the_example_rule_set_passes_clean() {
    let report = report_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/rules.yaml"));
    assert_eq!((report.errors(), report.warnings()), (0, 0), "{}", report.to_human(false));
    assert!(report.rules_checked >= 30);
}

#[test]
fn union_shadowing_names_both_covering_rules() {
    let report = report_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check/shadowed_union.yaml"));
    let shadowed = report.findings.iter().find(|f| f.code == Code::Shadowed).expect("shadowed");
    assert_eq!(shadowed.rules, ["ca-working-age", "ca-under-30", "ca-30-plus"]);
}

#[test]
fn human_output_points_into_the_when_string() {
    let text = "version: 1\nroutes: [a]\nfields:\n  age: { type: int, min: 0, max: 120 }\nrules:\n  - name: r\n    priority: 1\n    when: age >> 3\n    route: a\n";
    let report = check("r.yaml", text.as_bytes()).expect("runs");
    let human = report.to_human(false);
    // line 8, column 16: the second `>` of `age >> 3`
    assert!(human.contains("r.yaml:8:16"), "{human}");
    assert!(human.contains("when: age >> 3"), "{human}");
    let sarif = report.to_sarif();
    assert_eq!(sarif["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"], 8);
}

#[test]
fn hostile_inputs_get_a_clear_finding_never_a_panic() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "the file is empty"),
        ("not utf-8", b"version: 1\nroutes: [\xff\xfe]\n".to_vec(), "not UTF-8"),
        ("ten megabytes", vec![b'#'; 10 * 1024 * 1024], "limited to 8 MiB"),
        ("malformed", b"rules: [\n".to_vec(), "malformed YAML"),
        ("unknown key", b"version: 1\nroute: [a]\n".to_vec(), "unknown key `route`"),
        ("a list", b"- 1\n".to_vec(), "must be a mapping"),
        (
            "deep nesting",
            format!(
                "version: 1\nroutes: [a]\nfields:\n  x: {{ type: bool }}\nrules:\n  - name: r\n    priority: 1\n    when: {}x{}\n    route: a\n",
                "(".repeat(5000),
                ")".repeat(5000)
            )
            .into_bytes(),
            "nested more than 64 levels",
        ),
        ("binary", (0..=255u8).cycle().take(4096).collect(), "UTF-8"),
    ];
    for (what, bytes, message) in cases {
        let report = check(what, &bytes).expect("runs");
        assert!(report.errors() > 0, "{what}: no error");
        let messages: Vec<&str> = report.findings.iter().map(|f| f.message.as_str()).collect();
        assert!(messages.iter().any(|m| m.contains(message)), "{what}: {messages:?}");
    }
}

// ---- property tests ----------------------------------------------------------------------

pub(crate) const HEADER: &str = r#"version: 1
routes: [a, b, c]
fields:
  age: { type: int, min: 0, max: 100 }
  state: { type: enum, values: [CA, NY, TX] }
  score: { type: decimal, scale: 1, min: 0, max: 100 }
  zip: { type: string }
  flag: { type: bool }
"#;

fn test_expr() -> impl Strategy<Value = String> {
    prop_oneof![
        (0i64..=100).prop_map(|v| format!("age < {v}")),
        (0i64..=100).prop_map(|v| format!("age >= {v}")),
        (0i64..=100, 0i64..=20).prop_map(|(lo, w)| format!("age between {lo} and {}", (lo + w).min(100))),
        prop::sample::subsequence(vec!["CA", "NY", "TX"], 1..=2).prop_map(|s| format!(
            "state in [{}]",
            s.iter().map(|v| format!("\"{v}\"")).collect::<Vec<_>>().join(", ")
        )),
        prop::sample::select(vec!["CA", "NY", "TX"]).prop_map(|v| format!("state != \"{v}\"")),
        (0i64..=1000).prop_map(|v| format!("score > {}.{}", v / 10, v % 10)),
        prop::sample::select(vec!["9", "90", "1"]).prop_map(|p| format!("zip starts_with \"{p}\"")),
        prop::sample::select(vec!["90210", "10001", "9"]).prop_map(|z| format!("zip == \"{z}\"")),
        Just("flag".to_owned()),
        prop::sample::select(vec!["age", "state", "zip", "flag"]).prop_map(|f| format!("{f} is missing")),
    ]
}

pub(crate) fn expr() -> impl Strategy<Value = String> {
    test_expr().prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..=3).prop_map(|v| v.join(" and ")),
            prop::collection::vec(inner.clone(), 2..=3).prop_map(|v| format!("({})", v.join(" or "))),
            inner.prop_map(|e| format!("not ({e})")),
        ]
    })
}

pub(crate) fn rule_set() -> impl Strategy<Value = String> {
    let rule = (1i64..=3, prop::sample::select(vec!["a", "b", "c"]), expr());
    (prop::collection::vec(rule, 1..=7), any::<bool>()).prop_map(|(rules, default)| {
        let mut text = HEADER.to_owned();
        if default {
            text.push_str("default_route: c\n");
        }
        text.push_str("rules:\n");
        for (i, (priority, route, when)) in rules.iter().enumerate() {
            text.push_str(&format!(
                "  - name: r{i}\n    priority: {priority}\n    when: '{when}'\n    route: {route}\n"
            ));
        }
        text
    })
}

pub(crate) fn lead() -> impl Strategy<Value = Value> {
    let age = prop_oneof![Just(Value::Null), (0i64..=100).prop_map(|v| json!(v))];
    let state = prop_oneof![Just(Value::Null), prop::sample::select(vec!["CA", "NY", "TX"]).prop_map(|v| json!(v))];
    let score = prop_oneof![Just(Value::Null), (0i64..=1000).prop_map(|v| json!(format!("{}.{}", v / 10, v % 10)))];
    let zip = prop_oneof![
        Just(Value::Null),
        prop::sample::select(vec!["90210", "9", "90", "10001", "1", "55555", ""]).prop_map(|v| json!(v))
    ];
    let flag = prop_oneof![Just(Value::Null), any::<bool>().prop_map(|v| json!(v))];
    (age, state, score, zip, flag).prop_map(
        |(age, state, score, zip, flag)| json!({"age": age, "state": state, "score": score, "zip": zip, "flag": flag}),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_analysis_agrees_with_the_interpreter(text in rule_set(), leads in prop::collection::vec(lead(), 64)) {
        let (checked, findings, _) = check_rules("random.yaml", text.as_bytes()).expect("runs");
        let (rules, _) = checked.expect("parses");
        prop_assert!(findings.iter().all(|f| !matches!(f.code, Code::Syntax | Code::Type)), "{findings:?}\n{text}");
        let index = |name: &str| rules.rules.iter().position(|r| r.name == name).expect("named rule");

        // Every witness reproduces its claim.
        for f in &findings {
            let Some(witness) = &f.witness else { continue };
            let lead = Lead::from_json(&rules, &Value::Object(witness.clone())).expect("witness fits the schema");
            match f.code {
                Code::Conflict | Code::Overlap => {
                    prop_assert!(rules.matches(index(&f.rules[0]), &lead) && rules.matches(index(&f.rules[1]), &lead), "{f:?}\n{text}");
                }
                Code::Gap if f.rules.is_empty() => prop_assert!(rules.decide(&lead).rule.is_none(), "{f:?}\n{text}"),
                // A fall-through gap: every rule the lead matches sells to the one partner named.
                Code::Gap => {
                    let partner = &rules.rules[index(&f.rules[0])].route;
                    let matching: Vec<&str> = rules.order().into_iter().filter(|&i| rules.matches(i, &lead)).map(|i| rules.rules[i].route.as_str()).collect();
                    prop_assert!(!matching.is_empty() && matching.iter().all(|r| r == partner), "{f:?}\n{text}");
                }
                _ => {}
            }
        }
        let reported = |code: Code, a: &str, b: &str| findings.iter().any(|f| f.code == code && f.rules.len() >= 2
            && ((f.rules[0] == a && f.rules[1] == b) || (f.rules[0] == b && f.rules[1] == a)));
        let with_code = |code: Code, name: &str| findings.iter().any(|f| f.code == code && f.rules.first().is_some_and(|r| r == name));
        let order = rules.order();
        for json in &leads {
            let lead = Lead::from_json(&rules, json).expect("random lead fits");
            let matching: Vec<usize> = order.iter().copied().filter(|&i| rules.matches(i, &lead)).collect();
            // Same priority, different routes, both match: a conflict was reported for the pair.
            for (x, &i) in matching.iter().enumerate() {
                for &j in &matching[x + 1..] {
                    let (ri, rj) = (&rules.rules[i], &rules.rules[j]);
                    if ri.priority == rj.priority && ri.route != rj.route {
                        prop_assert!(reported(Code::Conflict, &ri.name, &rj.name), "{} / {} on {json}\n{text}", ri.name, rj.name);
                    }
                }
            }
            if let Some(&decider) = matching.first() {
                let name = &rules.rules[decider].name;
                prop_assert!(!with_code(Code::Shadowed, name), "shadowed `{name}` decided {json}\n{text}");
                prop_assert!(!with_code(Code::Unsatisfiable, name), "unsatisfiable `{name}` matched {json}\n{text}");
            }
            if rules.default_route.is_none() && matching.is_empty() {
                prop_assert!(findings.iter().any(|f| f.code == Code::Gap), "unreported gap at {json}\n{text}");
            }
        }
    }
}
