//! OHLC bars checked against a reference DuckDB computes from the same trades: shared by the
//! `ohlc` pipeline tests and the hot-swap tests of `weir serve`.

use std::{collections::BTreeMap, path::Path};

use serde_json::Value;

/// Bars by (symbol, window, window start).
pub type Bars = BTreeMap<(String, String, i64), Value>;

/// The trades: 500 per second of event time, up to 3 s out of order, one in 997 late by
/// 400 s (past the end of its 5-minute window, so it is late for both window kinds).
pub const SEED: u64 = 7;
pub const START_MS: i64 = 1_767_225_600_000;
pub const EVENTS_PER_SEC: u64 = 500;
pub const DISORDER_MS: u64 = 3_000;
pub const LATE_EVERY: u64 = 997;
pub const LATE_BY_MS: u64 = 400_000;

/// Writes the trades the pipeline's generator makes to `trades.jsonl`, with `weir gen`.
pub fn trades_file(dir: &Path, count: u64) -> std::path::PathBuf {
    let path = dir.join("trades.jsonl");
    let out = super::weir()
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

/// The bars and the late trade ids DuckDB computes from the trades file alone: a trade is late
/// when it is more than a minute older than a trade before it (the bound is 5 s, the late ones
/// are 400 s back), and bars are the usual aggregates over the rest.
pub fn reference(trades: &Path) -> (Bars, Vec<i64>) {
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
    let bars = super::duckdb(&format!(
        "{flagged},
         kinds AS (SELECT * FROM (VALUES ('1m', 60000), ('5m', 300000)) k(\"window\", size))
         SELECT symbol, \"window\", (ts // size) * size AS window_start, (ts // size) * size + size AS window_end,
                arg_min(price, ts::HUGEINT * 10000000 + off) AS open, max(price) AS high, min(price) AS low,
                arg_max(price, ts::HUGEINT * 10000000 + off) AS close, sum(qty) AS volume, count(*) AS trades,
                sum(price * qty) / sum(qty) AS vwap
         FROM flagged, kinds WHERE NOT late GROUP BY ALL ORDER BY ALL"
    ));
    let late = super::duckdb(&format!(
        "{flagged} SELECT t FROM flagged WHERE late ORDER BY t"
    ));
    (
        bars.into_iter().map(|b| (bar_key(&b), b)).collect(),
        late.iter().map(|r| r["t"].as_i64().unwrap()).collect(),
    )
}

pub fn bar_key(bar: &Value) -> (String, String, i64) {
    (
        bar["symbol"].as_str().unwrap().into(),
        bar["window"].as_str().unwrap().into(),
        bar["window_start"].as_i64().unwrap(),
    )
}

pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Every bar in `actual` (rows from a sink, maybe with duplicates) equals the reference's, and
/// every reference bar is there exactly once.
pub fn assert_bars(what: &str, actual: &[Value], expected: &Bars) {
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

/// Rows of an Iceberg table, read by pyiceberg.
pub fn scan(dir: &Path, table: &str) -> Vec<Value> {
    let mut args = vec!["scan".to_string()];
    args.extend(super::sqlite_catalog_args(
        dir,
        &dir.join("warehouse").display().to_string(),
    ));
    args.extend(["--table".into(), table.into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    super::iceberg_tool(None, &args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn late_ids(dir: &Path) -> Vec<i64> {
    let mut ids: Vec<i64> = scan(dir, "market.late_trades")
        .iter()
        .map(|r| r["trade_id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

/// An OHLC pipeline named `name` over `count` generated trades at `rate` per second, with its
/// tables in `dir` and its stage running `plugin`: bars (with the plugin that closed each and
/// v2's `range`) and late trades into Iceberg, dead letters into a file.
pub fn served_pipeline(dir: &Path, name: &str, plugin: &str, count: u64, rate: u64) -> String {
    format!(
        "version: 1
name: {name}
source:
  generator:
    format: binance
    count: {count}
    rate_per_sec: {rate}
    seed: {SEED}
    start_time_ms: {START_MS}
    events_per_sec: {EVENTS_PER_SEC}
    disorder: {{ max_ms: {DISORDER_MS}, late_every: {LATE_EVERY}, late_by_ms: {LATE_BY_MS} }}
stages:
  - name: ohlc
    plugin: {plugin}
    config:
      windows: [1m, 5m]
event_time:
  max_out_of_orderness_secs: 5
sinks:
  - name: bars
    input: ohlc
    iceberg:
      catalog: {{ type: sql, uri: \"sqlite:{dir}/catalog.db\", warehouse: {dir}/warehouse }}
      table: market.bars
      schema:
{BAR_COLUMNS}        - {{ name: range, type: float64 }}
        - {{ name: plugin, type: string, meta: plugin }}
  - name: late
    input: ohlc.late
    iceberg:
      catalog: {{ type: sql, uri: \"sqlite:{dir}/catalog.db\", warehouse: {dir}/warehouse }}
      table: market.late_trades
      schema:
        - {{ name: trade_id, type: int64, from: t, nullable: false }}
  - name: dead
    input: dlq
    jsonl: {{ path: {dir}/dlq.jsonl, envelope: true }}
checkpoint:
  interval: 1s
  store: {dir}/checkpoints
  state_dir: {dir}/state
",
        dir = dir.display(),
        plugin = super::plugin(plugin).display(),
    )
}

/// The columns of a bar as a sink's `schema:` lists them, one per line, indented for it.
pub const BAR_COLUMNS: &str = "        - { name: symbol, type: string, nullable: false }
        - { name: window, type: string, nullable: false }
        - { name: window_start, type: int64, nullable: false }
        - { name: window_end, type: int64, nullable: false }
        - { name: open, type: float64 }
        - { name: high, type: float64 }
        - { name: low, type: float64 }
        - { name: close, type: float64 }
        - { name: volume, type: float64 }
        - { name: trades, type: int64 }
        - { name: vwap, type: float64 }
";
