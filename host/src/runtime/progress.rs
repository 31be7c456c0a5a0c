//! Counters of a running pipeline, the progress line printed while it runs, and the summary
//! printed when it ends.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

/// Counters shared by the tasks of a run. Updated once per batch, never per record.
pub struct Metrics {
    /// When the run started.
    started: Instant,
    /// Records the source handed out.
    source_out: AtomicU64,
    /// Per stage: name, records in, records out.
    stages: Vec<(String, AtomicU64, AtomicU64)>,
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
                .map(|s| (s, AtomicU64::new(0), AtomicU64::new(0)))
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
        }
    }

    /// A checkpoint was committed in `took`, with `files` files of `bytes` bytes.
    pub(crate) fn checkpoint_done(&self, took: Duration, files: u64, bytes: u64) {
        let ms = took.as_millis() as u64;
        self.checkpoints.fetch_add(1, Relaxed);
        self.checkpoint_ms.fetch_add(ms, Relaxed);
        self.checkpoint_max_ms.fetch_max(ms, Relaxed);
        self.checkpoint_files.fetch_add(files, Relaxed);
        self.checkpoint_bytes.fetch_add(bytes, Relaxed);
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

    pub(crate) fn source_out(&self, n: usize) {
        self.source_out.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn stage_in(&self, stage: usize, n: usize) {
        self.stages[stage].1.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn stage_out(&self, stage: usize, n: usize) {
        self.stages[stage].2.fetch_add(n as u64, Relaxed);
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
                .map(|(n, i, o)| (n.clone(), i.load(Relaxed), o.load(Relaxed)))
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
                let n = self.checkpoints.load(Relaxed).max(1);
                (
                    Duration::from_millis(self.checkpoint_ms.load(Relaxed) / n),
                    Duration::from_millis(self.checkpoint_max_ms.load(Relaxed)),
                )
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
        for (name, i, o) in &metrics.stages {
            let _ = write!(
                line,
                " | {name} {} → {}",
                thousands(i.load(Relaxed)),
                thousands(o.load(Relaxed))
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
