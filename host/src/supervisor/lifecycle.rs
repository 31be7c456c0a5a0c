//! A pipeline's life in the server: the task that runs it and restarts it after failures, and
//! submitting, replacing, starting, stopping and deleting it.

use std::{path::PathBuf, sync::Arc, time::Instant};

use tokio::sync::watch;

use super::{
    EXCEPTIONS_KEPT, Exception, Managed, Rates, Run, ServeError, Shape, State, Stopped, Supervisor,
    external, history::PluginRef, internal, store, view,
};
use crate::{
    pipeline::{self, Pipeline, SpecErrors},
    plugin::now_ms,
    runtime::{self, Metrics, RunError, RunOptions},
};

/// The plugin a stage of a loaded pipeline runs.
#[derive(Clone)]
struct Loaded {
    stage: String,
    sha256: String,
    /// The file it was loaded from.
    path: PathBuf,
}

impl Loaded {
    /// Every stage's (taken before an await: a pipeline is not `Sync`).
    fn of(pipeline: &Pipeline) -> Vec<Loaded> {
        pipeline
            .stages
            .iter()
            .map(|s| Loaded {
                stage: s.name.clone(),
                sha256: s.runner.plugin().digest.to_string(),
                path: PathBuf::from(&s.runner.plugin().name),
            })
            .collect()
    }
}

impl Supervisor {
    /// Starts the task that drives `managed`: with `first`, an already loaded pipeline for its
    /// first run; with `savepoint`, from that savepoint. A task that panics (a bug) leaves the
    /// pipeline failed, not running in name only.
    pub(super) fn launch(
        self: &Arc<Self>,
        managed: &Arc<Managed>,
        first: Option<Pipeline>,
        savepoint: Option<u64>,
    ) {
        let (stop_tx, stop_rx) = watch::channel(false);
        managed.update(|inner| {
            inner.state = State::Starting;
            inner.attempts = 0;
            inner.error = None;
            inner.problems = None;
            inner.next_restart_ms = None;
            inner.stop = Some(stop_tx);
        });
        let task = tokio::spawn(
            self.clone()
                .drive(managed.clone(), first, savepoint, stop_rx),
        );
        let watched = managed.clone();
        tokio::spawn(async move {
            if let Err(e) = task.await {
                let message = format!("internal error: the task running the pipeline ended: {e}");
                tracing::error!(pipeline = watched.name, "{message}");
                watched
                    .history
                    .record("failed", &message, serde_json::json!({}));
                watched.update(|inner| {
                    inner.state = State::Failed;
                    inner.error = Some(message);
                });
            }
        });
    }

    /// Loads `managed`'s file with the plugin versions a swap put in place (compiling is
    /// blocking work, done off the async threads).
    async fn load(&self, managed: &Managed) -> Result<Pipeline, SpecErrors> {
        let mut overrides = pipeline::Overrides::new();
        let versions = managed.inner().versions.clone();
        for (stage, v) in &versions {
            let Some(current) = v.current.as_ref().filter(|_| v.swapped) else {
                continue;
            };
            match self.plugins.get(&current.sha256) {
                Some((_, path)) => {
                    overrides.insert(stage.clone(), path);
                }
                None => tracing::warn!(
                    pipeline = managed.name,
                    stage,
                    sha256 = current.sha256,
                    "the swapped-in plugin is no longer in the plugin store; the file's runs"
                ),
            }
        }
        let host = self.host.clone();
        let file = managed.file.clone();
        tokio::task::spawn_blocking(move || pipeline::load_with(&file, &host, &overrides))
            .await
            .unwrap_or_else(|e| {
                Err(SpecErrors(vec![pipeline::SpecError {
                    file: managed.file.clone(),
                    line: 0,
                    column: 0,
                    message: format!("loading stopped: {e}"),
                }]))
            })
    }

    /// Notes the plugins a loaded pipeline runs: each goes into the plugin store (a rollback
    /// may need it after its file changed), and a stage whose plugin changed since the last
    /// load gets a `loaded` entry in its history. The files are read off the async threads and
    /// outside the pipeline's lock.
    async fn note_loaded(self: &Arc<Self>, managed: &Managed, loaded: Vec<Loaded>) {
        let changed: Vec<Loaded> = {
            let inner = managed.inner();
            loaded
                .iter()
                .filter(|l| {
                    inner
                        .versions
                        .get(&l.stage)
                        .and_then(|v| v.current.as_ref())
                        .is_none_or(|c| c.sha256 != l.sha256)
                })
                .cloned()
                .collect()
        };
        let mut named = Vec::with_capacity(changed.len());
        for Loaded {
            stage,
            sha256,
            path,
        } in changed
        {
            let supervisor = self.clone();
            let kept = tokio::task::spawn_blocking(move || match supervisor.plugins.get(&sha256) {
                Some((stored, _)) => Ok(stored),
                None => supervisor.plugins.put_file(&path).map(|(stored, _)| stored),
            })
            .await;
            match kept {
                Ok(Ok(stored)) => named.push((stage, stored.sha256, stored.name)),
                Ok(Err(e)) => tracing::warn!(stage, "cannot keep the plugin in the store: {e}"),
                Err(e) => tracing::warn!(stage, "cannot keep the plugin in the store: {e}"),
            }
        }
        let versions = managed.update(|inner| {
            for (stage, sha256, name) in named {
                inner.versions.entry(stage).or_default().change(
                    PluginRef {
                        sha256,
                        name,
                        since_ms: now_ms(),
                    },
                    "loaded",
                    None,
                );
            }
            inner
                .versions
                .retain(|name, _| loaded.iter().any(|l| &l.stage == name));
            inner.versions.clone()
        });
        managed.save_versions(&versions);
    }

    /// The task that drives one pipeline until it is stopped, finishes, or fails for good.
    async fn drive(
        self: Arc<Self>,
        managed: Arc<Managed>,
        mut first: Option<Pipeline>,
        mut savepoint: Option<u64>,
        mut stop: watch::Receiver<bool>,
    ) {
        let policy = self.settings.restart.clone();
        let mut failures: u32 = 0;
        loop {
            managed.update(|inner| inner.state = State::Starting);
            let loaded = match first.take() {
                Some(p) => Ok(p),
                None => self.load(&managed).await,
            };
            let pipeline = match loaded {
                Ok(p) => p,
                Err(problems) => {
                    let message = problems.to_string();
                    managed.history.record(
                        "failed",
                        format!("the pipeline file does not load: {message}"),
                        serde_json::json!({}),
                    );
                    managed.update(|inner| {
                        inner.state = State::Failed;
                        inner.error = Some(message);
                        inner.problems = Some(problems);
                    });
                    return;
                }
            };
            let shape = Arc::new(Shape::of(&pipeline));
            self.note_loaded(&managed, Loaded::of(&pipeline)).await;
            if let Some(id) = savepoint.take() {
                let restored = match shape.store(&managed.name) {
                    Ok(store) => store.restore_savepoint(id).await.map_err(external),
                    Err(e) => Err(e),
                };
                match restored {
                    Ok(checkpoint) => managed.history.record(
                        "restored",
                        format!("starting from savepoint {id} (as checkpoint {checkpoint})"),
                        serde_json::json!({"savepoint": id, "checkpoint": checkpoint}),
                    ),
                    Err(e) => {
                        let message = format!("cannot start from savepoint {id}: {e}");
                        managed
                            .history
                            .record("failed", &message, serde_json::json!({}));
                        managed.update(|inner| {
                            inner.state = State::Failed;
                            inner.error = Some(message);
                        });
                        return;
                    }
                }
            }
            let metrics = Arc::new(Metrics::for_pipeline(&pipeline));
            let (control, controls) = runtime::control();
            let attempt = managed.update(|inner| {
                inner.shape = Some(shape);
                inner.run = Some(Run {
                    metrics: metrics.clone(),
                    control,
                });
                inner.rates = Rates::default();
                // A stop asked for while it started has begun already: the run ends at once.
                inner.state = if *stop.borrow() {
                    State::Stopping
                } else {
                    State::Running
                };
                inner.started_ms = Some(now_ms());
                inner.next_restart_ms = None;
                inner.attempts += 1;
                inner.attempts
            });
            managed.history.record(
                "started",
                format!("run {attempt} started"),
                serde_json::json!({"attempt": attempt}),
            );
            tracing::info!(pipeline = managed.name, attempt, "pipeline started");
            let started = Instant::now();
            let shutdown = {
                let mut stop = stop.clone();
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                }
            };
            let result = runtime::run(
                pipeline,
                shutdown,
                RunOptions {
                    progress: false,
                    metrics: Some(metrics.clone()),
                    control: Some(controls),
                },
            )
            .await;
            let stopping = *stop.borrow();
            let error = match result {
                Ok(summary) => {
                    let (state, kind) = if stopping {
                        (State::Stopped, "stopped")
                    } else {
                        (State::Finished, "finished")
                    };
                    managed.history.record(
                        kind,
                        format!("{kind}: {summary}"),
                        serde_json::json!({
                            "records_in": summary.records_in,
                            "savepoint": metrics.last_savepoint(),
                        }),
                    );
                    managed.update(|inner| inner.state = state);
                    return;
                }
                Err(e) => e,
            };
            let at_checkpoint = matches!(error, RunError::Checkpoint(_));
            let error = error.to_string();
            tracing::warn!(pipeline = managed.name, attempt, "pipeline failed: {error}");
            managed.history.record(
                "failed",
                format!("run {attempt} failed: {error}"),
                serde_json::json!({"attempt": attempt}),
            );
            managed.update(|inner| {
                if inner.exceptions.len() == EXCEPTIONS_KEPT {
                    inner.exceptions.pop_front();
                }
                inner.exceptions.push_back(Exception {
                    at_ms: now_ms(),
                    attempt,
                    message: error.clone(),
                });
                inner.checkpoint_failures += u64::from(at_checkpoint);
                inner.error = Some(error.clone());
                if stopping {
                    inner.state = State::Stopped;
                }
            });
            if stopping {
                return;
            }
            if started.elapsed() >= policy.stable_after {
                failures = 0;
            }
            failures += 1;
            if policy.attempts == 0 || failures > policy.attempts {
                managed.history.record(
                    "failed",
                    format!("gave up after {} failures in a row", failures),
                    serde_json::json!({"failures": failures}),
                );
                managed.update(|inner| inner.state = State::Failed);
                return;
            }
            let wait = policy.backoff(failures);
            let at = now_ms() + wait.as_millis() as i64;
            managed.update(|inner| {
                inner.state = State::Restarting;
                inner.next_restart_ms = Some(at);
            });
            managed.history.record(
                "restarting",
                format!(
                    "restarting in {} ms (failure {failures} in a row)",
                    wait.as_millis()
                ),
                serde_json::json!({"wait_ms": wait.as_millis() as u64, "failures": failures}),
            );
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => {
                    managed.history.record("stopped", "stopped while waiting to restart", serde_json::json!({}));
                    managed.update(|inner| {
                        inner.state = State::Stopped;
                        inner.next_restart_ms = None;
                    });
                    return;
                }
            }
            managed.update(|inner| inner.restarts += 1);
        }
    }

    /// Checks pipeline text as `weir validate` does, as the file `file` (relative paths start
    /// from its folder), compiling its plugins; returns its name and the loaded pipeline.
    async fn check_text(&self, file: PathBuf, text: String) -> Result<Pipeline, ServeError> {
        let host = self.host.clone();
        tokio::task::spawn_blocking(move || {
            let spec = pipeline::parse_str(&file, &text)?;
            pipeline::check(&file, spec, &host)
        })
        .await
        .map_err(internal)?
        .map_err(ServeError::Spec)
    }

    /// The name a pipeline text gives itself (or its problems).
    fn name_of(&self, text: &str) -> Result<String, ServeError> {
        let file = self.settings.pipelines_dir.join("submitted.yaml");
        let spec = pipeline::parse_str(&file, text).map_err(ServeError::Spec)?;
        let name = spec.name.value;
        if !pipeline::valid_name(&name) {
            return Err(ServeError::BadRequest(format!(
                "`{name}` is not a pipeline name: letters, digits, `-` and `_` only"
            )));
        }
        Ok(name)
    }

    /// Submits a new pipeline: checks it, writes it to the pipelines folder as `NAME.yaml` and
    /// starts it.
    pub async fn submit(self: &Arc<Self>, text: String) -> Result<Arc<Managed>, ServeError> {
        let name = self.name_of(&text)?;
        let file = self.settings.pipelines_dir.join(format!("{name}.yaml"));
        if self.pipelines().contains_key(&name) || file.exists() {
            return Err(ServeError::Conflict(format!(
                "there is already a pipeline `{name}`"
            )));
        }
        let loaded = self.check_text(file.clone(), text.clone()).await?;
        let managed = Arc::new(Managed::new(
            name.clone(),
            file.clone(),
            &self.settings.data_dir,
        ));
        {
            let mut pipelines = self.pipelines();
            if pipelines.contains_key(&name) {
                return Err(ServeError::Conflict(format!(
                    "there is already a pipeline `{name}`"
                )));
            }
            // A pipeline of this name deleted before leaves no history behind.
            managed.history.remove();
            managed.inner().versions.clear();
            store::write_whole(&file, text.as_bytes()).map_err(internal)?;
            pipelines.insert(name.clone(), managed.clone());
        }
        managed.history.record(
            "submitted",
            format!("submitted as {}", file.display()),
            serde_json::json!({"file": file}),
        );
        self.launch(&managed, Some(loaded), None);
        Ok(managed)
    }

    /// Replaces the file of a pipeline that is not running, and starts it unless `start` is
    /// false. Its stages run the new file's plugins.
    pub async fn replace(
        self: &Arc<Self>,
        name: &str,
        text: String,
        start: bool,
    ) -> Result<Arc<Managed>, ServeError> {
        let managed = self.get(name)?;
        let _op = managed.ops.lock().await;
        if managed.state().is_active() {
            return Err(ServeError::Conflict(format!(
                "pipeline `{name}` is running: stop it first"
            )));
        }
        let named = self.name_of(&text)?;
        if named != name {
            return Err(ServeError::BadRequest(format!(
                "the file names the pipeline `{named}`, not `{name}`"
            )));
        }
        let loaded = self.check_text(managed.file.clone(), text.clone()).await?;
        store::write_whole(&managed.file, text.as_bytes()).map_err(internal)?;
        managed.update(|inner| {
            for v in inner.versions.values_mut() {
                v.swapped = false;
            }
            inner.shape = Some(Arc::new(Shape::of(&loaded)));
            inner.problems = None;
        });
        managed.history.record(
            "replaced",
            "the pipeline file was replaced",
            serde_json::json!({}),
        );
        if start {
            self.launch(&managed, Some(loaded), None);
        } else {
            let plugins = Loaded::of(&loaded);
            self.note_loaded(&managed, plugins).await;
        }
        Ok(managed.clone())
    }

    /// Starts a pipeline that is not running, from its newest checkpoint or from savepoint
    /// `savepoint`.
    pub async fn start(
        self: &Arc<Self>,
        name: &str,
        savepoint: Option<u64>,
    ) -> Result<Arc<Managed>, ServeError> {
        let managed = self.get(name)?;
        let _op = managed.ops.lock().await;
        if managed.state().is_active() {
            return Err(ServeError::Conflict(format!(
                "pipeline `{name}` is already running"
            )));
        }
        if let Some(id) = savepoint {
            let store = managed.shape()?.store(name)?;
            if !store.has_savepoint(id).await.map_err(external)? {
                return Err(ServeError::NotFound(format!(
                    "pipeline `{name}` has no savepoint {id}"
                )));
            }
        }
        self.launch(&managed, None, savepoint);
        Ok(managed.clone())
    }

    /// Stops a pipeline gracefully: what is in flight is written and a last checkpoint
    /// committed, kept as a savepoint with `savepoint`. Returns once it has stopped. The stop
    /// is told at once, not after an operation in progress: a swap waiting for its barrier gets
    /// it from the stop's last checkpoint.
    pub async fn stop(&self, name: &str, savepoint: bool) -> Result<Stopped, ServeError> {
        let managed = self.get(name)?;
        let mut states = managed.states.subscribe();
        let (run, before) = managed.update(|inner| {
            if !inner.state.is_active() {
                return Err(ServeError::Conflict(format!(
                    "pipeline `{name}` is not running (it is {})",
                    view::state_name(inner.state)
                )));
            }
            if savepoint && inner.state != State::Running {
                return Err(ServeError::Conflict(format!(
                    "pipeline `{name}` is {}: only a running pipeline can stop with a savepoint",
                    view::state_name(inner.state)
                )));
            }
            let run = inner.run.clone();
            let before = run.as_ref().and_then(|r| r.metrics.last_savepoint());
            // Asked before the stop, so the last barrier finds it.
            if savepoint && let Some(run) = &run {
                run.control.keep_savepoint_on_stop();
            }
            if let Some(stop) = &inner.stop {
                let _ = stop.send(true);
            }
            if inner.state == State::Running {
                inner.state = State::Stopping;
            }
            Ok((run, before))
        })?;
        let state = *states
            .wait_for(|s| !s.is_active())
            .await
            .map_err(internal)?;
        let kept = match run.as_ref().map(|r| &r.metrics) {
            Some(metrics) if savepoint => match metrics.last_savepoint() {
                Some(id) if Some(id) != before => {
                    let store = managed.shape()?.store(name)?;
                    view::SavepointView::of(store.savepoint(id).await.map_err(external)?)
                }
                _ => {
                    let why = metrics.savepoint_error().unwrap_or_else(|| {
                        "the run ended before its last checkpoint (see its exceptions)".into()
                    });
                    return Err(ServeError::External {
                        message: format!(
                            "pipeline `{name}` is {}, but its last checkpoint is not a savepoint: {why}",
                            view::state_name(state)
                        ),
                        retryable: false,
                    });
                }
            },
            _ => {
                return Ok(Stopped {
                    state,
                    savepoint: None,
                });
            }
        };
        managed.history.record(
            "savepoint",
            format!("savepoint {} kept at the stop", kept.id),
            serde_json::json!({"savepoint": kept.id}),
        );
        Ok(Stopped {
            state,
            savepoint: Some(kept),
        })
    }

    /// Stops a pipeline (without a savepoint) and forgets it: its file and its history go;
    /// its checkpoints and savepoints stay in its checkpoint store.
    pub async fn delete(&self, name: &str) -> Result<(), ServeError> {
        match self.stop(name, false).await {
            Ok(_) | Err(ServeError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        let managed = self.get(name)?;
        let _op = managed.ops.lock().await;
        if managed.state().is_active() {
            return Err(ServeError::Conflict(format!(
                "pipeline `{name}` was started again meanwhile"
            )));
        }
        match std::fs::remove_file(&managed.file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(internal(format!("{}: {e}", managed.file.display()))),
        }
        managed.history.remove();
        self.pipelines().remove(name);
        Ok(())
    }

    /// Stops every pipeline at once, for the server's own shutdown.
    pub async fn stop_all(&self) {
        let all = self.all();
        let stops = all
            .iter()
            .filter(|m| m.state().is_active())
            .map(|m| async move {
                if let Err(e) = self.stop(&m.name, false).await {
                    tracing::warn!(pipeline = m.name, "stopping: {e}");
                }
            });
        futures::future::join_all(stops).await;
    }
}
