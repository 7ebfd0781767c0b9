//! The checked rule set: typed fields, and each rule's condition as a [`Cond`] over field
//! indices with exact, normalized predicates. [`check`] turns a [`Document`] into a
//! [`RuleSet`] and reports every `type` problem; a rule with a type error is kept for
//! reporting but has no condition and takes no part in analysis or routing.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::finding::{Code, Finding};
use crate::syntax::document::{Document, RawField, RawRule, RawTarget, Spanned};

use crate::syntax::expr::{self, CmpOp, Expr, LitValue, Literal, TestOp};
pub use abi::manifest::Target;

/// A field's type, with its domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    /// One of a closed set of strings.
    Enum(Vec<String>),
    /// Any string.
    String,
    /// An integer within `min..=max`.
    Int {
        /// Smallest value.
        min: i128,
        /// Largest value.
        max: i128,
    },
    /// A fixed-point number: values are integers counting `10^-scale` units.
    Decimal {
        /// Digits after the point.
        scale: u32,
        /// Smallest value, in units.
        min: i128,
        /// Largest value, in units.
        max: i128,
    },
    /// `true` or `false`.
    Bool,
}

impl FieldType {
    /// The numeric domain in units, for `int` and `decimal`.
    pub fn numeric_domain(&self) -> Option<(i128, i128)> {
        match *self {
            FieldType::Int { min, max } | FieldType::Decimal { min, max, .. } => Some((min, max)),
            _ => None,
        }
    }

    /// The decimal scale (0 for ints).
    pub fn scale(&self) -> u32 {
        match *self {
            FieldType::Decimal { scale, .. } => scale,
            _ => 0,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            FieldType::Enum(_) => "enum",
            FieldType::String => "string",
            FieldType::Int { .. } => "int",
            FieldType::Decimal { .. } => "decimal",
            FieldType::Bool => "bool",
        }
    }
}

/// A declared field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Its name in leads.
    pub name: String,
    /// Its type.
    pub ty: FieldType,
}

/// What a test checks on a present value (every test but `Missing` is false on a missing
/// field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pred {
    /// `is missing`
    Missing,
    /// The number is in one of these half-open unit ranges `[lo, hi)`.
    Num(Vec<(i128, i128)>),
    /// The string equals one of these.
    Str(BTreeSet<String>),
    /// The string starts with this.
    StartsWith(String),
    /// The string ends with this.
    EndsWith(String),
    /// The bool equals this.
    Bool(bool),
    /// Any present value (`b in [true, false]`).
    Present,
}

/// A checked condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// All of them.
    And(Vec<Cond>),
    /// Any of them.
    Or(Vec<Cond>),
    /// Not it.
    Not(Box<Cond>),
    /// A test on field `.0`; `.2` is the test's byte span in the file (for `explain`).
    Test(usize, Pred, std::ops::Range<usize>),
}

/// A checked rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique name.
    pub name: String,
    /// Smaller is tried first.
    pub priority: i64,
    /// Position in the file (ties in priority go by it).
    pub position: usize,
    /// Where a match goes: the partner, or the canonical text of a split or shared target
    /// (`Target::label`); rules route the same exactly when their routes are equal.
    pub route: String,
    /// The partners it sells to, and how.
    pub target: Target,
    /// Whether a lead whose partners are all unavailable falls through to the next matching
    /// rule (`true`, the default) or is held for them.
    pub fallthrough: bool,
    /// Disabled rules are checked for type errors but never route.
    pub enabled: bool,
    /// The condition; `None` when the rule has a type error.
    pub cond: Option<Cond>,
    /// The rule as written (for spans).
    pub raw: RawRule,
}

/// A checked rule set.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSet {
    /// Timezone of the derived time fields.
    pub timezone: String,
    /// Where unmatched leads go.
    pub default_route: Option<String>,
    /// Every route a rule may name.
    pub routes: Vec<String>,
    /// The lead schema.
    pub fields: Vec<Field>,
    /// Every rule, in file order.
    pub rules: Vec<Rule>,
    /// How many candidates the decision module answers per lead: the first
    /// `max_candidates` matching rules, in first-match order (the first decides; the others
    /// are where a lead falls through when a rule's partners are unavailable). In
    /// [`CANDIDATES`]; [`DEFAULT_CANDIDATES`] unless the rule set says otherwise (`candidates:`).
    pub max_candidates: usize,
}

/// The candidates a decision module may answer per lead ([`RuleSet::max_candidates`]).
pub const CANDIDATES: std::ops::RangeInclusive<usize> = 1..=abi::MAX_CANDIDATES;
/// [`RuleSet::max_candidates`] of a rule set that does not choose.
pub const DEFAULT_CANDIDATES: usize = 3;

impl RuleSet {
    /// Indices of the rules that take part in routing (enabled, type-correct), in first-match
    /// order: ascending priority, then file order.
    pub fn order(&self) -> Vec<usize> {
        let mut order: Vec<usize> =
            (0..self.rules.len()).filter(|&i| self.rules[i].enabled && self.rules[i].cond.is_some()).collect();
        order.sort_by_key(|&i| (self.rules[i].priority, self.rules[i].position));
        order
    }

    /// The index of a field by name.
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }
}

/// Converts (mantissa, scale) to units of `10^-target`; `None` if it is not exact there.
pub(crate) fn to_units(mantissa: i128, scale: u32, target: u32) -> Option<i128> {
    if scale <= target {
        mantissa.checked_mul(10i128.checked_pow(target - scale)?)
    } else {
        let div = 10i128.checked_pow(scale - target)?;
        (mantissa % div == 0).then(|| mantissa / div)
    }
}

/// Formats units of `10^-scale` as a decimal string.
pub fn format_units(units: i128, scale: u32) -> String {
    if scale == 0 {
        return units.to_string();
    }
    let div = 10i128.pow(scale);
    let sign = if units < 0 { "-" } else { "" };
    let abs = units.unsigned_abs();
    let div = div.unsigned_abs();
    format!("{sign}{}.{:0width$}", abs / div, abs % div, width = scale as usize)
}

struct Checker<'a> {
    findings: &'a mut Vec<Finding>,
    fields: &'a [Field],
}

impl Checker<'_> {
    fn error<T>(&mut self, rule: &RawRule, span: &std::ops::Range<usize>, message: String, label: &str) -> Option<T> {
        self.findings.push(Finding::new(Code::Type, message).rule(&rule.name.value).label(rule.when_span(span), label));
        None
    }

    fn cond(&mut self, rule: &RawRule, expr: &Expr) -> Option<Cond> {
        match expr {
            // Check every operand, so all errors of a rule are reported.
            Expr::And(items) => {
                let checked: Vec<Option<Cond>> = items.iter().map(|e| self.cond(rule, e)).collect();
                checked.into_iter().collect::<Option<Vec<_>>>().map(Cond::And)
            }
            Expr::Or(items) => {
                let checked: Vec<Option<Cond>> = items.iter().map(|e| self.cond(rule, e)).collect();
                checked.into_iter().collect::<Option<Vec<_>>>().map(Cond::Or)
            }
            Expr::Not(inner) => self.cond(rule, inner).map(|c| Cond::Not(Box::new(c))),
            Expr::Test(test) => {
                let Some(index) = self.fields.iter().position(|f| f.name == test.field) else {
                    let known: Vec<&str> = self.fields.iter().map(|f| f.name.as_str()).collect();
                    return self.error(
                        rule,
                        &test.field_span,
                        format!("unknown field `{}`; declared fields: {}", test.field, known.join(", ")),
                        "unknown field",
                    );
                };
                let field = &self.fields[index];
                self.pred(rule, field, &test.op, &test.span).map(|p| Cond::Test(index, p, rule.when_span(&test.span)))
            }
        }
    }

    fn literal_units(&mut self, rule: &RawRule, field: &Field, lit: &Literal) -> Option<i128> {
        let (mantissa, scale) = match lit.value {
            LitValue::Int(v) => (v, 0),
            LitValue::Decimal { mantissa, scale } => (mantissa, scale),
            _ => {
                self.error::<()>(
                    rule,
                    &lit.span,
                    format!("`{}` is a {} field: compare it with a number", field.name, field.ty.name()),
                    "not a number",
                );
                return None;
            }
        };
        let target = field.ty.scale();
        let Some(units) = to_units(mantissa, scale, target) else {
            let what = if target == 0 {
                format!("`{}` is an int field: `{}` is not an integer", field.name, format_units(mantissa, scale))
            } else {
                format!(
                    "`{}` has more digits after the point than `{}`'s scale {target}",
                    format_units(mantissa, scale),
                    field.name
                )
            };
            self.error::<()>(rule, &lit.span, what, "not exact in this field");
            return None;
        };
        let (min, max) = field.ty.numeric_domain()?;
        if units < min || units > max {
            self.error::<()>(
                rule,
                &lit.span,
                format!(
                    "value {} is outside `{}`'s domain {}..={}",
                    format_units(units, target),
                    field.name,
                    format_units(min, target),
                    format_units(max, target)
                ),
                "outside the domain",
            );
            return None;
        }
        Some(units)
    }

    fn literal_str(&mut self, rule: &RawRule, field: &Field, lit: &Literal) -> Option<String> {
        let LitValue::Str(s) = &lit.value else {
            self.error::<()>(
                rule,
                &lit.span,
                format!("`{}` is a {} field: compare it with a string", field.name, field.ty.name()),
                "not a string",
            );
            return None;
        };
        if let FieldType::Enum(values) = &field.ty
            && !values.contains(s)
        {
            self.error::<()>(
                rule,
                &lit.span,
                format!("`\"{s}\"` is not a value of `{}`; its values are: {}", field.name, values.join(", ")),
                "not in the enum",
            );
            return None;
        }
        Some(s.clone())
    }

    fn equal_to(&mut self, rule: &RawRule, field: &Field, lits: &[Literal]) -> Option<Pred> {
        match &field.ty {
            FieldType::Enum(_) | FieldType::String => {
                let values: Vec<Option<String>> = lits.iter().map(|l| self.literal_str(rule, field, l)).collect();
                Some(Pred::Str(values.into_iter().collect::<Option<BTreeSet<_>>>()?))
            }
            FieldType::Int { .. } | FieldType::Decimal { .. } => {
                let values: Vec<Option<i128>> = lits.iter().map(|l| self.literal_units(rule, field, l)).collect();
                Some(Pred::Num(
                    values.into_iter().collect::<Option<Vec<_>>>()?.into_iter().map(|v| (v, v + 1)).collect(),
                ))
            }
            FieldType::Bool => {
                let mut values = BTreeSet::new();
                for lit in lits {
                    match lit.value {
                        LitValue::Bool(b) => {
                            values.insert(b);
                        }
                        _ => {
                            self.error::<()>(
                                rule,
                                &lit.span,
                                format!("`{}` is a bool field: compare it with true or false", field.name),
                                "not a bool",
                            );
                            return None;
                        }
                    }
                }
                Some(if values.len() == 2 { Pred::Present } else { Pred::Bool(values.contains(&true)) })
            }
        }
    }

    fn pred(&mut self, rule: &RawRule, field: &Field, op: &TestOp, span: &std::ops::Range<usize>) -> Option<Pred> {
        let numeric = field.ty.numeric_domain().is_some();
        match op {
            TestOp::Missing => Some(Pred::Missing),
            TestOp::Bare => {
                if field.ty == FieldType::Bool {
                    Some(Pred::Bool(true))
                } else {
                    self.error(
                        rule,
                        span,
                        format!(
                            "`{}` is a {} field, not a condition: compare it with a value",
                            field.name,
                            field.ty.name()
                        ),
                        "not a bool",
                    )
                }
            }
            TestOp::Cmp(CmpOp::Eq, lit) => self.equal_to(rule, field, std::slice::from_ref(lit)),
            TestOp::In(lits) => self.equal_to(rule, field, lits),
            TestOp::Cmp(cmp, lit) => {
                if !numeric {
                    return self.error(
                        rule,
                        span,
                        format!(
                            "`<`, `<=`, `>` and `>=` compare numbers; `{}` is a {} field",
                            field.name,
                            field.ty.name()
                        ),
                        "not a number field",
                    );
                }
                let v = self.literal_units(rule, field, lit)?;
                let range = match cmp {
                    CmpOp::Lt => (i128::MIN, v),
                    CmpOp::Le => (i128::MIN, v + 1),
                    CmpOp::Gt => (v + 1, i128::MAX),
                    _ => (v, i128::MAX),
                };
                Some(Pred::Num(vec![range]))
            }
            TestOp::Between(lo, hi) => {
                if !numeric {
                    return self.error(
                        rule,
                        span,
                        format!("`between` compares numbers; `{}` is a {} field", field.name, field.ty.name()),
                        "not a number field",
                    );
                }
                let lo = self.literal_units(rule, field, lo);
                let hi = self.literal_units(rule, field, hi);
                Some(Pred::Num(vec![(lo?, hi? + 1)]))
            }
            TestOp::StartsWith(lit) | TestOp::EndsWith(lit) => {
                let LitValue::Str(s) = &lit.value else {
                    return self.error(
                        rule,
                        &lit.span,
                        "`starts_with` and `ends_with` take a string".to_owned(),
                        "not a string",
                    );
                };
                let starts = matches!(op, TestOp::StartsWith(_));
                match &field.ty {
                    FieldType::String => {
                        Some(if starts { Pred::StartsWith(s.clone()) } else { Pred::EndsWith(s.clone()) })
                    }
                    FieldType::Enum(values) => Some(Pred::Str(
                        values
                            .iter()
                            .filter(|v| if starts { v.starts_with(s.as_str()) } else { v.ends_with(s.as_str()) })
                            .cloned()
                            .collect(),
                    )),
                    _ => self.error(
                        rule,
                        span,
                        format!(
                            "`starts_with` and `ends_with` test strings; `{}` is a {} field",
                            field.name,
                            field.ty.name()
                        ),
                        "not a string field",
                    ),
                }
            }
        }
    }
}

fn field_type(raw: &RawField, findings: &mut Vec<Finding>) -> Option<FieldType> {
    let mut bad = |span: &std::ops::Range<usize>, message: String| {
        findings.push(Finding::new(Code::Type, message).label(span.clone(), "here"));
    };
    let name = &raw.name.value;
    let number = |text: &Option<crate::syntax::document::Spanned<String>>,
                  scale: u32,
                  default: i128|
     -> Result<i128, (std::ops::Range<usize>, String)> {
        match text {
            None => Ok(default),
            Some(t) => {
                abi::encode::parse_units(&t.value, scale).filter(|v| v.unsigned_abs() <= i64::MAX as u128).ok_or_else(
                    || (t.span.clone(), format!("`{}` is not a valid bound for `{name}` (scale {scale})", t.value)),
                )
            }
        }
    };
    let ty = match raw.ty.value.as_str() {
        "enum" => {
            if raw.values.is_empty() {
                bad(&raw.name.span, format!("enum field `{name}` needs a non-empty `values` list"));
                return None;
            }
            let mut seen = HashSet::new();
            for v in &raw.values {
                if !seen.insert(v.value.as_str()) {
                    bad(&v.span, format!("`{}` is listed twice in `{name}`'s values", v.value));
                }
            }
            FieldType::Enum(raw.values.iter().map(|v| v.value.clone()).collect())
        }
        "string" => FieldType::String,
        "bool" => FieldType::Bool,
        "int" | "decimal" => {
            let scale = if raw.ty.value == "int" {
                0
            } else {
                match &raw.scale {
                    Some(s) if (0..=18).contains(&s.value) => s.value as u32,
                    Some(s) => {
                        bad(&s.span, format!("`scale` of `{name}` must be 0 to 18"));
                        return None;
                    }
                    None => {
                        bad(&raw.name.span, format!("decimal field `{name}` needs a `scale` (digits after the point)"));
                        return None;
                    }
                }
            };
            let limit = i128::from(i64::MAX);
            let (min, max) = match (number(&raw.min, scale, -limit), number(&raw.max, scale, limit)) {
                (Ok(min), Ok(max)) => (min, max),
                (Err((span, message)), _) | (_, Err((span, message))) => {
                    bad(&span, message);
                    return None;
                }
            };
            if min > max {
                bad(&raw.name.span, format!("`{name}` has `min` greater than `max`"));
                return None;
            }
            if raw.ty.value == "int" { FieldType::Int { min, max } } else { FieldType::Decimal { scale, min, max } }
        }
        other => {
            bad(
                &raw.ty.span,
                format!("unknown type `{other}` for `{name}`; expected enum, string, int, decimal or bool"),
            );
            return None;
        }
    };
    if !matches!(ty, FieldType::Enum(_)) && !raw.values.is_empty() {
        bad(&raw.name.span, format!("`values` only applies to enum fields (`{name}` is {})", raw.ty.value));
    }
    Some(ty)
}

/// Type-checks a document. Every problem is a `type` finding; the rule set keeps every rule.
pub fn check(doc: &Document) -> (RuleSet, Vec<Finding>) {
    let mut findings = Vec::new();
    let mut fields = Vec::new();
    for raw in &doc.fields {
        if let Some(ty) = field_type(raw, &mut findings) {
            fields.push(Field { name: raw.name.value.clone(), ty });
        }
    }
    let mut routes = Vec::new();
    for route in &doc.routes {
        if routes.contains(&route.value) {
            findings.push(
                Finding::new(Code::Type, format!("route `{}` is listed twice", route.value))
                    .label(route.span.clone(), "again here"),
            );
        } else if !route.value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            || route.value.is_empty()
        {
            findings.push(
                Finding::new(
                    Code::Type,
                    format!("route `{}` must use only a-z, 0-9 and _ (it names a partner queue)", route.value),
                )
                .label(route.span.clone(), "here"),
            );
        } else {
            routes.push(route.value.clone());
        }
    }
    if let Some(default) = &doc.default_route
        && !routes.contains(&default.value)
    {
        findings.push(
            Finding::new(Code::Type, format!("default route `{}` is not in `routes`", default.value))
                .label(default.span.clone(), "unknown route"),
        );
    }
    let mut names: HashMap<&str, &RawRule> = HashMap::new();
    let mut rules = Vec::new();
    for (position, raw) in doc.rules.iter().enumerate() {
        let mut ok = true;
        let name = raw.name.value.as_str();
        if name.is_empty()
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            findings.push(
                Finding::new(Code::Type, format!("rule name `{name}` must match [a-z0-9_-]+"))
                    .rule(name)
                    .label(raw.name.span.clone(), "here"),
            );
            ok = false;
        }
        if let Some(first) = names.get(name) {
            findings.push(
                Finding::new(Code::Type, format!("duplicate rule name `{name}`"))
                    .rule(name)
                    .label(raw.name.span.clone(), "used again here")
                    .label(first.name.span.clone(), "first used here"),
            );
            ok = false;
        } else {
            names.insert(name, raw);
        }
        let target = target(name, &raw.route, &routes, &mut findings);
        ok &= target.is_some();
        let cond = match expr::parse(&raw.when.value) {
            Ok(expr) => Checker { findings: &mut findings, fields: &fields }.cond(raw, &expr),
            Err(error) => {
                findings.push(
                    Finding::new(Code::Syntax, error.message).rule(name).label(raw.when_span(&error.span), "here"),
                );
                None
            }
        };
        rules.push(Rule {
            name: name.to_owned(),
            priority: raw.priority.value,
            position,
            route: target.as_ref().map_or_else(String::new, Target::label),
            target: target.unwrap_or_else(|| Target::Partner(String::new())),
            fallthrough: raw.fallthrough,
            enabled: raw.enabled,
            cond: cond.filter(|_| ok),
            raw: raw.clone(),
        });
    }
    let timezone = doc.timezone.as_ref().map_or_else(|| "UTC".to_owned(), |t| t.value.clone());
    let max_candidates = match &doc.candidates {
        None => DEFAULT_CANDIDATES,
        Some(n) => match usize::try_from(n.value) {
            Ok(n) if CANDIDATES.contains(&n) => n,
            _ => {
                let most = abi::MAX_CANDIDATES;
                findings.push(
                    Finding::new(Code::Type, format!("`candidates` must be 1 to {most}, not {}", n.value))
                        .label(n.span.clone(), "here"),
                );
                DEFAULT_CANDIDATES
            }
        },
    };
    let default_route = doc.default_route.as_ref().map(|d| d.value.clone());
    (RuleSet { timezone, default_route, routes, fields, rules, max_candidates }, findings)
}

/// Type-checks a rule's `route:`: every partner a route of the rule set, named once; split
/// weights not negative (a weight of 0 is `unreachable`); `max` of a shared route 1 to the
/// number of its partners (default: all).
fn target(rule: &str, raw: &Spanned<RawTarget>, routes: &[String], findings: &mut Vec<Finding>) -> Option<Target> {
    let mut ok = true;
    let mut bad = |span: &std::ops::Range<usize>, message: String, label: &str| {
        findings.push(Finding::new(Code::Type, message).rule(rule).label(span.clone(), label));
        ok = false;
    };
    let partners = raw.value.partners();
    for (i, partner) in partners.iter().enumerate() {
        if !routes.contains(&partner.value) {
            let message = format!("unknown route `{}`; routes are: {}", partner.value, routes.join(", "));
            bad(&partner.span, message, "not in `routes`");
        } else if partners[..i].iter().any(|p| p.value == partner.value) {
            bad(&partner.span, format!("`{}` is named twice in this route", partner.value), "again here");
        }
    }
    let target = match &raw.value {
        RawTarget::Partner(partner) => Target::Partner(partner.value.clone()),
        RawTarget::Split(weights) => {
            let mut split = std::collections::BTreeMap::new();
            for (partner, weight) in weights {
                match u32::try_from(weight.value) {
                    Ok(w) => {
                        split.insert(partner.value.clone(), w);
                    }
                    Err(_) => bad(&weight.span, format!("a split weight is 0 or more, not {}", weight.value), "here"),
                }
            }
            if weights.iter().all(|(_, w)| w.value <= 0) {
                bad(&raw.span, "a split needs a partner with a weight above 0".to_owned(), "every weight is 0");
            }
            Target::Split { split }
        }
        RawTarget::Shared { partners, max } => {
            let max = match max {
                None => partners.len(),
                Some(max) => match usize::try_from(max.value) {
                    Ok(n) if (1..=partners.len()).contains(&n) => n,
                    _ => {
                        let message =
                            format!("`max` must be 1 to {} (the partners named), not {}", partners.len(), max.value);
                        bad(&max.span, message, "here");
                        partners.len()
                    }
                },
            };
            if partners.is_empty() {
                bad(&raw.span, "a shared route names at least one partner".to_owned(), "here");
            }
            Target::Shared { shared: partners.iter().map(|p| p.value.clone()).collect(), max }
        }
    };
    ok.then_some(target)
}
