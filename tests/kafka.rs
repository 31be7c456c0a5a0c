//! The Kafka source and sink against a real Kafka-protocol broker (tansu), with an independent
//! client (PyPI confluent-kafka) producing the input and reading topics back.
//!
//! Broker quirk worked around (SERVICES.md): a group join takes half of `session.timeout.ms`, so
//! the pipelines set `session.timeout.ms: 2000`, `heartbeat.interval.ms: 500`; every test uses
//! its own broker, topic and group.

mod support;

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;
use support::{Broker, Running};

fn pipeline(
    broker: &Broker,
    dir: &std::path::Path,
    topic: &str,
    group: &str,
    extra_sinks: &str,
    stages: &str,
) -> std::path::PathBuf {
    support::pipeline_file(
        dir,
        "kafka.yaml",
        &format!(
            "version: 1
name: kafka-test
source:
  kafka:
    bootstrap_servers: {bootstrap}
    topics: [{topic}]
    group_id: {group}
    format: json
    properties:
      session.timeout.ms: \"2000\"
      heartbeat.interval.ms: \"500\"
{stages}sinks:
  - name: out
    input: {input}
    jsonl: {{ path: {{out}}/out.jsonl, envelope: true }}
{extra_sinks}checkpoint:
  interval: 1s
",
            bootstrap = broker.bootstrap,
            input = if stages.is_empty() {
                "source"
            } else {
                "enrich"
            },
        ),
    )
}

const DLQ_TO_STDOUT: &str = "  - name: dead\n    input: dlq\n    stdout: { envelope: true }\n";

fn read_lines(file: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Checks that `rows` hold messages 0..count exactly once, each as the tool produced it, with
/// offsets gapless from 0 in every partition.
fn assert_exactly_once(rows: &[Value], topic: &str, count: u64) {
    assert_eq!(rows.len() as u64, count, "one row per message");
    let mut seen = HashSet::new();
    let mut offsets: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for row in rows {
        let value: Value = serde_json::from_str(row["value"].as_str().unwrap()).unwrap();
        let n = value["n"].as_u64().unwrap();
        assert!(seen.insert(n), "message {n} twice");
        assert_eq!(row["topic"], topic);
        assert_eq!(row["key"], format!("k{}", n % 100), "key of {n}");
        assert_eq!(row["headers"]["h"], format!("v{n}"), "header of {n}");
        assert_eq!(
            row["timestamp_ms"],
            1_767_225_600_000_u64 + n,
            "timestamp of {n}"
        );
        offsets
            .entry(row["partition"].as_i64().unwrap())
            .or_default()
            .push(row["offset"].as_i64().unwrap());
    }
    assert_eq!(seen.len() as u64, count);
    for (partition, mut offs) in offsets {
        offs.sort();
        assert!(
            offs.iter().enumerate().all(|(i, o)| *o == i as i64),
            "partition {partition}: offsets gapless from 0"
        );
    }
}

#[test]
fn a_three_partition_topic_is_read_completely_with_headers_and_metadata() {
    let broker = Broker::start();
    broker.tool(&["create", "trades", "3"]);
    broker.tool(&["produce", "trades", "100000"]);
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(&broker, dir.path(), "trades", "complete", DLQ_TO_STDOUT, "");
    let run = Running::start(&file);
    let out = dir.path().join("out.jsonl");
    support::wait_for_lines(&out, 100_000, 120);
    let summary = run.stop();
    assert!(summary.contains("sink out: 100,000 records"), "{summary}");
    let rows = read_lines(&out);
    assert_exactly_once(&rows, "trades", 100_000);
    let partitions: HashSet<i64> = rows
        .iter()
        .map(|r| r["partition"].as_i64().unwrap())
        .collect();
    assert_eq!(partitions.len(), 3, "all three partitions were read");
}

#[test]
fn a_restarted_pipeline_resumes_from_its_checkpoint() {
    let broker = Broker::start();
    broker.tool(&["create", "events", "3"]);
    broker.tool(&["produce", "events", "10000"]);
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(&broker, dir.path(), "events", "resume", DLQ_TO_STDOUT, "");
    let out = dir.path().join("out.jsonl");

    let run = Running::start(&file);
    support::wait_for_lines(&out, 10_000, 60);
    run.stop();

    broker.tool(&["produce", "events", "10000", "--start", "10000"]);
    let run = Running::start(&file);
    support::wait_for_lines(&out, 20_000, 60);
    let summary = run.stop();
    assert!(
        summary.contains("sink out: 10,000 records"),
        "the second run reads only the new messages: {summary}"
    );
    assert_exactly_once(&read_lines(&out), "events", 20_000);
}

#[test]
fn poison_messages_land_on_the_dlq_topic_with_their_reasons() {
    let broker = Broker::start();
    broker.tool(&["create", "mixed", "3"]);
    broker.tool(&["create", "mixed.dlq", "1"]);
    broker.tool(&["produce", "mixed", "10000", "--poison-every", "100"]);
    let dir = tempfile::tempdir().unwrap();
    let dlq = format!(
        "  - name: dead\n    input: dlq\n    kafka: {{ bootstrap_servers: \"{}\", topic: mixed.dlq }}\n",
        broker.bootstrap
    );
    let stages = format!(
        "stages:\n  - name: enrich\n    plugin: {}\n",
        support::plugin("enrich").display()
    );
    let file = pipeline(&broker, dir.path(), "mixed", "poison", &dlq, &stages);
    let out = dir.path().join("out.jsonl");
    let run = Running::start(&file);
    support::wait_for_lines(&out, 9_900, 60);
    let summary = run.stop();
    assert!(summary.contains("dead letters: 100"), "{summary}");

    // The good 99%: enriched, each once.
    let rows = read_lines(&out);
    assert_eq!(rows.len(), 9_900);
    let mut good = HashSet::new();
    for row in &rows {
        let value: Value = serde_json::from_str(row["value"].as_str().unwrap()).unwrap();
        assert_eq!(value["kafka_topic"], "mixed");
        assert_eq!(value["kafka_offset"], row["offset"]);
        assert!(good.insert(value["n"].as_u64().unwrap()));
    }

    // The poison 1%, read back from the DLQ topic by the independent client.
    let dead: Vec<Value> = broker
        .tool(&["consume", "mixed.dlq", "100"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 100, "exactly the poison messages");
    let mut poison = HashSet::new();
    for d in &dead {
        let value = d["value"].as_str().unwrap();
        let n: u64 = value
            .strip_prefix("not json ")
            .expect("only poison in the DLQ")
            .parse()
            .unwrap();
        assert_eq!(n % 100, 99);
        assert!(poison.insert(n), "poison {n} twice");
        assert_eq!(d["key"], format!("k{}", n % 100), "original key kept");
        let h = &d["headers"];
        assert_eq!(h["h"], format!("v{n}"), "original headers kept");
        assert!(
            h["weir.error"]
                .as_str()
                .unwrap()
                .starts_with("value is not JSON"),
            "{h}"
        );
        assert_eq!(h["weir.stage"], "source");
        assert_eq!(h["weir.source.topic"], "mixed");
        assert!(
            h["weir.source.partition"]
                .as_str()
                .unwrap()
                .parse::<i32>()
                .is_ok()
        );
        assert!(
            h["weir.source.offset"]
                .as_str()
                .unwrap()
                .parse::<i64>()
                .is_ok()
        );
        assert_eq!(
            h["weir.source.timestamp"],
            (1_767_225_600_000_u64 + n).to_string()
        );
    }
    assert!(good.is_disjoint(&poison));
    assert_eq!(
        good.len() + poison.len(),
        10_000,
        "every message is in the output or the DLQ"
    );
}

/// Two processes in one consumer group split the partitions; when one stops, the other takes
/// its partitions over; the union of their outputs holds every message exactly once, including
/// those read around both rebalances (a member joining, a member leaving).
#[test]
fn two_processes_split_a_group_and_one_takes_over() {
    let broker = Broker::start();
    broker.tool(&["create", "shared", "3"]);
    broker.tool(&["produce", "shared", "30000"]);
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let file_a = pipeline(&broker, dir_a.path(), "shared", "pair", DLQ_TO_STDOUT, "");
    let file_b = pipeline(&broker, dir_b.path(), "shared", "pair", DLQ_TO_STDOUT, "");
    let (out_a, out_b) = (
        dir_a.path().join("out.jsonl"),
        dir_b.path().join("out.jsonl"),
    );
    let lines = |f: &std::path::Path| support::count_lines(f);

    let a = Running::start(&file_a);
    support::wait_for_lines(&out_a, 1, 60);
    let b = Running::start(&file_b);
    // B joins: A gives partitions up (draining what it holds) and the group splits them.
    broker.tool(&["produce", "shared", "30000", "--start", "30000"]);
    support::wait_until(
        60,
        || lines(&out_a) + lines(&out_b) >= 60_000 && lines(&out_b) > 0,
        || format!("a: {}, b: {}", lines(&out_a), lines(&out_b)),
    );
    let b_partitions: HashSet<i64> = read_lines(&out_b)
        .iter()
        .map(|r| r["partition"].as_i64().unwrap())
        .collect();
    assert!(
        !b_partitions.is_empty() && b_partitions.len() < 3,
        "B owns part of the topic: {b_partitions:?}"
    );

    // B leaves: it commits what it wrote, and A takes its partitions over from there.
    b.stop();
    let b_total = lines(&out_b);
    broker.tool(&["produce", "shared", "30000", "--start", "60000"]);
    support::wait_until(
        60,
        || lines(&out_a) + b_total >= 90_000,
        || format!("a: {}, b: {b_total}", lines(&out_a)),
    );
    a.stop();
    let rows_a = read_lines(&out_a);
    let after_b_left: HashSet<i64> = rows_a
        .iter()
        .filter(|r| {
            serde_json::from_str::<Value>(r["value"].as_str().unwrap()).unwrap()["n"]
                .as_u64()
                .unwrap()
                >= 60_000
        })
        .map(|r| r["partition"].as_i64().unwrap())
        .collect();
    assert_eq!(
        after_b_left.len(),
        3,
        "after B left, A reads every partition"
    );
    let mut all = rows_a;
    all.extend(read_lines(&out_b));
    assert_exactly_once(&all, "shared", 90_000);
}

/// `weir gen` writes a topic that an independent client reads back record for record as the
/// same seed writes to a file, keyed, with event times as timestamps, at the rate asked for.
#[test]
fn gen_writes_a_topic_at_a_rate_the_same_as_to_a_file() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let common = [
        "gen",
        "--format",
        "cdc",
        "--count",
        "20000",
        "--seed",
        "9",
        "--start-time-ms",
        "1767225600000",
        "--events-per-sec",
        "1000",
        "--quiet",
    ];
    let started = std::time::Instant::now();
    let status = support::weir()
        .args(common)
        .args(["--rate", "10000", "--topic", "changes", "--partitions", "3"])
        .args(["--bootstrap-servers", &broker.bootstrap])
        .status()
        .unwrap();
    let took = started.elapsed().as_secs_f64();
    assert!(status.success());
    assert!(
        (1.9..6.0).contains(&took),
        "20,000 records at 10,000/s took {took:.1}s"
    );
    let file = dir.path().join("changes.jsonl");
    let status = support::weir()
        .args(common)
        .arg("--out")
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    let expected: Vec<Value> = read_lines(&file);
    let consumed = broker.tool(&["consume", "changes", "20000"]);
    let mut by_lsn = BTreeMap::new();
    let mut partitions = HashSet::new();
    for line in consumed.lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        let value: Value = serde_json::from_str(row["value"].as_str().unwrap()).unwrap();
        let id = if value["op"] == "d" {
            &value["before"]["id"]
        } else {
            &value["after"]["id"]
        };
        assert_eq!(row["key"], format!("{{\"id\":{id}}}"));
        assert_eq!(row["timestamp"], value["ts_ms"]);
        partitions.insert(row["partition"].as_i64().unwrap());
        by_lsn.insert(value["source"]["lsn"].as_u64().unwrap(), value);
    }
    assert_eq!(partitions.len(), 3, "keys spread over the partitions");
    let read: Vec<Value> = by_lsn.into_values().collect();
    assert_eq!(read.len(), 20_000);
    assert!(read == expected, "the topic holds what the file holds");
}

/// The trade `kafka_tool.py produce-avro` writes as message `n`, as JSON in schema order.
fn avro_trade(n: u64) -> String {
    let time_ms = 1_767_225_600_000 + n * 1000;
    format!(
        r#"{{"e":"trade","E":{},"s":"{}","t":{n},"p":"{}.50000000","q":"0.01000000","T":{time_ms},"m":{},"M":true}}"#,
        time_ms + 1,
        ["BTCUSDT", "ETHUSDT", "SOLUSDT"][n as usize % 3],
        100 + n % 1000,
        n.is_multiple_of(2)
    )
}

fn avro_pipeline(
    broker: &Broker,
    dir: &std::path::Path,
    topic: &str,
    avro: &str,
) -> std::path::PathBuf {
    support::pipeline_file(
        dir,
        "avro.yaml",
        &format!(
            "version: 1
name: avro-test
source:
  kafka:
    bootstrap_servers: {bootstrap}
    topics: [{topic}]
    group_id: {topic}-reader
    format: avro
    avro: {avro}
    properties:
      session.timeout.ms: \"2000\"
      heartbeat.interval.ms: \"500\"
sinks:
  - name: out
    input: source
    jsonl: {{ path: {{out}}/out.jsonl, envelope: true }}
  - name: dead
    input: dlq
    jsonl: {{ path: {{out}}/dead.jsonl, envelope: true }}
checkpoint:
  interval: 1s
",
            bootstrap = broker.bootstrap,
        ),
    )
}

/// Output rows' values by trade id, and dead letters' errors.
fn avro_outcome(dir: &std::path::Path) -> (BTreeMap<u64, String>, Vec<String>) {
    let mut values = BTreeMap::new();
    for row in read_lines(&dir.join("out.jsonl")) {
        let value = row["value"].as_str().unwrap().to_string();
        let parsed: Value = serde_json::from_str(&value).unwrap();
        assert_eq!(row["key"], parsed["s"], "key kept");
        assert_eq!(row["timestamp_ms"], parsed["T"], "timestamp kept");
        assert!(
            values
                .insert(parsed["t"].as_u64().unwrap(), value)
                .is_none()
        );
    }
    let dead = read_lines(&dir.join("dead.jsonl"))
        .iter()
        .map(|d| d["headers"]["weir.error"].as_str().unwrap().to_string())
        .collect();
    (values, dead)
}

/// Bare Avro values decode with the pipeline's `.avsc` into JSON in schema order; values that
/// are not Avro go to the dead letters, with the reason.
#[test]
fn an_avro_topic_is_decoded_with_its_schema() {
    let broker = Broker::start();
    let schema = support::repo().join("pipelines/schemas/trade.avsc");
    broker.tool(&["create", "avro", "2"]);
    broker.tool(&[
        "produce-avro",
        "avro",
        "5000",
        schema.to_str().unwrap(),
        "--poison-every",
        "100",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let avro = format!("{{ schema: {} }}", schema.display());
    let run = Running::start(&avro_pipeline(&broker, dir.path(), "avro", &avro));
    support::wait_for_lines(&dir.path().join("out.jsonl"), 4_950, 60);
    let summary = run.stop();
    assert!(summary.contains("dead letters: 50"), "{summary}");
    let (values, dead) = avro_outcome(dir.path());
    assert_eq!(values.len(), 4_950);
    for (n, value) in &values {
        assert_ne!(n % 100, 99, "poison {n} decoded");
        assert_eq!(value, &avro_trade(*n), "trade {n}");
    }
    assert_eq!(dead.len(), 50);
    assert!(
        dead.iter()
            .all(|e| e.starts_with("value is not Avro of the schema")),
        "{dead:?}"
    );
}

/// The Confluent wire format with a registry: the writer's schema (a newer version with an extra
/// field) is fetched by id and values are resolved to the pipeline's reader schema; a value
/// whose id the registry does not know goes to the dead letters.
#[test]
fn confluent_avro_is_resolved_from_the_registry_schema_to_the_reader_schema() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let reader = support::repo().join("pipelines/schemas/trade.avsc");
    let mut v2: Value = serde_json::from_str(&std::fs::read_to_string(&reader).unwrap()).unwrap();
    v2["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "venue", "type": "string", "default": ""}));
    let writer = dir.path().join("trade-v2.avsc");
    std::fs::write(&writer, v2.to_string()).unwrap();
    let registry = Registry::start(&[(7, &writer)]);
    broker.tool(&["create", "framed", "1"]);
    let w = writer.to_str().unwrap();
    broker.tool(&["produce-avro", "framed", "1000", w, "--schema-id", "7"]);
    broker.tool(&["produce-avro", "framed", "10", w, "--schema-id", "99"]);
    let avro = format!(
        "{{ schema: {}, registry_url: \"{}\" }}",
        reader.display(),
        registry.url
    );
    let run = Running::start(&avro_pipeline(&broker, dir.path(), "framed", &avro));
    support::wait_for_lines(&dir.path().join("out.jsonl"), 1000, 60);
    support::wait_for_lines(&dir.path().join("dead.jsonl"), 10, 30);
    let summary = run.stop();
    assert!(summary.contains("sink out: 1,000 records"), "{summary}");
    let (values, dead) = avro_outcome(dir.path());
    assert_eq!(values.len(), 1000);
    for (n, value) in &values {
        assert_eq!(
            value,
            &avro_trade(*n),
            "trade {n}, without the writer's extra field"
        );
    }
    assert_eq!(dead.len(), 10);
    assert!(
        dead.iter()
            .all(|e| e.contains("schema id 99 is not in the registry")),
        "{dead:?}"
    );
}

/// `tests/support/schema_registry.py` serving schemas by id, stopped when dropped.
struct Registry {
    child: std::process::Child,
    url: String,
}

impl Registry {
    fn start(schemas: &[(u32, &std::path::Path)]) -> Registry {
        use std::io::BufRead;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = std::process::Command::new(support::python())
            .arg(support::repo().join("tests/support/schema_registry.py"))
            .arg(port.to_string())
            .args(
                schemas
                    .iter()
                    .map(|(id, path)| format!("{id}={}", path.display())),
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready", "the schema registry did not start");
        Registry {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pipelines/NAME` pointed at `broker` and writing under `dir`, with 1 s checkpoints and the
/// group timeouts the broker needs (SERVICES.md quirk 1: a join takes half the session timeout).
fn example(name: &str, broker: &Broker, dir: &std::path::Path) -> std::path::PathBuf {
    let repo = support::repo();
    let original = std::fs::read_to_string(repo.join("pipelines").join(name)).unwrap();
    let mut text = original.clone();
    for (from, to) in [
        ("127.0.0.1:9092", broker.bootstrap.clone()),
        ("../data/", format!("{}/", dir.display())),
        ("../plugins/", format!("{}/", repo.join("plugins").display())),
        ("schemas/", format!("{}/", repo.join("pipelines/schemas").display())),
        ("interval: 10s", "interval: 1s".to_string()),
        (
            "    start_from: earliest\n",
            "    start_from: earliest\n    properties:\n      session.timeout.ms: \"2000\"\n      heartbeat.interval.ms: \"500\"\n".to_string(),
        ),
    ] {
        text = text.replace(from, &to);
    }
    assert!(text.contains("session.timeout.ms"), "{name} changed shape");
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    file
}

/// Rows in the Parquet files under `dir` (0 before the first file is finished).
fn parquet_rows(dir: &std::path::Path) -> u64 {
    fn any_parquet(dir: &std::path::Path) -> bool {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let path = e.path();
                path.extension().is_some_and(|x| x == "parquet")
                    || (path.is_dir() && any_parquet(&path))
            })
    }
    if !any_parquet(dir) {
        return 0;
    }
    let rows = support::duckdb(&format!(
        "SELECT count(*) AS n FROM read_parquet('{}/**/*.parquet')",
        dir.display()
    ));
    rows[0]["n"].as_u64().unwrap()
}

/// pipelines/binance-bronze.yaml keeps every message byte for byte, JSON or not, with its key,
/// topic, partition, offset, timestamp and headers.
#[test]
fn the_binance_bronze_example_keeps_raw_bytes_and_metadata() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("generated.jsonl");
    let generate = |out: &[&str]| {
        let status = support::weir()
            .args(["gen", "--count", "20000", "--seed", "5", "--quiet"])
            .args([
                "--start-time-ms",
                "1767225600000",
                "--events-per-sec",
                "1000",
            ])
            .args(out)
            .status()
            .unwrap();
        assert!(status.success());
    };
    generate(&[
        "--topic",
        "binance.raw",
        "--bootstrap-servers",
        &broker.bootstrap,
    ]);
    generate(&["--out", generated.to_str().unwrap()]);
    // Another producer's messages: with headers, and some not JSON at all.
    broker.tool(&["produce", "binance.raw", "100", "--poison-every", "10"]);
    let out = dir.path().join("bronze/binance_raw");
    let run = Running::start(&example("binance-bronze.yaml", &broker, dir.path()));
    support::wait_until(
        90,
        || parquet_rows(&out) >= 20_100,
        || format!("{} rows", parquet_rows(&out)),
    );
    let summary = run.stop();
    assert!(summary.contains("sink bronze: 20,100 records"), "{summary}");
    let rows = support::duckdb(&format!(
        "SELECT decode(raw_bytes) AS value, decode(kafka_key) AS key, kafka_topic AS topic,
                kafka_partition AS partition, kafka_offset AS pos,
                epoch_ms(kafka_timestamp) AS ts, kafka_headers AS headers
         FROM read_parquet('{}/**/*.parquet') ORDER BY 4, 5",
        out.display()
    ));
    assert_eq!(rows.len(), 20_100);
    let mut expected: HashSet<String> = std::fs::read_to_string(&generated)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let mut offsets: BTreeMap<i64, i64> = BTreeMap::new();
    let mut foreign = 0;
    for row in &rows {
        let value = row["value"].as_str().unwrap();
        assert_eq!(row["topic"], "binance.raw");
        let partition = row["partition"].as_i64().unwrap();
        let next = offsets.entry(partition).or_default();
        assert_eq!(row["pos"].as_i64().unwrap(), *next, "gapless offsets");
        *next += 1;
        if expected.remove(value) {
            let trade: Value = serde_json::from_str(value).unwrap();
            assert_eq!(row["key"], trade["s"]);
            assert_eq!(row["ts"], trade["T"]);
            assert!(row["headers"].is_null());
        } else {
            let n = row["headers"].as_str().map(|h| {
                let h: Value = serde_json::from_str(h).unwrap();
                h["h"].as_str().unwrap()[1..].parse::<u64>().unwrap()
            });
            let n = n.unwrap_or_else(|| panic!("unexpected value {value}"));
            let want = if n % 10 == 9 {
                format!("not json {n}")
            } else {
                format!("{{\"n\": {n}}}")
            };
            assert_eq!(value, want);
            assert_eq!(row["key"], format!("k{n}"));
            foreign += 1;
        }
    }
    assert!(
        expected.is_empty(),
        "{} generated trades missing",
        expected.len()
    );
    assert_eq!(foreign, 100);
}

/// pipelines/lineage.yaml: Avro trades → enrich → Parquet in hour folders by trade time, each
/// row traced to its Kafka position; values that are not Avro go to the dead letters.
#[test]
fn the_lineage_example_decodes_avro_enriches_and_partitions_by_hour() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let schema = support::repo().join("pipelines/schemas/trade.avsc");
    broker.tool(&["create", "trades.avro", "2"]);
    broker.tool(&[
        "produce-avro",
        "trades.avro",
        "5000",
        schema.to_str().unwrap(),
        "--poison-every",
        "100",
    ]);
    let out = dir.path().join("lineage/trades");
    let dead = dir.path().join("lineage/dead-letters.jsonl");
    let run = Running::start(&example("lineage.yaml", &broker, dir.path()));
    support::wait_until(
        90,
        || support::count_lines(&dead) >= 50 && parquet_rows(&out) >= 4_950,
        || {
            format!(
                "{} rows, {} dead",
                parquet_rows(&out),
                support::count_lines(&dead)
            )
        },
    );
    let summary = run.stop();
    assert!(summary.contains("dead letters: 50"), "{summary}");
    // Trade n happens at 2026-01-01T00:00:00Z + n seconds: 3600 in hour 00 and 1400 in hour
    // 01, less every 100th (not Avro).
    let rows = support::duckdb(&format!(
        "SELECT year::INT AS year, month::INT AS month, day::INT AS day, hour::INT AS hour,
                count(*) AS n, count(DISTINCT trade_id) AS ids,
                count(*) FILTER (WHERE price <> 100 + trade_id % 1000 + 0.5
                                    OR kafka_timestamp <> trade_time
                                    OR kafka_topic <> 'trades.avro'
                                    OR hour(trade_time) <> hour::INT) AS wrong,
                min(ingestion_timestamp) > TIMESTAMP '2026-01-02' AS ingested_now
         FROM read_parquet('{}/**/*.parquet', hive_partitioning = true)
         GROUP BY ALL ORDER BY hour",
        out.display()
    ));
    let hours: Vec<(i64, i64, i64, bool)> = rows
        .iter()
        .map(|r| {
            assert_eq!(
                (r["year"].as_i64(), r["month"].as_i64(), r["day"].as_i64()),
                (Some(2026), Some(1), Some(1))
            );
            (
                r["hour"].as_i64().unwrap(),
                r["n"].as_i64().unwrap(),
                r["ids"].as_i64().unwrap(),
                r["wrong"] == 0 && r["ingested_now"] == true,
            )
        })
        .collect();
    assert_eq!(hours, vec![(0, 3564, 3564, true), (1, 1386, 1386, true)]);
}

/// A stage slower than the broker, which also stalls for seconds once per partition: the source
/// holds back (and, during the stalls, pauses its partitions while it keeps serving the group)
/// instead of buffering, so the process stays far smaller than the topic, and every message
/// still arrives exactly once.
#[test]
fn a_slow_stage_pauses_consumption_and_memory_stays_bounded() {
    const MESSAGES: u64 = 150_000;
    let broker = Broker::start();
    broker.tool(&["create", "big", "3"]);
    // 150,000 × 2 KB: 300 MB on the topic.
    broker.tool(&["produce", "big", &MESSAGES.to_string(), "--pad", "2000"]);
    let dir = tempfile::tempdir().unwrap();
    // The stall takes about 2.5 s alone; with other tests on both cores it can take twice the
    // 5 s default deadline, which would send that record to the dead letters. This test is
    // about backpressure, not deadlines: give the calls room.
    let stages = format!(
        "stages:\n  - name: enrich\n    plugin: {}\n    config: {{ spin_per_record: 20000, stall_at_offset: 10000, stall_spin: 2400000000 }}\n    limits: {{ call_timeout: 60s }}\n",
        support::plugin("test-chaos").display()
    );
    let file = pipeline(&broker, dir.path(), "big", "slow", DLQ_TO_STDOUT, &stages);
    let out = dir.path().join("out.jsonl");
    let run = Running::start(&file);
    support::wait_for_lines(&out, MESSAGES as usize, 240);
    let peak = run.peak_rss_mib();
    let summary = run.stop();
    eprintln!("peak RSS {peak} MiB\n{summary}");
    let paused = summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("backpressure: the source waited "))
        .and_then(|l| l.split("pausing its partitions ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no backpressure line: {summary}"));
    assert!(paused >= 1, "the stalls paused the partitions: {summary}");
    assert!(
        peak < 150,
        "peak RSS {peak} MiB while the topic holds 300 MB"
    );
    assert_exactly_once(&read_lines(&out), "big", MESSAGES);
}
