//! The `postgres` and `redis` sinks against the machine's PostgreSQL and Redis (endpoints from
//! `WEIR_TEST_POSTGRES_URL` and `WEIR_TEST_REDIS_URL`, by default on 127.0.0.1), read back with
//! `psql` and `redis-cli`. Every test has its own pipeline name, table and keys, so the tests run
//! in parallel.
//!
//! Most tests drive a sink through the calls the runtime makes — write, pre-commit, commit,
//! clean — so each step of the checkpoint protocol is checked: staged writes are invisible, a
//! commit applies the last write of each key, a commit made again (by the same committer or after
//! a restart) changes nothing, and what a checkpoint without a manifest staged is cleaned away.
//! The last test runs a whole pipeline with `weir run`, killed right after a manifest is stored.

mod support;

use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use serde_json::{Value, json};
use weir::{
    checkpoint::Manifest,
    record::{Batch, header},
    sinks::{Committer, OpenContext, Rejected, Sink, SinkError},
    storage::S3Config,
};

fn postgres_url() -> String {
    std::env::var("WEIR_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn redis_url() -> String {
    std::env::var("WEIR_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A name no other test, and no earlier run, uses.
fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!(
        "{prefix}_{}_{ms}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs SQL with `psql` (timestamps in UTC) and returns its rows, `|` between columns.
fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .arg(postgres_url())
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGTZ", "UTC")
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql failed on {sql}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

/// Runs a `redis-cli` command and returns what it printed (empty for nil).
fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-u", &redis_url(), "--raw"])
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(
        out.status.success(),
        "redis-cli {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

/// Removes what a test left in Postgres and Redis, unless it failed (then it stays to look at).
struct Cleanup {
    pipeline: String,
    table: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let p = &self.pipeline;
        if let Some(table) = &self.table {
            psql(&format!(
                "DROP TABLE IF EXISTS {table}; \
                 DELETE FROM weir_staging WHERE pipeline = '{p}'; \
                 DELETE FROM weir_sink_checkpoints WHERE pipeline = '{p}';"
            ));
        } else {
            for pattern in [format!("{p}:*"), format!("weir:*:{p}:*")] {
                for key in redis_cli(&["--scan", "--pattern", &pattern]).lines() {
                    redis_cli(&["DEL", key]);
                }
            }
        }
    }
}

/// Opens the sink of a pipeline named `pipeline` whose one sink, `out`, has these settings (a
/// type key and its map, indented by four spaces), as the runtime does.
async fn open(pipeline: &str, settings: &str, epoch: u64) -> Result<(Sink, Committer), SinkError> {
    let text = format!(
        "version: 1\nname: {pipeline}\nsource:\n  generator: {{ count: 1 }}\nsinks:\n  - name: out\n    input: source\n{settings}\n"
    );
    let spec = weir::pipeline::parse_str(Path::new("sink.yaml"), &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let kind = spec.sinks.value.into_iter().next().unwrap().kind.value;
    let dir = std::env::temp_dir();
    let cx = OpenContext {
        dir: &dir,
        pipeline,
        run: "test",
        epoch,
        s3: &S3Config::default(),
    };
    let (sink, committer) = Sink::open(&kind, &cx).await?;
    Ok((sink, committer.expect("the sink commits at checkpoints")))
}

/// A record: its JSON value, key, and whether it carries `weir-op: delete`.
type Rec<'a> = (&'a str, Option<&'a str>, bool);

fn batch(records: &[Rec]) -> Batch {
    let mut b = Batch::with_capacity("trades", 0, records.len(), 0);
    for (i, (value, key, delete)) in records.iter().enumerate() {
        let headers = if *delete {
            vec![header("weir-op", b"delete")]
        } else {
            vec![header("weir-op", b"upsert")]
        };
        b.push(
            key.map(str::as_bytes),
            value.as_bytes(),
            1_700_000_000_000 + i as i64,
            i as i64,
            &headers,
        );
    }
    b
}

async fn write(sink: &mut Sink, records: &[Rec<'_>]) -> Rejected {
    sink.write((&batch(records)).into()).await.unwrap()
}

/// Pre-commits checkpoint `id` and returns the manifest that would be stored.
async fn pre_commit(sink: &mut Sink, pipeline: &str, id: u64) -> Manifest {
    let pending = sink.pre_commit(id).await.unwrap();
    let commit = pending.commit.expect("the checkpoint wrote something");
    serde_json::from_value(json!({
        "pipeline": pipeline, "checkpoint": id, "started_ms": 0, "precommit_ms": 0,
        "offsets": [], "sinks": { "out": commit }, "files": 0, "bytes": 0,
    }))
    .unwrap()
}

async fn commit(committer: &mut Committer, manifest: &Manifest) {
    committer
        .commit(manifest, &manifest.sinks["out"])
        .await
        .unwrap();
}

fn postgres_settings(table: &str) -> String {
    format!(
        "    postgres:
      url: {}
      table: {table}
      key: [symbol]
      schema:
        - {{ name: symbol, type: string }}
        - {{ name: price, type: float64 }}
        - {{ name: qty, type: int64 }}",
        postgres_url()
    )
}

fn rows(table: &str) -> String {
    psql(&format!(
        "SELECT symbol, price, qty FROM {table} ORDER BY symbol"
    ))
}

fn staged(pipeline: &str) -> u64 {
    psql(&format!(
        "SELECT count(*) FROM weir_staging WHERE pipeline = '{pipeline}'"
    ))
    .parse()
    .unwrap()
}

fn applied(pipeline: &str) -> String {
    psql(&format!(
        "SELECT checkpoint FROM weir_sink_checkpoints WHERE pipeline = '{pipeline}' AND sink = 'out'"
    ))
}

#[tokio::test]
async fn postgres_applies_the_last_write_per_key_and_deletes_at_commit() {
    let (p, table) = (unique("pg_upsert"), unique("pg_upsert"));
    let _cleanup = Cleanup {
        pipeline: p.clone(),
        table: Some(table.clone()),
    };
    let (mut sink, mut committer) = open(&p, &postgres_settings(&table), 1).await.unwrap();
    let rejected = write(
        &mut sink,
        &[
            (r#"{"symbol":"BTC","price":1.5,"qty":1}"#, None, false),
            (r#"{"symbol":"ETH","price":10,"qty":2}"#, None, false),
            (r#"{"symbol":"BTC","price":2.5,"qty":3}"#, None, false),
            // Upserted, then deleted in the same checkpoint: gone.
            (r#"{"symbol":"SOL","price":7,"qty":4}"#, None, false),
            (r#"{"symbol":"SOL"}"#, None, true),
            // Deleted (while absent), then upserted: there.
            (r#"{"symbol":"XRP"}"#, None, true),
            (r#"{"symbol":"XRP","price":0.5,"qty":5}"#, None, false),
        ],
    )
    .await;
    assert!(rejected.is_empty(), "{rejected:?}");
    write(
        &mut sink,
        &[(r#"{"symbol":"BTC","price":3.5,"qty":6}"#, None, false)],
    )
    .await;
    let first = pre_commit(&mut sink, &p, 1).await;
    // Staged, durable, and not in the table until the commit.
    assert_eq!(rows(&table), "");
    assert_eq!(staged(&p), 4);
    commit(&mut committer, &first).await;
    assert_eq!(rows(&table), "BTC|3.5|6\nETH|10|2\nXRP|0.5|5");

    // A delete needs only the key columns in its value.
    write(
        &mut sink,
        &[
            (r#"{"symbol":"ETH"}"#, None, true),
            (r#"{"symbol":"BTC","price":4.5,"qty":7}"#, None, false),
            (r#"{"symbol":"DOGE","price":0.1,"qty":8}"#, None, false),
        ],
    )
    .await;
    let second = pre_commit(&mut sink, &p, 2).await;
    commit(&mut committer, &second).await;
    assert_eq!(rows(&table), "BTC|4.5|7\nDOGE|0.1|8\nXRP|0.5|5");
    assert_eq!(applied(&p), "2");
    assert_eq!(staged(&p), 0);
    assert_eq!(
        sink.location().unwrap(),
        format!("postgres table public.{table} (7 rows upserted or deleted)")
    );
}

#[tokio::test]
async fn postgres_applies_the_latest_of_several_flushes_of_a_checkpoint() {
    use weir::sinks::postgres::FLUSH_ROWS;
    let (p, table) = (unique("pg_flushes"), unique("pg_flushes"));
    let _cleanup = Cleanup {
        pipeline: p.clone(),
        table: Some(table.clone()),
    };
    let (mut sink, mut committer) = open(&p, &postgres_settings(&table), 1).await.unwrap();
    // Enough keys to be staged before the barrier; then later writes of some of them.
    let first: Vec<String> = (0..FLUSH_ROWS)
        .map(|i| format!(r#"{{"symbol":"k{i}","price":1,"qty":{i}}}"#))
        .collect();
    let records: Vec<Rec> = first.iter().map(|v| (v.as_str(), None, false)).collect();
    write(&mut sink, &records).await;
    assert_eq!(staged(&p), FLUSH_ROWS as u64);
    let later: Vec<String> = (0..100)
        .map(|i| format!(r#"{{"symbol":"k{i}","price":2,"qty":{i}}}"#))
        .chain((100..200).map(|i| format!(r#"{{"symbol":"k{i}"}}"#)))
        .collect();
    let records: Vec<Rec> = later
        .iter()
        .enumerate()
        .map(|(i, v)| (v.as_str(), None, i >= 100))
        .collect();
    write(&mut sink, &records).await;
    let manifest = pre_commit(&mut sink, &p, 1).await;
    assert_eq!(staged(&p), FLUSH_ROWS as u64 + 200);
    commit(&mut committer, &manifest).await;
    assert_eq!(
        psql(&format!(
            "SELECT count(*), count(*) FILTER (WHERE price = 2), \
                    count(*) FILTER (WHERE qty BETWEEN 100 AND 199) FROM {table}"
        )),
        format!("{}|100|0", FLUSH_ROWS - 100)
    );
}

#[tokio::test]
async fn postgres_commits_made_again_change_nothing_even_after_a_restart() {
    let (p, table) = (unique("pg_again"), unique("pg_again"));
    let _cleanup = Cleanup {
        pipeline: p.clone(),
        table: Some(table.clone()),
    };
    let settings = postgres_settings(&table);
    let (mut sink, mut committer) = open(&p, &settings, 1).await.unwrap();
    write(
        &mut sink,
        &[
            (r#"{"symbol":"A","price":1,"qty":1}"#, None, false),
            (r#"{"symbol":"B","price":1,"qty":1}"#, None, false),
        ],
    )
    .await;
    let one = pre_commit(&mut sink, &p, 1).await;
    commit(&mut committer, &one).await;
    write(
        &mut sink,
        &[
            (r#"{"symbol":"A","price":2,"qty":2}"#, None, false),
            (r#"{"symbol":"B"}"#, None, true),
        ],
    )
    .await;
    let two = pre_commit(&mut sink, &p, 2).await;
    commit(&mut committer, &two).await;
    let after_two = rows(&table);
    assert_eq!(after_two, "A|2|2");
    // The same checkpoint again, and an older one: nothing changes.
    commit(&mut committer, &two).await;
    commit(&mut committer, &one).await;
    assert_eq!(rows(&table), after_two);

    // Checkpoint 3 is pre-committed and its manifest stored, then the process dies.
    write(
        &mut sink,
        &[(r#"{"symbol":"C","price":3,"qty":3}"#, None, false)],
    )
    .await;
    let three = pre_commit(&mut sink, &p, 3).await;
    drop((sink, committer));
    // Recovery, as the runtime does it: a new committer repeats the newest manifest's commit
    // and cleans; repeating it once more is a no-op.
    let (_sink, mut committer) = open(&p, &settings, 4).await.unwrap();
    commit(&mut committer, &three).await;
    assert_eq!(committer.clean(&p, 3).await.unwrap(), 0);
    commit(&mut committer, &three).await;
    commit(&mut committer, &two).await;
    assert_eq!(rows(&table), "A|2|2\nC|3|3");
    assert_eq!(applied(&p), "3");
    assert_eq!(staged(&p), 0);
}

#[tokio::test]
async fn postgres_staged_rows_without_a_manifest_stay_invisible_and_are_cleaned() {
    let (p, table) = (unique("pg_clean"), unique("pg_clean"));
    let _cleanup = Cleanup {
        pipeline: p.clone(),
        table: Some(table.clone()),
    };
    let settings = postgres_settings(&table);
    let (mut sink, mut committer) = open(&p, &settings, 1).await.unwrap();
    write(
        &mut sink,
        &[(r#"{"symbol":"A","price":1,"qty":1}"#, None, false)],
    )
    .await;
    let one = pre_commit(&mut sink, &p, 1).await;
    commit(&mut committer, &one).await;
    // Checkpoint 2 is pre-committed, but the process dies before its manifest is stored.
    write(
        &mut sink,
        &[
            (r#"{"symbol":"A","price":5,"qty":5}"#, None, false),
            (r#"{"symbol":"B","price":5,"qty":5}"#, None, false),
        ],
    )
    .await;
    sink.pre_commit(2).await.unwrap();
    drop((sink, committer));
    assert_eq!(rows(&table), "A|1|1");
    assert_eq!(staged(&p), 2);

    // The restart resumes after checkpoint 1: its staged rows are deleted, and checkpoint 2 is
    // written again.
    let (mut sink, mut committer) = open(&p, &settings, 2).await.unwrap();
    assert_eq!(committer.clean(&p, 1).await.unwrap(), 2);
    assert_eq!(staged(&p), 0);
    assert_eq!(rows(&table), "A|1|1");
    write(
        &mut sink,
        &[(r#"{"symbol":"A","price":6,"qty":6}"#, None, false)],
    )
    .await;
    let two = pre_commit(&mut sink, &p, 2).await;
    commit(&mut committer, &two).await;
    assert_eq!(rows(&table), "A|6|6");
}

#[tokio::test]
async fn postgres_sends_records_it_cannot_write_to_the_dead_letters() {
    let (p, table) = (unique("pg_reject"), unique("pg_reject"));
    let _cleanup = Cleanup {
        pipeline: p.clone(),
        table: Some(table.clone()),
    };
    let (mut sink, mut committer) = open(&p, &postgres_settings(&table), 1).await.unwrap();
    let rejected = write(
        &mut sink,
        &[
            (r#"{"symbol":"A","price":1,"qty":1}"#, None, false),
            ("not json", None, false),
            (r#"{"price":1,"qty":1}"#, None, false),
            (r#"{"symbol":"B","price":"abc","qty":1}"#, None, false),
            (r#"{"symbol":"C\u0000D","price":1,"qty":1}"#, None, false),
            (r#"{"price":1}"#, None, true),
            (r#"{"symbol":"E","price":2,"qty":2}"#, None, false),
        ],
    )
    .await;
    let indices: Vec<usize> = rejected.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, [1, 2, 3, 4, 5], "{rejected:?}");
    let reason = |i: usize| &rejected.iter().find(|(j, _)| *j == i).unwrap().1;
    assert!(
        reason(1).contains("does not fit the schema"),
        "{rejected:?}"
    );
    assert!(
        reason(2).contains("key column `symbol` is missing"),
        "{rejected:?}"
    );
    assert!(reason(4).contains("NUL"), "{rejected:?}");
    assert!(
        reason(5).contains("key column `symbol` is missing"),
        "{rejected:?}"
    );
    let manifest = pre_commit(&mut sink, &p, 1).await;
    commit(&mut committer, &manifest).await;
    assert_eq!(rows(&table), "A|1|1\nE|2|2");
}

#[tokio::test]
async fn postgres_writes_every_column_type_as_postgres_reads_it() {
    let (p, table) = (unique("pg_types"), unique("pg_types"));
    let _cleanup = Cleanup {
        pipeline: p.clone(),
        table: Some(table.clone()),
    };
    let settings = format!(
        "    postgres:
      url: {}
      table: {table}
      key: [id, name]
      schema:
        - {{ name: id, type: int32 }}
        - {{ name: name, type: string }}
        - {{ name: big, type: int64 }}
        - {{ name: f32, type: float32 }}
        - {{ name: f64, type: float64, from: price }}
        - {{ name: flag, type: boolean }}
        - {{ name: ts, type: timestamp_ms }}
        - {{ name: tus, type: timestamp_us }}
        - {{ name: day, type: date }}
        - {{ name: raw, type: binary, meta: value }}
        - {{ name: topic, type: string, meta: topic }}
        - {{ name: record_key, type: string, meta: key }}",
        postgres_url()
    );
    let (mut sink, mut committer) = open(&p, &settings, 1).await.unwrap();
    let value = r#"{"id":7,"name":"Zoë \"q\"","big":9007199254740993,"f32":0.1,"price":"1e-7","flag":true,"ts":1700000000123,"tus":"2023-11-14T22:13:20.123456Z","day":"2023-11-14"}"#;
    let rejected = write(&mut sink, &[(value, Some("k1"), false)]).await;
    assert!(rejected.is_empty(), "{rejected:?}");
    let manifest = pre_commit(&mut sink, &p, 1).await;
    commit(&mut committer, &manifest).await;
    assert_eq!(
        psql(&format!(
            "SELECT id, name, big, f32, f64, flag, ts, tus, day, convert_from(raw, 'UTF8') = '{}', \
                    topic, record_key FROM {table}",
            value.replace('\'', "''")
        )),
        "7|Zoë \"q\"|9007199254740993|0.1|1e-07|t|2023-11-14 22:13:20.123+00|2023-11-14 22:13:20.123456+00|2023-11-14|t|trades|k1"
    );
    assert_eq!(
        psql(&format!(
            "SELECT string_agg(column_name || ':' || data_type, ',' ORDER BY ordinal_position) \
             FROM information_schema.columns WHERE table_name = '{table}'"
        )),
        "id:integer,name:text,big:bigint,f32:real,f64:double precision,flag:boolean,\
         ts:timestamp with time zone,tus:timestamp with time zone,day:date,raw:bytea,\
         topic:text,record_key:text"
    );
}

#[tokio::test]
async fn postgres_refuses_a_table_that_does_not_fit() {
    let p = unique("pg_fit");
    let tables: Vec<String> = (0..4).map(|_| unique("pg_fit")).collect();
    let _cleanup: Vec<Cleanup> = tables
        .iter()
        .map(|t| Cleanup {
            pipeline: p.clone(),
            table: Some(t.clone()),
        })
        .collect();
    psql(&format!(
        "CREATE TABLE {} (symbol varchar(8) PRIMARY KEY, price text);
         CREATE TABLE {} (symbol text, price double precision, qty bigint);
         CREATE TABLE {} (symbol text PRIMARY KEY, price double precision NOT NULL, qty bigint, note text NOT NULL);
         CREATE TABLE {} (symbol varchar PRIMARY KEY, price double precision, qty bigint, note text DEFAULT 'n/a');",
        tables[0], tables[1], tables[2], tables[3]
    ));
    let error = |n: usize| {
        let settings = postgres_settings(&tables[n]);
        let p = p.clone();
        async move {
            match open(&p, &settings, 1).await {
                Ok(_) => panic!("table {n} was accepted"),
                Err(e) => e.to_string(),
            }
        }
    };
    let e = error(0).await;
    assert!(
        e.contains("column `symbol` is `character varying(8)`"),
        "{e}"
    );
    assert!(e.contains("column `price` is `text`"), "{e}");
    assert!(e.contains("no column `qty`"), "{e}");
    let e = error(1).await;
    assert!(
        e.contains("no primary key or unique index on exactly (symbol)"),
        "{e}"
    );
    let e = error(2).await;
    assert!(
        e.contains("column `note` is NOT NULL without a default"),
        "{e}"
    );
    assert!(
        e.contains("column `price` is NOT NULL, and the schema lets a record lack it"),
        "{e}"
    );
    // Extra columns with a default, and a varchar without a length for a string, are fine.
    let (mut sink, mut committer) = open(&p, &postgres_settings(&tables[3]), 1).await.unwrap();
    write(
        &mut sink,
        &[(r#"{"symbol":"A","price":1,"qty":1}"#, None, false)],
    )
    .await;
    let manifest = pre_commit(&mut sink, &p, 1).await;
    commit(&mut committer, &manifest).await;
    assert_eq!(
        psql(&format!("SELECT symbol, note FROM {}", tables[3])),
        "A|n/a"
    );
}

#[tokio::test]
async fn postgres_refuses_to_start_when_its_checkpoint_store_was_reset() {
    let (p, table) = (unique("pg_reset"), unique("pg_reset"));
    let _cleanup = Cleanup {
        pipeline: p.clone(),
        table: Some(table.clone()),
    };
    let settings = postgres_settings(&table);
    let (mut sink, mut committer) = open(&p, &settings, 5).await.unwrap();
    write(
        &mut sink,
        &[(r#"{"symbol":"A","price":1,"qty":1}"#, None, false)],
    )
    .await;
    let five = pre_commit(&mut sink, &p, 5).await;
    commit(&mut committer, &five).await;
    // No manifest any more (a new checkpoint store): checkpoint 1 would be skipped as applied.
    let e = committer.clean(&p, 0).await.unwrap_err().to_string();
    assert!(
        e.contains("has applied checkpoint 5") && e.contains("DELETE FROM"),
        "{e}"
    );
    assert_eq!(committer.clean(&p, 5).await.unwrap(), 0);
}

fn redis_settings(pipeline: &str, extra: &str) -> String {
    format!(
        "    redis:
      url: {}
      key: \"{pipeline}:{{symbol}}\"{extra}",
        redis_url()
    )
}

fn get(key: &str) -> String {
    redis_cli(&["GET", key])
}

#[tokio::test]
async fn redis_sets_the_last_value_per_key_and_deletes_at_commit() {
    let p = unique("redis_latest");
    let _cleanup = Cleanup {
        pipeline: p.clone(),
        table: None,
    };
    let (mut sink, mut committer) = open(&p, &redis_settings(&p, ""), 1).await.unwrap();
    let btc = r#"{"symbol":"BTC","price":3}"#;
    let rejected = write(
        &mut sink,
        &[
            (r#"{"symbol":"BTC","price":1}"#, None, false),
            (r#"{"symbol":"ETH","price":10}"#, None, false),
            (btc, None, false),
            (r#"{"symbol":"SOL","price":7}"#, None, false),
            (r#"{"symbol":"SOL"}"#, None, true),
        ],
    )
    .await;
    assert!(rejected.is_empty(), "{rejected:?}");
    let first = pre_commit(&mut sink, &p, 1).await;
    // Staged in a hash, not under the keys.
    assert_eq!(get(&format!("{p}:BTC")), "");
    assert_eq!(
        redis_cli(&["HLEN", &format!("weir:staging:{p}:out:1")]),
        "3"
    );
    commit(&mut committer, &first).await;
    // The value's bytes exactly as they came.
    assert_eq!(get(&format!("{p}:BTC")), btc);
    assert_eq!(get(&format!("{p}:ETH")), r#"{"symbol":"ETH","price":10}"#);
    assert_eq!(redis_cli(&["EXISTS", &format!("{p}:SOL")]), "0");
    assert_eq!(redis_cli(&["PTTL", &format!("{p}:BTC")]), "-1");
    assert_eq!(
        redis_cli(&["EXISTS", &format!("weir:staging:{p}:out:1")]),
        "0"
    );

    write(
        &mut sink,
        &[
            (r#"{"symbol":"ETH","price":11}"#, None, true),
            (r#"{"symbol":"BTC","price":4}"#, None, false),
        ],
    )
    .await;
    let second = pre_commit(&mut sink, &p, 2).await;
    commit(&mut committer, &second).await;
    assert_eq!(get(&format!("{p}:BTC")), r#"{"symbol":"BTC","price":4}"#);
    assert_eq!(redis_cli(&["EXISTS", &format!("{p}:ETH")]), "0");
    assert_eq!(get(&format!("weir:checkpoint:{p}:out")), "2");
}

#[tokio::test]
async fn redis_commits_made_again_change_nothing_even_after_a_restart() {
    let p = unique("redis_again");
    let _cleanup = Cleanup {
        pipeline: p.clone(),
        table: None,
    };
    let settings = redis_settings(&p, "");
    let (mut sink, mut committer) = open(&p, &settings, 1).await.unwrap();
    write(&mut sink, &[(r#"{"symbol":"A","v":1}"#, None, false)]).await;
    let one = pre_commit(&mut sink, &p, 1).await;
    commit(&mut committer, &one).await;
    write(&mut sink, &[(r#"{"symbol":"A","v":2}"#, None, false)]).await;
    let two = pre_commit(&mut sink, &p, 2).await;
    commit(&mut committer, &two).await;
    // Someone else changes the key between checkpoints: a repeated commit must not undo it.
    redis_cli(&["SET", &format!("{p}:A"), "changed"]);
    commit(&mut committer, &two).await;
    commit(&mut committer, &one).await;
    assert_eq!(get(&format!("{p}:A")), "changed");

    write(&mut sink, &[(r#"{"symbol":"B","v":3}"#, None, false)]).await;
    let three = pre_commit(&mut sink, &p, 3).await;
    drop((sink, committer));
    let (_sink, mut committer) = open(&p, &settings, 4).await.unwrap();
    commit(&mut committer, &three).await;
    assert_eq!(committer.clean(&p, 3).await.unwrap(), 0);
    commit(&mut committer, &three).await;
    assert_eq!(get(&format!("{p}:B")), r#"{"symbol":"B","v":3}"#);
    assert_eq!(get(&format!("{p}:A")), "changed");
    assert_eq!(get(&format!("weir:checkpoint:{p}:out")), "3");
}

#[tokio::test]
async fn redis_staged_values_without_a_manifest_stay_invisible_and_are_cleaned() {
    let p = unique("redis_clean");
    let _cleanup = Cleanup {
        pipeline: p.clone(),
        table: None,
    };
    let settings = redis_settings(&p, "");
    let (mut sink, mut committer) = open(&p, &settings, 1).await.unwrap();
    write(&mut sink, &[(r#"{"symbol":"A","v":1}"#, None, false)]).await;
    let one = pre_commit(&mut sink, &p, 1).await;
    commit(&mut committer, &one).await;
    write(&mut sink, &[(r#"{"symbol":"A","v":5}"#, None, false)]).await;
    sink.pre_commit(2).await.unwrap();
    drop((sink, committer));
    assert_eq!(get(&format!("{p}:A")), r#"{"symbol":"A","v":1}"#);
    let staging = format!("weir:staging:{p}:out:2");
    assert_eq!(redis_cli(&["EXISTS", &staging]), "1");

    let (mut sink, mut committer) = open(&p, &settings, 2).await.unwrap();
    assert_eq!(committer.clean(&p, 1).await.unwrap(), 1);
    assert_eq!(redis_cli(&["EXISTS", &staging]), "0");
    assert_eq!(get(&format!("{p}:A")), r#"{"symbol":"A","v":1}"#);
    write(&mut sink, &[(r#"{"symbol":"A","v":6}"#, None, false)]).await;
    let two = pre_commit(&mut sink, &p, 2).await;
    commit(&mut committer, &two).await;
    assert_eq!(get(&format!("{p}:A")), r#"{"symbol":"A","v":6}"#);
}

#[tokio::test]
async fn redis_sends_records_it_cannot_key_to_the_dead_letters() {
    let p = unique("redis_reject");
    let _cleanup = Cleanup {
        pipeline: p.clone(),
        table: None,
    };
    let settings = format!(
        "    redis:
      url: {}
      key: \"{p}:{{symbol}}:{{key}}\"",
        redis_url()
    );
    let (mut sink, mut committer) = open(&p, &settings, 1).await.unwrap();
    let rejected = write(
        &mut sink,
        &[
            (r#"{"symbol":"A"}"#, Some("k"), false),
            ("not json", Some("k"), false),
            (r#"{"price":1}"#, Some("k"), false),
            (r#"{"symbol":null}"#, Some("k"), false),
            (r#"{"symbol":"B"}"#, None, false),
            (r#"{"symbol":"C"}"#, Some("k"), true),
        ],
    )
    .await;
    let indices: Vec<usize> = rejected.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, [1, 2, 3, 4], "{rejected:?}");
    assert!(rejected[0].1.contains("not a JSON object"), "{rejected:?}");
    assert!(rejected[1].1.contains("field `symbol`"), "{rejected:?}");
    assert!(rejected[3].1.contains("no key"), "{rejected:?}");
    let manifest = pre_commit(&mut sink, &p, 1).await;
    commit(&mut committer, &manifest).await;
    assert_eq!(get(&format!("{p}:A:k")), r#"{"symbol":"A"}"#);
}

#[tokio::test]
async fn redis_stores_a_value_template_with_an_expiry() {
    let p = unique("redis_ttl");
    let _cleanup = Cleanup {
        pipeline: p.clone(),
        table: None,
    };
    let settings = redis_settings(&p, "\n      value: \"{p}@{n}\"\n      ttl: 1h");
    let (mut sink, mut committer) = open(&p, &settings, 1).await.unwrap();
    write(
        &mut sink,
        &[(r#"{"symbol":"BTC","p":"64000.50","n":3}"#, None, false)],
    )
    .await;
    let manifest = pre_commit(&mut sink, &p, 1).await;
    commit(&mut committer, &manifest).await;
    assert_eq!(get(&format!("{p}:BTC")), "64000.50@3");
    let ttl: i64 = redis_cli(&["PTTL", &format!("{p}:BTC")]).parse().unwrap();
    assert!((3_500_000..=3_600_000).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn redis_refuses_to_start_when_its_checkpoint_store_was_reset() {
    let p = unique("redis_reset");
    let _cleanup = Cleanup {
        pipeline: p.clone(),
        table: None,
    };
    let (mut sink, mut committer) = open(&p, &redis_settings(&p, ""), 5).await.unwrap();
    write(&mut sink, &[(r#"{"symbol":"A"}"#, None, false)]).await;
    let five = pre_commit(&mut sink, &p, 5).await;
    commit(&mut committer, &five).await;
    let e = committer.clean(&p, 0).await.unwrap_err().to_string();
    assert!(
        e.contains("checkpoint 5 is applied") && e.contains("DEL weir:checkpoint"),
        "{e}"
    );
}

/// Starts `weir run FILE` stopped at `pause` (`PHASE:N`); returns once it has stopped there.
fn start_paused(file: &Path, pause: &str) -> std::process::Child {
    let mut weir = support::Weir::start(file, None, Some(pause));
    weir.paused(pause);
    weir.into_child()
}

/// Generator → Postgres and Redis, killed with SIGKILL right after the manifest of checkpoint 3
/// is stored (no sink committed it), then run again to the end: the table and the keys hold
/// the last trade of every symbol, as `weir gen` makes the same trades.
#[test]
fn a_generator_pipeline_killed_after_a_manifest_ends_with_the_last_trade_per_symbol() {
    let dir = tempfile::tempdir().unwrap();
    let (p, table) = (unique("pipe"), unique("pipe"));
    let _pg = Cleanup {
        pipeline: p.clone(),
        table: Some(table.clone()),
    };
    let _redis = Cleanup {
        pipeline: p.clone(),
        table: None,
    };
    let generator = "count: 3000, rate_per_sec: 3000, events_per_sec: 1000, seed: 7, start_time_ms: 1700000000000, batch_size: 50";
    let file = support::pipeline_file(
        dir.path(),
        "latest.yaml",
        &format!(
            "version: 1
name: {p}
source:
  generator: {{ {generator} }}
sinks:
  - name: table
    input: source
    postgres:
      url: {pg}
      table: {table}
      key: [symbol]
      schema:
        - {{ name: symbol, type: string, from: s }}
        - {{ name: trade_id, type: int64, from: t }}
        - {{ name: price, type: float64, from: p }}
        - {{ name: trade_time, type: timestamp_ms, from: T }}
  - name: latest
    input: source
    redis:
      url: {redis}
      key: \"{p}:{{s}}\"
  - name: dead
    input: dlq
    jsonl: {{ path: dead.jsonl }}
checkpoint:
  interval: 100ms
  store: {{out}}/store
",
            pg = postgres_url(),
            redis = redis_url(),
        ),
    );
    let mut child = start_paused(&file, "manifest:3");
    // Checkpoint 3 is in its manifest and staged, and not applied.
    let progress = psql(&format!(
        "SELECT checkpoint FROM weir_sink_checkpoints WHERE pipeline = '{p}' AND sink = 'table'"
    ));
    assert_eq!(progress, "2");
    assert_ne!(
        psql(&format!(
            "SELECT count(*) FROM weir_staging WHERE pipeline = '{p}' AND checkpoint = 3"
        )),
        "0"
    );
    assert_eq!(get(&format!("weir:checkpoint:{p}:latest")), "2");
    child.kill().unwrap();
    child.wait().unwrap();

    support::run_pipeline(&file);

    // The same trades, from `weir gen`: the last one of each symbol.
    let trades = dir.path().join("trades.jsonl");
    let gen_status = support::weir()
        .args([
            "gen",
            "--count",
            "3000",
            "--seed",
            "7",
            "--events-per-sec",
            "1000",
            "--start-time-ms",
            "1700000000000",
            "--out",
        ])
        .arg(&trades)
        .status()
        .unwrap();
    assert!(gen_status.success());
    let mut last: BTreeMap<String, (String, Value)> = BTreeMap::new();
    for line in std::fs::read_to_string(&trades).unwrap().lines() {
        let trade: Value = serde_json::from_str(line).unwrap();
        let symbol = trade["s"].as_str().unwrap().to_string();
        last.insert(symbol, (line.to_string(), trade));
    }
    assert!(last.len() > 1);
    let expected: Vec<String> = last
        .iter()
        .map(|(s, (_, t))| {
            let price: f64 = t["p"].as_str().unwrap().parse().unwrap();
            format!("{s}|{}|{price}", t["t"])
        })
        .collect();
    assert_eq!(
        psql(&format!(
            "SELECT symbol, trade_id, price FROM {table} ORDER BY symbol"
        )),
        expected.join("\n")
    );
    for (symbol, (line, _)) in &last {
        assert_eq!(&get(&format!("{p}:{symbol}")), line, "{symbol}");
    }
    // Everything staged was applied or cleaned; both sinks applied the same last checkpoint.
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM weir_staging WHERE pipeline = '{p}'"
        )),
        "0"
    );
    let applied = psql(&format!(
        "SELECT checkpoint FROM weir_sink_checkpoints WHERE pipeline = '{p}' AND sink = 'table'"
    ));
    assert!(applied.parse::<u64>().unwrap() > 3, "{applied}");
    assert_eq!(get(&format!("weir:checkpoint:{p}:latest")), applied);
    assert_eq!(
        redis_cli(&["--scan", "--pattern", &format!("weir:staging:{p}:*")]),
        ""
    );
    let dead = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap_or_default();
    assert!(dead.is_empty(), "{dead}");
}
