//! Benchmark: generated trades → `ohlc` (1-minute bars per symbol) → null, with the stage as a
//! WebAssembly component (state and timers in the host) and as the same Rust logic compiled
//! natively (state and timers in the SDK's in-memory stand-ins), at 20 and at 100,000 symbols.
//!
//! `cargo bench --bench ohlc` runs each mode in a child process of its own (so each peak RSS is
//! its own) and prints records/s, per-batch latency percentiles and peak RSS. One mode alone:
//! `cargo bench --bench ohlc -- MODE SYMBOLS`, MODE `native`, `wasm` (state in the host's
//! in-memory map) or `wasm+sled` (state in the state database with a checkpoint every second,
//! as in a pipeline).
//!
//! One thread: generate a batch of 1,024 trades (one per ms of event time), hand it to the
//! stage, then advance the watermark to 5 s behind the latest trade, which closes the bars
//! whose minute has passed; outputs are counted (the null sink).
#![allow(missing_docs)]

mod common;

use common::{peak_rss_mib, repo};
use std::time::{Duration, Instant};

use weir::{
    pipeline::spec::{GeneratorFormat, GeneratorSpec, unspanned},
    plugin::{Limits, PluginHost, StageRunner},
    record::Batch,
    sources::generator::{Generator, TOPIC},
};
use weir_sdk::{Emitter, Stage, host::timers};

/// Batches before measuring: about a minute of event time, the same for every mode.
const WARMUP_BATCHES: usize = 60;
const MEASURE: Duration = Duration::from_secs(3);
/// Records measured at the least: ten minutes of event time, so that every mode sees the same
/// minute boundaries (at 100,000 symbols each closes a bar per symbol at once, and a run that
/// sees one boundary more or less reads very differently).
const MIN_RECORDS: u64 = 600_000;
const BATCH: usize = 1024;
const CONFIG: &str = r#"{"windows": ["1m"]}"#;
const BOUND_MS: i64 = 5_000;

fn generator(symbols: usize) -> Generator {
    let spec = GeneratorSpec {
        count: None,
        rate_per_sec: None,
        seed: 42,
        format: GeneratorFormat::Binance,
        symbols: Some(unspanned(
            (0..symbols).map(|i| format!("S{i:06}USDT")).collect(),
        )),
        start_time_ms: Some(1_767_225_600_000),
        events_per_sec: Some(unspanned(1000)),
        batch_size: unspanned(BATCH),
        disorder: None,
    };
    Generator::new(&spec, 0)
}

/// Hands batches to `stage` (batch, watermark → outputs): WARMUP_BATCHES, then MEASURE (of time in
/// the stage); prints `records_per_sec p50_us p99_us rss_mib outputs`, where records/s is
/// records over the time spent inside the stage: generating the trades is not counted.
fn run(symbols: usize, mut stage: impl FnMut(&Batch, i64) -> usize) {
    let mut generator = generator(symbols);
    let (mut records, mut outputs, mut latencies) = (0u64, 0usize, Vec::new());
    let mut busy = Duration::ZERO;
    let mut warmup = WARMUP_BATCHES;
    loop {
        let mut batch = Batch::with_capacity(TOPIC, 0, BATCH, BATCH * 200);
        generator.fill(&mut batch, BATCH);
        let latest = batch.records.iter().map(|r| r.timestamp_ms).max().unwrap();
        let t = Instant::now();
        let out = stage(&batch, latest - BOUND_MS);
        let took = t.elapsed();
        if warmup > 0 {
            warmup -= 1;
            continue;
        }
        records += batch.len() as u64;
        outputs += out;
        latencies.push(took);
        busy += took;
        if busy >= MEASURE && records >= MIN_RECORDS {
            latencies.sort();
            let pct =
                |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
            assert!(outputs > 0, "bars were closed");
            println!(
                "{} {} {} {} {outputs}",
                records as f64 / busy.as_secs_f64(),
                pct(0.5),
                pct(0.99),
                peak_rss_mib()
            );
            return;
        }
    }
}

fn native(symbols: usize) {
    let mut stage = weir_ohlc::Ohlc::init(CONFIG).unwrap();
    let mut out = Emitter::default();
    run(symbols, |batch, watermark| {
        common::process_natively(&mut stage, batch, &mut out);
        let fired = timers::take(watermark);
        stage.on_watermark(watermark, &fired, &mut out);
        out.records.len()
    });
}

fn wasm(symbols: usize) {
    let host = PluginHost::new(None).unwrap();
    let plugin = host
        .load(&repo().join("plugins/dist/ohlc.wasm"), false)
        .expect("run `make plugins` first");
    let mut runner = StageRunner::start("ohlc", plugin, CONFIG.into(), Limits::default()).unwrap();
    run(symbols, |batch, watermark| {
        let out = runner.process(batch).unwrap();
        assert!(out.errors.is_empty(), "{:?}", out.errors.first());
        out.records.len() + runner.on_watermark(watermark).unwrap().records.len()
    });
}

/// The component with its state in the state database, as a pipeline runs it: the write-back
/// map over sled, and every second a checkpoint that hands the changes to the database's writer
/// thread, which moves them into sled and writes the state file (a full one every 20th) while
/// the stage goes on.
fn wasm_sled(symbols: usize) {
    let host = PluginHost::new(None).unwrap();
    let plugin = host
        .load(&repo().join("plugins/dist/ohlc.wasm"), false)
        .expect("run `make plugins` first");
    let mut runner = StageRunner::start("ohlc", plugin, CONFIG.into(), Limits::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = weir::state::StateDb::open(&dir.path().join("db")).unwrap();
    runner.attach_state(db.stage("ohlc")).unwrap();
    let (mut id, mut last) = (0u64, Instant::now());
    run(symbols, |batch, watermark| {
        let out = runner.process(batch).unwrap();
        assert!(out.errors.is_empty(), "{:?}", out.errors.first());
        let n = out.records.len() + runner.on_watermark(watermark).unwrap().records.len();
        if last.elapsed() >= Duration::from_secs(1) {
            id += 1;
            let seq = db.reserve();
            // As a pipeline does: wait for a writer that is far behind.
            db.wait_for(seq.saturating_sub(weir::state::MAX_BEHIND))
                .unwrap();
            let changes = [("ohlc", runner.take_changes(seq))];
            let file = dir.path().join(format!("chk-{id}"));
            let job = move |db: &weir::state::StateDb| {
                let written = db.commit(id, &changes, id % 20 == 1, &file)?;
                let _ = std::fs::remove_file(written.local);
                Ok(())
            };
            db.submit(seq, Box::new(job)).unwrap();
            last = Instant::now();
        }
        n
    });
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if let [mode, symbols] = &args[..] {
        let symbols = symbols.parse().expect("a number of symbols");
        match mode.as_str() {
            "native" => native(symbols),
            "wasm" => wasm(symbols),
            "wasm+sled" => wasm_sled(symbols),
            other => panic!("unknown mode {other}"),
        }
        return;
    }
    println!(
        "ohlc benchmark: trades → ohlc (1m bars) → null, one thread, batch {BATCH}, watermark {} s behind; {} s and {MIN_RECORDS} trades inside the stage per mode at the least, after {WARMUP_BATCHES} batches; records/s over time inside the stage",
        BOUND_MS / 1000,
        MEASURE.as_secs(),
    );
    println!(
        "{:<9} {:>9} {:>12} {:>10} {:>10} {:>10} {:>9}",
        "mode", "symbols", "records/s", "p50 µs", "p99 µs", "RSS MiB", "bars"
    );
    for symbols in [20, 100_000] {
        let n = common::child(&["native", &symbols.to_string()]);
        let w = common::child(&["wasm", &symbols.to_string()]);
        let d = common::child(&["wasm+sled", &symbols.to_string()]);
        for (mode, m) in [("native", &n), ("wasm", &w), ("wasm+sled", &d)] {
            println!(
                "{mode:<9} {symbols:>9} {:>12.0} {:>10.1} {:>10.1} {:>10.1} {:>9.0}",
                m[0], m[1], m[2], m[3], m[4]
            );
        }
        println!(
            "{:<9} {symbols:>9}   wasm / native: {:.2}× slower; wasm+sled / native: {:.2}×",
            "",
            n[0] / w[0],
            n[0] / d[0]
        );
    }
}
