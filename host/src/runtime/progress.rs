//! Counters of a running pipeline, the progress line printed while it runs, and the summary
//! printed when it ends.

use std::{
    fmt::Write as _,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use crate::metrics::{Histogram, LATENCY_BUCKETS};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counters shared by the tasks of a run. Updated once per batch, never per record.
pub struct Metrics {
    /// When the run started.
    started: Instant,
    /// Records the source handed out.
    source_out: AtomicU64,
    /// Per stage.
    stages: Vec<StageCounters>,
    /// Per sink: name, records written.
    sinks: Vec<(String, AtomicU64)>,
    /// Dead letters from stages and sinks.
    dead_letters: AtomicU64,
    /// Times the source paused its partitions because the pipeline stayed full.
    pauses: AtomicU64,
    /// Milliseconds the source was held back by a full pipeline (paused or not).
    held_back_ms: AtomicU64,
    /// Checkpoints committed, their total and longest duration (barrier to commit, ms), and
    /// the files and bytes they committed.
    checkpoints: AtomicU64,
    checkpoint_ms: AtomicU64,
    checkpoint_max_ms: AtomicU64,
    checkpoint_files: AtomicU64,
    checkpoint_bytes: AtomicU64,
    /// Barrier to commit, for `/metrics`.
    checkpoint_durations: Histogram,
    /// The newest checkpoint committed.
    last_checkpoint: Mutex<Option<LastCheckpoint>>,
    /// The newest savepoint stored (0: none).
    last_savepoint: AtomicU64,
    /// Why the newest savepoint asked for was not stored, if it was not.
    savepoint_error: Mutex<Option<String>>,
    /// From a record entering the stages to its sink making it visible.
    latency: Histogram,
    /// Records between each Kafka partition's position and its end, as last reported.
    lag: Mutex<Vec<PartitionLag>>,
}

/// The counters of one stage and its plugin.
pub struct StageCounters {
    /// The stage's name.
    pub name: String,
    /// Records in, records out, records it failed (to the dead letters).
    records_in: AtomicU64,
    records_out: AtomicU64,
    errors: AtomicU64,
    /// Instances replaced after a trap, so far in this run.
    traps: AtomicU64,
    /// Hot swaps and rollbacks in this run.
    swaps: AtomicU64,
    /// Linear memory of the current instance.
    memory_bytes: AtomicU64,
    /// Fuel burnt (stages with `fuel_per_call`).
    fuel: AtomicU64,
    /// How long the last swap kept the stage from processing, in µs.
    swap_pause_us: AtomicU64,
    /// The plugin it runs now (hex sha256).
    plugin: Mutex<Arc<str>>,
}

/// A Kafka partition's lag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Records after the source's position.
    pub lag: i64,
}

/// The newest committed checkpoint, as the status shows it.
#[derive(Clone, Debug, Default)]
pub struct LastCheckpoint {
    /// Its number.
    pub id: u64,
    /// When its barrier left the source (ms since the epoch).
    pub started_ms: i64,
    /// Barrier to commit.
    pub duration: Duration,
    /// Files it committed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// A stage's counters as they are now.
#[derive(Clone, Debug, Default)]
pub struct StageFigures {
    /// The stage.
    pub name: String,
    /// Records in.
    pub records_in: u64,
    /// Records out.
    pub records_out: u64,
    /// Records it failed.
    pub errors: u64,
    /// Instances replaced after a trap.
    pub traps: u64,
    /// Swaps this run.
    pub swaps: u64,
    /// Linear memory.
    pub memory_bytes: u64,
    /// Fuel burnt.
    pub fuel: u64,
    /// The last swap's pause, in µs.
    pub swap_pause_us: u64,
    /// The plugin (hex sha256).
    pub plugin: Arc<str>,
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Wall-clock duration.
    pub elapsed: Duration,
    /// Records read from the source.
    pub records_in: u64,
    /// Per stage: name, records in, records out.
    pub stages: Vec<(String, u64, u64)>,
    /// Per sink: name, records written, where the output is.
    pub sinks: Vec<(String, u64, Option<String>)>,
    /// Records sent to the dead-letter output.
    pub dead_letters: u64,
    /// How long the source was held back by a full pipeline, and how many times it paused its
    /// partitions.
    pub held_back: (Duration, u64),
    /// Checkpoints committed.
    pub checkpoints: u64,
    /// Their mean and longest duration, barrier to commit.
    pub checkpoint_times: (Duration, Duration),
    /// Files and bytes they committed.
    pub committed: (u64, u64),
    /// The checkpoint of an earlier run this one went on from (its source positions).
    pub resumed_after: Option<u64>,
}

impl Metrics {
    /// Counters for the given stages and sinks, all zero.
    pub fn new(stages: Vec<String>, sinks: Vec<String>) -> Metrics {
        Metrics {
            started: Instant::now(),
            source_out: AtomicU64::new(0),
            stages: stages
                .into_iter()
                .map(|name| StageCounters {
                    name,
                    records_in: AtomicU64::new(0),
                    records_out: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                    traps: AtomicU64::new(0),
                    swaps: AtomicU64::new(0),
                    memory_bytes: AtomicU64::new(0),
                    fuel: AtomicU64::new(0),
                    swap_pause_us: AtomicU64::new(0),
                    plugin: Mutex::new("".into()),
                })
                .collect(),
            sinks: sinks.into_iter().map(|s| (s, AtomicU64::new(0))).collect(),
            dead_letters: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
            held_back_ms: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            checkpoint_ms: AtomicU64::new(0),
            checkpoint_max_ms: AtomicU64::new(0),
            checkpoint_files: AtomicU64::new(0),
            checkpoint_bytes: AtomicU64::new(0),
            checkpoint_durations: Histogram::new(&LATENCY_BUCKETS),
            last_checkpoint: Mutex::new(None),
            last_savepoint: AtomicU64::new(0),
            savepoint_error: Mutex::new(None),
            latency: Histogram::new(&LATENCY_BUCKETS),
            lag: Mutex::new(Vec::new()),
        }
    }

    /// Checkpoint `id`, whose barrier left at `started_ms`, was committed in `took`, with
    /// `files` files of `bytes` bytes.
    pub(crate) fn checkpoint_done(
        &self,
        id: u64,
        started_ms: i64,
        took: Duration,
        files: u64,
        bytes: u64,
    ) {
        let ms = took.as_millis() as u64;
        self.checkpoints.fetch_add(1, Relaxed);
        self.checkpoint_ms.fetch_add(ms, Relaxed);
        self.checkpoint_max_ms.fetch_max(ms, Relaxed);
        self.checkpoint_files.fetch_add(files, Relaxed);
        self.checkpoint_bytes.fetch_add(bytes, Relaxed);
        self.checkpoint_durations.observe_ms(ms as i64, 1);
        *lock(&self.last_checkpoint) = Some(LastCheckpoint {
            id,
            started_ms,
            duration: took,
            files,
            bytes,
        });
    }

    /// Savepoint `id` was stored.
    pub(crate) fn savepoint_kept(&self, id: u64) {
        self.last_savepoint.fetch_max(id, Relaxed);
        *lock(&self.savepoint_error) = None;
    }

    /// A savepoint's checkpoint committed but the savepoint could not be stored, for `why`.
    pub(crate) fn savepoint_failed(&self, why: String) {
        *lock(&self.savepoint_error) = Some(why);
    }

    /// `n` records became visible in a sink `ms` after they entered the stages.
    pub(crate) fn visible(&self, ms: i64, n: u64) {
        self.latency.observe_ms(ms, n);
    }

    /// The source was held back for `took` by a full pipeline, and paused its partitions if
    /// `paused`.
    pub(crate) fn held_back(&self, took: Duration, paused: bool) {
        self.pauses.fetch_add(u64::from(paused), Relaxed);
        self.held_back_ms
            .fetch_add(took.as_millis() as u64, Relaxed);
    }

    /// Counters for `pipeline`'s stages and sinks, all zero.
    pub fn for_pipeline(pipeline: &crate::pipeline::Pipeline) -> Metrics {
        Metrics::new(
            pipeline.stages.iter().map(|s| s.name.clone()).collect(),
            pipeline.sinks.iter().map(|s| s.name.clone()).collect(),
        )
    }

    /// Records the source has handed out so far.
    pub fn records_read(&self) -> u64 {
        self.source_out.load(Relaxed)
    }

    /// Records written by the sinks so far, all sinks together.
    pub fn records_written(&self) -> u64 {
        self.sinks.iter().map(|(_, n)| n.load(Relaxed)).sum()
    }

    /// Records sent to the dead letters so far.
    pub fn dead_letter_count(&self) -> u64 {
        self.dead_letters.load(Relaxed)
    }

    /// Records each sink has written, by sink, in the pipeline's order.
    pub fn sink_figures(&self) -> Vec<(String, u64)> {
        self.sinks
            .iter()
            .map(|(n, w)| (n.clone(), w.load(Relaxed)))
            .collect()
    }

    /// Each stage's counters, in the pipeline's order.
    pub fn stage_figures(&self) -> Vec<StageFigures> {
        self.stages
            .iter()
            .map(|s| StageFigures {
                name: s.name.clone(),
                records_in: s.records_in.load(Relaxed),
                records_out: s.records_out.load(Relaxed),
                errors: s.errors.load(Relaxed),
                traps: s.traps.load(Relaxed),
                swaps: s.swaps.load(Relaxed),
                memory_bytes: s.memory_bytes.load(Relaxed),
                fuel: s.fuel.load(Relaxed),
                swap_pause_us: s.swap_pause_us.load(Relaxed),
                plugin: lock(&s.plugin).clone(),
            })
            .collect()
    }

    /// The newest committed checkpoint.
    pub fn last_checkpoint(&self) -> Option<LastCheckpoint> {
        lock(&self.last_checkpoint).clone()
    }

    /// The newest savepoint stored in this run.
    pub fn last_savepoint(&self) -> Option<u64> {
        Some(self.last_savepoint.load(Relaxed)).filter(|id| *id > 0)
    }

    /// Why the newest savepoint was not stored, if it was not.
    pub fn savepoint_error(&self) -> Option<String> {
        lock(&self.savepoint_error).clone()
    }

    /// Checkpoints committed, their mean and longest duration.
    pub fn checkpoint_figures(&self) -> (u64, Duration, Duration) {
        let n = self.checkpoints.load(Relaxed);
        (
            n,
            Duration::from_millis(self.checkpoint_ms.load(Relaxed) / n.max(1)),
            Duration::from_millis(self.checkpoint_max_ms.load(Relaxed)),
        )
    }

    /// Barrier-to-commit durations.
    pub fn checkpoint_durations(&self) -> &Histogram {
        &self.checkpoint_durations
    }

    /// Entry-to-visible latencies.
    pub fn latency(&self) -> &Histogram {
        &self.latency
    }

    /// Time the source was held back by a full pipeline.
    pub fn held_back_time(&self) -> Duration {
        Duration::from_millis(self.held_back_ms.load(Relaxed))
    }

    /// Each Kafka partition's lag, as last reported.
    pub fn lag(&self) -> Vec<PartitionLag> {
        lock(&self.lag).clone()
    }

    /// Sets the partitions' lag.
    pub(crate) fn set_lag(&self, lag: Vec<PartitionLag>) {
        *lock(&self.lag) = lag;
    }

    pub(crate) fn source_out(&self, n: usize) {
        self.source_out.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn stage_in(&self, stage: usize, n: usize) {
        self.stages[stage].records_in.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn stage_out(&self, stage: usize, n: usize) {
        self.stages[stage].records_out.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn stage_errors(&self, stage: usize, n: usize) {
        self.stages[stage].errors.fetch_add(n as u64, Relaxed);
    }

    /// Stage `stage` runs plugin `digest`.
    pub(crate) fn stage_plugin(&self, stage: usize, digest: &Arc<str>) {
        if let Some(s) = self.stages.get(stage) {
            *lock(&s.plugin) = digest.clone();
        }
    }

    /// Stage `stage` swapped to plugin `digest`, pausing for `pause`.
    pub(crate) fn swapped(&self, stage: usize, digest: &Arc<str>, pause: Duration) {
        self.stage_plugin(stage, digest);
        let s = &self.stages[stage];
        s.swaps.fetch_add(1, Relaxed);
        s.swap_pause_us.store(pause.as_micros() as u64, Relaxed);
    }

    /// Stage `stage`'s instance figures: its memory, the fuel it burnt and the traps it
    /// survived so far.
    pub(crate) fn stage_instance(&self, stage: usize, memory: usize, fuel: u64, traps: u64) {
        let s = &self.stages[stage];
        s.memory_bytes.store(memory as u64, Relaxed);
        s.fuel.store(fuel, Relaxed);
        s.traps.store(traps, Relaxed);
    }

    pub(crate) fn sink_written(&self, sink: usize, n: usize) {
        self.sinks[sink].1.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn dead_letters(&self, n: usize) {
        self.dead_letters.fetch_add(n as u64, Relaxed);
    }

    /// The counters as they are now, with where each sink's output is.
    pub fn summary(&self, locations: Vec<(String, Option<String>)>) -> Summary {
        Summary {
            elapsed: self.started.elapsed(),
            records_in: self.source_out.load(Relaxed),
            stages: self
                .stages
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        s.records_in.load(Relaxed),
                        s.records_out.load(Relaxed),
                    )
                })
                .collect(),
            sinks: self
                .sinks
                .iter()
                .map(|(n, w)| {
                    let location = locations
                        .iter()
                        .find(|(l, _)| l == n)
                        .and_then(|(_, l)| l.clone());
                    (n.clone(), w.load(Relaxed), location)
                })
                .collect(),
            dead_letters: self.dead_letters.load(Relaxed),
            held_back: (
                Duration::from_millis(self.held_back_ms.load(Relaxed)),
                self.pauses.load(Relaxed),
            ),
            checkpoints: self.checkpoints.load(Relaxed),
            checkpoint_times: {
                let (_, mean, max) = self.checkpoint_figures();
                (mean, max)
            },
            committed: (
                self.checkpoint_files.load(Relaxed),
                self.checkpoint_bytes.load(Relaxed),
            ),
            resumed_after: None,
        }
    }
}

/// Prints a progress line to standard error every second until aborted.
pub(crate) async fn report(metrics: std::sync::Arc<Metrics>, source: &'static str) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut last_in = 0;
    let mut last_at = Instant::now();
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let records_in = metrics.source_out.load(Relaxed);
        let rate = (records_in - last_in) as f64 / now.duration_since(last_at).as_secs_f64();
        (last_in, last_at) = (records_in, now);
        let mut line = format!(
            "[{:>6.1}s] {source} {} ({}/s)",
            metrics.started.elapsed().as_secs_f64(),
            thousands(records_in),
            thousands(rate as u64)
        );
        for s in &metrics.stages {
            let _ = write!(
                line,
                " | {} {} → {}",
                s.name,
                thousands(s.records_in.load(Relaxed)),
                thousands(s.records_out.load(Relaxed))
            );
        }
        for (name, w) in &metrics.sinks {
            let _ = write!(line, " | {name} {}", thousands(w.load(Relaxed)));
        }
        let _ = write!(
            line,
            " | dlq {}",
            thousands(metrics.dead_letters.load(Relaxed))
        );
        eprintln!("{line}");
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        writeln!(
            f,
            "read {} records in {:.1}s ({}/s)",
            thousands(self.records_in),
            secs,
            thousands((self.records_in as f64 / secs.max(1e-9)) as u64)
        )?;
        if let Some(id) = self.resumed_after {
            writeln!(
                f,
                "  resumed after checkpoint {id} of an earlier run (its manifest is in the checkpoint store)"
            )?;
        }
        for (name, i, o) in &self.stages {
            writeln!(
                f,
                "  stage {name}: {} in, {} out",
                thousands(*i),
                thousands(*o)
            )?;
        }
        for (name, written, location) in &self.sinks {
            match location {
                Some(location) => writeln!(
                    f,
                    "  sink {name}: {} records → {location}",
                    thousands(*written)
                )?,
                None => writeln!(f, "  sink {name}: {} records", thousands(*written))?,
            }
        }
        let (held_back, pauses) = self.held_back;
        if !held_back.is_zero() {
            writeln!(
                f,
                "  backpressure: the source waited {:.1}s for the pipeline, pausing its partitions {} times",
                held_back.as_secs_f64(),
                thousands(pauses)
            )?;
        }
        if self.checkpoints > 0 {
            let (mean, max) = self.checkpoint_times;
            writeln!(
                f,
                "  checkpoints: {} committed ({} files, {:.1} MB), {} ms on average, {} ms at most",
                thousands(self.checkpoints),
                thousands(self.committed.0),
                self.committed.1 as f64 / 1e6,
                mean.as_millis(),
                max.as_millis()
            )?;
        }
        write!(f, "  dead letters: {}", thousands(self.dead_letters))
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(1234567), "1,234,567");
    }
}
