//! The `kafka` sink: records to a topic with their key, value, headers and timestamp, through an
//! idempotent producer (librdkafka retries a failed send without writing it twice). A checkpoint
//! waits until every record sent so far is acknowledged by the broker; a record the client
//! gives up on fails the sink, so nothing is lost quietly.

use std::collections::VecDeque;

use rdkafka::{
    ClientConfig,
    message::{Header, OwnedHeaders},
    producer::{DeliveryFuture, FutureProducer, FutureRecord},
    types::RDKafkaErrorCode,
};

use super::SinkError;
use crate::{pipeline::spec::KafkaSinkSpec, record::Batch};

/// Producer properties a pipeline may set (besides
/// [`SECURITY_PROPERTIES`](crate::sources::kafka::SECURITY_PROPERTIES)).
pub const ALLOWED_PROPERTIES: &[&str] = &[
    "client.id",
    "linger.ms",
    "batch.size",
    "batch.num.messages",
    "compression.type",
    "message.timeout.ms",
    "request.timeout.ms",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "socket.timeout.ms",
];

/// Deliveries awaited at once before sending more; bounds memory when the broker is slow.
const MAX_IN_FLIGHT: usize = 200_000;

/// The sink.
pub struct KafkaSink {
    /// The producer.
    producer: FutureProducer,
    /// Topic written to.
    topic: String,
    /// Deliveries not yet confirmed, oldest first.
    in_flight: VecDeque<DeliveryFuture>,
}

impl KafkaSink {
    /// Creates the producer.
    pub fn open(spec: &KafkaSinkSpec) -> Result<KafkaSink, SinkError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &spec.bootstrap_servers.value)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5");
        for (key, value) in &spec.properties.value {
            config.set(key, value);
        }
        let producer: FutureProducer = config
            .create()
            .map_err(|e| SinkError::Io(format!("cannot create a Kafka producer: {e}")))?;
        Ok(KafkaSink {
            producer,
            topic: spec.topic.value.clone(),
            in_flight: VecDeque::new(),
        })
    }

    /// The topic, for the summary.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends a batch; waits for older deliveries only when too many are in flight or the
    /// client's queue is full.
    pub async fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        for i in 0..batch.len() {
            let mut headers = OwnedHeaders::new_with_capacity(batch.headers_of(i).len());
            for h in batch.headers_of(i) {
                headers = headers.insert(Header {
                    key: &h.name,
                    value: Some(&h.value[..]),
                });
            }
            let value = batch.value(i);
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
                .payload(value)
                .timestamp(batch.records[i].timestamp_ms)
                .headers(headers);
            if let Some(key) = batch.key(i) {
                record = record.key(key);
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        self.in_flight.push_back(delivery);
                        break;
                    }
                    Err((e, returned))
                        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) =>
                    {
                        record = returned;
                        wait_for_oldest(&mut self.in_flight, &self.topic).await?;
                    }
                    Err((e, _)) => {
                        return Err(SinkError::Io(format!("sending to {}: {e}", self.topic)));
                    }
                }
            }
            if self.in_flight.len() >= MAX_IN_FLIGHT {
                wait_for_oldest(&mut self.in_flight, &self.topic).await?;
            }
        }
        Ok(())
    }

    /// Waits until every record sent so far is acknowledged.
    pub async fn flush(&mut self) -> Result<(), SinkError> {
        while !self.in_flight.is_empty() {
            wait_for_oldest(&mut self.in_flight, &self.topic).await?;
        }
        Ok(())
    }
}

/// Waits for the oldest delivery in flight; fails if the broker refused it for good.
async fn wait_for_oldest(
    in_flight: &mut VecDeque<DeliveryFuture>,
    topic: &str,
) -> Result<(), SinkError> {
    let Some(delivery) = in_flight.pop_front() else {
        // Nothing of ours is queued: the queue is full of what the client is retrying.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        return Ok(());
    };
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(SinkError::Io(format!("delivery to {} failed: {e}", topic))),
        Err(_) => Err(SinkError::Io(format!(
            "the producer for {} was dropped",
            topic
        ))),
    }
}
