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

/// The manifests of one pipeline.
pub struct ManifestStore {
    location: Location,
    /// `checkpoints/<pipeline>`.
    folder: ObjectPath,
    /// Manifests kept.
    retain: usize,
}

impl ManifestStore {
    /// Opens the checkpoint store of `pipeline`.
    pub fn open(location: Location, pipeline: &str, retain: usize) -> ManifestStore {
        ManifestStore {
            location,
            folder: ObjectPath::from(format!("checkpoints/{pipeline}")),
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
        let objects = storage::list(self.location.store.as_ref(), Some(&self.folder))
            .await
            .map_err(|e| self.error(e))?;
        let mut ids: Vec<u64> = objects
            .iter()
            .filter_map(|o| {
                o.location
                    .filename()?
                    .strip_prefix("chk-")?
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

/// One checkpoint on its way through the coordinator.
pub struct Open {
    /// When its barrier left the source.
    pub started: Instant,
    /// The same, as a wall-clock time.
    pub started_ms: i64,
    /// The source's position then (`None` until the barrier has left).
    pub offsets: Option<Vec<Offset>>,
    /// Pre-commits so far, by sink index.
    pub pending: BTreeMap<usize, Pending>,
}

impl Open {
    /// A checkpoint whose barrier just left.
    pub fn new() -> Open {
        Open {
            started: Instant::now(),
            started_ms: crate::plugin::now_ms(),
            offsets: None,
            pending: BTreeMap::new(),
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
