//! The manifest stored beside every decision module: everything the host needs to encode a
//! lead for the module and to read its answer, plus provenance (hashes, compiler version).

use serde::{Deserialize, Serialize};

use crate::{ABI_VERSION, Layout, MAX_CANDIDATES};
use crate::{Error, Result};

/// The manifest of one compiled module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// ABI the module speaks ([`ABI_VERSION`]).
    pub abi_version: u32,
    /// SHA-256 (hex) of the rules file the module was compiled from.
    pub rule_set_hash: String,
    /// SHA-256 (hex) of the module's bytes: ties the manifest to its module.
    pub module_hash: String,
    /// Version of the compiler that produced it.
    pub compiler_version: String,
    /// Bytes per input record.
    pub record_size: usize,
    /// Most records one `decide_batch` call takes.
    pub max_batch: usize,
    /// Where `decide_batch` results go.
    pub output_offset: usize,
    /// Where unmatched leads go, if anywhere.
    pub default_route: Option<String>,
    /// The input layout, in slot order.
    pub fields: Vec<FieldLayout>,
    /// The rules in first-match order; the candidate lists index this table.
    pub rules: Vec<RuleEntry>,
    /// The most candidates a list holds (`k`, 1 to [`MAX_CANDIDATES`]).
    #[serde(default)]
    pub max_candidates: usize,
    /// What `decide` answers: its answer `n` names list `n`, the lead's first
    /// `max_candidates` (or fewer) matching rules as indices into `rules`, in first-match
    /// order. List 0 is the empty list (no rule matched), and only it is empty.
    ///
    /// This field and `max_candidates` default to empty so that a manifest of an older ABI
    /// still parses (`api` reads the active tree's fields from it until the recompile);
    /// [`Manifest::check`] refuses such a manifest.
    #[serde(default)]
    pub candidate_lists: Vec<Vec<u32>>,
    /// Figures of the decision DAG behind the module (nodes, edges, depths).
    #[serde(default)]
    pub dag: serde_json::Value,
}

/// One field of the input record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldLayout {
    /// Field name in leads.
    pub name: String,
    /// Offset of its i32 slot in the record.
    pub slot: usize,
    /// How its values are encoded.
    #[serde(flatten)]
    pub kind: FieldKind,
}

/// How a field's value becomes slot contents. Class ids start at 1; 0 is "missing".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FieldKind {
    /// Class id = 1 + index in `values`.
    Enum {
        /// The enum's values.
        values: Vec<String>,
    },
    /// `false` = 1, `true` = 2.
    Bool,
    /// Class id = 1 + index in `literals` for a literal; otherwise the string's longest
    /// prefix among `prefixes` and longest suffix among `suffixes` pick the class in
    /// `others` (id = 1 + `literals.len()` + index).
    String {
        /// Strings the rules compare with.
        literals: Vec<String>,
        /// Prefixes the rules test.
        prefixes: Vec<String>,
        /// Suffixes the rules test.
        suffixes: Vec<String>,
        /// The other classes.
        others: Vec<OtherClass>,
    },
    /// Slot = presence (0/1); the value, in units of `10^-scale`, is an i64 at
    /// `value_offset`. Values outside `min..=max` are refused by the encoder.
    Number {
        /// Offset of the i64 value.
        value_offset: usize,
        /// Digits after the point.
        scale: u32,
        /// Smallest value, in units.
        min: i64,
        /// Largest value, in units.
        max: i64,
    },
}

/// A class of strings equal to no literal: its longest tested prefix and suffix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OtherClass {
    /// Longest tested prefix, if any.
    pub prefix: Option<String>,
    /// Longest tested suffix, if any.
    pub suffix: Option<String>,
}

/// A rule as the router needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleEntry {
    /// Index in first-match order.
    pub index: usize,
    /// The rule's name.
    pub name: String,
    /// Its route: the partner, or the canonical text of a split or shared target
    /// ([`Target::label`]), as the analysis and the diff compare routes.
    pub route: String,
    /// The partners it sells to, and how.
    pub target: Target,
    /// Whether a lead whose partners are all unavailable goes on to the next candidate rule
    /// (`true`) or is held for this rule's partners (`false`).
    pub fallthrough: bool,
    /// Its priority.
    pub priority: i64,
}

/// Where a rule sends the leads it decides (RULES.md, "Routes"), in the rules file's JSON
/// shape: `"school_a"`, `{"split": {"school_a": 70, "school_b": 30}}` or
/// `{"shared": ["a", "b", "c"], "max": 2}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Target {
    /// One partner (an exclusive lead).
    Partner(String),
    /// One of several partners, chosen so the shares converge to the weights (smooth weighted
    /// round robin over the available ones).
    Split {
        /// Partner → weight, by partner name.
        split: std::collections::BTreeMap<String, u32>,
    },
    /// Sold to up to `max` of the partners (a shared lead), each deduplicated, capped and
    /// delivered on its own; in the listed order.
    Shared {
        /// The partners, in order of preference.
        shared: Vec<String>,
        /// How many of them at most.
        max: usize,
    },
}

impl Target {
    /// Every partner the target names, in its order.
    pub fn partners(&self) -> Vec<&str> {
        match self {
            Self::Partner(p) => vec![p.as_str()],
            Self::Split { split } => split.keys().map(String::as_str).collect(),
            Self::Shared { shared, .. } => shared.iter().map(String::as_str).collect(),
        }
    }

    /// The canonical text of the target: the partner itself, `split(a: 70, b: 30)` or
    /// `shared(a, b, c; max 2)`. Two rules route the same exactly when their labels are equal.
    pub fn label(&self) -> String {
        match self {
            Self::Partner(p) => p.clone(),
            Self::Split { split } => {
                let parts: Vec<String> = split.iter().map(|(p, w)| format!("{p}: {w}")).collect();
                format!("split({})", parts.join(", "))
            }
            Self::Shared { shared, max } => format!("shared({}; max {max})", shared.join(", ")),
        }
    }
}

impl Manifest {
    /// Parses a manifest from JSON.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::Manifest(e.to_string()))
    }

    /// The record layout its fields describe.
    pub fn layout(&self) -> Layout {
        let numbers = self.fields.iter().filter(|f| matches!(f.kind, FieldKind::Number { .. })).count();
        Layout { fields: self.fields.len(), numbers }
    }

    /// Bytes of memory the module needs: `max_batch` records and as many results.
    pub fn memory_bytes(&self) -> usize {
        self.output_offset + 4 * self.max_batch
    }

    /// Checks the manifest is consistent with itself and with this ABI.
    pub fn check(&self) -> Result<()> {
        if self.abi_version != ABI_VERSION {
            return Err(Error::Mismatch(format!("ABI version {} (this host speaks {ABI_VERSION})", self.abi_version)));
        }
        let layout = self.layout();
        if layout.record_size() != self.record_size {
            return Err(Error::Manifest(format!(
                "record_size {} but the fields need {}",
                self.record_size,
                layout.record_size()
            )));
        }
        let mut number = 0;
        for (i, field) in self.fields.iter().enumerate() {
            if field.slot != layout.slot(i) {
                return Err(Error::Manifest(format!(
                    "field `{}` has slot {} instead of {}",
                    field.name,
                    field.slot,
                    layout.slot(i)
                )));
            }
            if let FieldKind::Number { value_offset, min, max, .. } = field.kind {
                if value_offset != layout.value(number) || min > max {
                    return Err(Error::Manifest(format!("field `{}` has an inconsistent number layout", field.name)));
                }
                number += 1;
            }
        }
        if self.output_offset < self.record_size * self.max_batch || self.max_batch == 0 {
            return Err(Error::Manifest("the output area overlaps the input records".to_owned()));
        }
        if self.rules.iter().enumerate().any(|(i, r)| r.index != i) {
            return Err(Error::Manifest("rule indices are not 0, 1, 2, ...".to_owned()));
        }
        self.check_candidates()
    }

    /// Checks the candidate lists: list 0 and only it empty, each list at most
    /// `max_candidates` rules of the table, in first-match order without repeats.
    fn check_candidates(&self) -> Result<()> {
        if !(1..=MAX_CANDIDATES).contains(&self.max_candidates) {
            return Err(Error::Manifest(format!(
                "max_candidates is {}, not between 1 and {MAX_CANDIDATES}",
                self.max_candidates
            )));
        }
        if self.candidate_lists.first().is_none_or(|none| !none.is_empty()) {
            return Err(Error::Manifest("candidate list 0 must be the empty list".to_owned()));
        }
        let rules = self.rules.len();
        for (n, list) in self.candidate_lists.iter().enumerate().skip(1) {
            let in_order = list.windows(2).all(|w| w[0] < w[1]);
            if list.is_empty()
                || list.len() > self.max_candidates
                || !in_order
                || list.iter().any(|&i| usize::try_from(i).map_or(true, |i| i >= rules))
            {
                return Err(Error::Manifest(format!(
                    "candidate list {n} is not 1 to {} rules of the table in first-match order: {list:?}",
                    self.max_candidates
                )));
            }
        }
        if u32::try_from(self.candidate_lists.len()).is_err() {
            return Err(Error::Manifest("too many candidate lists".to_owned()));
        }
        Ok(())
    }

    /// The rule indices (into [`Manifest::rules`], first-match order) of the candidate list a
    /// module answered; empty for 0 and for an answer outside the table.
    pub fn candidates(&self, answer: usize) -> &[u32] {
        self.candidate_lists.get(answer).map_or(&[], Vec::as_slice)
    }
}
