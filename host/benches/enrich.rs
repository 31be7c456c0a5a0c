//! Benchmark: generator → enrich → null, with `enrich` as a WebAssembly component and as the
//! same Rust logic compiled natively, at batch sizes 1, 64 and 1024; and the whole `weir run`
//! runtime (threads, channels) with and without the stage.
//!
//! `cargo bench --bench enrich` runs every mode in a child process of its own (so each peak RSS
//! is its own) and prints a table. One mode alone: `cargo bench --bench enrich -- MODE BATCH`,
//! with MODE one of `native`, `wasm`, `pipeline`, `pipeline-no-stage`.
//!
//! `cargo bench --bench enrich -- languages` compares `enrich` written in Rust, C, JavaScript and
//! Python (the builds in `plugins/dist/`) beside the native Rust logic, at batch 1024: records/s,
//! per-batch latency, peak RSS, and what starting costs — compiling the component (cold, empty
//! artifact cache), loading its machine code from the cache (warm), and instantiating it and
//! calling `init`.
//!
//! `WEIR_BENCH_RECORDS=N` makes a loop mode process exactly N records with no warm-up, for
//! `valgrind --tool=callgrind`, whose instruction counts repeat where wall-clock time does not;
//! mode `generate` (no stage) is the baseline to subtract.
//!
//! Each loop mode runs on one thread: generate a batch, hand it to the stage, count the output
//! (the null sink). It reports records per second over the whole loop, the stage's share, and
//! per-batch latency percentiles of the stage call.
#![allow(missing_docs)]

mod common;

use common::{peak_rss_mib, repo};
use std::time::{Duration, Instant};

use weir::{
    pipeline::{
        self,
        spec::{GeneratorFormat, GeneratorSpec, unspanned},
    },
    plugin::{Limits, PluginHost, StageRunner},
    record::Batch,
    runtime::{self, RunOptions},
    sources::generator::{Generator, TOPIC},
};
use weir_sdk::{Emitter, Stage};

const WARMUP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(3);
const PIPELINE_RECORDS: u64 = 3_000_000;

fn generator() -> Generator {
    let spec = GeneratorSpec {
        count: None,
        rate_per_sec: None,
        seed: 42,
        format: GeneratorFormat::Binance,
        symbols: None,
        start_time_ms: Some(1_767_225_600_000),
        events_per_sec: None,
        batch_size: unspanned(1024),
        disorder: None,
    };
    Generator::new(&spec, 0)
}

/// The result line a child prints: `records_per_sec stage_records_per_sec p50_us p99_us p999_us rss_mib`.
struct Measured {
    rate: f64,
    stage_rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    rss: f64,
}

impl Measured {
    fn print(&self) {
        println!(
            "{} {} {} {} {} {}",
            self.rate, self.stage_rate, self.p50, self.p99, self.p999, self.rss
        );
    }

    fn parse(line: &str) -> Option<Measured> {
        let v: Vec<f64> = line
            .split_whitespace()
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        let [rate, stage_rate, p50, p99, p999, rss] = v[..] else {
            return None;
        };
        Some(Measured {
            rate,
            stage_rate,
            p50,
            p99,
            p999,
            rss,
        })
    }
}

/// Generates batches and hands each to `stage`, for WARMUP then MEASURE.
fn run_loop(batch_size: usize, mut stage: impl FnMut(&Batch) -> usize) -> Measured {
    if let Some(total) = std::env::var("WEIR_BENCH_RECORDS")
        .ok()
        .and_then(|n| n.parse::<u64>().ok())
    {
        let mut generator = generator();
        let (mut done, mut outputs) = (0, 0);
        while done < total {
            let mut batch = Batch::with_capacity(TOPIC, 0, batch_size, batch_size * 200);
            done += generator.fill(&mut batch, batch_size) as u64;
            batch.processing_time_ms = 1_795_000_000_000;
            outputs += stage(&batch);
        }
        eprintln!("processed {done} records, {outputs} outputs");
        let nan = f64::NAN;
        return Measured {
            rate: nan,
            stage_rate: nan,
            p50: nan,
            p99: nan,
            p999: nan,
            rss: peak_rss_mib(),
        };
    }
    let mut generator = generator();
    let mut latencies = Vec::new();
    let (mut records, mut stage_time, mut outputs) = (0u64, Duration::ZERO, 0usize);
    let started = Instant::now();
    let mut measuring_since = None;
    let (mut calls, sample_every) = (0u64, 1024u64.div_ceil(batch_size as u64));
    loop {
        let mut batch = Batch::with_capacity(TOPIC, 0, batch_size, batch_size * 200);
        generator.fill(&mut batch, batch_size);
        batch.processing_time_ms = 1_795_000_000_000;
        let t = Instant::now();
        outputs += stage(&batch);
        let took = t.elapsed();
        match measuring_since {
            None if started.elapsed() >= WARMUP => measuring_since = Some(Instant::now()),
            None => {}
            Some(since) => {
                records += batch_size as u64;
                stage_time += took;
                // Sampled, so that the samples themselves do not weigh on peak RSS at batch 1.
                calls += 1;
                if calls % sample_every == 0 {
                    latencies.push(took);
                }
                if since.elapsed() >= MEASURE {
                    let total = since.elapsed();
                    assert!(outputs > 0);
                    latencies.sort();
                    let pct = |p: f64| {
                        latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6
                    };
                    return Measured {
                        rate: records as f64 / total.as_secs_f64(),
                        stage_rate: records as f64 / stage_time.as_secs_f64(),
                        p50: pct(0.5),
                        p99: pct(0.99),
                        p999: pct(0.999),
                        rss: peak_rss_mib(),
                    };
                }
            }
        }
    }
}

fn native(batch_size: usize) -> Measured {
    let mut stage = weir_enrich::Enrich::init("{}").unwrap();
    let mut out = Emitter::default();
    run_loop(batch_size, |batch| {
        common::process_natively(&mut stage, batch, &mut out);
        out.records.len()
    })
}

/// The sandbox for the language comparison: a JavaScript engine or a Python interpreter needs
/// more than the default 64 MiB.
fn roomy() -> Limits {
    Limits {
        memory_bytes: 256 << 20,
        ..Limits::default()
    }
}

fn wasm(batch_size: usize) -> Measured {
    wasm_plugin("enrich", batch_size, Limits::default())
}

fn wasm_plugin(name: &str, batch_size: usize, limits: Limits) -> Measured {
    let host = PluginHost::new(None).unwrap();
    let plugin = host
        .load(&repo().join(format!("plugins/dist/{name}.wasm")), false)
        .expect("run `make plugins` first");
    let mut runner = StageRunner::start("enrich", plugin, "{}".into(), limits).unwrap();
    run_loop(batch_size, |batch| {
        let out = runner.process(batch).unwrap();
        assert!(out.errors.is_empty());
        out.records.len()
    })
}

/// The whole runtime: `weir run` on a generator → (enrich) → blackhole pipeline.
fn pipeline(batch_size: usize, with_stage: bool) -> Measured {
    let stages = if with_stage {
        format!(
            "stages:\n  - name: enrich\n    plugin: {}/plugins/dist/enrich.wasm\n",
            repo().display()
        )
    } else {
        String::new()
    };
    let input = if with_stage { "enrich" } else { "source" };
    let yaml = format!(
        "version: 1\nname: bench\nsource:\n  generator:\n    count: {PIPELINE_RECORDS}\n    seed: 42\n    batch_size: {batch_size}\n    start_time_ms: 1767225600000\n{stages}sinks:\n  - name: out\n    input: {input}\n    blackhole: {{}}\n  - name: dead\n    input: dlq\n    blackhole: {{}}\n"
    );
    let dir = std::env::temp_dir();
    let file = dir.join("weir-bench.yaml");
    std::fs::write(&file, yaml).unwrap();
    let host = PluginHost::new(None).unwrap();
    let p = pipeline::load(&file, &host).unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let summary = rt
        .block_on(runtime::run(
            p,
            std::future::pending(),
            RunOptions::default(),
        ))
        .unwrap();
    assert_eq!(summary.records_in, PIPELINE_RECORDS);
    let rate = PIPELINE_RECORDS as f64 / summary.elapsed.as_secs_f64();
    Measured {
        rate,
        stage_rate: f64::NAN,
        p50: f64::NAN,
        p99: f64::NAN,
        p999: f64::NAN,
        rss: peak_rss_mib(),
    }
}

/// What starting a plugin costs, in ms: loading it (compiling, or reading the cached machine
/// code), its first instance with `init`, and a second instance (what replacing one costs).
fn start(name: &str, cache: &std::path::Path) -> [f64; 3] {
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let host = PluginHost::new(Some(cache.to_path_buf())).unwrap();
    let plugin = host
        .load(&repo().join(format!("plugins/dist/{name}.wasm")), false)
        .expect("run `make plugins` first");
    let load = ms(t);
    let t = Instant::now();
    drop(StageRunner::start("enrich", plugin.clone(), "{}".into(), roomy()).unwrap());
    let first = ms(t);
    let t = Instant::now();
    drop(StageRunner::start("enrich", plugin, "{}".into(), roomy()).unwrap());
    [load, first, ms(t)]
}

fn child(mode: &str, batch: usize) -> Measured {
    let v = common::child(&[mode, &batch.to_string()]);
    Measured::parse(&v.iter().map(f64::to_string).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| panic!("{mode} {batch}: expected six numbers, got {v:?}"))
}

/// `-- languages`: enrich in every language, batch 1024, each measurement in its own process.
fn languages() {
    const LANGUAGES: [(&str, &str); 4] = [
        ("Rust", "enrich"),
        ("C", "enrich-c"),
        ("JavaScript", "enrich-js"),
        ("Python", "enrich-python"),
    ];
    println!(
        "enrich in every language: generator → enrich → null, one thread, batch 1024; {} s per row after {} ms warm-up",
        MEASURE.as_secs(),
        WARMUP.as_millis()
    );
    println!(
        "{:<11} {:>9} {:>12} {:>9} {:>10} {:>10} {:>12} {:>12} {:>13} {:>9}",
        "language",
        "size MiB",
        "records/s",
        "vs native",
        "p50 µs",
        "p99 µs",
        "compile ms",
        "cached ms",
        "instance ms",
        "RSS MiB"
    );
    let native = child("native", 1024);
    println!(
        "{:<11} {:>9} {:>12.0} {:>9} {:>10.1} {:>10.1} {:>12} {:>12} {:>13} {:>9.1}",
        "native", "-", native.rate, "1.00×", native.p50, native.p99, "-", "-", "-", native.rss
    );
    let cache = tempfile::tempdir().unwrap();
    for (language, name) in LANGUAGES {
        let file = repo().join(format!("plugins/dist/{name}.wasm"));
        let size = std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (run `make plugins`)", file.display()))
            .len() as f64
            / (1 << 20) as f64;
        let dir = cache.path().join(name);
        let cold = common::child(&["start", name, dir.to_str().unwrap()]);
        let warm = common::child(&["start", name, dir.to_str().unwrap()]);
        let m = child(&format!("lang:{name}"), 1024);
        println!(
            "{language:<11} {size:>9.2} {:>12.0} {:>8.1}× {:>10.1} {:>10.1} {:>12.1} {:>12.1} {:>13.2} {:>9.1}",
            m.rate,
            native.rate / m.rate,
            m.p50,
            m.p99,
            cold[0],
            warm[0],
            warm[1],
            m.rss
        );
    }
    println!(
        "compile: load with an empty artifact cache; cached: load again from the cache (a restart); \
         instance: instantiate + init once loaded; vs native: how many times slower than the same \
         Rust logic compiled natively"
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if let [mode, name, cache] = &args[..]
        && mode == "start"
    {
        let [load, first, second] = start(name, std::path::Path::new(cache));
        println!("{load} {first} {second}");
        return;
    }
    if let [mode] = &args[..]
        && mode == "languages"
    {
        return languages();
    }
    if let [mode, batch] = &args[..]
        && let Some(name) = mode.strip_prefix("lang:")
    {
        wasm_plugin(name, batch.parse().expect("batch size"), roomy()).print();
        return;
    }
    if let [mode, batch] = &args[..] {
        let batch: usize = batch.parse().expect("batch size");
        let m = match mode.as_str() {
            "native" => native(batch),
            "generate" => run_loop(batch, |batch| batch.len()),
            "wasm" => wasm(batch),
            "pipeline" => pipeline(batch, true),
            "pipeline-no-stage" => pipeline(batch, false),
            other => panic!("unknown mode {other}"),
        };
        m.print();
        return;
    }
    println!(
        "enrich benchmark: generator → enrich → null, one thread; {} s per mode after {} ms warm-up",
        MEASURE.as_secs(),
        WARMUP.as_millis()
    );
    println!(
        "{:<18} {:>6} {:>14} {:>16} {:>11} {:>11} {:>11} {:>9}",
        "mode", "batch", "records/s", "stage records/s", "p50 µs", "p99 µs", "p99.9 µs", "RSS MiB"
    );
    let row = |name: &str, batch: usize, m: &Measured| {
        println!(
            "{name:<18} {batch:>6} {:>14.0} {:>16.0} {:>11.1} {:>11.1} {:>11.1} {:>9.1}",
            m.rate, m.stage_rate, m.p50, m.p99, m.p999, m.rss
        );
    };
    for batch in [1, 64, 1024] {
        let n = child("native", batch);
        row("native", batch, &n);
        let w = child("wasm", batch);
        row("wasm", batch, &w);
        println!(
            "{:<18} {batch:>6} {:>14} {:>16}   (wasm / native: loop {:.2}×, stage {:.2}× slower)",
            "",
            "",
            "",
            n.rate / w.rate,
            n.stage_rate / w.stage_rate
        );
    }
    println!(
        "\nthe whole runtime (`weir run`: source task, stage thread, sink task), {PIPELINE_RECORDS} records:"
    );
    let base = child("pipeline-no-stage", 1024);
    row("no stage", 1024, &base);
    let full = child("pipeline", 1024);
    row("enrich (wasm)", 1024, &full);
}
