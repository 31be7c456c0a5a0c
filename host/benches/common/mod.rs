//! What the benchmark programs share.
//! Each benchmark program uses part of it.
#![allow(dead_code)]

use std::{path::PathBuf, process::Command};

use weir::{
    datagen,
    pipeline::spec::{GeneratorFormat, KafkaSinkSpec, unspanned},
};

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// This process's peak resident memory (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The topic the broker benchmarks read.
pub const TOPIC: &str = "bench.trades";

/// Starts a broker with the project's services script; returns its PID and address.
pub fn start_broker() -> (String, String) {
    let out = Command::new(repo().join("tests/services.sh"))
        .args(["start", "kafka"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tests/services.sh start kafka failed (run `tests/services.sh install` first):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (pid, bootstrap) = text.trim().split_once(' ').unwrap();
    (pid.to_string(), bootstrap.to_string())
}

pub fn fill(bootstrap: &str, n: u64) {
    let spec = datagen::spec(
        GeneratorFormat::Binance,
        Some(n),
        None,
        42,
        Some(1_767_225_600_000),
        Some(1000),
        None,
    );
    let output = datagen::Output::Kafka {
        sink: Box::new(KafkaSinkSpec {
            bootstrap_servers: unspanned(bootstrap.to_string()),
            topic: unspanned(TOPIC.to_string()),
            properties: unspanned(Default::default()),
        }),
        partitions: 3,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let summary = rt
        .block_on(datagen::run(&spec, output, false, std::future::pending()))
        .unwrap();
    eprintln!("filled {TOPIC}: {summary}");
}

/// Stops a broker started by [`start_broker`].
pub fn stop_broker(pid: &str) {
    let _ = Command::new(repo().join("tests/services.sh"))
        .args(["stop", pid])
        .status();
}

/// Runs this benchmark program again with `args` (one mode in a process of its own, so its peak
/// RSS is its own) and returns the figures it printed, as numbers.
pub fn child(args: &[&str]) -> Vec<f64> {
    let me = std::env::current_exe().unwrap();
    let out = Command::new(me).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect()
}

/// Runs a stage's logic natively over `batch`, record by record into `out` (cleared first), the
/// way the SDK's WebAssembly adapter calls it: the baseline a component is measured against.
pub fn process_natively<S: weir_sdk::Stage>(
    stage: &mut S,
    batch: &weir::record::Batch,
    out: &mut weir_sdk::Emitter,
) {
    out.clear();
    let cx = weir_sdk::Context {
        topic: &batch.topic,
        partition: batch.partition,
        processing_time_ms: batch.processing_time_ms,
    };
    for (i, r) in batch.records.iter().enumerate() {
        let record = weir_sdk::Record {
            key: batch.key(i),
            value: batch.value(i),
            timestamp_ms: r.timestamp_ms,
            offset: r.offset,
            headers: &[],
        };
        out.current_input = Some(i as u32);
        // A benchmark's input is valid: an error here is a bug in the benchmark.
        stage
            .process(&cx, &record, out)
            .expect("the stage accepts the record");
    }
    stage.end_batch();
}
