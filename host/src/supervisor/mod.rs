//! `weir serve`'s core: many pipelines in one process, each driven by a task of its own that
//! starts it, restarts it after a failure (with exponential backoff), and stops it when asked;
//! and what the control plane asks of a running pipeline — savepoints, plugin swaps and
//! rollbacks — carried out through its [`Control`].
//!
//! - `lifecycle`: the task that runs a pipeline and restarts it; submit, replace, start, stop,
//!   delete.
//! - `swap`: uploads, hot swaps and rollbacks of a stage's plugin.
//! - `savepoints`: checkpoints and savepoints in a pipeline's checkpoint store.
//! - [`store`]: every plugin version, kept by digest.
//! - [`history`]: a pipeline's event log and its stages' plugin versions, on disk.
//! - [`view`]: what the API shows of a pipeline (its summary, detail and graph).
//!
//! The HTTP layer ([`crate::api`]) only translates: every rule lives here, and every refusal is
//! a [`ServeError`] that says whose fault it is.

pub mod history;
mod lifecycle;
mod savepoints;
pub mod store;
mod swap;
pub mod view;

use std::{
    collections::{BTreeMap, VecDeque},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::sync::watch;

use crate::{
    checkpoint::ManifestStore,
    pipeline::{self, Pipeline, SpecErrors},
    plugin::{Limits, PluginError, PluginHost},
    runtime::{Control, Metrics},
};
use history::{History, PluginRef, StageVersions};
use store::PluginStore;

/// Why a request of the control plane was refused or failed. The API maps each kind to one
/// status code (see `api::error`).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// No such pipeline, stage, savepoint or plugin.
    #[error("{0}")]
    NotFound(String),
    /// The pipeline is not in a state that allows it (running, not running, exists).
    #[error("{0}")]
    Conflict(String),
    /// The request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// A pipeline file with problems: the same list `weir validate` prints.
    #[error("the pipeline file has problems:\n{0}")]
    Spec(SpecErrors),
    /// Well-formed, but refused: a plugin of another world, or whose `init` refuses the
    /// stage's config, or whose outputs differ.
    #[error("{0}")]
    Refused(String),
    /// A service the server needs (the checkpoint store) failed.
    #[error("{message}")]
    External {
        /// What failed.
        message: String,
        /// Whether the same request may succeed later.
        retryable: bool,
    },
    /// A bug in Weir.
    #[error("{0}")]
    Internal(String),
}

impl From<PluginError> for ServeError {
    fn from(e: PluginError) -> ServeError {
        match e {
            PluginError::Read { .. } | PluginError::Invalid { .. } => {
                ServeError::BadRequest(e.to_string())
            }
            PluginError::WrongWorld { .. }
            | PluginError::Init { .. }
            | PluginError::InitTrap { .. } => ServeError::Refused(e.to_string()),
        }
    }
}

fn internal(e: impl std::fmt::Display) -> ServeError {
    ServeError::Internal(e.to_string())
}

fn external(e: impl std::fmt::Display) -> ServeError {
    ServeError::External {
        message: e.to_string(),
        retryable: true,
    }
}

impl From<crate::plugin::SwapError> for ServeError {
    fn from(e: crate::plugin::SwapError) -> ServeError {
        ServeError::Refused(e.to_string())
    }
}

/// When a failed pipeline is started again.
#[derive(Clone, Debug)]
pub struct RestartPolicy {
    /// Failures in a row after which it stays failed (0: never restart).
    pub attempts: u32,
    /// Wait before the first restart; doubled after each failure in a row.
    pub backoff_min: Duration,
    /// Longest wait.
    pub backoff_max: Duration,
    /// A run this long without failing starts the count of failures in a row again.
    pub stable_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            attempts: 10,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            stable_after: Duration::from_secs(60),
        }
    }
}

impl RestartPolicy {
    /// The wait before restart number `failures` (1 for the first failure in a row).
    pub fn backoff(&self, failures: u32) -> Duration {
        let doubled = self
            .backoff_min
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        doubled.min(self.backoff_max)
    }
}

/// The server's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Pipeline files: each `*.yaml` is started with the server; submitted ones are written here.
    pub pipelines_dir: PathBuf,
    /// The server's own files: the plugin store and each pipeline's history.
    pub data_dir: PathBuf,
    /// Restarts after failures.
    pub restart: RestartPolicy,
    /// Largest plugin a swap reads from a file on the server (uploads are limited by the API).
    pub max_plugin_bytes: u64,
}

/// Where a pipeline is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Loading its file and plugins, or recovering.
    Starting,
    /// Running.
    Running,
    /// Failed; waiting to start again.
    Restarting,
    /// Out of restart attempts, or its file no longer loads.
    Failed,
    /// Writing what is in flight and committing a last checkpoint.
    Stopping,
    /// Stopped when asked.
    Stopped,
    /// Its source ended.
    Finished,
}

impl State {
    /// Whether a task drives the pipeline: it runs, or is about to, or is on its way down.
    fn is_active(self) -> bool {
        matches!(
            self,
            State::Starting | State::Running | State::Restarting | State::Stopping
        )
    }
}

/// One failure of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Exception {
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// The run's number since the pipeline was started (1 for the first).
    pub attempt: u64,
    /// What failed.
    pub message: String,
}

/// Failures kept per pipeline.
const EXCEPTIONS_KEPT: usize = 100;

/// What the server knows of a loaded pipeline, taken before its run consumes it.
#[derive(Clone, Debug)]
pub struct Shape {
    /// The source's type key (`generator`, `file`, `kafka`).
    pub source: &'static str,
    /// The stages, in order.
    pub stages: Vec<StageShape>,
    /// The sinks, in order.
    pub sinks: Vec<SinkShape>,
    /// Checkpoint settings, to open its checkpoint store when it is not running.
    pub checkpoint: pipeline::Checkpointing,
    /// The folder its relative paths start from.
    pub dir: PathBuf,
    /// How to reach S3.
    pub s3: crate::storage::S3Config,
}

/// A stage as loaded.
#[derive(Clone, Debug)]
pub struct StageShape {
    /// Its name.
    pub name: String,
    /// Its `config:` as the JSON `init` receives, for a new version's `init`.
    pub config: String,
    /// Its sandbox limits.
    pub limits: Limits,
    /// Its named outputs, which the pipeline wires: a new version must declare the same.
    pub outputs: Vec<String>,
}

/// A sink as loaded.
#[derive(Clone, Debug)]
pub struct SinkShape {
    /// Its name.
    pub name: String,
    /// Its type key.
    pub kind: &'static str,
    /// Its `input:` as written.
    pub input: String,
    /// What it reads, resolved.
    pub route: pipeline::Route,
}

impl Shape {
    fn of(pipeline: &Pipeline) -> Shape {
        use crate::pipeline::spec::SourceSpec;
        Shape {
            source: match &pipeline.source {
                SourceSpec::Generator(_) => "generator",
                SourceSpec::File(_) => "file",
                SourceSpec::Kafka(_) => "kafka",
            },
            stages: pipeline
                .stages
                .iter()
                .map(|s| StageShape {
                    name: s.name.clone(),
                    config: s.runner.config().to_string(),
                    limits: s.runner.limits().clone(),
                    outputs: s.runner.outputs().to_vec(),
                })
                .collect(),
            sinks: pipeline
                .sinks
                .iter()
                .map(|s| SinkShape {
                    name: s.name.clone(),
                    kind: s.kind.type_name(),
                    input: s.input.clone(),
                    route: s.route,
                })
                .collect(),
            checkpoint: pipeline.checkpoint.clone(),
            dir: pipeline.dir.clone(),
            s3: pipeline.s3.clone(),
        }
    }

    fn store(&self, name: &str) -> Result<ManifestStore, ServeError> {
        crate::checkpoint::open_store(&self.checkpoint, &self.dir, &self.s3, name).map_err(external)
    }
}

/// The current (or last) run of a pipeline.
#[derive(Clone)]
struct Run {
    /// Its counters.
    metrics: Arc<Metrics>,
    /// Its control: savepoints and swaps.
    control: Control,
}

/// Records per second over the last few seconds, from samples of the counters.
#[derive(Default)]
struct Rates {
    /// (when, records from the source, records into each stage, records each sink wrote).
    samples: VecDeque<(Instant, u64, Vec<u64>, Vec<u64>)>,
}

/// Samples kept: one a second, so rates are over five seconds.
const RATE_SAMPLES: usize = 6;

impl Rates {
    fn sample(&mut self, metrics: &Metrics) {
        if self.samples.len() == RATE_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((
            Instant::now(),
            metrics.records_read(),
            metrics
                .stage_figures()
                .iter()
                .map(|s| s.records_in)
                .collect(),
            metrics.sink_figures().iter().map(|(_, n)| *n).collect(),
        ));
    }

    /// Per second: from the source, into each stage, written by each sink (nothing unless the
    /// pipeline is in `state` running: the samples of a stopped run are of the past).
    fn per_sec(&self, state: State) -> (f64, Vec<f64>, Vec<f64>) {
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return (0.0, Vec::new(), Vec::new());
        };
        if state != State::Running {
            return (0.0, Vec::new(), Vec::new());
        }
        let secs = last.0.duration_since(first.0).as_secs_f64();
        if secs <= 0.0 {
            return (0.0, Vec::new(), Vec::new());
        }
        let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        let each = |a: &[u64], b: &[u64]| a.iter().zip(b).map(|(a, b)| rate(*a, *b)).collect();
        (
            rate(first.1, last.1),
            each(&first.2, &last.2),
            each(&first.3, &last.3),
        )
    }
}

/// A pipeline the server manages.
pub struct Managed {
    /// Its name.
    name: String,
    /// Its file in the pipelines folder.
    file: PathBuf,
    /// Its event log and plugin versions.
    history: History,
    /// What changes as it lives; locked briefly, never across an await.
    inner: Mutex<Inner>,
    /// Its state as it changes, for those who wait for one (a stop waits for the end).
    states: watch::Sender<State>,
    /// One start, replacement, deletion or swap at a time.
    ops: tokio::sync::Mutex<()>,
}

struct Inner {
    state: State,
    /// When the current run started.
    started_ms: Option<i64>,
    /// Runs started since the pipeline was started, the first included.
    attempts: u64,
    /// Restarts after failures, over the pipeline's life in this server.
    restarts: u64,
    /// When it tries again, while restarting.
    next_restart_ms: Option<i64>,
    /// Why it last failed, while restarting or failed.
    error: Option<String>,
    /// Problems of its file, when it did not load.
    problems: Option<SpecErrors>,
    /// Runs that failed at a checkpoint (storing or committing it), over its life here.
    checkpoint_failures: u64,
    run: Option<Run>,
    shape: Option<Arc<Shape>>,
    /// Tells the task that drives it to stop.
    stop: Option<watch::Sender<bool>>,
    exceptions: VecDeque<Exception>,
    rates: Rates,
    versions: BTreeMap<String, StageVersions>,
}

impl Managed {
    fn new(name: String, file: PathBuf, data_dir: &Path) -> Managed {
        let history = History::open(data_dir.join("pipelines").join(&name));
        let versions = history.versions();
        Managed {
            name,
            file,
            history,
            states: watch::Sender::new(State::Stopped),
            inner: Mutex::new(Inner {
                state: State::Stopped,
                started_ms: None,
                attempts: 0,
                restarts: 0,
                next_restart_ms: None,
                error: None,
                problems: None,
                checkpoint_failures: 0,
                run: None,
                shape: None,
                stop: None,
                exceptions: VecDeque::new(),
                rates: Rates::default(),
                versions,
            }),
            ops: tokio::sync::Mutex::new(()),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes what is known of it with `f`, and tells those who wait on its state.
    fn update<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut inner = self.inner();
        let out = f(&mut inner);
        self.states.send_replace(inner.state);
        out
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its state now.
    pub fn state(&self) -> State {
        self.inner().state
    }

    /// Its event log, oldest first.
    pub fn events(&self) -> Vec<history::Event> {
        self.history.events()
    }

    /// Its failures, newest first.
    pub fn exceptions(&self) -> Vec<Exception> {
        self.inner().exceptions.iter().rev().cloned().collect()
    }

    /// Restarts after failures so far.
    pub fn restarts(&self) -> u64 {
        self.inner().restarts
    }

    /// Runs that failed at a checkpoint (storing or committing it).
    pub fn checkpoint_failures(&self) -> u64 {
        self.inner().checkpoint_failures
    }

    /// The counters of its current (or last) run.
    pub fn metrics(&self) -> Option<Arc<Metrics>> {
        self.inner().run.as_ref().map(|r| r.metrics.clone())
    }

    /// Its running run and shape; a conflict when it is not running.
    fn running(&self) -> Result<(Run, Arc<Shape>), ServeError> {
        let inner = self.inner();
        match (&inner.state, &inner.run, &inner.shape) {
            (State::Running, Some(run), Some(shape)) => Ok((run.clone(), shape.clone())),
            (state, ..) => Err(ServeError::Conflict(format!(
                "pipeline `{}` is not running (it is {})",
                self.name,
                view::state_name(*state)
            ))),
        }
    }

    /// Its shape as last loaded, for its checkpoint store.
    fn shape(&self) -> Result<Arc<Shape>, ServeError> {
        self.inner().shape.clone().ok_or_else(|| {
            ServeError::Conflict(format!(
                "pipeline `{}` has not loaded, so its checkpoint store is not known",
                self.name
            ))
        })
    }

    fn save_versions(&self, versions: &BTreeMap<String, StageVersions>) {
        if let Err(e) = self.history.save_versions(versions) {
            tracing::warn!(pipeline = self.name, "cannot save the plugin versions: {e}");
        }
    }
}

/// How a new plugin version is given.
pub enum PluginSource {
    /// Its bytes, with a name for people.
    Bytes {
        /// The upload's name.
        name: String,
        /// The component.
        bytes: Vec<u8>,
    },
    /// One in the plugin store.
    Sha256(String),
    /// A file on the server.
    Path(PathBuf),
}

/// A swap that happened.
#[derive(Clone, Debug, Serialize)]
pub struct Swap {
    /// The stage.
    pub stage: String,
    /// The version it ran before (hex sha256).
    pub from: String,
    /// The version it runs now.
    pub to: String,
    /// The barrier it swapped at: records before it went through `from`, after it through `to`.
    pub checkpoint: u64,
    /// Time to compile and initialise the new version (0 when compiled before).
    pub compile_ms: u64,
    /// Time the stage did not process records for the swap itself.
    pub pause_us: u64,
    /// When (ms since the epoch).
    pub at_ms: i64,
}

/// A stage's versions, as the API shows them.
#[derive(Clone, Debug, Serialize)]
pub struct Versions {
    /// What it runs.
    pub current: Option<PluginRef>,
    /// Where a rollback goes.
    pub previous: Option<PluginRef>,
    /// Every change, oldest first.
    pub history: Vec<history::VersionChange>,
}

/// What a stop did.
#[derive(Clone, Debug, Serialize)]
pub struct Stopped {
    /// `stopped`.
    pub state: State,
    /// The savepoint its last checkpoint was kept as, when asked for.
    pub savepoint: Option<view::SavepointView>,
}

/// The pipelines of one server.
pub struct Supervisor {
    host: Arc<PluginHost>,
    settings: Settings,
    plugins: PluginStore,
    pipelines: Mutex<BTreeMap<String, Arc<Managed>>>,
}

impl Supervisor {
    /// A server with no pipelines yet; creates its folders.
    pub fn new(host: Arc<PluginHost>, mut settings: Settings) -> std::io::Result<Arc<Supervisor>> {
        // Absolute, so that the paths in messages and in the API can be used from anywhere.
        for dir in [&mut settings.pipelines_dir, &mut settings.data_dir] {
            std::fs::create_dir_all(&*dir)?;
            *dir = std::fs::canonicalize(&*dir)?;
        }
        let plugins = PluginStore::open(settings.data_dir.join("plugins"))?;
        Ok(Arc::new(Supervisor {
            host,
            settings,
            plugins,
            pipelines: Mutex::new(BTreeMap::new()),
        }))
    }

    fn pipelines(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Managed>>> {
        self.pipelines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The pipeline `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Managed>, ServeError> {
        self.pipelines()
            .get(name)
            .cloned()
            .ok_or_else(|| ServeError::NotFound(format!("there is no pipeline `{name}`")))
    }

    /// Every pipeline, by name.
    pub fn all(&self) -> Vec<Arc<Managed>> {
        self.pipelines().values().cloned().collect()
    }

    /// The plugin store.
    pub fn plugins(&self) -> &PluginStore {
        &self.plugins
    }

    /// Starts every `*.yaml` of the pipelines folder (in name order) and the task that samples
    /// rates; returns how many files there were. A file that does not load shows as a failed
    /// pipeline, named after its file when its name cannot be read.
    pub fn start_all(self: &Arc<Self>) -> std::io::Result<usize> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.settings.pipelines_dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        for file in &files {
            // The name names folders of the server's: only a valid one is taken as it is.
            let stem = file
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
            let name = match pipeline::parse(file) {
                Ok(spec) if pipeline::valid_name(&spec.name.value) => spec.name.value,
                _ if pipeline::valid_name(&stem) => stem,
                _ => {
                    tracing::error!(
                        file = %file.display(),
                        "neither the file's pipeline name nor its file name is a valid name (letters, digits, `-` and `_`); it is not started"
                    );
                    continue;
                }
            };
            let managed = Arc::new(Managed::new(
                name.clone(),
                file.clone(),
                &self.settings.data_dir,
            ));
            if self.pipelines().contains_key(&name) {
                let other = self.get(&name).map(|m| m.file.clone()).unwrap_or_default();
                tracing::error!(
                    file = %file.display(),
                    "pipeline `{name}` is already defined by {}; this file is not started",
                    other.display()
                );
                continue;
            }
            self.pipelines().insert(name, managed.clone());
            self.launch(&managed, None, None);
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(supervisor) = weak.upgrade() else {
                    return;
                };
                for managed in supervisor.all() {
                    let mut inner = managed.inner();
                    if let Some(run) = inner.run.clone() {
                        inner.rates.sample(&run.metrics);
                    }
                }
            }
        });
        Ok(files.len())
    }
}

fn no_stage(name: &str, stage: &str) -> ServeError {
    ServeError::NotFound(format!("pipeline `{name}` has no stage `{stage}`"))
}

/// The first 12 hex digits of a digest, as people read them.
pub fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let policy = RestartPolicy {
            attempts: 5,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            stable_after: Duration::from_secs(60),
        };
        let waits: Vec<u128> = (1..=6).map(|n| policy.backoff(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.backoff(200), Duration::from_millis(1000));
    }
}
