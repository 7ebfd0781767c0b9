//! `rulec diff` as a CI gate: exit codes (0 nothing moves, 1 something moves, 2 cannot run),
//! the JSON and SARIF forms, and `--base` against a git revision.

use std::process::{Command, Output};

use serde_json::Value;

use crate::harness::{Scratch, workspace_root};

fn rulec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rulec")).args(args).current_dir(workspace_root()).output().expect("run rulec")
}

fn fixture(name: &str) -> String {
    format!("compiler/tests/fixtures/diff/{name}.yaml")
}

fn code(args: &[&str]) -> Option<i32> {
    rulec(args).status.code()
}

#[test]
fn exit_codes_say_whether_leads_move() {
    let base = fixture("base");
    assert_eq!(code(&["diff", &base, &fixture("narrowed")]), Some(1), "leads move");
    assert_eq!(code(&["diff", &base, &fixture("refactor")]), Some(0), "a no-op refactor");
    assert_eq!(code(&["diff", &base, &fixture("split")]), Some(0), "reattributed only: no lead moves");
    assert_eq!(code(&["diff", &base, &base]), Some(0));
    assert_eq!(code(&["diff", &base, "no/such/file.yaml"]), Some(2), "unreadable file");
    assert_eq!(code(&["diff", &base, "compiler/tests/fixtures/check/type_enum_value.yaml"]), Some(2), "type errors");
    assert_eq!(code(&["diff", &base]), Some(2), "one file without --base");
    assert_eq!(code(&["diff", "--base", "HEAD", &base, &base]), Some(2), "two files with --base");
    assert_eq!(code(&["diff", &base, &base, "--format", "xml"]), Some(2));
}

#[test]
fn json_and_sarif_name_the_pairs_with_witnesses() {
    let out = rulec(&["diff", &fixture("base"), &fixture("disabled"), "--format", "json"]);
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["equivalent"], false);
    assert_eq!(json["moves"], 1);
    assert_eq!(json["proof"], "case_analysis");
    let change = &json["changes"][0];
    assert_eq!(change["kind"], "moves");
    assert_eq!(change["from"], serde_json::json!({"rule": "good-credit", "route": "lender_x"}));
    assert_eq!(change["to"], serde_json::json!({"rule": null, "route": "unsold"}));
    assert_eq!(change["witness"]["site"], "loanmatch");
    assert!(change["share"].as_f64().is_some_and(|s| s > 0.0 && s < 1.0));
    assert_eq!(json["rules"]["edited"][0], serde_json::json!({"rule": "good-credit", "aspects": ["enabled"]}));

    let out = rulec(&["diff", &fixture("base"), &fixture("narrowed"), "--format", "sarif"]);
    let sarif: Value = serde_json::from_slice(&out.stdout).expect("SARIF");
    assert_eq!(sarif["version"], "2.1.0");
    let results = sarif["runs"][0]["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r["ruleId"] == "moves" && r["level"] == "warning"));
    let located = results.iter().filter_map(|r| r["locations"][0]["physicalLocation"]["region"]["startLine"].as_u64());
    assert_eq!(located.count(), 2, "every result points at a rule");

    let human = rulec(&["diff", &fixture("base"), &fixture("refactor")]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("no decision changes"), "{text}");
}

#[test]
fn base_compares_with_the_file_at_a_git_revision() {
    let dir = Scratch::new("rulec-diff-base");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=test", "-c", "user.email=test@example.invalid"])
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("run git");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    git(&["init", "-q"]);
    let base = std::fs::read(workspace_root().join(fixture("base"))).expect("fixture");
    std::fs::create_dir_all(dir.path().join("rules")).expect("folder");
    let file = dir.write("rules/rules.yaml", &base);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "rules"]);
    let path = file.to_str().expect("utf-8 path");
    assert_eq!(code(&["diff", "--base", "HEAD", path]), Some(0), "unchanged since HEAD");
    std::fs::write(&file, std::fs::read(workspace_root().join(fixture("narrowed"))).expect("fixture")).expect("edit");
    let out = rulec(&["diff", "--base", "HEAD", path, "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["old"], format!("HEAD:{path}"));
    assert_eq!(json["moves"], 2);
    let missing = rulec(&["diff", "--base", "no-such-revision", path]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no-such-revision"));
}
