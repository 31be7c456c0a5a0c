//! A pipeline's life in the server: the task that runs it and restarts it after failures, and
//! submitting, replacing, starting, stopping and deleting it.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use tokio::sync::watch;

use super::{
    EXCEPTIONS_KEPT, Exception, Managed, Rates, Run, ServeError, Shape, State, Stopped, Supervisor,
    external, history::PluginRef, internal, store, view,
};
use crate::{
    pipeline::{self, Pipeline, SpecErrors},
    plugin::now_ms,
    runtime::{self, Metrics, RunOptions},
};

impl Supervisor {
    /// Starts the task that drives `managed`: with `first`, an already loaded pipeline for its
    /// first run; with `savepoint`, from that savepoint.
    pub(super) fn launch(
        self: &Arc<Self>,
        managed: &Arc<Managed>,
        first: Option<Pipeline>,
        savepoint: Option<u64>,
    ) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut inner = managed.inner();
        inner.state = State::Starting;
        inner.attempts = 0;
        inner.error = None;
        inner.problems = None;
        inner.next_restart_ms = None;
        inner.stop = Some(stop_tx);
        let task = tokio::spawn(
            self.clone()
                .drive(managed.clone(), first, savepoint, stop_rx),
        );
        inner.task = Some(task);
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
    /// load gets a `loaded` entry in its history.
    fn note_loaded(&self, managed: &Managed, pipeline: &Pipeline) {
        let mut inner = managed.inner();
        for stage in &pipeline.stages {
            let plugin = stage.runner.plugin();
            let versions = inner.versions.entry(stage.name.clone()).or_default();
            if versions.current.as_ref().map(|c| c.sha256.as_str()) == Some(&*plugin.digest) {
                continue;
            }
            let name = match self.plugins.put_file(Path::new(&plugin.name)) {
                Ok((stored, _)) => stored.name,
                Err(e) => {
                    tracing::warn!(
                        plugin = plugin.name,
                        "cannot keep the plugin in the store: {e}"
                    );
                    plugin.name.clone()
                }
            };
            versions.change(
                PluginRef {
                    sha256: plugin.digest.to_string(),
                    name,
                    since_ms: now_ms(),
                },
                "loaded",
                None,
            );
        }
        inner
            .versions
            .retain(|name, _| pipeline.stages.iter().any(|s| &s.name == name));
        let versions = inner.versions.clone();
        drop(inner);
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
            managed.set_state(State::Starting);
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
                    let mut inner = managed.inner();
                    inner.state = State::Failed;
                    inner.error = Some(message);
                    inner.problems = Some(problems);
                    inner.task = None;
                    return;
                }
            };
            let shape = Arc::new(Shape::of(&pipeline));
            self.note_loaded(&managed, &pipeline);
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
                        let mut inner = managed.inner();
                        inner.state = State::Failed;
                        inner.error = Some(message);
                        inner.task = None;
                        return;
                    }
                }
            }
            let metrics = Arc::new(Metrics::for_pipeline(&pipeline));
            let (control, controls) = runtime::control();
            let attempt = {
                let mut inner = managed.inner();
                inner.shape = Some(shape);
                inner.run = Some(Run {
                    metrics: metrics.clone(),
                    control,
                });
                inner.rates = Rates::default();
                inner.state = State::Running;
                inner.started_ms = Some(now_ms());
                inner.next_restart_ms = None;
                inner.attempts += 1;
                inner.attempts
            };
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
                    let mut inner = managed.inner();
                    inner.state = state;
                    inner.task = None;
                    return;
                }
                Err(e) => e.to_string(),
            };
            tracing::warn!(pipeline = managed.name, attempt, "pipeline failed: {error}");
            managed.history.record(
                "failed",
                format!("run {attempt} failed: {error}"),
                serde_json::json!({"attempt": attempt}),
            );
            {
                let mut inner = managed.inner();
                if inner.exceptions.len() == EXCEPTIONS_KEPT {
                    inner.exceptions.pop_front();
                }
                inner.exceptions.push_back(Exception {
                    at_ms: now_ms(),
                    attempt,
                    message: error.clone(),
                });
                inner.error = Some(error.clone());
            }
            if stopping {
                let mut inner = managed.inner();
                inner.state = State::Stopped;
                inner.task = None;
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
                let mut inner = managed.inner();
                inner.state = State::Failed;
                inner.task = None;
                return;
            }
            let wait = policy.backoff(failures);
            let at = now_ms() + wait.as_millis() as i64;
            {
                let mut inner = managed.inner();
                inner.state = State::Restarting;
                inner.next_restart_ms = Some(at);
            }
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
                    let mut inner = managed.inner();
                    inner.state = State::Stopped;
                    inner.next_restart_ms = None;
                    inner.task = None;
                    return;
                }
            }
            managed.inner().restarts += 1;
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
        {
            let mut inner = managed.inner();
            for v in inner.versions.values_mut() {
                v.swapped = false;
            }
            inner.shape = Some(Arc::new(Shape::of(&loaded)));
            inner.problems = None;
        }
        managed.history.record(
            "replaced",
            "the pipeline file was replaced",
            serde_json::json!({}),
        );
        if start {
            self.launch(&managed, Some(loaded), None);
        } else {
            self.note_loaded(&managed, &loaded);
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
    /// committed, kept as a savepoint with `savepoint`. Returns once it has stopped.
    pub async fn stop(&self, name: &str, savepoint: bool) -> Result<Stopped, ServeError> {
        let managed = self.get(name)?;
        let _op = managed.ops.lock().await;
        let (task, run) = {
            let mut inner = managed.inner();
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
            (inner.task.take(), run)
        };
        let before = run.as_ref().and_then(|r| r.metrics.last_savepoint());
        if let Some(task) = task {
            task.await.map_err(internal)?;
        }
        let state = managed.state();
        let kept = match run.and_then(|r| r.metrics.last_savepoint()) {
            Some(id) if savepoint && Some(id) != before => {
                let store = managed.shape()?.store(name)?;
                Some(view::SavepointView::of(
                    store.savepoint(id).await.map_err(external)?,
                ))
            }
            _ if savepoint => {
                return Err(ServeError::External(format!(
                    "pipeline `{name}` stopped ({}), but its last checkpoint was not kept as a savepoint: see its exceptions",
                    view::state_name(state)
                )));
            }
            _ => None,
        };
        if let Some(sp) = &kept {
            managed.history.record(
                "savepoint",
                format!("savepoint {} kept at the stop", sp.id),
                serde_json::json!({"savepoint": sp.id}),
            );
        }
        Ok(Stopped {
            state,
            savepoint: kept,
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

    /// Stops every pipeline, for the server's own shutdown.
    pub async fn stop_all(&self) {
        for managed in self.all() {
            if managed.state().is_active()
                && let Err(e) = self.stop(&managed.name, false).await
            {
                tracing::warn!(pipeline = managed.name, "stopping: {e}");
            }
        }
    }
}
