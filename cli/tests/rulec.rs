//! `rulec` as a CI gate: its exit codes and output formats, run as a process.

#![allow(clippy::expect_used, reason = "a test fails loudly, with the expectation as its message")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

fn rulec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rulec")).args(args).current_dir(root()).output().expect("run rulec")
}

fn fixture(name: &str) -> String {
    format!("compiler/tests/fixtures/check/{name}.yaml")
}

#[test]
fn exit_codes_follow_rules_md() {
    let code = |args: &[&str]| rulec(args).status.code();
    assert_eq!(code(&["check", "examples/rules.yaml"]), Some(0), "the example set is clean");
    assert_eq!(code(&["check", "examples/rules.yaml", "--deny", "warnings"]), Some(0));
    assert_eq!(code(&["check", &fixture("conflict")]), Some(1), "errors fail");
    assert_eq!(code(&["check", &fixture("gap")]), Some(0), "warnings alone pass");
    assert_eq!(code(&["check", &fixture("gap"), "--deny", "warnings"]), Some(1), "unless denied");
    assert_eq!(code(&["check", &fixture("syntax_yaml")]), Some(1));
    assert_eq!(code(&["check", "no/such/file.yaml"]), Some(2), "unreadable file");
    assert_eq!(code(&["check"]), Some(2), "bad arguments");
    assert_eq!(code(&["check", "examples/rules.yaml", "--format", "xml"]), Some(2));
}

#[test]
fn json_and_sarif_are_machine_readable() {
    let json: serde_json::Value =
        serde_json::from_slice(&rulec(&["check", &fixture("conflict"), "--format", "json"]).stdout).expect("JSON");
    assert_eq!(json["errors"], 1);
    assert_eq!(json["findings"][0]["code"], "conflict");
    assert!(json["findings"][0]["witness"].is_object());

    let sarif: serde_json::Value =
        serde_json::from_slice(&rulec(&["check", &fixture("conflict"), "--format", "sarif"]).stdout).expect("SARIF");
    assert_eq!(sarif["version"], "2.1.0");
    let result = &sarif["runs"][0]["results"][0];
    assert_eq!(result["ruleId"], "conflict");
    assert_eq!(result["level"], "error");
    assert!(result["locations"][0]["physicalLocation"]["region"]["startLine"].as_u64().is_some());
}

#[test]
fn generated_rule_sets_check_without_tool_errors() {
    let generated = rulec(&["generate", "--rules", "300", "--seed", "7"]);
    assert!(generated.status.success());
    let dir = std::env::temp_dir().join(format!("rulec-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("generated.yaml");
    std::fs::write(&file, &generated.stdout).expect("write");
    let checked = rulec(&["check", file.to_str().expect("utf-8 path"), "--format", "json"]);
    assert!(matches!(checked.status.code(), Some(0 | 1)), "{}", String::from_utf8_lossy(&checked.stderr));
    let json: serde_json::Value = serde_json::from_slice(&checked.stdout).expect("JSON");
    assert_eq!(json["rules_checked"], 300);
    std::fs::remove_dir_all(dir).ok();
}
