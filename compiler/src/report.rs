//! `rulec check`'s report: the entry point [`check`] and the three output formats, JSON (the
//! stable shape of RULES.md), SARIF 2.1.0 (for code-scanning UIs) and human-readable
//! compiler-style diagnostics with the YAML source lines and carets.

use serde_json::{Value, json};

pub use crate::analysis::PartnerFacts;
use crate::analysis::{self, Stats};
use crate::atoms::Encoded;
use crate::finding::{Code, Finding, Severity};
use crate::solver::Z3Solver;
use crate::source::Source;
use crate::{Result, model, syntax};

/// Largest rules file read (bigger files are refused with a finding, not loaded).
pub const MAX_FILE_BYTES: usize = 8 * 1024 * 1024;

/// The outcome of checking one rules file.
#[derive(Debug, Clone)]
pub struct Report {
    /// The file.
    pub source: Source,
    /// Rules in the file (enabled or not).
    pub rules_checked: usize,
    /// Every finding: shape and type problems first, then per rule in first-match order.
    pub findings: Vec<Finding>,
    /// Analysis figures.
    pub stats: Stats,
}

/// Checks a rules file given as bytes: reads, type-checks and, when there are no syntax or
/// type errors, analyzes it. `Err` only when the analysis itself fails (a solver `unknown` or
/// a witness the interpreter does not confirm: a bug).
pub fn check(name: &str, bytes: &[u8]) -> Result<Report> {
    check_with(name, bytes, &PartnerFacts::default())
}

/// [`check`], knowing which partners can never take a lead (see [`PartnerFacts`]).
pub fn check_with(name: &str, bytes: &[u8], partners: &PartnerFacts) -> Result<Report> {
    let (checked, findings, stats) = check_rules_with(name, bytes, partners)?;
    let rules_checked = checked.as_ref().map_or(0, |(rules, _)| rules.rules.len());
    let source = checked.map_or_else(|| Source::new(name, String::from_utf8_lossy(bytes).into_owned()), |(_, s)| s);
    Ok(Report { source, rules_checked, findings, stats })
}

type Checked = (Option<(model::RuleSet, Source)>, Vec<Finding>, Stats);

/// Like [`check`], also returning the checked rule set (for `compile`, `eval`, `explain`).
pub fn check_rules(name: &str, bytes: &[u8]) -> Result<Checked> {
    check_rules_with(name, bytes, &PartnerFacts::default())
}

/// [`check_rules`], knowing which partners can never take a lead (see [`PartnerFacts`]).
pub fn check_rules_with(name: &str, bytes: &[u8], partners: &PartnerFacts) -> Result<Checked> {
    let (checked, mut findings) = read_rules(name, bytes);
    let mut stats = Stats::default();
    if let Some((rules, _)) = &checked
        && findings.iter().all(|f| f.severity() != Severity::Error)
    {
        let encoded = Encoded::new(rules);
        let mut solver = Z3Solver::new(&encoded.atoms.domains(), encoded.formulas.clone());
        let (analysis, s) = analysis::analyze(rules, &encoded, &mut solver, partners)?;
        findings.extend(analysis);
        stats = s;
    }
    Ok((checked, findings, stats))
}

/// Reads and type-checks a rules file, without the analysis: the rule set (unless the file
/// cannot be read as one) and its `syntax` and `type` findings.
pub fn read_rules(name: &str, bytes: &[u8]) -> (Option<(model::RuleSet, Source)>, Vec<Finding>) {
    if bytes.len() > MAX_FILE_BYTES {
        let f = Finding::new(
            Code::Syntax,
            format!(
                "the file is {:.1} MiB; rules files are limited to {} MiB",
                bytes.len() as f64 / 1048576.0,
                MAX_FILE_BYTES / 1048576
            ),
        );
        return (None, vec![f]);
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => {
            let at = error.valid_up_to();
            let f = Finding::new(Code::Syntax, format!("the file is not UTF-8: invalid byte at offset {at}"))
                .label(at..at + 1, "here");
            return (None, vec![f]);
        }
    };
    let source = Source::new(name, text);
    let (doc, mut findings) = syntax::document::read(text);
    let (rules, type_findings) = model::check(&doc);
    findings.extend(type_findings);
    (Some((rules, source)), findings)
}

impl Report {
    /// Error-level findings.
    pub fn errors(&self) -> usize {
        self.findings.iter().filter(|f| f.severity() == Severity::Error).count()
    }

    /// Warnings.
    pub fn warnings(&self) -> usize {
        self.findings.iter().filter(|f| f.severity() == Severity::Warning).count()
    }

    /// The stable JSON shape of RULES.md.
    pub fn to_json(&self) -> Value {
        let findings: Vec<Value> = self
            .findings
            .iter()
            .map(|f| {
                let mut object = json!({
                    "code": f.code,
                    "severity": f.severity(),
                    "rules": f.rules,
                    "message": f.message,
                });
                if let (Some(witness), Some(map)) = (&f.witness, object.as_object_mut()) {
                    map.insert("witness".to_owned(), Value::Object(witness.clone()));
                }
                object
            })
            .collect();
        json!({
            "rules_checked": self.rules_checked,
            "errors": self.errors(),
            "warnings": self.warnings(),
            "findings": findings,
        })
    }

    /// [`Report::to_json`] with each finding's primary label located in the checked text,
    /// for editors that mark findings at their lines: `"location": {"line", "column",
    /// "end_line", "end_column"}` (1-based; the end is exclusive); no `location` when the
    /// finding has no label. Not part of `rulec check`'s stable JSON.
    pub fn to_json_located(&self) -> Value {
        let mut value = self.to_json();
        if let Some(findings) = value.get_mut("findings").and_then(Value::as_array_mut) {
            for (json, finding) in findings.iter_mut().zip(&self.findings) {
                if let (Some(label), Some(map)) = (finding.labels.first(), json.as_object_mut()) {
                    let (line, column) = self.source.line_col(label.span.start);
                    let (end_line, end_column) = self.source.line_col(label.span.end.max(label.span.start + 1));
                    map.insert(
                        "location".to_owned(),
                        json!({ "line": line, "column": column, "end_line": end_line, "end_column": end_column }),
                    );
                }
            }
        }
        value
    }

    /// SARIF 2.1.0, one result per finding, located at its primary label.
    pub fn to_sarif(&self) -> Value {
        let rules: Vec<Value> = Code::ALL
            .iter()
            .map(|c| {
                json!({
                    "id": c.as_str(),
                    "defaultConfiguration": { "level": sarif_level(c.severity()) },
                    "shortDescription": { "text": format!("rulec {} finding", c.as_str()) },
                })
            })
            .collect();
        let results: Vec<Value> = self
            .findings
            .iter()
            .map(|f| {
                let mut message = f.message.clone();
                if let Some(w) = &f.witness {
                    message.push_str(&format!(" Example lead: {}", Value::Object(w.clone())));
                }
                let locations: Vec<Value> =
                    f.labels.iter().take(1).map(|l| sarif_location(&self.source, &l.span)).collect();
                json!({
                    "ruleId": f.code.as_str(),
                    "level": sarif_level(f.severity()),
                    "message": { "text": message },
                    "locations": locations,
                    "properties": { "rules": f.rules },
                })
            })
            .collect();
        sarif_log(rules, results)
    }

    /// Compiler-style diagnostics with source lines and carets, and a summary line.
    pub fn to_human(&self, color: bool) -> String {
        use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteDiagnostic, NamedSource};
        let theme = if color { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
        let handler = GraphicalReportHandler::new_themed(theme).with_width(110);
        let mut out = String::new();
        for f in &self.findings {
            let severity = match f.severity() {
                Severity::Error => miette::Severity::Error,
                Severity::Warning => miette::Severity::Warning,
                Severity::Info => miette::Severity::Advice,
            };
            let mut diagnostic =
                MietteDiagnostic::new(f.message.clone()).with_code(f.code.as_str()).with_severity(severity);
            let labels: Vec<LabeledSpan> = f
                .labels
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let span = l.span.start.min(self.source.text.len())..l.span.end.min(self.source.text.len());
                    if i == 0 {
                        LabeledSpan::new_primary_with_span(Some(l.text.clone()), span)
                    } else {
                        LabeledSpan::new_with_span(Some(l.text.clone()), span)
                    }
                })
                .collect();
            diagnostic = diagnostic.with_labels(labels);
            if let Some(w) = &f.witness {
                diagnostic = diagnostic.with_help(format!("example lead: {}", Value::Object(w.clone())));
            }
            let report = miette::Report::new(diagnostic)
                .with_source_code(NamedSource::new(&self.source.name, self.source.text.clone()));
            if handler.render_report(&mut out, report.as_ref()).is_err() {
                out.push_str(&format!("{}: {}\n", f.code.as_str(), f.message));
            }
            out.push('\n');
        }
        let infos = self.findings.len() - self.errors() - self.warnings();
        out.push_str(&format!(
            "{}: {} rules checked: {} errors, {} warnings, {} infos\n",
            self.source.name,
            self.rules_checked,
            self.errors(),
            self.warnings(),
            infos
        ));
        out
    }
}

/// A SARIF location: the span's lines and columns in `source`.
pub(crate) fn sarif_location(source: &Source, span: &std::ops::Range<usize>) -> Value {
    let (line, column) = source.line_col(span.start);
    let (end_line, end_column) = source.line_col(span.end.max(span.start + 1));
    json!({ "physicalLocation": {
        "artifactLocation": { "uri": source.name },
        "region": { "startLine": line, "startColumn": column, "endLine": end_line, "endColumn": end_column },
    }})
}

/// A SARIF 2.1.0 log of one `rulec` run with these rule descriptors and results.
pub(crate) fn sarif_log(rules: Vec<Value>, results: Vec<Value>) -> Value {
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": { "name": "rulec", "version": env!("CARGO_PKG_VERSION"), "rules": rules } },
            "results": results,
        }],
    })
}

fn sarif_level(severity: Severity) -> &'static str {
    match severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "note",
    }
}
