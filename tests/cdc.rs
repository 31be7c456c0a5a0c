//! The CDC pipeline end to end: Debezium-style change events of a `users` table through the
//! `cdc` plugin into an upserted Iceberg table `cdc.users_current` and an append-only
//! `cdc.users_audit`. The expected table is computed by DuckDB straight from the same changes
//! (the last change of each id by log position; deleted ids absent), and both independent
//! readers, pyiceberg and DuckDB's `iceberg_scan` (which applies the position deletes itself),
//! must see exactly it; the audit table must hold every change exactly once, as it came.

mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The columns of `users_current` both readers compare.
const COLUMNS: &str = "id,name,email,tier,balance_cents,updated_at";

/// The shipped `pipelines/cdc.yaml`, its outputs moved to `{out}`.
fn shipped() -> String {
    let text = std::fs::read_to_string(support::repo().join("pipelines/cdc.yaml"))
        .expect("pipelines/cdc.yaml exists");
    text.replace("../plugins/dist", "{plugins}")
        .replace("../data/cdc", "{out}")
}

/// The shipped pipeline with its source replaced by `source` (a `source:` block).
fn with_source(source: &str) -> String {
    let text = shipped();
    let from = text.find("\nsource:").expect("a source block");
    let to = text.find("\nstages:").expect("a stages block");
    format!("{}\n{source}{}", &text[..from], &text[to..])
}

/// The changes the pipeline's source holds, as JSON lines in `dir/changes.jsonl`: the same
/// source straight into a `jsonl` sink.
fn changes_file(dir: &Path, pipeline: &str) -> PathBuf {
    let source = &pipeline[..pipeline.find("\nstages:").unwrap()];
    let path = dir.join("changes.jsonl");
    let reference = format!(
        "{}\nsinks:\n  - name: raw\n    input: source\n    jsonl:\n      path: {}\n  - name: dead\n    input: dlq\n    jsonl:\n      path: reference-dlq.jsonl\n",
        source.replace("name: cdc", "name: cdc-reference"),
        path.display()
    );
    support::run_pipeline(&support::pipeline_file(dir, "reference.yaml", &reference));
    path
}

/// What DuckDB computes from the changes alone: the current table (columns as `COLUMNS`, the
/// timestamp as epoch milliseconds) and the audit trail (`lsn`, `op`, `before`, `after`).
fn reference(changes: &Path) -> (Vec<Value>, Vec<Value>) {
    let changes = format!(
        "WITH c AS (SELECT json FROM read_ndjson_objects('{}')),
         changes AS (
           SELECT (json->>'$.source.lsn')::BIGINT AS lsn, json->>'$.op' AS op,
                  json->'$.before' AS before, json->'$.after' AS after,
                  coalesce((json->>'$.after.id'), (json->>'$.before.id'))::BIGINT AS id
           FROM c)",
        changes.display()
    );
    let current = support::duckdb(&format!(
        "{changes},
         last AS (SELECT arg_max(op, lsn) AS op, arg_max(after, lsn) AS row FROM changes GROUP BY id)
         SELECT (row->>'$.id')::BIGINT AS id, row->>'$.name' AS name, row->>'$.email' AS email,
                row->>'$.tier' AS tier, (row->>'$.balance_cents')::BIGINT AS balance_cents,
                (row->>'$.updated_at_ms')::BIGINT AS updated_at
         FROM last WHERE op <> 'd' ORDER BY id"
    ));
    let audit = support::duckdb(&format!(
        "{changes} SELECT lsn, op, before::VARCHAR AS before, after::VARCHAR AS after
         FROM changes ORDER BY lsn"
    ));
    (current, audit)
}

/// Rows of `table` as `tests/iceberg_tool.py COMMAND` prints them (`scan`: pyiceberg,
/// `duckdb-scan`: DuckDB).
fn read(dir: &Path, command: &str, table: &str, columns: &str) -> Vec<Value> {
    let mut args = vec![command.to_string()];
    args.extend(support::sqlite_catalog_args(
        dir,
        &dir.join("warehouse").display().to_string(),
    ));
    args.extend(["--table", table, "--columns", columns].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    support::iceberg_tool(None, &args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A reader's timestamp (`2026-01-01T00:00:00.123000+00:00`, with or without the fraction or
/// a `T`) as epoch milliseconds.
fn epoch_ms(text: &str) -> i64 {
    let text = text.replacen(' ', "T", 1);
    chrono::DateTime::parse_from_rfc3339(&text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .timestamp_millis()
}

/// `users_current` as `command` reads it, sorted by id, its timestamp as epoch milliseconds.
fn current(dir: &Path, command: &str) -> Vec<Value> {
    let mut rows = read(dir, command, "cdc.users_current", COLUMNS);
    for row in &mut rows {
        let at = row["updated_at"].as_str().map(epoch_ms);
        row["updated_at"] = at.into();
    }
    rows.sort_by_key(|r| r["id"].as_i64());
    rows
}

/// Both readers see exactly the expected current table, and the audit table holds every
/// change once, as it came.
fn assert_tables(dir: &Path, expected: &[Value], audit: &[Value]) {
    for (reader, command) in [("pyiceberg", "scan"), ("DuckDB", "duckdb-scan")] {
        let rows = current(dir, command);
        assert_eq!(
            rows.len(),
            expected.len(),
            "{reader}: rows in users_current"
        );
        if let Some((got, want)) = rows.iter().zip(expected).find(|(g, w)| g != w) {
            panic!("{reader}: users_current has {got}, the changes leave {want}");
        }
    }
    let mut rows = read(
        dir,
        "scan",
        "cdc.users_audit",
        "source_lsn,op,before,after,key",
    );
    rows.sort_by_key(|r| r["source_lsn"].as_i64());
    assert_eq!(rows.len(), audit.len(), "users_audit: one row per change");
    let json = |v: &Value| -> Value {
        v.as_str()
            .map_or(Value::Null, |t| serde_json::from_str(t).unwrap())
    };
    for (got, want) in rows.iter().zip(audit) {
        assert_eq!(
            (&got["source_lsn"], &got["op"]),
            (&want["lsn"], &want["op"]),
            "users_audit, in log order: a change missing or twice"
        );
        assert_eq!(json(&got["before"]), json(&want["before"]), "before: {got}");
        assert_eq!(json(&got["after"]), json(&want["after"]), "after: {got}");
        let row = if want["op"] == "d" {
            json(&want["before"])
        } else {
            json(&want["after"])
        };
        assert_eq!(
            json(&got["key"]),
            serde_json::json!({"id": row["id"]}),
            "key: {got}"
        );
    }
}

/// Counts of each op in the audit reference, so a test can say the stream had all three.
fn ops(audit: &[Value]) -> BTreeMap<String, usize> {
    let mut ops = BTreeMap::new();
    for row in audit {
        *ops.entry(row["op"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    ops
}

#[test]
fn the_cdc_pipeline_leaves_users_current_equal_to_the_replayed_changes() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = shipped();
    let changes = changes_file(dir.path(), &pipeline);
    let (expected, audit) = reference(&changes);
    let ops = ops(&audit);
    assert!(
        ops.len() == 3 && ops.values().all(|&n| n > 10_000),
        "inserts, updates and deletes: {ops:?}"
    );
    let started = Instant::now();
    support::run_pipeline(&support::pipeline_file(dir.path(), "cdc.yaml", &pipeline));
    eprintln!(
        "{} changes ({ops:?}) → {} current rows in {:?}",
        audit.len(),
        expected.len(),
        started.elapsed()
    );
    assert_tables(dir.path(), &expected, &audit);
    assert_eq!(
        support::count_lines(&dir.path().join("dead-letters.jsonl")),
        0
    );
}

#[test]
fn cdc_killed_at_random_moments_keeps_every_change_once() {
    const KILLS: u64 = 6;
    let dir = tempfile::tempdir().unwrap();
    // 10 s of changes at 30,000 a second: the kills land mid-stream, between and during
    // checkpoints (every 500 ms).
    let source = "source:
  generator:
    format: cdc
    count: 300000
    rate_per_sec: 30000
    seed: 23
    start_time_ms: 1767225600000
    events_per_sec: 1000
";
    let pipeline = with_source(source).replace("interval: 5s", "interval: 500ms");
    let changes = changes_file(
        dir.path(),
        &pipeline.replace("    rate_per_sec: 30000\n", ""),
    );
    let (expected, audit) = reference(&changes);
    let file = support::pipeline_file(dir.path(), "cdc.yaml", &pipeline);
    let mut rng = 0x00c0_ffee_u64;
    let started = Instant::now();
    for kill in 0..KILLS {
        let mut child = support::start_run(&file);
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let wait = Duration::from_millis(800 + (rng >> 33) % 1200);
        std::thread::sleep(wait);
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before kill {kill}: make the input longer"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!("kill {kill} after {wait:?}");
    }
    support::run_pipeline(&file);
    eprintln!(
        "{KILLS} kills and a last run in {:?}: {} changes → {} current rows",
        started.elapsed(),
        audit.len(),
        expected.len()
    );
    assert_tables(dir.path(), &expected, &audit);
    assert_eq!(
        support::count_lines(&dir.path().join("dead-letters.jsonl")),
        0
    );
}
