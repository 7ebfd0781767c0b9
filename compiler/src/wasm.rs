//! Wasm emission (wasm-encoder) of a decision DAG, following the `abi` crate, and the checks
//! every emitted module must pass: valid (wasmparser), no imports, no loop outside the batch
//! loops of `decide_batch`.
//!
//! The DAG is emitted as data, walked by straight-line code without a branch, so the time of
//! a decision does not depend on how predictable the leads are:
//! - every test node is a **row** of 4-byte entries in the module's memory, one per class
//!   of its field; entry `c` is the state after the node for class `c`: the record slot the
//!   next node tests (in words, in the high bits) and the word where that node's row starts.
//!   A leaf's row loops to itself on every class of one chosen field (the "leaf field", the
//!   narrowest tested one) and holds its answer after its entries: the index of its
//!   candidate list in `Dag::decisions`, which is the manifest's `candidate_lists` (0: the
//!   empty list, no rule matched; `n >= 1`: list `n`, the first `k` matching rules);
//! - a step of the walk loads the class at the state's slot, then the entry at
//!   `row + class`. The code makes as many steps as the longest path needs (a path that ends
//!   sooner stays on its leaf), then reads the answer after the leaf's row;
//! - a number field is first turned into its interval (atom) in place, in its presence slot:
//!   a lookup table of atoms indexed by `value - min` when the field's domain is small, else
//!   a branch-free binary search over its cut points. A field with many intervals is tested
//!   in two steps, the high part of the interval and then, only where that does not decide,
//!   the low part (in the first word of its value slot), so its rows stay small;
//! - `decide_batch` walks [`LANES`] leads side by side, so their loads overlap; the few leads
//!   of a batch past the last full group go through `decide` one by one.

use std::collections::{HashMap, VecDeque};

use abi::{ABI_VERSION, EXPORT_DECIDE, EXPORT_DECIDE_BATCH, EXPORT_MEMORY, EXPORT_VERSION, Layout};
use petgraph::graph::NodeIndex;
use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, DataSection, ExportKind, ExportSection, Function, FunctionSection,
    InstructionSink, MemArg, MemorySection, MemoryType, Module, TypeSection, ValType,
};

use crate::atoms::{Atoms, FieldAtoms};
use crate::dag::{Dag, Node};
use crate::{Error, Result};

/// Records one `decide_batch` call takes.
pub const MAX_BATCH: usize = 1024;
/// Leads `decide_batch` walks side by side (`MAX_BATCH` is a multiple of it).
pub const LANES: usize = 16;
/// Number fields with at most this many values in their domain get an atom lookup table.
const DIRECT_LIMIT: i128 = 4096;

/// Where things are in the module's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The record layout.
    pub layout: Layout,
    /// Records per batch.
    pub max_batch: usize,
    /// Start of the batch results.
    pub output_offset: usize,
    /// Start of the DAG's tables (after the results).
    pub tables_offset: usize,
}

impl MemoryPlan {
    /// The plan for these atoms' fields.
    pub fn new(atoms: &Atoms) -> Self {
        let numbers = atoms.fields.iter().filter(|f| matches!(f, FieldAtoms::Numeric { .. })).count();
        let layout = Layout { fields: atoms.fields.len(), numbers };
        let output_offset = (layout.record_size() * MAX_BATCH).next_multiple_of(8);
        let tables_offset = (output_offset + 4 * MAX_BATCH).next_multiple_of(64);
        Self { layout, max_batch: MAX_BATCH, output_offset, tables_offset }
    }
}

const FN_VERSION: u32 = 0;
const FN_DECIDE: u32 = 1;
const FN_BATCH: u32 = 2;

/// How a number field's value becomes its atom.
#[derive(Debug, Clone, Copy)]
enum Classify {
    /// `atoms[value - min]` (u16), the index clamped to the domain.
    Direct { table: u32, min: i64, size: i64 },
    /// 1 + how many of the `count` cut points (i64, ascending) at `cuts` are `<=` the value.
    Search { cuts: u32, count: usize },
}

impl Classify {
    /// The classifier of a number field cut at `bounds` (see `FieldAtoms::Numeric`), its
    /// table appended to `data` (which goes at `base`).
    fn new(bounds: &[i128], data: &mut Vec<u8>, base: usize) -> Self {
        let addr = |data: &Vec<u8>| u32::try_from(base + data.len()).unwrap_or(u32::MAX);
        let (min, max) = (bounds[0], bounds[bounds.len() - 1] - 1);
        if max - min < DIRECT_LIMIT {
            let table = addr(data);
            let mut atom = 1u16;
            for v in min..=max {
                while bounds[usize::from(atom)] <= v {
                    atom += 1;
                }
                data.extend_from_slice(&atom.to_le_bytes());
            }
            Classify::Direct { table, min: min as i64, size: (max - min + 1) as i64 }
        } else {
            data.resize(data.len().next_multiple_of(8), 0);
            let cuts = addr(data);
            let interior = &bounds[1..bounds.len() - 1];
            for &cut in interior {
                data.extend_from_slice(&i64::try_from(cut).unwrap_or(i64::MAX).to_le_bytes());
            }
            Classify::Search { cuts, count: interior.len() }
        }
    }
}

/// A number field some node tests.
#[derive(Debug, Clone, Copy)]
struct Number {
    /// Offset of its presence slot, where its atom (or, split, `atom >> lo_bits`) goes.
    slot: u32,
    /// Offset of its value; split, `atom & (2^lo_bits - 1)` goes in its first 4 bytes.
    value: u32,
    classify: Classify,
    /// Set when the field has so many atoms that a row per node would be large: its nodes
    /// then test the high part of the atom, and the low part where that does not decide.
    lo_bits: Option<u32>,
}

/// Fields with more atoms than this are tested in two steps (see [`Number::lo_bits`]).
const SPLIT_ABOVE: usize = 64;

/// The DAG laid out as memory: its tables, and what the code needs to walk them.
struct Image {
    /// Bytes placed at `plan.tables_offset`.
    data: Vec<u8>,
    /// The root's entry.
    start: u32,
    /// Steps that reach a leaf from anywhere.
    depth: usize,
    /// An entry is `slot / 4 << shift | row`.
    shift: u32,
    /// Where the rows start (bytes).
    rows_offset: u32,
    /// Offset of a leaf's answer from its row (bytes).
    answer: u32,
    numbers: Vec<Number>,
}

impl Image {
    fn new(dag: &Dag, atoms: &Atoms, plan: &MemoryPlan) -> Result<Image> {
        let base = plan.tables_offset;
        let mut data: Vec<u8> = Vec::new();
        let slot = |field: usize| plan.layout.slot(field) as u32;

        let (tests, leaves) = breadth_first(dag);

        // Number fields first: their classification tables.
        let mut numbers = Vec::new();
        // Per split field: its low-part bits and the slot its low part goes in.
        let mut split: Vec<Option<(u32, u32)>> = vec![None; atoms.fields.len()];
        let mut number = 0;
        for (field, kind) in atoms.fields.iter().enumerate() {
            let FieldAtoms::Numeric { bounds } = kind else { continue };
            let value = plan.layout.value(number) as u32;
            number += 1;
            if !tests.iter().any(|&(_, f)| f == field) {
                continue;
            }
            let classify = Classify::new(bounds, &mut data, base);
            // About as many high parts as low ones.
            let len = kind.len();
            let lo_bits = (len > SPLIT_ABOVE).then(|| (usize::BITS - (len - 1).leading_zeros()).div_ceil(2));
            split[field] = lo_bits.map(|lo| (lo, value));
            numbers.push(Number { slot: slot(field), value, classify, lo_bits });
        }
        data.resize(data.len().next_multiple_of(64), 0);
        // Classes a node's row is indexed by.
        let width = |field: usize| match split[field] {
            Some((lo, _)) => atoms.fields[field].len().div_ceil(1 << lo),
            None => atoms.fields[field].len(),
        };

        // The leaf field: the tested field with the narrowest rows (leaf rows are that wide).
        let leaf_field = tests.iter().map(|&(_, f)| f).min_by_key(|&f| (width(f), f));
        let leaf_width = leaf_field.map_or(1, width);
        let leaf_slot = leaf_field.map_or(0, slot);

        // Each test node's child per atom (every atom has one; should one not, any will do).
        let targets: Vec<Vec<NodeIndex>> = tests
            .iter()
            .map(|&(node, field)| {
                let children = dag.children(node);
                (0..atoms.fields[field].len())
                    .map(|atom| {
                        children.iter().find(|(set, _)| set.contains(atom)).or(children.first()).map_or(node, |c| c.1)
                    })
                    .collect()
            })
            .collect();
        // For split fields, the high parts whose atoms lead to more than one child: they need a
        // row of their low parts.
        let lo_rows: Vec<Vec<usize>> = tests
            .iter()
            .zip(&targets)
            .map(|(&(_, field), targets)| match split[field] {
                None => Vec::new(),
                Some((lo, _)) => (0..width(field))
                    .filter(|&hi| {
                        let part = &targets[(hi << lo).min(targets.len())..((hi + 1) << lo).min(targets.len())];
                        part.iter().any(|t| *t != part[0])
                    })
                    .collect(),
            })
            .collect();

        // Rows, from `rows_offset`, in words: a row is one entry per class, a leaf's row then
        // its answer. An entry is the next node's slot (in words, shifted by `shift`) and the
        // word where its row starts.
        let rows_offset = base + data.len();
        let slot_words = plan.layout.record_size().div_ceil(4).max(1);
        let shift = 32 - (usize::BITS - slot_words.leading_zeros());
        let mut rows: HashMap<NodeIndex, u32> = HashMap::new();
        let mut at = 0usize;
        for (&(node, field), mixed) in tests.iter().zip(&lo_rows) {
            rows.insert(node, at as u32);
            at += width(field) + split[field].map_or(0, |(lo, _)| mixed.len() << lo);
        }
        for &(leaf, _) in &leaves {
            rows.insert(leaf, at as u32);
            at += leaf_width + 1;
        }
        if at >= 1 << shift || rows_offset + 4 * at > u32::MAX as usize {
            return Err(Error::TooLarge(format!("{at} words of decision tables")));
        }
        let entry = |slot: u32, row: u32| (slot / 4) << shift | row;
        let state = |node: &NodeIndex| match dag.graph[*node] {
            Node::Test { field } => entry(slot(field), rows[node]),
            Node::Leaf(_) => entry(leaf_slot, rows[node]),
        };

        let word = |data: &mut Vec<u8>, w: u32| data.extend_from_slice(&w.to_le_bytes());
        for ((&(node, field), targets), mixed) in tests.iter().zip(&targets).zip(&lo_rows) {
            match split[field] {
                None => targets.iter().for_each(|t| word(&mut data, state(t))),
                Some((lo, lo_slot)) => {
                    // High parts, then the low-part rows of the mixed ones, in order.
                    let mut next = rows[&node] + width(field) as u32;
                    for hi in 0..width(field) {
                        if mixed.contains(&hi) {
                            word(&mut data, entry(lo_slot, next));
                            next += 1 << lo;
                        } else {
                            word(&mut data, state(&targets[(hi << lo).min(targets.len() - 1)]));
                        }
                    }
                    for &hi in mixed {
                        for low in 0..1usize << lo {
                            word(&mut data, state(&targets[((hi << lo) + low).min(targets.len() - 1)]));
                        }
                    }
                }
            }
        }
        for &(leaf, list) in &leaves {
            if list >= dag.decisions.len() {
                return Err(Error::InvalidModule(format!("a leaf names candidate list {list}, outside the table")));
            }
            for _ in 0..leaf_width {
                word(&mut data, state(&leaf));
            }
            word(&mut data, u32::try_from(list).map_err(|_| Error::TooLarge(format!("{list} candidate lists")))?);
        }
        Ok(Image {
            data,
            start: state(&dag.root),
            depth: steps(dag, dag.root, &split, &mut HashMap::new()),
            shift,
            rows_offset: rows_offset as u32,
            answer: 4 * leaf_width as u32,
            numbers,
        })
    }
}

/// Test nodes with their field, and leaves with their candidate list's index.
type Nodes = (Vec<(NodeIndex, usize)>, Vec<(NodeIndex, usize)>);

/// The DAG's test nodes and leaves, breadth first from the root, so the rows near the root
/// (the hottest) are together.
fn breadth_first(dag: &Dag) -> Nodes {
    let mut tests = Vec::new();
    let mut leaves = Vec::new();
    let mut seen = vec![false; dag.graph.node_count()];
    let mut queue = VecDeque::from([dag.root]);
    seen[dag.root.index()] = true;
    while let Some(node) = queue.pop_front() {
        match dag.graph[node] {
            Node::Leaf(decision) => leaves.push((node, decision)),
            Node::Test { field } => {
                tests.push((node, field));
                for child in dag.graph.neighbors(node) {
                    if !std::mem::replace(&mut seen[child.index()], true) {
                        queue.push_back(child);
                    }
                }
            }
        }
    }
    (tests, leaves)
}

/// Steps of the longest walk from `node` to a leaf (a split field's test takes two).
fn steps(dag: &Dag, node: NodeIndex, split: &[Option<(u32, u32)>], memo: &mut HashMap<NodeIndex, usize>) -> usize {
    if let Some(&known) = memo.get(&node) {
        return known;
    }
    let result = match dag.graph[node] {
        Node::Leaf(_) => 0,
        Node::Test { field } => {
            let deepest = dag.graph.neighbors(node).map(|c| steps(dag, c, split, memo)).max().unwrap_or(0);
            1 + usize::from(split[field].is_some()) + deepest
        }
    };
    memo.insert(node, result);
    result
}

fn mem(offset: u32, align: u32) -> MemArg {
    MemArg { offset: u64::from(offset), align, memory_index: 0 }
}

/// Locals of the straight-line decision code.
#[derive(Debug, Clone, Copy)]
struct Locals {
    /// The first lead's record (i32); lead `j`'s is `record_size * j` further.
    record: u32,
    /// An i64 scratch.
    value: u32,
    /// An i32 scratch.
    temp: u32,
    /// Lane `j`'s row (i32) is local `rows + j`.
    rows: u32,
}

struct Emitter<'a> {
    image: &'a Image,
    record_size: u32,
}

impl Emitter<'_> {
    /// Turns lane `lane`'s number fields into atoms, in their presence slots (see
    /// [`Number`]).
    fn classify(&self, sink: &mut InstructionSink<'_>, locals: Locals, lane: u32) {
        let at = lane * self.record_size;
        for number in &self.image.numbers {
            sink.local_get(locals.record).i64_load(mem(at + number.value, 3)).local_set(locals.value);
            match number.classify {
                Classify::Direct { table, min, size } => {
                    // index = value - min, clamped (unsigned) into the domain.
                    sink.local_get(locals.value).i64_const(min).i64_sub().local_tee(locals.value);
                    sink.i64_const(size - 1).local_get(locals.value).i64_const(size).i64_lt_u().select();
                    sink.i32_wrap_i64().i32_const(1).i32_shl().i32_load16_u(mem(table, 1));
                }
                Classify::Search { cuts, count } => {
                    // base: byte offset of the window; the answer is in [base, base + n] cuts.
                    sink.i32_const(0).local_set(locals.temp);
                    let mut n = count;
                    while n > 1 {
                        let half = (n / 2) as u32;
                        sink.local_get(locals.temp).i32_const(8 * half as i32).i32_add();
                        sink.local_get(locals.temp);
                        sink.local_get(locals.temp).i64_load(mem(cuts + 8 * half, 3));
                        sink.local_get(locals.value).i64_le_s().select().local_set(locals.temp);
                        n -= n / 2;
                    }
                    sink.local_get(locals.temp).i32_const(3).i32_shr_u().i32_const(1).i32_add();
                    if count > 0 {
                        sink.local_get(locals.temp).i64_load(mem(cuts, 3));
                        sink.local_get(locals.value).i64_le_s().i32_add();
                    }
                }
            }
            // Missing stays 0.
            sink.i32_const(0);
            sink.local_get(locals.record).i32_load(mem(at + number.slot, 2));
            sink.select().local_set(locals.temp);
            match number.lo_bits {
                None => {
                    sink.local_get(locals.record).local_get(locals.temp).i32_store(mem(at + number.slot, 2));
                }
                Some(lo) => {
                    sink.local_get(locals.record);
                    sink.local_get(locals.temp).i32_const(lo as i32).i32_shr_u().i32_store(mem(at + number.slot, 2));
                    sink.local_get(locals.record);
                    sink.local_get(locals.temp).i32_const((1 << lo) - 1).i32_and().i32_store(mem(at + number.value, 2));
                }
            }
        }
    }

    /// Decides `lanes` consecutive records at `locals.record`, leaving each answer in its
    /// lane's row local.
    fn walk(&self, sink: &mut InstructionSink<'_>, locals: Locals, lanes: u32) {
        for lane in 0..lanes {
            self.classify(sink, locals, lane);
        }
        let image = self.image;
        let mask = ((1u64 << image.shift) - 1) as i32;
        for lane in 0..lanes {
            sink.i32_const(image.start as i32).local_set(locals.rows + lane);
        }
        for _ in 0..image.depth {
            for lane in 0..lanes {
                // entry = rows[row(entry) + record[slot(entry)]]
                let entry = locals.rows + lane;
                sink.local_get(locals.record);
                sink.local_get(entry).i32_const(image.shift as i32).i32_shr_u().i32_const(2).i32_shl().i32_add();
                sink.i32_load(mem(lane * self.record_size, 2));
                sink.local_get(entry).i32_const(mask).i32_and().i32_add().i32_const(2).i32_shl();
                sink.i32_load(mem(image.rows_offset, 2)).local_set(entry);
            }
        }
        for lane in 0..lanes {
            let entry = locals.rows + lane;
            sink.local_get(entry).i32_const(mask).i32_and().i32_const(2).i32_shl();
            sink.i32_load(mem(image.rows_offset + image.answer, 2)).local_set(entry);
        }
    }

    /// `decide(record) -> i32`.
    fn decide(&self) -> Function {
        // locals: 0 = record, 1 = value, 2 = temp, 3 = row
        let mut f = Function::new([(1, ValType::I64), (2, ValType::I32)]);
        let locals = Locals { record: 0, value: 1, temp: 2, rows: 3 };
        let mut sink = f.instructions();
        self.walk(&mut sink, locals, 1);
        sink.local_get(locals.rows).end();
        f
    }

    /// `decide_batch(records, count, out)`: groups of [`LANES`] leads, then one by one.
    fn batch(&self) -> Function {
        // locals: 0 = records, 1 = count, 2 = out, 3 = record, 4 = end of the groups,
        // 5 = value, 6 = temp, 7.. = rows
        let mut f = Function::new([(2, ValType::I32), (1, ValType::I64), (1 + LANES as u32, ValType::I32)]);
        let locals = Locals { record: 3, value: 5, temp: 6, rows: 7 };
        let (size, lanes) = (self.record_size as i32, LANES as i32);
        let mut sink = f.instructions();
        sink.local_get(0).local_set(3);
        sink.local_get(0).local_get(1).i32_const(-lanes).i32_and().i32_const(size).i32_mul().i32_add().local_set(4);
        sink.block(BlockType::Empty).loop_(BlockType::Empty);
        sink.local_get(3).local_get(4).i32_ge_u().br_if(1);
        self.walk(&mut sink, locals, LANES as u32);
        for lane in 0..LANES as u32 {
            sink.local_get(2).local_get(locals.rows + lane).i32_store(mem(4 * lane, 2));
        }
        sink.local_get(3).i32_const(size * lanes).i32_add().local_set(3);
        sink.local_get(2).i32_const(4 * lanes).i32_add().local_set(2);
        sink.br(0).end().end();
        // The rest, one by one: end = records + count * size.
        sink.local_get(0).local_get(1).i32_const(size).i32_mul().i32_add().local_set(4);
        sink.block(BlockType::Empty).loop_(BlockType::Empty);
        sink.local_get(3).local_get(4).i32_ge_u().br_if(1);
        sink.local_get(2).local_get(3).call(FN_DECIDE).i32_store(mem(0, 2));
        sink.local_get(3).i32_const(size).i32_add().local_set(3);
        sink.local_get(2).i32_const(4).i32_add().local_set(2);
        sink.br(0).end().end();
        sink.end();
        f
    }
}

/// Emits the module for `dag` over `atoms`.
pub fn emit(dag: &Dag, atoms: &Atoms) -> Result<Vec<u8>> {
    let plan = MemoryPlan::new(atoms);
    let image = Image::new(dag, atoms, &plan)?;
    let emitter = Emitter { image: &image, record_size: plan.layout.record_size() as u32 };

    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]); // 0: abi_version
    types.ty().function([ValType::I32], [ValType::I32]); // 1: decide
    types.ty().function([ValType::I32, ValType::I32, ValType::I32], []); // 2: decide_batch
    let mut funcs = FunctionSection::new();
    funcs.function(0).function(1).function(2);
    let pages = ((plan.tables_offset + image.data.len()) as u64).div_ceil(65536).max(1);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: pages,
        maximum: Some(pages),
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports
        .export(EXPORT_VERSION, ExportKind::Func, FN_VERSION)
        .export(EXPORT_DECIDE, ExportKind::Func, FN_DECIDE)
        .export(EXPORT_DECIDE_BATCH, ExportKind::Func, FN_BATCH)
        .export(EXPORT_MEMORY, ExportKind::Memory, 0);

    let mut code = CodeSection::new();
    let mut version = Function::new([]);
    version.instructions().i32_const(ABI_VERSION as i32).end();
    code.function(&version);
    code.function(&emitter.decide());
    code.function(&emitter.batch());

    let mut data = DataSection::new();
    data.active(0, &ConstExpr::i32_const(plan.tables_offset as i32), image.data.iter().copied());

    let mut module = Module::new();
    module.section(&types).section(&funcs).section(&memories).section(&exports).section(&code).section(&data);
    Ok(module.finish())
}

/// Checks an emitted module: valid, imports nothing, and loops only in `decide_batch`.
pub fn verify(wasm: &[u8]) -> Result<()> {
    use wasmparser::{Operator, Parser, Payload};
    let bad = |why: String| Error::InvalidModule(why);
    wasmparser::Validator::new().validate_all(wasm).map_err(|e| bad(format!("does not validate: {e}")))?;
    let mut body_index = 0u32;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| bad(e.to_string()))? {
            Payload::ImportSection(imports) if imports.count() > 0 => {
                return Err(bad("it imports something".to_owned()));
            }
            Payload::CodeSectionEntry(body) => {
                let mut ops = body.get_operators_reader().map_err(|e| bad(e.to_string()))?;
                while !ops.eof() {
                    if matches!(ops.read().map_err(|e| bad(e.to_string()))?, Operator::Loop { .. })
                        && body_index != FN_BATCH
                    {
                        return Err(bad(format!("function {body_index} has a loop in the per-lead path")));
                    }
                }
                body_index += 1;
            }
            _ => {}
        }
    }
    Ok(())
}
