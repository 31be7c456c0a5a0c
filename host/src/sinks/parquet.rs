//! The `parquet` sink: records into Parquet files under Hive-style
//! `year=YYYY/month=MM/day=DD/hour=HH/` folders (UTC, by each record's event time), in a local
//! folder or an S3 bucket, committed once per checkpoint.
//!
//! Files are written under in-progress names (`_in-progress/…`, a folder readers skip) and are
//! finished when they reach `max_file_bytes` and at every checkpoint (*pre-commit*). The commit
//! of checkpoint N first writes the **commit log** `commit-log/chk-N/files.json` (which file
//! becomes which final name), then moves each file to its final name. Both steps can be
//! repeated: a file already under its final name is not moved again, so recovery can re-run a
//! commit that a crash interrupted. In-progress files no manifest names are deleted on
//! recovery.
//!
//! A record that does not fit the schema is handed back as a rejection (for the dead-letter
//! output) and the rest of its batch is written.

use std::collections::BTreeMap;

use object_store::{ObjectStoreExt, PutPayload, path::Path as ObjectPath};
use parquet::{
    arrow::{AsyncArrowWriter, async_writer::ParquetObjectWriter},
    file::properties::WriterProperties,
};
use serde::{Deserialize, Serialize};

use super::{Rejected, SinkError, rows::RowEncoder};
use crate::{
    checkpoint::Pending,
    pipeline::spec::ParquetSinkSpec,
    record::{Batch, Routed},
    storage::Location,
};

/// Default size at which a file is finished.
const DEFAULT_MAX_FILE_BYTES: u64 = 128 << 20;

/// Where files wait for their commit.
const IN_PROGRESS: &str = "_in-progress";

/// A Parquet file being written.
struct OpenFile {
    /// Its in-progress and final paths.
    file: FileEntry,
    /// The writer, uploading as it goes.
    writer: AsyncArrowWriter<ParquetObjectWriter>,
}

/// A finished file of a checkpoint: what its commit does.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path while it waits for the commit, relative to the sink's folder.
    pub in_progress: String,
    /// Path once committed.
    pub path: String,
    /// Rows.
    pub rows: u64,
    /// Bytes.
    pub bytes: u64,
}

/// A checkpoint's pending commit, as the manifest and the commit log hold it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ParquetCommit {
    /// The files.
    pub files: Vec<FileEntry>,
}

/// The sink.
pub struct ParquetSink {
    /// The folder.
    location: Location,
    /// Records to rows.
    rows: RowEncoder,
    /// Writer settings.
    props: WriterProperties,
    /// Files being written, by partition folder.
    open: BTreeMap<String, OpenFile>,
    /// Files finished since the last checkpoint.
    finished: Vec<FileEntry>,
    /// Start of file names: the pipeline's name, so a folder can be shared.
    pipeline: String,
    /// This run, in file names, so runs never collide.
    run: String,
    /// The checkpoint the files being written belong to.
    epoch: u64,
    /// Number of the next file.
    next_file: u64,
    /// Size at which a file is finished.
    max_file_bytes: u64,
    /// Files committed so far.
    pub files_written: u64,
}

impl ParquetSink {
    /// Opens the sink at `location`; `run` names this run's files, `epoch` is the checkpoint
    /// the first files belong to.
    pub fn open(
        spec: &ParquetSinkSpec,
        location: Location,
        pipeline: &str,
        run: &str,
        epoch: u64,
    ) -> ParquetSink {
        let props = super::rows::writer_properties(spec.compression);
        ParquetSink {
            location,
            rows: RowEncoder::new(&spec.schema.value),
            props,
            open: BTreeMap::new(),
            finished: Vec::new(),
            pipeline: pipeline.into(),
            run: run.into(),
            epoch,
            next_file: 0,
            max_file_bytes: spec
                .max_file_bytes
                .as_ref()
                .map_or(DEFAULT_MAX_FILE_BYTES, |m| m.value),
            files_written: 0,
        }
    }

    /// Where the files go.
    pub fn root(&self) -> &str {
        &self.location.url
    }

    /// Writes a batch; returns the records that do not fit the schema.
    pub async fn write(&mut self, routed: Routed<'_>) -> Result<Rejected, SinkError> {
        let mut rejected = Vec::new();
        for (partition, indices) in group_by_hour(routed.batch) {
            let Some(rows) = self.rows.decode(routed, &indices, &mut rejected)? else {
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
                .map_err(|e| SinkError::Io(format!("writing {}: {e}", file.file.in_progress)))?;
            file.file.rows += rows.num_rows() as u64;
            if (file.writer.bytes_written() + file.writer.in_progress_size()) as u64
                >= self.max_file_bytes
            {
                let file = self.open.remove(&partition).expect("file was just written");
                self.finish(file).await?;
            }
        }
        Ok(rejected)
    }

    /// Finishes every open file under its in-progress name; returns the checkpoint's files.
    pub async fn pre_commit(&mut self, id: u64) -> Result<Pending, SinkError> {
        for (_, file) in std::mem::take(&mut self.open) {
            self.finish(file).await?;
        }
        let files = std::mem::take(&mut self.finished);
        self.epoch = id + 1;
        self.files_written += files.len() as u64;
        let commit = ParquetCommit { files };
        Ok(Pending {
            files: commit.files.len() as u64,
            bytes: commit.files.iter().map(|f| f.bytes).sum(),
            commit: Some(serde_json::to_value(&commit).map_err(internal)?),
        })
    }

    fn new_file(&mut self, partition: &str) -> Result<OpenFile, SinkError> {
        let name = format!(
            "{}-c{}-{}-{:05}.parquet",
            self.pipeline, self.epoch, self.run, self.next_file
        );
        self.next_file += 1;
        let file = FileEntry {
            in_progress: format!("{IN_PROGRESS}/{name}"),
            path: format!("{partition}/{name}"),
            rows: 0,
            bytes: 0,
        };
        let upload = ParquetObjectWriter::new(
            self.location.store.clone(),
            ObjectPath::from(file.in_progress.as_str()),
        );
        let writer =
            AsyncArrowWriter::try_new(upload, self.rows.schema.clone(), Some(self.props.clone()))
                .map_err(|e| SinkError::Io(format!("starting {}: {e}", file.in_progress)))?;
        Ok(OpenFile { file, writer })
    }

    async fn finish(&mut self, open: OpenFile) -> Result<(), SinkError> {
        let OpenFile { mut file, writer } = open;
        writer
            .close()
            .await
            .map_err(|e| SinkError::Io(format!("finishing {}: {e}", file.in_progress)))?;
        file.bytes = self
            .location
            .store
            .head(&ObjectPath::from(file.in_progress.as_str()))
            .await
            .map_err(|e| SinkError::Io(format!("finishing {}: {e}", file.in_progress)))?
            .size;
        self.finished.push(file);
        Ok(())
    }
}

fn internal(e: impl std::fmt::Display) -> SinkError {
    SinkError::Internal(e.to_string())
}

/// Publishes a Parquet sink's checkpoints: the commit log, then final names.
pub struct ParquetCommitter {
    location: Location,
}

impl ParquetCommitter {
    /// The committer of the folder at `location`.
    pub fn new(location: Location) -> ParquetCommitter {
        ParquetCommitter { location }
    }

    fn io(&self, what: &str, e: impl std::fmt::Display) -> SinkError {
        SinkError::Io(format!("{}: {what}: {e}", self.location.url))
    }

    /// Commits checkpoint `id` of `pipeline`; doing it again changes nothing.
    pub async fn commit(
        &self,
        pipeline: &str,
        id: u64,
        pending: &serde_json::Value,
    ) -> Result<(), SinkError> {
        let commit: ParquetCommit = serde_json::from_value(pending.clone()).map_err(internal)?;
        let store = &self.location.store;
        let log = ObjectPath::from(format!("commit-log/chk-{id}/files.json"));
        let entry =
            serde_json::json!({ "pipeline": pipeline, "checkpoint": id, "files": commit.files });
        let body = serde_json::to_vec_pretty(&entry).map_err(internal)?;
        store
            .put(&log, PutPayload::from(body))
            .await
            .map_err(|e| self.io("writing the commit log", e))?;
        for file in &commit.files {
            let from = ObjectPath::from(file.in_progress.as_str());
            let to = ObjectPath::from(file.path.as_str());
            match store.head(&to).await {
                // Moved already (by the commit a crash interrupted, or half-moved by a copy and
                // delete): only the in-progress name may be left.
                Ok(_) => match store.delete(&from).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.io(&file.in_progress, e)),
                },
                Err(object_store::Error::NotFound { .. }) => store
                    .rename(&from, &to)
                    .await
                    .map_err(|e| self.io(&format!("committing {}", file.in_progress), e))?,
                Err(e) => return Err(self.io(&file.path, e)),
            }
        }
        Ok(())
    }

    /// Deletes the in-progress files of `pipeline` (on recovery, after the newest manifest was
    /// committed again, none of them belongs to a checkpoint). Returns how many.
    pub async fn clean(&self, pipeline: &str) -> Result<usize, SinkError> {
        let folder = ObjectPath::from(IN_PROGRESS);
        let mut removed = 0;
        let objects = crate::storage::list(self.location.store.as_ref(), Some(&folder))
            .await
            .map_err(|e| self.io("listing in-progress files", e))?;
        let ours = format!("{pipeline}-c");
        for object in objects {
            if object
                .location
                .filename()
                .is_some_and(|n| n.starts_with(&ours))
            {
                self.location
                    .store
                    .delete(&object.location)
                    .await
                    .map_err(|e| self.io("deleting an orphan", e))?;
                removed += 1;
            }
        }
        if let Some(local) = &self.location.local {
            removed += crate::storage::remove_local_staging(&local.join(IN_PROGRESS))
                .map_err(|e| self.io("deleting interrupted uploads", e))?;
        }
        Ok(removed)
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
    use super::*;

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
