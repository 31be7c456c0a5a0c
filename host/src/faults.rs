//! Kill points for crash tests. With `WEIR_PAUSE_AT=PHASE:N` in the environment, the N-th time
//! the process reaches `PHASE` it says so on standard error (`weir: paused at PHASE`) and stops
//! there, so a test can kill it with SIGKILL at an exact step of the checkpoint protocol.
//! Without the variable, [`reached`] only compares a counter.
//!
//! Phases: `data-file` (rows written into an open Iceberg data file; with `mode: upsert`, a
//! batch's changes noted, to be written at the barrier), `manifest` (manifest
//! stored, no sink committed), `iceberg-commit` (an Iceberg sink committed, the other sinks not
//! yet), `sinks-committed` (every sink committed, the Kafka offsets not yet).

use std::sync::{
    OnceLock,
    atomic::{AtomicU64, Ordering},
};

/// The phase to stop at, and at which visit.
struct PauseAt {
    phase: String,
    visit: u64,
    seen: AtomicU64,
}

fn pause_at() -> Option<&'static PauseAt> {
    static PAUSE: OnceLock<Option<PauseAt>> = OnceLock::new();
    PAUSE
        .get_or_init(|| {
            let value = std::env::var("WEIR_PAUSE_AT").ok()?;
            let (phase, visit) = value.split_once(':').unwrap_or((&value, "1"));
            Some(PauseAt {
                phase: phase.to_string(),
                visit: visit.parse().ok()?,
                seen: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// The process has reached `phase`.
pub fn reached(phase: &str) {
    let Some(at) = pause_at() else { return };
    if at.phase == phase && at.seen.fetch_add(1, Ordering::SeqCst) + 1 == at.visit {
        eprintln!("weir: paused at {phase}");
        loop {
            std::thread::park();
        }
    }
}
