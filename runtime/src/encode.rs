//! Encoding a lead (JSON) into the module's input record, per the manifest's tables. Exact:
//! decimals are parsed from their text or checked for an exact round trip, never rounded.
//!
//! This is the router's hot path, so lookups avoid per-call allocation and library calls:
//! field names and class values go through small open-addressing tables with a
//! word-at-a-time hash, and a string's "other" class is a dense index by (prefix, suffix).

use serde_json::Value;

use crate::manifest::{FieldKind, Manifest};
use crate::{Error, Result};

/// Parses a decimal written as text (`12`, `-3.50`) into units of `10^-scale`; `None` if
/// it is not a number or not exact at that scale.
pub fn parse_units(text: &str, scale: u32) -> Option<i128> {
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if int.is_empty() || frac.len() > 30 {
        return None;
    }
    let mut mantissa: i128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        if !b.is_ascii_digit() {
            return None;
        }
        mantissa = mantissa.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    let mantissa = if negative { -mantissa } else { mantissa };
    let given = u32::try_from(frac.len()).ok()?;
    if given <= scale {
        mantissa.checked_mul(10i128.checked_pow(scale - given)?)
    } else {
        let div = 10i128.checked_pow(given - scale)?;
        (mantissa % div == 0).then(|| mantissa / div)
    }
}

/// A JSON number or numeric string in units of `10^-scale`, with fast paths for integers and
/// for decimals that arrived as `f64`.
fn units_of(value: &Value, scale: u32) -> Option<i128> {
    match value {
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(v), _) => i128::from(v).checked_mul(10i128.checked_pow(scale)?),
            // Exact at this scale iff scaling gives an integer that maps back to the same
            // f64 (unique below 2^53 units).
            (None, Some(v)) if scale <= 15 => {
                let factor = 10f64.powi(scale as i32);
                let scaled = (v * factor).round();
                (scaled.abs() < 9.0e15 && scaled / factor == v).then_some(scaled as i128)
            }
            _ => parse_units(&n.to_string(), scale),
        },
        Value::String(s) => parse_units(s, scale),
        _ => None,
    }
}

/// A hash of a short byte string, eight bytes at a time (whole words are loaded directly and
/// the tail is assembled in a register, so no load waits on byte stores).
fn hash(bytes: &[u8]) -> u64 {
    let mix = |h: u64, w: u64| (h ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(27);
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for word in words.by_ref() {
        h = mix(h, u64::from_le_bytes(<[u8; 8]>::try_from(word).unwrap_or_default()));
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        h = mix(h, tail.iter().enumerate().fold(0u64, |w, (i, b)| w | u64::from(*b) << (8 * i)));
    }
    h
}

/// A read-only string → value table with open addressing.
struct Table<V> {
    slots: Vec<Option<(u64, Box<str>, V)>>,
    mask: usize,
}

impl<V: Copy> Table<V> {
    fn new(entries: impl IntoIterator<Item = (String, V)>) -> Self {
        let entries: Vec<(String, V)> = entries.into_iter().collect();
        let size = (entries.len() * 2).next_power_of_two().max(8);
        let mut slots: Vec<Option<(u64, Box<str>, V)>> = (0..size).map(|_| None).collect();
        for (key, value) in entries {
            let h = hash(key.as_bytes());
            let mut i = h as usize & (size - 1);
            while slots[i].is_some() {
                i = (i + 1) & (size - 1);
            }
            slots[i] = Some((h, key.into_boxed_str(), value));
        }
        Self { slots, mask: size - 1 }
    }

    fn get(&self, key: &str) -> Option<V> {
        let h = hash(key.as_bytes());
        let mut i = h as usize & self.mask;
        loop {
            match &self.slots[i] {
                None => return None,
                Some((stored, k, v)) if *stored == h && same(k.as_bytes(), key.as_bytes()) => return Some(*v),
                Some(_) => i = (i + 1) & self.mask,
            }
        }
    }
}

enum Slot {
    Enum(Table<u32>),
    Bool,
    Str {
        literals: Table<u32>,
        prefixes: Vec<String>,
        suffixes: Vec<String>,
        /// Class id at `(1 + prefix index, or 0) * (suffixes + 1) + (1 + suffix index, or 0)`.
        others: Vec<u32>,
    },
    Number {
        value_offset: usize,
        scale: u32,
        min: i64,
        max: i64,
    },
}

/// Encodes leads for one manifest.
pub struct Encoder {
    fields: Vec<(String, usize, Slot)>,
    /// Field name → index in `fields`.
    by_name: Table<usize>,
    record_size: usize,
}

/// Equality of short byte strings, a word at a time (a `memcmp` call costs more here).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut x, mut y) = (a.chunks_exact(8), b.chunks_exact(8));
    let word = |c: &[u8]| u64::from_ne_bytes(<[u8; 8]>::try_from(c).unwrap_or_default());
    if x.by_ref().zip(y.by_ref()).any(|(p, q)| word(p) != word(q)) {
        return false;
    }
    x.remainder() == y.remainder()
}

/// Index of the longest string in `affixes` that `s` starts with (`at_end` false) or ends
/// with (`at_end` true).
fn longest_affix(affixes: &[String], s: &str, at_end: bool) -> Option<usize> {
    let s = s.as_bytes();
    let mut best: Option<(usize, usize)> = None;
    for (i, a) in affixes.iter().enumerate() {
        let a = a.as_bytes();
        if a.len() > s.len() || best.is_some_and(|(_, n)| a.len() <= n) {
            continue;
        }
        let (edge, part) = if at_end {
            (a.last() == s.last(), &s[s.len() - a.len()..])
        } else {
            (a.first() == s.first(), &s[..a.len()])
        };
        // the edge byte rules most candidates out without a full comparison
        if edge && same(a, part) {
            best = Some((i, a.len()));
        }
    }
    best.map(|(i, _)| i)
}

fn slot(kind: &FieldKind) -> Slot {
    match kind {
        FieldKind::Enum { values } => {
            Slot::Enum(Table::new(values.iter().enumerate().map(|(i, v)| (v.clone(), i as u32 + 1))))
        }
        FieldKind::Bool => Slot::Bool,
        FieldKind::String { literals, prefixes, suffixes, others } => {
            let index = |list: &[String], value: &Option<String>| {
                value.as_ref().and_then(|v| list.iter().position(|x| x == v)).map_or(0, |i| i + 1)
            };
            let mut table = vec![0u32; (prefixes.len() + 1) * (suffixes.len() + 1)];
            for (k, o) in others.iter().enumerate() {
                table[index(prefixes, &o.prefix) * (suffixes.len() + 1) + index(suffixes, &o.suffix)] =
                    (literals.len() + k + 1) as u32;
            }
            Slot::Str {
                literals: Table::new(literals.iter().enumerate().map(|(i, v)| (v.clone(), i as u32 + 1))),
                prefixes: prefixes.clone(),
                suffixes: suffixes.clone(),
                others: table,
            }
        }
        FieldKind::Number { value_offset, scale, min, max } => {
            Slot::Number { value_offset: *value_offset, scale: *scale, min: *min, max: *max }
        }
    }
}

impl Encoder {
    /// Builds the lookup tables of `manifest`.
    pub fn new(manifest: &Manifest) -> Self {
        let fields: Vec<(String, usize, Slot)> =
            manifest.fields.iter().map(|f| (f.name.clone(), f.slot, slot(&f.kind))).collect();
        let by_name = Table::new(fields.iter().enumerate().map(|(i, (name, _, _))| (name.clone(), i)));
        Self { fields, by_name, record_size: manifest.record_size }
    }

    /// Bytes per record.
    pub fn record_size(&self) -> usize {
        self.record_size
    }

    /// Writes `lead`'s record into `out` (at least `record_size` bytes). Keys that are not
    /// fields are ignored; `null` and absent keys are "missing".
    pub fn encode(&self, lead: &Value, out: &mut [u8]) -> Result<()> {
        self.encode_map(lead.as_object().ok_or(Error::NotAnObject)?, out)
    }

    /// [`Encoder::encode`] for a lead already known to be an object.
    pub fn encode_map(&self, object: &serde_json::Map<String, Value>, out: &mut [u8]) -> Result<()> {
        let out = &mut out[..self.record_size];
        out.fill(0);
        for (key, value) in object {
            let Some(index) = self.by_name.get(key) else { continue };
            if !value.is_null() {
                self.encode_field(index, value, out)?;
            }
        }
        Ok(())
    }

    /// Checks every field of `lead` against the manifest's schema, as [`Encoder::encode`]
    /// would read it, and returns each problem (not just the first) as (field, problem).
    /// Keys that are not fields, and `null`s, are fine.
    pub fn problems(&self, lead: &serde_json::Map<String, Value>) -> Vec<(String, String)> {
        let mut scratch = vec![0u8; self.record_size];
        let mut problems = Vec::new();
        for (key, value) in lead {
            let Some(index) = self.by_name.get(key) else { continue };
            if value.is_null() {
                continue;
            }
            if let Err(Error::Encode { field, problem }) = self.encode_field(index, value, &mut scratch) {
                problems.push((field, problem));
            }
        }
        problems
    }

    /// Whether `name` is a field of the schema.
    pub fn has_field(&self, name: &str) -> bool {
        self.by_name.get(name).is_some()
    }

    /// Writes one field's class (and number) into `out`.
    #[inline]
    fn encode_field(&self, index: usize, value: &Value, out: &mut [u8]) -> Result<()> {
        let (name, slot, kind) = &self.fields[index];
        let bad = |problem: String| Error::Encode { field: name.clone(), problem };
        let class = match kind {
            Slot::Enum(values) => {
                let s = value.as_str().ok_or_else(|| bad(format!("expected a string, got {value}")))?;
                values.get(s).ok_or_else(|| bad(format!("`{s}` is not one of the field's values")))?
            }
            Slot::Bool => {
                1 + u32::from(value.as_bool().ok_or_else(|| bad(format!("expected true or false, got {value}")))?)
            }
            Slot::Str { literals, prefixes, suffixes, others } => {
                let s = value.as_str().ok_or_else(|| bad(format!("expected a string, got {value}")))?;
                match literals.get(s) {
                    Some(id) => id,
                    None => {
                        let p = longest_affix(prefixes, s, false).map_or(0, |i| i + 1);
                        let x = longest_affix(suffixes, s, true).map_or(0, |i| i + 1);
                        match others.get(p * (suffixes.len() + 1) + x) {
                            Some(&id) if id != 0 => id,
                            _ => return Err(bad(format!("no class for `{s}` (manifest incomplete)"))),
                        }
                    }
                }
            }
            Slot::Number { value_offset, scale, min, max } => {
                if !matches!(value, Value::Number(_) | Value::String(_)) {
                    return Err(bad(format!("expected a number, got {value}")));
                }
                let units = units_of(value, *scale)
                    .ok_or_else(|| bad(format!("`{value}` is not exact with {scale} digits after the point")))?;
                let units = i64::try_from(units)
                    .ok()
                    .filter(|u| (*min..=*max).contains(u))
                    .ok_or_else(|| bad(format!("`{value}` is outside the field's domain")))?;
                out[*value_offset..value_offset + 8].copy_from_slice(&units.to_le_bytes());
                1
            }
        };
        out[*slot..slot + 4].copy_from_slice(&class.to_le_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_units("12.5", 2), Some(1250));
        assert_eq!(parse_units("-3.50", 1), Some(-35));
        assert_eq!(parse_units("3.55", 1), None);
        assert_eq!(parse_units("1e3", 0), None);
        assert_eq!(parse_units("", 0), None);
        assert_eq!(units_of(&serde_json::json!(15000.5), 2), Some(1_500_050));
        assert_eq!(units_of(&serde_json::json!(0.1), 1), Some(1));
        assert_eq!(units_of(&serde_json::json!(0.15), 1), None);
        assert_eq!(units_of(&serde_json::json!("7.25"), 2), Some(725));
        assert_eq!(units_of(&serde_json::json!(7), 2), Some(700));
    }

    #[test]
    fn affixes_and_equality() {
        let list = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(longest_affix(&list(&["9", "90", "1"]), "90210", false), Some(1));
        assert_eq!(longest_affix(&list(&["9", "90"]), "80210", false), None);
        assert_eq!(longest_affix(&list(&["902100"]), "90210", false), None);
        assert_eq!(longest_affix(&list(&[".edu", "u"]), "mit.edu", true), Some(0));
        assert!(
            same(b"degreefinder", b"degreefinder") && !same(b"degreefinder", b"degreefindex") && !same(b"a", b"ab")
        );
    }
}
