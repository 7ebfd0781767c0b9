//! The decision-module contract between the compiler and the router (ABI version, input
//! layout, manifest) and the wasmtime host that loads, calls and hot-swaps modules.
//!
//! Empty until the code-generation issue lands. It will know nothing of Postgres or PGMQ.
