//! Running a pipeline: tasks, channels, checkpoint barriers and shutdown.
//!
//! ```text
//!  source task ──batches──▶ stage chain (one thread) ──per output──▶ sink tasks
//!      │ barrier every checkpoint.interval      │ dead letters ──────▶ dlq sinks
//! ```
//!
//! Every hop is a bounded channel of batches, so a slow sink slows the stages and the source;
//! nothing is dropped. The stages of a chain run one after another on one thread (calls into
//! WebAssembly are synchronous and a thread hop would cost more than a simple stage). A
//! checkpoint barrier travels the same channels as the data, so when a sink sees it, it has
//! seen every record before it; sinks then finish and publish their files.

pub mod control;
pub mod event_time;
pub mod progress;
mod source;

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, atomic::AtomicBool},
};

use tokio::sync::mpsc;

use crate::{
    pipeline::{Pipeline, Route},
    plugin::now_ms,
    record::{Batch, split_outputs},
    sinks::{Sink, SinkError},
    sources::{SharedDrain, Source, SourceError},
};
pub use control::{Control, ControlError, Controls, Swapped, control};
pub use progress::{Metrics, Summary};

/// Batches that may wait in a channel: enough to keep every task busy, few enough to bound
/// memory (a batch is ~1,000 records).
const CHANNEL_BATCHES: usize = 4;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The source failed.
    #[error("source: {0}")]
    Source(#[from] SourceError),
    /// A sink failed.
    #[error("sink `{name}`: {error}")]
    Sink {
        /// The sink.
        name: String,
        /// What happened.
        error: SinkError,
    },
    /// A stage could not go on (its instance could not be restarted, or it broke the
    /// interface's rules).
    #[error("stage `{name}`: {message}")]
    Stage {
        /// The stage.
        name: String,
        /// What happened.
        message: String,
    },
    /// A checkpoint could not be stored or committed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A bug in Weir.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What flows from the source to the stage chain.
enum ChainMsg {
    /// Records.
    Batch(Batch),
    /// Records the source refused, for the dead-letter output.
    DeadLetters(Batch),
    /// A checkpoint barrier; `full`: its state is written as one full snapshot (a savepoint's).
    Checkpoint {
        /// The checkpoint.
        id: u64,
        /// Whether the state file is a full snapshot.
        full: bool,
    },
    /// The source has ended by itself (not stopped): event time may advance to the end.
    End,
}

/// What the checkpoint coordinator hears.
pub(crate) enum Coord {
    /// Checkpoint `id`'s barrier has left the source, which stood at `offsets`.
    Barrier {
        /// The checkpoint.
        id: u64,
        /// The source's position.
        offsets: Vec<crate::checkpoint::Offset>,
        /// Whether it is kept as a savepoint, and who waits to hear how that went.
        keep: control::Keep,
    },
    /// The stage chain has written checkpoint `id`'s state (its file, if anything changed) and
    /// noted where event time stood.
    State {
        /// The checkpoint.
        id: u64,
        /// The state file to upload, if any.
        file: Option<crate::state::StateFile>,
        /// Each partition's newest event time.
        event_time: Vec<event_time::PartitionTime>,
        /// The plugin each stage runs after the barrier (a swap at it included).
        plugins: std::collections::BTreeMap<String, String>,
        /// The swaps made at the barrier, told once the checkpoint commits.
        swapped: Vec<(control::SwapReply, control::Swapped)>,
    },
    /// Sink `sink` has pre-committed checkpoint `id`.
    PreCommitted {
        /// The checkpoint.
        id: u64,
        /// The sink's index.
        sink: usize,
        /// What it needs committed.
        pending: crate::checkpoint::Pending,
        /// When the records it wrote for the checkpoint entered the stages, and how many, for
        /// the end-to-end latency once they are visible.
        entered: Vec<(i64, u64)>,
    },
}

/// What flows to a sink.
enum SinkMsg {
    /// Records, with the plugin that emitted them (when a stage did).
    Batch(Arc<Batch>, Option<Arc<str>>),
    /// A checkpoint barrier, with the checkpoint's number.
    Checkpoint(u64),
}

/// Sends batches to the sinks that read each output.
#[derive(Clone)]
struct Router {
    /// Each sink's route and channel.
    sinks: Vec<(Route, mpsc::Sender<SinkMsg>)>,
}

impl Router {
    /// The channels of the sinks that read `route`.
    fn targets(&self, route: Route) -> impl Iterator<Item = &mpsc::Sender<SinkMsg>> {
        self.sinks
            .iter()
            .filter(move |(r, _)| *r == route)
            .map(|(_, tx)| tx)
    }

    /// Sends `batch` to every sink that reads `route`, waiting while their channels are full;
    /// fails if a sink has stopped. For the stage thread.
    fn blocking_send(
        &self,
        route: Route,
        batch: Batch,
        plugin: Option<&Arc<str>>,
    ) -> Result<(), ()> {
        if !batch.is_empty() {
            let batch = Arc::new(batch);
            for tx in self.targets(route) {
                tx.blocking_send(SinkMsg::Batch(batch.clone(), plugin.cloned()))
                    .map_err(|_| ())?;
            }
        }
        Ok(())
    }

    /// Sends checkpoint barrier `id` to every sink that reads `route`.
    async fn send_checkpoint(&self, route: Route, id: u64) -> Result<(), ()> {
        for tx in self.targets(route) {
            tx.send(SinkMsg::Checkpoint(id)).await.map_err(|_| ())?;
        }
        Ok(())
    }

    /// As [`Router::blocking_send`], for async tasks.
    async fn send(&self, route: Route, batch: Batch) -> Result<(), ()> {
        if !batch.is_empty() {
            let batch = Arc::new(batch);
            for tx in self.targets(route) {
                tx.send(SinkMsg::Batch(batch.clone(), None))
                    .await
                    .map_err(|_| ())?;
            }
        }
        Ok(())
    }
}

/// Options of a run.
#[derive(Default)]
pub struct RunOptions {
    /// Print a progress line to standard error at most once a second.
    pub progress: bool,
    /// Counters to update, for a caller that watches the run (made with
    /// [`Metrics::for_pipeline`] from the same pipeline); the run makes its own otherwise.
    pub metrics: Option<Arc<Metrics>>,
    /// The run's end of a [`control()`] pair, for a caller that takes savepoints or swaps
    /// plugins while it runs.
    pub control: Option<Controls>,
}

/// Runs `pipeline` until its source ends or `shutdown` completes, then flushes every sink and
/// returns what was done.
pub async fn run(
    pipeline: Pipeline,
    shutdown: impl Future<Output = ()>,
    options: RunOptions,
) -> Result<Summary, RunError> {
    let run_id = chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ").to_string();
    let Pipeline {
        name,
        dir,
        source: source_spec,
        sinks: sink_specs,
        mut stages,
        checkpoint,
        event_time: event_time_settings,
        s3,
        ..
    } = pipeline;
    let metrics = options.metrics.clone().unwrap_or_else(|| {
        Arc::new(Metrics::new(
            stages.iter().map(|s| s.name.clone()).collect(),
            sink_specs.iter().map(|s| s.name.clone()).collect(),
        ))
    });
    for (index, stage) in stages.iter().enumerate() {
        metrics.stage_plugin(index, &stage.runner.plugin().digest);
    }
    let (barrier_requests, swaps, savepoint_on_stop) = match options.control {
        Some(c) => (Some(c.barriers), Some(c.swaps), Some(c.savepoint_on_stop)),
        None => (None, None, None),
    };

    // Recovery: the newest manifest says where the last checkpoint left the source and what
    // the sinks had to commit.
    let manifests = crate::checkpoint::open_store(&checkpoint, &dir, &s3, &name)
        .map_err(|e| RunError::Checkpoint(e.to_string()))?;
    let latest = manifests
        .latest()
        .await
        .map_err(|e| RunError::Checkpoint(e.to_string()))?;
    let last_id = latest.as_ref().map_or(0, |m| m.checkpoint);

    // The stages' state stands where the newest manifest says, whatever a crash left behind.
    let state = if stages.is_empty() {
        None
    } else {
        let db = restore_state(&checkpoint, &dir, &name, &manifests, latest.as_ref()).await?;
        for stage in &mut stages {
            stage
                .runner
                .attach_state(db.stage(&stage.name))
                .map_err(|e| RunError::Checkpoint(e.to_string()))?;
        }
        Some(ChainState {
            db,
            folder: crate::pipeline::normalize(&dir.join(&checkpoint.state_dir).join(&name))
                .join("upload"),
            chain: Arc::new(std::sync::atomic::AtomicUsize::new(
                latest
                    .as_ref()
                    .and_then(|m| m.state.as_ref())
                    .map_or(0, |s| s.files.len()),
            )),
        })
    };
    let watermarks = event_time::Watermarks::new(
        event_time_settings,
        latest.as_ref().map_or(&[][..], |m| &m.event_time),
    );

    // Sinks first: a sink that cannot open stops the run before anything is read.
    let mut opened = Vec::new();
    let mut committers = Vec::new();
    let cx = crate::sinks::OpenContext {
        dir: &dir,
        pipeline: &name,
        run: &run_id,
        epoch: last_id + 1,
        s3: &s3,
    };
    for spec in &sink_specs {
        let sink_error = |error| RunError::Sink {
            name: spec.name.clone(),
            error,
        };
        let (sink, mut committer) = Sink::open(&spec.kind, &cx).await.map_err(sink_error)?;
        if let Some(c) = &mut committer {
            recover(c, &name, &spec.name, latest.as_ref())
                .await
                .map_err(sink_error)?;
        }
        opened.push(sink);
        committers.push((spec.name.clone(), committer));
    }
    let resume = latest
        .as_ref()
        .map(|m| m.offsets.clone())
        .unwrap_or_default();

    let channels: Vec<_> = sink_specs
        .iter()
        .map(|_| mpsc::channel::<SinkMsg>(CHANNEL_BATCHES))
        .collect();
    let router = Router {
        sinks: sink_specs
            .iter()
            .zip(&channels)
            .map(|(s, (tx, _))| (s.route, tx.clone()))
            .collect(),
    };
    let dlq_router = Router {
        sinks: router
            .sinks
            .iter()
            .filter(|(r, _)| *r == Route::Dlq)
            .cloned()
            .collect(),
    };

    // Only sinks that may reject records hold a way to the dead letters; a dlq sink holding one
    // would keep its own channel open forever.
    let rejects = |spec: &crate::pipeline::Sink, sink: &Sink| {
        spec.route != Route::Dlq
            && matches!(
                sink,
                Sink::Parquet(_) | Sink::Iceberg(_) | Sink::Postgres(_) | Sink::Redis(_)
            )
    };
    let rejecting = sink_specs
        .iter()
        .zip(&opened)
        .filter(|(spec, sink)| rejects(spec, sink))
        .count();
    let commits: Vec<bool> = committers.iter().map(|(_, c)| c.is_some()).collect();
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<Coord>();
    let (committed_tx, committed_rx) = mpsc::unbounded_channel();
    let coordinator = tokio::spawn(coordinate(
        ack_rx,
        committed_tx,
        manifests,
        committers,
        Coordinated {
            pipeline: name.clone(),
            stateful: state.is_some(),
            chain: latest
                .as_ref()
                .and_then(|m| m.state.as_ref())
                .map(|s| s.files.clone())
                .unwrap_or_default(),
        },
        metrics.clone(),
    ));
    let mut sink_tasks = Vec::new();
    for (index, ((spec, sink), (_, rx))) in sink_specs.iter().zip(opened).zip(channels).enumerate()
    {
        let task = SinkTask {
            name: spec.name.clone(),
            index,
            commits: commits[index],
            upstreams: if spec.route == Route::Dlq {
                1 + rejecting
            } else {
                1
            },
            dlq: rejects(spec, &sink).then(|| dlq_router.clone()),
            acks: ack_tx.clone(),
            metrics: metrics.clone(),
        };
        sink_tasks.push((spec.name.clone(), tokio::spawn(sink_task(sink, rx, task))));
    }
    drop(dlq_router);

    // The stage chain on its own thread.
    let (chain_tx, chain_rx) = mpsc::channel::<ChainMsg>(CHANNEL_BATCHES);
    let chain_task = Chain {
        router,
        metrics: metrics.clone(),
        watermarks,
        state,
        coordinator: ack_tx.clone(),
        swaps: match swaps {
            Some(swaps) => {
                let (unload, replaced) = std::sync::mpsc::channel();
                std::thread::Builder::new()
                    .name("weir-unload".into())
                    .spawn(move || replaced.into_iter().for_each(drop))
                    .map_err(|e| {
                        RunError::Internal(format!("cannot start the unload thread: {e}"))
                    })?;
                Some((swaps, unload))
            }
            None => None,
        },
    };
    let chain = std::thread::Builder::new()
        .name("weir-stages".into())
        .spawn(move || run_chain(stages, chain_rx, chain_task))
        .map_err(|e| RunError::Internal(format!("cannot start the stage thread: {e}")))?;

    // The source on its own thread too, driven through the driver it shares with a Kafka
    // consumer's rebalance callback.
    let driver = Arc::new(Mutex::new(source::Driver::new(
        chain_tx,
        committed_rx,
        ack_tx,
        last_id,
        metrics.clone(),
    )));
    let drain: SharedDrain = driver.clone();
    let source = Source::open(&source_spec, &dir, drain, &resume, metrics.clone())?;
    let reporter = options
        .progress
        .then(|| tokio::spawn(progress::report(metrics.clone(), source.label())));
    let stop = Arc::new(AtomicBool::new(false));
    let source_thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("weir-source".into())
            .spawn(move || {
                source::run(
                    source,
                    driver,
                    source::Timing {
                        interval: checkpoint.interval,
                        requests: barrier_requests,
                        savepoint_on_stop,
                    },
                    stop,
                )
            })
            .map_err(|e| RunError::Internal(format!("cannot start the source thread: {e}")))?
    };
    let joined = tokio::task::spawn_blocking(move || source_thread.join());
    tokio::pin!(joined, shutdown);
    let joined = tokio::select! {
        joined = &mut joined => joined,
        () = &mut shutdown => {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            joined.await
        }
    };
    let source_result = joined
        .map_err(|e| RunError::Internal(e.to_string()))?
        .map_err(|_| RunError::Internal("the source thread panicked".into()))?;
    let chain_result = tokio::task::spawn_blocking(move || chain.join())
        .await
        .map_err(|e| RunError::Internal(e.to_string()))?
        .map_err(|_| RunError::Internal("the stage thread panicked".into()))?;
    let mut sink_results = Vec::new();
    for (name, task) in sink_tasks {
        let result = task.await.map_err(|e| RunError::Internal(e.to_string()))?;
        sink_results.push((name, result));
    }
    let coordinated = coordinator
        .await
        .map_err(|e| RunError::Internal(e.to_string()))?;
    if let Some(reporter) = reporter {
        reporter.abort();
    }

    // The first cause wins: a sink that failed explains why the chain and source stopped.
    let mut locations = Vec::new();
    for (name, result) in sink_results {
        match result {
            Ok(location) => locations.push((name, location)),
            Err(error) => return Err(RunError::Sink { name, error }),
        }
    }
    coordinated?;
    chain_result?;
    source_result?;
    let mut summary = metrics.summary(locations);
    summary.resumed_after = (last_id > 0).then_some(last_id);
    Ok(summary)
}

/// What the stage chain holds besides its stages.
struct Chain {
    /// Where outputs go.
    router: Router,
    /// Counters.
    metrics: Arc<Metrics>,
    /// Event time.
    watermarks: event_time::Watermarks,
    /// The stages' state database, when there are stages.
    state: Option<ChainState>,
    /// Where each checkpoint's state goes: the coordinator.
    coordinator: mpsc::UnboundedSender<Coord>,
    /// New plugin versions waiting for the next barrier, when the run is controlled, and where
    /// the versions they replace go to be dropped: a thread of the run's own, since unmapping
    /// an instance's memory is no work for the stages, and starting a thread per swap would
    /// be most of a swap's pause.
    swaps: Option<(
        std::sync::mpsc::Receiver<control::SwapRequest>,
        std::sync::mpsc::Sender<crate::plugin::StageRunner>,
    )>,
}

/// The state database as the stage chain writes it at checkpoints.
struct ChainState {
    /// The database.
    db: crate::state::StateDb,
    /// Where state files wait for upload.
    folder: std::path::PathBuf,
    /// Files in the newest checkpoint's chain (0: no state stored yet), as the database's
    /// writer thread, which writes them, counts.
    chain: Arc<std::sync::atomic::AtomicUsize>,
}

/// The stage chain: runs every batch through the stages and routes what comes out.
fn run_chain(
    mut stages: Vec<crate::pipeline::Stage>,
    mut rx: mpsc::Receiver<ChainMsg>,
    mut chain: Chain,
) -> Result<(), RunError> {
    let stopped = || RunError::Internal("a sink stopped".into());
    while let Some(msg) = rx.blocking_recv() {
        let router = &chain.router;
        match msg {
            ChainMsg::Batch(mut batch) => {
                batch.processing_time_ms = now_ms();
                chain.watermarks.observe(&batch);
                let for_source_sinks = router
                    .targets(Route::Source)
                    .next()
                    .is_some()
                    .then(|| batch.clone());
                if let Some(copy) = for_source_sinks {
                    router
                        .blocking_send(Route::Source, copy, None)
                        .map_err(|_| stopped())?;
                }
                run_stages(&mut stages, 0, batch, router, &chain.metrics)?;
                if let Some(watermark) = chain.watermarks.advance() {
                    advance(&mut stages, watermark, router, &chain.metrics)?;
                }
                note_instances(&stages, &chain.metrics);
            }
            ChainMsg::DeadLetters(dead) => {
                router
                    .blocking_send(Route::Dlq, dead, None)
                    .map_err(|_| stopped())?;
            }
            ChainMsg::Checkpoint { id, full } => {
                // A partition may have gone idle since the last batch.
                if let Some(watermark) = chain.watermarks.advance() {
                    advance(&mut stages, watermark, router, &chain.metrics)?;
                }
                // Everything before the barrier went through the old versions; everything
                // after it goes through the new ones, and the checkpoint says which they are.
                let swapped = swap_plugins(&mut stages, id, &chain);
                checkpoint_state(&mut stages, id, full, swapped, &mut chain)?;
                for (_, tx) in &chain.router.sinks {
                    tx.blocking_send(SinkMsg::Checkpoint(id))
                        .map_err(|_| stopped())?;
                }
            }
            ChainMsg::End => {
                // The input is complete: event time reaches its end, so every timer fires and
                // every window closes, stage by stage.
                advance(&mut stages, i64::MAX, router, &chain.metrics)?;
            }
        }
    }
    // The last checkpoints' state may still be on its way to sled: wait for it, and fail the
    // run if it could not be written.
    if let Some(state) = &chain.state {
        state
            .db
            .settled()
            .map_err(|e| RunError::Checkpoint(e.to_string()))?;
    }
    Ok(())
}

/// Puts the new plugin versions waiting for this barrier in place; the runners they replace go
/// to the unload thread. Returns the swaps made, to be confirmed once the checkpoint commits.
fn swap_plugins(
    stages: &mut [crate::pipeline::Stage],
    id: u64,
    chain: &Chain,
) -> Vec<(control::SwapReply, control::Swapped)> {
    let mut swapped = Vec::new();
    let Some((swaps, unload)) = &chain.swaps else {
        return swapped;
    };
    while let Ok(request) = swaps.try_recv() {
        let control::SwapRequest {
            stage,
            runner,
            reply,
        } = request;
        let Some(target) = stages.get_mut(stage) else {
            let _ = reply.send(Err(format!("there is no stage number {stage}")));
            continue;
        };
        let started = std::time::Instant::now();
        match target.runner.swap(runner) {
            Ok(old) => {
                // Were the unload thread gone, `old` would come back in the error and drop here.
                let _ = unload.send(old);
                // Everything the stage thread did for the swap.
                let pause = started.elapsed();
                chain
                    .metrics
                    .swapped(stage, &target.runner.plugin().digest, pause);
                tracing::info!(
                    stage = target.name,
                    checkpoint = id,
                    plugin = &*target.runner.plugin().digest,
                    pause_us = pause.as_micros() as u64,
                    "swapped the stage's plugin"
                );
                swapped.push((
                    reply,
                    control::Swapped {
                        checkpoint: id,
                        pause,
                    },
                ));
            }
            Err(e) => {
                let _ = reply.send(Err(e.to_string()));
            }
        }
    }
    swapped
}

/// Notes each stage's instance figures (memory, fuel, traps) in the metrics, once per batch.
fn note_instances(stages: &[crate::pipeline::Stage], metrics: &Metrics) {
    for (index, stage) in stages.iter().enumerate() {
        metrics.stage_instance(
            index,
            stage.runner.memory_bytes(),
            stage.runner.fuel_consumed(),
            stage.runner.replacements(),
        );
    }
}

/// Hands every stage, in order, the watermark, and routes what the timers it fires emit (a
/// stage's windows closing go through the stages after it before those see the watermark).
fn advance(
    stages: &mut [crate::pipeline::Stage],
    watermark: i64,
    router: &Router,
    metrics: &Metrics,
) -> Result<(), RunError> {
    for index in 0..stages.len() {
        let stage = &mut stages[index];
        let out = stage
            .runner
            .on_watermark(watermark)
            .map_err(|message| RunError::Stage {
                name: stage.name.clone(),
                message,
            })?;
        if out.records.is_empty() {
            continue;
        }
        // What a watermark emits entered the stages now, as far as its latency goes.
        let mut empty = Batch::with_capacity("", 0, 0, 0);
        empty.processing_time_ms = now_ms();
        let has_next = index + 1 < stages.len();
        let next = route_outputs(
            &stages[index],
            index,
            out,
            &empty,
            has_next,
            router,
            metrics,
        )?;
        run_stages(stages, index + 1, next, router, metrics)?;
    }
    Ok(())
}

/// Writes checkpoint `id`'s state: hands every stage's changes to the state database's writer
/// thread, which applies them after everything handed over before, writes the state file and
/// tells the coordinator (with where event time stood at the barrier, and the plugins that run
/// after it). The stages go on at once: until the writer is done, their reads see the changes
/// in memory. With `full`, the file is a full snapshot, whatever changed.
fn checkpoint_state(
    stages: &mut [crate::pipeline::Stage],
    id: u64,
    full: bool,
    swapped: Vec<(control::SwapReply, control::Swapped)>,
    chain: &mut Chain,
) -> Result<(), RunError> {
    let event_time = chain.watermarks.snapshot();
    let plugins = stages
        .iter()
        .map(|s| (s.name.clone(), s.runner.plugin().digest.to_string()))
        .collect();
    let Some(state) = &chain.state else {
        let _ = chain.coordinator.send(Coord::State {
            id,
            file: None,
            event_time,
            plugins,
            swapped,
        });
        return Ok(());
    };
    let failed = |e: crate::state::StateError| RunError::Checkpoint(e.to_string());
    let seq = state.db.reserve();
    // Far behind (a slow disk): wait, rather than hold ever more changes in memory.
    state
        .db
        .wait_for(seq.saturating_sub(crate::state::MAX_BEHIND))
        .map_err(failed)?;
    let changes: Vec<_> = stages
        .iter_mut()
        .map(|s| (s.name.clone(), s.runner.take_changes(seq)))
        .collect();
    let (files, folder) = (state.chain.clone(), state.folder.clone());
    let coordinator = chain.coordinator.clone();
    let job = move |db: &crate::state::StateDb| {
        let file = if !full && db.unchanged(&changes) {
            // A stateless stage, or a quiet second: nothing to write but where it stands.
            db.mark(id)?;
            None
        } else {
            checkpoint_file(db, &files, &folder, id, &changes, full)?
        };
        let _ = coordinator.send(Coord::State {
            id,
            file,
            event_time,
            plugins,
            swapped,
        });
        Ok(())
    };
    state.db.submit(seq, Box::new(job)).map_err(failed)
}

/// Moves checkpoint `id`'s `changes` into the database and writes its state file: a delta, or
/// all the state when nothing is stored yet, the chain of deltas is long, or `full` asks for
/// it. `files` counts the chain.
fn checkpoint_file(
    db: &crate::state::StateDb,
    files: &std::sync::atomic::AtomicUsize,
    folder: &std::path::Path,
    id: u64,
    changes: &[(String, crate::state::Changes)],
    full: bool,
) -> Result<Option<crate::state::StateFile>, crate::state::StateError> {
    use std::sync::atomic::Ordering::Relaxed;
    let chain = files.load(Relaxed);
    let full = full || chain == 0 || chain >= crate::state::FULL_EVERY as usize;
    let local = folder.join(format!("chk-{id:020}"));
    let file = db.commit(id, changes, full, &local)?;
    if file.entries == 0 && (!full || chain == 0) {
        // Nothing left in the state, and nothing stored yet: the chain stays as it is.
        let _ = std::fs::remove_file(&file.local);
        Ok(None)
    } else {
        files.store(if file.full { 1 } else { chain + 1 }, Relaxed);
        Ok(Some(file))
    }
}

/// Runs `batch` through stages `from..` and routes every output.
fn run_stages(
    stages: &mut [crate::pipeline::Stage],
    from: usize,
    mut batch: Batch,
    router: &Router,
    metrics: &Metrics,
) -> Result<(), RunError> {
    let stopped = || RunError::Internal("a sink stopped".into());
    for index in from..stages.len() {
        if batch.is_empty() {
            return Ok(());
        }
        let stage = &mut stages[index];
        let out = stage.runner.process(&batch).map_err(|e| RunError::Stage {
            name: stage.name.clone(),
            message: e.to_string(),
        })?;
        metrics.stage_in(index, batch.len());
        if !out.errors.is_empty() {
            let dead = batch.dead_letters(
                &out.errors,
                &stage.name,
                Some(&stage.runner.plugin().digest),
            );
            metrics.stage_errors(index, dead.len());
            metrics.dead_letters(dead.len());
            router
                .blocking_send(Route::Dlq, dead, None)
                .map_err(|_| stopped())?;
        }
        let has_next = index + 1 < stages.len();
        batch = route_outputs(
            &stages[index],
            index,
            out,
            &batch,
            has_next,
            router,
            metrics,
        )?;
    }
    Ok(())
}

/// Sends a stage's outputs to the sinks that read them, and returns its default output for the
/// next stage (empty when there is none).
fn route_outputs(
    stage: &crate::pipeline::Stage,
    index: usize,
    out: crate::record::OutputBatch,
    input: &Batch,
    has_next: bool,
    router: &Router,
    metrics: &Metrics,
) -> Result<Batch, RunError> {
    let declared = stage.runner.outputs().len();
    if let Some(bad) = out.records.iter().find(|r| r.output as usize > declared) {
        return Err(RunError::Stage {
            name: stage.name.clone(),
            message: format!(
                "the plugin emitted to output {} but declared {declared} named outputs in init",
                bad.output
            ),
        });
    }
    metrics.stage_out(index, out.records.len());
    let plugin = Some(&stage.runner.plugin().digest);
    let mut split = split_outputs(out, input, declared).into_iter();
    let default = split
        .next()
        .expect("split_outputs returns the default output first");
    let stopped = |()| RunError::Internal("a sink stopped".into());
    for (n, batch) in split.enumerate() {
        router
            .blocking_send(
                Route::Stage {
                    stage: index,
                    output: n as u32 + 1,
                },
                batch,
                plugin,
            )
            .map_err(stopped)?;
    }
    let route = Route::Stage {
        stage: index,
        output: 0,
    };
    if router.targets(route).next().is_none() {
        return Ok(default);
    }
    if has_next {
        router
            .blocking_send(route, default.clone(), plugin)
            .map_err(stopped)?;
        Ok(default)
    } else {
        router
            .blocking_send(route, default, plugin)
            .map_err(stopped)?;
        Ok(Batch::with_capacity("", 0, 0, 0))
    }
}

/// What a sink task needs besides its sink.
struct SinkTask {
    /// The sink's name.
    name: String,
    /// Its index in the metrics.
    index: usize,
    /// Whether it commits at checkpoints (its records become visible then), or writes them
    /// out as they come.
    commits: bool,
    /// How many senders send it checkpoint barriers (the stage chain, and for a dead-letter
    /// sink every sink that may reject records): it finishes checkpoint `n` once it has seen
    /// barrier `n` from each, so everything before the barrier on every path is in.
    upstreams: usize,
    /// Where its rejected records go, if it may reject any.
    dlq: Option<Router>,
    /// Where its pre-commits go: the coordinator.
    acks: mpsc::UnboundedSender<Coord>,
    /// Counters.
    metrics: Arc<Metrics>,
}

async fn sink_task(
    mut sink: Sink,
    mut rx: mpsc::Receiver<SinkMsg>,
    task: SinkTask,
) -> Result<Option<String>, SinkError> {
    let SinkTask {
        name,
        index,
        commits,
        upstreams,
        dlq,
        acks,
        metrics,
    } = task;
    let mut barriers: HashMap<u64, usize> = HashMap::new();
    // When the records written since the last barrier entered the stages, and how many.
    let mut entered: Vec<(i64, u64)> = Vec::new();
    while let Some(msg) = rx.recv().await {
        match msg {
            SinkMsg::Batch(batch, plugin) => {
                let routed = crate::record::Routed {
                    batch: &batch,
                    plugin: plugin.as_deref(),
                };
                let rejected = sink.write(routed).await?;
                let written = (batch.len() - rejected.len()) as u64;
                metrics.sink_written(index, written as usize);
                let at = batch.processing_time_ms;
                if at > 0 && written > 0 {
                    if !commits {
                        metrics.visible(now_ms() - at, written);
                    } else if let Some(last) = entered.last_mut().filter(|(t, _)| *t == at) {
                        last.1 += written;
                    } else {
                        entered.push((at, written));
                    }
                }
                if !rejected.is_empty() {
                    let errors: Vec<_> = rejected
                        .into_iter()
                        .map(|(i, message)| crate::record::RecordError {
                            index: i as u32,
                            message,
                        })
                        .collect();
                    let dead = batch.dead_letters(&errors, &name, None);
                    metrics.dead_letters(dead.len());
                    let router = dlq.as_ref().ok_or_else(|| {
                        SinkError::Internal("a rejecting sink has no dead-letter route".into())
                    })?;
                    router
                        .send(Route::Dlq, dead)
                        .await
                        .map_err(|()| SinkError::Internal("the dead-letter sink stopped".into()))?;
                }
            }
            SinkMsg::Checkpoint(id) => {
                let seen = barriers.entry(id).or_default();
                *seen += 1;
                if *seen < upstreams {
                    continue;
                }
                barriers.remove(&id);
                let pending = sink.pre_commit(id).await?;
                if let Some(dlq) = &dlq {
                    dlq.send_checkpoint(Route::Dlq, id)
                        .await
                        .map_err(|()| SinkError::Internal("the dead-letter sink stopped".into()))?;
                }
                tracing::debug!(sink = name, checkpoint = id, "pre-committed");
                let _ = acks.send(Coord::PreCommitted {
                    id,
                    sink: index,
                    pending,
                    entered: std::mem::take(&mut entered),
                });
            }
        }
    }
    drop(dlq);
    sink.close().await?;
    Ok(sink.location())
}

/// Repeats the newest manifest's commit for one sink (a no-op when it is visible already), then
/// deletes the files no checkpoint committed.
async fn recover(
    committer: &mut crate::sinks::Committer,
    pipeline: &str,
    sink: &str,
    latest: Option<&crate::checkpoint::Manifest>,
) -> Result<(), SinkError> {
    if let Some(m) = latest
        && let Some(pending) = m.sinks.get(sink)
    {
        committer.commit(m, pending).await?;
    }
    let removed = committer
        .clean(pipeline, latest.map_or(0, |m| m.checkpoint))
        .await?;
    if removed > 0 {
        tracing::info!(sink, removed, "deleted files no checkpoint committed");
    }
    Ok(())
}

/// What the coordinator knows of the run besides its channels.
struct Coordinated {
    /// The pipeline's name.
    pipeline: String,
    /// Whether checkpoints wait for the stage chain's state.
    stateful: bool,
    /// State files of the newest checkpoint: a full snapshot, then deltas.
    chain: Vec<String>,
}

/// Puts the state database where the newest manifest `latest` says: as it is when it stands
/// there already, else cleared and rebuilt from the manifest's state files (a crash after the
/// database moved on but before the manifest was stored leaves it ahead). State files of
/// checkpoints no manifest names are deleted.
async fn restore_state(
    checkpoint: &crate::pipeline::Checkpointing,
    dir: &std::path::Path,
    pipeline: &str,
    manifests: &crate::checkpoint::ManifestStore,
    latest: Option<&crate::checkpoint::Manifest>,
) -> Result<crate::state::StateDb, RunError> {
    let failed = |e: String| RunError::Checkpoint(e);
    let folder = crate::pipeline::normalize(&dir.join(&checkpoint.state_dir).join(pipeline));
    let db = crate::state::StateDb::open(&folder).map_err(|e| failed(e.to_string()))?;
    let id = latest.map_or(0, |m| m.checkpoint);
    let files = latest
        .and_then(|m| m.state.as_ref())
        .map(|s| s.files.clone())
        .unwrap_or_default();
    let at = db.checkpoint().map_err(|e| failed(e.to_string()))?;
    if id == 0 || files.is_empty() {
        db.reset().map_err(|e| failed(e.to_string()))?;
    } else if at != id {
        let started = std::time::Instant::now();
        let download = folder.join("download");
        std::fs::create_dir_all(&download)
            .map_err(|e| failed(format!("{}: {e}", download.display())))?;
        let mut local = Vec::new();
        for (n, object) in files.iter().enumerate() {
            let path = download.join(n.to_string());
            manifests
                .get_file(object, &path)
                .await
                .map_err(|e| failed(e.to_string()))?;
            local.push(path);
        }
        let entries = db.restore(id, &local).map_err(|e| failed(e.to_string()))?;
        let _ = std::fs::remove_dir_all(&download);
        tracing::info!(
            checkpoint = id,
            files = files.len(),
            entries,
            ms = started.elapsed().as_millis() as u64,
            "restored the stages' state from the checkpoint store"
        );
    }
    prune_state(manifests, id).await?;
    let _ = std::fs::remove_dir_all(folder.join("upload"));
    Ok(db)
}

/// Deletes the state files that no kept manifest needs (checkpoint `id` is the newest).
async fn prune_state(
    manifests: &crate::checkpoint::ManifestStore,
    id: u64,
) -> Result<(), RunError> {
    let failed = |e: crate::checkpoint::StoreError| RunError::Checkpoint(e.to_string());
    let keep_from = manifests.oldest_needed_state().await.map_err(failed)?;
    manifests.prune_state(keep_from, id).await.map_err(failed)?;
    Ok(())
}

/// The checkpoint coordinator: once a checkpoint's barrier has left the source and every sink
/// has pre-committed it, stores its manifest, commits every sink, and tells the source
/// (through `committed`), one checkpoint at a time, in order.
async fn coordinate(
    mut rx: mpsc::UnboundedReceiver<Coord>,
    committed: mpsc::UnboundedSender<u64>,
    manifests: crate::checkpoint::ManifestStore,
    mut committers: Vec<(String, Option<crate::sinks::Committer>)>,
    mut run: Coordinated,
    metrics: Arc<Metrics>,
) -> Result<(), RunError> {
    let pipeline = run.pipeline.clone();
    use crate::checkpoint::{Manifest, Open, totals};
    let mut open: std::collections::BTreeMap<u64, Open> = Default::default();
    let failed = |e: String| RunError::Checkpoint(e);
    while let Some(msg) = rx.recv().await {
        match msg {
            Coord::Barrier { id, offsets, keep } => {
                let checkpoint = open.entry(id).or_default();
                checkpoint.offsets = Some(offsets);
                checkpoint.keep = keep;
            }
            Coord::PreCommitted {
                id,
                sink,
                pending,
                entered,
            } => {
                let checkpoint = open.entry(id).or_default();
                checkpoint.pending.insert(sink, pending);
                checkpoint.entered.extend(entered);
            }
            Coord::State {
                id,
                file,
                event_time,
                plugins,
                swapped,
            } => {
                let checkpoint = open.entry(id).or_default();
                checkpoint.state = Some((file, event_time));
                checkpoint.plugins = plugins;
                checkpoint.swapped = swapped;
            }
        }
        while let Some(entry) = open.first_entry() {
            let ready = entry.get().offsets.is_some()
                && entry.get().pending.len() == committers.len()
                && (entry.get().state.is_some() || !run.stateful);
            if !ready {
                break;
            }
            let (id, checkpoint) = entry.remove_entry();
            let (mut files, mut bytes) = totals(&checkpoint.pending);
            let (state_file, event_time) = checkpoint.state.unwrap_or_default();
            let mut state = None;
            if run.stateful {
                let (own_bytes, entries) = match state_file {
                    Some(file) => {
                        let object = crate::state::object_path(&pipeline, id, file.full);
                        manifests
                            .put_file(&object, &file.local)
                            .await
                            .map_err(|e| failed(e.to_string()))?;
                        let _ = std::fs::remove_file(&file.local);
                        if file.full {
                            run.chain.clear();
                        }
                        run.chain.push(object);
                        files += 1;
                        bytes += file.bytes;
                        (file.bytes, file.entries)
                    }
                    None => (0, 0),
                };
                state = Some(crate::state::StateRef {
                    files: run.chain.clone(),
                    bytes: own_bytes,
                    entries,
                });
            }
            let manifest = Manifest {
                pipeline: pipeline.clone(),
                checkpoint: id,
                started_ms: checkpoint.started_ms,
                precommit_ms: checkpoint.started.elapsed().as_millis() as u64,
                offsets: checkpoint.offsets.unwrap_or_default(),
                sinks: checkpoint
                    .pending
                    .into_iter()
                    .filter_map(|(i, p)| Some((committers[i].0.clone(), p.commit?)))
                    .collect(),
                files,
                bytes,
                state,
                event_time,
                plugins: checkpoint.plugins,
            };
            manifests
                .write(&manifest)
                .await
                .map_err(|e| failed(e.to_string()))?;
            crate::faults::reached("manifest");
            for (name, committer) in &mut committers {
                if let (Some(c), Some(pending)) = (committer, manifest.sinks.get(name.as_str())) {
                    c.commit(&manifest, pending)
                        .await
                        .map_err(|e| failed(format!("sink `{name}`: {e}")))?;
                    if matches!(c, crate::sinks::Committer::Iceberg(_)) {
                        crate::faults::reached("iceberg-commit");
                    }
                }
            }
            crate::faults::reached("sinks-committed");
            if manifests.prune().await.map_err(|e| failed(e.to_string()))? > 0 && run.stateful {
                prune_state(&manifests, id).await?;
            }
            let now = now_ms();
            for (at, n) in checkpoint.entered {
                metrics.visible(now - at, n);
            }
            metrics.checkpoint_done(
                id,
                checkpoint.started_ms,
                checkpoint.started.elapsed(),
                files,
                bytes,
            );
            tracing::debug!(checkpoint = id, files, bytes, "checkpoint committed");
            for (reply, swapped) in checkpoint.swapped {
                let _ = reply.send(Ok(swapped));
            }
            if checkpoint.keep.is_savepoint() {
                // A savepoint that cannot be stored fails the request, not the run: the
                // checkpoint itself is committed.
                let kept = manifests
                    .keep_savepoint(&manifest)
                    .await
                    .map_err(|e| format!("the savepoint was not stored: {e}"));
                match &kept {
                    Ok(savepoint) => {
                        metrics.savepoint_kept(savepoint.id);
                        tracing::info!(savepoint = savepoint.id, "savepoint stored");
                    }
                    Err(e) => {
                        metrics.savepoint_failed(e.clone());
                        tracing::error!("{e}");
                    }
                }
                if let control::Keep::Asked(reply) = checkpoint.keep {
                    let _ = reply.send(kept);
                }
            }
            let _ = committed.send(id);
        }
    }
    Ok(())
}
