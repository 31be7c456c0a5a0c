//! The sandbox: a plugin that loops, grows its memory past the cap or panics is stopped, only
//! the record that made it misbehave goes to the dead letters, and the host goes on.

mod support;

use std::time::{Duration, Instant};

use weir::{
    plugin::{Limits, PluginHost, StageRunner},
    record::Batch,
};

fn chaos(limits: Limits) -> (PluginHost, StageRunner) {
    let host = PluginHost::new(None).unwrap();
    let plugin = host
        .load(
            &support::plugin("test-chaos"),
            limits.fuel_per_call.is_some(),
        )
        .unwrap();
    let runner = StageRunner::start("chaos", plugin, "{}".into(), limits).unwrap();
    (host, runner)
}

/// 1,000 records `r0`…`r999`, with `poison` at index 500.
fn batch_with(poison: &str) -> Batch {
    let mut batch = Batch::with_capacity("t", 0, 1000, 8000);
    for i in 0..1000 {
        let value = if i == 500 {
            poison.to_string()
        } else {
            format!("r{i}")
        };
        batch.push(Some(b"k"), value.as_bytes(), i, 10_000 + i, &[]);
    }
    batch
}

/// Runs the poison batch and checks that exactly record 500 failed, with a message containing
/// `reason`, and the other 999 came through in order.
fn only_the_poison_fails(runner: &mut StageRunner, poison: &str, reason: &str) {
    let out = runner.process(&batch_with(poison)).unwrap();
    assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
    assert_eq!(out.errors[0].index, 500);
    assert!(
        out.errors[0].message.contains(reason),
        "message: {}",
        out.errors[0].message
    );
    assert_eq!(out.records.len(), 999);
    let values: Vec<&[u8]> = out
        .records
        .iter()
        .map(|r| &out.data[r.value.start as usize..(r.value.start + r.value.len) as usize])
        .collect();
    let expected: Vec<String> = (0..1000)
        .filter(|&i| i != 500)
        .map(|i| format!("r{i}"))
        .collect();
    assert!(
        values
            .iter()
            .zip(&expected)
            .all(|(v, e)| *v == e.as_bytes()),
        "outputs in order"
    );
    let lineage: Vec<u32> = out
        .records
        .iter()
        .map(|r| r.derived_from.unwrap())
        .collect();
    assert!(
        lineage
            .iter()
            .zip((0..1000).filter(|&i| i != 500))
            .all(|(a, b)| *a == b),
        "outputs derive from their inputs"
    );

    // The replaced instance works: a clean batch passes whole.
    let out = runner.process(&batch_with("r500")).unwrap();
    assert!(out.errors.is_empty());
    assert_eq!(out.records.len(), 1000);
}

#[test]
fn a_panic_sends_exactly_that_record_to_the_dlq() {
    let (_host, mut runner) = chaos(Limits::default());
    only_the_poison_fails(&mut runner, "chaos:panic", "chaos was asked to panic");
    assert_eq!(
        runner.replacements(),
        2,
        "one replacement after the batch trap, one after the record trap"
    );
}

#[test]
fn an_infinite_loop_is_stopped_by_the_epoch_deadline() {
    let limits = Limits {
        call_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let (_host, mut runner) = chaos(limits);
    let started = Instant::now();
    only_the_poison_fails(&mut runner, "chaos:loop", "exceeded its deadline of 200 ms");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "two deadlines, not a hang: {:?}",
        started.elapsed()
    );
}

#[test]
fn an_infinite_loop_is_stopped_by_fuel_when_metered() {
    let limits = Limits {
        fuel_per_call: Some(50_000_000),
        ..Limits::default()
    };
    let (_host, mut runner) = chaos(limits);
    only_the_poison_fails(&mut runner, "chaos:loop", "ran out of fuel (50000000 units");
}

#[test]
fn growing_past_the_memory_cap_fails_cleanly() {
    let limits = Limits {
        memory_bytes: 32 << 20,
        ..Limits::default()
    };
    let (_host, mut runner) = chaos(limits);
    only_the_poison_fails(
        &mut runner,
        "chaos:grow",
        "exceeded its memory cap of 32 MiB",
    );
}

#[test]
fn a_per_record_error_needs_no_replacement() {
    let (_host, mut runner) = chaos(Limits::default());
    only_the_poison_fails(
        &mut runner,
        "chaos:error",
        "chaos was asked to fail this record",
    );
    assert_eq!(runner.replacements(), 0);
}

/// All three misbehaviours in one run of the `weir` binary: the process survives, the pipeline
/// finishes, the three poison lines are in the dead letters with the reasons and their line
/// numbers, and every other line is in the output.
#[test]
fn the_pipeline_survives_all_three() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    for i in 1..=3000 {
        lines.push(match i {
            700 => "chaos:loop".to_string(),
            1500 => "chaos:grow".to_string(),
            2300 => "chaos:panic".to_string(),
            _ => format!("{{\"n\":{i}}}"),
        });
    }
    std::fs::write(dir.path().join("input.jsonl"), lines.join("\n")).unwrap();
    let file = support::pipeline_file(
        dir.path(),
        "chaos.yaml",
        "version: 1
name: chaos
source:
  file:
    path: input.jsonl
    batch_size: 1000
stages:
  - name: chaos
    plugin: {plugins}/test-chaos.wasm
    limits:
      memory_mib: 32
      call_timeout: 300ms
sinks:
  - name: out
    input: chaos
    jsonl: { path: out.jsonl }
  - name: dead
    input: dlq
    jsonl: { path: dead.jsonl, envelope: true }
",
    );
    support::run_pipeline(&file);

    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let expected: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| !l.starts_with("chaos:"))
        .collect();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        expected,
        "every other line, once, in order"
    );

    let dead: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("dead.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(String, i64, bool)> = dead
        .iter()
        .map(|d| {
            let error = d["headers"]["weir.error"].as_str().unwrap();
            let reason_ok = match d["value"].as_str().unwrap() {
                "chaos:loop" => error.contains("deadline of 300 ms"),
                "chaos:grow" => error.contains("memory cap of 32 MiB"),
                "chaos:panic" => error.contains("panic"),
                _ => false,
            };
            assert_eq!(d["headers"]["weir.stage"], "chaos");
            assert_eq!(
                d["headers"]["weir.plugin.sha256"].as_str().unwrap().len(),
                64
            );
            (
                d["value"].as_str().unwrap().to_string(),
                d["offset"].as_i64().unwrap(),
                reason_ok,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("chaos:loop".to_string(), 700, true),
            ("chaos:grow".to_string(), 1500, true),
            ("chaos:panic".to_string(), 2300, true)
        ]
    );
}

/// A compiled plugin is cached under its sha256, and a second host loads it from there.
#[test]
fn compiled_plugins_are_cached_by_digest() {
    let cache = tempfile::tempdir().unwrap();
    let path = support::plugin("enrich");
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&path).unwrap()))
    };
    let started = Instant::now();
    let first = PluginHost::new(Some(cache.path().into()))
        .unwrap()
        .load(&path, false)
        .unwrap();
    let compiled_in = started.elapsed();
    assert_eq!(*first.digest, digest);
    let cached: Vec<String> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(
        cached[0].starts_with(&digest) && cached[0].ends_with(".cwasm"),
        "{cached:?}"
    );

    let started = Instant::now();
    let second = PluginHost::new(Some(cache.path().into()))
        .unwrap()
        .load(&path, false)
        .unwrap();
    let loaded_in = started.elapsed();
    let mut runner = StageRunner::start("enrich", second, "{}".into(), Limits::default()).unwrap();
    let mut batch = Batch::with_capacity("t", 0, 1, 16);
    batch.push(None, b"{}", 0, 0, &[]);
    assert_eq!(
        runner.process(&batch).unwrap().records.len(),
        1,
        "the cached artifact runs"
    );
    // Compiling enrich takes tens of milliseconds; loading its machine code, well under one.
    assert!(
        loaded_in * 5 < compiled_in,
        "loading from the cache ({loaded_in:?}) is much faster than compiling ({compiled_in:?})"
    );
}
