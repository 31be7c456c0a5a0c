//! Iceberg and Parquet-on-S3 sinks against real services: SeaweedFS (S3 and its Iceberg REST
//! catalog), tansu, SQLite and the machine's Postgres; read back by pyiceberg and DuckDB.
//!
//! The crash test kills `weir run` with SIGKILL again and again — at random moments and at each
//! step of the checkpoint protocol — and checks that every message is in the table and in the
//! Parquet files exactly once.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Child,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Broker, Rng, S3};

/// Columns every test table has: where the message came from, and its bytes.
const BRONZE_COLUMNS: &str = "
        - { name: topic, type: string, meta: topic, nullable: false }
        - { name: partition, type: int32, meta: partition, nullable: false }
        - { name: offset, type: int64, meta: offset, nullable: false }
        - { name: kafka_ts, type: timestamp_ms, meta: timestamp }
        - { name: raw_bytes, type: binary, meta: value }";

/// A pipeline reading `topic` into an Iceberg table; with `enrich`, through the enrich stage
/// and into Parquet files on S3 as well.
fn lake_pipeline(
    dir: &Path,
    (broker, s3): (&Broker, &S3),
    topic: &str,
    catalog: &str,
    enrich: bool,
    interval: &str,
) -> std::path::PathBuf {
    let (stages, input) = if enrich {
        (
            format!(
                "stages:\n  - name: enrich\n    plugin: {}\n",
                support::plugin("enrich").display()
            ),
            "enrich",
        )
    } else {
        (String::new(), "source")
    };
    let parquet = if enrich {
        format!(
            "  - name: files\n    input: {input}\n    parquet:\n      path: s3://weir/{topic}-parquet\n      schema:{BRONZE_COLUMNS}\n"
        )
    } else {
        String::new()
    };
    support::pipeline_file(
        dir,
        "lake.yaml",
        &format!(
            "version: 1
name: {topic}
source:
  kafka:
    bootstrap_servers: {bootstrap}
    topics: [{topic}]
    group_id: {topic}-group
    format: json
    properties:
      session.timeout.ms: \"2000\"
      heartbeat.interval.ms: \"500\"
{stages}sinks:
  - name: lake
    input: {input}
    iceberg:
      catalog: {catalog}
      table: bronze.{table}
      partition_by: [partition]
      schema:{BRONZE_COLUMNS}
        - {{ name: n, type: int64 }}
{parquet}  - name: dead
    input: dlq
    jsonl: {{ path: dlq.jsonl, envelope: true }}
checkpoint:
  interval: {interval}
  store: s3://weir/{topic}-checkpoints
object_store:
  endpoint: {endpoint}
",
            bootstrap = broker.bootstrap,
            table = topic.replace('-', "_"),
            endpoint = s3.endpoint,
        ),
    )
}

/// SIGKILL.
fn kill9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Rows of the table as pyiceberg reads them.
fn scan(s3: &S3, catalog: &[String], table: &str, columns: &str) -> Vec<Value> {
    let mut args: Vec<&str> = vec!["scan"];
    args.extend(catalog.iter().map(String::as_str));
    args.extend([
        "--table",
        table,
        "--s3-endpoint",
        &s3.endpoint,
        "--columns",
        columns,
    ]);
    support::iceberg_tool(Some(s3), &args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The table's data files: every file referenced by the current snapshot, with how many times.
fn referenced_files(s3: &S3, catalog: &[String], table: &str) -> Value {
    let mut args: Vec<&str> = vec!["files"];
    args.extend(catalog.iter().map(String::as_str));
    args.extend(["--table", table, "--s3-endpoint", &s3.endpoint]);
    serde_json::from_str(&support::iceberg_tool(Some(s3), &args)).unwrap()
}

/// Object keys under `s3://weir/PREFIX`, listed by pyarrow.
fn list_objects(s3: &S3, prefix: &str) -> Vec<String> {
    let out = support::iceberg_tool(Some(s3), &["ls", "--s3-endpoint", &s3.endpoint, prefix]);
    out.lines().map(str::to_string).collect()
}

/// Every (partition, offset) in `rows`, failing on a repeat.
fn offsets_once(rows: &[Value], what: &str) -> BTreeSet<(i64, i64)> {
    let mut seen = BTreeSet::new();
    for row in rows {
        let key = (
            row["partition"].as_i64().unwrap(),
            row["offset"].as_i64().unwrap(),
        );
        assert!(seen.insert(key), "{what}: message {key:?} is there twice");
    }
    seen
}

/// (partition, offset) of every message produced, read back from the topic by an independent
/// consumer.
fn topic_offsets(broker: &Broker, topic: &str, count: usize) -> BTreeMap<(i64, i64), Vec<u8>> {
    broker
        .tool(&["consume", topic, &count.to_string()])
        .lines()
        .map(|l| {
            let m: Value = serde_json::from_str(l).unwrap();
            (
                (
                    m["partition"].as_i64().unwrap(),
                    m["offset"].as_i64().unwrap(),
                ),
                m["value"].as_str().unwrap().as_bytes().to_vec(),
            )
        })
        .collect()
}

#[test]
fn sigkill_at_any_moment_loses_and_repeats_nothing() {
    let kills: u64 = std::env::var("WEIR_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("WEIR_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_121);
    println!("crash test: {kills} kills, seed {seed} (WEIR_CRASH_KILLS, WEIR_CRASH_SEED)");
    let mut rng = Rng(seed);
    let broker = Broker::start();
    let s3 = S3::start();
    let dir = tempfile::tempdir().unwrap();
    broker.tool(&["create", "crash", "3"]);
    let catalog = "{ type: sql, uri: \"sqlite:catalog.db\", warehouse: s3://weir/warehouse }";
    let file = lake_pipeline(dir.path(), (&broker, &s3), "crash", catalog, true, "300ms");
    const PHASES: [&str; 4] = ["data-file", "manifest", "iceberg-commit", "sinks-committed"];
    const CHUNK: u64 = 3_000;
    let mut produced = 0;
    let mut reached: BTreeMap<&str, u64> = BTreeMap::new();
    let started = Instant::now();
    for k in 0..kills {
        broker.tool(&[
            "produce",
            "crash",
            &CHUNK.to_string(),
            "--start",
            &produced.to_string(),
        ]);
        produced += CHUNK;
        // Every fifth kill at a random moment, the others at a step of the protocol.
        let point = match k % 5 {
            0 => None,
            n => Some((PHASES[n as usize - 1], 1 + rng.below(3))),
        };
        let pause = point.map(|(phase, visit)| format!("{phase}:{visit}"));
        let mut weir = support::Weir::start(&file, Some(&s3), pause.as_deref());
        let what = match point {
            None => {
                let ms = 200 + rng.below(2_500);
                std::thread::sleep(Duration::from_millis(ms));
                format!("after {ms} ms")
            }
            Some((phase, visit)) => {
                weir.paused(&format!("{phase}:{visit}"));
                *reached.entry(phase).or_default() += 1;
                format!("at {phase} (visit {visit})")
            }
        };
        let mut child = weir.into_child();
        assert!(
            child.try_wait().unwrap().is_none(),
            "kill {k}: weir exited by itself before the kill"
        );
        kill9(&mut child);
        println!("kill {k}: SIGKILL {what}");
    }
    // A last run reads the rest and stops cleanly.
    let mut child = support::Weir::start(&file, Some(&s3), None).into_child();
    let reader = support::sqlite_catalog_args(dir.path(), "s3://weir/warehouse");
    support::wait_until(
        180,
        || scan(&s3, &reader, "bronze.crash", "partition,offset").len() >= produced as usize,
        || "waiting for the last run to catch up".into(),
    );
    nix_interrupt(&mut child);
    println!(
        "{kills} kills in {:.0}s; at each step: {reached:?}",
        started.elapsed().as_secs_f64()
    );

    let expected = topic_offsets(&broker, "crash", produced as usize);
    assert_eq!(expected.len(), produced as usize);
    let expected: BTreeSet<(i64, i64)> = expected.into_keys().collect();
    let rows = scan(&s3, &reader, "bronze.crash", "partition,offset,n");
    let in_table = offsets_once(&rows, "iceberg");
    assert_eq!(in_table, expected, "the table holds every message");

    // No data file referenced twice, none left over.
    let files = referenced_files(&s3, &reader, "bronze.crash");
    let counts = files["counts"].as_object().unwrap();
    assert!(
        counts.values().all(|c| c.as_u64() == Some(1)),
        "a data file is referenced twice: {counts:?}"
    );
    let referenced: BTreeSet<String> = counts.keys().cloned().collect();
    let stored: BTreeSet<String> = list_objects(&s3, "warehouse/bronze/crash/data/")
        .into_iter()
        .map(|k| format!("s3://weir/{k}"))
        .collect();
    assert_eq!(
        stored, referenced,
        "every data file is in the table, and no other"
    );

    // The Parquet sink's committed files hold the same messages, once each.
    let parquet = support::iceberg_tool(
        Some(&s3),
        &[
            "parquet",
            "--s3-endpoint",
            &s3.endpoint,
            "crash-parquet/year=*/*/*/*/*.parquet",
        ],
    );
    let parquet: Vec<Value> = parquet
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(offsets_once(&parquet, "parquet"), expected);
    assert!(
        list_objects(&s3, "crash-parquet/_in-progress/").is_empty(),
        "no in-progress file is left"
    );
    let logged: usize = list_objects(&s3, "crash-parquet/commit-log/").len();
    assert!(logged > 0, "the commit log names the committed files");
}

/// Stops a run with SIGINT and checks it exits 0.
fn nix_interrupt(child: &mut Child) {
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "weir exited {status:?}");
}

/// Runs a source → Iceberg bronze pipeline over `messages` messages with `catalog` and checks
/// the table against the topic, byte for byte.
fn bronze_parity(catalog: &str, reader: impl Fn(&Path, &S3) -> Vec<String>, topic: &str) {
    let broker = Broker::start();
    let s3 = S3::start();
    let dir = tempfile::tempdir().unwrap();
    const MESSAGES: usize = 20_000;
    broker.tool(&["create", topic, "3"]);
    broker.tool(&["produce", topic, &MESSAGES.to_string()]);
    let catalog = catalog.replace("{rest}", &s3.rest);
    let file = lake_pipeline(dir.path(), (&broker, &s3), topic, &catalog, false, "1s");
    let mut child = support::Weir::start(&file, Some(&s3), None).into_child();
    let args = reader(dir.path(), &s3);
    let table = format!("bronze.{}", topic.replace('-', "_"));
    support::wait_until(
        120,
        || scan(&s3, &args, &table, "offset").len() >= MESSAGES,
        || "waiting for the table".into(),
    );
    nix_interrupt(&mut child);
    let expected = topic_offsets(&broker, topic, MESSAGES);
    let rows = scan(&s3, &args, &table, "partition,offset,raw_bytes");
    assert_eq!(
        rows.len(),
        MESSAGES,
        "row count equals the topic's message count"
    );
    offsets_once(&rows, "iceberg");
    for row in &rows {
        let key = (
            row["partition"].as_i64().unwrap(),
            row["offset"].as_i64().unwrap(),
        );
        let raw = hex::decode(row["raw_bytes"].as_str().unwrap()).unwrap();
        assert_eq!(raw, expected[&key], "raw_bytes of {key:?}");
    }
    // Each snapshot says which checkpoint made it.
    let mut args_snap: Vec<&str> = vec!["snapshots"];
    args_snap.extend(args.iter().map(String::as_str));
    args_snap.extend(["--table", &table, "--s3-endpoint", &s3.endpoint]);
    let snapshots = support::iceberg_tool(Some(&s3), &args_snap);
    for line in snapshots.lines() {
        let s: Value = serde_json::from_str(line).unwrap();
        assert_eq!(s["summary"]["weir.pipeline"], topic, "{s}");
        assert!(s["summary"]["weir.checkpoint"].is_string(), "{s}");
        assert!(
            s["summary"]["weir.offsets"]
                .as_str()
                .unwrap()
                .contains(&format!("{topic}/")),
            "{s}"
        );
    }
}

#[test]
fn bronze_table_in_a_sqlite_catalog_equals_the_topic() {
    bronze_parity(
        "{ type: sql, uri: \"sqlite:catalog.db\", warehouse: s3://weir/warehouse }",
        |dir, _| support::sqlite_catalog_args(dir, "s3://weir/warehouse"),
        "bronze-sqlite",
    );
}

#[test]
fn bronze_table_in_a_postgres_catalog_equals_the_topic() {
    // A catalog name of its own per run keeps runs apart in the shared database.
    let name = format!("weir_test_{}", std::process::id());
    bronze_parity(
        &format!(
            "{{ type: sql, uri: \"postgres://postgres@127.0.0.1:5432/test\", warehouse: s3://weir/warehouse, name: {name} }}"
        ),
        move |_, _| {
            vec![
                "--catalog-type".into(),
                "sql".into(),
                "--catalog-name".into(),
                name.clone(),
                "--uri".into(),
                "postgresql+psycopg2://postgres@127.0.0.1:5432/test".into(),
                "--warehouse".into(),
                "s3://weir/warehouse".into(),
            ]
        },
        "bronze-postgres",
    );
}

#[test]
fn bronze_table_in_the_rest_catalog_equals_the_topic() {
    bronze_parity(
        "{ type: rest, uri: \"{rest}\", properties: { credential: \"weir:weirsecret\" } }",
        |_, s3| {
            vec![
                "--catalog-type".into(),
                "rest".into(),
                "--uri".into(),
                s3.rest.clone(),
            ]
        },
        "bronze-rest",
    );
}
