//! The reference interpreter: first-match semantics exactly as RULES.md defines them,
//! including missing fields and `not`. Every other engine (the Z3 encoding's witnesses, the
//! compiled module) is checked against it, so it stays deliberately simple. [`explain`] tells
//! why it decided what it did, rule by rule (`rulec explain`, and a stored lead's story).

use serde::Serialize;
use serde_json::{Map, Value as Json};

use crate::model::{Cond, FieldType, Pred, Rule, RuleSet, format_units};
use crate::source::Source;

/// A field value of a lead, typed by the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// enum or string
    Str(String),
    /// int or decimal, in units of the field's scale
    Num(i128),
    /// bool
    Bool(bool),
}

/// A lead as the rules see it: one optional value per declared field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lead {
    /// Indexed like `RuleSet::fields`.
    pub values: Vec<Option<Value>>,
}

/// A lead that does not fit the schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeadError {
    /// Not a JSON object.
    #[error("a lead must be a JSON object")]
    NotAnObject,
    /// A value of the wrong JSON type or not exact in the field.
    #[error("field `{field}`: {problem}")]
    BadValue {
        /// The field.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

impl Lead {
    /// Reads a lead from JSON. Keys that are not declared fields are ignored; `null` means
    /// missing. Numbers must be exact in their field (a decimal with at most `scale` digits).
    pub fn from_json(rules: &RuleSet, json: &Json) -> Result<Lead, LeadError> {
        let object = json.as_object().ok_or(LeadError::NotAnObject)?;
        let mut values = Vec::with_capacity(rules.fields.len());
        for field in &rules.fields {
            let bad = |problem: String| LeadError::BadValue { field: field.name.clone(), problem };
            let value = match object.get(&field.name) {
                None | Some(Json::Null) => None,
                Some(v) => Some(match &field.ty {
                    FieldType::Enum(_) | FieldType::String => {
                        Value::Str(v.as_str().ok_or_else(|| bad(format!("expected a string, got {v}")))?.to_owned())
                    }
                    FieldType::Bool => {
                        Value::Bool(v.as_bool().ok_or_else(|| bad(format!("expected true or false, got {v}")))?)
                    }
                    FieldType::Int { .. } | FieldType::Decimal { .. } => {
                        let text = match v {
                            Json::Number(n) => n.to_string(),
                            Json::String(s) => s.clone(),
                            _ => return Err(bad(format!("expected a number, got {v}"))),
                        };
                        let scale = field.ty.scale();
                        let units = abi::encode::parse_units(&text, scale)
                            .ok_or_else(|| bad(format!("`{text}` is not exact with {scale} digits after the point")))?;
                        Value::Num(units)
                    }
                }),
            };
            values.push(value);
        }
        Ok(Lead { values })
    }

    /// The lead as JSON (missing fields left out).
    pub fn to_json(&self, rules: &RuleSet) -> Map<String, Json> {
        let mut out = Map::new();
        for (field, value) in rules.fields.iter().zip(&self.values) {
            let Some(value) = value else { continue };
            let json = match value {
                Value::Str(s) => Json::String(s.clone()),
                Value::Bool(b) => Json::Bool(*b),
                Value::Num(units) => {
                    let text = format_units(*units, field.ty.scale());
                    match serde_json::from_str::<serde_json::Number>(&text) {
                        Ok(n)
                            if field.ty.scale() == 0
                                || n.as_f64().map(|f| f.to_string()) == Some(trim_zeros(&text)) =>
                        {
                            Json::Number(n)
                        }
                        _ => Json::String(text),
                    }
                }
            };
            out.insert(field.name.clone(), json);
        }
        out
    }
}

/// `12.50` → `12.5`, `3.00` → `3`: how f64 prints exact short decimals.
fn trim_zeros(text: &str) -> String {
    if !text.contains('.') {
        return text.to_owned();
    }
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Whether a present or missing value satisfies a test.
pub fn test(pred: &Pred, value: Option<&Value>) -> bool {
    match (pred, value) {
        (Pred::Missing, v) => v.is_none(),
        (_, None) => false,
        (Pred::Present, Some(_)) => true,
        (Pred::Num(ranges), Some(Value::Num(n))) => ranges.iter().any(|&(lo, hi)| lo <= *n && *n < hi),
        (Pred::Str(set), Some(Value::Str(s))) => set.contains(s),
        (Pred::StartsWith(p), Some(Value::Str(s))) => s.starts_with(p.as_str()),
        (Pred::EndsWith(p), Some(Value::Str(s))) => s.ends_with(p.as_str()),
        (Pred::Bool(b), Some(Value::Bool(v))) => b == v,
        _ => false,
    }
}

/// Evaluates a condition on a lead.
pub fn eval(cond: &Cond, lead: &Lead) -> bool {
    match cond {
        Cond::And(items) => items.iter().all(|c| eval(c, lead)),
        Cond::Or(items) => items.iter().any(|c| eval(c, lead)),
        Cond::Not(inner) => !eval(inner, lead),
        Cond::Test(field, pred, _) => test(pred, lead.values.get(*field).and_then(Option::as_ref)),
    }
}

/// What first-match decided for a lead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision<'a> {
    /// The rule that decided, if any.
    pub rule: Option<&'a Rule>,
    /// Where the lead goes: the rule's route, else the default route, else nowhere.
    pub route: Option<&'a str>,
}

impl RuleSet {
    /// Whether rule `index` matches `lead` (false for a rule with a type error).
    pub fn matches(&self, index: usize, lead: &Lead) -> bool {
        self.rules[index].cond.as_ref().is_some_and(|c| eval(c, lead))
    }

    /// First match over `order` (from [`RuleSet::order`]).
    pub fn decide_in<'a>(&'a self, order: &[usize], lead: &Lead) -> Decision<'a> {
        match order.iter().find(|&&i| self.matches(i, lead)) {
            Some(&i) => Decision { rule: Some(&self.rules[i]), route: Some(&self.rules[i].route) },
            None => Decision { rule: None, route: self.default_route.as_deref() },
        }
    }

    /// First match: enabled rules by ascending priority, ties in file order.
    pub fn decide(&self, lead: &Lead) -> Decision<'_> {
        self.decide_in(&self.order(), lead)
    }

    /// The first `k` rules over `order` (from [`RuleSet::order`]) that match `lead`: their
    /// indices in [`RuleSet::rules`], in first-match order (the first decides).
    pub fn candidates_in(&self, order: &[usize], lead: &Lead, k: usize) -> Vec<usize> {
        order.iter().copied().filter(|&i| self.matches(i, lead)).take(k).collect()
    }

    /// The lead's candidates, as a decision module answers them: the first
    /// [`RuleSet::max_candidates`] matching rules (indices in [`RuleSet::rules`]), in
    /// first-match order.
    pub fn candidates(&self, lead: &Lead) -> Vec<usize> {
        self.candidates_in(&self.order(), lead, self.max_candidates)
    }
}

/// Why a condition is false for a lead: the span of the first test that fails it (for a
/// `not`, the first test that makes its operand true). `None` if the condition holds.
pub fn first_failure(cond: &Cond, lead: &Lead) -> Option<std::ops::Range<usize>> {
    culprit(cond, lead, true)
}

/// The test that makes `cond` differ from `want`, if it does.
fn culprit(cond: &Cond, lead: &Lead, want: bool) -> Option<std::ops::Range<usize>> {
    if eval(cond, lead) == want {
        return None;
    }
    match cond {
        Cond::Test(_, _, span) => Some(span.clone()),
        Cond::Not(inner) => culprit(inner, lead, !want),
        // A false `and` (or a true `or`) is decided by its first such operand; a false `or`
        // (or a true `and`) by all of them: report the first.
        Cond::And(items) | Cond::Or(items) => items.iter().find_map(|c| culprit(c, lead, want)),
    }
}

/// Why first match decided what it did for one lead: every rule tried, in first-match order,
/// up to the one that matched, and the decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The rules tried (enabled, type-correct), in first-match order; the last one matched
    /// when a rule decided.
    pub steps: Vec<Step>,
    /// Where the lead goes.
    pub decision: Decided,
}

/// One rule tried for a lead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// The rule's name.
    pub rule: String,
    /// Its priority.
    pub priority: i64,
    /// Whether its condition holds.
    pub matched: bool,
    /// The first test that keeps it from matching (see [`first_failure`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<FailedTest>,
}

/// The first test that keeps a rule from matching a lead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedTest {
    /// The test's text in the file (the whole condition where the file does not hold the
    /// condition verbatim, e.g. a JSON string with escaped quotes).
    pub text: String,
    /// Its byte span in the file.
    pub span: std::ops::Range<usize>,
    /// Its 1-based line in the file.
    pub line: usize,
    /// Its 1-based column (in characters).
    pub column: usize,
}

/// What first match decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decided {
    /// A rule matched.
    Rule {
        /// The rule.
        rule: String,
        /// Its route.
        route: String,
    },
    /// No rule matched; the rule set's default route took the lead.
    DefaultRoute {
        /// The default route.
        route: String,
    },
    /// No rule matched and there is no default route.
    Unmatched,
}

impl Explanation {
    /// The rule that decided, if one did.
    pub fn rule(&self) -> Option<&str> {
        match &self.decision {
            Decided::Rule { rule, .. } => Some(rule),
            Decided::DefaultRoute { .. } | Decided::Unmatched => None,
        }
    }

    /// Where the lead goes, if anywhere.
    pub fn route(&self) -> Option<&str> {
        match &self.decision {
            Decided::Rule { route, .. } | Decided::DefaultRoute { route } => Some(route),
            Decided::Unmatched => None,
        }
    }

    /// `rulec explain`'s text: one line per rule tried (`no` with the failing test and where
    /// it is in `source_name`, or `YES`), then the decision.
    pub fn to_human(&self, source_name: &str) -> String {
        let mut out = String::new();
        for step in &self.steps {
            match &step.failed {
                Some(failed) => out.push_str(&format!(
                    "  no   {} (priority {}): `{}` is false ({source_name}:{}:{})\n",
                    step.rule, step.priority, failed.text, failed.line, failed.column
                )),
                None if step.matched => {
                    let route = self.route().unwrap_or_default();
                    out.push_str(&format!(
                        "  YES  {} (priority {}) matches: route `{route}`\n",
                        step.rule, step.priority
                    ));
                }
                None => {}
            }
        }
        match &self.decision {
            Decided::Rule { rule, route } => out.push_str(&format!("decided by `{rule}` -> `{route}`\n")),
            Decided::DefaultRoute { route } => out.push_str(&format!("no rule matched -> default route `{route}`\n")),
            Decided::Unmatched => out.push_str("no rule matched and there is no default route: unmatched\n"),
        }
        out
    }
}

/// Explains first match for `lead` over `rules`, checked from `source`: each rule tried with
/// its first failing test (its text, span and position in `source`), up to the rule that
/// matched, and the decision, which is [`RuleSet::decide`]'s.
pub fn explain(rules: &RuleSet, source: &Source, lead: &Lead) -> Explanation {
    let mut steps = Vec::new();
    for &i in &rules.order() {
        let rule = &rules.rules[i];
        let Some(cond) = &rule.cond else { continue };
        match first_failure(cond, lead) {
            Some(span) => {
                let (line, column) = source.line_col(span.start);
                let text = source.text.get(span.clone()).unwrap_or("?").to_owned();
                steps.push(Step {
                    rule: rule.name.clone(),
                    priority: rule.priority,
                    matched: false,
                    failed: Some(FailedTest { text, span, line, column }),
                });
            }
            None => {
                steps.push(Step { rule: rule.name.clone(), priority: rule.priority, matched: true, failed: None });
                let decision = Decided::Rule { rule: rule.name.clone(), route: rule.route.clone() };
                return Explanation { steps, decision };
            }
        }
    }
    let decision = match &rules.default_route {
        Some(route) => Decided::DefaultRoute { route: route.clone() },
        None => Decided::Unmatched,
    };
    Explanation { steps, decision }
}
