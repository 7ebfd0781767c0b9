//! `compiler::interp::explain`: the steps and decision of a known lead on a small file (text,
//! spans, the human output `rulec explain` prints, the JSON), and on random rule sets and leads
//! the explanation agrees with first match: its decision is `RuleSet::decide`'s, its steps are
//! the enabled rules in first-match order up to the deciding one, and each failing test really
//! fails its rule.

use compiler::interp::{Decided, Lead, explain};
use compiler::report::check_rules;
use compiler::source::Source;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::check::{lead, rule_set};

const FILE: &str = r#"version: 1
default_route: unsold
routes: [school_a, school_b, unsold]
fields:
  state: { type: enum, values: [CA, NY] }
  age: { type: int, min: 0, max: 120 }
rules:
  - name: off
    priority: 1
    when: age > 0
    route: school_b
    enabled: false
  - name: ny-young
    priority: 10
    when: state == "NY" and age < 30
    route: school_a
  - name: older
    priority: 20
    when: not (age is missing) and age >= 40
    route: school_b
"#;

fn explained(lead: Value) -> compiler::interp::Explanation {
    let (checked, findings, _) = check_rules("rules.yaml", FILE.as_bytes()).expect("runs");
    assert!(findings.iter().all(|f| f.severity() != compiler::finding::Severity::Error), "{findings:?}");
    let (rules, source) = checked.expect("parses");
    let lead = Lead::from_json(&rules, &lead).expect("a lead");
    explain(&rules, &source, &lead)
}

#[test]
fn a_known_lead_is_explained_rule_by_rule() {
    let e = explained(json!({"state": "NY", "age": 45}));
    assert_eq!(e.decision, Decided::Rule { rule: "older".to_owned(), route: "school_b".to_owned() });
    assert_eq!(e.steps.len(), 2, "the disabled rule is not tried: {e:?}");
    let failed = e.steps[0].failed.as_ref().expect("ny-young fails");
    assert_eq!((e.steps[0].rule.as_str(), e.steps[0].priority, e.steps[0].matched), ("ny-young", 10, false));
    assert_eq!(failed.text, "age < 30");
    assert_eq!(&FILE[failed.span.clone()], "age < 30");
    assert_eq!((failed.line, failed.column), (15, 29));
    assert!(e.steps[1].matched && e.steps[1].failed.is_none());
    assert_eq!(
        e.to_human("rules.yaml"),
        "  no   ny-young (priority 10): `age < 30` is false (rules.yaml:15:29)\n  YES  older (priority 20) matches: \
         route `school_b`\ndecided by `older` -> `school_b`\n"
    );
    let json = serde_json::to_value(&e).expect("json");
    assert_eq!(json["decision"], json!({"kind": "rule", "rule": "older", "route": "school_b"}));
    assert_eq!(json["steps"][0]["failed"]["span"]["start"], failed.span.start);
    assert!(json["steps"][1].get("failed").is_none());

    let e = explained(json!({"state": "CA"}));
    assert_eq!(e.decision, Decided::DefaultRoute { route: "unsold".to_owned() });
    assert_eq!((e.rule(), e.route()), (None, Some("unsold")));
    let texts: Vec<&str> = e.steps.iter().filter_map(|s| s.failed.as_ref()).map(|f| f.text.as_str()).collect();
    // `not (age is missing)` fails because its operand holds: the culprit is `age is missing`.
    assert_eq!(texts, ["state == \"NY\"", "age is missing"]);
    assert!(e.to_human("f").ends_with("no rule matched -> default route `unsold`\n"));
    assert_eq!(
        serde_json::to_value(&e).expect("json")["decision"],
        json!({"kind": "default_route", "route": "unsold"})
    );
}

#[test]
fn without_a_default_route_an_unmatched_lead_says_so() {
    let text = FILE.replace("default_route: unsold\n", "");
    let (checked, _, _) = check_rules("r.yaml", text.as_bytes()).expect("runs");
    let (rules, source) = checked.expect("parses");
    let lead = Lead::from_json(&rules, &json!({})).expect("a lead");
    let e = explain(&rules, &source, &lead);
    assert_eq!(e.decision, Decided::Unmatched);
    assert_eq!((e.rule(), e.route()), (None, None));
    assert!(e.to_human("r.yaml").ends_with("no rule matched and there is no default route: unmatched\n"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn explanations_agree_with_first_match(text in rule_set(), leads in prop::collection::vec(lead(), 32)) {
        let (checked, _, _) = check_rules("random.yaml", text.as_bytes()).expect("runs");
        let (rules, _) = checked.expect("parses");
        let source = Source::new("random.yaml", text.clone());
        let order = rules.order();
        for json in &leads {
            let lead = Lead::from_json(&rules, json).expect("random lead fits");
            let e = explain(&rules, &source, &lead);
            let decided = rules.decide(&lead);
            prop_assert_eq!(e.rule(), decided.rule.map(|r| r.name.as_str()), "{}\n{}", json, text);
            prop_assert_eq!(e.route(), decided.route, "{}\n{}", json, text);
            let tried: Vec<&str> = e.steps.iter().map(|s| s.rule.as_str()).collect();
            let expected: Vec<&str> = order.iter().map(|&i| rules.rules[i].name.as_str()).take(tried.len()).collect();
            prop_assert_eq!(&tried, &expected);
            for (step, &i) in e.steps.iter().zip(&order) {
                prop_assert_eq!(step.matched, rules.matches(i, &lead));
                prop_assert_eq!(step.failed.is_some(), !step.matched);
                if let Some(failed) = &step.failed {
                    // The random sets quote each condition verbatim: the test is inside it.
                    prop_assert!(rules.rules[i].raw.when.value.contains(failed.text.as_str()), "{:?}", failed);
                }
            }
            if e.rule().is_some() {
                prop_assert!(e.steps.last().is_some_and(|s| s.matched));
            } else {
                prop_assert_eq!(e.steps.len(), order.len());
            }
        }
    }
}
