//! Built-in sources: where records enter a pipeline. A closed set, matched exhaustively.
//!
//! A source hands out batches in the host's columnar layout; the runtime pulls them one at a
//! time, so a slow pipeline slows the source down instead of piling records up.

pub mod file;
pub mod generator;

use std::{path::Path, time::Duration};

use tokio::time::Instant;

use crate::{pipeline::spec::SourceSpec, plugin::now_ms, record::Batch};

/// Errors from a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The input file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A running source.
pub enum Source {
    /// Synthetic trades.
    Generator {
        /// The trade sequence.
        generator: generator::Generator,
        /// Records per batch.
        batch_size: usize,
        /// Wall-clock pacing, when a rate is set.
        pace: Option<Pace>,
    },
    /// Lines of a file.
    File(file::FileSource),
}

/// Keeps a source at a set rate: after `sent` records, it waits until `sent / rate` seconds
/// have passed since `started`.
pub struct Pace {
    /// Records per second.
    rate: u64,
    /// When the source started.
    started: Instant,
    /// Records handed out so far.
    sent: u64,
}

impl Source {
    /// Opens the source described by `spec`; relative paths start from `dir`.
    pub async fn open(spec: &SourceSpec, dir: &Path) -> Result<Source, SourceError> {
        Ok(match spec {
            SourceSpec::Generator(g) => {
                let rate = g.rate_per_sec.as_ref().map(|r| r.value.max(1));
                // With a rate, batches hold at most 1/20 s of records so the flow stays smooth.
                let batch_size = match rate {
                    Some(rate) => g.batch_size.value.min((rate / 20).max(1) as usize),
                    None => g.batch_size.value,
                };
                Source::Generator {
                    generator: generator::Generator::new(g, now_ms()),
                    batch_size,
                    pace: rate.map(|rate| Pace {
                        rate,
                        started: Instant::now(),
                        sent: 0,
                    }),
                }
            }
            SourceSpec::File(f) => Source::File(
                file::FileSource::open(&dir.join(&f.path.value), f.batch_size.value).await?,
            ),
        })
    }

    /// The next batch, or `None` when the source has ended.
    pub async fn next_batch(&mut self) -> Result<Option<Batch>, SourceError> {
        match self {
            Source::Generator {
                generator,
                batch_size,
                pace,
            } => {
                if let Some(pace) = pace {
                    let due =
                        pace.started + Duration::from_secs_f64(pace.sent as f64 / pace.rate as f64);
                    tokio::time::sleep_until(due).await;
                }
                let mut batch =
                    Batch::with_capacity(generator::TOPIC, 0, *batch_size, *batch_size * 200);
                let n = generator.fill(&mut batch, *batch_size);
                if let Some(pace) = pace {
                    pace.sent += n as u64;
                }
                Ok((n > 0).then_some(batch))
            }
            Source::File(f) => f.next_batch().await,
        }
    }

    /// What the progress line calls this source.
    pub fn label(&self) -> &'static str {
        match self {
            Source::Generator { .. } => "generator",
            Source::File(_) => "file",
        }
    }
}
