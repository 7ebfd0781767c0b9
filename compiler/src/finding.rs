//! Findings are data, not errors: what `rulec check` reports, with the rules involved, the
//! places in the file to point at, and a witness lead where one exists.

use std::ops::Range;

use serde::Serialize;
use serde_json::{Map, Value};

/// The finding codes of RULES.md ("Checks").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Code {
    /// The file cannot be parsed.
    Syntax,
    /// Unknown field, wrong type, unknown route, duplicate name, value outside the domain.
    Type,
    /// The rule can match no lead.
    Unsatisfiable,
    /// Same priority, overlapping, different routes.
    Conflict,
    /// The rule never decides: earlier rules take every lead it matches.
    Shadowed,
    /// Two rules match exactly the same leads and route the same.
    Duplicate,
    /// Removing the rule changes no decision.
    Redundant,
    /// Different priorities and routes, overlapping: priority decides.
    Overlap,
    /// A partner of a rule never gets a lead from it (a split weight of 0, capped at 0, a
    /// schedule that never opens), or none of the rule's partners can.
    Unreachable,
    /// Some leads match no rule and there is no default route (or, with a partner
    /// unavailable, their fall-through chain ends nowhere).
    Gap,
}

impl Code {
    /// The code as it appears in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Syntax => "syntax",
            Code::Type => "type",
            Code::Unsatisfiable => "unsatisfiable",
            Code::Conflict => "conflict",
            Code::Shadowed => "shadowed",
            Code::Duplicate => "duplicate",
            Code::Redundant => "redundant",
            Code::Overlap => "overlap",
            Code::Unreachable => "unreachable",
            Code::Gap => "gap",
        }
    }

    /// The severity RULES.md gives the code.
    pub fn severity(self) -> Severity {
        match self {
            Code::Syntax | Code::Type | Code::Unsatisfiable | Code::Conflict | Code::Shadowed => Severity::Error,
            Code::Duplicate | Code::Redundant | Code::Unreachable | Code::Gap => Severity::Warning,
            Code::Overlap => Severity::Info,
        }
    }

    /// Every code, in report order.
    pub const ALL: [Code; 10] = [
        Code::Syntax,
        Code::Type,
        Code::Unsatisfiable,
        Code::Conflict,
        Code::Shadowed,
        Code::Duplicate,
        Code::Redundant,
        Code::Overlap,
        Code::Unreachable,
        Code::Gap,
    ];
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Blocks `rulec compile` and the service's activation.
    Error,
    /// Worth fixing; an error under `--deny warnings`.
    Warning,
    /// For information.
    Info,
}

/// A place in the rules file to point at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// Byte range in the file.
    pub span: Range<usize>,
    /// What is there.
    pub text: String,
}

/// One problem found in a rule set.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// What kind of problem.
    pub code: Code,
    /// Rule names, the subject rule first.
    pub rules: Vec<String>,
    /// One sentence.
    pub message: String,
    /// A lead that shows the problem, checked with the reference interpreter.
    pub witness: Option<Map<String, Value>>,
    /// Where in the file, the primary place first.
    pub labels: Vec<Label>,
}

impl Finding {
    /// A finding without rules or witness.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, rules: Vec::new(), message: message.into(), witness: None, labels: Vec::new() }
    }

    /// Adds a label.
    pub fn label(mut self, span: Range<usize>, text: impl Into<String>) -> Self {
        self.labels.push(Label { span, text: text.into() });
        self
    }

    /// Adds a rule name.
    pub fn rule(mut self, name: impl Into<String>) -> Self {
        self.rules.push(name.into());
        self
    }

    /// The code's severity.
    pub fn severity(&self) -> Severity {
        self.code.severity()
    }
}

/// The rules that error-level findings are about (their subject rule): what to disable to get
/// a compilable set out of one with deliberate conflicts (benchmarks, generated sets).
pub fn rules_with_errors(findings: &[Finding]) -> std::collections::BTreeSet<&str> {
    findings
        .iter()
        .filter(|f| f.severity() == Severity::Error)
        .filter_map(|f| f.rules.first().map(String::as_str))
        .collect()
}
