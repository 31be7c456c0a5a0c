//! The pipeline file, as typed structs. The `///` on every field is the user documentation of
//! that option (`docs/pipeline.md` mirrors it). Every struct refuses unknown keys.
//!
//! Built-in sources and sinks are written with their type as the key, so that every option is
//! read where it stands and an error points at its own line:
//!
//! ```yaml
//! source:
//!   generator: { count: 1000 }
//! sinks:
//!   - name: out
//!     input: enrich
//!     jsonl: { path: out.jsonl }
//! ```

use std::fmt;

use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, Visitor},
};
use serde_saphyr::Spanned;

/// A whole pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Version of the file format. This build reads version `1`.
    pub version: Spanned<u32>,
    /// Name of the pipeline: letters, digits, `-` and `_`. It names output files and, later,
    /// checkpoints.
    pub name: Spanned<String>,
    /// Where records come from: exactly one source.
    pub source: Spanned<SourceSpec>,
    /// Transformation stages, applied in order: each stage reads the default output of the one
    /// before it (the first reads the source).
    #[serde(default)]
    pub stages: Vec<StageSpec>,
    /// Where records go. Each sink reads one output: `source`, a stage's name (its default
    /// output), `stage.output` (a named output), or `dlq` (every dead letter of the pipeline).
    pub sinks: Spanned<Vec<SinkSpec>>,
    /// Checkpoint settings.
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    /// Event time: how the watermark that closes windows is derived from the records'
    /// timestamps.
    #[serde(default)]
    pub event_time: EventTimeSpec,
    /// How to reach `s3://` locations (checkpoint store, Parquet folders, Iceberg warehouses).
    #[serde(default)]
    pub object_store: ObjectStoreSpec,
}

/// How to reach S3-compatible object storage. Each setting falls back to its usual environment
/// variable, so credentials need not be in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreSpec {
    /// Endpoint URL of an S3-compatible server (MinIO, SeaweedFS …); default
    /// `$AWS_ENDPOINT_URL`, else AWS.
    pub endpoint: Option<Spanned<String>>,
    /// Region (default `$AWS_REGION`, `$AWS_DEFAULT_REGION`, else `us-east-1`).
    pub region: Option<Spanned<String>>,
    /// Path-style requests (`http://host/bucket/key`); default `true` with an `endpoint`,
    /// `false` for AWS.
    pub path_style: Option<Spanned<bool>>,
    /// Allow plain HTTP (default: whether the endpoint starts with `http:`).
    pub allow_http: Option<Spanned<bool>>,
    /// Access key (default `$AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<Spanned<String>>,
    /// Secret key (default `$AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: Option<Spanned<String>>,
}

/// The built-in sources.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceSpec {
    /// Synthetic crypto trades, deterministic for a given seed.
    Generator(Box<GeneratorSpec>),
    /// A file of JSON lines (any text lines, in fact: each line is one record's value).
    File(FileSourceSpec),
    /// Topics of a Kafka cluster, read as a member of a consumer group.
    Kafka(Box<KafkaSourceSpec>),
}

/// Where a consumer group starts reading a partition it has no committed offset for.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest message still in the partition.
    #[default]
    Earliest,
    /// Only messages produced from now on.
    Latest,
}

/// How the Kafka source treats message values.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ValueFormat {
    /// Bytes as they are (for bronze tables that keep the raw value).
    #[default]
    Raw,
    /// Each value must be JSON; one that is not goes to the dead letters.
    Json,
    /// Avro, decoded into JSON with the schema of the `avro:` settings; a value that does not
    /// decode goes to the dead letters.
    Avro,
}

/// The in-process cluster of `bootstrap_servers: embedded`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedSpec {
    /// Partitions of the topic (default 3).
    #[serde(default = "default_partitions")]
    pub partitions: Spanned<i32>,
    /// What the generator writes into the topic: the `generator` source's settings.
    pub generate: GeneratorSpec,
}

/// How the Kafka source decodes Avro values.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvroSpec {
    /// An `.avsc` file, relative to the pipeline file: the schema values were written with, or,
    /// with a registry, the schema they are read as (schema resolution).
    pub schema: Option<Spanned<String>>,
    /// A schema registry (Confluent API): values are in the Confluent wire format and their
    /// writer schema is fetched by id from `REGISTRY/schemas/ids/ID`.
    pub registry_url: Option<Spanned<String>>,
    /// Values start with the Confluent header (a zero byte and a 4-byte schema id) even without
    /// a registry; the `.avsc` is then the writer schema whatever the id. Implied by
    /// `registry_url`.
    #[serde(default)]
    pub confluent_wire_format: bool,
}

/// Settings of the `kafka` source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceSpec {
    /// Brokers to bootstrap from: `host:port[,host:port…]`, or `embedded` for an in-process
    /// cluster filled by the generator (see `embedded`).
    pub bootstrap_servers: Spanned<String>,
    /// Topics to read.
    pub topics: Spanned<Vec<String>>,
    /// Consumer group: processes with the same group share the partitions.
    pub group_id: Spanned<String>,
    /// Where to start in a partition the group has no committed offset for: `earliest`
    /// (default) or `latest`.
    #[serde(default)]
    pub start_from: StartFrom,
    /// `raw` (default: values as bytes), `json` (values that are not JSON go to the dead
    /// letters) or `avro` (decoded into JSON with the `avro:` settings).
    #[serde(default = "default_value_format")]
    pub format: Spanned<ValueFormat>,
    /// Avro settings, with `format: avro`.
    pub avro: Option<Spanned<AvroSpec>>,
    /// With `bootstrap_servers: embedded`: the in-process cluster's topic and its data.
    pub embedded: Option<Spanned<EmbeddedSpec>>,
    /// Records per batch (one partition's records).
    #[serde(default = "default_batch_size")]
    pub batch_size: Spanned<usize>,
    /// Longest a partly filled batch waits for more records (default `50ms`).
    pub linger: Option<Spanned<DurationSpec>>,
    /// Extra librdkafka client properties, from an allow-list (timeouts, fetch sizes, SASL/SSL);
    /// the ones Weir relies on (group, commits, offsets) cannot be changed.
    #[serde(default = "no_properties")]
    pub properties: Spanned<std::collections::BTreeMap<String, String>>,
}

/// What the generator writes.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum GeneratorFormat {
    /// Binance `trade` stream messages: `{"e":"trade","E":…,"s":"BTCUSDT","t":…,"p":"…","q":"…","T":…,"m":…,"M":true}`,
    /// keyed by symbol.
    #[default]
    Binance,
    /// Kraken v2 `trade` channel messages, one trade per message:
    /// `{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":…,"price":…,"qty":…,"ord_type":…,"trade_id":…,"timestamp":"…"}]}`,
    /// keyed by symbol.
    Kraken,
    /// Page views, clicks, cart additions and purchases of 10,000 users:
    /// `{"event_id":…,"user_id":"u000042","session_id":…,"type":"purchase","page":"/products/17","device":"ios","ts_ms":…,"amount_cents":1999}`,
    /// keyed by user.
    UserEvents,
    /// Gauges of 20 hosts: `{"host":"web-07","metric":"cpu_percent","value":37.25,"ts_ms":…,"tags":{…}}`,
    /// keyed by host.
    Metrics,
    /// Inserts, updates and deletes of a `users` table in a Debezium-like envelope:
    /// `{"before":…,"after":…,"source":{…,"table":"users","lsn":…},"op":"c|u|d","ts_ms":…}`,
    /// keyed by `{"id":N}`.
    Cdc,
}

/// Settings of the `generator` source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorSpec {
    /// How many records to generate before the source ends; without it, it runs until stopped.
    pub count: Option<u64>,
    /// Records per second of wall-clock time; without it, as fast as the pipeline takes them.
    pub rate_per_sec: Option<Spanned<u64>>,
    /// Seed of the random sequence: the same seed gives the same records.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// What to generate: `binance` (default), `kraken`, `user_events`, `metrics` or `cdc`.
    #[serde(default)]
    pub format: GeneratorFormat,
    /// Symbols to trade (Binance spelling, such as `BTCUSDT`); a default set of six when absent.
    pub symbols: Option<Spanned<Vec<String>>>,
    /// Event time of the first record, in milliseconds since the Unix epoch; the time the
    /// pipeline starts when absent.
    pub start_time_ms: Option<i64>,
    /// Event-time records per second: record `i` happens at `start_time_ms + i * 1000 / this`.
    /// Defaults to `rate_per_sec`, or 1000.
    pub events_per_sec: Option<Spanned<u64>>,
    /// Records per batch handed to the stages.
    #[serde(default = "default_batch_size")]
    pub batch_size: Spanned<usize>,
    /// Event times out of order, and late records, to exercise windows and watermarks.
    pub disorder: Option<DisorderSpec>,
}

/// Out-of-order event times from the generator. The records themselves do not change (the same
/// seed gives the same records with or without it); only their event times do.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DisorderSpec {
    /// Each record's event time moves back by a random amount below this many ms, so records
    /// arrive out of order within that bound.
    #[serde(default)]
    pub max_ms: u64,
    /// Every this-many-th record is late: its event time moves back `late_by_ms` more
    /// (0, the default: none). Records in the first `late_by_ms` of event time are left alone.
    #[serde(default)]
    pub late_every: u64,
    /// How far back a late record moves, in ms (default 600000, ten minutes).
    #[serde(default = "default_late_by")]
    pub late_by_ms: u64,
}

fn default_late_by() -> u64 {
    600_000
}

/// Settings of the `file` source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceSpec {
    /// The file to read, relative to the pipeline file. Each non-empty line is a record.
    pub path: Spanned<String>,
    /// Records per batch handed to the stages.
    #[serde(default = "default_batch_size")]
    pub batch_size: Spanned<usize>,
}

/// One transformation stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Name of the stage: letters, digits, `-` and `_`; sinks refer to its outputs by it.
    pub name: Spanned<String>,
    /// The plugin: a WebAssembly component implementing `weir:plugin/stage`, relative to the
    /// pipeline file.
    pub plugin: Spanned<String>,
    /// The stage's own settings, handed to its `init` as JSON. A map; what it may hold is up to
    /// the plugin.
    pub config: Option<Spanned<serde_json::Value>>,
    /// Sandbox limits.
    #[serde(default)]
    pub limits: LimitsSpec,
}

/// Sandbox limits of a stage.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Most linear memory an instance may use, in MiB (default 64). Growing past it traps.
    pub memory_mib: Option<Spanned<u32>>,
    /// Longest one call into the plugin may take (default `5s`): a call over it is stopped,
    /// and the batch retried record by record.
    pub call_timeout: Option<Spanned<DurationSpec>>,
    /// Fuel (about one unit per WebAssembly instruction) one call may burn. Metering makes
    /// every call slower (about 38% here), so it is off unless set.
    pub fuel_per_call: Option<Spanned<u64>>,
}

/// One sink: a name, the output it reads, and its type with the type's settings.
#[derive(Debug)]
pub struct SinkSpec {
    /// Name of the sink, for progress lines and errors.
    pub name: Spanned<String>,
    /// The output it reads: `source`, `STAGE`, `STAGE.OUTPUT` or `dlq`.
    pub input: Spanned<String>,
    /// The sink's type and settings.
    pub kind: Spanned<SinkKind>,
}

/// The built-in sinks.
#[derive(Debug)]
pub enum SinkKind {
    /// Parquet files in Hive-style `year=/month=/day=/hour=` folders.
    Parquet(ParquetSinkSpec),
    /// One JSON line per record in a file.
    Jsonl(JsonlSinkSpec),
    /// One JSON line per record on standard output.
    Stdout(StdoutSinkSpec),
    /// Discards records (counting them): for benchmarks and dry runs.
    Blackhole(BlackholeSinkSpec),
    /// A Kafka topic (also the way to keep dead letters in a DLQ topic).
    Kafka(KafkaSinkSpec),
    /// An Apache Iceberg table, one snapshot per checkpoint.
    Iceberg(Box<IcebergSinkSpec>),
    /// A PostgreSQL table, upserted by key once per checkpoint.
    Postgres(Box<PostgresSinkSpec>),
    /// The latest value per key in Redis, set once per checkpoint.
    Redis(Box<RedisSinkSpec>),
}

impl SinkKind {
    /// Whether the sink reads fields of JSON values, so a record can fail to fit (and go to the
    /// dead letters).
    pub fn reads_json(&self) -> bool {
        match self {
            SinkKind::Parquet(p) => p.reads_json(),
            SinkKind::Iceberg(i) => i.reads_json(),
            SinkKind::Postgres(p) => p.schema.value.iter().any(|c| c.meta.is_none()),
            SinkKind::Redis(r) => r.reads_json(),
            _ => false,
        }
    }

    /// Whether the sink may refuse a record (which then goes to the dead letters): one that
    /// does not fit its schema, or has no key.
    pub fn may_reject(&self) -> bool {
        match self {
            // A record without a key column (even one of metadata: a record without a key), or
            // without the field or key a template names.
            SinkKind::Postgres(_) | SinkKind::Redis(_) => true,
            _ => self.reads_json(),
        }
    }

    /// Gives a sink that keeps progress in its target the sink's name, which tags what it
    /// stages and commits there.
    fn set_sink_name(&mut self, name: &str) {
        match self {
            SinkKind::Postgres(p) => p.sink = name.to_string(),
            SinkKind::Redis(r) => r.sink = name.to_string(),
            _ => {}
        }
    }

    /// The key that names this type in a pipeline file.
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::Parquet(_) => "parquet",
            SinkKind::Jsonl(_) => "jsonl",
            SinkKind::Stdout(_) => "stdout",
            SinkKind::Blackhole(_) => "blackhole",
            SinkKind::Kafka(_) => "kafka",
            SinkKind::Iceberg(_) => "iceberg",
            SinkKind::Postgres(_) => "postgres",
            SinkKind::Redis(_) => "redis",
        }
    }
}

const SINK_TYPES: &[&str] = &[
    "parquet",
    "iceberg",
    "postgres",
    "redis",
    "jsonl",
    "stdout",
    "blackhole",
    "kafka",
];

impl IcebergSinkSpec {
    /// Whether some column is read from the JSON value, so a record can fail to fit.
    pub fn reads_json(&self) -> bool {
        self.schema.value.iter().any(|c| c.meta.is_none())
    }
}

/// Settings of the `iceberg` sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcebergSinkSpec {
    /// The catalog that holds the table.
    pub catalog: Spanned<CatalogSpec>,
    /// The table, as `namespace.name` (the namespace may have several parts: `a.b.name`).
    pub table: Spanned<String>,
    /// Columns, as for the `parquet` sink. If the table does not exist, it is created with
    /// these columns; if it does, each column must be one of the table's, of the same type.
    pub schema: Spanned<Vec<ColumnSpec>>,
    /// Partition spec of a table Weir creates: each entry `column` (identity), `day(column)`,
    /// `hour(column)`, `month(column)` or `year(column)`.
    #[serde(default)]
    pub partition_by: Vec<Spanned<String>>,
    /// A data file is finished once it holds about this many bytes (default 128 MiB), and at
    /// every checkpoint.
    pub target_file_bytes: Option<Spanned<u64>>,
    /// Compression codec of data files: `zstd` (default), `snappy` or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// Snapshots kept: older ones are expired at commit time, with the manifest lists only they
    /// referenced (default 25: every kept snapshot is in the metadata file each commit rewrites
    /// and each reader parses).
    #[serde(default = "default_keep_snapshots")]
    pub keep_snapshots: Spanned<usize>,
    /// How records change the table: `append` (default) adds every record as a row; `upsert`
    /// keeps one row per `key`, the last one written (a record whose header `weir-op` is
    /// `delete` deletes the row of the key read from its value). `upsert` needs a `sql`
    /// catalog, and makes the table format version 2 with `key` as its identifier fields.
    #[serde(default = "default_iceberg_mode")]
    pub mode: Spanned<IcebergMode>,
    /// With `mode: upsert`, the columns that identify a row (`nullable: false`, not floating
    /// point), such as `key: [id]`.
    pub key: Option<Spanned<Vec<Spanned<String>>>>,
}

/// How the `iceberg` sink changes its table.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IcebergMode {
    /// Every record is a new row.
    #[default]
    Append,
    /// One row per key: a record replaces the row with its key, or deletes it.
    Upsert,
}

fn default_iceberg_mode() -> Spanned<IcebergMode> {
    unspanned(IcebergMode::Append)
}

/// An Iceberg catalog.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSpec {
    /// `sql` (a SQLite file or a Postgres database) or `rest` (an Iceberg REST catalog).
    #[serde(rename = "type")]
    pub kind: CatalogKind,
    /// `sql`: `sqlite:PATH` (relative to the pipeline file; created if missing) or
    /// `postgres://…`. `rest`: the catalog's base URL.
    pub uri: Spanned<String>,
    /// Where new tables' files go: a folder relative to the pipeline file or `s3://bucket/prefix`
    /// (required for `sql`; for `rest`, the warehouse name the server expects, if any).
    pub warehouse: Option<Spanned<String>>,
    /// Catalog name (default `weir`).
    #[serde(default = "default_catalog_name")]
    pub name: Spanned<String>,
    /// More catalog properties (for `rest`: `token`, `credential`, `prefix` …).
    #[serde(default = "no_properties")]
    pub properties: Spanned<std::collections::BTreeMap<String, String>>,
}

/// Kinds of Iceberg catalog.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CatalogKind {
    /// Tables listed in a SQL database.
    Sql,
    /// An Iceberg REST catalog server.
    Rest,
}

/// Settings of the `parquet` sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkSpec {
    /// Folder the files go to: a path relative to the pipeline file, or `s3://bucket/prefix`.
    pub path: Spanned<String>,
    /// Columns of the files. Each record's value must be a JSON object; its fields are read
    /// into these columns, and a record that does not fit goes to the dead-letter output.
    pub schema: Spanned<Vec<ColumnSpec>>,
    /// A file is finished once it holds about this many bytes (default 128 MiB), and at every
    /// checkpoint.
    pub max_file_bytes: Option<Spanned<u64>>,
    /// Compression codec: `zstd` (default), `snappy` or `none`.
    #[serde(default)]
    pub compression: Compression,
}

impl ParquetSinkSpec {
    /// Whether some column is read from the JSON value, so a record can fail to fit.
    pub fn reads_json(&self) -> bool {
        self.schema.value.iter().any(|c| c.meta.is_none())
    }
}

/// A Parquet column.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// Column name.
    pub name: Spanned<String>,
    /// Column type.
    #[serde(rename = "type")]
    pub kind: ColumnType,
    /// The JSON field it is read from, when that is not `name`.
    pub from: Option<Spanned<String>>,
    /// The record's metadata it holds instead of a JSON field: the value's or key's bytes, the
    /// topic, partition, offset, timestamp, headers, or the plugin that emitted it.
    pub meta: Option<Spanned<Meta>>,
    /// Whether a record may lack the field (default `true`).
    #[serde(default = "default_true")]
    pub nullable: bool,
}

/// Record metadata a Parquet column can hold instead of a JSON field.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Meta {
    /// The value's bytes as they arrived (`binary`, or `string` if they are UTF-8).
    Value,
    /// The key's bytes (`binary`, or `string` if they are UTF-8); null without a key.
    Key,
    /// The topic (`string`).
    Topic,
    /// The partition (`int32` or `int64`).
    Partition,
    /// The offset (`int64`).
    Offset,
    /// The record's timestamp (`timestamp_ms`, `timestamp_us` or `int64` milliseconds).
    Timestamp,
    /// The headers as a JSON object of strings (`string`); null without headers.
    Headers,
    /// The hex sha256 of the plugin whose stage emitted the record (`string`); null for records
    /// straight from the source. After a hot swap it says which version produced a row.
    Plugin,
}

impl Meta {
    /// The column types that can hold this metadata.
    pub fn types(self) -> &'static [ColumnType] {
        use ColumnType::*;
        match self {
            Meta::Value | Meta::Key => &[Binary, String],
            Meta::Topic | Meta::Headers | Meta::Plugin => &[String],
            Meta::Partition => &[Int32, Int64],
            Meta::Offset => &[Int64],
            Meta::Timestamp => &[TimestampMs, TimestampUs, Int64],
        }
    }
}

/// Column types. JSON numbers and numeric strings both read into the number types.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// UTF-8 text.
    String,
    /// 32-bit signed integer.
    Int32,
    /// 64-bit signed integer.
    Int64,
    /// 32-bit float.
    Float32,
    /// 64-bit float.
    Float64,
    /// `true` or `false`.
    Boolean,
    /// Milliseconds since the Unix epoch (a JSON integer), or an RFC 3339 string; stored UTC.
    TimestampMs,
    /// Microseconds since the Unix epoch (a JSON integer), or an RFC 3339 string; stored UTC.
    TimestampUs,
    /// A calendar date (`YYYY-MM-DD`).
    Date,
    /// Bytes: record metadata (`meta: value` or `meta: key`) only.
    Binary,
}

/// Parquet compression codecs.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Zstandard, level 1: small files, fast.
    #[default]
    Zstd,
    /// Snappy: fastest, larger files.
    Snappy,
    /// No compression.
    None,
}

/// Settings of the `postgres` sink. Rows are upserted into a table by its key columns, exactly
/// once: at a checkpoint the rows are staged (durable, not visible), and once the manifest is
/// stored they are applied in one transaction that also records the checkpoint id. A record with
/// the header `weir-op: delete` deletes the row its key columns name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkSpec {
    /// Connection URL, `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`; default
    /// `$DATABASE_URL`.
    pub url: Option<Spanned<String>>,
    /// The table, `NAME` or `SCHEMA.NAME` (unquoted; names are used exactly as written). If it
    /// does not exist it is created with the schema's columns and `PRIMARY KEY (key…)`; if it
    /// does, it must have each column, of the same type, a unique key on exactly `key`, and no
    /// `NOT NULL` column a record could leave empty.
    pub table: Spanned<String>,
    /// The primary key: columns of the schema. A record without one goes to the dead letters.
    pub key: Spanned<Vec<Spanned<String>>>,
    /// Columns, as for the `parquet` sink. An upsert sets every one of them.
    pub schema: Spanned<Vec<ColumnSpec>>,
    /// The sink's name, which tags its staged rows and progress rows (set from `name:`, not
    /// read from the sink's settings).
    #[serde(skip)]
    pub(crate) sink: String,
}

/// Settings of the `redis` sink: the latest value per key, set exactly once per checkpoint
/// (staged in a hash, then applied by one Lua script that records the checkpoint id). A record
/// with the header `weir-op: delete` deletes its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSinkSpec {
    /// Server URL (default `redis://127.0.0.1:6379`); `redis://[:PASSWORD@]HOST[:PORT][/DB]`.
    #[serde(default = "default_redis_url")]
    pub url: Spanned<String>,
    /// The Redis key of a record: a template such as `latest:{symbol}`, where `{FIELD}` is a
    /// top-level field of the JSON value and `{key}` the record's key (`{{` and `}}` for braces).
    pub key: Spanned<String>,
    /// What is stored: the record's value bytes as they are (default), or a template like
    /// `key`'s, such as `{p}`.
    pub value: Option<Spanned<String>>,
    /// Expiry of each key set (such as `10m`): the time is counted from the checkpoint's
    /// commit. Without it keys do not expire.
    pub ttl: Option<Spanned<DurationSpec>>,
    /// The sink's name, which tags its staging hashes and progress key (set from `name:`, not
    /// read from the sink's settings).
    #[serde(skip)]
    pub(crate) sink: String,
}

impl RedisSinkSpec {
    /// Whether a template names a field of the JSON value.
    pub fn reads_json(&self) -> bool {
        [Some(&self.key), self.value.as_ref()]
            .into_iter()
            .flatten()
            .any(|t| crate::sinks::redis::Template::parse(&t.value).is_ok_and(|t| t.reads_json()))
    }
}

/// Settings of the `jsonl` sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSinkSpec {
    /// File to append to, relative to the pipeline file.
    pub path: Spanned<String>,
    /// Write each record as a JSON object with its key, value, timestamp, headers and source
    /// position (default `false`: write the value as it is, one per line). Dead letters read
    /// best this way.
    #[serde(default)]
    pub envelope: bool,
}

/// Settings of the `stdout` sink.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkSpec {
    /// As for `jsonl`.
    #[serde(default)]
    pub envelope: bool,
}

/// Settings of the `kafka` sink. Records keep their key, value, headers and timestamp; the
/// producer is idempotent, so a retried send is not written twice.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkSpec {
    /// Brokers to bootstrap from: `host:port[,host:port…]`.
    pub bootstrap_servers: Spanned<String>,
    /// The topic to write to.
    pub topic: Spanned<String>,
    /// Extra librdkafka producer properties, from an allow-list (batching, compression,
    /// timeouts, SASL/SSL).
    #[serde(default = "no_properties")]
    pub properties: Spanned<std::collections::BTreeMap<String, String>>,
}

/// The `blackhole` sink has no settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlackholeSinkSpec {}

/// Checkpoint settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Time between checkpoints (default `5s`). At each one, sinks finish their files, a
    /// manifest records them with the source offsets, and then the sinks commit.
    #[serde(default = "default_checkpoint_interval")]
    pub interval: Spanned<DurationSpec>,
    /// Where manifests are kept: a folder relative to the pipeline file, or `s3://bucket/prefix`
    /// (default `.weir`, beside the pipeline file). A restart recovers from the newest one.
    #[serde(default = "default_checkpoint_store")]
    pub store: Spanned<String>,
    /// Manifests kept (default 10); older ones are deleted.
    #[serde(default = "default_retain")]
    pub retain: Spanned<usize>,
    /// Folder of the stages' keyed state database on local disk, relative to the pipeline
    /// file (default `.weir/state`); the pipeline's own folder is made in it. It is a cache:
    /// a checkpoint's state lives in the checkpoint store, and a missing or stale database is
    /// rebuilt from there.
    #[serde(default = "default_state_dir")]
    pub state_dir: Spanned<String>,
}

/// Event-time settings. The watermark is the newest record timestamp of each source partition
/// minus `max_out_of_orderness_secs`, the minimum over the partitions that are not idle, minus
/// `allowed_lateness_secs`; it never goes back. Windows close when it passes their end; a
/// record older than it is late (a windowing stage sends it to its `late` output).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeSpec {
    /// How far out of order records may arrive within a partition, in seconds (default 5).
    #[serde(default = "default_out_of_orderness")]
    pub max_out_of_orderness_secs: Spanned<f64>,
    /// A partition that sends nothing for this long, in seconds, stops holding the watermark
    /// back until it sends again (default 30).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: Spanned<f64>,
    /// How much longer, in seconds, windows stay open for records that arrive late
    /// (default 0): the watermark is held back by this much more.
    #[serde(default = "default_lateness")]
    pub allowed_lateness_secs: Spanned<f64>,
}

impl Default for EventTimeSpec {
    fn default() -> Self {
        EventTimeSpec {
            max_out_of_orderness_secs: default_out_of_orderness(),
            idle_timeout_secs: default_idle_timeout(),
            allowed_lateness_secs: default_lateness(),
        }
    }
}

fn default_out_of_orderness() -> Spanned<f64> {
    unspanned(5.0)
}

fn default_idle_timeout() -> Spanned<f64> {
    unspanned(30.0)
}

fn default_lateness() -> Spanned<f64> {
    unspanned(0.0)
}

fn default_state_dir() -> Spanned<String> {
    unspanned(".weir/state".into())
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        CheckpointSpec {
            interval: default_checkpoint_interval(),
            store: default_checkpoint_store(),
            retain: default_retain(),
            state_dir: default_state_dir(),
        }
    }
}

/// A duration written as a number and a unit: `250ms`, `10s`, `5m`, `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationSpec(pub std::time::Duration);

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(DurationSpec).ok_or_else(|| {
            de::Error::custom(format!(
                "invalid duration `{text}`: expected a number and a unit (ms, s, m or h), such as `500ms` or `10s`"
            ))
        })
    }
}

/// Parses `250ms`, `10s`, `5m`, `1h` (whole numbers only).
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(std::time::Duration::from_millis(ms))
}

fn default_seed() -> u64 {
    1
}

fn no_properties() -> Spanned<std::collections::BTreeMap<String, String>> {
    unspanned(std::collections::BTreeMap::new())
}

fn default_partitions() -> Spanned<i32> {
    unspanned(3)
}

fn default_value_format() -> Spanned<ValueFormat> {
    unspanned(ValueFormat::Raw)
}

fn default_true() -> bool {
    true
}

fn default_batch_size() -> Spanned<usize> {
    unspanned(1024)
}

fn default_checkpoint_interval() -> Spanned<DurationSpec> {
    unspanned(DurationSpec(std::time::Duration::from_secs(5)))
}

fn default_checkpoint_store() -> Spanned<String> {
    unspanned(".weir".into())
}

fn default_keep_snapshots() -> Spanned<usize> {
    unspanned(25)
}

fn default_catalog_name() -> Spanned<String> {
    unspanned("weir".into())
}

fn default_redis_url() -> Spanned<String> {
    unspanned("redis://127.0.0.1:6379".into())
}

fn default_retain() -> Spanned<usize> {
    unspanned(10)
}

/// A default value, which has no place in the file.
pub fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(
        value,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

/// Sinks are read key by key so that the type key (`parquet:`, `jsonl:` …) can stand anywhere
/// among `name` and `input`, and its settings are read in place, keeping their locations.
impl<'de> Deserialize<'de> for SinkSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(SinkVisitor)
    }
}

struct SinkVisitor;

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum SinkKey {
    Name,
    Input,
    Parquet,
    Jsonl,
    Stdout,
    Blackhole,
    Kafka,
    Iceberg,
    Postgres,
    Redis,
}

impl<'de> Visitor<'de> for SinkVisitor {
    type Value = SinkSpec;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a sink: `name`, `input` and one of ")?;
        for (i, t) in SINK_TYPES.iter().enumerate() {
            write!(f, "{}`{t}`", if i > 0 { ", " } else { "" })?;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SinkSpec, A::Error> {
        let (mut name, mut input, mut kind) = (None, None, None::<Spanned<SinkKind>>);
        while let Some(key) = map.next_key::<SinkKey>()? {
            let parsed = match key {
                SinkKey::Name => {
                    name = Some(map.next_value()?);
                    continue;
                }
                SinkKey::Input => {
                    input = Some(map.next_value()?);
                    continue;
                }
                SinkKey::Parquet => spanned_kind(
                    map.next_value::<Spanned<ParquetSinkSpec>>()?,
                    SinkKind::Parquet,
                ),
                SinkKey::Jsonl => {
                    spanned_kind(map.next_value::<Spanned<JsonlSinkSpec>>()?, SinkKind::Jsonl)
                }
                SinkKey::Stdout => {
                    spanned_kind(map.next_value::<Spanned<Option<StdoutSinkSpec>>>()?, |s| {
                        SinkKind::Stdout(s.unwrap_or_default())
                    })
                }
                SinkKey::Kafka => {
                    spanned_kind(map.next_value::<Spanned<KafkaSinkSpec>>()?, SinkKind::Kafka)
                }
                SinkKey::Iceberg => {
                    spanned_kind(map.next_value::<Spanned<IcebergSinkSpec>>()?, |s| {
                        SinkKind::Iceberg(Box::new(s))
                    })
                }
                SinkKey::Postgres => {
                    spanned_kind(map.next_value::<Spanned<PostgresSinkSpec>>()?, |s| {
                        SinkKind::Postgres(Box::new(s))
                    })
                }
                SinkKey::Redis => spanned_kind(map.next_value::<Spanned<RedisSinkSpec>>()?, |s| {
                    SinkKind::Redis(Box::new(s))
                }),
                SinkKey::Blackhole => spanned_kind(
                    map.next_value::<Spanned<Option<BlackholeSinkSpec>>>()?,
                    |_| SinkKind::Blackhole(BlackholeSinkSpec {}),
                ),
            };
            if let Some(first) = &kind {
                return Err(de::Error::custom(format!(
                    "a sink has one type, but this one has both `{}` and `{}`",
                    first.value.type_name(),
                    parsed.value.type_name()
                )));
            }
            kind = Some(parsed);
        }
        let name: Spanned<String> = name.ok_or_else(|| de::Error::missing_field("name"))?;
        let input = input.ok_or_else(|| de::Error::missing_field("input"))?;
        let mut kind = kind.ok_or_else(|| {
            de::Error::custom(format!(
                "sink `{}` has no type: add one of {}",
                name.value,
                SINK_TYPES
                    .iter()
                    .map(|t| format!("`{t}:`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        kind.value.set_sink_name(&name.value);
        Ok(SinkSpec { name, input, kind })
    }
}

fn spanned_kind<T>(spanned: Spanned<T>, f: impl FnOnce(T) -> SinkKind) -> Spanned<SinkKind> {
    Spanned::new(f(spanned.value), spanned.referenced, spanned.defined)
}
