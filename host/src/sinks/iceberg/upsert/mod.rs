//! `mode: upsert`: one row per key, kept current with position deletes.
//!
//! Between barriers, changes are held in memory, the last one per key winning: a record with
//! header `weir-op: delete` ([`crate::sinks::is_delete`]) deletes its key's row (its value needs
//! only the key columns), any other record replaces it. At the barrier, every changed key that
//! has a live row in the table gets a **position delete** `(data file, row position)`, looked up
//! in the key index; the winning rows go into new data files, and the index learns where each
//! went. The committer adds the data files and the position-delete files in one snapshot
//! (`snapshot.rs`).
//!
//! Why position deletes rather than equality deletes: a reader applies a position delete to one
//! row of one file it is reading anyway, while an equality delete has to be matched against every
//! older data file of its partition, by every reader, until compaction rewrites the table. The
//! price is the index, which the writer must keep: key → where its live row is.
//!
//! Why the changes wait for the barrier instead of streaming into a data file: a key changed
//! twice within one checkpoint would otherwise need a position delete into a file of the same
//! snapshot. The spec allows that (a position delete applies to data of its own sequence number
//! too), but deduplicating first does not lean on every reader getting that edge right, keeps
//! every delete pointing at an older snapshot's file, and writes fewer rows. The cost is memory
//! for one checkpoint's changes, and Parquet encoding at the barrier.
//!
//! The index is rebuilt from the table when a run first needs it (its first barrier, after
//! recovery has re-committed the newest manifest): the key columns of every live data file, minus
//! the rows that position-delete files delete. The table is the truth, so the index cannot
//! disagree with what was committed wherever a crash happened, and there is no second copy to
//! keep in step; it costs reading the table's key columns once per start, and memory per live
//! row. A key found live twice (a table that was appended to) keeps its newest row; the others
//! are deleted at the next checkpoint.

mod files;
mod index;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use arrow_array::{ArrayRef, DictionaryArray, RecordBatch, UInt32Array, types::UInt32Type};
use arrow_schema::ArrowError;
use iceberg::{
    Catalog, TableIdent,
    arrow::{RecordBatchPartitionSplitter, schema_to_arrow_schema},
    spec::{DataFile, FormatVersion},
    table::Table,
};
use parquet::file::properties::WriterProperties;

use self::{
    files::{DataFiles, write_deletes},
    index::{Index, KeyColumns, KeyError, encode_key},
};
use super::{SinkError, iceberg_error, io::ObjectStorage};
use crate::{
    pipeline::spec::ColumnSpec,
    record::Batch,
    sinks::{Rejected, rows::RowEncoder},
};

/// What the last record of a key in the current checkpoint does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    /// Replaces the row with row `row` of buffered batch `batch`.
    Upsert { batch: u32, row: u32 },
    /// Deletes the row.
    Delete,
}

/// The upsert state of an `iceberg` sink.
pub struct Upserts {
    /// The key's columns.
    key: KeyColumns,
    /// Reads the key columns alone from a delete record, whose value may hold nothing else.
    key_rows: RowEncoder,
    /// The current checkpoint's last change per key.
    changes: HashMap<Box<[u8]>, Change>,
    /// Rows upserted in the current checkpoint, in the table's columns (`changes` points in).
    batches: Vec<RecordBatch>,
    /// Where each live key's row is; `None` until the first barrier of a run that has changes.
    index: Option<Index>,
    /// To reload the table when the index is rebuilt: the recovery that runs after the sink
    /// opens may have committed a checkpoint since.
    catalog: Arc<dyn Catalog>,
    /// The table, in that catalog.
    ident: TableIdent,
    /// To read the table's files when the index is rebuilt.
    storage: ObjectStorage,
}

/// What writing a checkpoint's files needs from the sink.
pub struct Output<'a> {
    /// The table as opened: schema, partition spec, locations, file IO.
    pub table: &'a Table,
    /// Parquet settings of data files.
    pub props: &'a WriterProperties,
    /// A data file is finished once it holds about this many bytes.
    pub target_file_bytes: u64,
    /// File names start with this: `<pipeline>-c<checkpoint>-<run>`.
    pub prefix: String,
    /// Splits rows by partition (`None`: unpartitioned).
    pub splitter: Option<&'a RecordBatchPartitionSplitter>,
}

impl Upserts {
    /// Upserts into `table` by `key` (names of the sink's `columns`, checked to be columns of
    /// the table when the pipeline was loaded and the table opened).
    pub fn new(
        key: &[String],
        columns: &[ColumnSpec],
        table: &Table,
        catalog: Arc<dyn Catalog>,
        ident: TableIdent,
        storage: ObjectStorage,
    ) -> Result<Upserts, SinkError> {
        let metadata = table.metadata();
        if metadata.format_version() != FormatVersion::V2 {
            return Err(SinkError::Io(format!(
                "`mode: upsert` writes position deletes, which need a format-version 2 table; {ident} is version {}",
                metadata.format_version()
            )));
        }
        let schema = metadata.current_schema();
        let arrow =
            schema_to_arrow_schema(schema).map_err(iceberg_error("the table's Arrow schema"))?;
        let ids: Vec<i32> = schema.identifier_field_ids().collect();
        let mut key_columns = Vec::new();
        let mut key_ids = Vec::new();
        let mut key_types = Vec::new();
        let mut key_specs = Vec::new();
        for name in key {
            let (field, column) = schema
                .field_by_name(name)
                .zip(columns.iter().find(|c| &c.name.value == name))
                .ok_or_else(|| SinkError::Io(format!("table {ident} has no column `{name}`")))?;
            let position = schema
                .as_struct()
                .fields()
                .iter()
                .position(|f| f.id == field.id)
                .ok_or_else(|| SinkError::Internal(format!("column `{name}` not top-level")))?;
            key_columns.push(position);
            key_ids.push(field.id);
            key_types.push(arrow.field(position).data_type().clone());
            key_specs.push(ColumnSpec {
                name: crate::pipeline::spec::unspanned(column.name.value.clone()),
                kind: column.kind,
                from: column
                    .from
                    .as_ref()
                    .map(|f| crate::pipeline::spec::unspanned(f.value.clone())),
                meta: column
                    .meta
                    .as_ref()
                    .map(|m| crate::pipeline::spec::unspanned(m.value)),
                nullable: column.nullable,
            });
        }
        let same = |mut a: Vec<i32>, mut b: Vec<i32>| {
            a.sort_unstable();
            b.sort_unstable();
            a == b
        };
        if !ids.is_empty() && !same(ids.clone(), key_ids.clone()) {
            let names: Vec<String> = ids
                .iter()
                .filter_map(|id| schema.name_by_field_id(*id).map(str::to_string))
                .collect();
            return Err(SinkError::Io(format!(
                "table {ident} is keyed by [{}] (its identifier fields), but the sink's key is [{}]",
                names.join(", "),
                key.join(", ")
            )));
        }
        Ok(Upserts {
            key: KeyColumns {
                positions: key_columns,
                ids: key_ids,
                names: key.to_vec(),
                types: key_types,
            },
            key_rows: RowEncoder::new(&key_specs),
            changes: HashMap::new(),
            batches: Vec::new(),
            index: None,
            catalog,
            ident,
            storage,
        })
    }

    /// Notes the changes of a batch: `upserts` (rows in the table's columns, or `None` if no
    /// record decoded) come from records `puts`, `deletes` (key columns as the sink reads them)
    /// from records `removes`; records in `rejected` did not decode and are skipped. A record
    /// whose key is null is rejected here.
    pub fn apply(
        &mut self,
        (puts, upserts): (&[usize], Option<RecordBatch>),
        (removes, deletes): (&[usize], Option<RecordBatch>),
        rejected: &mut Rejected,
    ) -> Result<(), SinkError> {
        let skipped: HashSet<usize> = rejected.iter().map(|(i, _)| *i).collect();
        let kept = |records: &[usize]| -> Vec<usize> {
            records
                .iter()
                .copied()
                .filter(|i| !skipped.contains(i))
                .collect()
        };
        let (puts, removes) = (kept(puts), kept(removes));
        let upsert_keys: Vec<ArrayRef> = match &upserts {
            Some(rows) => self
                .key
                .positions
                .iter()
                .map(|&c| rows.column(c).clone())
                .collect(),
            None => Vec::new(),
        };
        let delete_keys: Vec<ArrayRef> = match &deletes {
            Some(rows) => rows
                .columns()
                .iter()
                .zip(&self.key.types)
                .map(|(column, kind)| arrow_cast::cast(column, kind))
                .collect::<Result<_, _>>()
                .map_err(|e| SinkError::Internal(format!("reading delete keys: {e}")))?,
            None => Vec::new(),
        };
        let batch = self.batches.len() as u32;
        if let Some(rows) = upserts {
            self.batches.push(rows);
        }
        // Both lists are in record order: merge them, so the last change of a key wins.
        let (mut p, mut d) = (0, 0);
        let mut key = Vec::new();
        while p < puts.len() || d < removes.len() {
            let take_put = d == removes.len() || (p < puts.len() && puts[p] < removes[d]);
            let (record, columns, row, change) = if take_put {
                p += 1;
                let row = (p - 1) as u32;
                (
                    puts[p - 1],
                    &upsert_keys,
                    row,
                    Change::Upsert { batch, row },
                )
            } else {
                d += 1;
                (removes[d - 1], &delete_keys, (d - 1) as u32, Change::Delete)
            };
            key.clear();
            match encode_key(&mut key, columns, row as usize) {
                Ok(()) => {
                    self.changes.insert(key.as_slice().into(), change);
                }
                Err(KeyError::Null(k)) => rejected.push((
                    record,
                    format!("key column `{}` is null", self.key.names[k]),
                )),
                Err(KeyError::Unsupported(kind)) => {
                    return Err(SinkError::Internal(format!("a key column of type {kind}")));
                }
            }
        }
        Ok(())
    }

    /// Decodes the key columns of delete records `removes`.
    pub fn decode_keys(
        &self,
        batch: &Batch,
        removes: &[usize],
        rejected: &mut Rejected,
    ) -> Result<Option<RecordBatch>, SinkError> {
        self.key_rows.decode(batch.into(), removes, rejected)
    }

    /// The barrier: writes the checkpoint's winning rows into data files and deletes the rows
    /// they replace (and the rows of deleted keys) with position-delete files. Returns both.
    pub async fn pre_commit(
        &mut self,
        out: &Output<'_>,
    ) -> Result<(Vec<DataFile>, Vec<DataFile>), SinkError> {
        if self.changes.is_empty() {
            self.batches.clear();
            return Ok((Vec::new(), Vec::new()));
        }
        let written = self.write_checkpoint(out).await;
        if written.is_err() {
            // The index already counts some of these rows: build it again rather than trust it.
            self.index = None;
        }
        written
    }

    async fn write_checkpoint(
        &mut self,
        out: &Output<'_>,
    ) -> Result<(Vec<DataFile>, Vec<DataFile>), SinkError> {
        if self.index.is_none() {
            let table = self
                .catalog
                .load_table(&self.ident)
                .await
                .map_err(iceberg_error(format!("loading table {}", self.ident)))?;
            self.index = Some(Index::rebuild(&table, &self.key, &self.storage).await?);
        }
        let index = self.index.as_mut().expect("built above");
        let changes = std::mem::take(&mut self.changes);
        let batches = std::mem::take(&mut self.batches);
        let mut deletes = std::mem::take(&mut index.strays);
        let mut winners: Vec<Vec<u32>> = vec![Vec::new(); batches.len()];
        for (key, change) in changes {
            if let Some(live) = index.rows.remove(&key) {
                deletes.push(live);
            }
            if let Change::Upsert { batch, row } = change {
                winners[batch as usize].push(row);
            }
        }
        let mut files = DataFiles::new(out)?;
        for (rows, mut chosen) in batches.iter().zip(winners) {
            if chosen.is_empty() {
                continue;
            }
            chosen.sort_unstable();
            let rows = gather(rows, &chosen)
                .map_err(|e| SinkError::Internal(format!("gathering upserted rows: {e}")))?;
            let parts = match out.splitter {
                Some(splitter) => splitter
                    .split(&rows)
                    .map_err(iceberg_error("splitting rows by partition"))?
                    .into_iter()
                    .map(|(key, rows)| (Some(key), rows))
                    .collect(),
                None => vec![(None, rows)],
            };
            for (partition, rows) in parts {
                files
                    .write(partition, &rows, index, &self.key.positions, &mut deletes)
                    .await?;
            }
        }
        let data = files.close().await?;
        let deletes = write_deletes(deletes, index, out).await?;
        Ok((data, deletes))
    }
}

/// Rows `rows` of `batch`, in that order. (arrow-cast unpacks a dictionary with a `take`, so a
/// dictionary whose keys are the row numbers gathers the rows without another arrow crate.)
fn gather(batch: &RecordBatch, rows: &[u32]) -> Result<RecordBatch, ArrowError> {
    if rows.len() == batch.num_rows() && rows.iter().enumerate().all(|(i, r)| i == *r as usize) {
        return Ok(batch.clone());
    }
    let keys = UInt32Array::from(rows.to_vec());
    let columns = batch
        .columns()
        .iter()
        .map(|column| {
            let picked = DictionaryArray::<UInt32Type>::try_new(keys.clone(), column.clone())?;
            arrow_cast::cast(&picked, column.data_type())
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(batch.schema(), columns)
}

#[cfg(test)]
mod tests {
    use arrow_array::{
        BooleanArray, LargeBinaryArray, StringArray, TimestampMicrosecondArray, cast::AsArray,
        types::TimestampMicrosecondType,
    };
    use arrow_schema::{DataType, Field, Schema as ArrowSchema, TimeUnit};

    use super::*;

    #[test]
    fn gather_picks_rows_of_every_column_type() {
        let schema = Arc::new(ArrowSchema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("b", DataType::LargeBinary, true),
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
            Field::new("f", DataType::Boolean, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
                Arc::new(LargeBinaryArray::from(vec![
                    Some(&b"x"[..]),
                    Some(b"y"),
                    None,
                ])),
                Arc::new(TimestampMicrosecondArray::from(vec![1, 2, 3]).with_timezone("+00:00")),
                Arc::new(BooleanArray::from(vec![true, false, true])),
            ],
        )
        .unwrap();
        let picked = gather(&batch, &[2, 0]).unwrap();
        assert_eq!(picked.schema(), batch.schema());
        assert_eq!(picked.num_rows(), 2);
        let s = picked.column(0).as_string::<i32>();
        assert_eq!((s.value(0), s.value(1)), ("c", "a"));
        assert!(picked.column(1).is_null(0));
        assert_eq!(
            picked
                .column(2)
                .as_primitive::<TimestampMicrosecondType>()
                .values()
                .to_vec(),
            vec![3, 1]
        );
        assert!(picked.column(3).as_boolean().value(1));
    }
}
