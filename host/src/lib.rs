//! # Weir
//!
//! A dataflow host: records flow from a source through WebAssembly transformation stages into
//! sinks, as declared in a pipeline file.
//!
//! # Layout
//!
//! - [`pipeline`]: the pipeline file — typed spec, parsing with locations, checking, wiring.
//! - [`runtime`]: running a pipeline — tasks, bounded channels, checkpoint barriers, progress.
//! - [`sources`]: built-in sources (`generator`, `file`, `kafka`).
//! - [`plugin`]: the wasmtime embedding — compile cache, sandbox limits, trap containment.
//! - [`record`]: record batches in the columnar layout shared with plugins.
//! - [`sinks`]: built-in sinks (`parquet`, `iceberg`, `postgres`, `redis`, `jsonl`, `stdout`,
//!   `blackhole`, `kafka`).
//! - [`state`]: the stages' keyed state — sled on local disk, deltas and snapshots for checkpoints.
//! - [`checkpoint`]: manifests, the checkpoint coordinator's steps, recovery.
//! - [`storage`]: object storage locations (local folders, S3 buckets).
//! - [`datagen`]: `weir gen`, generated data to a file or a topic.
//! - [`metrics`]: histograms and the Prometheus text format.
//! - [`supervisor`]: `weir serve` — many pipelines in one process, restarts, savepoints, plugin
//!   swaps and rollbacks.
//! - [`api`]: the control plane over HTTP — the REST API, `/metrics`, the OpenAPI document and
//!   the web page.
//!
//! `main.rs` is a thin command line over [`pipeline::load`], [`runtime::run`] and
//! [`api::serve`].

pub mod api;
pub mod checkpoint;
pub mod datagen;
pub mod faults;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod record;
pub mod runtime;
pub mod sinks;
pub mod sources;
pub mod state;
pub mod storage;
pub mod supervisor;
