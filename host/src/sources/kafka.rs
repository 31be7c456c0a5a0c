//! The `kafka` source: a consumer group member (rdkafka, bundled librdkafka).
//!
//! Messages arrive interleaved across partitions; they are gathered into one batch per
//! partition (a batch never mixes partitions, so stages see one partition's order) and a batch
//! is handed out when it is full or when it has waited `linger`. The position of every batch
//! handed out is remembered; when a checkpoint barrier leaves the source, those positions are
//! snapshotted, and they are committed to Kafka only once every sink has finished that
//! checkpoint. Kafka's committed offsets are therefore never ahead of what the sinks hold.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer, StreamConsumer},
    message::Headers,
};
use tokio::time::Instant;

use super::{Pulled, SourceError};
use crate::{
    pipeline::spec::{KafkaSourceSpec, StartFrom, ValueFormat},
    plugin::now_ms,
    record::{Batch, RecordError, header},
};

/// Client properties a pipeline may set, beyond the ones Weir sets itself. Anything else is
/// refused, so a pipeline file cannot, say, turn auto-commit back on.
pub const ALLOWED_PROPERTIES: &[&str] = &[
    "client.id",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "fetch.min.bytes",
    "fetch.wait.max.ms",
    "fetch.max.bytes",
    "max.partition.fetch.bytes",
    "queued.max.messages.kbytes",
    "socket.timeout.ms",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "partition.assignment.strategy",
    "isolation.level",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
];

/// Next offset to read, per (topic, partition).
pub type Positions = BTreeMap<(String, i32), i64>;

/// A running Kafka source.
pub struct KafkaSource {
    /// The consumer.
    consumer: StreamConsumer,
    /// How values are checked.
    format: ValueFormat,
    /// Records per batch.
    batch_size: usize,
    /// Longest a partial batch waits for more records.
    linger: Duration,
    /// Batches being filled, per (topic, partition), with when their first record arrived.
    filling: HashMap<(String, i32), (Batch, Instant)>,
    /// Next offset after the last batch handed out, per partition.
    handed_out: Positions,
    /// Position snapshots of checkpoints whose barrier has left but that are not finished yet.
    pending: BTreeMap<u64, Positions>,
}

fn kafka_error(e: rdkafka::error::KafkaError) -> SourceError {
    SourceError::Kafka(e.to_string())
}

impl KafkaSource {
    /// Connects and subscribes.
    pub fn open(spec: &KafkaSourceSpec) -> Result<KafkaSource, SourceError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &spec.bootstrap_servers.value)
            .set("group.id", &spec.group_id.value)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set(
                "auto.offset.reset",
                match spec.start_from {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            );
        for (key, value) in &spec.properties.value {
            config.set(key, value);
        }
        let consumer: StreamConsumer = config.create().map_err(kafka_error)?;
        let topics: Vec<&str> = spec.topics.value.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(kafka_error)?;
        Ok(KafkaSource {
            consumer,
            format: spec.format,
            batch_size: spec.batch_size.value,
            linger: spec
                .linger
                .as_ref()
                .map_or(Duration::from_millis(50), |l| l.value.0),
            filling: HashMap::new(),
            handed_out: Positions::new(),
            pending: BTreeMap::new(),
        })
    }

    /// The next batch of one partition. Waits for the first message as long as it takes; then
    /// fills batches until one is full or the oldest has waited `linger`.
    pub async fn next_batch(&mut self) -> Result<Pulled, SourceError> {
        loop {
            if let Some(key) = self.due() {
                let (batch, _) = self.filling.remove(&key).expect("due batches exist");
                return Ok(self.hand_out(key, batch));
            }
            let deadline = self
                .filling
                .values()
                .map(|(_, since)| *since + self.linger)
                .min();
            let message = match deadline {
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                        Ok(message) => message,
                        Err(_) => continue, // a batch is due now
                    }
                }
                None => self.consumer.recv().await,
            };
            let message = message.map_err(kafka_error)?;
            let key = (message.topic().to_string(), message.partition());
            let batch_size = self.batch_size;
            let (batch, _) = self.filling.entry(key).or_insert_with(|| {
                (
                    Batch::with_capacity(
                        message.topic(),
                        message.partition(),
                        batch_size,
                        batch_size * 256,
                    ),
                    Instant::now(),
                )
            });
            let headers: Vec<_> = message
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| header(h.key, h.value.unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            let timestamp = message.timestamp().to_millis().unwrap_or_else(now_ms);
            batch.push(
                message.key(),
                message.payload().unwrap_or_default(),
                timestamp,
                message.offset(),
                &headers,
            );
        }
    }

    /// The partition whose batch should go now: a full one, else one that waited long enough.
    fn due(&self) -> Option<(String, i32)> {
        let now = Instant::now();
        self.filling
            .iter()
            .filter(|(_, (batch, since))| {
                batch.len() >= self.batch_size || now >= *since + self.linger
            })
            .min_by_key(|(_, (_, since))| *since)
            .map(|(key, _)| key.clone())
    }

    fn hand_out(&mut self, key: (String, i32), batch: Batch) -> Pulled {
        if let Some(last) = batch.records.last() {
            self.handed_out.insert(key, last.offset + 1);
        }
        match self.format {
            ValueFormat::Raw => Pulled {
                batch,
                dead_letters: None,
            },
            ValueFormat::Json => split_invalid_json(batch),
        }
    }

    /// Remembers where the source stands as checkpoint `id`'s barrier leaves it.
    pub fn barrier(&mut self, id: u64) {
        self.pending.insert(id, self.handed_out.clone());
    }

    /// Checkpoint `id` is finished by every sink: commits its positions to Kafka (and forgets
    /// older snapshots, which it covers).
    pub fn commit(&mut self, id: u64) -> Result<(), SourceError> {
        let Some(positions) = self.pending.remove(&id) else {
            return Ok(());
        };
        self.pending.retain(|older, _| *older > id);
        if positions.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &positions {
            list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(kafka_error)?;
        }
        self.consumer
            .commit(&list, CommitMode::Sync)
            .map_err(kafka_error)?;
        tracing::debug!(checkpoint = id, ?positions, "committed Kafka offsets");
        Ok(())
    }
}

/// Moves the records whose value is not JSON into dead letters.
fn split_invalid_json(batch: Batch) -> Pulled {
    let errors: Vec<RecordError> = (0..batch.len())
        .filter_map(|i| {
            serde_json::from_slice::<serde::de::IgnoredAny>(batch.value(i))
                .err()
                .map(|e| RecordError {
                    index: i as u32,
                    message: format!("value is not JSON: {e}"),
                })
        })
        .collect();
    if errors.is_empty() {
        return Pulled {
            batch,
            dead_letters: None,
        };
    }
    let dead = batch.dead_letters(&errors, "source", None);
    let mut good = Batch::with_capacity(
        &batch.topic,
        batch.partition,
        batch.len() - errors.len(),
        batch.data.len(),
    );
    let mut bad = errors.iter().map(|e| e.index as usize).peekable();
    for i in 0..batch.len() {
        if bad.peek() == Some(&i) {
            bad.next();
            continue;
        }
        good.push_from(&batch, i, &[]);
    }
    Pulled {
        batch: good,
        dead_letters: Some(dead),
    }
}
