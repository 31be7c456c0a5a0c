//! Built-in sources: where records enter a pipeline. A closed set, matched exhaustively.
//!
//! A source runs on a thread of its own and hands out batches in the host's columnar layout;
//! the runtime pulls them one at a time, so a slow pipeline slows the source down instead of
//! piling records up. Blocking is legal there: a file read, a rate limit's sleep, and the
//! synchronous checkpoint a Kafka consumer runs when the group takes partitions away.

pub mod avro;
pub mod embedded;
pub mod file;
pub mod generator;
pub mod kafka;

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{checkpoint::Offset, pipeline::spec::SourceSpec, plugin::now_ms, record::Batch};

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
    /// The Kafka client failed (it retries connections by itself; this is what it gave up on).
    #[error("kafka: {0}")]
    Kafka(String),
}

/// The longest a call to [`Source::pull`] blocks, so the runtime can start checkpoints and
/// notice a stop request in time.
pub const MAX_WAIT: Duration = Duration::from_millis(50);

/// What a source hands out: records, and the records it refused itself (a `json` Kafka source
/// refuses values that are not JSON) as dead letters.
pub struct Pulled {
    /// Good records.
    pub batch: Batch,
    /// Refused records, with headers saying why.
    pub dead_letters: Option<Batch>,
}

/// What [`Source::pull`] found.
pub enum Next {
    /// Records (boxed: a batch is large next to the other answers).
    Pulled(Box<Pulled>),
    /// Nothing yet; ask again.
    Idle,
    /// The source has ended (a bounded generator or a file); Kafka never ends by itself.
    End,
}

/// A synchronous checkpoint, which the runtime offers the sources: it sends `pulled` and a
/// checkpoint barrier through the pipeline and returns once every sink has finished that
/// checkpoint. A Kafka source calls it when the group takes partitions away, so that what it
/// read from them is in the sinks and committed before another member reads on.
pub trait Drain: Send {
    /// Sends `pulled`, then the barrier of a new checkpoint, calling `barrier` with its number
    /// just before (it returns the source's position); returns the number once the checkpoint
    /// is committed.
    fn drain(
        &mut self,
        pulled: Vec<Pulled>,
        barrier: &mut dyn FnMut(u64) -> Vec<Offset>,
    ) -> Result<u64, String>;
}

/// The runtime's [`Drain`], shared with the sources that need it.
pub type SharedDrain = Arc<Mutex<dyn Drain>>;

/// A running source.
pub enum Source {
    /// Synthetic records.
    Generator {
        /// The record sequence.
        generator: generator::Generator,
        /// Records per batch.
        batch_size: usize,
        /// Wall-clock pacing, when a rate is set.
        pace: Option<Pace>,
    },
    /// Lines of a file.
    File(file::FileSource),
    /// A Kafka consumer group member.
    Kafka(Box<kafka::KafkaSource>),
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

impl Pace {
    /// Pacing at `rate` records per second, from now.
    pub fn new(rate: u64) -> Pace {
        Pace {
            rate: rate.max(1),
            started: Instant::now(),
            sent: 0,
        }
    }

    /// How long until the next record is due (zero: now).
    pub fn wait(&self) -> Duration {
        let due = self.started + Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
        due.saturating_duration_since(Instant::now())
    }

    /// Waits until the next record is due, or [`MAX_WAIT`] if that comes first; says whether
    /// it is due.
    pub fn ready(&mut self) -> bool {
        let wait = self.wait();
        std::thread::sleep(wait.min(MAX_WAIT));
        wait <= MAX_WAIT
    }

    /// Counts `n` more records as sent.
    pub fn sent(&mut self, n: usize) {
        self.sent += n as u64;
    }

    /// Records per batch so the flow stays smooth: at most 1/20 s of records.
    pub fn batch_size(rate: u64, max: usize) -> usize {
        max.min((rate / 20).max(1) as usize)
    }
}

impl Source {
    /// Opens the source described by `spec`; relative paths start from `dir`. It starts where
    /// `resume` (the newest manifest's positions) says, if that names anything.
    pub fn open(
        spec: &SourceSpec,
        dir: &Path,
        drain: SharedDrain,
        resume: &[Offset],
        metrics: std::sync::Arc<crate::runtime::Metrics>,
    ) -> Result<Source, SourceError> {
        let skip = resume.first().map_or(0, |o| o.offset.max(0) as u64);
        Ok(match spec {
            SourceSpec::Generator(g) => {
                let rate = g.rate_per_sec.as_ref().map(|r| r.value.max(1));
                let batch_size = match rate {
                    Some(rate) => Pace::batch_size(rate, g.batch_size.value),
                    None => g.batch_size.value,
                };
                let mut generator = generator::Generator::new(g, now_ms());
                generator.skip(skip);
                Source::Generator {
                    generator,
                    batch_size,
                    pace: rate.map(Pace::new),
                }
            }
            SourceSpec::File(f) => Source::File(file::FileSource::open(
                &dir.join(&f.path.value),
                f.batch_size.value,
                skip,
            )?),
            SourceSpec::Kafka(k) => Source::Kafka(Box::new(kafka::KafkaSource::open(
                k, dir, drain, resume, metrics,
            )?)),
        })
    }

    /// The next batch, blocking at most about [`MAX_WAIT`].
    pub fn pull(&mut self) -> Result<Next, SourceError> {
        let plain = |batch: Option<Batch>| match batch {
            Some(batch) => Next::Pulled(Box::new(Pulled {
                batch,
                dead_letters: None,
            })),
            None => Next::End,
        };
        match self {
            Source::Generator {
                generator,
                batch_size,
                pace,
            } => {
                if let Some(pace) = pace
                    && !pace.ready()
                {
                    return Ok(Next::Idle);
                }
                let mut batch =
                    Batch::with_capacity(generator::TOPIC, 0, *batch_size, *batch_size * 200);
                let n = generator.fill(&mut batch, *batch_size);
                if let Some(pace) = pace {
                    pace.sent(n);
                }
                Ok(plain((n > 0).then_some(batch)))
            }
            Source::File(f) => Ok(plain(f.next_batch()?)),
            Source::Kafka(k) => k.pull(),
        }
    }

    /// Whether the source can stop fetching for a while ([`Source::pause`]) instead of blocking:
    /// a Kafka consumer must keep polling to stay in its group and to run rebalances.
    pub fn can_pause(&self) -> bool {
        matches!(self, Source::Kafka(_))
    }

    /// Stops fetching (the pipeline holds as much as it may).
    pub fn pause(&mut self) -> Result<(), SourceError> {
        match self {
            Source::Kafka(k) => k.pause(),
            _ => Ok(()),
        }
    }

    /// While paused: keeps the source alive (a Kafka consumer's group membership and rebalance
    /// callbacks) for a few milliseconds without handing anything out.
    pub fn serve(&mut self) -> Result<(), SourceError> {
        match self {
            Source::Kafka(k) => k.serve(),
            _ => Ok(()),
        }
    }

    /// Fetches again.
    pub fn resume(&mut self) -> Result<(), SourceError> {
        match self {
            Source::Kafka(k) => k.resume(),
            _ => Ok(()),
        }
    }

    /// Notes where the source stands as checkpoint `id`'s barrier leaves it, and returns it
    /// for the manifest. A generator or a file has one "partition": the records handed out.
    pub fn barrier(&mut self, id: u64) -> Vec<Offset> {
        let count = |topic: &str, n: u64| {
            vec![Offset {
                topic: topic.into(),
                partition: 0,
                offset: n as i64,
            }]
        };
        match self {
            Source::Kafka(k) => k.barrier(id),
            Source::Generator { generator, .. } => count(generator::TOPIC, generator.produced()),
            Source::File(f) => count("file", f.lines_read()),
        }
    }

    /// Checkpoint `id` is committed: the source may forget what came before it (for Kafka:
    /// commit the group's offsets).
    pub fn checkpoint_done(&mut self, id: u64) -> Result<(), SourceError> {
        match self {
            Source::Kafka(k) => k.commit(id),
            _ => Ok(()),
        }
    }

    /// What the progress line calls this source.
    pub fn label(&self) -> &'static str {
        match self {
            Source::Generator { .. } => "generator",
            Source::File(_) => "file",
            Source::Kafka(_) => "kafka",
        }
    }
}
