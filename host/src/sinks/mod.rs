//! Built-in sinks: where records leave a pipeline. A closed set, matched exhaustively.

pub mod iceberg;
pub mod jsonl;
pub mod kafka;
pub mod parquet;
pub mod postgres;
pub mod redis;
pub mod rows;

use std::path::Path;

use crate::{
    checkpoint::Pending,
    pipeline::{normalize, spec::SinkKind},
    record::{Batch, Routed},
    storage::S3Config,
};

/// Records a sink could not take: (index in the batch, reason). They go to the dead-letter
/// output; the rest of the batch is written.
pub type Rejected = Vec<(usize, String)>;

/// The header that makes a record a delete (`weir-op: delete`) for the sinks that keep one
/// value per key (`postgres`, `redis`); a record without it, or with `weir-op: upsert`, upserts.
pub const OP_HEADER: &str = "weir-op";

/// Whether record `i` deletes its key: its last `weir-op` header says `delete` (in any case).
pub fn is_delete(batch: &Batch, i: usize) -> bool {
    batch
        .headers_of(i)
        .iter()
        .rev()
        .find(|h| h.name == OP_HEADER)
        .is_some_and(|h| h.value.eq_ignore_ascii_case(b"delete"))
}

/// `url` with its password, if it has one, replaced by `***`: for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

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
    /// An Iceberg table.
    Iceberg(Box<iceberg::IcebergSink>),
    /// A Postgres table, upserted by key.
    Postgres(Box<postgres::PostgresSink>),
    /// The latest value per key in Redis.
    Redis(Box<redis::RedisSink>),
}

/// Publishes what a sink pre-committed, once the checkpoint's manifest is stored. Commits are
/// idempotent (tagged with the pipeline and checkpoint id), so recovery may repeat one.
pub enum Committer {
    /// Commit log, then final file names.
    Parquet(parquet::ParquetCommitter),
    /// An Iceberg snapshot.
    Iceberg(Box<iceberg::IcebergCommitter>),
    /// One transaction: staged rows into the table, and the checkpoint into its progress row.
    Postgres(postgres::PostgresCommitter),
    /// One Lua script: staged values into their keys, and the checkpoint into its progress key.
    Redis(redis::RedisCommitter),
}

impl Committer {
    /// Commits this sink's part of `manifest` (its `pending` commit), unless it is already
    /// visible.
    pub async fn commit(
        &mut self,
        manifest: &crate::checkpoint::Manifest,
        pending: &serde_json::Value,
    ) -> Result<(), SinkError> {
        match self {
            Committer::Parquet(c) => {
                c.commit(&manifest.pipeline, manifest.checkpoint, pending)
                    .await
            }
            Committer::Iceberg(c) => c.commit(manifest, pending).await,
            Committer::Postgres(c) => c.commit(manifest, pending).await,
            Committer::Redis(c) => c.commit(manifest, pending).await,
        }
    }

    /// Deletes the files (or staged rows) of `pipeline` that no checkpoint up to `committed`
    /// holds (on recovery, after the newest manifest's commit was repeated); returns how many.
    pub async fn clean(&mut self, pipeline: &str, committed: u64) -> Result<usize, SinkError> {
        match self {
            Committer::Parquet(c) => c.clean(pipeline).await,
            Committer::Iceberg(c) => c.clean(pipeline, committed).await,
            Committer::Postgres(c) => c.clean(pipeline, committed).await,
            Committer::Redis(c) => c.clean(pipeline, committed).await,
        }
    }
}

/// What a sink needs to open.
pub struct OpenContext<'a> {
    /// Relative paths start here.
    pub dir: &'a Path,
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// This run's id, for file names.
    pub run: &'a str,
    /// The checkpoint the first records belong to.
    pub epoch: u64,
    /// How to reach `s3://` locations.
    pub s3: &'a S3Config,
}

impl Sink {
    /// Opens the sink, with its committer if it commits at checkpoints.
    pub async fn open(
        kind: &SinkKind,
        cx: &OpenContext<'_>,
    ) -> Result<(Sink, Option<Committer>), SinkError> {
        let dir = cx.dir;
        Ok(match kind {
            SinkKind::Parquet(spec) => {
                let location =
                    crate::storage::open(&spec.path.value, dir, cx.s3).map_err(SinkError::Io)?;
                let committer = parquet::ParquetCommitter::new(location.clone());
                let sink =
                    parquet::ParquetSink::open(spec, location, cx.pipeline, cx.run, cx.epoch);
                (
                    Sink::Parquet(Box::new(sink)),
                    Some(Committer::Parquet(committer)),
                )
            }
            SinkKind::Iceberg(spec) => {
                let (sink, committer) = iceberg::open(spec, cx).await?;
                (
                    Sink::Iceberg(Box::new(sink)),
                    Some(Committer::Iceberg(Box::new(committer))),
                )
            }
            SinkKind::Postgres(spec) => {
                let (sink, committer) = postgres::open(spec, cx.pipeline, cx.epoch).await?;
                (
                    Sink::Postgres(Box::new(sink)),
                    Some(Committer::Postgres(committer)),
                )
            }
            SinkKind::Redis(spec) => {
                let (sink, committer) = redis::open(spec, cx.pipeline, cx.epoch).await?;
                (
                    Sink::Redis(Box::new(sink)),
                    Some(Committer::Redis(committer)),
                )
            }
            kind => (Sink::open_plain(kind, dir).await?, None),
        })
    }

    /// Opens a sink that does not commit.
    async fn open_plain(kind: &SinkKind, dir: &Path) -> Result<Sink, SinkError> {
        Ok(match kind {
            SinkKind::Parquet(_)
            | SinkKind::Iceberg(_)
            | SinkKind::Postgres(_)
            | SinkKind::Redis(_) => {
                return Err(SinkError::Internal(
                    "a committing sink opened as plain".into(),
                ));
            }
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
    pub async fn write(&mut self, routed: Routed<'_>) -> Result<Rejected, SinkError> {
        let batch = routed.batch;
        match self {
            Sink::Parquet(s) => s.write(routed).await,
            Sink::Jsonl(s) => s.write(routed).await.map(|()| Vec::new()),
            Sink::Blackhole => Ok(Vec::new()),
            Sink::Kafka(s) => s.write(batch).await.map(|()| Vec::new()),
            Sink::Iceberg(s) => s.write(routed).await,
            Sink::Postgres(s) => s.write(routed).await,
            Sink::Redis(s) => s.write(batch).await,
        }
    }

    /// Checkpoint `id`'s barrier has arrived: finishes what was written before it, durably but
    /// not visibly when the sink commits (its committer publishes it once the manifest is
    /// stored), or flushes it when the sink does not.
    pub async fn pre_commit(&mut self, id: u64) -> Result<Pending, SinkError> {
        match self {
            Sink::Parquet(s) => s.pre_commit(id).await,
            Sink::Iceberg(s) => s.pre_commit(id).await,
            Sink::Postgres(s) => s.pre_commit(id).await,
            Sink::Redis(s) => s.pre_commit(id).await,
            Sink::Jsonl(s) => s.flush().await.map(|()| Pending::default()),
            Sink::Blackhole => Ok(Pending::default()),
            Sink::Kafka(s) => s.flush().await.map(|()| Pending::default()),
        }
    }

    /// The input has ended after the last checkpoint: flushes what does not commit. (Files of a
    /// committing sink opened after the last barrier hold nothing; they are left to recovery.)
    pub async fn close(&mut self) -> Result<(), SinkError> {
        match self {
            Sink::Jsonl(s) => s.flush().await,
            Sink::Kafka(s) => s.flush().await,
            Sink::Parquet(_)
            | Sink::Iceberg(_)
            | Sink::Postgres(_)
            | Sink::Redis(_)
            | Sink::Blackhole => Ok(()),
        }
    }

    /// Where the output is, for the summary a run prints.
    pub fn location(&self) -> Option<String> {
        match self {
            Sink::Parquet(s) => Some(format!("{} ({} files)", s.root(), s.files_written)),
            Sink::Jsonl(s) => s.path().map(str::to_string),
            Sink::Blackhole => None,
            Sink::Kafka(s) => Some(format!("kafka topic {}", s.topic())),
            Sink::Iceberg(s) => Some(s.location()),
            Sink::Postgres(s) => Some(format!(
                "postgres table {} ({} rows upserted or deleted)",
                s.table_name(),
                s.rows_written
            )),
            Sink::Redis(s) => Some(format!(
                "redis keys {} ({} set or deleted)",
                s.key_template(),
                s.keys_written
            )),
        }
    }
}
