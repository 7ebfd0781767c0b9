//! Wasm emission (wasm-encoder) of a decision DAG, following `runtime::abi`, and the checks
//! every emitted module must pass: valid (wasmparser), no imports, no loop outside the batch
//! loop of `decide_batch`.
//!
//! A test node on a class field (enum, string, bool) is one `br_table` over its dense class
//! ids; on a number field it is a presence check and then balanced `i64.lt_s` comparisons
//! over the interval bounds. Nodes reached from several parents become functions of their
//! own (called, never duplicated); the rest is inlined, so the code grows with the DAG, not
//! with the number of paths. Every path ends in `return`, so no path loops.

use std::collections::HashMap;

use petgraph::Direction;
use petgraph::graph::NodeIndex;
use runtime::abi::{ABI_VERSION, EXPORT_DECIDE, EXPORT_DECIDE_BATCH, EXPORT_MEMORY, EXPORT_VERSION, Layout};
use wasm_encoder::{
    BlockType, CodeSection, ExportKind, ExportSection, Function, FunctionSection, InstructionSink, MemArg,
    MemorySection, MemoryType, Module, TypeSection, ValType,
};

use crate::atoms::{Atoms, FieldAtoms};
use crate::dag::{Dag, Node};
use crate::{Error, Result};

/// Records one `decide_batch` call takes.
pub const MAX_BATCH: usize = 1024;

/// Where things are in the module's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The record layout.
    pub layout: Layout,
    /// Records per batch.
    pub max_batch: usize,
    /// Start of the batch results.
    pub output_offset: usize,
    /// Pages of 64 KiB.
    pub pages: u64,
}

impl MemoryPlan {
    /// The plan for these atoms' fields.
    pub fn new(atoms: &Atoms) -> Self {
        let numbers = atoms.fields.iter().filter(|f| matches!(f, FieldAtoms::Numeric { .. })).count();
        let layout = Layout { fields: atoms.fields.len(), numbers };
        let output_offset = (layout.record_size() * MAX_BATCH).next_multiple_of(8);
        let pages = ((output_offset + 4 * MAX_BATCH) as u64).div_ceil(65536).max(1);
        Self { layout, max_batch: MAX_BATCH, output_offset, pages }
    }
}

const FN_VERSION: u32 = 0;
const FN_DECIDE: u32 = 1;
const FN_BATCH: u32 = 2;

/// Where the code of a decision leaves its answer.
#[derive(Debug, Clone, Copy)]
enum Exit {
    /// `return` it (in `decide` and the node functions).
    Return,
    /// Branch out to the enclosing `block (result i32)` this many labels up (the inlined
    /// decision in `decide_batch`'s loop).
    Break(u32),
}

/// The locals and exit of the function being emitted.
#[derive(Debug, Clone, Copy)]
struct Frame {
    /// The local holding the record's address.
    ptr: u32,
    /// The first of the i64 locals, one per number field.
    values: u32,
    exit: Exit,
}

impl Frame {
    /// The same frame `labels` blocks deeper.
    fn nested(self, labels: u32) -> Frame {
        match self.exit {
            Exit::Return => self,
            Exit::Break(depth) => Frame { exit: Exit::Break(depth + labels), ..self },
        }
    }

    fn leave(self, sink: &mut InstructionSink<'_>) {
        match self.exit {
            Exit::Return => sink.return_(),
            Exit::Break(depth) => sink.br(depth),
        };
    }
}

struct Emitter<'a> {
    dag: &'a Dag,
    atoms: &'a Atoms,
    plan: MemoryPlan,
    /// Field → its index among the number fields.
    number_index: Vec<Option<u32>>,
    /// Field → offset of its i64 value.
    value_offset: Vec<Option<usize>>,
    /// Shared test nodes → their function index.
    functions: HashMap<NodeIndex, u32>,
}

fn mem(offset: usize, align: u32) -> MemArg {
    MemArg { offset: offset as u64, align, memory_index: 0 }
}

impl Emitter<'_> {
    fn node(&self, sink: &mut InstructionSink<'_>, frame: Frame, node: NodeIndex, own_function: bool) {
        match self.dag.graph[node] {
            Node::Leaf(decision) => {
                sink.i32_const(decision.map_or(0, |p| p as i32 + 1));
                frame.leave(sink);
            }
            Node::Test { field } => {
                if let (false, Some(&index)) = (own_function, self.functions.get(&node)) {
                    sink.local_get(frame.ptr).call(index);
                    frame.leave(sink);
                    return;
                }
                let children = self.dag.children(node);
                match &self.atoms.fields[field] {
                    FieldAtoms::Numeric { bounds } => self.number(sink, frame, field, bounds, &children),
                    other => self.class(sink, frame, field, other.len(), &children),
                }
            }
        }
    }

    fn class(
        &self,
        sink: &mut InstructionSink<'_>,
        frame: Frame,
        field: usize,
        atoms: usize,
        children: &[(crate::atoms::AtomSet, NodeIndex)],
    ) {
        let group_of = |atom: usize| children.iter().position(|(set, _)| set.contains(atom)).unwrap_or(0) as u32;
        for _ in children {
            sink.block(BlockType::Empty);
        }
        sink.local_get(frame.ptr).i32_load(mem(self.plan.layout.slot(field), 2));
        let targets: Vec<u32> = (0..atoms).map(group_of).collect();
        sink.br_table(targets, group_of(0));
        let k = children.len() as u32;
        for (g, (_, child)) in children.iter().enumerate() {
            sink.end();
            self.node(sink, frame.nested(k - 1 - g as u32), *child, false);
        }
    }

    fn number(
        &self,
        sink: &mut InstructionSink<'_>,
        frame: Frame,
        field: usize,
        bounds: &[i128],
        children: &[(crate::atoms::AtomSet, NodeIndex)],
    ) {
        let child_of = |atom: usize| children.iter().find(|(set, _)| set.contains(atom)).map(|(_, c)| *c);
        let (Some(index), Some(offset)) = (self.number_index[field], self.value_offset[field]) else { return };
        let local = frame.values + index;
        // missing?
        sink.local_get(frame.ptr).i32_load(mem(self.plan.layout.slot(field), 2)).i32_eqz().if_(BlockType::Empty);
        if let Some(missing) = child_of(0) {
            self.node(sink, frame.nested(1), missing, false);
        }
        sink.end();
        sink.local_get(frame.ptr).i64_load(mem(offset, 3)).local_set(local);
        // runs of consecutive atoms with the same child: (first atom, child)
        let mut runs: Vec<(usize, NodeIndex)> = Vec::new();
        for atom in 1..bounds.len() {
            if let Some(child) = child_of(atom)
                && runs.last().is_none_or(|(_, c)| *c != child)
            {
                runs.push((atom, child));
            }
        }
        self.ranges(sink, frame, local, bounds, &runs);
    }

    fn ranges(
        &self,
        sink: &mut InstructionSink<'_>,
        frame: Frame,
        local: u32,
        bounds: &[i128],
        runs: &[(usize, NodeIndex)],
    ) {
        match runs {
            [] => {
                sink.unreachable();
            }
            [(_, child)] => self.node(sink, frame, *child, false),
            _ => {
                let mid = runs.len() / 2;
                let split = bounds[runs[mid].0 - 1];
                sink.local_get(local)
                    .i64_const(i64::try_from(split).unwrap_or(i64::MAX))
                    .i64_lt_s()
                    .if_(BlockType::Empty);
                self.ranges(sink, frame.nested(1), local, bounds, &runs[..mid]);
                sink.end();
                self.ranges(sink, frame, local, bounds, &runs[mid..]);
            }
        }
    }

    fn numbers(&self) -> u32 {
        self.number_index.iter().flatten().count() as u32
    }

    /// `decide` or a node function: `(record) -> i32`.
    fn function(&self, root: NodeIndex) -> Function {
        let mut f = Function::new([(self.numbers(), ValType::I64)]);
        let mut sink = f.instructions();
        self.node(&mut sink, Frame { ptr: 0, values: 1, exit: Exit::Return }, root, true);
        sink.unreachable().end();
        f
    }

    /// `decide_batch(records, count, out)`: the decision inlined in the loop body, each leaf
    /// branching to the store of its answer.
    fn batch(&self, root: NodeIndex) -> Function {
        // locals: 3 = i, 4 = record address, 5.. = number values
        let mut f = Function::new([(2, ValType::I32), (self.numbers(), ValType::I64)]);
        let record = self.plan.layout.record_size() as i32;
        let mut sink = f.instructions();
        sink.block(BlockType::Empty)
            .loop_(BlockType::Empty)
            .local_get(3)
            .local_get(1)
            .i32_ge_u()
            .br_if(1)
            .local_get(0)
            .local_get(3)
            .i32_const(record)
            .i32_mul()
            .i32_add()
            .local_set(4)
            .local_get(2)
            .local_get(3)
            .i32_const(4)
            .i32_mul()
            .i32_add()
            .block(BlockType::Result(ValType::I32));
        self.node(&mut sink, Frame { ptr: 4, values: 5, exit: Exit::Break(0) }, root, true);
        sink.unreachable()
            .end()
            .i32_store(mem(0, 2))
            .local_get(3)
            .i32_const(1)
            .i32_add()
            .local_set(3)
            .br(0)
            .end()
            .end()
            .end();
        f
    }
}

/// Largest shared subtree (in nodes, copies counted) that is inlined at every use.
const INLINE_LIMIT: usize = 3;

/// Nodes of the subtree under `node` if every shared node were copied (capped).
fn inline_cost(dag: &Dag, node: NodeIndex, memo: &mut HashMap<NodeIndex, usize>) -> usize {
    if let Some(&c) = memo.get(&node) {
        return c;
    }
    let children: Vec<NodeIndex> = dag.graph.neighbors_directed(node, Direction::Outgoing).collect();
    let c =
        children.into_iter().fold(1usize, |acc, child| acc.saturating_add(inline_cost(dag, child, memo))).min(1 << 20);
    memo.insert(node, c);
    c
}

/// Emits the module for `dag` over `atoms`.
pub fn emit(dag: &Dag, atoms: &Atoms) -> Vec<u8> {
    let plan = MemoryPlan::new(atoms);
    let mut number_index = vec![None; atoms.fields.len()];
    let mut value_offset = vec![None; atoms.fields.len()];
    let mut k = 0;
    for (field, f) in atoms.fields.iter().enumerate() {
        if matches!(f, FieldAtoms::Numeric { .. }) {
            number_index[field] = Some(k as u32);
            value_offset[field] = Some(plan.layout.value(k));
            k += 1;
        }
    }
    let mut functions = HashMap::new();
    // Shared subtrees become functions unless they are small enough to copy.
    let mut cost = HashMap::new();
    let mut shared: Vec<NodeIndex> = dag
        .graph
        .node_indices()
        .filter(|&n| {
            matches!(dag.graph[n], Node::Test { .. })
                && dag.graph.edges_directed(n, Direction::Incoming).count() > 1
                && inline_cost(dag, n, &mut cost) > INLINE_LIMIT
        })
        .collect();
    shared.sort();
    for (i, &node) in shared.iter().enumerate() {
        functions.insert(node, 3 + i as u32);
    }
    let emitter = Emitter { dag, atoms, plan, number_index, value_offset, functions };

    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]); // 0: abi_version
    types.ty().function([ValType::I32], [ValType::I32]); // 1: decide, node functions
    types.ty().function([ValType::I32, ValType::I32, ValType::I32], []); // 2: decide_batch
    let mut funcs = FunctionSection::new();
    funcs.function(0).function(1).function(2);
    for _ in &shared {
        funcs.function(1);
    }
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: plan.pages,
        maximum: Some(plan.pages),
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
    code.function(&emitter.function(dag.root));
    let batch = emitter.batch(dag.root);
    code.function(&batch);
    for &node in &shared {
        code.function(&emitter.function(node));
    }

    let mut module = Module::new();
    module.section(&types).section(&funcs).section(&memories).section(&exports).section(&code);
    module.finish()
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
