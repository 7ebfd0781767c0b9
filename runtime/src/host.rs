//! Loading and calling decision modules with wasmtime, and swapping them while in use.
//!
//! One [`Engine`] per process compiles modules; a [`Program`] is a compiled module with its
//! manifest, checked against each other and pre-linked (`InstancePre`); a [`Session`] is one
//! worker's instance (its own `Store`); a [`Handle`] holds the current program and swaps it
//! atomically. A [`Worker`] notices a swap before its next call and re-instantiates, so a
//! batch always runs on one module and a swap never waits for in-flight calls.
//!
//! A lead's answer is its [`Candidates`]: the index of a candidate list in the manifest
//! (checked against the table when the module answers), a `Copy` value, so deciding
//! allocates nothing per lead; [`Program::candidates`] reads the list (rule indices in
//! first-match order; the first decides).

use std::sync::Arc;

pub use ::abi::sha256_hex;
use arc_swap::ArcSwap;
use serde_json::{Map, Value};
pub use wasmtime::Engine;
use wasmtime::{Config, ExternType, InstancePre, Linker, Memory, Module, OptLevel, Store, TypedFunc, ValType};

use crate::abi::{ABI_VERSION, EXPORT_DECIDE, EXPORT_DECIDE_BATCH, EXPORT_MEMORY, EXPORT_VERSION};
use crate::encode::Encoder;
use crate::manifest::{Manifest, RuleEntry};
use crate::{Error, Result};

/// The engine every program of a process shares (Cranelift, optimized for speed).
pub fn engine() -> Result<Engine> {
    let mut config = Config::new();
    config.cranelift_opt_level(OptLevel::Speed);
    Engine::new(&config).map_err(|e| Error::Module(e.to_string()))
}

/// A checked, compiled, pre-linked decision module.
pub struct Program {
    manifest: Manifest,
    encoder: Encoder,
    pre: InstancePre<()>,
    engine: Engine,
}

fn func_type(module: &Module, name: &str, params: &[ValType], results: &[ValType]) -> Result<()> {
    let Some(ExternType::Func(ty)) = module.get_export(name) else {
        return Err(Error::Module(format!("no exported function `{name}`")));
    };
    let same = |a: &mut dyn ExactSizeIterator<Item = ValType>, b: &[ValType]| {
        a.len() == b.len() && a.zip(b).all(|(x, y)| ValType::eq(&x, y))
    };
    if !same(&mut ty.params(), params) || !same(&mut ty.results(), results) {
        return Err(Error::Module(format!("`{name}` has the wrong signature: {ty}")));
    }
    Ok(())
}

impl Program {
    /// Compiles `wasm` and checks it against `manifest`: same module hash, ABI version,
    /// layout and candidate table (`Manifest::check`: the lists a module of this manifest
    /// answers are exactly the table's, since the compiler writes both from one DAG and the
    /// hash ties them), no imports, the ABI's exports with their signatures, and enough
    /// memory. Each answer is still checked against the table when it comes.
    pub fn load(engine: &Engine, wasm: &[u8], manifest: Manifest) -> Result<Program> {
        manifest.check()?;
        let hash = sha256_hex(wasm);
        if hash != manifest.module_hash {
            return Err(Error::Mismatch(format!("module hash {hash}, manifest says {}", manifest.module_hash)));
        }
        let module = Module::new(engine, wasm).map_err(|e| Error::Module(format!("{e:#}")))?;
        if let Some(import) = module.imports().next() {
            return Err(Error::Module(format!(
                "a decision module imports nothing, this one imports `{}::{}`",
                import.module(),
                import.name()
            )));
        }
        func_type(&module, EXPORT_VERSION, &[], &[ValType::I32])?;
        func_type(&module, EXPORT_DECIDE, &[ValType::I32], &[ValType::I32])?;
        func_type(&module, EXPORT_DECIDE_BATCH, &[ValType::I32, ValType::I32, ValType::I32], &[])?;
        match module.get_export(EXPORT_MEMORY) {
            Some(ExternType::Memory(memory)) if memory.minimum() * 65536 >= manifest.memory_bytes() as u64 => {}
            Some(ExternType::Memory(_)) => {
                return Err(Error::Mismatch(
                    "the module's memory is smaller than the manifest's batch needs".to_owned(),
                ));
            }
            _ => return Err(Error::Module(format!("no exported `{EXPORT_MEMORY}`"))),
        }
        let pre = Linker::new(engine).instantiate_pre(&module).map_err(|e| Error::Module(format!("{e:#}")))?;
        let encoder = Encoder::new(&manifest);
        Ok(Program { manifest, encoder, pre, engine: engine.clone() })
    }

    /// The candidates of a lead: rule indices (into the manifest's rule table) in
    /// first-match order, at most `max_candidates`; empty when no rule matched. The first
    /// is the rule that decides.
    pub fn candidates(&self, candidates: Candidates) -> &[u32] {
        self.manifest.candidates(candidates.index())
    }

    /// The rule that decides a lead (its first candidate), as an index into the manifest's
    /// rule table; `None` when no rule matched.
    pub fn first_candidate(&self, candidates: Candidates) -> Option<usize> {
        self.candidates(candidates).first().map(|&i| i as usize)
    }

    /// Loads from the module bytes and the manifest's JSON text.
    pub fn load_json(engine: &Engine, wasm: &[u8], manifest: &str) -> Result<Program> {
        Self::load(engine, wasm, Manifest::from_json(manifest)?)
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The lead encoder for this module.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// A new instance for one worker.
    pub fn session(self: &Arc<Self>) -> Result<Session> {
        let call = |e: wasmtime::Error| Error::Call(format!("{e:#}"));
        let mut store = Store::new(&self.engine, ());
        let instance = self.pre.instantiate(&mut store).map_err(call)?;
        let version: TypedFunc<(), i32> = instance.get_typed_func(&mut store, EXPORT_VERSION).map_err(call)?;
        let found = version.call(&mut store, ()).map_err(call)?;
        if u32::try_from(found).ok() != Some(ABI_VERSION) {
            return Err(Error::Mismatch(format!("the module reports ABI version {found}")));
        }
        let decide = instance.get_typed_func(&mut store, EXPORT_DECIDE).map_err(call)?;
        let decide_batch = instance.get_typed_func(&mut store, EXPORT_DECIDE_BATCH).map_err(call)?;
        let memory =
            instance.get_memory(&mut store, EXPORT_MEMORY).ok_or_else(|| Error::Module("no memory".to_owned()))?;
        Ok(Session {
            program: Arc::clone(self),
            store,
            memory,
            decide,
            decide_batch,
            scratch: vec![0; self.manifest.record_size],
        })
    }
}

/// What a module answered for a lead: the index of its candidate list in the manifest's
/// `candidate_lists` (0: no rule matched), within the table (the session checks every
/// answer). [`Program::candidates`] of the program that answered gives the rules (a
/// program swapped in since has another table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Candidates(u32);

impl Candidates {
    /// No rule matched (the empty list, 0).
    pub const NONE: Candidates = Candidates(0);

    /// The list's index in the manifest's `candidate_lists`.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// Whether no rule matched.
    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}

/// What a module decided for a lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    /// The deciding rule (the first candidate), if any.
    pub rule: Option<&'a RuleEntry>,
    /// The rule's route, else the default route, else none (unmatched).
    pub route: Option<&'a str>,
    /// The candidates: rule indices (into the manifest's rule table) in first-match order.
    pub candidates: &'a [u32],
}

/// One worker's instance of a program.
pub struct Session {
    program: Arc<Program>,
    store: Store<()>,
    memory: Memory,
    decide: TypedFunc<i32, i32>,
    decide_batch: TypedFunc<(i32, i32, i32), ()>,
    scratch: Vec<u8>,
}

impl Session {
    /// The program this session runs.
    pub fn program(&self) -> &Arc<Program> {
        &self.program
    }

    fn answer(&self, raw: i32) -> Result<Candidates> {
        match u32::try_from(raw) {
            Ok(n) if (n as usize) < self.program.manifest.candidate_lists.len() => Ok(Candidates(n)),
            _ => Err(Error::Call(format!("the module answered {raw}, outside the candidate lists"))),
        }
    }

    /// Decides one encoded record: its candidates.
    pub fn decide_record(&mut self, record: &[u8]) -> Result<Candidates> {
        let size = self.program.manifest.record_size;
        self.memory.data_mut(&mut self.store)[..size].copy_from_slice(&record[..size]);
        let raw = self.decide.call(&mut self.store, 0).map_err(|e| Error::Call(format!("{e:#}")))?;
        self.answer(raw)
    }

    /// Decides consecutive encoded records (any number; batched by the manifest's
    /// `max_batch`), appending one answer per record to `out`.
    pub fn decide_records(&mut self, records: &[u8], out: &mut Vec<Candidates>) -> Result<()> {
        let manifest = &self.program.manifest;
        let (size, max) = (manifest.record_size, manifest.max_batch);
        if size == 0 {
            return Err(Error::Call("empty records".to_owned()));
        }
        for chunk in records.chunks(size * max) {
            let count = chunk.len() / size;
            self.memory.data_mut(&mut self.store)[..count * size].copy_from_slice(&chunk[..count * size]);
            for raw in self.run_batch(count)? {
                out.push(self.answer(raw)?);
            }
        }
        Ok(())
    }

    /// Calls `decide_batch` on the first `count` records in memory; their raw answers.
    fn run_batch(&mut self, count: usize) -> Result<Vec<i32>> {
        let output = self.program.manifest.output_offset;
        let args = (0, i32::try_from(count).unwrap_or(i32::MAX), i32::try_from(output).unwrap_or(i32::MAX));
        self.decide_batch.call(&mut self.store, args).map_err(|e| Error::Call(format!("{e:#}")))?;
        let answers = self.memory.data(&self.store).get(output..output + 4 * count).unwrap_or_default();
        Ok(answers.chunks_exact(4).map(|raw| i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]])).collect())
    }

    /// Encodes and decides leads (objects) straight into the module's memory, a batch of up to
    /// the manifest's `max_batch` per call, appending one answer per lead to `out`: its
    /// candidates ([`Program::candidates`] reads them), or why it cannot be encoded. Errs
    /// only if the module fails.
    pub fn decide_leads<'a>(
        &mut self,
        leads: impl IntoIterator<Item = &'a Map<String, Value>>,
        out: &mut Vec<Result<Candidates>>,
    ) -> Result<()> {
        let program = Arc::clone(&self.program);
        let (size, max) = (program.manifest.record_size, program.manifest.max_batch);
        // Where the answers of the records now in memory go in `out`.
        let mut pending: Vec<usize> = Vec::with_capacity(max);
        let mut leads = leads.into_iter().peekable();
        while leads.peek().is_some() {
            let memory = self.memory.data_mut(&mut self.store);
            while pending.len() < max {
                let Some(lead) = leads.next() else { break };
                let at = pending.len() * size;
                // `Program::load` checked that `max` records fit.
                let record = memory.get_mut(at..at + size).ok_or_else(|| Error::Call("memory too small".to_owned()))?;
                match program.encoder.encode_map(lead, record) {
                    Ok(()) => {
                        pending.push(out.len());
                        out.push(Ok(Candidates::NONE));
                    }
                    Err(error) => out.push(Err(error.into())),
                }
            }
            self.decide_pending(&mut pending, out)?;
        }
        Ok(())
    }

    /// Decides the `pending.len()` records at the start of memory into `out[pending[i]]`.
    fn decide_pending(&mut self, pending: &mut Vec<usize>, out: &mut [Result<Candidates>]) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        for (&i, raw) in pending.iter().zip(self.run_batch(pending.len())?) {
            out[i] = self.answer(raw);
        }
        pending.clear();
        Ok(())
    }

    /// Encodes and decides one lead.
    pub fn decide_json(&mut self, lead: &Value) -> Result<Decision<'_>> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let encoded = self.program.encoder.encode(lead, &mut scratch);
        let answer = encoded.map_err(Error::from).and_then(|()| self.decide_record(&scratch));
        self.scratch = scratch;
        let program = &self.program;
        let candidates = program.candidates(answer?);
        // `Manifest::check` keeps every list's rules within the table.
        let rule = candidates.first().and_then(|&i| program.manifest.rules.get(i as usize));
        let route = rule.map_or(program.manifest.default_route.as_deref(), |r| Some(r.route.as_str()));
        Ok(Decision { rule, route, candidates })
    }
}

/// The current program, swappable while workers use it.
pub struct Handle {
    current: ArcSwap<Program>,
}

impl Handle {
    /// A handle on `program`.
    pub fn new(program: Program) -> Self {
        Self { current: ArcSwap::from_pointee(program) }
    }

    /// The program now.
    pub fn current(&self) -> Arc<Program> {
        self.current.load_full()
    }

    /// Makes `program` current; calls in flight finish on the old one. Returns the old one.
    pub fn swap(&self, program: Program) -> Arc<Program> {
        self.current.swap(Arc::new(program))
    }
}

/// A worker's view of a [`Handle`]: a session on the current program, renewed after a swap.
pub struct Worker {
    handle: Arc<Handle>,
    session: Session,
}

impl Worker {
    /// A worker on `handle`'s current program.
    pub fn new(handle: Arc<Handle>) -> Result<Self> {
        let session = handle.current().session()?;
        Ok(Self { handle, session })
    }

    /// The session to use for the next batch: re-instantiated if the program was swapped.
    pub fn session(&mut self) -> Result<&mut Session> {
        let current = self.handle.current();
        if !Arc::ptr_eq(&current, self.session.program()) {
            self.session = current.session()?;
        }
        Ok(&mut self.session)
    }
}
