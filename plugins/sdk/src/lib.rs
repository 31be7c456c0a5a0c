//! Write Weir transformation stages in plain Rust.
//!
//! A stage is a type that implements [`Stage`]; `weir_sdk::export_stage!(MyStage)` turns it into
//! a WebAssembly component exporting the `weir:plugin/stage` world (see `wit/weir.wit`). The
//! stage's logic never touches the generated bindings, so it compiles and is tested natively:
//! build a [`Context`] and [`Record`]s, call [`Stage::process`], and read what it emitted from
//! the [`Emitter`].
//!
//! ```
//! use weir_sdk::{Context, Emitter, Record, Stage};
//!
//! struct Upper;
//! impl Stage for Upper {
//!     fn init(_config: &str) -> Result<Self, String> {
//!         Ok(Upper)
//!     }
//!     fn process(&mut self, _cx: &Context, record: &Record, out: &mut Emitter) -> Result<(), String> {
//!         out.emit_with(0, record.key, record.timestamp_ms, record.headers, |buf| {
//!             buf.extend(record.value.iter().map(u8::to_ascii_uppercase))
//!         });
//!         Ok(())
//!     }
//! }
//! weir_sdk::export_stage!(Upper);
//! ```

mod duration;
pub mod host;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod wasm;

pub use duration::duration_ms;
pub use host::{Level, log};

/// A record header: a name and opaque bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: Vec<u8>,
}

/// Where the records of a batch come from, and when the host handed it over.
#[derive(Clone, Debug, Default)]
pub struct Context<'a> {
    /// Source stream (for Kafka: the topic).
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Wall-clock time the host handed the batch over, in milliseconds since the Unix epoch.
    /// Use it instead of a clock so that the output is a function of the input.
    pub processing_time_ms: i64,
}

/// One input record, borrowed from its batch.
#[derive(Clone, Copy, Debug, Default)]
pub struct Record<'a> {
    /// The key, or `None` when the record has none.
    pub key: Option<&'a [u8]>,
    /// The value.
    pub value: &'a [u8],
    /// Event time in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Position in the source partition (for Kafka: the offset).
    pub offset: i64,
    /// The record's headers.
    pub headers: &'a [Header],
}

/// An event-time timer that fired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timer {
    /// The key it was registered for.
    pub key: Vec<u8>,
    /// The event time it was set for, in milliseconds since the Unix epoch.
    pub time_ms: i64,
}

/// A range of bytes (or headers) inside an [`Emitter`]'s buffers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// First index.
    pub start: u32,
    /// Length.
    pub len: u32,
}

impl Span {
    fn of(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            len: (end - start) as u32,
        }
    }

    /// The bytes (or headers) this span covers.
    pub fn slice<T>(self, all: &[T]) -> &[T] {
        &all[self.start as usize..(self.start + self.len) as usize]
    }
}

/// One emitted record; its bytes live in the emitter's buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Emitted {
    /// 0 for the default output, `n` for the n-th name in [`Stage::outputs`].
    pub output: u32,
    /// Index of the input record this one derives from (set by the SDK while a record is
    /// processed; `None` for records emitted from [`Stage::on_watermark`]).
    pub derived_from: Option<u32>,
    /// The key, if any.
    pub key: Option<Span>,
    /// The value.
    pub value: Span,
    /// Event time in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Range of the emitter's headers.
    pub headers: Span,
}

/// Collects what a stage emits, in the columnar layout the host receives: records that point
/// into one byte buffer. Emitting costs no allocation per record once the buffers have grown.
#[derive(Debug, Default)]
pub struct Emitter {
    /// The emitted records, in order.
    pub records: Vec<Emitted>,
    /// Keys and values of all emitted records.
    pub data: Vec<u8>,
    /// Headers of all emitted records.
    pub headers: Vec<Header>,
    /// The input record being processed, stamped on every record emitted meanwhile.
    pub current_input: Option<u32>,
}

impl Emitter {
    /// Emits a record whose value is written by `write` straight into the output buffer, which
    /// saves building the value in a buffer of its own first.
    pub fn emit_with(
        &mut self,
        output: u32,
        key: Option<&[u8]>,
        timestamp_ms: i64,
        headers: &[Header],
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        let key = key.map(|key| {
            let start = self.data.len();
            self.data.extend_from_slice(key);
            Span::of(start, self.data.len())
        });
        let start = self.data.len();
        write(&mut self.data);
        let value = Span::of(start, self.data.len());
        let first_header = self.headers.len();
        self.headers.extend_from_slice(headers);
        let headers = Span::of(first_header, self.headers.len());
        self.records.push(Emitted {
            output,
            derived_from: self.current_input,
            key,
            value,
            timestamp_ms,
            headers,
        });
    }

    /// Emits a record with the given value.
    pub fn emit(
        &mut self,
        output: u32,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: i64,
        headers: &[Header],
    ) {
        self.emit_with(output, key, timestamp_ms, headers, |buf| {
            buf.extend_from_slice(value)
        });
    }

    /// The value of the `i`-th emitted record.
    pub fn value(&self, i: usize) -> &[u8] {
        self.records[i].value.slice(&self.data)
    }

    /// The key of the `i`-th emitted record.
    pub fn key(&self, i: usize) -> Option<&[u8]> {
        self.records[i].key.map(|span| span.slice(&self.data))
    }

    /// Forgets everything emitted so far, keeping the buffers' capacity.
    pub fn clear(&mut self) {
        self.records.clear();
        self.data.clear();
        self.headers.clear();
    }
}

/// A transformation stage.
///
/// The host creates one instance per pipeline stage and source partition, calls
/// [`Stage::init`] once, then [`Stage::process`] for every record. State that must survive a
/// restart or a plugin swap belongs in [`host::state`], not in `self`.
pub trait Stage: Sized + 'static {
    /// Builds the stage from its `config:` map, given as JSON text (`{}` when there is none).
    /// The error is shown to the user and the pipeline does not start.
    fn init(config: &str) -> Result<Self, String>;

    /// Names of the named outputs, besides the default output (number 0): output `n` is
    /// `outputs()[n - 1]`.
    fn outputs(&self) -> Vec<String> {
        Vec::new()
    }

    /// Processes one record, emitting zero or more records into `out`. An error sends the
    /// record to the dead-letter output with the message; the rest of the batch goes on.
    fn process(&mut self, cx: &Context, record: &Record, out: &mut Emitter) -> Result<(), String>;

    /// Every record of the batch has been processed. A stage that keeps state in memory for
    /// the length of a batch (one host call per key and batch instead of one per record)
    /// writes it back to the host here.
    fn end_batch(&mut self) {}

    /// Event time reached `watermark_ms`; `fired` holds the timers that are now due, in time
    /// order. Windowed stages emit the windows that closed.
    fn on_watermark(&mut self, watermark_ms: i64, fired: &[Timer], out: &mut Emitter) {
        let _ = (watermark_ms, fired, out);
    }
}

/// Exports a [`Stage`] type as the component's `weir:plugin/transform` implementation.
/// On targets other than `wasm32` it expands to nothing, so the crate also builds natively.
#[macro_export]
macro_rules! export_stage {
    ($stage:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static STAGE: ::std::cell::RefCell<::std::option::Option<$stage>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }
            struct Export;
            impl $crate::wasm::Guest for Export {
                fn init(config: String) -> Result<$crate::wasm::StageInfo, String> {
                    STAGE.with(|slot| $crate::wasm::init::<$stage>(slot, &config))
                }
                fn process(batch: $crate::wasm::Batch) -> $crate::wasm::OutputBatch {
                    STAGE.with(|slot| $crate::wasm::process::<$stage>(slot, batch))
                }
                fn on_watermark(
                    watermark_ms: i64,
                    fired: Vec<$crate::wasm::Timer>,
                ) -> $crate::wasm::OutputBatch {
                    STAGE.with(|slot| {
                        $crate::wasm::on_watermark::<$stage>(slot, watermark_ms, fired)
                    })
                }
            }
    $crate::wasm::bindings::__export_bindings!(Export with_types_in $crate::wasm::bindings);
        };
    };
}
