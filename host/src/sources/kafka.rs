//! The `kafka` source: a consumer group member (rdkafka, bundled librdkafka).
//!
//! Messages arrive interleaved across partitions; they are gathered into one batch per
//! partition (a batch never mixes partitions, so stages see one partition's order) and a batch
//! is handed out when it is full or when it has waited `linger`.
//!
//! Offsets: the position of every batch handed out is remembered; when a checkpoint barrier
//! leaves the source, those positions are snapshotted, and they are committed to Kafka only once
//! every sink has finished that checkpoint. When the group takes partitions away (a member
//! joins or leaves), the revoke callback hands out everything buffered, runs a checkpoint
//! through the pipeline and waits for it ([`Drain`]), and commits, all before the partitions
//! move: the next owner starts exactly where this one stopped.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, ClientContext, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    message::{BorrowedMessage, Headers},
};

use super::{
    MAX_WAIT, Next, Pulled, SharedDrain, SourceError,
    avro::{AvroDecoder, DecodeError},
    embedded::EmbeddedCluster,
};
use crate::{
    pipeline::spec::{KafkaSourceSpec, StartFrom, ValueFormat},
    plugin::now_ms,
    record::{Batch, RecordError, header},
};

/// Consumer properties a pipeline may set (besides [`SECURITY_PROPERTIES`]). Anything else is
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
    "fetch.queue.backoff.ms",
    "socket.timeout.ms",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "partition.assignment.strategy",
    "isolation.level",
];

/// Connection security properties a pipeline may set on any Kafka client (source or sink).
pub const SECURITY_PROPERTIES: &[&str] = &[
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

/// Why client property `key` may not be set, if it may not: it is neither in `allowed` nor a
/// security property.
pub fn refused_property(key: &str, allowed: &[&str]) -> Option<String> {
    if allowed.contains(&key) || SECURITY_PROPERTIES.contains(&key) {
        return None;
    }
    let allowed = [allowed, SECURITY_PROPERTIES].concat().join(", ");
    Some(format!(
        "client property `{key}` cannot be set here; allowed: {allowed}"
    ))
}

/// Most messages taken from the client's queue in one go, between clock readings.
const BURST: usize = 256;

/// The `bootstrap_servers` value that starts an in-process cluster ([`EmbeddedCluster`]).
pub const EMBEDDED: &str = "embedded";

/// Next offset to read, per (topic, partition).
pub type Positions = BTreeMap<(String, i32), i64>;

/// The batching and offset bookkeeping, shared between the polling loop and the rebalance
/// callback (both run on the source thread; the lock is never held across a poll).
struct State {
    /// How values are checked or decoded.
    values: Values,
    /// Records per batch.
    batch_size: usize,
    /// Longest a partial batch waits for more records.
    linger: Duration,
    /// Batches being filled, per (topic, partition), with when their first record arrived.
    /// (The batch names its topic and partition; there are as many as assigned partitions,
    /// so a scan finds one without building a key per message.)
    filling: Vec<(Batch, Instant)>,
    /// Next offset after the last batch handed out, per partition.
    handed_out: Positions,
    /// What was last committed.
    committed: Positions,
    /// Where each partition started this run (from the newest manifest), so every manifest
    /// names every partition, also one nothing was read from since.
    known: Positions,
    /// Position snapshots of checkpoints whose barrier has left but that are not finished yet.
    pending: BTreeMap<u64, Positions>,
}

/// What the source does with values before handing them out.
enum Values {
    /// Nothing.
    Raw,
    /// Checks they are JSON.
    Json,
    /// Decodes them into JSON.
    Avro(Box<AvroDecoder>),
}

/// The consumer's context: it runs the synchronous checkpoint when partitions are revoked.
struct Context {
    /// Shared with [`KafkaSource`].
    state: Arc<Mutex<State>>,
    /// The runtime's synchronous checkpoint.
    drain: SharedDrain,
    /// An error from the callback, reported by the next [`KafkaSource::pull`].
    failed: Mutex<Option<String>>,
    /// Where partitions start when first assigned: the newest manifest's positions.
    resume: Mutex<Positions>,
    /// Where the partitions' lag goes, from librdkafka's statistics.
    metrics: Arc<crate::runtime::Metrics>,
}

impl ClientContext for Context {
    /// Each owned partition's lag: the end of the partition the broker last reported (in its
    /// fetch responses, not a ListOffsets query) minus the source's position. Runs inside a
    /// poll, on the source thread, which never holds the state's lock across one.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut lag = Vec::new();
        for (topic, t) in &statistics.topics {
            for (&partition, p) in &t.partitions {
                let key = (topic.clone(), partition);
                let position = state
                    .handed_out
                    .get(&key)
                    .or_else(|| state.committed.get(&key))
                    .or_else(|| state.known.get(&key));
                if let Some(&position) = position
                    && partition >= 0
                    && p.hi_offset >= 0
                {
                    lag.push(crate::runtime::progress::PartitionLag {
                        topic: topic.clone(),
                        partition,
                        lag: (p.hi_offset - position).max(0),
                    });
                }
            }
        }
        lag.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        self.metrics.set_lag(lag);
    }
}

impl ConsumerContext for Context {
    /// As the default, but a partition assigned for the first time starts at its position in
    /// the newest manifest (the group's offset may be a checkpoint behind it after a crash).
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr::{
            RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS as ASSIGN,
            RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS as REVOKE,
        };
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            rdkafka::consumer::RebalanceProtocol::Cooperative
        );
        let result = match err {
            ASSIGN => {
                let mut resume = self.resume.lock().unwrap_or_else(PoisonError::into_inner);
                let starts: Vec<_> = tpl
                    .elements()
                    .iter()
                    .filter_map(|e| {
                        let key = (e.topic().to_string(), e.partition());
                        resume.remove(&key).map(|offset| (key, offset))
                    })
                    .collect();
                for ((topic, partition), offset) in starts {
                    if let Err(e) =
                        tpl.set_partition_offset(&topic, partition, Offset::Offset(offset))
                    {
                        tracing::warn!(topic, partition, "cannot start at the checkpoint: {e}");
                    }
                }
                drop(resume);
                self.pre_rebalance(consumer, &Rebalance::Assign(tpl));
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            REVOKE => {
                self.pre_rebalance(consumer, &Rebalance::Revoke(tpl));
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::warn!("rebalance error: {other:?}");
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            *self.failed.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(format!("cannot take the assignment: {e}"));
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.filling.is_empty() || state.handed_out != state.committed {
            let pulled: Result<Vec<Pulled>, SourceError> = std::mem::take(&mut state.filling)
                .into_iter()
                .map(|(batch, _)| state.hand_out(batch))
                .collect();
            let drained = pulled.map_err(|e| e.to_string()).and_then(|pulled| {
                self.drain
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .drain(pulled, &mut |id| state.barrier(id))
            });
            let committed =
                drained.and_then(|id| state.commit(consumer, id).map_err(|e| e.to_string()));
            match committed {
                Ok(()) => tracing::info!(
                    partitions = revoked.count(),
                    "partitions revoked: in-flight records written and committed"
                ),
                Err(e) => *self.failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(e),
            }
        }
        // What is no longer ours must never be committed by us again.
        for element in revoked.elements() {
            let key = (element.topic().to_string(), element.partition());
            state.handed_out.remove(&key);
            state.committed.remove(&key);
            state.known.remove(&key);
            for snapshot in state.pending.values_mut() {
                snapshot.remove(&key);
            }
        }
    }
}

/// A running Kafka source.
pub struct KafkaSource {
    /// The consumer (dropped before the embedded cluster, so it can leave its group).
    consumer: BaseConsumer<Context>,
    /// Batching and offsets, shared with the rebalance callback.
    state: Arc<Mutex<State>>,
    /// The in-process cluster, with `bootstrap_servers: embedded`.
    embedded: Option<EmbeddedCluster>,
    /// Records polled so far (for an embedded cluster: the source ends once it has read all
    /// the generator wrote).
    polled: u64,
}

fn kafka_error(e: rdkafka::error::KafkaError) -> SourceError {
    SourceError::Kafka(e.to_string())
}

impl KafkaSource {
    /// Connects and subscribes. `drain` is the runtime's synchronous checkpoint, for rebalances.
    /// A relative Avro schema path starts from `dir`.
    ///
    /// `resume` holds the positions of the newest checkpoint manifest: they are committed to the
    /// group before it is joined, so the group starts exactly after what the sinks committed
    /// (the group's own offsets may lag them by one checkpoint after a crash). An embedded
    /// cluster starts empty every run, so it has nothing to resume.
    pub fn open(
        spec: &KafkaSourceSpec,
        dir: &std::path::Path,
        drain: SharedDrain,
        resume: &[crate::checkpoint::Offset],
        metrics: Arc<crate::runtime::Metrics>,
    ) -> Result<KafkaSource, SourceError> {
        let embedded = match &spec.embedded {
            Some(e) if spec.bootstrap_servers.value == EMBEDDED => {
                let topic = spec.topics.value.first().map_or("", String::as_str);
                Some(EmbeddedCluster::start(&e.value, topic)?)
            }
            _ => None,
        };
        let bootstrap = embedded
            .as_ref()
            .map_or(spec.bootstrap_servers.value.as_str(), |e| {
                e.bootstrap.as_str()
            });
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("group.id", &spec.group_id.value)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // What librdkafka prefetches is part of the source's memory: 16 MiB rather than
            // its default 64 MiB (a pipeline may change it).
            .set("queued.max.messages.kbytes", "16384")
            // When that prefetch is full (the pipeline is slower than the broker, which is
            // what backpressure looks like), librdkafka waits this long before it fetches
            // again: 1 s by default, a stall the stages feel. 10 ms keeps them fed.
            .set("fetch.queue.backoff.ms", "10")
            // Partition ends for the lag metric, once a second.
            .set("statistics.interval.ms", "1000")
            .set(
                "auto.offset.reset",
                match spec.start_from {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            );
        if embedded.is_some() {
            // The mock broker answers a fetch only after this wait when the reader has caught
            // up with the generator, which it does all the time (see `embedded`).
            config.set("fetch.wait.max.ms", "5");
        }
        for (key, value) in &spec.properties.value {
            config.set(key, value);
        }
        let state = Arc::new(Mutex::new(State {
            values: match (spec.format.value, &spec.avro) {
                (ValueFormat::Avro, Some(avro)) => {
                    Values::Avro(Box::new(AvroDecoder::open(&avro.value, dir)?))
                }
                (ValueFormat::Avro, None) => {
                    return Err(SourceError::Kafka(
                        "format: avro without avro settings".into(),
                    ));
                }
                (ValueFormat::Json, _) => Values::Json,
                (ValueFormat::Raw, _) => Values::Raw,
            },
            batch_size: spec.batch_size.value,
            linger: spec
                .linger
                .as_ref()
                .map_or(Duration::from_millis(50), |l| l.value.0),
            filling: Vec::new(),
            handed_out: Positions::new(),
            committed: Positions::new(),
            known: Positions::new(),
            pending: BTreeMap::new(),
        }));
        let context = Context {
            state: state.clone(),
            drain,
            failed: Mutex::new(None),
            resume: Mutex::new(Positions::new()),
            metrics,
        };
        let consumer: BaseConsumer<Context> =
            config.create_with_context(context).map_err(kafka_error)?;
        if embedded.is_none() && !resume.is_empty() {
            let start = start_positions(&consumer, resume)?;
            state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .known
                .clone_from(&start);
            *consumer
                .context()
                .resume
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = start;
        }
        let topics: Vec<&str> = spec.topics.value.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(kafka_error)?;
        Ok(KafkaSource {
            consumer,
            state,
            embedded,
            polled: 0,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next batch of one partition, waiting at most about [`MAX_WAIT`].
    pub fn pull(&mut self) -> Result<Next, SourceError> {
        if let Some(e) = self
            .consumer
            .context()
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            return Err(SourceError::Kafka(format!(
                "while partitions were revoked: {e}"
            )));
        }
        let give_up = Instant::now() + MAX_WAIT;
        let all_read = self
            .embedded
            .as_ref()
            .and_then(EmbeddedCluster::finished)
            .is_some_and(|produced| self.polled >= produced);
        loop {
            let (wait, room) = {
                let mut state = self.state();
                if all_read {
                    // Everything the embedded generator wrote: hand out the rest, then end.
                    return Ok(match state.filling.pop() {
                        Some((batch, _)) => Next::Pulled(Box::new(state.hand_out(batch)?)),
                        None => Next::End,
                    });
                }
                if let Some(i) = state.due() {
                    let (batch, _) = state.filling.swap_remove(i);
                    return Ok(Next::Pulled(Box::new(state.hand_out(batch)?)));
                }
                let oldest_due = state
                    .filling
                    .iter()
                    .map(|(_, since)| *since + state.linger)
                    .min();
                let wait = oldest_due
                    .map_or(give_up, |due| due.min(give_up))
                    .saturating_duration_since(Instant::now());
                // No batch is full (it would be due), and a burst never overfills one.
                let fullest = state.filling.iter().map(|(b, _)| b.len()).max();
                (wait, state.batch_size - fullest.unwrap_or(0))
            };
            if wait.is_zero() {
                return Ok(Next::Idle);
            }
            // Never under the state lock: a poll may run the rebalance callback, which takes it.
            let first = match self.consumer.poll(wait) {
                None => continue,
                Some(message) => message.map_err(kafka_error)?,
            };
            // Whatever else is waiting, without a clock reading or a lock per message: the
            // messages borrow the consumer's buffers until they are pushed, all at once.
            let limit = room.min(BURST);
            let mut burst = Vec::with_capacity(limit);
            burst.push(first);
            while burst.len() < limit {
                match self.consumer.poll(Duration::ZERO) {
                    Some(message) => burst.push(message.map_err(kafka_error)?),
                    None => break,
                }
            }
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            for message in &burst {
                count(&mut self.polled, self.embedded.as_ref(), message);
                state.push(message);
            }
        }
    }

    /// Pauses every assigned partition: librdkafka stops fetching and drops what it prefetched
    /// (it fetches again from the position after the last message polled), so memory stays
    /// bounded however long the pipeline is full.
    pub fn pause(&mut self) -> Result<(), SourceError> {
        let assignment = self.consumer.assignment().map_err(kafka_error)?;
        self.consumer.pause(&assignment).map_err(kafka_error)
    }

    /// Polls while paused, so the group's heartbeats, rebalances and their callbacks keep
    /// working. A message already on its way is kept in its partition's batch; a partition
    /// assigned during the pause is paused too.
    pub fn serve(&mut self) -> Result<(), SourceError> {
        if let Some(message) = self.consumer.poll(Duration::from_millis(10)) {
            let message = message.map_err(kafka_error)?;
            count(&mut self.polled, self.embedded.as_ref(), &message);
            self.state().push(&message);
        }
        self.pause()
    }

    /// Resumes every assigned partition.
    pub fn resume(&mut self) -> Result<(), SourceError> {
        let assignment = self.consumer.assignment().map_err(kafka_error)?;
        self.consumer.resume(&assignment).map_err(kafka_error)
    }

    /// Remembers where the source stands as checkpoint `id`'s barrier leaves it, and returns
    /// it.
    pub fn barrier(&mut self, id: u64) -> Vec<crate::checkpoint::Offset> {
        self.state().barrier(id)
    }

    /// Checkpoint `id` is finished by every sink: commits its positions to Kafka.
    pub fn commit(&mut self, id: u64) -> Result<(), SourceError> {
        self.state().commit(&self.consumer, id)
    }
}

impl State {
    fn push(&mut self, message: &BorrowedMessage<'_>) {
        let (topic, partition) = (message.topic(), message.partition());
        let i = match self
            .filling
            .iter()
            .position(|(b, _)| b.partition == partition && b.topic == topic)
        {
            Some(i) => i,
            None => {
                let batch =
                    Batch::with_capacity(topic, partition, self.batch_size, self.batch_size * 256);
                self.filling.push((batch, Instant::now()));
                self.filling.len() - 1
            }
        };
        let batch = &mut self.filling[i].0;
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

    /// The partition whose batch should go now: a full one, else one that waited long enough.
    fn due(&self) -> Option<usize> {
        let now = Instant::now();
        self.filling
            .iter()
            .enumerate()
            .filter(|(_, (batch, since))| {
                batch.len() >= self.batch_size || now >= *since + self.linger
            })
            .min_by_key(|(_, (_, since))| *since)
            .map(|(i, _)| i)
    }

    fn hand_out(&mut self, batch: Batch) -> Result<Pulled, SourceError> {
        if let Some(last) = batch.records.last() {
            self.handed_out
                .insert((batch.topic.clone(), batch.partition), last.offset + 1);
        }
        Ok(match &mut self.values {
            Values::Raw => Pulled {
                batch,
                dead_letters: None,
            },
            Values::Json => split_invalid_json(batch),
            Values::Avro(decoder) => decode_avro(batch, decoder)?,
        })
    }

    /// Snapshots the positions handed out for checkpoint `id`. The manifest gets every
    /// partition this member owns, also those it has read nothing from since they were
    /// committed.
    fn barrier(&mut self, id: u64) -> Vec<crate::checkpoint::Offset> {
        self.pending.insert(id, self.handed_out.clone());
        let mut all = self.known.clone();
        all.extend(self.committed.clone());
        all.extend(self.handed_out.clone());
        all.into_iter()
            .map(|((topic, partition), offset)| crate::checkpoint::Offset {
                topic,
                partition,
                offset,
            })
            .collect()
    }

    /// Commits the positions of checkpoint `id` (and forgets older snapshots, which it covers).
    fn commit(&mut self, consumer: &BaseConsumer<Context>, id: u64) -> Result<(), SourceError> {
        let Some(positions) = self.pending.remove(&id) else {
            return Ok(());
        };
        self.pending.retain(|older, _| *older > id);
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &positions {
            if self.committed.get(&(topic.clone(), *partition)) != Some(offset) {
                list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                    .map_err(kafka_error)?;
            }
        }
        if list.count() > 0 {
            consumer
                .commit(&list, CommitMode::Sync)
                .map_err(kafka_error)?;
            tracing::debug!(checkpoint = id, ?positions, "committed Kafka offsets");
        }
        self.committed.extend(positions);
        Ok(())
    }
}

/// Where each partition of `resume` starts: its manifest position, or the group's committed
/// offset if that is further (another member read on after this pipeline's last checkpoint).
fn start_positions(
    consumer: &BaseConsumer<Context>,
    resume: &[crate::checkpoint::Offset],
) -> Result<Positions, SourceError> {
    let mut list = TopicPartitionList::new();
    for o in resume {
        list.add_partition(&o.topic, o.partition);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(30))
        .map_err(|e| SourceError::Kafka(format!("reading the group's offsets: {e}")))?;
    let mut start = Positions::new();
    for o in resume {
        let group = committed
            .find_partition(&o.topic, o.partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            });
        start.insert(
            (o.topic.clone(), o.partition),
            group.map_or(o.offset, |g| g.max(o.offset)),
        );
    }
    Ok(start)
}

/// Counts a polled message (an embedded cluster's generator keeps just ahead of the count).
fn count(polled: &mut u64, embedded: Option<&EmbeddedCluster>, message: &BorrowedMessage<'_>) {
    *polled += 1;
    if let Some(embedded) = embedded {
        embedded.read(message.key(), message.payload());
    }
}

/// Decodes every value of `batch` into JSON; the ones that do not decode become dead letters.
/// Fails (and so stops the source, with nothing committed) only when the schema registry cannot
/// be asked.
fn decode_avro(batch: Batch, decoder: &mut AvroDecoder) -> Result<Pulled, SourceError> {
    let mut good = Batch::with_capacity(
        &batch.topic,
        batch.partition,
        batch.len(),
        batch.data.len() * 2,
    );
    let mut errors = Vec::new();
    let mut json = Vec::new();
    for i in 0..batch.len() {
        json.clear();
        match decoder.decode(batch.value(i), &mut json) {
            Ok(()) => {
                let record = batch.records[i];
                good.push(
                    batch.key(i),
                    &json,
                    record.timestamp_ms,
                    record.offset,
                    batch.headers_of(i),
                );
            }
            Err(DecodeError::Record(message)) => errors.push(RecordError {
                index: i as u32,
                message: format!("value is not Avro of the schema: {message}"),
            }),
            Err(DecodeError::Registry(e)) => {
                return Err(SourceError::Kafka(format!("schema registry: {e}")));
            }
        }
    }
    let dead_letters = (!errors.is_empty()).then(|| batch.dead_letters(&errors, "source", None));
    Ok(Pulled {
        batch: good,
        dead_letters,
    })
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

#[cfg(test)]
mod security_tests {
    use rdkafka::{ClientConfig, consumer::BaseConsumer};

    /// The allowed security properties work: librdkafka is built with SSL and SASL (SCRAM,
    /// PLAIN), so a client with them is created (a build without would refuse it here).
    #[test]
    fn sasl_ssl_clients_can_be_created() {
        for (protocol, mechanism) in [("SASL_SSL", "SCRAM-SHA-512"), ("SASL_PLAINTEXT", "PLAIN")] {
            let consumer: Result<BaseConsumer, _> = ClientConfig::new()
                .set("bootstrap.servers", "127.0.0.1:1")
                .set("group.id", "security-test")
                .set("security.protocol", protocol)
                .set("sasl.mechanisms", mechanism)
                .set("sasl.username", "weir")
                .set("sasl.password", "secret")
                .create();
            assert!(
                consumer.is_ok(),
                "{protocol}/{mechanism}: {:?}",
                consumer.err()
            );
        }
    }
}
