//! The files of one upsert checkpoint: data files whose every row's place the index learns, and
//! position-delete files, one per partition.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::Arc,
};

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use iceberg::{
    arrow::schema_to_arrow_schema,
    metadata_columns::{RESERVED_FIELD_ID_DELETE_FILE_PATH, RESERVED_FIELD_ID_DELETE_FILE_POS},
    spec::{
        DataContentType, DataFile, DataFileFormat, NestedField, PartitionKey, PrimitiveType,
        Schema, Struct, Type,
    },
    writer::{
        CurrentFileStatus,
        file_writer::{
            FileWriter, FileWriterBuilder, ParquetWriter, ParquetWriterBuilder,
            location_generator::{
                DefaultFileNameGenerator, DefaultLocationGenerator, FileNameGenerator,
                LocationGenerator,
            },
        },
    },
};

use super::{
    Output,
    index::{Index, RowRef, encode_key},
};
use crate::sinks::{SinkError, iceberg::iceberg_error};

/// Rows written to a data file at a time, so that files roll near their target size.
const WRITE_ROWS: usize = 64 * 1024;

/// The data files one checkpoint writes: one open file per partition, finished at the target
/// size. Unlike the crate's writers, it knows which file and position every row went to.
pub(super) struct DataFiles<'a> {
    /// The table, Parquet settings, names and target size.
    out: &'a Output<'a>,
    /// Opens a Parquet writer of the table's schema.
    builder: ParquetWriterBuilder,
    /// `<pipeline>-c<checkpoint>-<run>-NNNNN.parquet`, which recovery's cleanup recognises.
    names: DefaultFileNameGenerator,
    /// The table's data folder, and each partition's folder in it.
    locations: DefaultLocationGenerator,
    /// The file being written in each partition.
    open: HashMap<Struct, OpenFile>,
    /// Files finished, for the manifest.
    done: Vec<DataFile>,
}

/// A data file being written.
struct OpenFile {
    /// The crate's Parquet writer, which also gathers the file's column statistics.
    writer: ParquetWriter,
    /// Its number in the index.
    file: u32,
    /// Rows written so far: the position of the next.
    rows: u64,
    /// Its partition, which the manifest entry records.
    partition: Struct,
}

impl<'a> DataFiles<'a> {
    /// Files named and placed for `out`.
    pub fn new(out: &'a Output<'a>) -> Result<DataFiles<'a>, SinkError> {
        let metadata = out.table.metadata();
        Ok(DataFiles {
            out,
            builder: ParquetWriterBuilder::new(
                out.props.clone(),
                metadata.current_schema().clone(),
            ),
            names: DefaultFileNameGenerator::new(out.prefix.clone(), None, DataFileFormat::Parquet),
            locations: DefaultLocationGenerator::new(metadata)
                .map_err(iceberg_error("the table's data location"))?,
            open: HashMap::new(),
            done: Vec::new(),
        })
    }

    /// Writes rows of one partition, noting in `index` where each key's row went (and in
    /// `deletes` a row it displaces, which only a bug would leave live).
    pub async fn write(
        &mut self,
        partition: Option<PartitionKey>,
        rows: &RecordBatch,
        index: &mut Index,
        key_columns: &[usize],
        deletes: &mut Vec<RowRef>,
    ) -> Result<(), SinkError> {
        let failed = |e: iceberg::Error| SinkError::Io(format!("writing a data file: {e}"));
        let data = partition
            .as_ref()
            .map_or_else(Struct::empty, |p| p.data().clone());
        let mut key = Vec::new();
        for start in (0..rows.num_rows()).step_by(WRITE_ROWS) {
            let chunk = rows.slice(start, WRITE_ROWS.min(rows.num_rows() - start));
            let file = match self.open.entry(data.clone()) {
                Entry::Occupied(open) => open.into_mut(),
                Entry::Vacant(vacant) => {
                    let name = self.names.generate_file_name();
                    let path = self.locations.generate_location(partition.as_ref(), &name);
                    let output = self.out.table.file_io().new_output(&path).map_err(failed)?;
                    let writer = self.builder.build(output).await.map_err(failed)?;
                    let file = index.add_file(path, data.clone());
                    vacant.insert(OpenFile {
                        writer,
                        file,
                        rows: 0,
                        partition: data.clone(),
                    })
                }
            };
            file.writer.write(&chunk).await.map_err(failed)?;
            let keys: Vec<ArrayRef> = key_columns
                .iter()
                .map(|&c| chunk.column(c).clone())
                .collect();
            for row in 0..chunk.num_rows() {
                key.clear();
                encode_key(&mut key, &keys, row)
                    .map_err(|_| SinkError::Internal("a written row has no valid key".into()))?;
                let at = RowRef {
                    file: file.file,
                    pos: file.rows + row as u64,
                };
                if let Some(displaced) = index.rows.insert(key.as_slice().into(), at) {
                    deletes.push(displaced);
                }
            }
            file.rows += chunk.num_rows() as u64;
            if file.writer.current_written_size() as u64 >= self.out.target_file_bytes {
                let file = self.open.remove(&data).expect("just written");
                self.finish(file).await?;
            }
        }
        Ok(())
    }

    async fn finish(&mut self, file: OpenFile) -> Result<(), SinkError> {
        let failed = |e: iceberg::Error| SinkError::Io(format!("finishing a data file: {e}"));
        let spec_id = self.out.table.metadata().default_partition_spec_id();
        for mut builder in file.writer.close().await.map_err(failed)? {
            builder
                .content(DataContentType::Data)
                .partition(file.partition.clone())
                .partition_spec_id(spec_id);
            self.done.push(
                builder
                    .build()
                    .map_err(|e| SinkError::Internal(format!("describing a data file: {e}")))?,
            );
        }
        Ok(())
    }

    /// Finishes every open file; returns all the checkpoint's data files.
    pub async fn close(mut self) -> Result<Vec<DataFile>, SinkError> {
        let open: Vec<OpenFile> = self.open.drain().map(|(_, f)| f).collect();
        for file in open {
            self.finish(file).await?;
        }
        Ok(self.done)
    }
}

/// The schema of position-delete files (the spec's reserved field ids).
fn delete_schema() -> Result<Schema, SinkError> {
    Schema::builder()
        .with_fields([
            Arc::new(NestedField::required(
                RESERVED_FIELD_ID_DELETE_FILE_PATH,
                "file_path",
                Type::Primitive(PrimitiveType::String),
            )),
            Arc::new(NestedField::required(
                RESERVED_FIELD_ID_DELETE_FILE_POS,
                "pos",
                Type::Primitive(PrimitiveType::Long),
            )),
        ])
        .build()
        .map_err(iceberg_error("the position-delete schema"))
}

/// Writes one position-delete file per partition, its rows sorted by file and position as the
/// spec asks. Column bounds are kept whole (not truncated), so a reader can tell exactly which
/// data files a delete file touches.
pub(super) async fn write_deletes(
    deletes: Vec<RowRef>,
    index: &Index,
    out: &Output<'_>,
) -> Result<Vec<DataFile>, SinkError> {
    if deletes.is_empty() {
        return Ok(Vec::new());
    }
    let failed = |e: iceberg::Error| SinkError::Io(format!("writing a position-delete file: {e}"));
    let metadata = out.table.metadata();
    let schema = Arc::new(delete_schema()?);
    let arrow = Arc::new(schema_to_arrow_schema(&schema).map_err(failed)?);
    let props = out
        .props
        .clone()
        .into_builder()
        .set_statistics_truncate_length(None)
        .build();
    let builder = ParquetWriterBuilder::new(props, schema);
    let names = DefaultFileNameGenerator::new(
        format!("{}-deletes", out.prefix),
        None,
        DataFileFormat::Parquet,
    );
    let locations = DefaultLocationGenerator::new(metadata)
        .map_err(iceberg_error("the table's data location"))?;
    let mut by_partition: HashMap<&Struct, Vec<(&str, u64)>> = HashMap::new();
    for at in deletes {
        let file = &index.files[at.file as usize];
        by_partition
            .entry(&file.partition)
            .or_default()
            .push((file.path.as_str(), at.pos));
    }
    let spec = metadata.default_partition_spec();
    let mut files = Vec::new();
    for (partition, mut rows) in by_partition {
        rows.sort_unstable();
        rows.dedup();
        let key = (!spec.is_unpartitioned()).then(|| {
            PartitionKey::new(
                spec.as_ref().clone(),
                metadata.current_schema().clone(),
                partition.clone(),
            )
        });
        let path = locations.generate_location(key.as_ref(), &names.generate_file_name());
        let batch = RecordBatch::try_new(
            arrow.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|(f, _)| *f))),
                Arc::new(Int64Array::from_iter_values(
                    rows.iter().map(|(_, p)| *p as i64),
                )),
            ],
        )
        .map_err(|e| SinkError::Internal(format!("position deletes: {e}")))?;
        let output = out.table.file_io().new_output(&path).map_err(failed)?;
        let mut writer = builder.build(output).await.map_err(failed)?;
        writer.write(&batch).await.map_err(failed)?;
        for mut file in writer.close().await.map_err(failed)? {
            file.content(DataContentType::PositionDeletes)
                .partition(partition.clone())
                .partition_spec_id(spec.spec_id());
            files.push(
                file.build()
                    .map_err(|e| SinkError::Internal(format!("describing a delete file: {e}")))?,
            );
        }
    }
    Ok(files)
}
