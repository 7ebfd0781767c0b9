//! Encoding a lead (JSON) into the module's input record, per the manifest's tables. Exact:
//! decimals are parsed from their text or checked for an exact round trip, never rounded.
//!
//! This is the router's hot path, so lookups avoid per-call allocation, library calls and
//! unpredictable branches:
//! - a lead's keys arrive in byte order (a `serde_json::Map`), so each is first checked
//!   against the schema's next field or the one after it; only other keys are looked up;
//! - names and values of up to 16 bytes are compared as two words and a length (`Short`),
//!   in perfect-hash tables: a lookup is two loads and one compare, with no probe loop (whose
//!   mispredictions, on random leads, cost a third of the time of an encode);
//! - a string's longest tested prefix (suffix) is one table lookup per distinct affix length,
//!   and its "other" class a dense index by (prefix, suffix);
//! - numbers are scaled with precomputed powers of ten, in `i64`/`f64` without library calls.

use std::collections::{HashMap, HashSet};

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

/// `10^scale` as an integer and as a float, computed once per field.
#[derive(Debug, Clone, Copy)]
struct Scale {
    digits: u32,
    int: Option<i64>,
    float: f64,
}

impl Scale {
    fn new(digits: u32) -> Self {
        Self { digits, int: 10i64.checked_pow(digits), float: 10f64.powi(i32::try_from(digits).unwrap_or(i32::MAX)) }
    }
}

/// A JSON number or numeric string in units of `10^-scale`, with fast paths (no `i128`, no
/// library call) for integers and for decimals that arrived as `f64`.
#[inline(always)]
fn units_of(value: &Value, scale: Scale) -> Option<i128> {
    match value {
        Value::Number(n) => match (n.as_i64(), n.as_f64(), scale.int) {
            // Cannot overflow: both are below 2^63.
            (Some(v), _, Some(factor)) => Some(i128::from(v) * i128::from(factor)),
            (Some(v), _, None) => i128::from(v).checked_mul(10i128.checked_pow(scale.digits)?),
            // Exact at this scale iff scaling gives an integer that maps back to the same
            // f64 (unique below 2^53 units).
            (None, Some(v), _) if scale.digits <= 15 => {
                let scaled = v * scale.float;
                if scaled.is_nan() || scaled.abs() >= 9.0e15 {
                    return None;
                }
                // Rounded half away from zero, as `f64::round` (a library call here); from 2^52 up
                // every f64 is an integer already.
                let rounded = if scaled.abs() >= 4.5e15 { scaled } else { scaled + 0.5f64.copysign(scaled) };
                let units = rounded as i64;
                (units as f64 / scale.float == v).then_some(i128::from(units))
            }
            _ => parse_units(&n.to_string(), scale.digits),
        },
        Value::String(s) => parse_units(s, scale.digits),
        _ => None,
    }
}

/// A short string (up to 16 bytes) as two words and its length: for a given length the words
/// hold every byte (loads may overlap), so `(len, a, b)` identifies the string. Loading it is a
/// few unaligned loads, and comparing two keys is two word compares: no `memcmp` call, no
/// pointer to follow.
#[derive(Debug, Clone, Copy, Eq)]
struct Short {
    len: usize,
    a: u64,
    b: u64,
}

impl std::hash::Hash for Short {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.len, self.a, self.b).hash(state);
    }
}

impl PartialEq for Short {
    /// One branch instead of three.
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        ((self.len ^ other.len) as u64 | (self.a ^ other.a) | (self.b ^ other.b)) == 0
    }
}

impl Short {
    #[inline(always)]
    fn new(bytes: &[u8]) -> Option<Self> {
        let len = bytes.len();
        let half = |c: Option<&[u8; 4]>| u64::from(u32::from_le_bytes(c.copied().unwrap_or_default()));
        let word = |c: Option<&[u8; 8]>| u64::from_le_bytes(c.copied().unwrap_or_default());
        let (a, b) = match bytes {
            [] => (0, 0),
            [first, .., last] if len < 4 => {
                (u64::from(*first) | u64::from(bytes[len / 2]) << 8 | u64::from(*last) << 16, 0)
            }
            [only] => (u64::from(*only) * 0x0001_0101, 0),
            _ if len < 8 => (half(bytes.first_chunk()) | half(bytes.last_chunk()) << 32, 0),
            _ if len <= 16 => (word(bytes.first_chunk()), word(bytes.last_chunk())),
            _ => return None,
        };
        Some(Self { len, a, b })
    }
}

/// A read-only string → number table. Keys of up to 16 bytes are [`Short`]s placed by a
/// perfect hash ("hash and displace"): a key's bucket gives a displacement, and the hash with
/// that displacement gives its slot, where no other key is. A lookup is two loads and one
/// compare, with no probing, so whether it hits is its only branch. Longer keys are in a
/// `HashMap`.
struct Table {
    /// Number of keys.
    len: usize,
    /// At most half full, 24 bytes a slot.
    slots: Vec<Entry>,
    /// `64 - log2(slots)`.
    shift: u32,
    /// Displacement per bucket (a power of two of them).
    displace: Vec<u32>,
    long: HashMap<Box<[u8]>, u32>,
    /// Every key is in `long` (see [`Table::new`]).
    all_long: bool,
}

/// A [`Short`] key and its value, packed.
#[derive(Debug, Clone, Copy)]
struct Entry {
    a: u64,
    b: u64,
    /// `u32::MAX` for an empty slot.
    len: u32,
    value: u32,
}

impl Entry {
    const EMPTY: Entry = Entry { a: 0, b: 0, len: u32::MAX, value: 0 };

    /// One branch instead of three.
    #[inline(always)]
    fn holds(&self, key: Short) -> bool {
        ((u64::from(self.len) ^ key.len as u64) | (self.a ^ key.a) | (self.b ^ key.b)) == 0
    }
}

impl Short {
    /// No string is this: its length is too long for a `Short`.
    const EMPTY: Short = Short { len: usize::MAX, a: 0, b: 0 };

    #[inline(always)]
    fn hash(self) -> u64 {
        ((self.a ^ self.len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29) ^ self.b)
            .wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
    }
}

impl Table {
    fn new(entries: impl IntoIterator<Item = (String, u32)>) -> Self {
        let (short, long): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .map(|(key, value)| (Short::new(key.as_bytes()), key, value))
            .partition(|e| e.0.is_some());
        let mut seen = HashSet::new();
        let keys: Vec<(Short, u32)> =
            short.iter().filter_map(|&(key, _, value)| Some((key.filter(|k| seen.insert(*k))?, value))).collect();
        let long: HashMap<Box<[u8]>, u32> =
            long.into_iter().map(|(_, key, value)| (key.into_bytes().into_boxed_slice(), value)).collect();
        let len = keys.len() + long.len();
        let start = (keys.len() * 2).next_power_of_two().max(8).trailing_zeros();
        match (start..start + 8).find_map(|bits| Self::place(&keys, bits)) {
            Some(table) => Self { len, long, ..table },
            // Only keys whose 64-bit hashes collide get here: all of them in the map.
            None => Self {
                len,
                long: long
                    .into_iter()
                    .chain(short.into_iter().map(|(_, k, v)| (k.into_bytes().into_boxed_slice(), v)))
                    .collect(),
                ..Self::empty()
            },
        }
    }

    /// No short key (all in `long`).
    fn empty() -> Self {
        Self { len: 0, slots: vec![Entry::EMPTY], shift: 63, displace: vec![0], long: HashMap::new(), all_long: true }
    }

    /// Places `keys` in `2^bits` slots, the buckets with most keys first, each with the first
    /// displacement that puts all its keys in free slots; `None` if some bucket finds none.
    fn place(keys: &[(Short, u32)], bits: u32) -> Option<Self> {
        let buckets = (keys.len() / 4 + 1).next_power_of_two();
        let mut table = Self {
            len: 0,
            slots: vec![Entry::EMPTY; 1 << bits],
            shift: 64 - bits,
            displace: vec![0; buckets],
            long: HashMap::new(),
            all_long: false,
        };
        let mut members: Vec<Vec<(Short, u32)>> = vec![Vec::new(); buckets];
        for &(key, value) in keys {
            members[table.bucket(key.hash())].push((key, value));
        }
        let mut order: Vec<usize> = (0..buckets).collect();
        order.sort_by_key(|&b| std::cmp::Reverse(members[b].len()));
        for bucket in order.into_iter().filter(|&b| !members[b].is_empty()) {
            let fits = |d: u32, table: &Self| {
                let mut taken: Vec<usize> = Vec::new();
                members[bucket].iter().all(|(key, _)| {
                    let slot = table.slot(key.hash(), d);
                    let free = table.slots[slot].len == u32::MAX && !taken.contains(&slot);
                    taken.push(slot);
                    free
                })
            };
            let d = (0..10_000u32).find(|&d| fits(d, &table))?;
            table.displace[bucket] = d;
            for &(key, value) in &members[bucket] {
                let slot = table.slot(key.hash(), d);
                table.slots[slot] = Entry { a: key.a, b: key.b, len: key.len as u32, value };
            }
        }
        Some(table)
    }

    #[inline(always)]
    fn bucket(&self, hash: u64) -> usize {
        (hash >> 32) as usize & (self.displace.len() - 1)
    }

    #[inline(always)]
    fn slot(&self, hash: u64, displace: u32) -> usize {
        ((hash ^ u64::from(displace).wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xFF51_AFD7_ED55_8CCD)
            >> self.shift) as usize
    }

    #[inline(always)]
    fn get(&self, key: &str) -> Option<u32> {
        self.get_bytes(key.as_bytes())
    }

    #[inline(always)]
    fn get_bytes(&self, key: &[u8]) -> Option<u32> {
        match Short::new(key) {
            Some(short) if !self.all_long => self.get_short(short),
            _ => self.get_long(key),
        }
    }

    #[inline(never)]
    fn get_long(&self, key: &[u8]) -> Option<u32> {
        self.long.get(key).copied()
    }

    /// The lookup of a key already made a [`Short`].
    #[inline(always)]
    fn get_short(&self, key: Short) -> Option<u32> {
        let hash = key.hash();
        let displace = self.displace.get(self.bucket(hash)).copied().unwrap_or_default();
        let entry = self.slots.get(self.slot(hash, displace)).copied().unwrap_or(Entry::EMPTY);
        entry.holds(key).then_some(entry.value)
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "one per field, read on the hot path: boxing the string tables would cost a pointer chase per value"
)]
enum Slot {
    Enum(Table),
    Bool,
    Str {
        literals: Table,
        prefixes: Affixes,
        suffixes: Affixes,
        /// Class id at `(1 + prefix index, or 0) * (suffixes + 1) + (1 + suffix index, or 0)`.
        others: Vec<u32>,
    },
    Number {
        value_offset: usize,
        scale: Scale,
        min: i64,
        max: i64,
    },
}

/// Encodes leads for one manifest.
pub struct Encoder {
    fields: Vec<(String, usize, Slot)>,
    /// Field name → index in `fields`.
    by_name: Table,
    /// Field indexes by name in byte order (the order a `serde_json::Map` iterates in), each
    /// with its name as a [`Short`] (`Short::EMPTY` if longer), then two entries that match no
    /// key, for the lockstep walk in [`Encoder::encode_map`].
    sorted: Vec<(Short, usize)>,
    /// Field index → its place in `sorted`.
    rank: Vec<usize>,
    record_size: usize,
}

/// A string field's prefixes (or suffixes): the longest one a value starts (ends) with is
/// found with one table lookup per distinct affix length, longest first.
struct Affixes {
    /// Distinct lengths, longest first.
    lengths: Vec<usize>,
    /// Affix → its index in the manifest's list.
    table: Table,
    at_end: bool,
}

impl Affixes {
    fn new(affixes: &[String], at_end: bool) -> Self {
        let mut lengths: Vec<usize> = affixes.iter().map(String::len).collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        Self { lengths, table: Table::new(affixes.iter().cloned().zip(0..)), at_end }
    }

    fn len(&self) -> usize {
        self.table.len
    }

    /// Index of the longest affix of `s`.
    #[inline(always)]
    fn longest(&self, s: &str) -> Option<usize> {
        if self.lengths.is_empty() {
            return None;
        }
        self.search(s.as_bytes())
    }

    #[inline(never)]
    fn search(&self, s: &[u8]) -> Option<usize> {
        for &l in &self.lengths {
            let part = match self.at_end {
                true => s.len().checked_sub(l).and_then(|from| s.get(from..)),
                false => s.get(..l),
            };
            if let Some(found) = part.and_then(|part| self.table.get_bytes(part)) {
                return Some(found as usize);
            }
        }
        None
    }
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
                prefixes: Affixes::new(prefixes, false),
                suffixes: Affixes::new(suffixes, true),
                others: table,
            }
        }
        FieldKind::Number { value_offset, scale, min, max } => {
            Slot::Number { value_offset: *value_offset, scale: Scale::new(*scale), min: *min, max: *max }
        }
    }
}

impl Encoder {
    /// Builds the lookup tables of `manifest`.
    pub fn new(manifest: &Manifest) -> Self {
        let fields: Vec<(String, usize, Slot)> =
            manifest.fields.iter().map(|f| (f.name.clone(), f.slot, slot(&f.kind))).collect();
        let by_name = Table::new(fields.iter().map(|(name, _, _)| name.clone()).zip(0..));
        let mut by_bytes: Vec<(&str, usize)> =
            fields.iter().enumerate().map(|(i, (name, _, _))| (name.as_str(), i)).collect();
        by_bytes.sort_unstable();
        let mut sorted: Vec<(Short, usize)> =
            by_bytes.iter().map(|(name, i)| (Short::new(name.as_bytes()).unwrap_or(Short::EMPTY), *i)).collect();
        let mut rank = vec![0; fields.len()];
        for (place, (_, index)) in sorted.iter().enumerate() {
            rank[*index] = place;
        }
        sorted.extend([(Short::EMPTY, 0); 2]);
        Self { fields, by_name, sorted, rank, record_size: manifest.record_size }
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
        // A map iterates its keys in byte order, and a lead's keys are mostly the schema's
        // fields: so the next key is most likely the field after the last one found (or one
        // after that, when a field is missing). Checking those costs a length and a word compare
        // or two; only other keys pay for a table lookup.
        let mut next = 0;
        for (key, value) in object {
            self.step(key, value, &mut next, out)?;
        }
        Ok(())
    }

    /// One key of a lead: its field (if it is one) into `out`. `next` is where the schema walk
    /// stands.
    #[inline(always)]
    fn step(&self, key: &str, value: &Value, next: &mut usize, out: &mut [u8]) -> Result<()> {
        let index = match Short::new(key.as_bytes()) {
            Some(short) if self.sorted[*next].0 == short => self.sorted[*next].1,
            Some(short) if self.sorted[*next + 1].0 == short => self.sorted[*next + 1].1,
            _ => match self.by_name.get(key) {
                Some(index) => index as usize,
                None => return Ok(()),
            },
        };
        *next = self.rank[index] + 1;
        if value.is_null() { Ok(()) } else { self.encode_field(index, value, out) }
    }

    /// Checks every field of `lead` against the manifest's schema, as [`Encoder::encode`]
    /// would read it, and returns each problem (not just the first) as (field, problem).
    /// Keys that are not fields, and `null`s, are fine.
    pub fn problems(&self, lead: &serde_json::Map<String, Value>) -> Vec<(String, String)> {
        let mut scratch = vec![0u8; self.record_size];
        let mut problems = Vec::new();
        for (key, value) in lead {
            let Some(index) = self.by_name.get(key) else { continue };
            let index = index as usize;
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

    /// Writes one field's class (and number) into `out`, or says what is wrong with `value`.
    #[inline]
    fn encode_field(&self, index: usize, value: &Value, out: &mut [u8]) -> Result<()> {
        match self.write_field(index, value, out) {
            Some(()) => Ok(()),
            None => Err(self.field_error(index, value)),
        }
    }

    /// The hot path of [`Encoder::encode_field`]: `None` when `value` does not fit the field
    /// (the reason is worked out apart, so no error is built or moved here).
    #[inline(always)]
    fn write_field(&self, index: usize, value: &Value, out: &mut [u8]) -> Option<()> {
        let (_, slot, kind) = &self.fields[index];
        let class = match kind {
            Slot::Enum(values) => values.get(value.as_str()?)?,
            Slot::Bool => 1 + u32::from(value.as_bool()?),
            Slot::Str { literals, prefixes, suffixes, others } => {
                let s = value.as_str()?;
                match literals.get(s) {
                    Some(id) => id,
                    None => {
                        let p = prefixes.longest(s).map_or(0, |i| i + 1);
                        let x = suffixes.longest(s).map_or(0, |i| i + 1);
                        others.get(p * (suffixes.len() + 1) + x).copied().filter(|&id| id != 0)?
                    }
                }
            }
            Slot::Number { value_offset, scale, min, max } => {
                let units = i64::try_from(units_of(value, *scale)?).ok().filter(|u| (*min..=*max).contains(u))?;
                out.get_mut(*value_offset..value_offset + 8)?.copy_from_slice(&units.to_le_bytes());
                1
            }
        };
        out.get_mut(*slot..slot + 4)?.copy_from_slice(&class.to_le_bytes());
        Some(())
    }

    /// Why `value` does not fit field `index` (the cold path of [`Encoder::encode_field`]).
    #[cold]
    fn field_error(&self, index: usize, value: &Value) -> Error {
        let (name, _, kind) = &self.fields[index];
        let problem = match (kind, value) {
            (Slot::Enum(_), Value::String(s)) => format!("`{s}` is not one of the field's values"),
            (Slot::Str { .. }, Value::String(s)) => format!("no class for `{s}` (manifest incomplete)"),
            (Slot::Enum(_) | Slot::Str { .. }, _) => format!("expected a string, got {value}"),
            (Slot::Bool, _) => format!("expected true or false, got {value}"),
            (Slot::Number { .. }, Value::Number(_) | Value::String(_)) => match kind {
                Slot::Number { scale, .. } if units_of(value, *scale).is_none() => {
                    format!("`{value}` is not exact with {} digits after the point", scale.digits)
                }
                _ => format!("`{value}` is outside the field's domain"),
            },
            (Slot::Number { .. }, _) => format!("expected a number, got {value}"),
        };
        Error::Encode { field: name.clone(), problem }
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
        let units = |value: serde_json::Value, scale| units_of(&value, Scale::new(scale));
        assert_eq!(units(serde_json::json!(15000.5), 2), Some(1_500_050));
        assert_eq!(units(serde_json::json!(0.1), 1), Some(1));
        assert_eq!(units(serde_json::json!(0.15), 1), None);
        assert_eq!(units(serde_json::json!(0.29), 2), Some(29));
        assert_eq!(units(serde_json::json!(-0.29), 2), Some(-29));
        assert_eq!(units(serde_json::json!(-2.5), 0), None);
        assert_eq!(units(serde_json::json!(-2.5), 1), Some(-25));
        assert_eq!(units(serde_json::json!(1e300), 2), None);
        assert_eq!(units(serde_json::json!("7.25"), 2), Some(725));
        assert_eq!(units(serde_json::json!(7), 2), Some(700));
        assert_eq!(units(serde_json::json!(7), 19), Some(70_000_000_000_000_000_000));
        assert_eq!(units(serde_json::json!(i64::MAX), 2), Some(i128::from(i64::MAX) * 100));
    }

    #[test]
    fn affixes_and_equality() {
        let list = |v: &[&str], at_end| Affixes::new(&v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(), at_end);
        assert_eq!(list(&["9", "90", "1"], false).longest("90210"), Some(1));
        assert_eq!(list(&["9", "90"], false).longest("80210"), None);
        assert_eq!(list(&["902100"], false).longest("90210"), None);
        assert_eq!(list(&[".edu", "u"], true).longest("mit.edu"), Some(0));
        assert_eq!(list(&["a-very-long-prefix-indeed", "a"], false).longest("a-very-long-prefix-indeed!"), Some(0));
        // Affixes are bytes: a cut inside a character finds nothing and does not panic.
        assert_eq!(list(&["é"], true).longest("café"), Some(0));
        assert_eq!(list(&["x"], true).longest("é"), None);
    }

    #[test]
    fn tables_find_exactly_their_keys_of_every_length() {
        let keys: Vec<String> =
            (0..40).map(|n| "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH"[..n].to_owned()).collect();
        let table = Table::new(keys.iter().cloned().zip(0..));
        for (i, key) in (0u32..).zip(&keys) {
            assert_eq!(table.get(key), Some(i), "{key:?}");
            // Same length, one byte different, at the start, the middle and the end.
            for at in [0, key.len() / 2, key.len().saturating_sub(1)] {
                if let Some(byte) = key.as_bytes().get(at) {
                    let mut other = key.clone().into_bytes();
                    other[at] = byte ^ 0x20;
                    assert_eq!(table.get(&String::from_utf8(other).expect("ascii")), None, "{key:?} at {at}");
                }
            }
        }
        assert_eq!(table.get("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHI"), None);
    }

    #[test]
    fn large_tables_place_every_key_and_only_those() {
        let keys: Vec<String> = (0..5000).map(|n| format!("k{}", n * 7919)).collect();
        let table = Table::new(keys.iter().cloned().zip(0..));
        assert!(!table.all_long);
        for (i, key) in (0u32..).zip(&keys) {
            assert_eq!(table.get(key), Some(i), "{key:?}");
        }
        assert_eq!((0..5000).filter(|n| table.get(&format!("x{n}")).is_some()).count(), 0);
        // Duplicated keys keep their first value.
        let table = Table::new([("a".to_owned(), 1), ("a".to_owned(), 2)]);
        assert_eq!(table.get("a"), Some(1));
    }

    #[test]
    fn a_table_of_long_keys_only_still_finds_short_ones() {
        // What `Table::new` falls back to if no displacement separates the short keys.
        let long: HashMap<Box<[u8]>, u32> = [(b"CA".as_slice(), 1), (b"NY", 2)].map(|(k, v)| (k.into(), v)).into();
        let table = Table { len: 2, long, ..Table::empty() };
        assert_eq!((table.get("CA"), table.get("NY"), table.get("TX")), (Some(1), Some(2), None));
    }
}
