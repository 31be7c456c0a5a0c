//! The `jsonl` and `stdout` sinks: one line per record, either the value as it is or an
//! envelope with the record's key, value, timestamp, headers and source position.

use std::path::Path;

use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

use super::SinkError;
use crate::record::Routed;

/// The sink.
pub struct JsonlSink {
    /// Where lines go.
    out: BufWriter<Box<dyn AsyncWrite + Send + Unpin>>,
    /// The file, if it is one.
    path: Option<String>,
    /// Write envelopes rather than bare values.
    envelope: bool,
    /// Reused line buffer.
    line: Vec<u8>,
}

/// A record as an envelope line.
#[derive(Serialize)]
struct Envelope<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<Bytes<'a>>,
    value: Bytes<'a>,
    headers: serde_json::Map<String, serde_json::Value>,
    /// The plugin that emitted the record, when a stage did.
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin: Option<&'a str>,
}

/// Bytes as a JSON string when they are UTF-8, else as an array of numbers.
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.collect_seq(self.0),
        }
    }
}

impl JsonlSink {
    /// A sink appending to `path` (created, with its folder, if missing).
    pub async fn file(path: &Path, envelope: bool) -> Result<JsonlSink, SinkError> {
        let io = |e: std::io::Error| SinkError::Io(format!("cannot open {}: {e}", path.display()));
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io)?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(io)?;
        Ok(JsonlSink {
            out: BufWriter::with_capacity(1 << 20, Box::new(file)),
            path: Some(path.display().to_string()),
            envelope,
            line: Vec::new(),
        })
    }

    /// A sink writing to standard output.
    pub fn stdout(envelope: bool) -> JsonlSink {
        JsonlSink {
            out: BufWriter::new(Box::new(tokio::io::stdout())),
            path: None,
            envelope,
            line: Vec::new(),
        }
    }

    /// The file, if this sink writes one.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// Writes a batch.
    pub async fn write(&mut self, routed: Routed<'_>) -> Result<(), SinkError> {
        let batch = routed.batch;
        self.line.clear();
        for i in 0..batch.len() {
            if self.envelope {
                let record = batch.records[i];
                let headers = batch
                    .headers_of(i)
                    .iter()
                    .map(|h| {
                        (
                            h.name.clone(),
                            String::from_utf8_lossy(&h.value).into_owned().into(),
                        )
                    })
                    .collect();
                let envelope = Envelope {
                    topic: &batch.topic,
                    partition: batch.partition,
                    offset: record.offset,
                    timestamp_ms: record.timestamp_ms,
                    key: batch.key(i).map(Bytes),
                    value: Bytes(batch.value(i)),
                    headers,
                    plugin: routed.plugin,
                };
                serde_json::to_writer(&mut self.line, &envelope)
                    .map_err(|e| SinkError::Internal(e.to_string()))?;
            } else {
                self.line.extend_from_slice(batch.value(i));
            }
            self.line.push(b'\n');
        }
        self.out
            .write_all(&self.line)
            .await
            .map_err(|e| self.io_error(e))
    }

    /// Flushes buffered lines to the file (and the file to disk).
    pub async fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().await.map_err(|e| self.io_error(e))
    }

    fn io_error(&self, e: std::io::Error) -> SinkError {
        SinkError::Io(format!(
            "writing {}: {e}",
            self.path.as_deref().unwrap_or("standard output")
        ))
    }
}
