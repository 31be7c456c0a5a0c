//! End to end: the quick-start pipeline (generator → enrich in WebAssembly → Parquet) runs as
//! the `weir` binary, and DuckDB, reading the Parquet files on its own, finds every generated
//! trade exactly once with the enriched fields right.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn quickstart_writes_every_trade_once_with_enriched_fields() {
    support::plugin("enrich");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let quickstart = support::quickstart();
    let count: u64 = quickstart
        .lines()
        .find_map(|l| l.trim().strip_prefix("count: "))
        .and_then(|c| c.parse().ok())
        .expect("the quick start sets a count");

    // The quick start itself, with its output moved to a temporary folder.
    let pipeline = quickstart
        .replace("../plugins/dist", "{plugins}")
        .replace("../data/quickstart", "{out}");
    let file = support::pipeline_file(out, "quickstart.yaml", &pipeline);
    let started = now_ms();
    let stdout = support::run_pipeline(&file);
    let ended = now_ms();
    assert!(
        stdout.contains(&format!("{out}/trades", out = out.display())),
        "the summary says where the output is:\n{stdout}"
    );

    // The same generator settings, straight to JSON lines: what the Parquet files must hold.
    let source_part = &quickstart[..quickstart.find("\nstages:").unwrap()];
    let reference = format!(
        "{source_part}\nsinks:\n  - name: raw\n    input: source\n    jsonl:\n      path: {{out}}/generated.jsonl\n"
    );
    let file = support::pipeline_file(
        out,
        "reference.yaml",
        &reference.replace("name: quickstart", "name: reference"),
    );
    support::run_pipeline(&file);

    let parquet = format!(
        "read_parquet('{}/trades/**/*.parquet', hive_partitioning = true)",
        out.display()
    );
    let generated = format!("read_ndjson_objects('{}/generated.jsonl')", out.display());

    let totals = &support::duckdb(&format!(
        "SELECT count(*) AS n, count(DISTINCT trade_id) AS ids, min(trade_id) AS lo, max(trade_id) AS hi,
                count(DISTINCT (year, month, day, hour)) AS hours, min(year) AS year FROM {parquet}"
    ))[0];
    assert_eq!(totals["n"], count, "every trade, no more");
    assert_eq!(totals["ids"], count, "no trade twice");
    assert_eq!(totals["lo"], 1_000_000);
    assert_eq!(totals["hi"], 1_000_000 + count - 1);
    assert_eq!(
        totals["hours"], 1,
        "three minutes of trades land in one hour folder"
    );
    assert_eq!(totals["year"], 2026);

    // Field by field against the generated input; a full join also catches anything missing.
    let mismatches = &support::duckdb(&format!(
        "WITH g AS (
           SELECT json->>'s' AS s, (json->>'t')::BIGINT AS t, (json->>'p')::DOUBLE AS p, (json->>'q')::DOUBLE AS q,
                  (json->>'m')::BOOLEAN AS m, (json->>'T')::BIGINT AS tt, (json->>'E')::BIGINT AS et FROM {generated})
         SELECT count(*) AS bad FROM g FULL OUTER JOIN {parquet} w ON g.t = w.trade_id
         WHERE g.t IS NULL OR w.trade_id IS NULL
            OR w.symbol <> g.s OR w.price <> g.p OR w.quantity <> g.q OR w.buyer_is_maker <> g.m
            OR epoch_ms(w.trade_time) <> g.tt OR epoch_ms(w.event_time) <> g.et
            OR w.kafka_topic <> 'generator' OR w.kafka_partition <> 0
            OR w.kafka_offset <> g.t - 1000000 OR epoch_ms(w.kafka_timestamp) <> g.tt"
    ))[0];
    assert_eq!(
        mismatches["bad"], 0,
        "every field of every trade matches the generated input"
    );

    let ingested = &support::duckdb(&format!(
        "SELECT min(epoch_ms(ingestion_timestamp)) AS lo, max(epoch_ms(ingestion_timestamp)) AS hi FROM {parquet}"
    ))[0];
    let (lo, hi) = (
        ingested["lo"].as_i64().unwrap(),
        ingested["hi"].as_i64().unwrap(),
    );
    assert!(
        started <= lo && hi <= ended,
        "ingestion time {lo}..{hi} lies within the run {started}..{ended}"
    );

    let dead = std::fs::read_to_string(out.join("dead-letters.jsonl")).unwrap_or_default();
    assert_eq!(dead, "", "no dead letters");
}

/// The quick start with `enrich` written in each language (Rust, C, JavaScript, Python): DuckDB
/// reads back every language's Parquet files and finds the same rows as the Rust plugin's, field
/// for field (but the ingestion time, which is the wall clock of each run).
#[test]
fn quickstart_runs_enrich_in_every_language() {
    let dir = tempfile::tempdir().unwrap();
    let quickstart = support::quickstart()
        .replace("    count: 200000\n", "    count: 50000\n")
        .replace("../data/quickstart", "{out}");
    assert!(
        quickstart.contains("count: 50000"),
        "the quick start's count is on its own line"
    );
    let mut tables = Vec::new();
    for (name, memory_mib) in [
        ("enrich", 64),
        ("enrich-c", 64),
        ("enrich-js", 256),
        ("enrich-python", 256),
    ] {
        support::plugin(name);
        let out = dir.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        let pipeline = quickstart.replace(
            "    plugin: ../plugins/dist/enrich.wasm\n",
            &format!(
                "    plugin: {{plugins}}/{name}.wasm\n    limits: {{ memory_mib: {memory_mib} }}\n"
            ),
        );
        assert!(
            pipeline.contains(&format!("{name}.wasm")),
            "the plugin line was replaced"
        );
        let file = support::pipeline_file(&out, "quickstart.yaml", &pipeline);
        let stdout = support::run_pipeline(&file);
        assert!(stdout.contains("sink trades: 50,000 "), "{name}: {stdout}");
        let dead = std::fs::read_to_string(out.join("dead-letters.jsonl")).unwrap_or_default();
        assert_eq!(dead, "", "{name}: no dead letters");
        tables.push((
            name,
            format!(
                "read_parquet('{}/trades/**/*.parquet', hive_partitioning = true)",
                out.display()
            ),
        ));
    }
    let (_, rust) = &tables[0];
    for (name, table) in &tables[1..] {
        let compared = &support::duckdb(&format!(
            "SELECT count(*) AS rows, count(r.trade_id) AS in_rust, count(o.trade_id) AS in_other,
                    count(*) FILTER (WHERE r.symbol IS DISTINCT FROM o.symbol OR r.price IS DISTINCT FROM o.price
                       OR r.quantity IS DISTINCT FROM o.quantity OR r.buyer_is_maker IS DISTINCT FROM o.buyer_is_maker
                       OR r.trade_time IS DISTINCT FROM o.trade_time OR r.event_time IS DISTINCT FROM o.event_time
                       OR r.kafka_topic IS DISTINCT FROM o.kafka_topic OR r.kafka_partition IS DISTINCT FROM o.kafka_partition
                       OR r.kafka_offset IS DISTINCT FROM o.kafka_offset OR r.kafka_timestamp IS DISTINCT FROM o.kafka_timestamp
                       OR o.ingestion_timestamp IS NULL) AS differ
             FROM {rust} r FULL OUTER JOIN {table} o ON r.trade_id = o.trade_id"
        ))[0];
        assert_eq!(
            compared,
            &serde_json::json!({"rows": 50000, "in_rust": 50000, "in_other": 50000, "differ": 0}),
            "{name} wrote what the Rust plugin wrote"
        );
    }
}

/// Ctrl-C (SIGINT) stops an unbounded pipeline gracefully: the process exits 0, prints its
/// progress while running, and every record it reports written is in complete Parquet files.
#[test]
fn ctrl_c_finishes_what_is_in_flight() {
    support::plugin("enrich");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let quickstart = support::quickstart();
    let unbounded = quickstart
        .replace("    count: 200000\n", "    rate_per_sec: 20000\n")
        .replace("../plugins/dist", "{plugins}")
        .replace("../data/quickstart", "{out}");
    assert!(
        !unbounded.contains("count:"),
        "the quick start's count is on its own line"
    );
    let file = support::pipeline_file(out, "unbounded.yaml", &unbounded);
    let child = support::weir()
        .arg("run")
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let run = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        run.status
    );
    assert!(
        stderr.contains("s] generator "),
        "a progress line was printed:\n{stderr}"
    );

    let written: u64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("sink trades: "))
        .and_then(|rest| rest.split(' ').next())
        .map(|n| n.replace(',', "").parse().unwrap())
        .unwrap_or_else(|| panic!("summary names the trades sink:\n{stdout}"));
    assert!(written > 10_000, "about 2.5 s at 20,000/s: {written}");
    let parquet = format!("read_parquet('{}/trades/**/*.parquet')", out.display());
    let counted = &support::duckdb(&format!(
        "SELECT count(*) AS n, count(DISTINCT trade_id) AS ids, max(kafka_offset) AS hi FROM {parquet}"
    ))[0];
    assert_eq!(
        counted["n"], written,
        "every record reported written is in a finished file"
    );
    assert_eq!(counted["ids"], written);
    assert_eq!(counted["hi"], written - 1, "a prefix of the stream, no gap");
}

/// pipelines/quickstart-kafka.yaml: the same trades through an in-process Kafka cluster, read
/// as a consumer group into an Iceberg table (SQLite catalog, local warehouse); the run ends by
/// itself once it has read everything generated, and pyiceberg, reading the table on its own,
/// finds every trade once, with gapless offsets in each of the three partitions.
#[test]
fn the_embedded_kafka_quickstart_reads_every_trade_once() {
    support::plugin("enrich");
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(support::repo().join("pipelines/quickstart-kafka.yaml"))
        .unwrap()
        .replace("../plugins/dist", "{plugins}")
        .replace("../data/quickstart-kafka", "{out}");
    let file = support::pipeline_file(dir.path(), "quickstart-kafka.yaml", &text);
    let stdout = support::run_pipeline(&file);
    assert!(stdout.contains("read 200,000 records"), "{stdout}");
    assert!(
        stdout.contains("iceberg table quickstart.trades"),
        "{stdout}"
    );
    let rows: Vec<serde_json::Value> = support::iceberg_tool(
        None,
        &[
            "scan",
            "--catalog-type",
            "sql",
            "--uri",
            &format!("sqlite:{}/catalog.db", dir.path().display()),
            "--warehouse",
            &format!("file://{}/warehouse", dir.path().display()),
            "--table",
            "quickstart.trades",
            "--columns",
            "kafka_partition,kafka_offset,trade_id,kafka_topic,kafka_timestamp,trade_time",
        ],
    )
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    assert_eq!(rows.len(), 200_000);
    let mut per_partition: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    let mut ids = std::collections::BTreeSet::new();
    for r in &rows {
        per_partition
            .entry(r["kafka_partition"].as_i64().unwrap())
            .or_default()
            .push(r["kafka_offset"].as_i64().unwrap());
        assert!(ids.insert(r["trade_id"].as_i64().unwrap()), "{r}");
        assert_eq!(r["kafka_topic"], "binance.trades", "{r}");
        assert_eq!(r["kafka_timestamp"], r["trade_time"], "{r}");
    }
    assert_eq!(per_partition.len(), 3, "three partitions");
    for (p, mut offsets) in per_partition {
        offsets.sort_unstable();
        let n = offsets.len() as i64;
        assert_eq!(
            offsets,
            (0..n).collect::<Vec<_>>(),
            "partition {p} is gapless"
        );
    }
    assert_eq!(ids.first(), Some(&1_000_000));
    assert_eq!(ids.last(), Some(&1_199_999));
}
