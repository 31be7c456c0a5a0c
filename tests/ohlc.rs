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

/// Bars by (symbol, window, window start).
type Bars = BTreeMap<(String, String, i64), Value>;

/// The trades: 500 per second of event time, up to 3 s out of order, one in 997 late by
/// 400 s (past the end of its 5-minute window, so it is late for both window kinds).
const SEED: u64 = 7;
const START_MS: i64 = 1_767_225_600_000;
const EVENTS_PER_SEC: u64 = 500;
const DISORDER_MS: u64 = 3_000;
const LATE_EVERY: u64 = 997;
const LATE_BY_MS: u64 = 400_000;

/// Writes the trades the pipeline's generator makes to `trades.jsonl`, with `weir gen`.
fn trades_file(dir: &Path, count: u64) -> std::path::PathBuf {
    let path = dir.join("trades.jsonl");
    let out = support::weir()
        .args(["gen", "--format", "binance", "--count"])
        .arg(count.to_string())
        .args(["--seed", &SEED.to_string()])
        .args(["--start-time-ms", &START_MS.to_string()])
        .args(["--events-per-sec", &EVENTS_PER_SEC.to_string()])
        .args(["--disorder-ms", &DISORDER_MS.to_string()])
        .args(["--late-every", &LATE_EVERY.to_string()])
        .args(["--late-by-ms", &LATE_BY_MS.to_string()])
        .arg("--out")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

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
        - {{ name: symbol, type: string, nullable: false }}
        - {{ name: window, type: string, nullable: false }}
        - {{ name: window_start, type: int64, nullable: false }}
        - {{ name: window_end, type: int64, nullable: false }}
        - {{ name: open, type: float64 }}
        - {{ name: high, type: float64 }}
        - {{ name: low, type: float64 }}
        - {{ name: close, type: float64 }}
        - {{ name: volume, type: float64 }}
        - {{ name: trades, type: int64 }}
        - {{ name: vwap, type: float64 }}
  - name: bars-postgres
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

/// The bars and the late trade ids DuckDB computes from the trades file alone: a trade is late
/// when it is more than a minute older than a trade before it (the bound is 5 s, the late ones
/// are 400 s back), and bars are the usual aggregates over the rest.
fn reference(trades: &Path) -> (Bars, Vec<i64>) {
    let file = trades.display();
    let flagged = format!(
        "WITH objects AS (SELECT json FROM read_ndjson_objects('{file}')),
         raw AS (
           SELECT (json->>'$.t')::BIGINT - 1000000 AS off, (json->>'$.t')::BIGINT AS t,
                  json->>'$.s' AS symbol, (json->>'$.p')::DOUBLE AS price,
                  (json->>'$.q')::DOUBLE AS qty, (json->>'$.T')::BIGINT AS ts
           FROM objects),
         flagged AS (
           SELECT *, coalesce(ts < max(ts) OVER (ORDER BY off ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) - 60000, false) AS late
           FROM raw)"
    );
    let bars = support::duckdb(&format!(
        "{flagged},
         kinds AS (SELECT * FROM (VALUES ('1m', 60000), ('5m', 300000)) k(\"window\", size))
         SELECT symbol, \"window\", (ts // size) * size AS window_start, (ts // size) * size + size AS window_end,
                arg_min(price, ts::HUGEINT * 10000000 + off) AS open, max(price) AS high, min(price) AS low,
                arg_max(price, ts::HUGEINT * 10000000 + off) AS close, sum(qty) AS volume, count(*) AS trades,
                sum(price * qty) / sum(qty) AS vwap
         FROM flagged, kinds WHERE NOT late GROUP BY ALL ORDER BY ALL"
    ));
    let late = support::duckdb(&format!(
        "{flagged} SELECT t FROM flagged WHERE late ORDER BY t"
    ));
    (
        bars.into_iter().map(|b| (bar_key(&b), b)).collect(),
        late.iter().map(|r| r["t"].as_i64().unwrap()).collect(),
    )
}

fn bar_key(bar: &Value) -> (String, String, i64) {
    (
        bar["symbol"].as_str().unwrap().into(),
        bar["window"].as_str().unwrap().into(),
        bar["window_start"].as_i64().unwrap(),
    )
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Every bar in `actual` (rows from a sink, maybe with duplicates) equals the reference's, and
/// every reference bar is there exactly once.
fn assert_bars(what: &str, actual: &[Value], expected: &Bars) {
    let mut seen: BTreeMap<(String, String, i64), usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for bar in actual {
        let key = bar_key(bar);
        *seen.entry(key.clone()).or_default() += 1;
        let Some(want) = expected.get(&key) else {
            wrong.push(format!("unexpected bar {key:?}"));
            continue;
        };
        for field in ["open", "high", "low", "close", "volume", "vwap"] {
            let (a, b) = (bar[field].as_f64().unwrap(), want[field].as_f64().unwrap());
            if !close(a, b) {
                wrong.push(format!("{key:?} {field}: {a} != {b}"));
            }
        }
        for field in ["trades", "window_end"] {
            if bar[field].as_i64() != want[field].as_i64() {
                wrong.push(format!(
                    "{key:?} {field}: {} != {}",
                    bar[field], want[field]
                ));
            }
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<_> = expected.keys().filter(|k| !seen.contains_key(*k)).collect();
    assert!(
        wrong.is_empty() && twice.is_empty() && missing.is_empty(),
        "{what}: {} bars, {} expected; {} wrong, {} twice, {} missing; first: {:?} {:?} {:?}",
        actual.len(),
        expected.len(),
        wrong.len(),
        twice.len(),
        missing.len(),
        wrong.first(),
        twice.first(),
        missing.first()
    );
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

/// Rows of an Iceberg table, read by pyiceberg.
fn scan(dir: &Path, table: &str) -> Vec<Value> {
    let mut args = vec!["scan".to_string()];
    args.extend(support::sqlite_catalog_args(
        dir,
        &dir.join("warehouse").display().to_string(),
    ));
    args.extend(["--table".into(), table.into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    support::iceberg_tool(None, &args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn late_ids(dir: &Path) -> Vec<i64> {
    let mut ids: Vec<i64> = scan(dir, "market.late_trades")
        .iter()
        .map(|r| r["trade_id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
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
