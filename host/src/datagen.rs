//! `weir gen`: the generator's records written to a file, standard output or a Kafka topic, at a
//! target rate, with a deterministic seed — the data the example pipelines and benchmarks read.
//!
//! File and standard output get one value per line. A topic gets each record's key, value and
//! event time, through the same idempotent producer as the `kafka` sink; the topic is created
//! with the requested partitions when it does not exist yet.

use std::{
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    types::RDKafkaErrorCode,
};

use crate::{
    pipeline::spec::{GeneratorSpec, KafkaSinkSpec, unspanned},
    plugin::now_ms,
    record::Batch,
    runtime::progress::thousands,
    sinks::kafka::KafkaSink,
    sources::{
        MAX_WAIT, Pace,
        generator::{Generator, TOPIC},
        kafka::refused_property,
    },
};

/// Where generated records go.
pub enum Output {
    /// One value per line on standard output.
    Stdout,
    /// One value per line in a file (created or truncated).
    File(PathBuf),
    /// A Kafka topic.
    Kafka {
        /// Where to write, and the producer's extra properties.
        sink: Box<KafkaSinkSpec>,
        /// Partitions of the topic if it has to be created.
        partitions: i32,
    },
}

/// Errors of `weir gen`.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// The output file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file, or `standard output`.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The broker refused the topic or the records.
    #[error("kafka: {0}")]
    Kafka(String),
    /// A client property outside the allow-list.
    #[error("{0}")]
    Property(String),
}

/// What was written.
pub struct GenSummary {
    /// Records written.
    pub records: u64,
    /// From start to the last record acknowledged.
    pub elapsed: Duration,
}

impl std::fmt::Display for GenSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "{} records in {secs:.1}s ({}/s)",
            thousands(self.records),
            thousands((self.records as f64 / secs.max(1e-9)) as u64)
        )
    }
}

/// Where records are being written.
enum Writer {
    Lines(Box<dyn Write>, String),
    Kafka(Box<KafkaSink>),
}

impl Writer {
    async fn write(&mut self, batch: &Batch) -> Result<(), GenError> {
        match self {
            Writer::Lines(out, path) => {
                let io = |source| GenError::Io {
                    path: path.clone(),
                    source,
                };
                for i in 0..batch.len() {
                    out.write_all(batch.value(i)).map_err(io)?;
                    out.write_all(b"\n").map_err(io)?;
                }
                Ok(())
            }
            Writer::Kafka(sink) => sink
                .write(batch)
                .await
                .map_err(|e| GenError::Kafka(e.to_string())),
        }
    }

    async fn finish(&mut self) -> Result<(), GenError> {
        match self {
            Writer::Lines(out, path) => out.flush().map_err(|source| GenError::Io {
                path: path.clone(),
                source,
            }),
            Writer::Kafka(sink) => sink
                .flush()
                .await
                .map_err(|e| GenError::Kafka(e.to_string())),
        }
    }
}

/// Checks `properties` against the producer's allow-list.
pub fn check_properties(
    properties: &std::collections::BTreeMap<String, String>,
) -> Result<(), GenError> {
    match properties
        .keys()
        .find_map(|key| refused_property(key, crate::sinks::kafka::ALLOWED_PROPERTIES))
    {
        Some(refused) => Err(GenError::Property(refused)),
        None => Ok(()),
    }
}

/// Creates `topic` with `partitions` unless it exists.
async fn create_topic(sink: &KafkaSinkSpec, partitions: i32) -> Result<(), GenError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &sink.bootstrap_servers.value);
    for (key, value) in &sink.properties.value {
        if crate::sources::kafka::SECURITY_PROPERTIES.contains(&key.as_str()) {
            config.set(key, value);
        }
    }
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(|e| GenError::Kafka(format!("cannot create an admin client: {e}")))?;
    let topic = NewTopic::new(&sink.topic.value, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .map_err(|e| GenError::Kafka(format!("creating topic {}: {e}", sink.topic.value)))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(GenError::Kafka(format!("creating topic {name}: {code}")));
            }
        }
    }
    Ok(())
}

/// Generates what `spec` describes into `output` until the count is reached or `stop`
/// completes; prints a progress line to standard error every second when `progress` is set.
pub async fn run(
    spec: &GeneratorSpec,
    output: Output,
    progress: bool,
    stop: impl std::future::Future<Output = ()>,
) -> Result<GenSummary, GenError> {
    let mut writer = match output {
        Output::Stdout => Writer::Lines(
            Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            "standard output".into(),
        ),
        Output::File(path) => {
            let file = std::fs::File::create(&path).map_err(|source| GenError::Io {
                path: path.display().to_string(),
                source,
            })?;
            Writer::Lines(
                Box::new(std::io::BufWriter::with_capacity(1 << 20, file)),
                path.display().to_string(),
            )
        }
        Output::Kafka { sink, partitions } => {
            check_properties(&sink.properties.value)?;
            create_topic(&sink, partitions).await?;
            let sink = KafkaSink::open(&sink).map_err(|e| GenError::Kafka(e.to_string()))?;
            Writer::Kafka(Box::new(sink))
        }
    };
    let rate = spec.rate_per_sec.as_ref().map(|r| r.value);
    let batch_size = rate.map_or(spec.batch_size.value, |rate| {
        Pace::batch_size(rate, spec.batch_size.value)
    });
    let mut pace = rate.map(Pace::new);
    let mut generator = Generator::new(spec, now_ms());
    let started = Instant::now();
    let mut records = 0u64;
    let mut next_report = started + Duration::from_secs(1);
    tokio::pin!(stop);
    loop {
        if let Some(pace) = &pace {
            let wait = pace.wait();
            if !wait.is_zero() {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(wait.min(MAX_WAIT)) => continue,
                }
            }
        }
        let mut batch = Batch::with_capacity(TOPIC, 0, batch_size, batch_size * 256);
        let n = generator.fill(&mut batch, batch_size);
        if n == 0 {
            break;
        }
        writer.write(&batch).await?;
        records += n as u64;
        if let Some(pace) = &mut pace {
            pace.sent(n);
        }
        if progress && Instant::now() >= next_report {
            next_report += Duration::from_secs(1);
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "gen: {} records, {}/s",
                thousands(records),
                thousands((records as f64 / secs) as u64)
            );
        }
        // Let a stop request in between batches when running flat out.
        if futures_poll_once(&mut stop).await {
            break;
        }
    }
    writer.finish().await?;
    Ok(GenSummary {
        records,
        elapsed: started.elapsed(),
    })
}

/// Whether `future` has completed, without waiting for it.
async fn futures_poll_once(
    future: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> bool {
    tokio::select! {
        biased;
        _ = future => true,
        _ = std::future::ready(()) => false,
    }
}

/// The generator settings for `weir gen`, as the pipeline's `generator` source would take them.
pub fn spec(
    format: crate::pipeline::spec::GeneratorFormat,
    count: Option<u64>,
    rate_per_sec: Option<u64>,
    seed: u64,
    start_time_ms: Option<i64>,
    events_per_sec: Option<u64>,
    symbols: Option<Vec<String>>,
) -> GeneratorSpec {
    GeneratorSpec {
        count,
        rate_per_sec: rate_per_sec.map(unspanned),
        seed,
        format,
        symbols: symbols.map(unspanned),
        start_time_ms,
        events_per_sec: events_per_sec.map(unspanned),
        batch_size: unspanned(1024),
        disorder: None,
    }
}
