//! The key index of `mode: upsert`: where each key's live row is (data file and position), and
//! how it is rebuilt from the table: the key columns of every live data file, minus the rows
//! that position-delete files delete.

use std::collections::HashMap;

use arrow_array::{
    Array, ArrayRef, RecordBatch,
    cast::AsArray,
    types::{Date32Type, Int32Type, Int64Type, TimestampMicrosecondType},
};
use arrow_schema::{DataType, TimeUnit};
use futures::{StreamExt, TryStreamExt};
use iceberg::{
    spec::{DataContentType, DataFile, ManifestStatus, Struct},
    table::Table,
};
use parquet::arrow::{
    ParquetRecordBatchStreamBuilder, ProjectionMask, async_reader::ParquetObjectReader,
};

use crate::sinks::{
    SinkError,
    iceberg::{iceberg_error, io::ObjectStorage},
};

/// Files read at once while the index is rebuilt.
const READ_AHEAD: usize = 8;

/// The key's columns, and how keys are compared.
#[derive(Debug)]
pub(super) struct KeyColumns {
    /// Positions among the table's columns, in key order.
    pub positions: Vec<usize>,
    /// Field ids, to find the columns in data files.
    pub ids: Vec<i32>,
    /// Names, for messages and for data files written without field ids.
    pub names: Vec<String>,
    /// Arrow types in the table, which keys are compared in.
    pub types: Vec<DataType>,
}

/// Where a live row is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RowRef {
    /// Index into [`Index::files`].
    pub file: u32,
    /// Row position in the file.
    pub pos: u64,
}

/// A data file rows of the index are in.
#[derive(Debug)]
pub(super) struct FileRef {
    /// Its path, as the table's manifests name it (and position deletes must).
    pub path: String,
    /// Its partition: a position delete goes into a delete file of the same partition.
    pub partition: Struct,
}

/// Key → where its live row is, for the table's committed and pre-committed rows.
#[derive(Debug, Default)]
pub(super) struct Index {
    /// Data files, numbered by their place here.
    pub files: Vec<FileRef>,
    /// The live row of each key (the key as [`encode_key`] writes it).
    pub rows: HashMap<Box<[u8]>, RowRef>,
    /// Rows found live beside a newer row of the same key: deleted at the next checkpoint.
    pub strays: Vec<RowRef>,
}

impl Index {
    /// Notes a data file; returns its number.
    pub fn add_file(&mut self, path: String, partition: Struct) -> u32 {
        self.files.push(FileRef { path, partition });
        (self.files.len() - 1) as u32
    }

    /// Reads where every live key's row is from `table`'s current snapshot.
    pub(super) async fn rebuild(
        table: &Table,
        key: &KeyColumns,
        storage: &ObjectStorage,
    ) -> Result<Index, SinkError> {
        let started = std::time::Instant::now();
        let ident = table.identifier();
        let metadata = table.metadata();
        let mut index = Index::default();
        let Some(snapshot) = metadata.current_snapshot() else {
            return Ok(index);
        };
        let failed = |what: &'static str| {
            let table = ident.to_string();
            move |e: iceberg::Error| SinkError::Io(format!("reading {table}'s {what}: {e}"))
        };
        let io = table.file_io();
        let list = table
            .manifest_list_reader(snapshot)
            .load()
            .await
            .map_err(failed("manifest list"))?;
        let mut data: Vec<(i64, DataFile)> = Vec::new();
        let mut position_deletes = Vec::new();
        for manifest in list.entries() {
            if manifest.partition_spec_id != metadata.default_partition_spec_id() {
                return Err(SinkError::Io(format!(
                    "table {} has files of an older partition spec; `mode: upsert` needs one spec",
                    ident
                )));
            }
            let entries = manifest
                .load_manifest(io)
                .await
                .map_err(failed("manifests"))?;
            for entry in entries.entries() {
                if entry.status() == ManifestStatus::Deleted {
                    continue;
                }
                let file = entry.data_file();
                match file.content_type() {
                    DataContentType::Data => {
                        data.push((entry.sequence_number().unwrap_or(0), file.clone()))
                    }
                    DataContentType::PositionDeletes => position_deletes.push(file.clone()),
                    // Rows an equality delete removed may stay in the index: deleting them
                    // again by position is harmless, and an upsert of their key adds a row.
                    DataContentType::EqualityDeletes => {}
                }
            }
        }
        // Positions deleted, by data file.
        let mut deleted: HashMap<String, Vec<u64>> = HashMap::new();
        let mut reads = futures::stream::iter(position_deletes)
            .map(|file| read_deletes(file, storage))
            .buffer_unordered(READ_AHEAD);
        while let Some(rows) = reads.try_next().await? {
            for (path, pos) in rows {
                deleted.entry(path).or_default().push(pos);
            }
        }
        drop(reads);
        for positions in deleted.values_mut() {
            positions.sort_unstable();
        }
        // Older files first, so that a key live twice keeps its newest row.
        data.sort_by_key(|(sequence, _)| *sequence);
        let mut reads = futures::stream::iter(data)
            .map(|(_, file)| async move {
                let keys = read_keys(&file, key, storage).await?;
                Ok::<_, SinkError>((file, keys))
            })
            .buffered(READ_AHEAD);
        let mut bytes = Vec::new();
        while let Some((file, batches)) = reads.try_next().await? {
            let gone = deleted.get(file.file_path()).map_or(&[][..], Vec::as_slice);
            let id = index.add_file(file.file_path().to_string(), file.partition().clone());
            let mut pos = 0u64;
            let mut next_gone = 0;
            for columns in batches {
                for row in 0..columns.first().map_or(0, |c| c.len()) {
                    while next_gone < gone.len() && gone[next_gone] < pos {
                        next_gone += 1;
                    }
                    let live = gone.get(next_gone) != Some(&pos);
                    if live {
                        bytes.clear();
                        encode_key(&mut bytes, &columns, row).map_err(|e| {
                            SinkError::Io(format!(
                                "{} row {pos}: {}",
                                file.file_path(),
                                e.describe(&key.names)
                            ))
                        })?;
                        let at = RowRef { file: id, pos };
                        if let Some(older) = index.rows.insert(bytes.as_slice().into(), at) {
                            index.strays.push(older);
                        }
                    }
                    pos += 1;
                }
            }
        }
        tracing::info!(
            table = %ident,
            rows = index.rows.len(),
            files = index.files.len(),
            duplicates = index.strays.len(),
            ms = started.elapsed().as_millis() as u64,
            "rebuilt the key index"
        );
        Ok(index)
    }
}

/// A reader of a table's Parquet file (data or deletes), from its footer on.
async fn open_parquet(
    file: &DataFile,
    storage: &ObjectStorage,
) -> Result<ParquetRecordBatchStreamBuilder<ParquetObjectReader>, SinkError> {
    let path = file.file_path();
    let (store, object) = storage
        .resolve(path)
        .map_err(iceberg_error(format!("reading {path}")))?;
    let reader = ParquetObjectReader::new(store, object).with_file_size(file.file_size_in_bytes());
    ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| SinkError::Io(format!("reading {path}: {e}")))
}

/// The key columns of a data file, cast to the table's types, batch by batch.
async fn read_keys(
    file: &DataFile,
    key: &KeyColumns,
    storage: &ObjectStorage,
) -> Result<Vec<Vec<ArrayRef>>, SinkError> {
    let path = file.file_path();
    let failed = |e: parquet::errors::ParquetError| SinkError::Io(format!("reading {path}: {e}"));
    let builder = open_parquet(file, storage).await?;
    // Find each key column by field id, or by name in a file written without ids.
    let arrow = builder.schema().clone();
    let field_id = |f: &arrow_schema::Field| {
        f.metadata()
            .get(parquet::arrow::PARQUET_FIELD_ID_META_KEY)
            .and_then(|id| id.parse::<i32>().ok())
    };
    let mut roots = Vec::new();
    for (id, name) in key.ids.iter().zip(&key.names) {
        let root = arrow
            .fields()
            .iter()
            .position(|f| field_id(f) == Some(*id))
            .or_else(|| arrow.fields().iter().position(|f| f.name() == name))
            .ok_or_else(|| SinkError::Io(format!("{path} has no key column `{name}`")))?;
        roots.push(root);
    }
    let mut sorted = roots.clone();
    sorted.sort_unstable();
    sorted.dedup();
    let mask = ProjectionMask::roots(builder.parquet_schema(), sorted.iter().copied());
    let stream = builder.with_projection(mask).build().map_err(failed)?;
    let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(failed)?;
    batches
        .into_iter()
        .map(|batch| {
            roots
                .iter()
                .zip(&key.types)
                .map(|(root, kind)| {
                    let at = sorted.binary_search(root).expect("projected");
                    arrow_cast::cast(batch.column(at), kind)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SinkError::Io(format!("reading {path}: {e}")))
        })
        .collect()
}

/// The (data file, position) rows of a position-delete file.
async fn read_deletes(
    file: DataFile,
    storage: &ObjectStorage,
) -> Result<Vec<(String, u64)>, SinkError> {
    let path = file.file_path();
    let failed = |e: parquet::errors::ParquetError| SinkError::Io(format!("reading {path}: {e}"));
    let builder = open_parquet(&file, storage).await?;
    let arrow = builder.schema().clone();
    let (Some(paths), Some(positions)) =
        (arrow.index_of("file_path").ok(), arrow.index_of("pos").ok())
    else {
        return Err(SinkError::Io(format!(
            "{path} is not a position-delete file: no file_path and pos columns"
        )));
    };
    let mask = ProjectionMask::roots(builder.parquet_schema(), [paths, positions]);
    let (paths, positions) = if paths < positions { (0, 1) } else { (1, 0) };
    let stream = builder.with_projection(mask).build().map_err(failed)?;
    let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(failed)?;
    let mut rows = Vec::new();
    for batch in batches {
        let cast = |c: usize, kind: &DataType| {
            arrow_cast::cast(batch.column(c), kind)
                .map_err(|e| SinkError::Io(format!("reading {path}: {e}")))
        };
        let files = cast(paths, &DataType::Utf8)?;
        let pos = cast(positions, &DataType::Int64)?;
        let (files, pos) = (files.as_string::<i32>(), pos.as_primitive::<Int64Type>());
        rows.extend(
            files
                .iter()
                .zip(pos.iter())
                .filter_map(|(f, p)| Some((f?.to_string(), u64::try_from(p?).ok()?))),
        );
    }
    Ok(rows)
}

/// Why a row has no key.
#[derive(Debug)]
pub(super) enum KeyError {
    /// Key column `n` is null.
    Null(usize),
    /// A column type keys are not made of.
    Unsupported(DataType),
}

impl KeyError {
    /// The message for a row of a table keyed by `names`.
    pub fn describe(&self, names: &[String]) -> String {
        match self {
            KeyError::Null(k) => format!("key column `{}` is null", names[*k]),
            KeyError::Unsupported(kind) => format!("a key column of type {kind}"),
        }
    }
}

/// Appends the key of `row` (its values of `columns`) to `out`: fixed-width values as they are,
/// variable-width ones after their length, so that two keys are equal exactly when their bytes
/// are. Columns are in the table's types, so every path that computes a key agrees.
pub(super) fn encode_key(
    out: &mut Vec<u8>,
    columns: &[ArrayRef],
    row: usize,
) -> Result<(), KeyError> {
    fn var(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    for (k, column) in columns.iter().enumerate() {
        if column.is_null(row) {
            return Err(KeyError::Null(k));
        }
        match column.data_type() {
            DataType::Utf8 => var(out, column.as_string::<i32>().value(row).as_bytes()),
            DataType::LargeUtf8 => var(out, column.as_string::<i64>().value(row).as_bytes()),
            DataType::Binary => var(out, column.as_binary::<i32>().value(row)),
            DataType::LargeBinary => var(out, column.as_binary::<i64>().value(row)),
            DataType::Int32 => {
                out.extend_from_slice(&column.as_primitive::<Int32Type>().value(row).to_le_bytes())
            }
            DataType::Int64 => {
                out.extend_from_slice(&column.as_primitive::<Int64Type>().value(row).to_le_bytes())
            }
            DataType::Date32 => {
                out.extend_from_slice(&column.as_primitive::<Date32Type>().value(row).to_le_bytes())
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => out.extend_from_slice(
                &column
                    .as_primitive::<TimestampMicrosecondType>()
                    .value(row)
                    .to_le_bytes(),
            ),
            DataType::Boolean => out.push(column.as_boolean().value(row) as u8),
            other => return Err(KeyError::Unsupported(other.clone())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int32Array, StringArray};

    use super::*;

    #[test]
    fn keys_are_equal_exactly_when_their_values_are() {
        let key = |a: &str, b: &str| {
            let columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(vec![a])),
                Arc::new(StringArray::from(vec![b])),
            ];
            let mut out = Vec::new();
            encode_key(&mut out, &columns, 0).unwrap();
            out
        };
        // Lengths keep column boundaries apart.
        assert_ne!(key("ab", "c"), key("a", "bc"));
        assert_eq!(key("a", "bc"), key("a", "bc"));
        let nulls: Vec<ArrayRef> = vec![Arc::new(Int32Array::from(vec![Some(1), None]))];
        assert!(matches!(
            encode_key(&mut Vec::new(), &nulls, 1),
            Err(KeyError::Null(0))
        ));
    }
}
