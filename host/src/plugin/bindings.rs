//! The one place that generates host bindings from `wit/weir.wit`.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "stage",
});

pub use weir::plugin::types::{
    Batch, Header, InputRecord, Level, OutputBatch, OutputRecord, RecordError, Span, StageInfo,
    Timer,
};
