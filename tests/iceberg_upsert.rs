//! The Iceberg sink's `mode: upsert` against real services (SeaweedFS for S3, a SQLite catalog,
//! tansu for Kafka), read back by pyiceberg and DuckDB, which both apply position deletes.
//!
//! Each test writes a stream of upserts and deletes (header `weir-op: delete`) over many
//! checkpoints, with restarts and crashes in between, replays the same stream independently
//! into the expected current state, and checks that both readers see exactly that state: no
//! key twice, no deleted key, every value the last one written.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::{Broker, Rng, S3, Weir};
use weir::{
    record::{Batch, header},
    sinks::{Committer, OpenContext, Sink},
};

/// The sink's columns: a `users` table as a CDC source would carry it.
const USER_COLUMNS: &str = "
        - { name: id, type: int64, nullable: false }
        - { name: name, type: string }
        - { name: tier, type: string }
        - { name: balance_cents, type: int64 }
        - { name: updated_at, type: timestamp_ms }";

/// Columns both readers compare.
const COMPARED: &str = "id,name,tier,balance_cents";

/// One change of the stream.
#[derive(Clone, Debug)]
enum Change {
    /// The row of `id` becomes this.
    Upsert(User),
    /// The row of `id` goes (a no-op if there is none).
    Delete(i64),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct User {
    id: i64,
    name: String,
    tier: String,
    balance_cents: i64,
    updated_ms: i64,
}

impl Change {
    fn id(&self) -> i64 {
        match self {
            Change::Upsert(u) => u.id,
            Change::Delete(id) => *id,
        }
    }

    /// The record's value and headers. A delete carries only the key, as a CDC delete may.
    fn record(&self) -> (Vec<u8>, Vec<(&'static str, &'static str)>) {
        match self {
            Change::Upsert(u) => (
                json!({
                    "id": u.id, "name": u.name, "tier": u.tier,
                    "balance_cents": u.balance_cents, "updated_at": u.updated_ms,
                })
                .to_string()
                .into_bytes(),
                vec![("weir-op", "upsert")],
            ),
            Change::Delete(id) => (
                json!({ "id": id }).to_string().into_bytes(),
                vec![("weir-op", "delete")],
            ),
        }
    }
}

/// `count` changes over `keys` keys: mostly upserts, a quarter deletes (some of keys that are
/// not there), keys repeating within a checkpoint's worth of changes.
fn changes(rng: &mut Rng, keys: u64, count: usize, first: usize) -> Vec<Change> {
    const TIERS: [&str; 4] = ["free", "silver", "gold", "platinum"];
    (first..first + count)
        .map(|n| {
            let id = rng.below(keys) as i64 + 1;
            if rng.below(4) == 0 {
                Change::Delete(id)
            } else {
                Change::Upsert(User {
                    id,
                    name: format!("user {id} v{n}"),
                    tier: TIERS[rng.below(4) as usize].to_string(),
                    balance_cents: rng.below(1_000_000) as i64 - 100_000,
                    // Never a whole second, so every reader prints the fraction.
                    updated_ms: 1_767_225_600_000 + n as i64 * 1000 + 7,
                })
            }
        })
        .collect()
}

/// The table a stream of changes leaves, replayed here independently of Weir.
fn replay<'a>(changes: impl IntoIterator<Item = &'a Change>) -> BTreeMap<i64, User> {
    let mut table = BTreeMap::new();
    for change in changes {
        match change {
            Change::Upsert(u) => {
                table.insert(u.id, u.clone());
            }
            Change::Delete(id) => {
                table.remove(id);
            }
        }
    }
    table
}

/// Runs a table command of `tests/iceberg_tool.py` and returns its JSON lines.
fn tool(s3: &S3, command: &str, dir: &Path, table: &str, extra: &[&str]) -> Vec<Value> {
    let catalog = support::sqlite_catalog_args(dir, "s3://weir/warehouse");
    let mut args: Vec<&str> = vec![command];
    args.extend(catalog.iter().map(String::as_str));
    args.extend(["--table", table, "--s3-endpoint", &s3.endpoint]);
    args.extend(extra);
    support::iceberg_tool(Some(s3), &args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The rows of `expected` as the readers print the compared columns.
fn as_rows(expected: &BTreeMap<i64, User>) -> Vec<Value> {
    expected
        .values()
        .map(|u| json!({"id": u.id, "name": u.name, "tier": u.tier, "balance_cents": u.balance_cents}))
        .collect()
}

/// Checks the table with both independent readers: pyiceberg and DuckDB each see exactly the
/// expected rows (the same rows, sorted, so a key twice or a deleted key shows), and pyiceberg
/// the last `updated_at` of each.
fn check_table(s3: &S3, dir: &Path, table: &str, expected: &BTreeMap<i64, User>) {
    let want = as_rows(expected);
    let sort = |mut rows: Vec<Value>| {
        rows.sort_by_key(|r| r["id"].as_i64());
        rows
    };
    let pyiceberg = sort(tool(s3, "scan", dir, table, &["--columns", COMPARED]));
    assert_eq!(pyiceberg.len(), want.len(), "pyiceberg: row count");
    assert_eq!(pyiceberg, want, "pyiceberg: the current state");
    let duckdb = sort(tool(
        s3,
        "duckdb-scan",
        dir,
        table,
        &["--columns", COMPARED],
    ));
    assert_eq!(duckdb.len(), want.len(), "DuckDB: row count");
    assert_eq!(duckdb, want, "DuckDB: the current state");
    let times = tool(s3, "scan", dir, table, &["--columns", "id,updated_at"]);
    for row in &times {
        let user = &expected[&row["id"].as_i64().unwrap()];
        let at = chrono::DateTime::from_timestamp_millis(user.updated_ms).unwrap();
        assert_eq!(
            row["updated_at"].as_str().unwrap(),
            at.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string(),
            "updated_at of {}",
            user.id
        );
    }
}

/// Structural checks: one snapshot per checkpoint, delete manifests holding only delete files
/// (and data manifests only data files), every file under `data/` referenced by the table and
/// none twice, and more rows in the data files than live rows (so the readers that returned
/// `live` rows did apply the deletes). Returns the operations of the snapshots.
fn check_structure(
    s3: &S3,
    dir: &Path,
    table: &str,
    files_prefix: &str,
    live: usize,
) -> BTreeSet<String> {
    let snapshots = tool(s3, "snapshots", dir, table, &[]);
    let mut checkpoints = BTreeSet::new();
    let mut operations = BTreeSet::new();
    for s in &snapshots {
        let summary = &s["summary"];
        operations.insert(summary["operation"].as_str().unwrap().to_string());
        if let Some(c) = summary["weir.checkpoint"].as_str() {
            assert!(
                checkpoints.insert(c.to_string()),
                "checkpoint {c} committed twice: {snapshots:?}"
            );
        }
    }
    let current = snapshots
        .iter()
        .max_by_key(|s| s["sequence_number"].as_i64())
        .unwrap();
    let total = |key: &str| {
        current["summary"][key]
            .as_str()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
    };
    let (records, deletes) = (total("total-records"), total("total-position-deletes"));
    assert!(
        records > live && deletes > 0,
        "the data files hold {records} rows and {deletes} position deletes for {live} live rows"
    );
    let manifests = tool(s3, "manifests", dir, table, &[]);
    let mut referenced = BTreeSet::new();
    let mut delete_manifests = 0;
    for m in &manifests {
        let content = m["content"].as_str().unwrap();
        for f in m["files"].as_array().unwrap() {
            let kind = f["content"].as_str().unwrap();
            match content {
                "data" => assert_eq!(kind, "data", "a data manifest holds {kind}: {m}"),
                _ => assert_eq!(kind, "position-deletes", "a delete manifest holds {kind}"),
            }
            let path = f["path"].as_str().unwrap().to_string();
            assert!(referenced.insert(path.clone()), "{path} referenced twice");
        }
        delete_manifests += usize::from(content == "deletes");
    }
    assert!(delete_manifests > 0, "the table has delete manifests");
    let stored: BTreeSet<String> = support::iceberg_tool(
        Some(s3),
        &["ls", "--s3-endpoint", &s3.endpoint, files_prefix],
    )
    .lines()
    .map(|k| format!("s3://weir/{k}"))
    .collect();
    assert_eq!(
        stored, referenced,
        "every data and delete file is in the table, and no other"
    );
    println!(
        "{} snapshots kept, {} manifests ({delete_manifests} of deletes), {} files; \
         {records} rows in data files, {deletes} position deletes, {live} live rows",
        snapshots.len(),
        manifests.len(),
        referenced.len()
    );
    operations
}

/// A pipeline file around an upsert sink into `cdc.users_current` (the direct test does not run
/// its source; the end-to-end test passes a Kafka source).
fn upsert_pipeline(dir: &Path, s3: &S3, source: &str, checkpoint: &str) -> std::path::PathBuf {
    support::pipeline_file(
        dir,
        "users.yaml",
        &format!(
            "version: 1
name: users
source:
{source}
sinks:
  - name: current
    input: source
    iceberg:
      catalog: {{ type: sql, uri: \"sqlite:catalog.db\", warehouse: s3://weir/warehouse }}
      table: cdc.users_current
      mode: upsert
      key: [id]
      keep_snapshots: 8
      schema:{USER_COLUMNS}
  - name: dead
    input: dlq
    jsonl: {{ path: dlq.jsonl, envelope: true }}
{checkpoint}object_store:
  endpoint: {endpoint}
  access_key_id: {key}
  secret_access_key: {secret}
",
            endpoint = s3.endpoint,
            key = support::S3_KEY,
            secret = support::S3_SECRET,
        ),
    )
}

/// The sink of a pipeline file, opened as a run would open it.
struct Run {
    sink: Sink,
    committer: Committer,
    /// How long each barrier (pre-commit) took.
    barriers: Vec<Duration>,
}

impl Run {
    async fn open(pipeline: &weir::pipeline::Pipeline, run: &str, epoch: u64) -> Run {
        let cx = OpenContext {
            dir: &pipeline.dir,
            pipeline: &pipeline.name,
            run,
            epoch,
            s3: &pipeline.s3,
        };
        let (sink, committer) = Sink::open(&pipeline.sinks[0].kind, &cx).await.unwrap();
        Run {
            sink,
            committer: committer.expect("an iceberg sink commits"),
            barriers: Vec::new(),
        }
    }

    /// Writes changes as batches of up to 100 records; returns how many were rejected.
    async fn write(&mut self, changes: &[Change]) -> usize {
        let mut rejected = 0;
        for chunk in changes.chunks(100) {
            let mut batch = Batch::with_capacity("users-cdc", 0, chunk.len(), 0);
            for (i, change) in chunk.iter().enumerate() {
                let (value, headers) = change.record();
                let headers: Vec<_> = headers
                    .iter()
                    .map(|(k, v)| header(k, v.as_bytes()))
                    .collect();
                let key = change.id().to_string();
                batch.push(Some(key.as_bytes()), &value, 0, i as i64, &headers);
            }
            rejected += self.sink.write((&batch).into()).await.unwrap().len();
        }
        rejected
    }

    /// The barrier of checkpoint `id`: the manifest a coordinator would store.
    async fn pre_commit(&mut self, id: u64) -> weir::checkpoint::Manifest {
        let started = Instant::now();
        let pending = self.sink.pre_commit(id).await.unwrap();
        self.barriers.push(started.elapsed());
        serde_json::from_value(json!({
            "pipeline": "users",
            "checkpoint": id,
            "started_ms": 0,
            "precommit_ms": 0,
            "offsets": [{"topic": "users-cdc", "partition": 0, "offset": id * 1000}],
            "sinks": pending.commit.map(|c| json!({"current": c})).unwrap_or(json!({})),
            "files": pending.files,
            "bytes": pending.bytes,
        }))
        .unwrap()
    }

    /// Commits the sink's part of `manifest`, returning how long it took.
    async fn commit(&mut self, manifest: &weir::checkpoint::Manifest) -> Duration {
        let started = Instant::now();
        if let Some(pending) = manifest.sinks.get("current") {
            self.committer.commit(manifest, pending).await.unwrap();
        }
        started.elapsed()
    }
}

/// Prints min / median / max of some durations.
fn spread(what: &str, mut times: Vec<Duration>) {
    times.sort();
    if let (Some(min), Some(max)) = (times.first(), times.last()) {
        println!(
            "{what}: {} times, min {:.1} ms, median {:.1} ms, max {:.1} ms",
            times.len(),
            min.as_secs_f64() * 1e3,
            times[times.len() / 2].as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    }
}

/// A number from the environment, for larger runs (`WEIR_UPSERT_KEYS=1000000 …`).
fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserts_and_deletes_survive_restarts_and_replays() {
    const CHECKPOINTS: u64 = 40;
    let per_checkpoint = setting("WEIR_UPSERT_CHANGES", 400) as usize;
    let keys = setting("WEIR_UPSERT_KEYS", 1_500);
    let s3 = S3::start();
    let dir = tempfile::tempdir().unwrap();
    let file = upsert_pipeline(dir.path(), &s3, "  generator: { count: 1 }", "");
    let host = weir::plugin::PluginHost::new(None).unwrap();
    let pipeline = weir::pipeline::load(&file, &host).unwrap();
    let mut rng = Rng(20_261_121);
    let input: Vec<Vec<Change>> = (0..CHECKPOINTS as usize)
        .map(|c| changes(&mut rng, keys, per_checkpoint, c * per_checkpoint))
        .collect();
    let table = "cdc.users_current";
    let (mut commits, mut barriers) = (Vec::new(), Vec::new());

    // Run 1: checkpoints 1–12. Checkpoint 5's commit is made twice, as recovery repeats the
    // newest manifest's; checkpoint 12 is pre-committed and its manifest stored, then the
    // process "dies" before committing it.
    let mut run = Run::open(&pipeline, "r1", 1).await;
    let poison = {
        let mut batch = Batch::with_capacity("users-cdc", 0, 2, 0);
        batch.push(None, br#"{"name":"no id"}"#, 0, 0, &[]);
        batch.push(None, b"not json", 0, 1, &[header("weir-op", b"delete")]);
        run.sink.write((&batch).into()).await.unwrap()
    };
    assert_eq!(
        poison.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![0, 1],
        "a record without a key is rejected, upsert or delete: {poison:?}"
    );
    let mut stored = None;
    for id in 1..=12 {
        assert_eq!(run.write(&input[id as usize - 1]).await, 0);
        let manifest = run.pre_commit(id).await;
        if id < 12 {
            commits.push(run.commit(&manifest).await);
        }
        if id == 5 {
            run.commit(&manifest).await;
        }
        stored = Some(manifest);
    }
    barriers.append(&mut run.barriers);
    drop(run);

    // Run 2: recovery commits checkpoint 12 from its manifest and cleans nothing; the index is
    // rebuilt from the table at the first barrier. Checkpoint 21 is pre-committed, and the
    // process dies before its manifest is stored.
    let mut run = Run::open(&pipeline, "r2", 13).await;
    run.commit(stored.as_ref().unwrap()).await;
    assert_eq!(run.committer.clean("users", 12).await.unwrap(), 0);
    check_table(
        &s3,
        dir.path(),
        table,
        &replay(input[..12].iter().flatten()),
    );
    let started = Instant::now();
    run.write(&input[12]).await;
    let first = run.pre_commit(13).await;
    let first_barrier = started.elapsed();
    commits.push(run.commit(&first).await);
    for id in 14..=21 {
        run.write(&input[id as usize - 1]).await;
        let manifest = run.pre_commit(id).await;
        if id < 21 {
            commits.push(run.commit(&manifest).await);
            stored = Some(manifest);
        }
    }
    barriers.append(&mut run.barriers);
    drop(run);

    // Run 3: recovery repeats checkpoint 20's commit (already there: a no-op) and deletes the
    // files checkpoint 21 wrote; the source would replay checkpoint 21's records, and does.
    let mut run = Run::open(&pipeline, "r3", 21).await;
    run.commit(stored.as_ref().unwrap()).await;
    let removed = run.committer.clean("users", 20).await.unwrap();
    assert!(
        removed >= 2,
        "checkpoint 21's data and delete files are removed ({removed})"
    );
    for id in 21..=CHECKPOINTS {
        run.write(&input[id as usize - 1]).await;
        let manifest = run.pre_commit(id).await;
        commits.push(run.commit(&manifest).await);
    }
    barriers.append(&mut run.barriers);
    drop(run);

    let expected = replay(input.iter().flatten());
    println!(
        "{} changes over {keys} keys in {CHECKPOINTS} checkpoints: {} live rows",
        input.iter().map(Vec::len).sum::<usize>(),
        expected.len()
    );
    spread("barrier (pre-commit) of an upsert checkpoint", barriers);
    spread("commit of an upsert checkpoint", commits);
    println!(
        "first barrier after a restart (index rebuild included): {:.1} ms",
        first_barrier.as_secs_f64() * 1e3
    );
    check_table(&s3, dir.path(), table, &expected);
    let operations = check_structure(
        &s3,
        dir.path(),
        table,
        "warehouse/cdc/users_current/data/",
        expected.len(),
    );
    assert!(operations.contains("overwrite"), "{operations:?}");
}

/// Produces `changes` to `topic`, keyed by id (so a key's changes stay in order in one
/// partition), with the `weir-op` header.
fn produce(broker: &Broker, topic: &str, changes: &[Change]) {
    use rdkafka::{
        ClientConfig,
        message::{Header, OwnedHeaders},
        producer::{BaseProducer, BaseRecord, Producer},
    };
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for change in changes {
        let (value, headers) = change.record();
        let headers = headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        });
        let key = change.id().to_string();
        let mut record = BaseRecord::to(topic)
            .key(key.as_bytes())
            .payload(&value)
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(50));
                    record = back;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Produces `changes` in ten pieces about 100 ms apart, so that they reach several checkpoints.
fn produce_slowly(broker: &Broker, topic: &str, changes: &[Change]) {
    for piece in changes.chunks(changes.len().div_ceil(10)) {
        produce(broker, topic, piece);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_cdc_topic_upserted_through_sigkills_equals_its_replay() {
    let broker = Broker::start();
    let s3 = S3::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = "users-cdc";
    broker.tool(&["create", topic, "3"]);
    let source = format!(
        "  kafka:
    bootstrap_servers: {}
    topics: [{topic}]
    group_id: users-upsert
    format: json
    properties:
      session.timeout.ms: \"2000\"
      heartbeat.interval.ms: \"500\"",
        broker.bootstrap
    );
    let file = upsert_pipeline(
        dir.path(),
        &s3,
        &source,
        "checkpoint:\n  interval: 300ms\n  store: s3://weir/users-checkpoints\n",
    );
    let mut rng = Rng(7);
    let mut produced: Vec<Change> = Vec::new();
    const CHUNK: usize = 2_000;
    // Kill at each step of the checkpoint protocol, and once at a random moment.
    let kills = [
        Some("data-file:2"),
        Some("manifest:2"),
        Some("iceberg-commit:1"),
        Some("iceberg-commit:3"),
        None,
        Some("manifest:1"),
    ];
    for (k, pause) in kills.iter().enumerate() {
        let mut weir = Weir::start(&file, Some(&s3), *pause);
        let chunk = changes(&mut rng, 800, CHUNK, produced.len());
        produce_slowly(&broker, topic, &chunk);
        produced.extend(chunk);
        match pause {
            Some(pause) => weir.paused(pause),
            None => std::thread::sleep(Duration::from_millis(rng.below(1_000))),
        }
        assert!(
            weir.child.try_wait().unwrap().is_none(),
            "kill {k}: weir exited by itself"
        );
        weir.child.kill().unwrap();
        weir.child.wait().unwrap();
        println!(
            "kill {k}: SIGKILL at {}",
            pause.unwrap_or("a random moment")
        );
    }
    // A last run reads the rest.
    let mut child = Weir::start(&file, Some(&s3), None).into_child();
    let chunk = changes(&mut rng, 800, CHUNK, produced.len());
    produce_slowly(&broker, topic, &chunk);
    produced.extend(chunk);
    // Kafka keeps each key's changes in order within its partition; the replay needs only that.
    let expected = replay(&produced);
    let want = as_rows(&expected);
    let table = "cdc.users_current";
    support::wait_until(
        180,
        || {
            let mut rows = tool(&s3, "scan", dir.path(), table, &["--columns", COMPARED]);
            rows.sort_by_key(|r| r["id"].as_i64());
            rows == want
        },
        || "waiting for the table to reach the replayed state".into(),
    );
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success(), "weir stops cleanly");
    println!(
        "{} changes over 800 keys through {} SIGKILLs: {} live rows",
        produced.len(),
        kills.len(),
        expected.len()
    );
    check_table(&s3, dir.path(), table, &expected);
    check_structure(
        &s3,
        dir.path(),
        table,
        "warehouse/cdc/users_current/data/",
        expected.len(),
    );
}
