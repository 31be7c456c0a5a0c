//! `bootstrap_servers: embedded`: librdkafka's in-process mock cluster, filled by the generator,
//! so a pipeline runs the real Kafka source — consumer group, offsets, commits — with no broker
//! installed.
//!
//! The cluster lives on a thread of its own (its handle cannot move between threads), which
//! creates the topic, produces the generated records into it (keyed, with their event time as
//! timestamp, at the generator's rate), then keeps the cluster up until the source is dropped.
//! Everything is in memory and gone when the process ends.
//!
//! A mock partition keeps at most 5 MiB or 100,000 messages and silently drops its oldest
//! beyond that, read or not. So the generator stays at most [`WINDOW_BYTES`] and
//! [`WINDOW_RECORDS`] ahead of what the source has read: nothing is dropped before it is read.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig,
    mocking::MockCluster,
    producer::{BaseProducer, BaseRecord, Producer},
    types::RDKafkaErrorCode,
};

use super::{Pace, SourceError, generator::Generator};
use crate::{pipeline::spec::EmbeddedSpec, plugin::now_ms, record::Batch};

/// Most bytes the generator writes ahead of the reader (below a mock partition's 5 MiB even if
/// every key lands on one partition).
const WINDOW_BYTES: u64 = 3 << 20;

/// Most records the generator writes ahead of the reader (below a mock partition's 100,000).
const WINDOW_RECORDS: u64 = 50_000;

/// Per-message overhead counted against the window, besides key and value.
const OVERHEAD_BYTES: u64 = 64;

/// How far the generator and the reader have come.
#[derive(Default)]
struct Progress {
    /// Records produced.
    produced: AtomicU64,
    /// Bytes produced (key, value and [`OVERHEAD_BYTES`] each).
    produced_bytes: AtomicU64,
    /// Records the source has read.
    read: AtomicU64,
    /// Bytes the source has read, counted the same way.
    read_bytes: AtomicU64,
}

/// A running in-process cluster.
pub struct EmbeddedCluster {
    /// Where clients connect.
    pub bootstrap: String,
    /// Records and bytes produced and read.
    progress: Arc<Progress>,
    /// Set once the generator has produced everything it will (a bounded count).
    done: Arc<AtomicBool>,
    /// Tells the cluster's thread to shut the cluster down.
    stop: Arc<AtomicBool>,
    /// The cluster's thread.
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedCluster {
    /// Starts a cluster with `topic`, and the generator writing into it.
    pub fn start(spec: &EmbeddedSpec, topic: &str) -> Result<EmbeddedCluster, SourceError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let progress = Arc::new(Progress::default());
        let done = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let generator = Generator::new(&spec.generate, now_ms());
        let rate = spec.generate.rate_per_sec.as_ref().map(|r| r.value);
        let partitions = spec.partitions.value;
        let topic = topic.to_string();
        let thread = {
            let (progress, done, stop) = (progress.clone(), done.clone(), stop.clone());
            std::thread::Builder::new()
                .name("weir-embedded-kafka".into())
                .spawn(move || {
                    let cluster = match MockCluster::new(1)
                        .and_then(|c| c.create_topic(&topic, partitions, 1).map(|()| c))
                    {
                        Ok(cluster) => cluster,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("embedded Kafka cluster: {e}")));
                            return;
                        }
                    };
                    let bootstrap = cluster.bootstrap_servers();
                    let _ = ready_tx.send(Ok(bootstrap.clone()));
                    let fed = feed(&bootstrap, &topic, generator, rate, &progress, &stop);
                    match fed {
                        Ok(()) => done.store(true, Ordering::Release),
                        Err(e) => tracing::error!("embedded Kafka cluster: {e}"),
                    }
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    drop(cluster);
                })
                .map_err(|e| {
                    SourceError::Kafka(format!("cannot start the embedded cluster: {e}"))
                })?
        };
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| SourceError::Kafka("the embedded cluster did not start".into()))?
            .map_err(SourceError::Kafka)?;
        Ok(EmbeddedCluster {
            bootstrap,
            progress,
            done,
            stop,
            thread: Some(thread),
        })
    }

    /// How many records the generator produced, once it has produced all of them.
    pub fn finished(&self) -> Option<u64> {
        self.done
            .load(Ordering::Acquire)
            .then(|| self.progress.produced.load(Ordering::Acquire))
    }

    /// The source has read a message with this key and value.
    pub fn read(&self, key: Option<&[u8]>, value: Option<&[u8]>) {
        let bytes = key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len);
        self.progress.read.fetch_add(1, Ordering::Release);
        self.progress
            .read_bytes
            .fetch_add(bytes as u64 + OVERHEAD_BYTES, Ordering::Release);
    }
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Produces the generator's records into `topic` until it ends or `stop` is set.
fn feed(
    bootstrap: &str,
    topic: &str,
    mut generator: Generator,
    rate: Option<u64>,
    progress: &Progress,
    stop: &AtomicBool,
) -> Result<(), String> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .map_err(|e| format!("cannot create its producer: {e}"))?;
    let batch_size = rate.map_or(1024, |rate| Pace::batch_size(rate, 1024));
    let mut pace = rate.map(Pace::new);
    let started = Instant::now();
    let ahead = || {
        let p = progress;
        let records = p.produced.load(Ordering::Acquire) - p.read.load(Ordering::Acquire);
        let bytes = p.produced_bytes.load(Ordering::Acquire) - p.read_bytes.load(Ordering::Acquire);
        records + batch_size as u64 > WINDOW_RECORDS || bytes > WINDOW_BYTES / 2
    };
    while !stop.load(Ordering::Acquire) {
        if ahead() {
            // Let the reader catch up (see the module's notes).
            producer.poll(Duration::from_millis(5));
            continue;
        }
        if let Some(pace) = &mut pace
            && !pace.ready()
        {
            producer.poll(Duration::ZERO);
            continue;
        }
        let mut batch = Batch::with_capacity(topic, 0, batch_size, batch_size * 256);
        let n = generator.fill(&mut batch, batch_size);
        if n == 0 {
            break;
        }
        let mut bytes = 0;
        for i in 0..n {
            bytes += batch.value(i).len() as u64
                + batch.key(i).map_or(0, |k| k.len() as u64)
                + OVERHEAD_BYTES;
            let mut record = BaseRecord::<[u8], [u8]>::to(topic)
                .payload(batch.value(i))
                .timestamp(batch.records[i].timestamp_ms);
            if let Some(key) = batch.key(i) {
                record = record.key(key);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, back))
                        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) =>
                    {
                        record = back;
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => return Err(format!("producing: {e}")),
                }
            }
        }
        producer.poll(Duration::ZERO);
        if let Some(pace) = &mut pace {
            pace.sent(n);
        }
        progress.produced_bytes.fetch_add(bytes, Ordering::Release);
        progress.produced.fetch_add(n as u64, Ordering::Release);
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| format!("flushing: {e}"))?;
    tracing::info!(
        records = progress.produced.load(Ordering::Acquire),
        secs = started.elapsed().as_secs_f64(),
        "embedded cluster filled"
    );
    Ok(())
}
