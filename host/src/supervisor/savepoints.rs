//! A pipeline's checkpoints and savepoints, read from its checkpoint store.

use super::{ServeError, Supervisor, external, view};
use crate::runtime::ControlError;

impl Supervisor {
    /// The manifests in a pipeline's checkpoint store, newest first.
    pub async fn checkpoints(&self, name: &str) -> Result<Vec<view::CheckpointView>, ServeError> {
        let managed = self.get(name)?;
        let store = managed.shape()?.store(name)?;
        let ids = store.ids().await.map_err(external)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids.into_iter().rev() {
            match store.read(id).await {
                Ok(m) => out.push(view::CheckpointView::of(m)),
                // Pruned between the listing and the read.
                Err(_) if !store.ids().await.map_err(external)?.contains(&id) => {}
                Err(e) => return Err(external(e)),
            }
        }
        Ok(out)
    }

    /// A pipeline's savepoints, newest first.
    pub async fn savepoints(&self, name: &str) -> Result<Vec<view::SavepointView>, ServeError> {
        let managed = self.get(name)?;
        let store = managed.shape()?.store(name)?;
        let mut all: Vec<_> = store
            .savepoints()
            .await
            .map_err(external)?
            .into_iter()
            .map(view::SavepointView::of)
            .collect();
        all.reverse();
        Ok(all)
    }

    /// Takes a checkpoint of a running pipeline now and keeps it as a savepoint.
    pub async fn savepoint(&self, name: &str) -> Result<view::SavepointView, ServeError> {
        let managed = self.get(name)?;
        let (run, _) = managed.running()?;
        let kept = run.control.savepoint().await.map_err(|e| match e {
            ControlError::NotRunning => {
                ServeError::Conflict(format!("pipeline `{name}` stopped before the savepoint"))
            }
            ControlError::Failed(message) => ServeError::External {
                message,
                retryable: true,
            },
        })?;
        managed.history.record(
            "savepoint",
            format!("savepoint {} taken", kept.id),
            serde_json::json!({"savepoint": kept.id}),
        );
        Ok(view::SavepointView::of(kept))
    }

    /// Deletes a savepoint and its state.
    pub async fn delete_savepoint(&self, name: &str, id: u64) -> Result<(), ServeError> {
        let managed = self.get(name)?;
        let store = managed.shape()?.store(name)?;
        if !store.has_savepoint(id).await.map_err(external)? {
            return Err(ServeError::NotFound(format!(
                "pipeline `{name}` has no savepoint {id}"
            )));
        }
        store.delete_savepoint(id).await.map_err(external)
    }
}
