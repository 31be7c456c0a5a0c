//! Benchmark: a real broker (tansu) → the Kafka source → enrich (WebAssembly) → null sink,
//! beside a plain rdkafka consumer reading the same topic, and the Kafka source straight into
//! the null sink (what the source and runtime cost without a stage), in the same run.
//!
//! `cargo bench --bench kafka` starts a broker through `tests/services.sh` (run `make test` or
//! `tests/services.sh install` once first), fills a 3-partition topic with Binance-style trades
//! (`WEIR_BENCH_RECORDS`, default 1,000,000) through `weir gen`'s producer, then reads it
//! completely, alternating the two readers for `WEIR_BENCH_ROUNDS` rounds (default 3), each in
//! a child process of its own (so each peak RSS is its own) and each as a new consumer group
//! from the earliest offset.
//!
//! `records/s` counts from the first record read to the last one written, so the group join
//! (about 1 s with the session timeout tests use) is left out of both; `steady/s` is 10,000
//! records over the median time a block of 10,000 took, the rate once both are running, which
//! the ratio compares. Latency here is not a record's age (a pre-filled topic makes that
//! queueing time): the percentiles are of the time each block of 10,000 records took, which
//! shows stalls.
#![allow(missing_docs)]

mod common;

use common::{TOPIC, child, fill, peak_rss_mib, repo, start_broker, stop_broker};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Message,
    consumer::{BaseConsumer, Consumer},
};
use weir::{
    pipeline,
    plugin::PluginHost,
    runtime::{self, RunOptions, progress::Metrics},
};

const BLOCK: u64 = 10_000;

fn records() -> u64 {
    std::env::var("WEIR_BENCH_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000)
}

/// Times of each block of records, from the first record: rate and block-time percentiles.
struct Clock {
    first: Option<Instant>,
    last_block: Option<Instant>,
    blocks: Vec<Duration>,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            first: None,
            last_block: None,
            blocks: Vec::new(),
        }
    }

    /// `done` records so far (called often); notes block boundaries.
    fn tick(&mut self, done: u64) {
        let now = Instant::now();
        if done == 0 {
            return;
        }
        let first = *self.first.get_or_insert(now);
        let reached = done / BLOCK;
        while (self.blocks.len() as u64) < reached {
            let from = self.last_block.unwrap_or(first);
            self.blocks.push(now - from);
            self.last_block = Some(now);
        }
    }

    /// `rate steady_rate p50_ms p99_ms max_ms rss_mib` for `n` records; the steady rate is a
    /// block's records over the median block time.
    fn line(mut self, n: u64) -> String {
        let took = self.last_block.unwrap_or_else(Instant::now) - self.first.unwrap();
        self.blocks.sort();
        let pct = |p: f64| {
            let i = ((self.blocks.len() as f64 * p) as usize).min(self.blocks.len() - 1);
            self.blocks[i].as_secs_f64() * 1000.0
        };
        format!(
            "{:.0} {:.0} {:.1} {:.1} {:.1} {:.1}",
            n as f64 / took.as_secs_f64(),
            BLOCK as f64 / (pct(0.5) / 1000.0),
            pct(0.5),
            pct(0.99),
            self.blocks.last().unwrap().as_secs_f64() * 1000.0,
            peak_rss_mib()
        )
    }
}

/// A plain rdkafka consumer that counts messages and touches their bytes.
fn plain(bootstrap: &str, group: &str, n: u64) -> String {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "2000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    let (mut count, mut bytes) = (0u64, 0u64);
    let mut clock = Clock::new();
    while count < n {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.unwrap();
            bytes += message.payload().map_or(0, |p| p.len()) as u64;
            count += 1;
            clock.tick(count);
        }
    }
    std::hint::black_box(bytes);
    clock.line(n)
}

/// Weir: Kafka source (json) → enrich → blackhole (or straight to the blackhole without
/// `stage`), stopped once every record is written.
fn weir(bootstrap: &str, group: &str, n: u64, stage: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bench.yaml");
    std::fs::write(
        &file,
        format!(
            "version: 1
name: kafka-bench
source:
  kafka:
    bootstrap_servers: {bootstrap}
    topics: [{TOPIC}]
    group_id: {group}
    format: json
    properties:
      session.timeout.ms: \"2000\"
      heartbeat.interval.ms: \"500\"
{stages}sinks:
  - name: discard
    input: {input}
    blackhole: {{}}
  - name: dead
    input: dlq
    blackhole: {{}}
",
            stages = if stage {
                format!(
                    "stages:\n  - name: enrich\n    plugin: {}\n",
                    repo().join("plugins/dist/enrich.wasm").display()
                )
            } else {
                String::new()
            },
            input = if stage { "enrich" } else { "source" },
        ),
    )
    .unwrap();
    let host = PluginHost::new(PluginHost::default_cache_dir()).unwrap();
    let pipeline = pipeline::load(&file, &host).unwrap_or_else(|e| panic!("{e}"));
    let metrics = Arc::new(Metrics::for_pipeline(&pipeline));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let watch = metrics.clone();
    let clock = rt.block_on(async move {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let watcher = tokio::spawn(async move {
            let mut clock = Clock::new();
            loop {
                let written = watch.records_written();
                clock.tick(written);
                if written >= n {
                    let _ = done_tx.send(());
                    return clock;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let options = RunOptions {
            progress: false,
            metrics: Some(metrics),
            control: None,
        };
        runtime::run(pipeline, async { done_rx.await.unwrap_or(()) }, options)
            .await
            .unwrap();
        watcher.await.unwrap()
    });
    clock.line(n)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let n = records();
    if let [mode, bootstrap, group] = args.as_slice() {
        let line = match mode.as_str() {
            "plain" => plain(bootstrap, group, n),
            "weir" => weir(bootstrap, group, n, true),
            "weir-no-stage" => weir(bootstrap, group, n, false),
            other => panic!("unknown mode {other}"),
        };
        println!("{line}");
        return;
    }
    let rounds: usize = std::env::var("WEIR_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let (pid, bootstrap) = start_broker();
    fill(&bootstrap, n);
    println!(
        "{n} Binance trades on a 3-partition topic (tansu, memory storage), read completely per run\n"
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "reader", "records/s", "steady/s", "p50 10k ms", "p99 10k ms", "max 10k ms", "peak RSS"
    );
    let mut rates: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (i, mode) in ["plain", "weir", "weir-no-stage"].iter().enumerate() {
            let group = format!("bench-{mode}-{round}-{}", std::process::id());
            let v = child(&[mode, bootstrap.as_str(), group.as_str()]);
            rates[i].push(v[1]);
            let label = match *mode {
                "plain" => "plain rdkafka consumer",
                "weir" => "weir: kafka → enrich (wasm) → null",
                _ => "weir: kafka → null (no stage)",
            };
            println!(
                "{label:<34} {:>10.0} {:>10.0} {:>10.1} {:>10.1} {:>10.1} {:>5.0} MiB",
                v[0], v[1], v[2], v[3], v[4], v[5]
            );
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (p, w, s) = (
        median(&mut rates[0]),
        median(&mut rates[1]),
        median(&mut rates[2]),
    );
    println!(
        "\nmedian steady rates: plain {p:.0}/s; weir with enrich {w:.0}/s ({:.0}% of plain); weir without a stage {s:.0}/s ({:.0}% of plain)",
        100.0 * w / p,
        100.0 * s / p
    );
    stop_broker(&pid);
}
