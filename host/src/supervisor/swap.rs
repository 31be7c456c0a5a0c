//! Plugin versions: uploads, hot swaps at a checkpoint barrier, and rollbacks.

use std::{path::PathBuf, time::Instant};

use super::{
    Managed, PluginSource, ServeError, Supervisor, Swap, Versions, history::PluginRef, internal,
    no_stage, short, store::StoredPlugin,
};
use crate::{
    plugin::{StageRunner, now_ms, same_outputs},
    runtime::ControlError,
};

impl Supervisor {
    /// Checks and keeps an uploaded plugin (a component of the right world), without using it.
    pub async fn upload(&self, name: String, bytes: Vec<u8>) -> Result<StoredPlugin, ServeError> {
        let host = self.host.clone();
        let display = name.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            host.load_bytes(&display, &bytes, false).map(|_| bytes)
        })
        .await
        .map_err(internal)??;
        Ok(self.plugins.put(&name, &bytes).map_err(internal)?.0)
    }

    /// The bytes of a plugin file on the server: a `.wasm` file no larger than the uploads
    /// the API takes (so a path cannot make it read what is not a plugin, or without end);
    /// relative paths start in the pipelines folder.
    async fn read_plugin_file(&self, path: PathBuf) -> Result<(String, Vec<u8>), ServeError> {
        let path = self.settings.pipelines_dir.join(path);
        let refused = |why: String| ServeError::BadRequest(format!("{}: {why}", path.display()));
        if path.extension().is_none_or(|e| e != "wasm") {
            return Err(refused("a plugin file's name ends in `.wasm`".into()));
        }
        let meta = std::fs::metadata(&path).map_err(|e| refused(e.to_string()))?;
        if !meta.is_file() || meta.len() > self.settings.max_plugin_bytes {
            return Err(refused(format!(
                "not a file of at most {} bytes",
                self.settings.max_plugin_bytes
            )));
        }
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let read = path.clone();
        let bytes = tokio::task::spawn_blocking(move || std::fs::read(read))
            .await
            .map_err(internal)?
            .map_err(|e| refused(e.to_string()))?;
        Ok((name, bytes))
    }

    /// A stage's plugin versions.
    pub fn versions(&self, name: &str, stage: &str) -> Result<Versions, ServeError> {
        let managed = self.get(name)?;
        let inner = managed.inner();
        let v = inner
            .versions
            .get(stage)
            .ok_or_else(|| no_stage(name, stage))?;
        Ok(Versions {
            current: v.current.clone(),
            previous: v.previous.clone(),
            history: v.history.clone(),
        })
    }

    /// Swaps a running stage to a new plugin version: compiled and initialised here, off the
    /// pipeline's threads, then put in place at a checkpoint barrier taken at once. Refused,
    /// with nothing changed, when the new version does not load, is of another world, refuses
    /// the stage's config or declares other outputs.
    pub async fn swap(
        &self,
        name: &str,
        stage: &str,
        source: PluginSource,
    ) -> Result<Swap, ServeError> {
        let managed = self.get(name)?;
        let _op = managed.ops.lock().await;
        let outcome = self.swap_locked(&managed, stage, source, "swapped").await;
        if let Err(e) = &outcome
            && !matches!(e, ServeError::NotFound(_) | ServeError::Conflict(_))
        {
            managed.history.record(
                "swap_refused",
                format!("a new version of stage `{stage}` was refused: {e}"),
                serde_json::json!({"stage": stage}),
            );
        }
        outcome
    }

    /// Swaps a stage back to the version it ran before its last swap.
    pub async fn rollback(&self, name: &str, stage: &str) -> Result<Swap, ServeError> {
        let managed = self.get(name)?;
        let _op = managed.ops.lock().await;
        let previous = {
            let inner = managed.inner();
            let v = inner
                .versions
                .get(stage)
                .ok_or_else(|| no_stage(name, stage))?;
            v.previous.clone().ok_or_else(|| {
                ServeError::Conflict(format!(
                    "stage `{stage}` has no previous version to roll back to"
                ))
            })?
        };
        self.swap_locked(
            &managed,
            stage,
            PluginSource::Sha256(previous.sha256),
            "rolled_back",
        )
        .await
    }

    async fn swap_locked(
        &self,
        managed: &Managed,
        stage: &str,
        source: PluginSource,
        action: &str,
    ) -> Result<Swap, ServeError> {
        let name = managed.name();
        let (run, shape) = managed.running()?;
        let (index, target) = shape
            .stages
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == stage)
            .ok_or_else(|| no_stage(name, stage))?;
        let (upload, bytes) = match source {
            PluginSource::Bytes { name, bytes } => (name, bytes),
            PluginSource::Sha256(sha) => {
                let (stored, path) = self.plugins.get(&sha).ok_or_else(|| {
                    ServeError::NotFound(format!("there is no uploaded plugin with sha256 {sha}"))
                })?;
                let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
                    .await
                    .map_err(internal)?
                    .map_err(internal)?;
                (stored.name, bytes)
            }
            PluginSource::Path(path) => self.read_plugin_file(path).await?,
        };
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let from = {
            let inner = managed.inner();
            inner
                .versions
                .get(stage)
                .and_then(|v| v.current.clone())
                .map(|c| c.sha256)
                .unwrap_or_default()
        };
        if sha256 == from {
            return Err(ServeError::Conflict(format!(
                "stage `{stage}` already runs {upload} ({sha256})"
            )));
        }
        // Compiled (or taken from the artifact cache) and initialised with the stage's config
        // here, off the pipeline's threads, which go on meanwhile.
        let started = Instant::now();
        let host = self.host.clone();
        let (stage_name, config, limits) = (
            target.name.clone(),
            target.config.clone(),
            target.limits.clone(),
        );
        let display = upload.clone();
        let runner = tokio::task::spawn_blocking(move || {
            let plugin = host.load_bytes(&display, &bytes, limits.fuel_per_call.is_some())?;
            StageRunner::start(&stage_name, plugin, config, limits).map(|r| (r, bytes))
        })
        .await
        .map_err(internal)?;
        let (runner, bytes) = runner?;
        same_outputs(stage, &target.outputs, runner.outputs())?;
        // Kept only once it passed every check: the store holds versions that can run here.
        let (stored, _) = self.plugins.put(&upload, &bytes).map_err(internal)?;
        let compile_ms = started.elapsed().as_millis() as u64;
        let swapped = run.control.swap(index, runner).await.map_err(|e| match e {
            ControlError::NotRunning => ServeError::Conflict(format!(
                "pipeline `{name}` stopped or failed before the checkpoint of the swap committed; it goes on with the version before"
            )),
            ControlError::Failed(e) => ServeError::Refused(e),
        })?;
        let at_ms = now_ms();
        let versions = {
            let mut inner = managed.inner();
            let v = inner.versions.entry(stage.to_string()).or_default();
            v.change(
                PluginRef {
                    sha256: stored.sha256.clone(),
                    name: stored.name.clone(),
                    since_ms: at_ms,
                },
                action,
                Some(swapped.checkpoint),
            );
            inner.versions.clone()
        };
        managed.save_versions(&versions);
        let swap = Swap {
            stage: stage.to_string(),
            from,
            to: stored.sha256,
            checkpoint: swapped.checkpoint,
            compile_ms,
            pause_us: swapped.pause.as_micros() as u64,
            at_ms,
        };
        managed.history.record(
            action,
            format!(
                "stage `{stage}` {} from {} to {} ({}) at checkpoint {}, pausing {} µs",
                if action == "swapped" {
                    "swapped"
                } else {
                    "rolled back"
                },
                short(&swap.from),
                short(&swap.to),
                stored.name,
                swap.checkpoint,
                swap.pause_us
            ),
            serde_json::to_value(&swap).unwrap_or_default(),
        );
        Ok(swap)
    }
}
