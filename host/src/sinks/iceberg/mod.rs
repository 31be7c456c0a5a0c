//! The `iceberg` sink: records into an Apache Iceberg table, one snapshot per checkpoint.
//!
//! Rows are written into Parquet data files under the table's `data/` folder, split by the
//! table's partition spec, rolling at `target_file_bytes`; at a checkpoint's barrier the files
//! are finished (*pre-commit*: durable, not yet part of the table) and described in the
//! manifest. The commit is a fast append whose snapshot summary carries `weir.pipeline`,
//! `weir.checkpoint` and `weir.offsets`. Before appending, the committer looks for its checkpoint
//! in the table's recent snapshots, so a commit repeated on recovery is a no-op.
//!
//! Commit time stays flat as the table ages: the checkpoint id is the idempotency key, so the
//! crate's duplicate-file check (which opens every manifest of the table on every commit) is off;
//! with a SQL catalog manifests are merged in tiers of [`MERGE_AT`] (so the manifest list a
//! commit carries forward stays short, and no commit rewrites the whole table's file list); and
//! snapshots beyond `keep_snapshots` are expired, with the manifest lists only they used.
//!
//! Data files are named `<pipeline>-c<checkpoint>-<run>-<n>.parquet`; on recovery, files of
//! checkpoints after the newest manifest are deleted (no snapshot can reference them).
//!
//! With `mode: upsert` the table keeps one row per key: see [`upsert`] for the writer (position
//! deletes, the key index) and `snapshot.rs` for the commit, a snapshot Weir builds itself
//! because the crate has no action that commits delete files.

pub mod io;
mod snapshot;
pub mod upsert;

use std::{collections::HashMap, sync::Arc};

use arrow_array::{ArrayRef, RecordBatch, new_null_array};
use arrow_schema::SchemaRef as ArrowSchemaRef;
use futures::TryStreamExt;
use iceberg::{
    Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent,
    arrow::{RecordBatchPartitionSplitter, schema_to_arrow_schema},
    spec::{
        DataFile, DataFileFormat, FormatVersion, NestedField, PrimitiveType, Schema, TableMetadata,
        Transform, Type, UnboundPartitionSpec, deserialize_data_file_from_json,
        serialize_data_file_to_json,
    },
    table::Table,
    transaction::{ApplyTransactionAction, Transaction},
    writer::{
        base_writer::data_file_writer::DataFileWriterBuilder,
        file_writer::{
            ParquetWriterBuilder,
            location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator},
            rolling_writer::RollingFileWriterBuilder,
        },
        partitioning::{
            PartitioningWriter, fanout_writer::FanoutWriter,
            unpartitioned_writer::UnpartitionedWriter,
        },
    },
};
use object_store::ObjectStoreExt;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::{OpenContext, Rejected, SinkError, rows::RowEncoder};
use crate::{
    checkpoint::{Manifest, Pending},
    pipeline::spec::{
        CatalogKind, CatalogSpec, ColumnType, Compression, IcebergMode, IcebergSinkSpec,
    },
    record::Routed,
};

/// Default size at which a data file is finished.
const DEFAULT_TARGET_FILE_BYTES: u64 = 128 << 20;

/// Snapshot summary keys.
const PIPELINE_KEY: &str = "weir.pipeline";
const CHECKPOINT_KEY: &str = "weir.checkpoint";
const OFFSETS_KEY: &str = "weir.offsets";

type Builder =
    DataFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

/// The writer of one checkpoint's files.
enum Writer {
    /// One file (at a time) per partition.
    Partitioned(Box<FanoutWriter<Builder>>),
    /// An unpartitioned table.
    Plain(Box<UnpartitionedWriter<Builder>>),
}

fn iceberg_error(what: impl std::fmt::Display) -> impl FnOnce(iceberg::Error) -> SinkError {
    move |e| SinkError::Io(format!("{what}: {e}"))
}

/// The sink.
pub struct IcebergSink {
    /// The table as it was opened (its schema, spec and file IO).
    table: Table,
    /// `namespace.name`, for messages.
    name: String,
    /// Records to rows, in the pipeline's column order.
    rows: RowEncoder,
    /// The table's columns as Arrow (with field ids).
    arrow_schema: ArrowSchemaRef,
    /// For each table column, the pipeline column that fills it (`None`: nulls).
    mapping: Vec<Option<usize>>,
    /// Splits rows by partition (`None`: unpartitioned).
    splitter: Option<RecordBatchPartitionSplitter>,
    /// Files of the current checkpoint being written.
    writer: Option<Writer>,
    /// Parquet settings.
    props: WriterProperties,
    /// Size at which a file is finished.
    target_file_bytes: u64,
    /// The pipeline, for file names.
    pipeline: String,
    /// This run, for file names.
    run: String,
    /// The checkpoint the files being written belong to.
    epoch: u64,
    /// Files finished so far.
    files_written: u64,
    /// `mode: upsert`: the current checkpoint's changes and the key index (`None`: append).
    upserts: Option<Box<upsert::Upserts>>,
}

/// A checkpoint's pending commit: its data files, as the Iceberg spec's JSON.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IcebergCommit {
    /// Partition spec the files were written with.
    pub spec_id: i32,
    /// The data files.
    pub files: Vec<String>,
    /// Position-delete files (`mode: upsert`), committed in the same snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deletes: Vec<String>,
}

/// Opens the table (creating it if it is missing) and returns the sink and its committer.
pub async fn open(
    spec: &IcebergSinkSpec,
    cx: &OpenContext<'_>,
) -> Result<(IcebergSink, IcebergCommitter), SinkError> {
    let catalog = catalog(&spec.catalog.value, cx).await?;
    let ident = table_ident(&spec.table.value).map_err(SinkError::Io)?;
    let name = spec.table.value.clone();
    let exists = catalog
        .table_exists(&ident)
        .await
        .map_err(iceberg_error(format!("looking up table {name}")))?;
    let table = if exists {
        catalog
            .load_table(&ident)
            .await
            .map_err(iceberg_error(format!("loading table {name}")))?
    } else {
        create_table(catalog.as_ref(), &ident, spec).await?
    };
    let metadata = table.metadata();
    let schema = metadata.current_schema().clone();
    let columns = &spec.schema.value;
    let mut mapping = Vec::new();
    for field in schema.as_struct().fields() {
        let index = columns.iter().position(|c| c.name.value == field.name);
        if index.is_none() && field.required {
            return Err(SinkError::Io(format!(
                "table {name} requires column `{}`, which the sink's schema does not have",
                field.name
            )));
        }
        mapping.push(index);
    }
    for column in columns {
        match schema.field_by_name(&column.name.value) {
            None => {
                return Err(SinkError::Io(format!(
                    "table {name} has no column `{}`",
                    column.name.value
                )));
            }
            Some(field) if *field.field_type != Type::Primitive(primitive(column.kind)) => {
                return Err(SinkError::Io(format!(
                    "column `{}` is {} in table {name}, but {:?} in the sink's schema",
                    column.name.value, field.field_type, column.kind
                )));
            }
            Some(_) => {}
        }
    }
    let arrow_schema = Arc::new(
        schema_to_arrow_schema(&schema).map_err(iceberg_error("the table's Arrow schema"))?,
    );
    let partition_spec = metadata.default_partition_spec().clone();
    let splitter = if partition_spec.is_unpartitioned() {
        None
    } else {
        Some(
            RecordBatchPartitionSplitter::try_new_with_computed_values(
                schema.clone(),
                partition_spec,
            )
            .map_err(iceberg_error("the table's partition spec"))?,
        )
    };
    let props = super::rows::writer_properties(spec.compression);
    let sql = match spec.catalog.value.kind {
        CatalogKind::Sql => Some(sql_row(&spec.catalog.value, cx).await?),
        CatalogKind::Rest => None,
    };
    let upserts = match (spec.mode.value, &spec.key) {
        (IcebergMode::Upsert, Some(key)) => {
            let key: Vec<String> = key.value.iter().map(|k| k.value.clone()).collect();
            Some(Box::new(upsert::Upserts::new(
                &key,
                columns,
                &table,
                catalog.clone(),
                ident.clone(),
                io::ObjectStorage::new(cx.s3.clone()),
            )?))
        }
        (IcebergMode::Upsert, None) => {
            return Err(SinkError::Internal("an upsert sink without a key".into()));
        }
        (IcebergMode::Append, _) => None,
    };
    let committer = IcebergCommitter {
        catalog,
        sql,
        ident,
        name: name.clone(),
        keep_snapshots: spec.keep_snapshots.value.max(1),
        storage: io::ObjectStorage::new(cx.s3.clone()),
        upsert: upserts.is_some(),
    };
    let sink = IcebergSink {
        table,
        name,
        rows: RowEncoder::new(columns),
        arrow_schema,
        mapping,
        splitter,
        writer: None,
        props,
        target_file_bytes: spec
            .target_file_bytes
            .as_ref()
            .map_or(DEFAULT_TARGET_FILE_BYTES, |t| t.value),
        pipeline: cx.pipeline.into(),
        run: cx.run.into(),
        epoch: cx.epoch,
        files_written: 0,
        upserts,
    };
    Ok((sink, committer))
}

/// The catalog of `spec`, with the host's object storage for the tables' files.
async fn catalog(spec: &CatalogSpec, cx: &OpenContext<'_>) -> Result<Arc<dyn Catalog>, SinkError> {
    let factory = Arc::new(io::ObjectStorageFactory { s3: cx.s3.clone() });
    let mut props: HashMap<String, String> = spec.properties.value.clone().into_iter().collect();
    let uri = &spec.uri.value;
    let failed = |e: iceberg::Error| SinkError::Io(format!("catalog {uri}: {e}"));
    Ok(match spec.kind {
        CatalogKind::Sql => {
            if let Some(path) = uri.strip_prefix("sqlite:") {
                let path = crate::pipeline::normalize(&cx.dir.join(path.trim_start_matches("//")));
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        SinkError::Io(format!("cannot create {}: {e}", parent.display()))
                    })?;
                }
            }
            let (uri, dollar) = sql_uri(uri, cx.dir);
            if !dollar {
                sqlite_wal(&uri).await?;
            }
            let style = if dollar { "DollarNumeric" } else { "QMark" };
            let warehouse = spec.warehouse.as_ref().map_or("", |w| w.value.as_str());
            props.insert("uri".into(), uri);
            props.insert("warehouse".into(), warehouse_url(warehouse, cx)?);
            props.insert("sql_bind_style".into(), style.into());
            let catalog = iceberg_catalog_sql::SqlCatalogBuilder::default()
                .with_storage_factory(factory)
                .load(&spec.name.value, props)
                .await
                .map_err(failed)?;
            Arc::new(catalog)
        }
        CatalogKind::Rest => {
            props.insert("uri".into(), uri.clone());
            if let Some(w) = &spec.warehouse {
                props.insert("warehouse".into(), w.value.clone());
            }
            let catalog = iceberg_catalog_rest::RestCatalogBuilder::default()
                .with_storage_factory(factory)
                .load(&spec.name.value, props)
                .await
                .map_err(failed)?;
            Arc::new(catalog)
        }
    })
}

/// Puts a SQLite catalog in write-ahead-log mode (stored in the file, so every connection, the
/// catalog's own included, uses it): a commit appends to `catalog.db-wal` instead of creating and
/// deleting a rollback journal, and readers such as pyiceberg read while Weir commits. On ext4,
/// creating a file costs more the more files were deleted in the last half minute, so a journal
/// created and deleted at every commit made commits slower the faster they came.
async fn sqlite_wal(uri: &str) -> Result<(), SinkError> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let failed = |e: sqlx::Error| SinkError::Io(format!("catalog {uri}: {e}"));
    let mut conn = sqlx::AnyConnection::connect(uri).await.map_err(failed)?;
    sqlx::query("PRAGMA journal_mode = WAL")
        .execute(&mut conn)
        .await
        .map_err(failed)?;
    conn.close().await.map_err(failed)
}

/// The SQL catalog's database URI, as sqlx takes it, and whether it numbers parameters.
fn sql_uri(uri: &str, dir: &std::path::Path) -> (String, bool) {
    match uri.strip_prefix("sqlite:") {
        Some(path) => {
            let path = crate::pipeline::normalize(&dir.join(path.trim_start_matches("//")));
            (format!("sqlite:{}?mode=rwc", path.display()), false)
        }
        None => (uri.to_string(), true),
    }
}

async fn sql_row(spec: &CatalogSpec, cx: &OpenContext<'_>) -> Result<SqlRow, SinkError> {
    let (uri, dollar) = sql_uri(&spec.uri.value, cx.dir);
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&uri)
        .await
        .map_err(|e| SinkError::Io(format!("catalog {}: {e}", spec.uri.value)))?;
    Ok(SqlRow {
        pool,
        dollar,
        catalog: spec.name.value.clone(),
    })
}

/// A warehouse location as the catalog wants it: `s3://…` as it is, a local folder as an
/// absolute `file://` URL (created).
fn warehouse_url(warehouse: &str, cx: &OpenContext<'_>) -> Result<String, SinkError> {
    if crate::storage::is_s3(warehouse) {
        return Ok(warehouse.trim_end_matches('/').to_string());
    }
    let location = crate::storage::open(warehouse, cx.dir, cx.s3).map_err(SinkError::Io)?;
    Ok(location.url)
}

/// `a.b.name` → namespace `a.b`, table `name`.
pub fn table_ident(table: &str) -> Result<TableIdent, String> {
    let parts: Vec<String> = table.split('.').map(str::to_string).collect();
    if parts.len() < 2 || parts.iter().any(String::is_empty) {
        return Err(format!(
            "table `{table}`: expected NAMESPACE.NAME, such as `bronze.trades`"
        ));
    }
    let (name, namespace) = parts.split_last().expect("two parts or more");
    let namespace = NamespaceIdent::from_vec(namespace.to_vec()).map_err(|e| e.to_string())?;
    Ok(TableIdent::new(namespace, name.clone()))
}

/// The Iceberg type a column type is stored as (timestamps as microseconds in UTC).
fn primitive(kind: ColumnType) -> PrimitiveType {
    match kind {
        ColumnType::String => PrimitiveType::String,
        ColumnType::Int32 => PrimitiveType::Int,
        ColumnType::Int64 => PrimitiveType::Long,
        ColumnType::Float32 => PrimitiveType::Float,
        ColumnType::Float64 => PrimitiveType::Double,
        ColumnType::Boolean => PrimitiveType::Boolean,
        ColumnType::TimestampMs | ColumnType::TimestampUs => PrimitiveType::Timestamptz,
        ColumnType::Date => PrimitiveType::Date,
        ColumnType::Binary => PrimitiveType::Binary,
    }
}

/// `day(ts)` → (`ts`, day); `symbol` → (`symbol`, identity).
pub fn parse_partition(text: &str) -> Result<(String, Transform), String> {
    let text = text.trim();
    let Some((transform, rest)) = text.split_once('(') else {
        return Ok((text.to_string(), Transform::Identity));
    };
    let column = rest
        .strip_suffix(')')
        .ok_or_else(|| format!("`{text}`: expected TRANSFORM(COLUMN)"))?
        .trim();
    let transform = match transform.trim() {
        "identity" => Transform::Identity,
        "year" => Transform::Year,
        "month" => Transform::Month,
        "day" => Transform::Day,
        "hour" => Transform::Hour,
        other => {
            return Err(format!(
                "`{other}` is not a partition transform: expected identity, year, month, day or hour"
            ));
        }
    };
    Ok((column.to_string(), transform))
}

async fn create_table(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    spec: &IcebergSinkSpec,
) -> Result<Table, SinkError> {
    let name = &spec.table.value;
    let fields = spec
        .schema
        .value
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let kind = Type::Primitive(primitive(c.kind));
            let id = i as i32 + 1;
            Arc::new(if c.nullable {
                NestedField::optional(id, &c.name.value, kind)
            } else {
                NestedField::required(id, &c.name.value, kind)
            })
        })
        .collect::<Vec<_>>();
    // An upsert table names its key as identifier fields, so other writers and readers know it.
    let key_ids: Vec<i32> = match (spec.mode.value, &spec.key) {
        (IcebergMode::Upsert, Some(key)) => key
            .value
            .iter()
            .filter_map(|k| fields.iter().find(|f| f.name == k.value).map(|f| f.id))
            .collect(),
        _ => Vec::new(),
    };
    let schema = Schema::builder()
        .with_fields(fields)
        .with_identifier_field_ids(key_ids)
        .build()
        .map_err(iceberg_error(format!("the schema of table {name}")))?;
    let mut partitions = UnboundPartitionSpec::builder();
    for entry in &spec.partition_by {
        let (column, transform) = parse_partition(&entry.value).map_err(SinkError::Io)?;
        let field = schema.field_by_name(&column).ok_or_else(|| {
            SinkError::Io(format!(
                "partition_by names `{column}`, which is not a column"
            ))
        })?;
        let part_name = match transform {
            Transform::Identity => column.clone(),
            t => format!("{column}_{}", t.to_string().to_lowercase()),
        };
        partitions = partitions
            .add_partition_field(field.id, part_name, transform)
            .map_err(iceberg_error(format!("partition `{}`", entry.value)))?;
    }
    let namespace = ident.namespace();
    if !catalog
        .namespace_exists(namespace)
        .await
        .map_err(iceberg_error("looking up the namespace"))?
    {
        match catalog.create_namespace(namespace, HashMap::new()).await {
            Ok(_) => {}
            // Another process made it meanwhile.
            Err(e) if e.kind() == iceberg::ErrorKind::NamespaceAlreadyExists => {}
            Err(e) => return Err(iceberg_error("creating the namespace")(e)),
        }
    }
    let codec = match spec.compression {
        Compression::Zstd => "zstd",
        Compression::Snappy => "snappy",
        Compression::None => "uncompressed",
    };
    let creation = TableCreation::builder()
        .name(ident.name().to_string())
        .schema(schema)
        .format_version(FormatVersion::V2)
        .partition_spec(partitions.build())
        .properties([(
            "write.parquet.compression-codec".to_string(),
            codec.to_string(),
        )])
        .build();
    tracing::info!(table = %name, "creating the table");
    catalog
        .create_table(namespace, creation)
        .await
        .map_err(iceberg_error(format!("creating table {name}")))
}

impl IcebergSink {
    /// The table, for the summary.
    pub fn location(&self) -> String {
        format!(
            "iceberg table {} at {} ({} files)",
            self.name,
            self.table.metadata().location(),
            self.files_written
        )
    }

    /// Writes a batch; returns the records that do not fit the table.
    pub async fn write(&mut self, routed: Routed<'_>) -> Result<Rejected, SinkError> {
        if self.upserts.is_some() {
            return self.write_changes(routed);
        }
        let mut rejected = Vec::new();
        let all: Vec<usize> = (0..routed.batch.len()).collect();
        let Some(rows) = self.rows.decode(routed, &all, &mut rejected)? else {
            return Ok(rejected);
        };
        let rows = self.to_table(&rows)?;
        let writer = match &mut self.writer {
            Some(writer) => writer,
            None => {
                let writer = self.new_writer()?;
                self.writer.insert(writer)
            }
        };
        let failed = |e: iceberg::Error| SinkError::Io(format!("writing to {}: {e}", self.name));
        match (writer, &self.splitter) {
            (Writer::Partitioned(w), Some(splitter)) => {
                for (key, part) in splitter.split(&rows).map_err(failed)? {
                    w.write(key, part).await.map_err(failed)?;
                }
            }
            (Writer::Plain(w), _) => w.write(rows).await.map_err(failed)?,
            (Writer::Partitioned(_), None) => {
                return Err(SinkError::Internal(
                    "a partitioned writer without a spec".into(),
                ));
            }
        }
        crate::faults::reached("data-file");
        Ok(rejected)
    }

    /// `mode: upsert`: notes each record's change of its key's row (written at the barrier).
    fn write_changes(&mut self, routed: Routed<'_>) -> Result<Rejected, SinkError> {
        let batch = routed.batch;
        let mut rejected = Vec::new();
        let (removes, puts): (Vec<usize>, Vec<usize>) =
            (0..batch.len()).partition(|&i| super::is_delete(batch, i));
        let upserts = match self.rows.decode(routed, &puts, &mut rejected)? {
            Some(rows) => Some(self.to_table(&rows)?),
            None => None,
        };
        let changes = self
            .upserts
            .as_mut()
            .ok_or_else(|| SinkError::Internal("upsert state missing".into()))?;
        let deletes = changes.decode_keys(batch, &removes, &mut rejected)?;
        changes.apply((&puts, upserts), (&removes, deletes), &mut rejected)?;
        crate::faults::reached("data-file");
        Ok(rejected)
    }

    /// Rows in the pipeline's columns → rows in the table's columns and types.
    fn to_table(&self, rows: &RecordBatch) -> Result<RecordBatch, SinkError> {
        let columns = self
            .arrow_schema
            .fields()
            .iter()
            .zip(&self.mapping)
            .map(|(field, source)| match source {
                Some(i) => arrow_cast::cast(rows.column(*i), field.data_type()),
                None => Ok(new_null_array(field.data_type(), rows.num_rows())),
            })
            .collect::<Result<Vec<ArrayRef>, _>>()
            .map_err(|e| SinkError::Internal(format!("converting rows for {}: {e}", self.name)))?;
        RecordBatch::try_new(self.arrow_schema.clone(), columns)
            .map_err(|e| SinkError::Internal(format!("rows for {}: {e}", self.name)))
    }

    fn new_writer(&self) -> Result<Writer, SinkError> {
        let metadata = self.table.metadata();
        let parquet =
            ParquetWriterBuilder::new(self.props.clone(), metadata.current_schema().clone());
        let names = DefaultFileNameGenerator::new(
            format!("{}-c{}-{}", self.pipeline, self.epoch, self.run),
            None,
            DataFileFormat::Parquet,
        );
        let locations = DefaultLocationGenerator::new(metadata)
            .map_err(iceberg_error("the table's data location"))?;
        let rolling = RollingFileWriterBuilder::new(
            parquet,
            self.target_file_bytes as usize,
            self.table.file_io().clone(),
            locations,
            names,
        );
        let builder = DataFileWriterBuilder::new(rolling);
        Ok(match self.splitter {
            Some(_) => Writer::Partitioned(Box::new(FanoutWriter::new(builder))),
            None => Writer::Plain(Box::new(UnpartitionedWriter::new(builder))),
        })
    }

    /// Finishes the checkpoint's data files (and, upserting, writes its rows and position
    /// deletes); returns them for the manifest.
    pub async fn pre_commit(&mut self, id: u64) -> Result<Pending, SinkError> {
        let failed =
            |e: iceberg::Error| SinkError::Io(format!("finishing files of {}: {e}", self.name));
        let (files, deletes): (Vec<DataFile>, Vec<DataFile>) = match &mut self.upserts {
            Some(upserts) => {
                let out = upsert::Output {
                    table: &self.table,
                    props: &self.props,
                    target_file_bytes: self.target_file_bytes,
                    prefix: format!("{}-c{id}-{}", self.pipeline, self.run),
                    splitter: self.splitter.as_ref(),
                };
                upserts.pre_commit(&out).await?
            }
            None => match self.writer.take() {
                Some(Writer::Partitioned(w)) => (w.close().await.map_err(failed)?, Vec::new()),
                Some(Writer::Plain(w)) => (w.close().await.map_err(failed)?, Vec::new()),
                None => (Vec::new(), Vec::new()),
            },
        };
        self.epoch = id + 1;
        self.files_written += (files.len() + deletes.len()) as u64;
        let metadata = self.table.metadata();
        let partition_type = metadata.default_partition_type();
        let bytes = files
            .iter()
            .chain(&deletes)
            .map(DataFile::file_size_in_bytes)
            .sum();
        let count = (files.len() + deletes.len()) as u64;
        let describe = |files: Vec<DataFile>| {
            files
                .into_iter()
                .map(|f| serialize_data_file_to_json(f, partition_type, FormatVersion::V2))
                .collect::<Result<Vec<_>, _>>()
                .map_err(iceberg_error("describing data files"))
        };
        let commit = IcebergCommit {
            spec_id: metadata.default_partition_spec_id(),
            files: describe(files)?,
            deletes: describe(deletes)?,
        };
        Ok(Pending {
            commit: Some(
                serde_json::to_value(&commit).map_err(|e| SinkError::Internal(e.to_string()))?,
            ),
            files: count,
            bytes,
        })
    }
}

/// How many manifests of one tier (about the same file count) are merged into one.
const MERGE_AT: usize = 16;

/// A SQL catalog's table row, for the commits the crate has no action for (merging manifests,
/// upserts' row deltas): Weir writes the new metadata file itself and swaps the row's location,
/// as the catalog does.
struct SqlRow {
    pool: sqlx::AnyPool,
    /// Postgres numbers its parameters (`$1`); SQLite takes `?`.
    dollar: bool,
    /// The catalog's name, the first column of the row's key.
    catalog: String,
}

/// Commits an Iceberg sink's checkpoints.
pub struct IcebergCommitter {
    catalog: Arc<dyn Catalog>,
    /// The SQL catalog's row, for merging manifests and row deltas (`None`: a REST catalog).
    sql: Option<SqlRow>,
    ident: TableIdent,
    /// `namespace.name`, for messages.
    name: String,
    /// Snapshots kept.
    keep_snapshots: usize,
    /// For listing and deleting files.
    storage: io::ObjectStorage,
    /// `mode: upsert`: checkpoints are committed as row deltas (`snapshot.rs`).
    upsert: bool,
}

/// Whether checkpoint `id` of `pipeline` is in the current snapshot's lineage (checked back to
/// the first snapshot of the pipeline with an older checkpoint: ids only grow).
pub fn is_committed(metadata: &TableMetadata, pipeline: &str, id: u64) -> bool {
    let mut snapshot = metadata.current_snapshot();
    while let Some(s) = snapshot {
        let props = &s.summary().additional_properties;
        if props.get(PIPELINE_KEY).map(String::as_str) == Some(pipeline)
            && let Some(c) = props
                .get(CHECKPOINT_KEY)
                .and_then(|c| c.parse::<u64>().ok())
        {
            if c == id {
                return true;
            }
            if c < id {
                return false;
            }
        }
        snapshot = s
            .parent_snapshot_id()
            .and_then(|p| metadata.snapshot_by_id(p));
    }
    false
}

/// Attempts at a commit whose outcome was unknown or that conflicted past the crate's retries.
const COMMIT_ATTEMPTS: u32 = 5;

impl IcebergCommitter {
    /// Appends checkpoint `manifest.checkpoint`'s files, unless the table has them already.
    pub async fn commit(
        &mut self,
        manifest: &Manifest,
        pending: &serde_json::Value,
    ) -> Result<(), SinkError> {
        let commit: IcebergCommit = serde_json::from_value(pending.clone())
            .map_err(|e| SinkError::Internal(e.to_string()))?;
        if commit.files.is_empty() && commit.deletes.is_empty() {
            return Ok(());
        }
        let (pipeline, id) = (manifest.pipeline.as_str(), manifest.checkpoint);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_commit(manifest, &commit).await {
                Ok(table) => {
                    let table = self.merge_manifests(table).await?;
                    self.expire(table).await?;
                    return Ok(());
                }
                Err(e) if attempt < COMMIT_ATTEMPTS => {
                    tracing::warn!(table = %self.name, checkpoint = id, pipeline, attempt, "commit failed, retrying: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt: reload, check, append. Returns the table after the commit.
    async fn try_commit(
        &self,
        manifest: &Manifest,
        commit: &IcebergCommit,
    ) -> Result<Option<Table>, SinkError> {
        let (pipeline, id) = (manifest.pipeline.as_str(), manifest.checkpoint);
        let table = self
            .catalog
            .load_table(&self.ident)
            .await
            .map_err(iceberg_error(format!("loading table {}", self.name)))?;
        let metadata = table.metadata();
        if is_committed(metadata, pipeline, id) {
            tracing::info!(table = %self.name, checkpoint = id, "already committed");
            return Ok(None);
        }
        let offsets: Vec<String> = manifest
            .offsets
            .iter()
            .map(|o| format!("{}/{}:{}", o.topic, o.partition, o.offset))
            .collect();
        let properties = HashMap::from([
            (PIPELINE_KEY.to_string(), pipeline.to_string()),
            (CHECKPOINT_KEY.to_string(), id.to_string()),
            (OFFSETS_KEY.to_string(), offsets.join(",")),
        ]);
        // A manifest written by an upsert run holds deletes even if the sink appends now.
        if self.upsert || !commit.deletes.is_empty() {
            let started = std::time::Instant::now();
            let table = self.commit_row_delta(&table, properties, commit).await?;
            tracing::debug!(
                table = %self.name,
                checkpoint = id,
                files = commit.files.len(),
                deletes = commit.deletes.len(),
                ms = started.elapsed().as_millis() as u64,
                "committed row changes"
            );
            return Ok(Some(table));
        }
        let partition_type = metadata.default_partition_type();
        let schema = metadata.current_schema();
        let files = commit
            .files
            .iter()
            .map(|f| deserialize_data_file_from_json(f, commit.spec_id, partition_type, schema))
            .collect::<Result<Vec<_>, _>>()
            .map_err(iceberg_error("reading the manifest's data files"))?;
        let tx = Transaction::new(&table);
        let tx = tx
            .fast_append()
            .with_check_duplicate(false)
            .set_snapshot_properties(properties)
            .add_data_files(files)
            .apply(tx)
            .map_err(iceberg_error("preparing the commit"))?;
        let table = tx
            .commit(self.catalog.as_ref())
            .await
            .map_err(iceberg_error(format!("committing to {}", self.name)))?;
        Ok(Some(table))
    }

    /// Expires snapshots beyond `keep_snapshots` (in batches, not at every commit) and deletes
    /// the manifest lists only they used. Data files, delete files and manifests stay: the
    /// current snapshot still uses them (Weir never removes a file from the table).
    async fn expire(&self, table: Option<Table>) -> Result<(), SinkError> {
        let Some(table) = table else { return Ok(()) };
        let count = table.metadata().snapshots().len();
        let slack = (self.keep_snapshots / 10).max(10);
        if count <= self.keep_snapshots + slack {
            return Ok(());
        }
        let before: Vec<(i64, String)> = table
            .metadata()
            .snapshots()
            .map(|s| (s.snapshot_id(), s.manifest_list().to_string()))
            .collect();
        let tx = Transaction::new(&table);
        let tx = tx
            .expire_snapshots()
            .retain_last(self.keep_snapshots)
            .expire_older_than_ms(chrono::Utc::now().timestamp_millis())
            .apply(tx)
            .map_err(iceberg_error("preparing snapshot expiry"))?;
        let table = tx
            .commit(self.catalog.as_ref())
            .await
            .map_err(iceberg_error(format!(
                "expiring snapshots of {}",
                self.name
            )))?;
        let kept: std::collections::HashSet<i64> = table
            .metadata()
            .snapshots()
            .map(|s| s.snapshot_id())
            .collect();
        let mut removed = 0;
        for (id, list) in before {
            if !kept.contains(&id) {
                iceberg::io::Storage::delete(&self.storage, &list)
                    .await
                    .map_err(iceberg_error("deleting an expired manifest list"))?;
                removed += 1;
            }
        }
        tracing::debug!(table = %self.name, removed, "expired snapshots");
        Ok(())
    }

    /// Deletes data files of `pipeline` from checkpoints after `committed` (pre-committed by a
    /// run that stopped before their manifest). Returns how many.
    pub async fn clean(&mut self, pipeline: &str, committed: u64) -> Result<usize, SinkError> {
        let table = self
            .catalog
            .load_table(&self.ident)
            .await
            .map_err(iceberg_error(format!("loading table {}", self.name)))?;
        let data = format!("{}/data", table.metadata().location().trim_end_matches('/'));
        let (store, prefix) = self
            .storage
            .resolve(&data)
            .map_err(iceberg_error("the table's data folder"))?;
        let objects: Vec<_> = store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| SinkError::Io(format!("listing {data}: {e}")))?;
        let mut removed = 0;
        for object in objects {
            let orphan = object
                .location
                .filename()
                .and_then(|n| checkpoint_of(n, pipeline))
                .is_some_and(|c| c > committed);
            if orphan {
                store
                    .delete(&object.location)
                    .await
                    .map_err(|e| SinkError::Io(format!("deleting {}: {e}", object.location)))?;
                removed += 1;
            }
        }
        if let Some(local) = data.strip_prefix("file://") {
            removed += crate::storage::remove_local_staging(std::path::Path::new(local))
                .map_err(|e| SinkError::Io(format!("deleting interrupted uploads: {e}")))?;
        }
        Ok(removed)
    }
}

/// The checkpoint a data file of `pipeline` belongs to, from its name.
fn checkpoint_of(file: &str, pipeline: &str) -> Option<u64> {
    let rest = file.strip_prefix(pipeline)?.strip_prefix("-c")?;
    let digits = rest.split('-').next()?;
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_entries_parse() {
        assert_eq!(
            parse_partition("day(ts)").unwrap(),
            ("ts".into(), Transform::Day)
        );
        assert_eq!(
            parse_partition("symbol").unwrap(),
            ("symbol".into(), Transform::Identity)
        );
        assert!(parse_partition("week(ts)").is_err());
        assert!(parse_partition("day(ts").is_err());
    }

    #[test]
    fn table_names_need_a_namespace() {
        let t = table_ident("a.b.trades").unwrap();
        assert_eq!(t.name(), "trades");
        assert!(table_ident("trades").is_err());
        assert!(table_ident("a..b").is_err());
    }

    #[test]
    fn file_names_say_their_checkpoint() {
        assert_eq!(
            checkpoint_of("bronze-c12-20261121T1-00003.parquet", "bronze"),
            Some(12)
        );
        assert_eq!(checkpoint_of("other-c12-x.parquet", "bronze"), None);
        assert_eq!(checkpoint_of("bronze-x.parquet", "bronze"), None);
    }
}
