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

struct Emitter<'a> {
    dag: &'a Dag,
    atoms: &'a Atoms,
    plan: MemoryPlan,
    /// Field → its i64 local (number fields only).
    value_local: Vec<Option<u32>>,
    /// Field → offset of its i64 value.
    value_offset: Vec<Option<usize>>,
    /// Shared test nodes → their function index.
    functions: HashMap<NodeIndex, u32>,
}

fn mem(offset: usize, align: u32) -> MemArg {
    MemArg { offset: offset as u64, align, memory_index: 0 }
}

impl Emitter<'_> {
    fn node(&self, sink: &mut InstructionSink<'_>, node: NodeIndex, own_function: bool) {
        match self.dag.graph[node] {
            Node::Leaf(decision) => {
                sink.i32_const(decision.map_or(0, |p| p as i32 + 1)).return_();
            }
            Node::Test { field } => {
                if let (false, Some(&index)) = (own_function, self.functions.get(&node)) {
                    sink.local_get(0).call(index).return_();
                    return;
                }
                let children = self.dag.children(node);
                match &self.atoms.fields[field] {
                    FieldAtoms::Numeric { bounds } => self.number(sink, field, bounds, &children),
                    other => self.class(sink, field, other.len(), &children),
                }
            }
        }
    }

    fn class(
        &self,
        sink: &mut InstructionSink<'_>,
        field: usize,
        atoms: usize,
        children: &[(crate::atoms::AtomSet, NodeIndex)],
    ) {
        let group_of = |atom: usize| children.iter().position(|(set, _)| set.contains(atom)).unwrap_or(0) as u32;
        for _ in children {
            sink.block(BlockType::Empty);
        }
        sink.local_get(0).i32_load(mem(self.plan.layout.slot(field), 2));
        let targets: Vec<u32> = (0..atoms).map(group_of).collect();
        sink.br_table(targets, group_of(0));
        for (_, child) in children {
            sink.end();
            self.node(sink, *child, false);
        }
    }

    fn number(
        &self,
        sink: &mut InstructionSink<'_>,
        field: usize,
        bounds: &[i128],
        children: &[(crate::atoms::AtomSet, NodeIndex)],
    ) {
        let child_of = |atom: usize| children.iter().find(|(set, _)| set.contains(atom)).map(|(_, c)| *c);
        let (Some(local), Some(offset)) = (self.value_local[field], self.value_offset[field]) else { return };
        // missing?
        sink.local_get(0).i32_load(mem(self.plan.layout.slot(field), 2)).i32_eqz().if_(BlockType::Empty);
        if let Some(missing) = child_of(0) {
            self.node(sink, missing, false);
        }
        sink.end();
        sink.local_get(0).i64_load(mem(offset, 3)).local_set(local);
        // runs of consecutive atoms with the same child: (first atom, child)
        let mut runs: Vec<(usize, NodeIndex)> = Vec::new();
        for atom in 1..bounds.len() {
            if let Some(child) = child_of(atom)
                && runs.last().is_none_or(|(_, c)| *c != child)
            {
                runs.push((atom, child));
            }
        }
        self.ranges(sink, local, bounds, &runs);
    }

    fn ranges(&self, sink: &mut InstructionSink<'_>, local: u32, bounds: &[i128], runs: &[(usize, NodeIndex)]) {
        match runs {
            [] => {
                sink.unreachable();
            }
            [(_, child)] => self.node(sink, *child, false),
            _ => {
                let mid = runs.len() / 2;
                let split = bounds[runs[mid].0 - 1];
                sink.local_get(local)
                    .i64_const(i64::try_from(split).unwrap_or(i64::MAX))
                    .i64_lt_s()
                    .if_(BlockType::Empty);
                self.ranges(sink, local, bounds, &runs[..mid]);
                sink.end();
                self.ranges(sink, local, bounds, &runs[mid..]);
            }
        }
    }

    fn function(&self, root: NodeIndex) -> Function {
        let numbers = self.value_local.iter().flatten().count() as u32;
        let mut f = Function::new([(numbers, ValType::I64)]);
        let mut sink = f.instructions();
        self.node(&mut sink, root, true);
        sink.unreachable().end();
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
    let mut value_local = vec![None; atoms.fields.len()];
    let mut value_offset = vec![None; atoms.fields.len()];
    let mut k = 0;
    for (field, f) in atoms.fields.iter().enumerate() {
        if matches!(f, FieldAtoms::Numeric { .. }) {
            value_local[field] = Some(1 + k as u32);
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
    let emitter = Emitter { dag, atoms, plan, value_local, value_offset, functions };

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
    let record = plan.layout.record_size() as i32;
    let mut batch = Function::new([(1, ValType::I32)]); // local 3: i
    batch
        .instructions()
        .block(BlockType::Empty)
        .loop_(BlockType::Empty)
        .local_get(3)
        .local_get(1)
        .i32_ge_u()
        .br_if(1)
        .local_get(2)
        .local_get(3)
        .i32_const(4)
        .i32_mul()
        .i32_add()
        .local_get(0)
        .local_get(3)
        .i32_const(record)
        .i32_mul()
        .i32_add()
        .call(FN_DECIDE)
        .i32_store(mem(0, 2))
        .local_get(3)
        .i32_const(1)
        .i32_add()
        .local_set(3)
        .br(0)
        .end()
        .end()
        .end();
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
