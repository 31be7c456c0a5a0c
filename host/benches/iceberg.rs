//! Benchmark: the generator → an Iceberg bronze table (raw value bytes, topic, partition, offset,
//! timestamp; SQLite catalog, local warehouse, one snapshot per checkpoint), at the maximum rate
//! and at a fixed 10,000 records/s, beside the same rows written straight to Parquet files with
//! the `parquet` crate (what writing the bytes costs without Weir or Iceberg), in the same run.
//!
//! `cargo bench --bench iceberg` prints, per mode: records/s, p50/p99/max visible latency (a
//! record's read time → the commit of the snapshot that holds it, from the manifests' barrier
//! times and the snapshots' commit times), bytes committed, checkpoints, and peak RSS (each mode
//! in a child process of its own). `WEIR_BENCH_RECORDS` (default 2,000,000) sets the maximum-rate
//! run's size, `WEIR_BENCH_SECONDS` (default 30) the fixed-rate run's length, and
//! `WEIR_BENCH_INTERVAL` (default `2s`) the checkpoint interval. The commit-latency modes
//! (`commits-weir`, `commits-crate`) make `WEIR_BENCH_COMMITS` (default 1,000) commits of 10 rows
//! into one table; `WEIR_BENCH_KEEP_SNAPSHOTS` overrides the sink's `keep_snapshots`.
#![allow(missing_docs)]

mod common;

use common::peak_rss_mib;
use std::{path::Path, sync::Arc, time::Instant};

use weir::{
    checkpoint::Manifest,
    pipeline,
    plugin::PluginHost,
    runtime::{self, RunOptions, progress::Metrics},
};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const COLUMNS: &str = "
        - { name: topic, type: string, meta: topic }
        - { name: partition, type: int32, meta: partition }
        - { name: offset, type: int64, meta: offset }
        - { name: kafka_ts, type: timestamp_ms, meta: timestamp }
        - { name: raw_bytes, type: binary, meta: value }";

/// The bronze pipeline: `count` generated trades (at `rate` per second, if set), or with
/// `kafka` (a bootstrap address) the topic `bench.trades` read by the Kafka source.
fn bronze_yaml(count: u64, rate: Option<u64>, interval: &str, kafka: Option<&str>) -> String {
    let rate = rate.map_or(String::new(), |r| {
        format!("\n    rate_per_sec: {r}\n    events_per_sec: {r}")
    });
    let source = match kafka {
        Some(bootstrap) => format!(
            "  kafka:\n    bootstrap_servers: {bootstrap}\n    topics: [bench.trades]\n    group_id: iceberg-bench\n    properties:\n      session.timeout.ms: \"2000\"\n      heartbeat.interval.ms: \"500\""
        ),
        None => format!("  generator:\n    count: {count}\n    format: binance\n    seed: 7{rate}"),
    };
    format!(
        "version: 1
name: iceberg-bench
source:
{source}
sinks:
  - name: lake
    input: source
    iceberg:
      catalog: {{ type: sql, uri: \"sqlite:catalog.db\", warehouse: warehouse }}
      table: bench.bronze
      schema:{COLUMNS}
checkpoint:
  interval: {interval}
  retain: 100000
"
    )
}

/// Runs the pipeline in `dir` to its end; returns (records/s, latency percentiles, bytes,
/// checkpoints).
fn weir(dir: &Path, count: u64, rate: Option<u64>, kafka: Option<&str>) -> String {
    let interval = std::env::var("WEIR_BENCH_INTERVAL").unwrap_or_else(|_| "2s".into());
    let file = dir.join("bench.yaml");
    std::fs::write(&file, bronze_yaml(count, rate, &interval, kafka)).unwrap();
    let host = PluginHost::new(PluginHost::default_cache_dir()).unwrap();
    let pipeline = pipeline::load(&file, &host).unwrap_or_else(|e| panic!("{e}"));
    let metrics = Arc::new(Metrics::for_pipeline(&pipeline));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let started_ms = chrono::Utc::now().timestamp_millis();
    // A Kafka source never ends: the run stops once every record is written.
    let watch = metrics.clone();
    let done = async move {
        while watch.records_written() < count {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    let summary = rt
        .block_on(runtime::run(
            pipeline,
            done,
            RunOptions {
                progress: false,
                metrics: Some(metrics),
                control: None,
            },
        ))
        .unwrap();
    let took = started.elapsed();
    let snapshots = rt.block_on(snapshot_times(dir));
    let latencies = visible_latencies(dir, started_ms, &snapshots);
    format!(
        "{:.0} {:.0} {:.0} {:.0} {} {} {:.1}",
        summary.records_in as f64 / took.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        summary.committed.1,
        summary.checkpoints,
        peak_rss_mib()
    )
}

/// The SQLite catalog of a benchmark run in `dir`, read independently of Weir's sink.
async fn local_catalog(dir: &Path) -> iceberg_catalog_sql::SqlCatalog {
    use iceberg::CatalogBuilder;
    iceberg_catalog_sql::SqlCatalogBuilder::default()
        .with_storage_factory(Arc::new(iceberg::io::LocalFsStorageFactory))
        .load(
            "weir",
            [
                (
                    "uri".to_string(),
                    format!("sqlite:{}?mode=rwc", dir.join("catalog.db").display()),
                ),
                (
                    "warehouse".to_string(),
                    format!("file://{}", dir.join("warehouse").display()),
                ),
                ("sql_bind_style".to_string(), "QMark".to_string()),
            ]
            .into(),
        )
        .await
        .unwrap()
}

/// (records committed so far, commit time in ms) of every snapshot, oldest first.
async fn snapshot_times(dir: &Path) -> Vec<(i64, i64)> {
    use iceberg::{Catalog, TableIdent};
    let catalog = local_catalog(dir).await;
    let ident = TableIdent::from_strs(["bench", "bronze"]).unwrap();
    let table = catalog.load_table(&ident).await.unwrap();
    let mut times: Vec<(i64, i64)> = table
        .metadata()
        .snapshots()
        .filter_map(|s| {
            let offsets = s.summary().additional_properties.get("weir.offsets")?;
            let n: i64 = offsets
                .split(',')
                .filter_map(|o| o.rsplit(':').next()?.parse::<i64>().ok())
                .sum();
            Some((n, s.timestamp_ms()))
        })
        .collect();
    times.sort_unstable();
    times
}

/// Each record's visible latency, in ms: the commit time of the first snapshot holding it, less
/// the time it was read (interpolated between the barriers around it, from the manifests).
fn visible_latencies(dir: &Path, started_ms: i64, snapshots: &[(i64, i64)]) -> Vec<(f64, u64)> {
    let folder = dir.join(".weir/checkpoints/iceberg-bench");
    let mut barriers: Vec<(i64, i64)> = vec![(0, started_ms)];
    for entry in std::fs::read_dir(folder).unwrap() {
        let manifest: Manifest =
            serde_json::from_slice(&std::fs::read(entry.unwrap().path()).unwrap()).unwrap();
        let n: i64 = manifest.offsets.iter().map(|o| o.offset).sum();
        barriers.push((n, manifest.started_ms));
    }
    barriers.sort_unstable();
    // Weighted samples: (latency of a block of records, how many records).
    let mut samples = Vec::new();
    for window in barriers.windows(2) {
        let ((from, t0), (to, t1)) = (window[0], window[1]);
        let Some(&(_, visible)) = snapshots.iter().find(|(n, _)| *n >= to) else {
            continue;
        };
        const STEPS: i64 = 20;
        let records = (to - from).max(0);
        for step in 0..STEPS {
            let read = t0 as f64 + (t1 - t0) as f64 * (step as f64 + 0.5) / STEPS as f64;
            samples.push((visible as f64 - read, (records / STEPS) as u64));
        }
    }
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    samples
}

fn percentile(samples: &[(f64, u64)], p: f64) -> f64 {
    let total: u64 = samples.iter().map(|s| s.1).sum();
    let want = (total as f64 * p).ceil() as u64;
    let mut seen = 0;
    for (latency, n) in samples {
        seen += n;
        if seen >= want.max(1) {
            return *latency;
        }
    }
    samples.last().map_or(f64::NAN, |s| s.0)
}

/// The same rows straight into Parquet files (one per 1,000,000 rows), no Weir, no Iceberg:
/// generated with the same generator, columns built the same way.
fn native(dir: &Path, count: u64) -> String {
    use arrow_array::{
        BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    };
    use parquet::{
        arrow::ArrowWriter,
        basic::{Compression, ZstdLevel},
        file::properties::WriterProperties,
    };
    let spec = weir::datagen::spec(
        weir::pipeline::spec::GeneratorFormat::Binance,
        Some(count),
        None,
        7,
        None,
        None,
        None,
    );
    let mut generator = weir::sources::generator::Generator::new(&spec, 0);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap()))
        .set_max_row_group_row_count(Some(128 * 1024))
        .build();
    let started = Instant::now();
    let mut written = 0u64;
    let mut bytes = 0u64;
    let mut file_no = 0;
    let mut writer: Option<ArrowWriter<std::fs::File>> = None;
    let mut in_file = 0u64;
    loop {
        let mut batch = weir::record::Batch::with_capacity("generator", 0, 1024, 1024 * 200);
        let n = generator.fill(&mut batch, 1024);
        if n == 0 {
            break;
        }
        let rows = RecordBatch::try_from_iter([
            (
                "topic",
                Arc::new(StringArray::from_iter_values(
                    batch.records.iter().map(|_| batch.topic.as_str()),
                )) as _,
            ),
            (
                "partition",
                Arc::new(Int32Array::from_iter_values(
                    batch.records.iter().map(|_| batch.partition),
                )) as _,
            ),
            (
                "offset",
                Arc::new(Int64Array::from_iter_values(
                    batch.records.iter().map(|r| r.offset),
                )) as _,
            ),
            (
                "kafka_ts",
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        batch.records.iter().map(|r| r.timestamp_ms * 1000),
                    )
                    .with_timezone("+00:00"),
                ) as _,
            ),
            (
                "raw_bytes",
                Arc::new(BinaryArray::from_iter_values(
                    (0..batch.len()).map(|i| batch.value(i)),
                )) as _,
            ),
        ])
        .unwrap();
        let w = writer.get_or_insert_with(|| {
            file_no += 1;
            let file =
                std::fs::File::create(dir.join(format!("native-{file_no}.parquet"))).unwrap();
            ArrowWriter::try_new(file, rows.schema(), Some(props.clone())).unwrap()
        });
        w.write(&rows).unwrap();
        written += n as u64;
        in_file += n as u64;
        if in_file >= 1_000_000 {
            writer.take().unwrap().close().unwrap();
            in_file = 0;
        }
    }
    if let Some(w) = writer {
        w.close().unwrap();
    }
    for entry in std::fs::read_dir(dir).unwrap() {
        bytes += entry.unwrap().metadata().unwrap().len();
    }
    let took = started.elapsed();
    format!(
        "{:.0} NaN NaN NaN {bytes} 0 {:.1}",
        written as f64 / took.as_secs_f64(),
        peak_rss_mib()
    )
}

/// Commit latency as the table ages: `total` checkpoints of 10 rows each into one table, each
/// committed the way Weir does (`weir`: the checkpoint id as the idempotency key, snapshots past
/// 100 expired) or as the crate does by default (`crate`: its duplicate-file check, no expiry).
/// Prints `snapshots median_ms` at 10, 100 and 1,000 (median of the 10 commits up to there).
fn commits(dir: &Path, total: u64, how: &str) -> String {
    use weir::{
        checkpoint::Offset,
        sinks::{OpenContext, Sink},
    };
    let file = dir.join("commits.yaml");
    std::fs::write(
        &file,
        "version: 1
name: commits
source:
  generator: { count: 1 }
sinks:
  - name: lake
    input: source
    iceberg:
      catalog: { type: sql, uri: \"sqlite:catalog.db\", warehouse: warehouse }
      table: bench.commits
KEEP      schema:
        - { name: offset, type: int64, meta: offset }
        - { name: raw_bytes, type: binary, meta: value }
"
        .replace(
            "KEEP",
            &std::env::var("WEIR_BENCH_KEEP_SNAPSHOTS")
                .map(|n| format!("      keep_snapshots: {n}\n"))
                .unwrap_or_default(),
        ),
    )
    .unwrap();
    let host = PluginHost::new(PluginHost::default_cache_dir()).unwrap();
    let pipeline = pipeline::load(&file, &host).unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cx = OpenContext {
            dir,
            pipeline: "commits",
            run: "bench",
            epoch: 1,
            s3: &pipeline.s3,
        };
        let (mut sink, committer) = Sink::open(&pipeline.sinks[0].kind, &cx).await.unwrap();
        let mut committer = committer.unwrap();
        let mut times = Vec::new();
        for id in 1..=total {
            let mut batch = weir::record::Batch::with_capacity("t", 0, 10, 1000);
            for i in 0..10 {
                batch.push(None, b"{\"price\": 1.5}", 0, (id * 10 + i) as i64, &[]);
            }
            sink.write((&batch).into()).await.unwrap();
            let pending = sink.pre_commit(id).await.unwrap();
            let manifest = Manifest {
                pipeline: "commits".into(),
                checkpoint: id,
                started_ms: 0,
                precommit_ms: 0,
                offsets: vec![Offset {
                    topic: "t".into(),
                    partition: 0,
                    offset: id as i64 * 10,
                }],
                sinks: Default::default(),
                files: pending.files,
                bytes: pending.bytes,
                state: None,
                event_time: Vec::new(),
                plugins: Default::default(),
            };
            let commit = pending.commit.unwrap();
            let started = Instant::now();
            if how == "weir" {
                committer.commit(&manifest, &commit).await.unwrap();
            } else {
                crate_default_commit(dir, &commit).await;
            }
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        [10usize, 100, 1000]
            .iter()
            .filter(|&&n| n <= times.len())
            .map(|&n| {
                let mut window = times[n.saturating_sub(10)..n].to_vec();
                window.sort_by(|a, b| a.total_cmp(b));
                format!("{n} {:.1}", window[window.len() / 2])
            })
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// Appends the files of a pending commit with the crate's defaults (duplicate check on).
async fn crate_default_commit(dir: &Path, commit: &serde_json::Value) {
    use iceberg::{
        Catalog, TableIdent,
        transaction::{ApplyTransactionAction, Transaction},
    };
    let catalog = local_catalog(dir).await;
    let table = catalog
        .load_table(&TableIdent::from_strs(["bench", "commits"]).unwrap())
        .await
        .unwrap();
    let md = table.metadata();
    let files = commit["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            iceberg::spec::deserialize_data_file_from_json(
                f.as_str().unwrap(),
                commit["spec_id"].as_i64().unwrap() as i32,
                md.default_partition_type(),
                md.current_schema(),
            )
            .unwrap()
        })
        .collect::<Vec<_>>();
    let tx = Transaction::new(&table);
    let tx = tx.fast_append().add_data_files(files).apply(tx).unwrap();
    tx.commit(&catalog).await.unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let count: u64 = env_or("WEIR_BENCH_RECORDS", 2_000_000);
    let seconds: u64 = env_or("WEIR_BENCH_SECONDS", 30);
    if let [mode] = args.as_slice() {
        let dir = tempfile::tempdir().unwrap();
        let line = match mode.as_str() {
            "max" => weir(dir.path(), count, None, None),
            "fixed" => weir(dir.path(), 10_000 * seconds, Some(10_000), None),
            "native" => native(dir.path(), count),
            "commits-weir" => commits(dir.path(), env_or("WEIR_BENCH_COMMITS", 1000), "weir"),
            "commits-crate" => commits(dir.path(), env_or("WEIR_BENCH_COMMITS", 1000), "crate"),
            other => panic!("unknown mode {other}"),
        };
        println!("{line}");
        return;
    }
    if let [mode, bootstrap] = args.as_slice()
        && mode == "kafka"
    {
        let dir = tempfile::tempdir().unwrap();
        let n: u64 = env_or("WEIR_BENCH_KAFKA_RECORDS", 1_000_000);
        println!("{}", weir(dir.path(), n, None, Some(bootstrap)));
        return;
    }
    println!(
        "generator (Binance trades) → Iceberg bronze table (SQLite catalog, local warehouse, zstd), checkpoint every {}\n",
        std::env::var("WEIR_BENCH_INTERVAL").unwrap_or_else(|_| "2s".into())
    );
    println!(
        "{:<44} {:>10} {:>9} {:>9} {:>9} {:>10} {:>6} {:>9}",
        "run", "records/s", "p50 ms", "p99 ms", "max ms", "MB", "chk", "peak RSS"
    );
    println!("commit latency as the table ages (10 rows per checkpoint, one table):");
    for (mode, label) in [
        (
            "commits-crate",
            "crate defaults (duplicate check, no expiry)",
        ),
        (
            "commits-weir",
            "weir (checkpoint id as key, expiry, manifest merging)",
        ),
    ] {
        let figures: Vec<String> = common::child(&[mode])
            .chunks(2)
            .map(|c| format!("{} snapshots: {:.1} ms", c[0], c[1]))
            .collect();
        println!("  {label:<50} {}", figures.join(", "));
    }
    println!();
    for (mode, label) in [
        ("native", "native: same rows → parquet crate, no Iceberg"),
        ("max", "weir: generator → iceberg, maximum rate"),
        ("fixed", "weir: generator → iceberg, 10,000/s"),
    ] {
        print_row(label, &common::child(&[mode]));
    }
    // Broker → Iceberg: a topic of 3 partitions filled by `weir gen` (tansu, memory storage).
    let n: u64 = env_or("WEIR_BENCH_KAFKA_RECORDS", 1_000_000);
    let (pid, bootstrap) = common::start_broker();
    common::fill(&bootstrap, n);
    let figures = common::child(&["kafka", bootstrap.as_str()]);
    common::stop_broker(&pid);
    print_row(&format!("weir: tansu → iceberg ({n} records)"), &figures);
}

/// One row of the table: records/s, latency percentiles, MB, checkpoints, peak RSS.
fn print_row(label: &str, v: &[f64]) {
    println!(
        "{label:<44} {:>10.0} {:>9.0} {:>9.0} {:>9.0} {:>10.1} {:>6.0} {:>5.0} MiB",
        v[0],
        v[1],
        v[2],
        v[3],
        v[4] / 1e6,
        v[5],
        v[6]
    );
}
