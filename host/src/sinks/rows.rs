//! Records into Arrow rows, for the sinks that write columns (`parquet`, `iceberg`, `postgres`).
//!
//! Columns are read from the record's JSON value, or filled from its metadata (`meta:` — raw
//! value and key bytes, topic, partition, offset, timestamp, headers); an encoder whose columns
//! are all metadata never parses the value, so it keeps bytes that are not JSON at all (bronze).
//! A record that does not fit is handed back as a rejection, and the rest are kept.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, TimestampMillisecondArray,
};
use arrow_json::ReaderBuilder;
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::{Rejected, SinkError};
use crate::{
    pipeline::spec::{ColumnSpec, ColumnType, Meta},
    record::{Batch, Routed},
};

/// Rows per row group: bounds the memory a file in progress holds.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Parquet writer settings of the sinks that write columns: the codec (zstd at level 1 by
/// default), row groups of [`ROW_GROUP_ROWS`], and Weir as the writer.
pub fn writer_properties(
    compression: crate::pipeline::spec::Compression,
) -> parquet::file::properties::WriterProperties {
    use crate::pipeline::spec::Compression;
    use parquet::basic::{Compression as Codec, ZstdLevel};
    let codec = match compression {
        Compression::Zstd => Codec::ZSTD(ZstdLevel::try_new(1).expect("1 is a valid zstd level")),
        Compression::Snappy => Codec::SNAPPY,
        Compression::None => Codec::UNCOMPRESSED,
    };
    parquet::file::properties::WriterProperties::builder()
        .set_compression(codec)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Turns records into rows of a fixed set of columns.
pub struct RowEncoder {
    /// The schema as the JSON is read (field names as in the records): the columns that are not
    /// metadata.
    read_schema: SchemaRef,
    /// Where each written column comes from: the JSON column with this index, or metadata.
    columns: Vec<Column>,
    /// The schema of the rows (column names as configured).
    pub schema: SchemaRef,
}

/// Where a column's values come from.
enum Column {
    /// This column of the decoded JSON.
    Json(usize),
    /// The record's metadata, stored as this type.
    Meta(Meta, ColumnType),
}

/// The Arrow type of a column type.
pub fn arrow_type(t: ColumnType) -> DataType {
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

impl RowEncoder {
    /// An encoder for `columns`.
    pub fn new(columns: &[ColumnSpec]) -> RowEncoder {
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
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|c| Field::new(&c.name.value, arrow_type(c.kind), c.nullable))
                .collect::<Vec<_>>(),
        ));
        RowEncoder {
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
            schema,
        }
    }

    /// Reads the given records into rows with the configured column names. Records that
    /// do not fit are added to `rejected`; the rest are kept.
    pub fn decode(
        &self,
        batch: Routed<'_>,
        indices: &[usize],
        rejected: &mut Rejected,
    ) -> Result<Option<RecordBatch>, SinkError> {
        match self.decode_all(batch, indices.iter().copied()) {
            Ok(rows) => return Ok(rows),
            Err(_) if indices.len() > 1 => {}
            Err(e) => {
                rejected.push((indices[0], format!("record does not fit the schema: {e}")));
                return Ok(None);
            }
        }
        // Something does not fit: find out which records, one at a time.
        let mut good = Vec::with_capacity(indices.len());
        for &i in indices {
            match self.decode_all(batch, std::iter::once(i)) {
                Ok(_) => good.push(i),
                Err(e) => rejected.push((i, format!("record does not fit the schema: {e}"))),
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
        routed: Routed<'_>,
        indices: impl ExactSizeIterator<Item = usize> + Clone,
    ) -> Result<Option<RecordBatch>, arrow_schema::ArrowError> {
        if indices.len() == 0 {
            return Ok(None);
        }
        let batch = routed.batch;
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
                Column::Meta(meta, kind) => meta_array(routed, indices.clone(), *meta, *kind),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(RecordBatch::try_new(self.schema.clone(), arrays)?))
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
    routed: Routed<'_>,
    indices: impl Iterator<Item = usize>,
    meta: Meta,
    kind: ColumnType,
) -> Result<ArrayRef, arrow_schema::ArrowError> {
    let batch = routed.batch;
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
        (Meta::Plugin, _) => Arc::new(StringArray::from_iter(records.map(|_| routed.plugin))),
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
        let binary = meta_array((&b).into(), 0..2, Meta::Value, ColumnType::Binary).unwrap();
        let binary = binary.as_any().downcast_ref::<BinaryArray>().unwrap();
        assert_eq!(binary.value(1), [0xff, 0x00]);
        let keys = meta_array((&b).into(), 0..2, Meta::Key, ColumnType::String).unwrap();
        let keys = keys.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((keys.value(0), keys.is_null(1)), ("k", true));
        let headers = meta_array((&b).into(), 0..2, Meta::Headers, ColumnType::String).unwrap();
        let headers = headers.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(
            (headers.value(0), headers.is_null(1)),
            (r#"{"h":"v"}"#, true)
        );
        let partition = meta_array((&b).into(), 0..2, Meta::Partition, ColumnType::Int64).unwrap();
        assert_eq!(
            partition
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(1),
            2
        );
        let emitted = Routed {
            batch: &b,
            plugin: Some("9f2c"),
        };
        for (routed, want) in [(emitted, Some("9f2c")), ((&b).into(), None)] {
            let plugin = meta_array(routed, 0..2, Meta::Plugin, ColumnType::String).unwrap();
            let plugin = plugin.as_any().downcast_ref::<StringArray>().unwrap();
            let got: Vec<Option<&str>> = plugin.iter().collect();
            assert_eq!(
                got,
                [want, want],
                "the plugin that emitted the batch, or null"
            );
        }
        // Bytes that are not UTF-8 do not fit a string column; the record is rejected.
        assert!(meta_array((&b).into(), 1..2, Meta::Value, ColumnType::String).is_err());
        assert!(meta_array((&b).into(), 0..1, Meta::Value, ColumnType::String).is_ok());
    }
}
