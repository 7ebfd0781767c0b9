//! Encoding a lead (JSON) into the module's input record, per the manifest's tables. Exact:
//! decimals are parsed from their text, never through floating point.

use std::collections::HashMap;

use serde_json::Value;

use crate::manifest::{FieldKind, Manifest};
use crate::{Error, Result};

/// Parses a decimal written as text (`12`, `-3.50`) into units of `10^-scale`; `None` if
/// it is not a number or not exact at that scale.
pub fn parse_units(text: &str, scale: u32) -> Option<i128> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = int.strip_prefix('-').unwrap_or(int);
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 30
    {
        return None;
    }
    let mantissa: i128 = format!("{int}{frac}").parse().ok()?;
    let given = u32::try_from(frac.len()).ok()?;
    if given <= scale {
        mantissa.checked_mul(10i128.checked_pow(scale - given)?)
    } else {
        let div = 10i128.checked_pow(given - scale)?;
        (mantissa % div == 0).then(|| mantissa / div)
    }
}

enum Slot {
    Enum(HashMap<String, u32>),
    Bool,
    Str {
        literals: HashMap<String, u32>,
        prefixes: Vec<String>,
        suffixes: Vec<String>,
        others: HashMap<(Option<usize>, Option<usize>), u32>,
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
    record_size: usize,
}

fn longest(candidates: &[String], test: impl Fn(&str) -> bool) -> Option<usize> {
    candidates.iter().enumerate().filter(|(_, c)| test(c)).max_by_key(|(_, c)| c.len()).map(|(i, _)| i)
}

impl Encoder {
    /// Builds the lookup tables of `manifest`.
    pub fn new(manifest: &Manifest) -> Self {
        let fields = manifest
            .fields
            .iter()
            .map(|f| {
                let slot = match &f.kind {
                    FieldKind::Enum { values } => {
                        Slot::Enum(values.iter().enumerate().map(|(i, v)| (v.clone(), i as u32 + 1)).collect())
                    }
                    FieldKind::Bool => Slot::Bool,
                    FieldKind::String { literals, prefixes, suffixes, others } => {
                        let index = |list: &[String], value: &Option<String>| {
                            value.as_ref().and_then(|v| list.iter().position(|x| x == v))
                        };
                        Slot::Str {
                            literals: literals.iter().enumerate().map(|(i, v)| (v.clone(), i as u32 + 1)).collect(),
                            others: others
                                .iter()
                                .enumerate()
                                .map(|(k, o)| {
                                    (
                                        (index(prefixes, &o.prefix), index(suffixes, &o.suffix)),
                                        (literals.len() + k + 1) as u32,
                                    )
                                })
                                .collect(),
                            prefixes: prefixes.clone(),
                            suffixes: suffixes.clone(),
                        }
                    }
                    FieldKind::Number { value_offset, scale, min, max } => {
                        Slot::Number { value_offset: *value_offset, scale: *scale, min: *min, max: *max }
                    }
                };
                (f.name.clone(), f.slot, slot)
            })
            .collect();
        Self { fields, record_size: manifest.record_size }
    }

    /// Bytes per record.
    pub fn record_size(&self) -> usize {
        self.record_size
    }

    /// Writes `lead`'s record into `out` (at least `record_size` bytes). Keys that are not
    /// fields are ignored; `null` and absent keys are "missing".
    pub fn encode(&self, lead: &Value, out: &mut [u8]) -> Result<()> {
        let object = lead.as_object().ok_or(Error::NotAnObject)?;
        let out = &mut out[..self.record_size];
        out.fill(0);
        for (name, slot, kind) in &self.fields {
            let value = match object.get(name) {
                None | Some(Value::Null) => continue,
                Some(v) => v,
            };
            let bad = |problem: String| Error::Encode { field: name.clone(), problem };
            let class = match kind {
                Slot::Enum(map) => {
                    let s = value.as_str().ok_or_else(|| bad(format!("expected a string, got {value}")))?;
                    *map.get(s).ok_or_else(|| bad(format!("`{s}` is not one of the field's values")))?
                }
                Slot::Bool => {
                    1 + u32::from(value.as_bool().ok_or_else(|| bad(format!("expected true or false, got {value}")))?)
                }
                Slot::Str { literals, prefixes, suffixes, others } => {
                    let s = value.as_str().ok_or_else(|| bad(format!("expected a string, got {value}")))?;
                    match literals.get(s) {
                        Some(id) => *id,
                        None => {
                            let key = (longest(prefixes, |p| s.starts_with(p)), longest(suffixes, |x| s.ends_with(x)));
                            *others.get(&key).ok_or_else(|| bad(format!("no class for `{s}` (manifest incomplete)")))?
                        }
                    }
                }
                Slot::Number { value_offset, scale, min, max } => {
                    let text = match value {
                        Value::Number(n) => n.to_string(),
                        Value::String(s) => s.clone(),
                        _ => return Err(bad(format!("expected a number, got {value}"))),
                    };
                    let units = parse_units(&text, *scale)
                        .ok_or_else(|| bad(format!("`{text}` is not exact with {scale} digits after the point")))?;
                    let units = i64::try_from(units)
                        .ok()
                        .filter(|u| (*min..=*max).contains(u))
                        .ok_or_else(|| bad(format!("`{text}` is outside the field's domain")))?;
                    out[*value_offset..value_offset + 8].copy_from_slice(&units.to_le_bytes());
                    1
                }
            };
            out[*slot..slot + 4].copy_from_slice(&class.to_le_bytes());
        }
        Ok(())
    }
}
