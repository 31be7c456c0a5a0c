//! Pipeline files: parsing ([`spec`]), checking, and resolving them into a [`Pipeline`] ready
//! to run, with its plugins compiled and initialised.
//!
//! Every problem is reported as `FILE:LINE:COLUMN: what was expected`, and all the problems
//! of a file are reported together, so a user fixes them in one pass.

pub mod spec;

use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_saphyr::{Location, Spanned};

use crate::plugin::{Limits, PluginHost, StageRunner};
pub use spec::PipelineSpec;
use spec::{SinkKind, SourceSpec};

/// The file format version this build reads.
pub const VERSION: u32 = 1;

/// One problem in a pipeline file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The pipeline file.
    pub file: PathBuf,
    /// 1-based line, or 0 when the problem has no single place.
    pub line: u64,
    /// 1-based column, or 0.
    pub column: u64,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// Every problem found in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Where a sink's records come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// The source's records, before any stage.
    Source,
    /// Output `output` of stage `stage` (0 is the default output).
    Stage {
        /// Index of the stage.
        stage: usize,
        /// Index of the output: 0 for the default, `n` for the stage's n-th named output.
        output: u32,
    },
    /// Dead letters from anywhere in the pipeline.
    Dlq,
}

/// A stage ready to run.
pub struct Stage {
    /// The stage's name.
    pub name: String,
    /// Its running instance (initialised, so its outputs are known).
    pub runner: StageRunner,
}

/// A sink with its input resolved.
#[derive(Debug)]
pub struct Sink {
    /// The sink's name.
    pub name: String,
    /// What it reads.
    pub route: Route,
    /// The `input:` as written, for messages.
    pub input: String,
    /// Type and settings; relative paths in them are relative to [`Pipeline::dir`].
    pub kind: SinkKind,
}

/// A checked pipeline, with its plugins compiled and initialised.
pub struct Pipeline {
    /// The pipeline's name.
    pub name: String,
    /// The file it was read from.
    pub file: PathBuf,
    /// The folder relative paths in the file start from.
    pub dir: PathBuf,
    /// The source.
    pub source: SourceSpec,
    /// The stages, in order.
    pub stages: Vec<Stage>,
    /// The sinks.
    pub sinks: Vec<Sink>,
    /// Checkpoint settings.
    pub checkpoint: Checkpointing,
    /// Watermark settings.
    pub event_time: crate::runtime::event_time::Settings,
    /// How to reach `s3://` locations.
    pub s3: crate::storage::S3Config,
}

/// When and where checkpoints are taken.
#[derive(Clone, Debug)]
pub struct Checkpointing {
    /// Time between checkpoints.
    pub interval: Duration,
    /// Where manifests go (a path relative to the pipeline file, or an `s3://` URL).
    pub store: String,
    /// Manifests kept.
    pub retain: usize,
    /// Folder of the keyed state database (absolute, or relative to the pipeline file).
    pub state_dir: String,
}

/// Reads and parses a pipeline file, without checking what it refers to.
pub fn parse(file: &Path) -> Result<PipelineSpec, SpecErrors> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        SpecErrors(vec![SpecError {
            file: file.into(),
            line: 0,
            column: 0,
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    parse_str(file, &text)
}

/// Parses pipeline text; `file` is used in messages.
pub fn parse_str(file: &Path, text: &str) -> Result<PipelineSpec, SpecErrors> {
    serde_saphyr::from_str::<PipelineSpec>(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        SpecErrors(vec![SpecError {
            file: file.into(),
            line,
            column,
            message: plain_message(&e.to_string()),
        }])
    })
}

/// The parser's message without its own `error: line N column M:` prefix and source snippet.
fn plain_message(rendered: &str) -> String {
    let first = rendered.lines().next().unwrap_or(rendered).trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let message = match first
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((place, message)) if place.contains(" column ") => message,
        _ => first,
    };
    // The parser names Rust types; say what a person would write instead.
    match message {
        "invalid u8" | "invalid u16" | "invalid u32" | "invalid u64" | "invalid usize" => {
            "expected a whole number, 0 or more".to_string()
        }
        "invalid i8" | "invalid i16" | "invalid i32" | "invalid i64" => {
            "expected a whole number".to_string()
        }
        "invalid f32" | "invalid f64" => "expected a number".to_string(),
        "invalid bool" => "expected `true` or `false`".to_string(),
        other => other.to_string(),
    }
}

/// `a/b/../c` → `a/c`, without touching the file system (the file may not exist).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Parses and checks a pipeline file, compiling and initialising its plugins.
pub fn load(file: &Path, host: &PluginHost) -> Result<Pipeline, SpecErrors> {
    load_with(file, host, &Overrides::new())
}

/// Plugin files that run in place of those a pipeline file names, by stage: the versions a hot
/// swap put in place, which a restart keeps.
pub type Overrides = std::collections::BTreeMap<String, PathBuf>;

/// As [`load`], with the stages named in `overrides` running those plugins instead.
pub fn load_with(
    file: &Path,
    host: &PluginHost,
    overrides: &Overrides,
) -> Result<Pipeline, SpecErrors> {
    let spec = parse(file)?;
    check_with(file, spec, host, overrides)
}

/// Collects problems with their places.
struct Problems<'a> {
    file: &'a Path,
    found: Vec<SpecError>,
}

impl Problems<'_> {
    fn at(&mut self, location: &Location, message: impl Into<String>) {
        self.found.push(SpecError {
            file: self.file.into(),
            line: location.line(),
            column: location.column(),
            message: message.into(),
        });
    }
}

/// Whether `name` may name a pipeline, a stage or a sink: letters, digits, `-` and `_`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Checks a parsed pipeline and resolves it.
pub fn check(file: &Path, spec: PipelineSpec, host: &PluginHost) -> Result<Pipeline, SpecErrors> {
    check_with(file, spec, host, &Overrides::new())
}

/// As [`check`], with `overrides`.
pub fn check_with(
    file: &Path,
    spec: PipelineSpec,
    host: &PluginHost,
    overrides: &Overrides,
) -> Result<Pipeline, SpecErrors> {
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    // Absolute, so that the paths a run prints can be pasted anywhere.
    let dir = std::fs::canonicalize(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        &dir
    })
    .unwrap_or(dir);
    let mut problems = Problems {
        file,
        found: Vec::new(),
    };

    if spec.version.value != VERSION {
        problems.at(
            &spec.version.referenced,
            format!(
                "unsupported version {}: this build of weir reads version {VERSION}",
                spec.version.value
            ),
        );
    }
    if !valid_name(&spec.name.value) {
        problems.at(
            &spec.name.referenced,
            "a pipeline name uses only letters, digits, `-` and `_`",
        );
    }
    check_source(&spec.source, &dir, &mut problems);

    // Stages: names, plugins, config, limits; the plugins are compiled and initialised here.
    let mut stages = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (index, stage) in spec.stages.iter().enumerate() {
        let name = &stage.name.value;
        if !valid_name(name) || name == "source" || name == "dlq" {
            problems.at(
                &stage.name.referenced,
                "a stage name uses only letters, digits, `-` and `_`, and is not `source` or `dlq`",
            );
        } else if names.insert(name.clone(), index).is_some() {
            problems.at(
                &stage.name.referenced,
                format!("there is already a stage named `{name}`"),
            );
        }
        if let Some(runner) = start_stage(stage, &dir, host, overrides.get(name), &mut problems) {
            stages.push(Stage {
                name: name.clone(),
                runner,
            });
        }
    }
    let all_stages_started = stages.len() == spec.stages.len();

    // Sinks: names, inputs, and that every output goes somewhere.
    let mut sinks = Vec::new();
    let mut sink_names = HashSet::new();
    let mut read: HashSet<Route> = HashSet::new();
    if spec.sinks.value.is_empty() {
        problems.at(&spec.sinks.referenced, "a pipeline needs at least one sink");
    }
    for sink in spec.sinks.value {
        if !valid_name(&sink.name.value) {
            problems.at(
                &sink.name.referenced,
                "a sink name uses only letters, digits, `-` and `_`",
            );
        } else if !sink_names.insert(sink.name.value.clone()) {
            problems.at(
                &sink.name.referenced,
                format!("there is already a sink named `{}`", sink.name.value),
            );
        }
        let route = resolve_input(
            &sink.input,
            &names,
            &stages,
            all_stages_started,
            &mut problems,
        );
        if let SinkKind::Kafka(kafka) = &sink.kind.value {
            check_properties(
                &kafka.properties,
                crate::sinks::kafka::ALLOWED_PROPERTIES,
                &mut problems,
            );
        }
        if let SinkKind::Parquet(parquet) = &sink.kind.value {
            if route == Some(Route::Dlq) && parquet.reads_json() {
                problems.at(
                    &sink.input.referenced,
                    "dead letters can be any bytes, and this parquet sink reads JSON fields: send `dlq` to a `jsonl` or `stdout` sink, or to a parquet sink whose columns are all `meta`",
                );
            }
            check_parquet(parquet, &mut problems);
        }
        if let SinkKind::Iceberg(iceberg) = &sink.kind.value {
            if route == Some(Route::Dlq) && iceberg.reads_json() {
                problems.at(
                    &sink.input.referenced,
                    "dead letters can be any bytes, and this iceberg sink reads JSON fields: send `dlq` to a `jsonl` or `stdout` sink, or to a sink whose columns are all `meta`",
                );
            }
            check_iceberg(iceberg, &mut problems);
        }
        if matches!(sink.kind.value, SinkKind::Postgres(_) | SinkKind::Redis(_))
            && route == Some(Route::Dlq)
        {
            problems.at(
                &sink.input.referenced,
                format!(
                    "dead letters can be any bytes, and a {} sink refuses records it cannot read, which would then have nowhere to go: send `dlq` to a `jsonl`, `stdout` or `kafka` sink",
                    sink.kind.value.type_name()
                ),
            );
        }
        if let SinkKind::Postgres(postgres) = &sink.kind.value {
            check_postgres(postgres, &mut problems);
        }
        if let SinkKind::Redis(redis) = &sink.kind.value {
            check_redis(redis, &mut problems);
        }
        if let Some(route) = route {
            read.insert(route);
            sinks.push(Sink {
                name: sink.name.value,
                route,
                input: sink.input.value,
                kind: sink.kind.value,
            });
        }
    }

    // Nothing may be dropped on the floor: the last output in the chain, every named output
    // and the dead letters must each reach a sink.
    if all_stages_started && problems.found.is_empty() {
        let last = match stages.len() {
            0 => Route::Source,
            n => Route::Stage {
                stage: n - 1,
                output: 0,
            },
        };
        if !read.contains(&last) {
            let what = stages
                .last()
                .map_or("the source".to_string(), |s| format!("stage `{}`", s.name));
            let input = stages
                .last()
                .map_or("source".to_string(), |s| s.name.clone());
            problems.at(
                &spec.sinks.referenced,
                format!("the records of {what} go nowhere: add a sink with `input: {input}`"),
            );
        }
        for (index, stage) in stages.iter().enumerate() {
            for (n, output) in stage.runner.outputs().iter().enumerate() {
                if !read.contains(&Route::Stage {
                    stage: index,
                    output: n as u32 + 1,
                }) {
                    problems.at(
                        &spec.stages[index].name.referenced,
                        format!(
                            "output `{0}.{output}` of stage `{0}` is not wired: add a sink with `input: {0}.{output}`",
                            stage.name
                        ),
                    );
                }
            }
        }
        let json_source = matches!(&spec.source.value, SourceSpec::Kafka(k) if k.format.value != spec::ValueFormat::Raw);
        let may_reject =
            json_source || !stages.is_empty() || sinks.iter().any(|s| s.kind.may_reject());
        if may_reject && !read.contains(&Route::Dlq) {
            problems.at(
                &spec.sinks.referenced,
                "dead letters are not wired: add a sink with `input: dlq` (records that fail are kept there, never dropped)",
            );
        }
    }

    check_location(&spec.checkpoint.store, &mut problems);
    if spec.checkpoint.retain.value == 0 {
        problems.at(
            &spec.checkpoint.retain.referenced,
            "retain must be at least 1: recovery needs the newest manifest",
        );
    }
    let et = &spec.event_time;
    for (secs, name) in [
        (&et.max_out_of_orderness_secs, "max_out_of_orderness_secs"),
        (&et.idle_timeout_secs, "idle_timeout_secs"),
        (&et.allowed_lateness_secs, "allowed_lateness_secs"),
    ] {
        if !(secs.value.is_finite() && secs.value >= 0.0 && secs.value < 1e9) {
            problems.at(
                &secs.referenced,
                format!("{name} must be a number of seconds, 0 or more"),
            );
        }
    }
    if et.idle_timeout_secs.value == 0.0 {
        problems.at(
            &et.idle_timeout_secs.referenced,
            "idle_timeout_secs must be more than 0: every partition would count as idle",
        );
    }
    if !problems.found.is_empty() {
        return Err(SpecErrors(problems.found));
    }
    let event_time = crate::runtime::event_time::Settings {
        max_out_of_orderness_ms: (et.max_out_of_orderness_secs.value * 1000.0) as i64,
        idle_timeout: Duration::from_secs_f64(et.idle_timeout_secs.value),
        allowed_lateness_ms: (et.allowed_lateness_secs.value * 1000.0) as i64,
    };
    let source = spec.source.value;
    Ok(Pipeline {
        name: spec.name.value,
        file: file.into(),
        dir,
        source,
        stages,
        sinks,
        checkpoint: Checkpointing {
            interval: spec.checkpoint.interval.value.0,
            store: spec.checkpoint.store.value,
            retain: spec.checkpoint.retain.value.max(1),
            state_dir: spec.checkpoint.state_dir.value,
        },
        event_time,
        s3: crate::storage::S3Config::resolve(&spec.object_store),
    })
}

fn check_source(source: &Spanned<SourceSpec>, dir: &Path, problems: &mut Problems) {
    match &source.value {
        SourceSpec::Generator(g) => {
            if g.batch_size.value == 0 {
                problems.at(&g.batch_size.referenced, "batch_size must be at least 1");
            }
            for rate in [&g.rate_per_sec, &g.events_per_sec].into_iter().flatten() {
                if rate.value == 0 {
                    problems.at(
                        &rate.referenced,
                        "a rate must be at least 1 per second (leave it out for no limit)",
                    );
                }
            }
            if let Some(symbols) = &g.symbols
                && (symbols.value.is_empty() || symbols.value.iter().any(|s| s.is_empty()))
            {
                problems.at(
                    &symbols.referenced,
                    "symbols must be a non-empty list of non-empty names",
                );
            }
        }
        SourceSpec::Kafka(k) => {
            if k.batch_size.value == 0 {
                problems.at(&k.batch_size.referenced, "batch_size must be at least 1");
            }
            if k.bootstrap_servers.value.trim().is_empty() {
                problems.at(
                    &k.bootstrap_servers.referenced,
                    "bootstrap_servers needs at least one `host:port`",
                );
            }
            if k.topics.value.is_empty() || k.topics.value.iter().any(|t| t.is_empty()) {
                problems.at(
                    &k.topics.referenced,
                    "topics must be a non-empty list of topic names",
                );
            }
            if k.group_id.value.is_empty() {
                problems.at(&k.group_id.referenced, "group_id must not be empty");
            }
            check_properties(
                &k.properties,
                crate::sources::kafka::ALLOWED_PROPERTIES,
                problems,
            );
            check_avro(k, dir, problems);
            check_embedded(k, problems);
        }
        SourceSpec::File(f) => {
            if f.batch_size.value == 0 {
                problems.at(&f.batch_size.referenced, "batch_size must be at least 1");
            }
            let path = normalize(&dir.join(&f.path.value));
            if !path.is_file() {
                problems.at(
                    &f.path.referenced,
                    format!(
                        "input file `{}` not found (looked at {})",
                        f.path.value,
                        path.display()
                    ),
                );
            }
        }
    }
}

/// Refuses client properties that are neither in `allowed` nor security settings.
fn check_properties(
    properties: &Spanned<std::collections::BTreeMap<String, String>>,
    allowed: &[&str],
    problems: &mut Problems,
) {
    for key in properties.value.keys() {
        if let Some(refused) = crate::sources::kafka::refused_property(key, allowed) {
            problems.at(&properties.referenced, refused);
        }
    }
}

fn check_embedded(k: &spec::KafkaSourceSpec, problems: &mut Problems) {
    let embedded = k.bootstrap_servers.value == crate::sources::kafka::EMBEDDED;
    match &k.embedded {
        None if embedded => problems.at(
            &k.bootstrap_servers.referenced,
            "bootstrap_servers: embedded needs an `embedded:` block saying what to `generate` into the in-process cluster",
        ),
        None => {}
        Some(block) if !embedded => problems.at(
            &block.referenced,
            "`embedded:` settings need `bootstrap_servers: embedded`",
        ),
        Some(block) => {
            if k.topics.value.len() != 1 {
                problems.at(
                    &k.topics.referenced,
                    "an embedded cluster has one topic: name exactly one",
                );
            }
            let partitions = &block.value.partitions;
            if !(1..=64).contains(&partitions.value) {
                problems.at(&partitions.referenced, "partitions must be between 1 and 64");
            }
            if block.value.generate.count.is_none() && block.value.generate.rate_per_sec.is_none() {
                problems.at(
                    &block.referenced,
                    "an embedded cluster holds everything in memory: give `generate` a `count` or a `rate_per_sec`",
                );
            }
        }
    }
}

fn check_avro(k: &spec::KafkaSourceSpec, dir: &Path, problems: &mut Problems) {
    let avro = match (&k.avro, k.format.value) {
        (Some(avro), spec::ValueFormat::Avro) => &avro.value,
        (None, spec::ValueFormat::Avro) => {
            problems.at(
                &k.format.referenced,
                "format: avro needs an `avro:` block with a `schema` file, a `registry_url`, or both",
            );
            return;
        }
        (Some(avro), _) => {
            problems.at(&avro.referenced, "`avro:` settings need `format: avro`");
            &avro.value
        }
        (None, _) => return,
    };
    match &avro.schema {
        Some(path) => {
            if let Err(e) = crate::sources::avro::read_schema(&normalize(&dir.join(&path.value))) {
                problems.at(&path.referenced, e);
            }
        }
        None if avro.registry_url.is_none() => problems.at(
            &k.avro.as_ref().expect("matched above").referenced,
            "Avro values need a `schema` file, a `registry_url`, or both",
        ),
        None => {}
    }
    if let Some(url) = &avro.registry_url
        && !(url.value.starts_with("http://") || url.value.starts_with("https://"))
    {
        problems.at(
            &url.referenced,
            format!(
                "registry_url must be an http:// or https:// URL, not `{}`",
                url.value
            ),
        );
    }
}

fn check_parquet(parquet: &spec::ParquetSinkSpec, problems: &mut Problems) {
    check_columns(&parquet.schema, "parquet", problems);
    check_location(&parquet.path, problems);
    if let Some(max) = &parquet.max_file_bytes
        && max.value < 1 << 20
    {
        problems.at(
            &max.referenced,
            "max_file_bytes must be at least 1048576 (1 MiB)",
        );
    }
}

/// An `s3://` location must name a bucket.
fn check_location(location: &Spanned<String>, problems: &mut Problems) {
    if crate::storage::is_s3(&location.value) && crate::storage::split_s3(&location.value).is_none()
    {
        problems.at(
            &location.referenced,
            format!(
                "`{}` names no bucket: expected s3://BUCKET/PREFIX",
                location.value
            ),
        );
    }
}

fn check_iceberg(iceberg: &spec::IcebergSinkSpec, problems: &mut Problems) {
    check_columns(&iceberg.schema, "iceberg", problems);
    if let Err(e) = crate::sinks::iceberg::table_ident(&iceberg.table.value) {
        problems.at(&iceberg.table.referenced, e);
    }
    for entry in &iceberg.partition_by {
        match crate::sinks::iceberg::parse_partition(&entry.value) {
            Err(e) => problems.at(&entry.referenced, e),
            Ok((column, _)) if !iceberg.schema.value.iter().any(|c| c.name.value == column) => {
                problems.at(
                    &entry.referenced,
                    format!("partition_by names `{column}`, which is not a column of the schema"),
                );
            }
            Ok(_) => {}
        }
    }
    let catalog = &iceberg.catalog.value;
    match (&catalog.kind, &catalog.warehouse) {
        (spec::CatalogKind::Sql, None) => problems.at(
            &iceberg.catalog.referenced,
            "a `sql` catalog needs a `warehouse`: a folder or s3://BUCKET/PREFIX for the tables' files",
        ),
        (spec::CatalogKind::Sql, Some(w)) => check_location(w, problems),
        _ => {}
    }
    let uri = &catalog.uri.value;
    let fits = match catalog.kind {
        spec::CatalogKind::Sql => {
            uri.starts_with("sqlite:")
                || uri.starts_with("postgres://")
                || uri.starts_with("postgresql://")
        }
        spec::CatalogKind::Rest => uri.starts_with("http://") || uri.starts_with("https://"),
    };
    if !fits {
        problems.at(
            &catalog.uri.referenced,
            match catalog.kind {
                spec::CatalogKind::Sql => {
                    "a `sql` catalog's uri is `sqlite:PATH` or `postgres://…`"
                }
                spec::CatalogKind::Rest => "a `rest` catalog's uri is an http:// or https:// URL",
            },
        );
    }
    if let Some(target) = &iceberg.target_file_bytes
        && target.value < 1 << 20
    {
        problems.at(
            &target.referenced,
            "target_file_bytes must be at least 1048576 (1 MiB)",
        );
    }
    if iceberg.keep_snapshots.value == 0 {
        problems.at(
            &iceberg.keep_snapshots.referenced,
            "keep_snapshots must be at least 1",
        );
    }
    check_iceberg_key(iceberg, problems);
}

/// `mode: upsert` needs a `key` of columns that can identify a row (Iceberg's rules for
/// identifier fields: required, not floating point), and a catalog Weir can commit deletes to.
fn check_iceberg_key(iceberg: &spec::IcebergSinkSpec, problems: &mut Problems) {
    let mode = &iceberg.mode;
    let Some(key) = &iceberg.key else {
        if mode.value == spec::IcebergMode::Upsert {
            problems.at(
                &mode.referenced,
                "`mode: upsert` needs a `key`: the columns that identify a row, such as `key: [id]`",
            );
        }
        return;
    };
    if mode.value == spec::IcebergMode::Append {
        problems.at(
            &key.referenced,
            "`key` is only read with `mode: upsert`: an append table keeps every record",
        );
        return;
    }
    if iceberg.catalog.value.kind == spec::CatalogKind::Rest {
        problems.at(
            &mode.referenced,
            "`mode: upsert` needs a `sql` catalog: Weir commits row-level deletes by swapping the table's metadata itself, which it does not do through a `rest` catalog yet",
        );
    }
    if key.value.is_empty() {
        problems.at(
            &key.referenced,
            "`key` needs at least one column, such as `key: [id]`",
        );
    }
    let mut seen = HashSet::new();
    for name in &key.value {
        let Some(column) = iceberg
            .schema
            .value
            .iter()
            .find(|c| c.name.value == name.value)
        else {
            problems.at(
                &name.referenced,
                format!(
                    "key names `{}`, which is not a column of the schema",
                    name.value
                ),
            );
            continue;
        };
        if !seen.insert(&name.value) {
            problems.at(
                &name.referenced,
                format!("key names `{}` twice", name.value),
            );
        } else if matches!(
            column.kind,
            spec::ColumnType::Float32 | spec::ColumnType::Float64
        ) {
            problems.at(
                &name.referenced,
                format!(
                    "key column `{}` is `{}`: a key cannot be floating point (equal numbers need not compare equal)",
                    name.value,
                    type_name(column.kind)
                ),
            );
        } else if column.nullable {
            problems.at(
                &name.referenced,
                format!(
                    "key column `{}` may be null: declare it `nullable: false` (an Iceberg identifier field is required)",
                    name.value
                ),
            );
        }
    }
}

fn check_postgres(postgres: &spec::PostgresSinkSpec, problems: &mut Problems) {
    if let Some(url) = &postgres.url
        && let Err(e) = crate::sinks::postgres::check_url(&url.value)
    {
        problems.at(&url.referenced, e);
    }
    if let Err(e) = crate::sinks::postgres::parse_table(&postgres.table.value) {
        problems.at(&postgres.table.referenced, e);
    }
    let key = &postgres.key;
    if key.value.is_empty() {
        problems.at(
            &key.referenced,
            "a postgres sink needs at least one `key` column: rows are upserted by it",
        );
    }
    let mut seen = HashSet::new();
    for column in &key.value {
        let name = &column.value;
        if !seen.insert(name) {
            problems.at(
                &column.referenced,
                format!("key column `{name}` is named twice"),
            );
        } else if !postgres.schema.value.iter().any(|c| &c.name.value == name) {
            problems.at(
                &column.referenced,
                format!("key column `{name}` is not a column of the schema"),
            );
        }
    }
    check_columns(&postgres.schema, "postgres", problems);
    for column in &postgres.schema.value {
        if column.name.value.len() > 63 {
            problems.at(
                &column.name.referenced,
                format!(
                    "column `{}` is longer than 63 bytes, which Postgres would cut",
                    column.name.value
                ),
            );
        }
    }
}

fn check_redis(redis: &spec::RedisSinkSpec, problems: &mut Problems) {
    if let Err(e) = crate::sinks::redis::check_url(&redis.url.value) {
        problems.at(&redis.url.referenced, e);
    }
    match crate::sinks::redis::Template::parse(&redis.key.value) {
        Err(e) => problems.at(&redis.key.referenced, e),
        Ok(_) if redis.key.value.is_empty() => {
            problems.at(&redis.key.referenced, "a key template cannot be empty")
        }
        Ok(_) => {}
    }
    if let Some(value) = &redis.value
        && let Err(e) = crate::sinks::redis::Template::parse(&value.value)
    {
        problems.at(&value.referenced, e);
    }
    if let Some(ttl) = &redis.ttl
        && ttl.value.0.is_zero()
    {
        problems.at(
            &ttl.referenced,
            "ttl must be at least 1ms (leave it out for keys that do not expire)",
        );
    }
}

/// Columns of a sink that writes columns (`parquet`, `iceberg`, `postgres`).
fn check_columns(schema: &Spanned<Vec<spec::ColumnSpec>>, sink: &str, problems: &mut Problems) {
    if schema.value.is_empty() {
        problems.at(
            &schema.referenced,
            format!("a {sink} schema needs at least one column"),
        );
    }
    let mut seen = HashSet::new();
    for column in &schema.value {
        if !seen.insert(column.name.value.to_ascii_lowercase()) {
            problems.at(
                &column.name.referenced,
                format!(
                    "column `{}` appears twice (names are compared without case)",
                    column.name.value
                ),
            );
        }
        match (&column.meta, &column.from) {
            (Some(meta), Some(from)) => problems.at(
                &from.referenced,
                format!(
                    "column `{}` holds `meta: {}`, so it is not read `from` a JSON field",
                    column.name.value,
                    meta_name(meta.value)
                ),
            ),
            (Some(meta), None) if !meta.value.types().contains(&column.kind) => {
                let types: Vec<String> = meta.value.types().iter().map(|t| type_name(*t)).collect();
                problems.at(
                    &meta.referenced,
                    format!(
                        "column `{}` is `{}`, which cannot hold `meta: {}`; use {}",
                        column.name.value,
                        type_name(column.kind),
                        meta_name(meta.value),
                        types.join(" or ")
                    ),
                );
            }
            (None, _) if column.kind == spec::ColumnType::Binary => problems.at(
                &column.name.referenced,
                format!(
                    "column `{}` is `binary`, which only record metadata fills: add `meta: value` or `meta: key`",
                    column.name.value
                ),
            ),
            _ => {}
        }
    }
}

/// A column type as the pipeline file spells it.
fn type_name(t: spec::ColumnType) -> String {
    format!("{t:?}")
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            let sep = (i > 0 && c.is_ascii_uppercase()).then_some('_');
            sep.into_iter()
                .chain(std::iter::once(c.to_ascii_lowercase()))
        })
        .collect()
}

/// A metadata name as the pipeline file spells it.
fn meta_name(m: spec::Meta) -> String {
    format!("{m:?}").to_ascii_lowercase()
}

fn start_stage(
    stage: &spec::StageSpec,
    dir: &Path,
    host: &PluginHost,
    plugin: Option<&PathBuf>,
    problems: &mut Problems,
) -> Option<StageRunner> {
    let config = match &stage.config {
        None => "{}".to_string(),
        Some(c) if c.value.is_object() => c.value.to_string(),
        Some(c) if c.value.is_null() => "{}".to_string(),
        Some(c) => {
            problems.at(&c.referenced, "a stage's config is a map of settings");
            return None;
        }
    };
    let mut limits = Limits::default();
    if let Some(mib) = &stage.limits.memory_mib {
        if mib.value == 0 || mib.value > 4096 {
            problems.at(&mib.referenced, "memory_mib must be between 1 and 4096");
            return None;
        }
        limits.memory_bytes = (mib.value as usize) << 20;
    }
    if let Some(timeout) = &stage.limits.call_timeout {
        if timeout.value.0 < Duration::from_millis(10) {
            problems.at(&timeout.referenced, "call_timeout must be at least 10ms");
            return None;
        }
        limits.call_timeout = timeout.value.0;
    }
    if let Some(fuel) = &stage.limits.fuel_per_call {
        if fuel.value == 0 {
            problems.at(
                &fuel.referenced,
                "fuel_per_call must be at least 1 (leave it out for no metering)",
            );
            return None;
        }
        limits.fuel_per_call = Some(fuel.value);
    }
    let path = plugin
        .cloned()
        .unwrap_or_else(|| normalize(&dir.join(&stage.plugin.value)));
    if !path.is_file() {
        problems.at(
            &stage.plugin.referenced,
            format!(
                "plugin `{}` not found (looked at {})",
                stage.plugin.value,
                path.display()
            ),
        );
        return None;
    }
    let started = host
        .load(&path, limits.fuel_per_call.is_some())
        .and_then(|plugin| StageRunner::start(&stage.name.value, plugin, config, limits));
    match started {
        Ok(runner) => Some(runner),
        Err(e) => {
            let at = match e {
                crate::plugin::PluginError::Init { .. } => stage
                    .config
                    .as_ref()
                    .map_or(&stage.name.referenced, |c| &c.referenced),
                _ => &stage.plugin.referenced,
            };
            problems.at(at, e.to_string());
            None
        }
    }
}

fn resolve_input(
    input: &Spanned<String>,
    names: &HashMap<String, usize>,
    stages: &[Stage],
    stages_known: bool,
    problems: &mut Problems,
) -> Option<Route> {
    let text = input.value.as_str();
    match text {
        "source" => return Some(Route::Source),
        "dlq" => return Some(Route::Dlq),
        _ => {}
    }
    let (stage_name, output) = match text.split_once('.') {
        Some((stage, output)) => (stage, Some(output)),
        None => (text, None),
    };
    let Some(&stage) = names.get(stage_name) else {
        let mut known: Vec<&str> = names.keys().map(String::as_str).collect();
        known.sort();
        let stages_list = if known.is_empty() {
            "there are no stages".to_string()
        } else {
            format!("stages: {}", known.join(", "))
        };
        problems.at(
            &input.referenced,
            format!("unknown input `{text}`: expected `source`, `dlq`, a stage name or `STAGE.OUTPUT` ({stages_list})"),
        );
        return None;
    };
    let Some(output) = output else {
        return Some(Route::Stage { stage, output: 0 });
    };
    if !stages_known {
        return None; // the stage's plugin failed to load; that problem is reported already
    }
    let declared = stages[stage].runner.outputs();
    match declared.iter().position(|o| o == output) {
        Some(n) => Some(Route::Stage {
            stage,
            output: n as u32 + 1,
        }),
        None => {
            let list = if declared.is_empty() {
                "it has none".to_string()
            } else {
                format!("it has {}", declared.join(", "))
            };
            problems.at(
                &input.referenced,
                format!("stage `{stage_name}` has no output named `{output}` ({list})"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            spec::parse_duration("250ms"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(spec::parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(spec::parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(spec::parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "10", "s", "1.5s", "10 parsecs", "-1s"] {
            assert_eq!(spec::parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn plain_messages() {
        assert_eq!(
            plain_message("error: line 6 column 5: unknown field `x`\n --> a"),
            "unknown field `x`"
        );
        assert_eq!(plain_message("something else"), "something else");
    }
}
