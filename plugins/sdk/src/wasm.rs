//! The thin adapter between the generated component bindings and [`Stage`]. Only built for
//! `wasm32`; plugin authors use it through [`export_stage!`](crate::export_stage).

use std::cell::RefCell;

use crate::{Context, Emitter, Header, Record, Stage};

/// Bindings generated from `wit/weir.wit`.
#[allow(missing_docs, unsafe_code)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "stage",
        pub_export_macro: true,
        export_macro_name: "__export_bindings",
        default_bindings_module: "weir_sdk::wasm::bindings",
    });
}

pub use bindings::exports::weir::plugin::transform::Guest;
use bindings::weir::plugin::types as wit;
pub use wit::{Batch, OutputBatch, StageInfo, Timer};

/// `transform.init`: builds the stage and stores it in `slot`.
pub fn init<S: Stage>(slot: &RefCell<Option<S>>, config: &str) -> Result<StageInfo, String> {
    let stage = S::init(config)?;
    let info = StageInfo {
        outputs: stage.outputs(),
    };
    *slot.borrow_mut() = Some(stage);
    Ok(info)
}

/// `transform.process`: runs the stage over every record of the batch.
pub fn process<S: Stage>(slot: &RefCell<Option<S>>, batch: Batch) -> OutputBatch {
    let mut slot = slot.borrow_mut();
    let stage = slot.as_mut().expect("the host calls init before process");
    let headers: Vec<Header> = batch
        .headers
        .into_iter()
        .map(|h| Header {
            name: h.name,
            value: h.value,
        })
        .collect();
    let cx = Context {
        topic: &batch.topic,
        partition: batch.partition,
        processing_time_ms: batch.processing_time_ms,
    };
    let data = &batch.data[..];
    let mut out = Emitter::default();
    out.data.reserve(data.len() + data.len() / 2);
    out.records.reserve(batch.records.len());
    let mut errors = Vec::new();
    for (index, r) in batch.records.iter().enumerate() {
        let record = Record {
            key: r.key.map(|k| slice(data, k)),
            value: slice(data, r.value),
            timestamp_ms: r.timestamp_ms,
            offset: r.offset,
            headers: &headers[r.headers.start as usize..(r.headers.start + r.headers.len) as usize],
        };
        out.current_input = Some(index as u32);
        if let Err(message) = stage.process(&cx, &record, &mut out) {
            errors.push(wit::RecordError {
                index: index as u32,
                message,
            });
        }
    }
    stage.end_batch();
    into_wit(out, errors)
}

/// `transform.on-watermark`.
pub fn on_watermark<S: Stage>(
    slot: &RefCell<Option<S>>,
    watermark_ms: i64,
    fired: Vec<Timer>,
) -> OutputBatch {
    let mut slot = slot.borrow_mut();
    let stage = slot
        .as_mut()
        .expect("the host calls init before on-watermark");
    let fired: Vec<crate::Timer> = fired
        .into_iter()
        .map(|t| crate::Timer {
            key: t.key,
            time_ms: t.time_ms,
        })
        .collect();
    let mut out = Emitter::default();
    stage.on_watermark(watermark_ms, &fired, &mut out);
    into_wit(out, Vec::new())
}

fn slice(data: &[u8], span: wit::Span) -> &[u8] {
    &data[span.start as usize..(span.start + span.len) as usize]
}

fn span(span: crate::Span) -> wit::Span {
    wit::Span {
        start: span.start,
        len: span.len,
    }
}

fn into_wit(out: Emitter, errors: Vec<wit::RecordError>) -> OutputBatch {
    OutputBatch {
        records: out
            .records
            .iter()
            .map(|r| wit::OutputRecord {
                output: r.output,
                derived_from: r.derived_from,
                key: r.key.map(span),
                value: span(r.value),
                timestamp_ms: r.timestamp_ms,
                headers: span(r.headers),
            })
            .collect(),
        data: out.data,
        headers: out
            .headers
            .into_iter()
            .map(|h| wit::Header {
                name: h.name,
                value: h.value,
            })
            .collect(),
        errors,
    }
}
