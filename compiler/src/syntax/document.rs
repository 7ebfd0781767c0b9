//! The YAML shape of a rules file (RULES.md, "File shape") read into plain structs that
//! keep the byte span of every value, so diagnostics can point into the file. Shape problems
//! (malformed YAML, unknown keys, wrong kinds of values) are `syntax` findings; this stage
//! reports all it can find, not just the first.

use std::ops::Range;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

use crate::finding::{Code, Finding};

/// A value and where it is in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Byte range in the file.
    pub span: Range<usize>,
}

/// A field declaration, untyped.
#[derive(Debug, Clone, PartialEq)]
pub struct RawField {
    /// The field's name.
    pub name: Spanned<String>,
    /// `type:`
    pub ty: Spanned<String>,
    /// `values:` (enum)
    pub values: Vec<Spanned<String>>,
    /// `min:` as written (a number)
    pub min: Option<Spanned<String>>,
    /// `max:` as written
    pub max: Option<Spanned<String>>,
    /// `scale:` (decimal)
    pub scale: Option<Spanned<i64>>,
}

/// A rule, untyped.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRule {
    /// `name:`
    pub name: Spanned<String>,
    /// `priority:`
    pub priority: Spanned<i64>,
    /// `when:`
    pub when: Spanned<String>,
    /// File offset of the first byte of the `when` text when the text stands verbatim in
    /// the file (plain or simply quoted scalars), so carets can point inside it.
    pub when_base: Option<usize>,
    /// `route:`: a partner, a weighted split or a shared sale (its span is the whole value).
    pub route: Spanned<RawTarget>,
    /// `fallthrough:` (default true): whether a lead whose partners are all unavailable goes on
    /// to the next matching rule, or is held for them.
    pub fallthrough: bool,
    /// `enabled:` (default true)
    pub enabled: bool,
    /// The whole rule.
    pub span: Range<usize>,
}

/// A rule's `route:` as written.
#[derive(Debug, Clone, PartialEq)]
pub enum RawTarget {
    /// `route: school_a`
    Partner(Spanned<String>),
    /// `route: {split: {school_a: 70, school_b: 30}}`: partners with their weights, in file order.
    Split(Vec<(Spanned<String>, Spanned<i64>)>),
    /// `route: {shared: [a, b, c], max: 2}`
    Shared {
        /// The partners, in order.
        partners: Vec<Spanned<String>>,
        /// `max:` (default: all of them).
        max: Option<Spanned<i64>>,
    },
}

impl RawTarget {
    /// Every partner named, with its span, in file order.
    pub fn partners(&self) -> Vec<&Spanned<String>> {
        match self {
            Self::Partner(p) => vec![p],
            Self::Split(weights) => weights.iter().map(|(p, _)| p).collect(),
            Self::Shared { partners, .. } => partners.iter().collect(),
        }
    }

    /// The JSON shape of a rules file's `route:`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Self::Partner(p) => json!(p.value),
            Self::Split(weights) => {
                let split: serde_json::Map<String, serde_json::Value> =
                    weights.iter().map(|(p, w)| (p.value.clone(), json!(w.value))).collect();
                json!({ "split": split })
            }
            Self::Shared { partners, max } => {
                let mut shared = json!({ "shared": partners.iter().map(|p| &p.value).collect::<Vec<_>>() });
                if let Some(max) = max {
                    shared["max"] = json!(max.value);
                }
                shared
            }
        }
    }
}

impl RawRule {
    /// The file span of a byte range inside the `when` text.
    pub fn when_span(&self, inner: &Range<usize>) -> Range<usize> {
        match self.when_base {
            Some(base) => base + inner.start..base + inner.end.max(inner.start + 1),
            None => self.when.span.clone(),
        }
    }
}

/// A whole rules file, untyped.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Document {
    /// `timezone:`
    pub timezone: Option<Spanned<String>>,
    /// `default_route:`
    pub default_route: Option<Spanned<String>>,
    /// `routes:`
    pub routes: Vec<Spanned<String>>,
    /// `candidates:`: how many matching rules a lead may fall through (default 3).
    pub candidates: Option<Spanned<i64>>,
    /// `fields:`
    pub fields: Vec<RawField>,
    /// `rules:`
    pub rules: Vec<RawRule>,
}

impl Document {
    /// The document as JSON in the shape of a rules file (`version`, `timezone`,
    /// `default_route`, `routes`, `fields`, `rules`): how the service stores a rules file it is
    /// given. Numbers keep the text they were written with where JSON allows.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{Map, Value, json};
        let number =
            |text: &str| serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.to_owned()));
        let mut fields = Map::new();
        for f in &self.fields {
            let mut field = Map::new();
            field.insert("type".to_owned(), json!(f.ty.value));
            if !f.values.is_empty() {
                field.insert("values".to_owned(), json!(f.values.iter().map(|v| &v.value).collect::<Vec<_>>()));
            }
            if let Some(min) = &f.min {
                field.insert("min".to_owned(), number(&min.value));
            }
            if let Some(max) = &f.max {
                field.insert("max".to_owned(), number(&max.value));
            }
            if let Some(scale) = &f.scale {
                field.insert("scale".to_owned(), json!(scale.value));
            }
            fields.insert(f.name.value.clone(), Value::Object(field));
        }
        let rules: Vec<Value> = self
            .rules
            .iter()
            .map(|r| {
                let mut rule = json!({
                    "name": r.name.value, "priority": r.priority.value, "when": r.when.value,
                    "route": r.route.value.to_json(), "enabled": r.enabled,
                });
                if !r.fallthrough {
                    rule["fallthrough"] = json!(false);
                }
                rule
            })
            .collect();
        let mut doc = json!({
            "version": 1,
            "timezone": self.timezone.as_ref().map_or("UTC", |t| t.value.as_str()),
            "routes": self.routes.iter().map(|r| &r.value).collect::<Vec<_>>(),
            "fields": fields,
            "rules": rules,
        });
        if let Some(default) = &self.default_route {
            doc["default_route"] = json!(default.value);
        }
        if let Some(candidates) = &self.candidates {
            doc["candidates"] = json!(candidates.value);
        }
        doc
    }
}

struct Reader<'a> {
    text: &'a str,
    /// Byte offset of each character index (saphyr counts characters).
    char_to_byte: Vec<usize>,
    findings: Vec<Finding>,
}

fn kind(node: &MarkedYaml<'_>) -> &'static str {
    match &node.data {
        YamlData::Sequence(_) => "a list",
        YamlData::Mapping(_) => "a mapping",
        YamlData::Value(Scalar::Null) => "nothing",
        YamlData::Value(Scalar::Boolean(_)) => "a boolean",
        YamlData::Value(Scalar::Integer(_)) => "an integer",
        YamlData::Value(Scalar::FloatingPoint(_)) => "a number",
        YamlData::Value(Scalar::String(_)) | YamlData::Representation(..) => "a string",
        _ => "an unsupported YAML value",
    }
}

impl Reader<'_> {
    fn span(&self, node: &MarkedYaml<'_>) -> Range<usize> {
        let at = |i: usize| self.char_to_byte.get(i).copied().unwrap_or(self.text.len());
        let start = at(node.span.start.index());
        let end = at(node.span.end.index()).max(start);
        start..end
    }

    fn error(&mut self, span: Range<usize>, message: String, label: &str) {
        self.findings.push(Finding::new(Code::Syntax, message).label(span, label));
    }

    fn expect<'n, 'i>(&mut self, node: &'n MarkedYaml<'i>, what: &str, want: &str) -> Option<&'n MarkedYaml<'i>> {
        let ok = match want {
            "mapping" => matches!(node.data, YamlData::Mapping(_)),
            "list" => matches!(node.data, YamlData::Sequence(_)),
            _ => true,
        };
        if !ok {
            let span = self.span(node);
            self.error(span, format!("{what} must be a {want}, found {}", kind(node)), "here");
            return None;
        }
        Some(node)
    }

    fn string(&mut self, node: &MarkedYaml<'_>, what: &str) -> Option<Spanned<String>> {
        let span = self.span(node);
        match &node.data {
            YamlData::Value(Scalar::String(s)) => Some(Spanned { value: s.to_string(), span }),
            YamlData::Representation(s, ..) => Some(Spanned { value: s.to_string(), span }),
            _ => {
                self.error(span, format!("{what} must be a string, found {}", kind(node)), "here");
                None
            }
        }
    }

    /// A number as written (int or float), for `min`/`max` that may be decimals.
    fn number_text(&mut self, node: &MarkedYaml<'_>, what: &str) -> Option<Spanned<String>> {
        let span = self.span(node);
        match &node.data {
            YamlData::Value(Scalar::Integer(_) | Scalar::FloatingPoint(_)) => {
                Some(Spanned { value: self.text[span.clone()].trim().to_owned(), span })
            }
            _ => {
                self.error(span, format!("{what} must be a number, found {}", kind(node)), "here");
                None
            }
        }
    }

    fn integer(&mut self, node: &MarkedYaml<'_>, what: &str) -> Option<Spanned<i64>> {
        let span = self.span(node);
        match &node.data {
            YamlData::Value(Scalar::Integer(i)) => Some(Spanned { value: *i, span }),
            _ => {
                self.error(span, format!("{what} must be an integer, found {}", kind(node)), "here");
                None
            }
        }
    }

    fn boolean(&mut self, node: &MarkedYaml<'_>, what: &str) -> Option<bool> {
        match &node.data {
            YamlData::Value(Scalar::Boolean(b)) => Some(*b),
            _ => {
                let span = self.span(node);
                self.error(span, format!("{what} must be true or false, found {}", kind(node)), "here");
                None
            }
        }
    }

    /// The entries of a mapping with string keys; unknown keys are reported.
    fn entries<'n, 'i>(
        &mut self,
        node: &'n MarkedYaml<'i>,
        what: &str,
        known: &[&str],
    ) -> Vec<(String, Range<usize>, &'n MarkedYaml<'i>)> {
        let YamlData::Mapping(map) = &node.data else { return Vec::new() };
        let mut out = Vec::new();
        for (key, value) in map {
            let Some(key_name) = self.string(key, "a key") else { continue };
            if !known.is_empty() && !known.contains(&key_name.value.as_str()) {
                let hint = known
                    .iter()
                    .find(|k| strsim_close(k, &key_name.value))
                    .map_or_else(String::new, |k| format!(" (did you mean `{k}`?)"));
                self.error(
                    key_name.span.clone(),
                    format!("unknown key `{}` in {what}{hint}; expected one of: {}", key_name.value, known.join(", ")),
                    "unknown key",
                );
                continue;
            }
            out.push((key_name.value, key_name.span, value));
        }
        out
    }

    fn string_list(&mut self, node: &MarkedYaml<'_>, what: &str) -> Vec<Spanned<String>> {
        let Some(node) = self.expect(node, what, "list") else { return Vec::new() };
        let YamlData::Sequence(items) = &node.data else { return Vec::new() };
        items.iter().filter_map(|item| self.string(item, &format!("each of {what}"))).collect()
    }

    fn field(&mut self, name: Spanned<String>, node: &MarkedYaml<'_>) -> Option<RawField> {
        let what = format!("field `{}`", name.value);
        self.expect(node, &what, "mapping")?;
        let mut field = RawField {
            ty: Spanned { value: String::new(), span: name.span.clone() },
            name,
            values: Vec::new(),
            min: None,
            max: None,
            scale: None,
        };
        let mut has_type = false;
        for (key, _, value) in self.entries(node, &what, &["type", "values", "min", "max", "scale"]) {
            match key.as_str() {
                "type" => {
                    if let Some(ty) = self.string(value, "`type`") {
                        field.ty = ty;
                        has_type = true;
                    }
                }
                "values" => field.values = self.string_list(value, "`values`"),
                "min" => field.min = self.number_text(value, "`min`"),
                "max" => field.max = self.number_text(value, "`max`"),
                _ => field.scale = self.integer(value, "`scale`"),
            }
        }
        if !has_type {
            let span = field.name.span.clone();
            self.error(span, format!("{what} has no `type`"), "declared here");
            return None;
        }
        Some(field)
    }

    fn rule(&mut self, index: usize, node: &MarkedYaml<'_>) -> Option<RawRule> {
        let what = format!("rule #{}", index + 1);
        self.expect(node, &what, "mapping")?;
        let span = self.span(node);
        let (mut name, mut priority, mut when, mut route, mut enabled) = (None, None, None, None, true);
        let (mut when_base, mut fallthrough) = (None, true);
        let keys = ["name", "priority", "when", "route", "fallthrough", "enabled"];
        for (key, _, value) in self.entries(node, &what, &keys) {
            match key.as_str() {
                "name" => name = self.string(value, "`name`"),
                "priority" => priority = self.integer(value, "`priority`"),
                "when" => {
                    when = self.string(value, "`when`");
                    if let Some(w) = &when {
                        when_base = verbatim_offset(self.text, &w.span, &w.value);
                    }
                }
                "route" => route = self.target(value),
                "fallthrough" => fallthrough = self.boolean(value, "`fallthrough`").unwrap_or(true),
                _ => enabled = self.boolean(value, "`enabled`").unwrap_or(true),
            }
        }
        let missing: Vec<&str> = [
            ("name", name.is_none()),
            ("priority", priority.is_none()),
            ("when", when.is_none()),
            ("route", route.is_none()),
        ]
        .into_iter()
        .filter_map(|(k, m)| m.then_some(k))
        .collect();
        if !missing.is_empty() {
            // A key that was present but malformed was reported already; say what is absent.
            let present_but_bad = self
                .findings
                .iter()
                .any(|f| f.labels.iter().any(|l| l.span.start >= span.start && l.span.end <= span.end));
            if !present_but_bad {
                self.error(span.start..span.start + 1, format!("{what} lacks {}", missing.join(", ")), "this rule");
            }
            return None;
        }
        Some(RawRule {
            name: name?,
            priority: priority?,
            when: when?,
            when_base,
            route: route?,
            fallthrough,
            enabled,
            span,
        })
    }

    /// A `route:`: a partner's name, `{split: {partner: weight, ...}}` or
    /// `{shared: [partner, ...], max: n}`.
    fn target(&mut self, node: &MarkedYaml<'_>) -> Option<Spanned<RawTarget>> {
        let span = self.span(node);
        if !matches!(node.data, YamlData::Mapping(_)) {
            return self.string(node, "`route`").map(|p| Spanned { value: RawTarget::Partner(p), span });
        }
        let what = "`route` (a partner, `{split: {partner: weight}}` or `{shared: [partners], max: n}`)";
        let entries = self.entries(node, what, &["split", "shared", "max"]);
        let (mut split, mut shared, mut max) = (None, None, None);
        for (key, key_span, value) in entries {
            match key.as_str() {
                "split" => {
                    if self.expect(value, "`split`", "mapping").is_some() {
                        let weights: Vec<_> = self
                            .entries(value, "`split`", &[])
                            .into_iter()
                            .filter_map(|(partner, partner_span, weight)| {
                                let weight = self.integer(weight, &format!("the weight of `{partner}`"))?;
                                Some((Spanned { value: partner, span: partner_span }, weight))
                            })
                            .collect();
                        split = Some(weights);
                    }
                }
                "shared" => shared = Some(self.string_list(value, "`shared`")),
                _ => max = Some((key_span, self.integer(value, "`max`"))),
            }
        }
        match (split, shared) {
            (Some(weights), None) => {
                if let Some((key_span, _)) = max {
                    self.error(key_span, "`max` belongs to `shared`, not `split`".to_owned(), "here");
                }
                Some(Spanned { value: RawTarget::Split(weights), span })
            }
            (None, Some(partners)) => {
                let max = max.and_then(|(_, max)| max);
                Some(Spanned { value: RawTarget::Shared { partners, max }, span })
            }
            (Some(_), Some(_)) => {
                self.error(span, "a `route` is either a `split` or `shared`, not both".to_owned(), "here");
                None
            }
            (None, None) => {
                self.error(span, format!("{what} names no partner"), "here");
                None
            }
        }
    }
}

/// Finds `value` verbatim at the start of the scalar at `span` (after a quote, if quoted).
fn verbatim_offset(text: &str, span: &Range<usize>, value: &str) -> Option<usize> {
    let raw = text.get(span.clone())?;
    let skip = usize::from(raw.starts_with('"') || raw.starts_with('\''));
    raw.get(skip..)?.starts_with(value).then_some(span.start + skip)
}

/// Whether two keys are one typo apart (same length and one differing character, or one
/// character more or less).
fn strsim_close(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len() == b.len() {
        return a.iter().zip(&b).filter(|(x, y)| x != y).count() == 1;
    }
    let (short, long) = if a.len() < b.len() { (&a, &b) } else { (&b, &a) };
    if long.len() - short.len() != 1 {
        return false;
    }
    (0..long.len()).any(|skip| long.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, c)| c).eq(short.iter()))
}

/// Reads a rules file. Returns the document (possibly partial) and every shape problem.
pub fn read(text: &str) -> (Document, Vec<Finding>) {
    let mut reader = Reader { text, char_to_byte: text.char_indices().map(|(i, _)| i).collect(), findings: Vec::new() };
    reader.char_to_byte.push(text.len());
    let docs = match MarkedYaml::load_from_str(text) {
        Ok(docs) => docs,
        Err(error) => {
            let at = reader.char_to_byte.get(error.marker().index()).copied().unwrap_or(text.len());
            let end = text[at..].chars().next().map_or(at, |c| at + c.len_utf8());
            reader.error(at..end.max(at), format!("malformed YAML: {}", error.info()), "here");
            return (Document::default(), reader.findings);
        }
    };
    let mut doc = Document::default();
    let Some(root) = docs.first() else {
        reader.error(
            0..0,
            "the file is empty: expected `version: 1`, `routes`, `fields` and `rules`".to_owned(),
            "here",
        );
        return (doc, reader.findings);
    };
    if docs.len() > 1 {
        let span = reader.span(&docs[1]);
        reader.error(span, "a rules file holds one YAML document".to_owned(), "second document");
    }
    if reader.expect(root, "the file", "mapping").is_none() {
        return (doc, reader.findings);
    }
    let mut seen_version = false;
    let known = ["version", "timezone", "default_route", "routes", "candidates", "fields", "rules"];
    for (key, key_span, value) in reader.entries(root, "the file", &known) {
        match key.as_str() {
            "version" => {
                seen_version = true;
                if let Some(v) = reader.integer(value, "`version`")
                    && v.value != 1
                {
                    reader.error(
                        v.span,
                        format!("unsupported version {}: this rulec reads version 1", v.value),
                        "version",
                    );
                }
            }
            "timezone" => doc.timezone = reader.string(value, "`timezone`"),
            "default_route" => doc.default_route = reader.string(value, "`default_route`"),
            "routes" => doc.routes = reader.string_list(value, "`routes`"),
            "candidates" => doc.candidates = reader.integer(value, "`candidates`"),
            "fields" => {
                if reader.expect(value, "`fields`", "mapping").is_some() {
                    for (name, name_span, def) in reader.entries(value, "`fields`", &[]) {
                        let name = Spanned { value: name, span: name_span };
                        if let Some(field) = reader.field(name, def) {
                            doc.fields.push(field);
                        }
                    }
                }
            }
            _ => {
                if let Some(list) = reader.expect(value, "`rules`", "list")
                    && let YamlData::Sequence(items) = &list.data
                {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(rule) = reader.rule(i, item) {
                            doc.rules.push(rule);
                        }
                    }
                }
            }
        }
        let _ = key_span;
    }
    if !seen_version {
        reader.error(0..0, "missing `version: 1`".to_owned(), "here");
    }
    reader.findings.sort_by_key(|f| f.labels.first().map_or(0, |l| l.span.start));
    (doc, reader.findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_spans_and_reports_every_shape_problem() {
        let text = "version: 1\nroutes: [a]\nfields:\n  age: { type: int }\nrules:\n  - name: r1\n    priority: 1\n    when: age > 3\n    route: a\n  - name: r2\n    priority: x\n    when: age < 3\n    rout: a\n";
        let (doc, findings) = read(text);
        assert_eq!(doc.rules.len(), 1);
        let rule = &doc.rules[0];
        assert_eq!(&text[rule.when.span.clone()], "age > 3");
        assert_eq!(rule.when_span(&(4..5)), rule.when.span.start + 4..rule.when.span.start + 5);
        let messages: Vec<&str> = findings.iter().map(|f| f.message.as_str()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].contains("`priority` must be an integer"));
        assert!(messages[1].contains("unknown key `rout`") && messages[1].contains("did you mean `route`?"));
    }

    #[test]
    fn malformed_and_empty_files_are_findings() {
        let (_, findings) = read("rules: [\n  - name: x\n");
        assert!(findings[0].message.starts_with("malformed YAML"), "{findings:?}");
        let (_, findings) = read("");
        assert!(findings[0].message.starts_with("the file is empty"));
        let (_, findings) = read("- 1\n- 2\n");
        assert!(findings[0].message.contains("must be a mapping"));
    }
}
