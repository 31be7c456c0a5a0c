//! The OHLC pipeline end to end: generated trades, out of order within the watermark's bound and
//! some late beyond it, through the `ohlc` plugin (bars in the host's keyed state, closed by
//! watermarks) into Iceberg; every bar is compared with a reference computed by DuckDB straight
//! from the same trades, and the late trades must be on `late`, not in any bar. The crash test
//! kills the run again and again and checks the same, with nothing counted twice.

mod support;

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::ohlc::{
    BAR_COLUMNS, Bars, DISORDER_MS, EVENTS_PER_SEC, LATE_BY_MS, LATE_EVERY, SEED, START_MS,
    assert_bars, bar_key, late_ids, reference, scan, trades_file,
};

/// The pipeline: generator → ohlc (1m and 5m) → Iceberg bars, late trades to their own table.
fn pipeline(
    dir: &Path,
    name: &str,
    count: u64,
    rate: Option<u64>,
    interval: &str,
) -> std::path::PathBuf {
    let rate = rate.map_or(String::new(), |r| format!("    rate_per_sec: {r}\n"));
    support::pipeline_file(
        dir,
        "ohlc.yaml",
        &format!(
            "version: 1
name: {name}
source:
  generator:
    format: binance
    count: {count}
{rate}    seed: {SEED}
    start_time_ms: {START_MS}
    events_per_sec: {EVENTS_PER_SEC}
    disorder: {{ max_ms: {DISORDER_MS}, late_every: {LATE_EVERY}, late_by_ms: {LATE_BY_MS} }}
stages:
  - name: ohlc
    plugin: {{plugins}}/ohlc.wasm
    config:
      windows: [1m, 5m]
event_time:
  max_out_of_orderness_secs: 5
sinks:
  - name: bars
    input: ohlc
    iceberg:
      catalog: {{ type: sql, uri: sqlite:catalog.db, warehouse: warehouse }}
      table: market.bars
      schema: &bar
{BAR_COLUMNS}  - name: bars-postgres
    input: ohlc
    postgres:
      url: postgres://postgres@127.0.0.1:5432/test
      table: {name}
      key: [symbol, window, window_start]
      schema: *bar
  - name: latest
    input: ohlc
    redis:
      key: \"{name}:{{symbol}}:{{window}}\"
  - name: late
    input: ohlc.late
    iceberg:
      catalog: {{ type: sql, uri: sqlite:catalog.db, warehouse: warehouse }}
      table: market.late_trades
      schema:
        - {{ name: trade_id, type: int64, from: t, nullable: false }}
        - {{ name: symbol, type: string, from: s }}
        - {{ name: event_ms, type: int64, from: T }}
  - name: dead
    input: dlq
    jsonl: {{ path: dlq.jsonl, envelope: true }}
checkpoint:
  interval: {interval}
"
        ),
    )
}

/// A name no other test run uses, for a Postgres table and Redis keys.
fn unique(test: &str) -> String {
    format!("ohlc_{test}_{}", std::process::id())
}

/// Runs a client command, asserts it succeeded, and returns what it printed.
fn client(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs one statement with psql (unaligned, tuples only) and returns what it printed.
fn psql(sql: &str) -> String {
    client(
        "psql",
        &[
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-Atqc",
            sql,
        ],
    )
}

/// Rows of a Postgres table, read by psql.
fn postgres_rows(table: &str) -> Vec<Value> {
    serde_json::from_str(&psql(&format!(
        "SELECT coalesce(json_agg(t), '[]') FROM \"{table}\" t"
    )))
    .unwrap()
}

fn drop_table(table: &str) {
    psql(&format!("DROP TABLE \"{table}\""));
}

fn redis_cli(args: &[&str]) -> String {
    client("redis-cli", &[&["-h", "127.0.0.1"], args].concat())
}

/// The newest bar of each symbol and window, read by redis-cli, against the reference's.
fn assert_latest(prefix: &str, expected: &Bars) {
    let mut newest: BTreeMap<(String, String), &Value> = BTreeMap::new();
    for ((symbol, window, _), bar) in expected {
        newest.insert((symbol.clone(), window.clone()), bar); // ascending: the last wins
    }
    let keys = redis_cli(&["--scan", "--pattern", &format!("{prefix}:*")]);
    assert_eq!(
        keys.lines().count(),
        newest.len(),
        "one Redis key per symbol and window"
    );
    let latest: Vec<Value> = newest
        .keys()
        .map(|(symbol, window)| {
            let value = redis_cli(&["GET", &format!("{prefix}:{symbol}:{window}")]);
            serde_json::from_str(value.trim()).unwrap()
        })
        .collect();
    let want = newest
        .into_values()
        .map(|b| (bar_key(b), b.clone()))
        .collect();
    assert_bars("redis latest", &latest, &want);
    for key in keys.lines() {
        redis_cli(&["DEL", key]);
    }
}

#[test]
fn ohlc_bars_equal_a_duckdb_reference_and_late_trades_go_to_late() {
    let dir = tempfile::tempdir().unwrap();
    let count = 600_000;
    let (expected, late) = reference(&trades_file(dir.path(), count));
    assert!(
        expected.len() > 100 && late.len() > 100,
        "the input has bars and late trades"
    );
    let name = unique("reference");
    let file = pipeline(dir.path(), &name, count, None, "2s");
    support::run_pipeline(&file);
    assert_bars(
        "iceberg (pyiceberg)",
        &scan(dir.path(), "market.bars"),
        &expected,
    );
    assert_bars("postgres (psql)", &postgres_rows(&name), &expected);
    assert_latest(&name, &expected);
    drop_table(&name);
    assert_eq!(late_ids(dir.path()), late, "late trades, by trade id");
    assert_eq!(support::count_lines(&dir.path().join("dlq.jsonl")), 0);
}

#[test]
fn ohlc_killed_at_random_moments_still_equals_the_reference() {
    let kills: u64 = std::env::var("WEIR_OHLC_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(12);
    let dir = tempfile::tempdir().unwrap();
    // 30 s of input at 40,000 trades/s: the kills land while windows are open.
    let count = 1_200_000;
    let (expected, late) = reference(&trades_file(dir.path(), count));
    let name = unique("crash");
    let file = pipeline(dir.path(), &name, count, Some(40_000), "1s");
    let mut rng = 0x5eed_u64;
    let mut next = || {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        rng >> 33
    };
    let started = Instant::now();
    for kill in 0..kills {
        let mut child = support::start_run(&file);
        let wait = Duration::from_millis(700 + next() % 1800);
        std::thread::sleep(wait);
        if child.try_wait().unwrap().is_some() {
            panic!("the run ended before kill {kill}: make the input longer");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!("kill {kill} after {wait:?}");
    }
    support::run_pipeline(&file);
    eprintln!("{kills} kills and a last run in {:?}", started.elapsed());
    assert_bars(
        "iceberg after kills",
        &scan(dir.path(), "market.bars"),
        &expected,
    );
    assert_eq!(late_ids(dir.path()), late, "late trades after kills");
    assert_bars("postgres after kills", &postgres_rows(&name), &expected);
    assert_latest(&name, &expected);
    drop_table(&name);
}
