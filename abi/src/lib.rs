//! The decision-module contract between `compiler` and `runtime`, free of wasmtime: the
//! ABI (this file: its version, the module's exports and the input record layout), the
//! manifest stored beside each module ([`manifest`]), the encoding of a lead into its input
//! record ([`encode`]) and the hash that ties a manifest to its module ([`sha256_hex`]).
//!
//! `compiler` emits against it and `api` checks leads with it without linking a Wasm engine;
//! `runtime` re-exports it and adds the wasmtime host.
//!
//! ## The ABI, version 3
//!
//! A module imports nothing and exports:
//! - `memory`: its linear memory, at least `manifest.memory_bytes()` long;
//! - `abi_version() -> i32`: [`ABI_VERSION`];
//! - `decide(record: i32) -> i32`: decides the lead whose input record starts at byte
//!   `record`; returns the index of the lead's candidate list in the manifest's
//!   `candidate_lists`: 0 (the empty list) when no rule matched, else `n >= 1`, and
//!   `candidate_lists[n]` holds the first `max_candidates` (or fewer) matching rules as
//!   indices into the manifest's rule table, in first-match order; the first decides;
//! - `decide_batch(records: i32, count: i32, out: i32)`: decides `count` consecutive records
//!   and writes one little-endian i32 result per lead at `out`.
//!
//! An input record is `4 * fields` bytes of i32 slots, one per field in manifest order (a
//! class field's class id, 0 = missing; a number field's presence, 0 or 1), padded to 8,
//! then one i64 slot per number field (its value in units of `10^-scale`). The host writes
//! records from byte 0 and reads batch results at `manifest.output_offset`.
//!
//! The decision DAG is tables in the module's memory, walked without branches: a call may
//! overwrite the records it decides (a number field's slots become its interval), so the
//! host writes them anew for every call; a class id outside its field's classes gives an
//! unspecified answer or a trap, never an out-of-module access.
//!
//! Version 3 answers a candidate list (the waterfall's fall-through) where version 2
//! answered 1 + the first matching rule's index, with the same exports and records;
//! version 1 compiled the DAG to branches and left the records alone. This host refuses
//! both (the service recompiles the active rules at start,
//! `workers::compile::recompile_if_stale`).

use sha2::{Digest, Sha256};

pub mod encode;
pub mod manifest;

mod error;

pub use error::{Error, Result};

/// The ABI version this host speaks.
pub const ABI_VERSION: u32 = 3;
/// The most candidates a module may answer per lead (a manifest's `max_candidates`).
pub const MAX_CANDIDATES: usize = 8;
/// Export names.
pub const EXPORT_MEMORY: &str = "memory";
/// Export names.
pub const EXPORT_VERSION: &str = "abi_version";
/// Export names.
pub const EXPORT_DECIDE: &str = "decide";
/// Export names.
pub const EXPORT_DECIDE_BATCH: &str = "decide_batch";

/// Byte layout of the input record for `fields` fields of which `numbers` are numeric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Number of fields (one i32 slot each).
    pub fields: usize,
    /// Number of numeric fields (one i64 slot each).
    pub numbers: usize,
}

impl Layout {
    /// Offset of field `i`'s i32 slot.
    pub fn slot(&self, i: usize) -> usize {
        4 * i
    }

    /// Offset of the `k`th numeric field's i64 value.
    pub fn value(&self, k: usize) -> usize {
        (4 * self.fields).next_multiple_of(8) + 8 * k
    }

    /// Size of one record.
    pub fn record_size(&self) -> usize {
        (4 * self.fields).next_multiple_of(8) + 8 * self.numbers
    }
}

/// SHA-256 of bytes, lowercase hex: a manifest's `rule_set_hash` and `module_hash`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
