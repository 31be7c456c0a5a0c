//! The `parquet` sink: JSON records into Parquet files under Hive-style
//! `year=YYYY/month=MM/day=DD/hour=HH/` folders (UTC, by each record's event time), through
//! `object_store`.
//!
//! A file is written as a multipart upload, so it appears under its final name only once it is
//! complete: a reader never sees half a file. Files are finished when they reach
//! `max_file_bytes` and at every checkpoint. A record that does not fit the schema is handed
//! back as a rejection (for the dead-letter output) and the rest of its batch is written.
//!
//! Columns are read from the record's JSON value, or filled from its metadata (`meta:` — raw
//! value and key bytes, topic, partition, offset, timestamp, headers); a sink whose columns are
//! all metadata never parses the value, so it keeps bytes that are not JSON at all (bronze).

use std::{collections::BTreeMap, path::Path, sync::Arc};

use arrow_array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, TimestampMillisecondArray,
};
use arrow_json::ReaderBuilder;
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use object_store::{ObjectStore, local::LocalFileSystem, path::Path as ObjectPath};
use parquet::{
    arrow::{AsyncArrowWriter, async_writer::ParquetObjectWriter},
    basic::{Compression as Codec, ZstdLevel},
    file::properties::WriterProperties,
};

use super::{Rejected, SinkError};
use crate::{
    pipeline::spec::{ColumnType, Compression, Meta, ParquetSinkSpec},
    record::Batch,
};

/// Rows per row group: bounds the memory a file in progress holds.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Default size at which a file is finished.
const DEFAULT_MAX_FILE_BYTES: u64 = 128 << 20;

/// A Parquet file being written.
struct OpenFile {
    /// Its path in the store.
    path: ObjectPath,
    /// The writer, uploading as it goes.
    writer: AsyncArrowWriter<ParquetObjectWriter>,
}

/// The sink.
pub struct ParquetSink {
    /// The folder, as an object store.
    store: Arc<dyn ObjectStore>,
    /// Where it is, for messages.
    root: String,
    /// The schema as the JSON is read (field names as in the records): the columns that are not
    /// metadata.
    read_schema: SchemaRef,
    /// Where each written column comes from: the JSON column with this index, or metadata.
    columns: Vec<Column>,
    /// The schema as written (column names as configured).
    write_schema: SchemaRef,
    /// Writer settings.
    props: WriterProperties,
    /// Files being written, by partition folder.
    open: BTreeMap<String, OpenFile>,
    /// Start of file names: pipeline name and run start, so runs never collide.
    prefix: String,
    /// Number of the next file.
    next_file: u64,
    /// Size at which a file is finished.
    max_file_bytes: u64,
    /// Files finished so far.
    pub files_written: u64,
}

/// Where a column's values come from.
enum Column {
    /// This column of the decoded JSON.
    Json(usize),
    /// The record's metadata, stored as this type.
    Meta(Meta, ColumnType),
}

fn arrow_type(t: ColumnType) -> DataType {
    match t {
        ColumnType::String => DataType::Utf8,
        ColumnType::Int32 => DataType::Int32,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float32 => DataType::Float32,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::TimestampMs => {
            DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into()))
        }
        ColumnType::TimestampUs => {
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
        }
        ColumnType::Date => DataType::Date32,
        ColumnType::Binary => DataType::Binary,
    }
}

impl ParquetSink {
    /// Opens the sink; `dir` is the folder of the pipeline file, `run` names this run's files.
    pub fn open(
        spec: &ParquetSinkSpec,
        dir: &Path,
        pipeline: &str,
        run: &str,
    ) -> Result<ParquetSink, SinkError> {
        let root = crate::pipeline::normalize(&dir.join(&spec.path.value));
        std::fs::create_dir_all(&root)
            .map_err(|e| SinkError::Io(format!("cannot create {}: {e}", root.display())))?;
        let store = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| SinkError::Io(format!("cannot open {}: {e}", root.display())))?;
        let columns = &spec.schema.value;
        let read_schema = Arc::new(Schema::new(
            columns
                .iter()
                .filter(|c| c.meta.is_none())
                .map(|c| {
                    let name = c.from.as_ref().map_or(&c.name.value, |f| &f.value);
                    Field::new(name, arrow_type(c.kind), c.nullable)
                })
                .collect::<Vec<_>>(),
        ));
        let write_schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|c| Field::new(&c.name.value, arrow_type(c.kind), c.nullable))
                .collect::<Vec<_>>(),
        ));
        let codec = match spec.compression {
            Compression::Zstd => {
                Codec::ZSTD(ZstdLevel::try_new(1).expect("1 is a valid zstd level"))
            }
            Compression::Snappy => Codec::SNAPPY,
            Compression::None => Codec::UNCOMPRESSED,
        };
        let props = WriterProperties::builder()
            .set_compression(codec)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(ParquetSink {
            store: Arc::new(store),
            root: root.display().to_string(),
            read_schema,
            columns: columns
                .iter()
                .scan(0, |json, c| {
                    Some(match &c.meta {
                        Some(meta) => Column::Meta(meta.value, c.kind),
                        None => {
                            *json += 1;
                            Column::Json(*json - 1)
                        }
                    })
                })
                .collect(),
            write_schema,
            props,
            open: BTreeMap::new(),
            prefix: format!("{pipeline}-{run}"),
            next_file: 0,
            max_file_bytes: spec
                .max_file_bytes
                .as_ref()
                .map_or(DEFAULT_MAX_FILE_BYTES, |m| m.value),
            files_written: 0,
        })
    }

    /// Where the files go.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// Writes a batch; returns the records that do not fit the schema.
    pub async fn write(&mut self, batch: &Batch) -> Result<Rejected, SinkError> {
        let mut rejected = Vec::new();
        for (partition, indices) in group_by_hour(batch) {
            let Some(rows) = self.decode(batch, &indices, &mut rejected)? else {
                continue;
            };
            let file = match self.open.get_mut(&partition) {
                Some(file) => file,
                None => {
                    let file = self.new_file(&partition)?;
                    self.open.entry(partition.clone()).or_insert(file)
                }
            };
            file.writer
                .write(&rows)
                .await
                .map_err(|e| SinkError::Io(format!("writing {}: {e}", file.path)))?;
            if (file.writer.bytes_written() + file.writer.in_progress_size()) as u64
                >= self.max_file_bytes
            {
                let file = self.open.remove(&partition).expect("file was just written");
                self.finish(file).await?;
            }
        }
        Ok(rejected)
    }

    /// Finishes every open file, making it visible.
    pub async fn checkpoint(&mut self) -> Result<(), SinkError> {
        for (_, file) in std::mem::take(&mut self.open) {
            self.finish(file).await?;
        }
        Ok(())
    }

    fn new_file(&mut self, partition: &str) -> Result<OpenFile, SinkError> {
        let path = ObjectPath::from(format!(
            "{partition}/{}-{:05}.parquet",
            self.prefix, self.next_file
        ));
        self.next_file += 1;
        let upload = ParquetObjectWriter::new(self.store.clone(), path.clone());
        let writer =
            AsyncArrowWriter::try_new(upload, self.write_schema.clone(), Some(self.props.clone()))
                .map_err(|e| SinkError::Io(format!("starting {path}: {e}")))?;
        Ok(OpenFile { path, writer })
    }

    async fn finish(&mut self, file: OpenFile) -> Result<(), SinkError> {
        file.writer
            .close()
            .await
            .map_err(|e| SinkError::Io(format!("finishing {}: {e}", file.path)))?;
        self.files_written += 1;
        Ok(())
    }

    /// Reads the given records into a record batch with the written column names. Records that
    /// do not fit are added to `rejected`; the rest are kept.
    fn decode(
        &self,
        batch: &Batch,
        indices: &[usize],
        rejected: &mut Rejected,
    ) -> Result<Option<RecordBatch>, SinkError> {
        match self.decode_all(batch, indices.iter().copied()) {
            Ok(rows) => return Ok(rows),
            Err(_) if indices.len() > 1 => {}
            Err(e) => {
                rejected.push((
                    indices[0],
                    format!("record does not fit the parquet schema: {e}"),
                ));
                return Ok(None);
            }
        }
        // Something does not fit: find out which records, one at a time.
        let mut good = Vec::with_capacity(indices.len());
        for &i in indices {
            match self.decode_all(batch, std::iter::once(i)) {
                Ok(_) => good.push(i),
                Err(e) => {
                    rejected.push((i, format!("record does not fit the parquet schema: {e}")))
                }
            }
        }
        if good.is_empty() {
            return Ok(None);
        }
        self.decode_all(batch, good.into_iter()).map_err(|e| {
            SinkError::Internal(format!("records that decoded alone failed together: {e}"))
        })
    }

    fn decode_all(
        &self,
        batch: &Batch,
        indices: impl ExactSizeIterator<Item = usize> + Clone,
    ) -> Result<Option<RecordBatch>, arrow_schema::ArrowError> {
        if indices.len() == 0 {
            return Ok(None);
        }
        let json = if self.read_schema.fields().is_empty() {
            None
        } else {
            Some(self.decode_json(batch, indices.clone())?)
        };
        let arrays = self
            .columns
            .iter()
            .map(|column| match column {
                Column::Json(j) => Ok(json
                    .as_ref()
                    .expect("JSON columns decoded")
                    .column(*j)
                    .clone()),
                Column::Meta(meta, kind) => meta_array(batch, indices.clone(), *meta, *kind),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(RecordBatch::try_new(
            self.write_schema.clone(),
            arrays,
        )?))
    }

    /// The JSON columns of the given records.
    fn decode_json(
        &self,
        batch: &Batch,
        indices: impl ExactSizeIterator<Item = usize>,
    ) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let mut decoder = ReaderBuilder::new(self.read_schema.clone())
            .with_batch_size(indices.len().max(1))
            .build_decoder()?;
        let mut count = 0;
        for i in indices {
            let value = batch.value(i);
            if !value.trim_ascii_start().starts_with(b"{") {
                return Err(arrow_schema::ArrowError::JsonError(format!(
                    "expected a JSON object at record {i}"
                )));
            }
            let consumed = decoder.decode(value)?;
            if consumed != value.len() {
                return Err(arrow_schema::ArrowError::JsonError(
                    "more than one JSON value in a record".into(),
                ));
            }
            decoder.decode(b"\n")?;
            count += 1;
        }
        let rows = decoder
            .flush()?
            .unwrap_or_else(|| RecordBatch::new_empty(self.read_schema.clone()));
        if rows.num_rows() != count {
            return Err(arrow_schema::ArrowError::JsonError(format!(
                "expected {count} rows, read {}",
                rows.num_rows()
            )));
        }
        Ok(rows)
    }
}

/// A column of record metadata for the given records (types checked when the pipeline loads).
fn meta_array(
    batch: &Batch,
    indices: impl Iterator<Item = usize>,
    meta: Meta,
    kind: ColumnType,
) -> Result<ArrayRef, arrow_schema::ArrowError> {
    let records = indices.map(|i| (i, &batch.records[i]));
    Ok(match (meta, kind) {
        (Meta::Value | Meta::Key, ColumnType::Binary) => Arc::new(BinaryArray::from_iter(
            records.map(|(i, _)| bytes_of(batch, i, meta)),
        )),
        (Meta::Value | Meta::Key, _) => Arc::new(StringArray::from_iter(
            records
                .map(|(i, _)| utf8(bytes_of(batch, i, meta)))
                .collect::<Result<Vec<_>, _>>()?,
        )),
        (Meta::Topic, _) => Arc::new(StringArray::from_iter_values(
            records.map(|_| batch.topic.as_str()),
        )),
        (Meta::Partition, ColumnType::Int32) => Arc::new(Int32Array::from_iter_values(
            records.map(|_| batch.partition),
        )),
        (Meta::Partition, _) => Arc::new(Int64Array::from_iter_values(
            records.map(|_| i64::from(batch.partition)),
        )),
        (Meta::Offset, _) => Arc::new(Int64Array::from_iter_values(records.map(|(_, r)| r.offset))),
        (Meta::Timestamp, ColumnType::TimestampMs) => Arc::new(
            TimestampMillisecondArray::from_iter_values(records.map(|(_, r)| r.timestamp_ms))
                .with_timezone("+00:00"),
        ),
        (Meta::Timestamp, ColumnType::TimestampUs) => Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                records.map(|(_, r)| r.timestamp_ms * 1000),
            )
            .with_timezone("+00:00"),
        ),
        (Meta::Timestamp, _) => Arc::new(Int64Array::from_iter_values(
            records.map(|(_, r)| r.timestamp_ms),
        )),
        (Meta::Headers, _) => Arc::new(StringArray::from_iter(records.map(|(i, _)| {
            let headers = batch.headers_of(i);
            (!headers.is_empty()).then(|| {
                let object: serde_json::Map<String, serde_json::Value> = headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.clone(),
                            String::from_utf8_lossy(&h.value).into_owned().into(),
                        )
                    })
                    .collect();
                serde_json::Value::Object(object).to_string()
            })
        }))),
    })
}

/// `bytes` as text, for a string column; bytes that are not UTF-8 make the record not fit.
fn utf8(bytes: Option<&[u8]>) -> Result<Option<&str>, arrow_schema::ArrowError> {
    bytes
        .map(|b| {
            std::str::from_utf8(b).map_err(|_| {
                arrow_schema::ArrowError::InvalidArgumentError(
                    "bytes are not UTF-8 text for a string column".into(),
                )
            })
        })
        .transpose()
}

/// The value's or the key's bytes of record `i`.
fn bytes_of(batch: &Batch, i: usize, meta: Meta) -> Option<&[u8]> {
    match meta {
        Meta::Key => batch.key(i),
        _ => Some(batch.value(i)),
    }
}

/// Groups record indices by the UTC hour of their event time, as Hive partition folders.
fn group_by_hour(batch: &Batch) -> BTreeMap<String, Vec<usize>> {
    const HOUR_MS: i64 = 3_600_000;
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut last: Option<(i64, String)> = None;
    for (i, record) in batch.records.iter().enumerate() {
        let hour = record.timestamp_ms.div_euclid(HOUR_MS);
        let folder = match &last {
            Some((h, folder)) if *h == hour => folder.clone(),
            _ => {
                let t = chrono::DateTime::from_timestamp_millis(hour * HOUR_MS).unwrap_or_default();
                let folder = t.format("year=%Y/month=%m/day=%d/hour=%H").to_string();
                last = Some((hour, folder.clone()));
                folder
            }
        };
        groups.entry(folder).or_default().push(i);
    }
    groups
}

#[cfg(test)]
mod tests {
    use arrow_array::Array;

    use super::*;

    #[test]
    fn metadata_columns_hold_bytes_text_and_headers() {
        let mut b = Batch::with_capacity("t", 2, 2, 0);
        b.push(
            Some(b"k"),
            b"not json",
            7,
            40,
            &[crate::record::header("h", b"v")],
        );
        b.push(None, &[0xff, 0x00], 8, 41, &[]);
        let binary = meta_array(&b, 0..2, Meta::Value, ColumnType::Binary).unwrap();
        let binary = binary.as_any().downcast_ref::<BinaryArray>().unwrap();
        assert_eq!(binary.value(1), [0xff, 0x00]);
        let keys = meta_array(&b, 0..2, Meta::Key, ColumnType::String).unwrap();
        let keys = keys.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((keys.value(0), keys.is_null(1)), ("k", true));
        let headers = meta_array(&b, 0..2, Meta::Headers, ColumnType::String).unwrap();
        let headers = headers.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(
            (headers.value(0), headers.is_null(1)),
            (r#"{"h":"v"}"#, true)
        );
        let partition = meta_array(&b, 0..2, Meta::Partition, ColumnType::Int64).unwrap();
        assert_eq!(
            partition
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(1),
            2
        );
        // Bytes that are not UTF-8 do not fit a string column; the record is rejected.
        assert!(meta_array(&b, 1..2, Meta::Value, ColumnType::String).is_err());
        assert!(meta_array(&b, 0..1, Meta::Value, ColumnType::String).is_ok());
    }

    #[test]
    fn records_are_grouped_by_utc_hour() {
        let mut b = Batch::with_capacity("t", 0, 3, 0);
        b.push(None, b"{}", 1_700_000_000_000, 0, &[]); // 2023-11-14 22:13 UTC
        b.push(None, b"{}", 1_700_003_600_000, 1, &[]); // 23:13
        b.push(None, b"{}", 1_700_000_000_001, 2, &[]);
        let groups = group_by_hour(&b);
        assert_eq!(groups["year=2023/month=11/day=14/hour=22"], vec![0, 2]);
        assert_eq!(groups["year=2023/month=11/day=14/hour=23"], vec![1]);
    }
}
