//! Benchmark: hot swaps of a running stage. Generated trades → `ohlc` (1-minute and 5-minute
//! bars, state and timers in the host) → null, checkpointing every 500 ms; in one run nothing
//! else happens (the baseline), in the other the stage is swapped between `ohlc` and its next
//! version every 250 ms, each new version compiled (from the artifact cache) and initialised off
//! the pipeline's threads, then put in place at a barrier taken at once.
//!
//! `cargo bench --bench swap` runs both modes, each in a child process of its own (so each peak
//! RSS is its own), and prints records/s, the swap pause percentiles (time the stage thread spent
//! on a swap, beyond the barrier itself), the time to prepare a version off the hot path, the
//! barrier-to-commit time of the checkpoints, and peak RSS. One mode alone: `cargo bench --bench
//! swap -- baseline` or `-- swaps`.
#![allow(missing_docs)]

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use common::{peak_rss_mib, repo};
use weir::{
    pipeline,
    plugin::{PluginHost, StageRunner},
    runtime::{self, Metrics, RunOptions},
};

/// Trades per run: about 10 s of work on this machine, some 40 swaps.
const TRADES: u64 = 10_000_000;
const SWAP_EVERY: Duration = Duration::from_millis(250);

fn pipeline_file(dir: &std::path::Path) -> std::path::PathBuf {
    let text = format!(
        "version: 1
name: swap-bench
source:
  generator: {{ format: binance, count: {TRADES}, seed: 42, start_time_ms: 1767225600000, events_per_sec: 1000 }}
stages:
  - name: ohlc
    plugin: {plugin}
    config: {{ windows: [1m, 5m] }}
sinks:
  - name: out
    input: ohlc
    blackhole: {{}}
  - name: late
    input: ohlc.late
    blackhole: {{}}
  - name: dead
    input: dlq
    blackhole: {{}}
checkpoint: {{ interval: 500ms, store: {dir}/checkpoints, state_dir: {dir}/state }}
",
        plugin = repo().join("plugins/dist/ohlc.wasm").display(),
        dir = dir.display()
    );
    let path = dir.join("swap.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// Runs one mode; prints `records_per_sec swaps pause_p50_us pause_p99_us pause_max_us
/// prepare_p50_ms checkpoint_mean_ms rss_mib`.
fn mode(swaps: bool) {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(PluginHost::new(PluginHost::default_cache_dir()).unwrap());
    let pipeline = pipeline::load(&pipeline_file(dir.path()), &host).unwrap();
    let stage = &pipeline.stages[0];
    let (name, config, limits) = (
        stage.name.clone(),
        stage.runner.config().to_string(),
        stage.runner.limits().clone(),
    );
    let versions = ["ohlc.wasm", "ohlc-v2.wasm"].map(|f| repo().join("plugins/dist").join(f));
    let metrics = Arc::new(Metrics::for_pipeline(&pipeline));
    let (control, controls) = runtime::control();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (pauses, prepares, elapsed) = rt.block_on(async {
        let started = Instant::now();
        // The run's own end is the clock's, not the swap loop's next wake-up.
        let run_metrics = metrics.clone();
        let run = tokio::spawn(async move {
            let ran = runtime::run(
                pipeline,
                std::future::pending(),
                RunOptions {
                    progress: false,
                    metrics: Some(run_metrics),
                    control: Some(controls),
                },
            )
            .await;
            (ran, started.elapsed())
        });
        let (mut pauses, mut prepares) = (Vec::new(), Vec::new());
        let mut next = 1;
        while !run.is_finished() {
            tokio::time::sleep(SWAP_EVERY).await;
            if !swaps {
                continue;
            }
            let t = Instant::now();
            let (host, path, name, config, limits) = (
                host.clone(),
                versions[next].clone(),
                name.clone(),
                config.clone(),
                limits.clone(),
            );
            let runner = tokio::task::spawn_blocking(move || {
                let plugin = host.load(&path, false)?;
                StageRunner::start(&name, plugin, config, limits)
            })
            .await
            .unwrap()
            .unwrap();
            prepares.push(t.elapsed());
            match control.swap(0, runner).await {
                Ok(swapped) => pauses.push(swapped.pause),
                Err(_) => break, // the run ended meanwhile
            }
            next = 1 - next;
        }
        let (ran, elapsed) = run.await.unwrap();
        ran.unwrap();
        (pauses, prepares, elapsed)
    });
    let mut pauses = pauses;
    pauses.sort();
    let mut prepares = prepares;
    prepares.sort();
    let (checkpoints, mean, _) = metrics.checkpoint_figures();
    assert!(checkpoints > 0);
    println!(
        "{:.0} {} {:.1} {:.1} {:.1} {:.2} {} {:.0}",
        metrics.records_read() as f64 / elapsed.as_secs_f64(),
        pauses.len(),
        percentile(&pauses, 0.5),
        percentile(&pauses, 0.99),
        percentile(&pauses, 1.0),
        percentile(&prepares, 0.5) / 1000.0,
        mean.as_millis(),
        peak_rss_mib()
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("baseline") => return mode(false),
        Some("swaps") => return mode(true),
        _ => {}
    }
    println!(
        "trades → ohlc (1m, 5m) → null, {TRADES} trades, a checkpoint every 500 ms; swaps every {} ms between ohlc and ohlc-v2",
        SWAP_EVERY.as_millis()
    );
    println!(
        "{:<9} {:>12} {:>6} {:>10} {:>10} {:>10} {:>11} {:>14} {:>9}",
        "mode",
        "records/s",
        "swaps",
        "pause p50",
        "pause p99",
        "pause max",
        "prepare p50",
        "checkpoint ms",
        "peak RSS"
    );
    let mut rates = Vec::new();
    for mode in ["baseline", "swaps"] {
        let f = common::child(&[mode]);
        println!(
            "{mode:<9} {:>12.0} {:>6} {:>8.1}µs {:>8.1}µs {:>8.1}µs {:>9.2}ms {:>14} {:>6.0}MiB",
            f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]
        );
        rates.push(f[0]);
    }
    println!(
        "records/s with a swap every {} ms: {:.2}× the baseline's",
        SWAP_EVERY.as_millis(),
        rates[1] / rates[0]
    );
}
