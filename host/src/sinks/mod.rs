//! Built-in sinks: where records leave a pipeline. A closed set, matched exhaustively.

pub mod jsonl;
pub mod kafka;
pub mod parquet;

use std::path::Path;

use crate::{
    pipeline::{normalize, spec::SinkKind},
    record::Batch,
};

/// Records a sink could not take: (index in the batch, reason). They go to the dead-letter
/// output; the rest of the batch is written.
pub type Rejected = Vec<(usize, String)>;

/// Errors that stop a sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Writing failed (disk full, permissions …).
    #[error("{0}")]
    Io(String),
    /// A bug in Weir.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A running sink.
pub enum Sink {
    /// Parquet files.
    Parquet(Box<parquet::ParquetSink>),
    /// JSON lines to a file or standard output.
    Jsonl(jsonl::JsonlSink),
    /// Discards records.
    Blackhole,
    /// A Kafka topic.
    Kafka(Box<kafka::KafkaSink>),
}

impl Sink {
    /// Opens the sink; relative paths start from `dir`; `run` names this run's files.
    pub async fn open(
        kind: &SinkKind,
        dir: &Path,
        pipeline: &str,
        run: &str,
    ) -> Result<Sink, SinkError> {
        Ok(match kind {
            SinkKind::Parquet(spec) => Sink::Parquet(Box::new(parquet::ParquetSink::open(
                spec, dir, pipeline, run,
            )?)),
            SinkKind::Jsonl(spec) => Sink::Jsonl(
                jsonl::JsonlSink::file(&normalize(&dir.join(&spec.path.value)), spec.envelope)
                    .await?,
            ),
            SinkKind::Stdout(spec) => Sink::Jsonl(jsonl::JsonlSink::stdout(spec.envelope)),
            SinkKind::Blackhole(_) => Sink::Blackhole,
            SinkKind::Kafka(spec) => Sink::Kafka(Box::new(kafka::KafkaSink::open(spec)?)),
        })
    }

    /// Writes a batch; returns the records it rejects.
    pub async fn write(&mut self, batch: &Batch) -> Result<Rejected, SinkError> {
        match self {
            Sink::Parquet(s) => s.write(batch).await,
            Sink::Jsonl(s) => s.write(batch).await.map(|()| Vec::new()),
            Sink::Blackhole => Ok(Vec::new()),
            Sink::Kafka(s) => s.write(batch).await.map(|()| Vec::new()),
        }
    }

    /// Makes everything written so far durable and visible.
    pub async fn checkpoint(&mut self) -> Result<(), SinkError> {
        match self {
            Sink::Parquet(s) => s.checkpoint().await,
            Sink::Jsonl(s) => s.flush().await,
            Sink::Blackhole => Ok(()),
            Sink::Kafka(s) => s.flush().await,
        }
    }

    /// Where the output is, for the summary a run prints.
    pub fn location(&self) -> Option<String> {
        match self {
            Sink::Parquet(s) => Some(format!("{} ({} files)", s.root(), s.files_written)),
            Sink::Jsonl(s) => s.path().map(str::to_string),
            Sink::Blackhole => None,
            Sink::Kafka(s) => Some(format!("kafka topic {}", s.topic())),
        }
    }
}
