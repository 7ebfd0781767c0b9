//! `rulec` as a CI gate: its exit codes and output formats, run as a process.

use std::process::{Command, Output};

use crate::harness::{Scratch, workspace_root};

fn rulec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rulec")).args(args).current_dir(workspace_root()).output().expect("run rulec")
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
    let dir = Scratch::new("rulec-generate");
    let file = dir.write("generated.yaml", &generated.stdout);
    let checked = rulec(&["check", file.to_str().expect("utf-8 path"), "--format", "json"]);
    assert!(matches!(checked.status.code(), Some(0 | 1)), "{}", String::from_utf8_lossy(&checked.stderr));
    let json: serde_json::Value = serde_json::from_slice(&checked.stdout).expect("JSON");
    assert_eq!(json["rules_checked"], 300);
}

#[test]
fn eval_with_the_module_agrees_with_the_interpreter_line_for_line() {
    let module = rulec(&["eval", "examples/rules.yaml", "examples/leads.jsonl"]);
    let interpreter = rulec(&["eval", "examples/rules.yaml", "examples/leads.jsonl", "--engine", "interpreter"]);
    assert!(module.status.success() && interpreter.status.success(), "{}", String::from_utf8_lossy(&module.stderr));
    let lines = String::from_utf8(module.stdout).expect("utf-8");
    assert_eq!(lines, String::from_utf8(interpreter.stdout).expect("utf-8"));
    let answers: Vec<serde_json::Value> = lines.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(answers.len(), 40);
    assert!(answers.iter().all(|a| a.get("route").is_some() && a.get("rule").is_some()));
    // The candidates: up to three rule names, the first the deciding rule (so the engines
    // agree on them too, line for line above).
    for answer in &answers {
        let candidates = answer["candidates"].as_array().expect("candidates");
        assert!(candidates.len() <= 3, "{answer}");
        assert_eq!(candidates.first().unwrap_or(&serde_json::Value::Null), &answer["rule"], "{answer}");
    }
    assert!(answers.iter().any(|a| a["candidates"].as_array().is_some_and(|c| c.len() > 1)));
    assert!(
        answers.iter().any(|a| a["rule"].is_null() && a["route"] == "unsold"),
        "some lead falls to the default route"
    );
}

#[test]
fn compile_writes_module_and_manifest_and_refuses_errors() {
    let scratch = Scratch::new("rulec-compile");
    let dir = scratch.path();
    let out = dir.join("tree.wasm");
    let compiled = rulec(&["compile", "examples/rules.yaml", "-o", out.to_str().expect("utf-8")]);
    assert!(compiled.status.success(), "{}", String::from_utf8_lossy(&compiled.stderr));
    let wasm = std::fs::read(&out).expect("module written");
    assert_eq!(&wasm[..4], b"\0asm");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tree.manifest.json")).expect("manifest written"))
            .expect("JSON");
    assert_eq!(manifest["abi_version"], 3);
    assert_eq!(manifest["rules"].as_array().map(Vec::len), Some(38));
    // Three candidates per lead by default; list 0 is "no rule matched".
    assert_eq!(manifest["max_candidates"], 3);
    let lists = manifest["candidate_lists"].as_array().expect("candidate lists");
    assert_eq!(lists[0], serde_json::json!([]));
    assert!(lists[1..].iter().all(|l| l.as_array().is_some_and(|l| (1..=3).contains(&l.len()))));
    assert!(lists.iter().any(|l| l.as_array().is_some_and(|l| l.len() == 3)));
    assert!(manifest["dag"]["nodes"].as_u64().is_some());

    let refused = rulec(&["compile", &fixture("conflict"), "-o", dir.join("x.wasm").to_str().expect("utf-8")]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(!dir.join("x.wasm").exists());
}

#[test]
fn explain_names_the_deciding_rule_and_the_failing_test_of_each_earlier_one() {
    let dir = Scratch::new("rulec-explain");
    let lead = dir.write(
        "lead.json",
        r#"{"site": "degreefinder", "state": "FL", "age": 41, "program": "medical_assisting", "email_domain": "yahoo.com"}"#,
    );
    let explained = rulec(&["explain", "examples/rules.yaml", lead.to_str().expect("utf-8")]);
    assert!(explained.status.success(), "{}", String::from_utf8_lossy(&explained.stderr));
    let text = String::from_utf8(explained.stdout).expect("utf-8");
    assert!(text.contains("no   block-test-traffic (priority 5)"), "{text}");
    assert!(text.contains("is false (examples/rules.yaml:"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("decided by `df-florida-healthcare`")), "{text}");
    assert!(text.contains("\n  1. df-florida-healthcare -> summit_nursing_college\n"), "{text}");
}

#[test]
fn explain_as_json_gives_the_decision_eval_gives() {
    let dir = Scratch::new("rulec-explain-json");
    let lead = r#"{"site": "degreefinder", "state": "FL", "age": 41, "program": "medical_assisting", "email_domain": "yahoo.com"}"#;
    let lead_file = dir.write("lead.json", lead);
    let leads_file = dir.write("leads.jsonl", format!("{lead}\n"));
    let explained = rulec(&["explain", "examples/rules.yaml", lead_file.to_str().expect("utf-8"), "--format", "json"]);
    assert!(explained.status.success(), "{}", String::from_utf8_lossy(&explained.stderr));
    let explanation: serde_json::Value = serde_json::from_slice(&explained.stdout).expect("JSON");
    let evaluated = rulec(&["eval", "examples/rules.yaml", leads_file.to_str().expect("utf-8")]);
    let decided: serde_json::Value = serde_json::from_slice(&evaluated.stdout).expect("JSON");
    assert_eq!(explanation["decision"]["kind"], "rule", "{explanation}");
    assert_eq!(explanation["decision"]["rule"], decided["rule"]);
    assert_eq!(explanation["decision"]["route"], decided["route"]);
    let steps = explanation["steps"].as_array().expect("steps");
    assert_eq!(steps.last().map(|s| &s["matched"]), Some(&serde_json::json!(true)));
    assert!(steps[..steps.len() - 1].iter().all(|s| s["failed"]["text"].is_string()), "{explanation}");

    // Neither a file pair nor a submission: a usage error.
    assert_eq!(rulec(&["explain"]).status.code(), Some(2));
    assert_eq!(rulec(&["explain", "examples/rules.yaml"]).status.code(), Some(2));
}

#[test]
fn explain_lists_the_candidates_and_where_a_lead_falls_through_while_partners_are_unavailable() {
    let dir = Scratch::new("rulec-explain-unavailable");
    // Decided by the degreefinder fallback's split, with the education exchange next.
    let lead = r#"{"site": "degreefinder", "age": 30, "state": "OH", "has_diploma": true, "zip": "44101",
                   "email_domain": "gmail.com", "education_level": "bachelor", "program": "history"}"#;
    let lead_file = dir.write("lead.json", lead);
    let file = lead_file.to_str().expect("utf-8");
    let explained = rulec(&["explain", "examples/rules.yaml", file, "--format", "json"]);
    let explanation: serde_json::Value = serde_json::from_slice(&explained.stdout).expect("JSON");
    let candidates: Vec<&str> =
        explanation["candidates"].as_array().expect("candidates").iter().filter_map(|c| c["rule"].as_str()).collect();
    assert_eq!(candidates, ["df-fallback", "edu-exchange"], "{explanation}");
    assert_eq!(explanation["candidates"][0]["route"]["split"]["westbrook_university"], 70);

    let down = "--unavailable=westbrook_university,northgate_college";
    let explained = rulec(&["explain", "examples/rules.yaml", file, "--format", "json", down]);
    let explanation: serde_json::Value = serde_json::from_slice(&explained.stdout).expect("JSON");
    assert_eq!(explanation["sends"], serde_json::json!([{ "partner": "education_exchange", "rule": "edu-exchange" }]));
    let skipped: Vec<&str> = explanation["routing"]["candidates"]
        .as_array()
        .expect("tried")
        .iter()
        .filter(|t| t["skipped"].is_string())
        .filter_map(|t| t["partner"].as_str())
        .collect();
    assert_eq!(skipped, ["northgate_college", "westbrook_university"]);

    // Everything down: the lead waits for its first candidate's heaviest partner.
    let everything = "--unavailable=westbrook_university,northgate_college,education_exchange,unsold";
    let explained = rulec(&["explain", "examples/rules.yaml", file, everything]);
    let text = String::from_utf8(explained.stdout).expect("utf-8");
    assert!(text.contains("candidates (the first 3 matching rules"), "{text}");
    assert!(text.contains("held for westbrook_university (df-fallback): no candidate could take it now"), "{text}");
}
