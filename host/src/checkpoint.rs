//! Checkpoints: manifests, the coordinator that commits them, and recovery.
//!
//! A checkpoint goes through these steps, in this order, one checkpoint at a time:
//! 1. the barrier leaves the source, which notes its position (the next offset per partition);
//! 2. every sink, once the barrier reaches it, finishes its files without publishing them
//!    (*pre-commit*) and says what publishing them takes (its pending commit);
//! 3. the **manifest** `checkpoints/<pipeline>/chk-<id>.json` is written to the checkpoint
//!    store: positions and pending commits. Once it is stored, the checkpoint has happened;
//! 4. every sink commits, idempotently, tagged with the pipeline and checkpoint id;
//! 5. the source commits its position to Kafka (for lag monitoring and for other members).
//!
//! A crash before step 3 loses nothing: the files are orphans (deleted on recovery) and the
//! records are read again from the previous manifest's positions. A crash after it is repaired
//! on recovery: the newest manifest's commits are made again (each sink first checks whether its
//! commit is already visible), and the source starts from the manifest's positions.

use std::{collections::BTreeMap, time::Instant};

use object_store::{ObjectStoreExt, PutPayload, path::Path as ObjectPath};
use serde::{Deserialize, Serialize};

use crate::storage::{self, Location};

/// Where a source stands in one partition: the next offset to read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offset {
    /// Topic (or the generator's / file's name).
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Next offset to read.
    pub offset: i64,
}

/// A checkpoint's manifest: the commit point.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// The pipeline's name.
    pub pipeline: String,
    /// The checkpoint's number (increasing across runs).
    pub checkpoint: u64,
    /// When the barrier left the source (ms since the epoch).
    pub started_ms: i64,
    /// Time from the barrier to the manifest (every sink's pre-commit), in ms.
    pub precommit_ms: u64,
    /// Where the source stands after this checkpoint's records.
    pub offsets: Vec<Offset>,
    /// Each committing sink's pending commit, by sink name.
    pub sinks: BTreeMap<String, serde_json::Value>,
    /// Files the sinks finished for this checkpoint, and their bytes.
    pub files: u64,
    /// Bytes in those files.
    pub bytes: u64,
    /// The stages' keyed state at this checkpoint: the files a restore applies (none when the
    /// stages keep no state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::state::StateRef>,
    /// Each source partition's newest event time, where the watermark resumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_time: Vec<crate::runtime::event_time::PartitionTime>,
    /// The plugin (hex sha256) each stage runs for the records after this checkpoint: a swap
    /// at this checkpoint's barrier shows here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plugins: BTreeMap<String, String>,
}

/// A checkpoint kept until it is deleted, to start a pipeline from (also a newer version of it,
/// with the same stage names). It stands alone: its state is one full snapshot of its own.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Savepoint {
    /// Its number: the checkpoint's.
    pub id: u64,
    /// When it was stored (ms since the epoch).
    pub created_ms: i64,
    /// The checkpoint's manifest, its state files replaced by the savepoint's copy.
    pub manifest: Manifest,
}

/// What a sink's pre-commit adds to the manifest.
#[derive(Clone, Debug, Default)]
pub struct Pending {
    /// The pending commit (`None`: the sink has nothing to commit; it flushed).
    pub commit: Option<serde_json::Value>,
    /// Files finished.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Errors of the checkpoint store.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint store {location}: {message}")]
pub struct StoreError {
    /// The store.
    pub location: String,
    /// What happened.
    pub message: String,
}

/// The manifests of one pipeline, and its state files.
pub struct ManifestStore {
    location: Location,
    /// `checkpoints/<pipeline>`.
    folder: ObjectPath,
    /// `state/<pipeline>`.
    state_folder: ObjectPath,
    /// `savepoints/<pipeline>`.
    savepoint_folder: ObjectPath,
    /// The pipeline's name.
    pipeline: String,
    /// Manifests kept.
    retain: usize,
}

impl ManifestStore {
    /// Opens the checkpoint store of `pipeline`.
    pub fn open(location: Location, pipeline: &str, retain: usize) -> ManifestStore {
        ManifestStore {
            location,
            folder: ObjectPath::from(format!("checkpoints/{pipeline}")),
            state_folder: ObjectPath::from(format!("state/{pipeline}")),
            savepoint_folder: ObjectPath::from(format!("savepoints/{pipeline}")),
            pipeline: pipeline.to_string(),
            retain: retain.max(1),
        }
    }

    fn error(&self, message: impl std::fmt::Display) -> StoreError {
        StoreError {
            location: self.location.url.clone(),
            message: message.to_string(),
        }
    }

    fn path(&self, id: u64) -> ObjectPath {
        self.folder.clone().join(format!("chk-{id:020}.json"))
    }

    /// Checkpoint ids with a manifest, oldest first.
    pub async fn ids(&self) -> Result<Vec<u64>, StoreError> {
        self.numbered(&self.folder, "chk-").await
    }

    /// The numbers of the `PREFIX<n>.json` objects in `folder`, in order.
    async fn numbered(&self, folder: &ObjectPath, prefix: &str) -> Result<Vec<u64>, StoreError> {
        let objects = storage::list(self.location.store.as_ref(), Some(folder))
            .await
            .map_err(|e| self.error(e))?;
        let mut ids: Vec<u64> = objects
            .iter()
            .filter_map(|o| {
                o.location
                    .filename()?
                    .strip_prefix(prefix)?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The manifest of checkpoint `id`.
    pub async fn read(&self, id: u64) -> Result<Manifest, StoreError> {
        let path = self.path(id);
        let bytes = self
            .location
            .store
            .get(&path)
            .await
            .map_err(|e| self.error(e))?
            .bytes()
            .await
            .map_err(|e| self.error(e))?;
        serde_json::from_slice(&bytes).map_err(|e| self.error(format!("{path}: {e}")))
    }

    /// The newest manifest, if there is one.
    pub async fn latest(&self) -> Result<Option<Manifest>, StoreError> {
        match self.ids().await?.last() {
            Some(&id) => self.read(id).await.map(Some),
            None => Ok(None),
        }
    }

    /// Stores `manifest` durably: the commit point of its checkpoint.
    pub async fn write(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| self.error(e))?;
        self.location
            .store
            .put(&self.path(manifest.checkpoint), PutPayload::from(bytes))
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Deletes manifests beyond the newest `retain`.
    pub async fn prune(&self) -> Result<usize, StoreError> {
        let ids = self.ids().await?;
        let old = ids.len().saturating_sub(self.retain);
        for &id in &ids[..old] {
            self.location
                .store
                .delete(&self.path(id))
                .await
                .map_err(|e| self.error(e))?;
        }
        Ok(old)
    }
}

/// Savepoints: `savepoints/<pipeline>/sp-<id>.json`, with the state snapshot beside it as
/// `sp-<id>.state`. Neither is pruned with the checkpoints.
impl ManifestStore {
    fn savepoint_path(&self, id: u64, what: &str) -> ObjectPath {
        self.savepoint_folder
            .clone()
            .join(format!("sp-{id:020}.{what}"))
    }

    /// Keeps committed checkpoint `manifest` as a savepoint: copies its state (one full
    /// snapshot: the checkpoint of a savepoint writes one) and stores the savepoint's manifest.
    pub async fn keep_savepoint(&self, manifest: &Manifest) -> Result<Savepoint, StoreError> {
        let mut manifest = manifest.clone();
        if let Some(state) = &mut manifest.state {
            if state.files.len() > 1 {
                return Err(self.error(format!(
                    "checkpoint {} has {} state files; a savepoint's is one full snapshot",
                    manifest.checkpoint,
                    state.files.len()
                )));
            }
            if let Some(file) = state.files.first_mut() {
                let copy = self.savepoint_path(manifest.checkpoint, "state");
                self.location
                    .store
                    .copy(&ObjectPath::from(file.as_str()), &copy)
                    .await
                    .map_err(|e| self.error(e))?;
                *file = copy.to_string();
            }
        }
        let savepoint = Savepoint {
            id: manifest.checkpoint,
            created_ms: crate::plugin::now_ms(),
            manifest,
        };
        let bytes = serde_json::to_vec_pretty(&savepoint).map_err(|e| self.error(e))?;
        self.location
            .store
            .put(
                &self.savepoint_path(savepoint.id, "json"),
                PutPayload::from(bytes),
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(savepoint)
    }

    /// Every savepoint, oldest first.
    pub async fn savepoints(&self) -> Result<Vec<Savepoint>, StoreError> {
        let ids = self.numbered(&self.savepoint_folder, "sp-").await?;
        let mut savepoints = Vec::with_capacity(ids.len());
        for id in ids {
            savepoints.push(self.savepoint(id).await?);
        }
        Ok(savepoints)
    }

    /// Savepoint `id` (an error naming it when there is none).
    pub async fn savepoint(&self, id: u64) -> Result<Savepoint, StoreError> {
        let path = self.savepoint_path(id, "json");
        let bytes = match self.location.store.get(&path).await {
            Ok(found) => found.bytes().await.map_err(|e| self.error(e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(self.error(format!("there is no savepoint {id}")));
            }
            Err(e) => return Err(self.error(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| self.error(format!("{path}: {e}")))
    }

    /// Whether savepoint `id` exists.
    pub async fn has_savepoint(&self, id: u64) -> Result<bool, StoreError> {
        match self
            .location
            .store
            .head(&self.savepoint_path(id, "json"))
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Deletes savepoint `id` and its state snapshot.
    pub async fn delete_savepoint(&self, id: u64) -> Result<(), StoreError> {
        // The manifest first: a savepoint whose state is gone must not stay listed.
        for what in ["json", "state"] {
            match self
                .location
                .store
                .delete(&self.savepoint_path(id, what))
                .await
            {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error(e)),
            }
        }
        Ok(())
    }

    /// Makes savepoint `id` where the next run starts: stores a manifest, numbered after every
    /// checkpoint so far, with the savepoint's positions and event time, and a copy of its state
    /// as that checkpoint's full snapshot, and nothing for the sinks to commit. (The plugins it
    /// names are a record of what ran; which plugins the next run runs is up to its pipeline.)
    /// Returns the new checkpoint's number.
    pub async fn restore_savepoint(&self, id: u64) -> Result<u64, StoreError> {
        let savepoint = self.savepoint(id).await?;
        let newest = self.ids().await?.last().copied().unwrap_or(0);
        let checkpoint = newest.max(id) + 1;
        let mut manifest = savepoint.manifest;
        manifest.pipeline = self.pipeline.clone();
        manifest.checkpoint = checkpoint;
        manifest.started_ms = crate::plugin::now_ms();
        manifest.precommit_ms = 0;
        manifest.sinks.clear();
        manifest.files = 0;
        manifest.bytes = 0;
        if let Some(file) = manifest
            .state
            .as_mut()
            .and_then(|state| state.files.first_mut())
        {
            let copy =
                ObjectPath::from(crate::state::object_path(&self.pipeline, checkpoint, true));
            self.location
                .store
                .copy(&ObjectPath::from(file.as_str()), &copy)
                .await
                .map_err(|e| self.error(e))?;
            *file = copy.to_string();
        }
        self.write(&manifest).await?;
        Ok(checkpoint)
    }
}

/// State files: uploaded before the manifest that names them, read back on recovery, deleted
/// once no kept manifest names them.
impl ManifestStore {
    /// Uploads the local file `local` as `object` (in parts when it is large).
    pub async fn put_file(&self, object: &str, local: &std::path::Path) -> Result<(), StoreError> {
        use tokio::io::AsyncReadExt;
        const PART: usize = 16 << 20;
        let path = ObjectPath::from(object);
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(|e| self.error(format!("{}: {e}", local.display())))?;
        let len = file.metadata().await.map_err(|e| self.error(e))?.len() as usize;
        if len <= PART {
            let mut bytes = Vec::with_capacity(len);
            file.read_to_end(&mut bytes)
                .await
                .map_err(|e| self.error(e))?;
            self.location
                .store
                .put(&path, PutPayload::from(bytes))
                .await
                .map_err(|e| self.error(e))?;
            return Ok(());
        }
        let upload = self
            .location
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| self.error(e))?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
        let mut buf = vec![0; PART];
        loop {
            let n = file.read(&mut buf).await.map_err(|e| self.error(e))?;
            if n == 0 {
                break;
            }
            writer
                .wait_for_capacity(2)
                .await
                .map_err(|e| self.error(e))?;
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Downloads `object` into the local file `local`, a part at a time.
    pub async fn get_file(&self, object: &str, local: &std::path::Path) -> Result<(), StoreError> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let fail = |e: std::io::Error| self.error(format!("{}: {e}", local.display()));
        let mut file = tokio::fs::File::create(local).await.map_err(fail)?;
        let mut stream = self
            .location
            .store
            .get(&ObjectPath::from(object))
            .await
            .map_err(|e| self.error(format!("{object}: {e}")))?
            .into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.error(e))?;
            file.write_all(&chunk).await.map_err(fail)?;
        }
        file.flush().await.map_err(fail)?;
        Ok(())
    }

    /// Deletes the state files of checkpoints outside `keep` (ids of files to keep from, and
    /// up to): files before the oldest kept chain, and files of checkpoints no manifest names.
    pub async fn prune_state(&self, keep_from: u64, keep_to: u64) -> Result<usize, StoreError> {
        let objects = storage::list(self.location.store.as_ref(), Some(&self.state_folder))
            .await
            .map_err(|e| self.error(e))?;
        let mut removed = 0;
        for o in objects {
            let Some(id) = crate::state::id_of(o.location.as_ref()) else {
                continue;
            };
            if id < keep_from || id > keep_to {
                self.location
                    .store
                    .delete(&o.location)
                    .await
                    .map_err(|e| self.error(e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The first state file the oldest kept manifest needs (0 when there is none).
    pub async fn oldest_needed_state(&self) -> Result<u64, StoreError> {
        let Some(&oldest) = self.ids().await?.first() else {
            return Ok(0);
        };
        let manifest = self.read(oldest).await?;
        Ok(manifest
            .state
            .and_then(|s| s.files.first().and_then(|f| crate::state::id_of(f)))
            .unwrap_or(oldest))
    }
}

/// One checkpoint on its way through the coordinator.
pub(crate) struct Open {
    /// When its barrier left the source.
    pub started: Instant,
    /// The same, as a wall-clock time.
    pub started_ms: i64,
    /// The source's position then (`None` until the barrier has left).
    pub offsets: Option<Vec<Offset>>,
    /// Pre-commits so far, by sink index.
    pub pending: BTreeMap<usize, Pending>,
    /// The stage chain's state file (if anything changed) and event time, once it has
    /// written them.
    pub state: Option<(
        Option<crate::state::StateFile>,
        Vec<crate::runtime::event_time::PartitionTime>,
    )>,
    /// The plugin each stage runs after the barrier.
    pub plugins: BTreeMap<String, String>,
    /// Whether the checkpoint is kept as a savepoint, and who waits to hear how that went.
    pub keep: crate::runtime::control::Keep,
    /// The plugin swaps made at its barrier, confirmed once it commits.
    pub swapped: Vec<(
        crate::runtime::control::SwapReply,
        crate::runtime::control::Swapped,
    )>,
    /// When the records the sinks wrote for it entered the stages, and how many.
    pub entered: Vec<(i64, u64)>,
}

impl Open {
    /// A checkpoint whose barrier just left.
    pub fn new() -> Open {
        Open {
            started: Instant::now(),
            started_ms: crate::plugin::now_ms(),
            offsets: None,
            pending: BTreeMap::new(),
            state: None,
            plugins: BTreeMap::new(),
            keep: crate::runtime::control::Keep::No,
            swapped: Vec::new(),
            entered: Vec::new(),
        }
    }
}

impl Default for Open {
    fn default() -> Self {
        Open::new()
    }
}

/// Files a checkpoint wrote, from its sinks' pre-commits.
pub fn totals(pending: &BTreeMap<usize, Pending>) -> (u64, u64) {
    pending
        .values()
        .fold((0, 0), |(f, b), p| (f + p.files, b + p.bytes))
}

/// The store where `pipeline` keeps its manifests.
pub fn open_store(
    settings: &crate::pipeline::Checkpointing,
    dir: &std::path::Path,
    s3: &crate::storage::S3Config,
    pipeline: &str,
) -> Result<ManifestStore, StoreError> {
    let location = storage::open(&settings.store, dir, s3).map_err(|message| StoreError {
        location: settings.store.clone(),
        message,
    })?;
    Ok(ManifestStore::open(location, pipeline, settings.retain))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(id: u64) -> Manifest {
        Manifest {
            pipeline: "p".into(),
            checkpoint: id,
            started_ms: 0,
            precommit_ms: 1,
            offsets: vec![Offset {
                topic: "t".into(),
                partition: 0,
                offset: id as i64 * 10,
            }],
            sinks: BTreeMap::new(),
            files: 0,
            bytes: 0,
            state: None,
            event_time: Vec::new(),
            plugins: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn the_newest_manifest_wins_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let location =
            storage::open("store", dir.path(), &crate::storage::S3Config::default()).unwrap();
        let store = ManifestStore::open(location, "p", 3);
        assert!(store.latest().await.unwrap().is_none());
        for id in [1, 2, 9, 10, 11] {
            store.write(&manifest(id)).await.unwrap();
        }
        // Ids compare as numbers, not as text.
        assert_eq!(store.latest().await.unwrap().unwrap().checkpoint, 11);
        assert_eq!(store.prune().await.unwrap(), 2);
        assert_eq!(store.ids().await.unwrap(), vec![9, 10, 11]);
        assert_eq!(store.read(10).await.unwrap().offsets[0].offset, 100);
    }
}
