//! Driving the source: its own thread, checkpoint barriers on a timer, acknowledgements from
//! the sinks, the synchronous checkpoint a Kafka source asks for on a rebalance, and
//! backpressure.
//!
//! Backpressure: a source that must not block for long (Kafka: its consumer has to keep
//! polling to run rebalances) hands its batches to a queue of its own, bounded in bytes, in
//! front of the chain's channel. When the queue holds [`PAUSE_AT_BYTES`], the source stops
//! taking records: librdkafka's own bounded prefetch fills and it stops fetching, and the
//! stream goes on at the pipeline's pace with nothing refetched. If the queue stays full for
//! [`PAUSE_AFTER`] (a stalled stage or sink), the source pauses its partitions — librdkafka
//! drops its prefetch, which is refetched later — and keeps polling to serve the group; it
//! resumes once the queue is down to [`RESUME_AT_BYTES`]. Other sources block in `send`.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use super::{ChainMsg, Coord, Metrics, RunError, control};
use crate::{
    checkpoint::Offset,
    sources::{Drain, Next, Pulled, Source},
};

/// Bytes queued in front of the chain at which a pausable source stops taking records.
const PAUSE_AT_BYTES: usize = 8 << 20;

/// How long the queue may stay full before the source pauses its partitions.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// Bytes queued at which a paused source resumes.
const RESUME_AT_BYTES: usize = 2 << 20;

/// The source's side of the pipeline: where it sends batches and barriers, and where it learns
/// that every sink has finished a checkpoint.
pub(super) struct Driver {
    /// The stage chain's input; `None` once the source has said its last word.
    chain: Option<mpsc::Sender<ChainMsg>>,
    /// The coordinator's word that a checkpoint is committed (manifest stored, sinks
    /// committed), once per checkpoint, in order.
    committed: mpsc::UnboundedReceiver<u64>,
    /// Where the source's position at each barrier goes: the coordinator.
    coordinator: mpsc::UnboundedSender<Coord>,
    /// Checkpoints committed that the source has not been told about yet.
    finished: VecDeque<u64>,
    /// Number of the last checkpoint started.
    last: u64,
    /// Counters.
    metrics: Arc<Metrics>,
    /// Batches handed out and checkpoint barriers, not yet in the chain, oldest first
    /// (pausable sources).
    ready: VecDeque<Queued>,
    /// Their size in bytes.
    ready_bytes: usize,
}

/// What waits in front of the chain, in order.
enum Queued {
    /// Records (boxed: a barrier is small).
    Pulled(Box<Pulled>),
    /// A checkpoint barrier: it goes after every batch handed out before it; `true`: a
    /// savepoint's, whose state is a full snapshot.
    Barrier(u64, bool),
}

/// What a queued item holds in memory, near enough.
fn size_of(queued: &Queued) -> usize {
    let batch = |b: &crate::record::Batch| b.data.len() + b.records.len() * 48;
    match queued {
        Queued::Pulled(p) => batch(&p.batch) + p.dead_letters.as_ref().map_or(0, batch),
        Queued::Barrier(..) => 0,
    }
}

/// The chain or every sink has stopped; their own errors say why.
#[derive(Debug)]
pub(super) struct Stopped;

impl Driver {
    /// A driver whose first checkpoint is `last + 1`.
    pub(super) fn new(
        chain: mpsc::Sender<ChainMsg>,
        committed: mpsc::UnboundedReceiver<u64>,
        coordinator: mpsc::UnboundedSender<Coord>,
        last: u64,
        metrics: Arc<Metrics>,
    ) -> Driver {
        Driver {
            chain: Some(chain),
            committed,
            coordinator,
            finished: VecDeque::new(),
            last,
            metrics,
            ready: VecDeque::new(),
            ready_bytes: 0,
        }
    }

    /// Queues a batch in front of the chain.
    fn offer(&mut self, pulled: Box<Pulled>) {
        let queued = Queued::Pulled(pulled);
        self.ready_bytes += size_of(&queued);
        self.ready.push_back(queued);
    }

    /// Moves queued batches into the chain: all of them, waiting for room if `wait`, else as
    /// many as fit now.
    fn flush(&mut self, wait: bool) -> Result<(), Stopped> {
        while let Some(queued) = self.ready.front() {
            // Room for the batch and its dead letters.
            let room = self.chain.as_ref().ok_or(Stopped)?.capacity() >= 2;
            if !wait && !room {
                break;
            }
            self.ready_bytes -= size_of(queued);
            match self.ready.pop_front().expect("front exists") {
                Queued::Pulled(pulled) => self.send_pulled(*pulled)?,
                Queued::Barrier(id, full) => self.send(ChainMsg::Checkpoint { id, full })?,
            }
        }
        Ok(())
    }

    fn send(&self, msg: ChainMsg) -> Result<(), Stopped> {
        self.chain
            .as_ref()
            .ok_or(Stopped)?
            .blocking_send(msg)
            .map_err(|_| Stopped)
    }

    fn send_pulled(&self, pulled: Pulled) -> Result<(), Stopped> {
        self.metrics.source_out(pulled.batch.len());
        if let Some(dead) = pulled.dead_letters {
            self.metrics.dead_letters(dead.len());
            self.send(ChainMsg::DeadLetters(dead))?;
        }
        self.send(ChainMsg::Batch(pulled.batch))
    }

    fn poll_acks(&mut self) {
        while let Ok(id) = self.committed.try_recv() {
            self.finished.push_back(id);
        }
    }

    /// Starts a checkpoint: `barrier` (the source noting its position, which goes to the
    /// coordinator) runs as the barrier joins the queue, behind everything handed out before
    /// it. With `wait`, the queue is flushed into the chain; without, it goes as room allows
    /// (a pausable source must not block). `keep` says whether it is kept as a savepoint.
    fn start(
        &mut self,
        barrier: &mut dyn FnMut(u64) -> Vec<Offset>,
        wait: bool,
        keep: control::Keep,
    ) -> Result<u64, Stopped> {
        self.last += 1;
        let offsets = barrier(self.last);
        let full = keep.is_savepoint();
        self.coordinator
            .send(Coord::Barrier {
                id: self.last,
                offsets,
                keep,
            })
            .map_err(|_| Stopped)?;
        self.ready.push_back(Queued::Barrier(self.last, full));
        self.flush(wait)?;
        Ok(self.last)
    }

    /// Blocks until checkpoint `id` is committed.
    fn wait_for(&mut self, id: u64) -> Result<(), Stopped> {
        while !self.finished.contains(&id) {
            let done = self.committed.blocking_recv().ok_or(Stopped)?;
            self.finished.push_back(done);
        }
        Ok(())
    }
}

impl Drain for Driver {
    fn drain(
        &mut self,
        pulled: Vec<Pulled>,
        barrier: &mut dyn FnMut(u64) -> Vec<Offset>,
    ) -> Result<u64, String> {
        let stopped = |Stopped| "the pipeline stopped".to_string();
        self.flush(true).map_err(stopped)?;
        for p in pulled {
            self.send_pulled(p).map_err(stopped)?;
        }
        let id = self
            .start(barrier, true, control::Keep::No)
            .map_err(stopped)?;
        self.wait_for(id).map_err(stopped)?;
        self.finished.retain(|f| *f != id);
        Ok(id)
    }
}

/// When the source starts checkpoints.
pub(super) struct Timing {
    /// Time between checkpoints.
    pub(super) interval: Duration,
    /// Checkpoints asked for now, from a controlled run.
    pub(super) requests: Option<std::sync::mpsc::Receiver<control::BarrierRequest>>,
    /// Set when the checkpoint at a stop is kept as a savepoint.
    pub(super) savepoint_on_stop: Option<Arc<AtomicBool>>,
}

/// Runs the source until it ends or `stop` is set: hands its batches to the chain, starts a
/// checkpoint every `interval` (and when one is asked for), and tells the source about committed
/// checkpoints. At the end, a last checkpoint covers everything handed out, and the thread
/// returns once every sink has finished it, so a restart neither repeats nor skips a record.
pub(super) fn run(
    mut source: Source,
    driver: Arc<Mutex<Driver>>,
    timing: Timing,
    stop: Arc<AtomicBool>,
) -> Result<(), RunError> {
    let lock = || driver.lock().unwrap_or_else(PoisonError::into_inner);
    let Timing {
        interval,
        requests,
        savepoint_on_stop,
    } = timing;
    let mut next_checkpoint = Instant::now() + interval;
    let pausable = source.can_pause();
    // Since when the queue has been full, and whether the source is paused.
    let mut held_back: Option<Instant> = None;
    let mut paused = false;
    let ended = loop {
        if stop.load(Ordering::Relaxed) {
            tracing::info!("stopping: finishing what is in flight");
            break false;
        }
        {
            let mut d = lock();
            d.poll_acks();
            while let Some(id) = d.finished.pop_front() {
                source.checkpoint_done(id)?;
            }
            let asked = requests.as_ref().and_then(|r| r.try_recv().ok());
            if asked.is_some() || Instant::now() >= next_checkpoint {
                next_checkpoint = Instant::now() + interval;
                let keep = match asked {
                    Some(control::BarrierRequest::Savepoint(reply)) => control::Keep::Asked(reply),
                    _ => control::Keep::No,
                };
                if d.start(&mut |id| source.barrier(id), !pausable, keep)
                    .is_err()
                {
                    return Ok(());
                }
            }
        }
        if pausable {
            let queued = {
                let mut d = lock();
                if d.flush(false).is_err() {
                    return Ok(());
                }
                d.ready_bytes
            };
            match (held_back, paused) {
                (Some(since), true) if queued <= RESUME_AT_BYTES => {
                    source.resume()?;
                    (held_back, paused) = (None, false);
                    lock().metrics.held_back(since.elapsed(), true);
                }
                (Some(since), false) if queued < PAUSE_AT_BYTES => {
                    held_back = None;
                    lock().metrics.held_back(since.elapsed(), false);
                }
                (Some(since), false) if since.elapsed() >= PAUSE_AFTER => {
                    source.pause()?;
                    paused = true;
                }
                (None, _) if queued >= PAUSE_AT_BYTES => held_back = Some(Instant::now()),
                _ => {}
            }
            if paused {
                // The driver is not locked here: a poll may run a rebalance, which drains
                // through it.
                source.serve()?;
                continue;
            }
            if held_back.is_some() {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        }
        // The driver is not locked here: a Kafka poll may run a rebalance, which drains
        // through it.
        match source.pull()? {
            Next::Pulled(pulled) => {
                let mut d = lock();
                d.offer(pulled);
                if d.flush(!pausable).is_err() {
                    return Ok(());
                }
            }
            Next::Idle => {}
            Next::End => break true,
        }
    };
    let mut d = lock();
    // Everything queued goes before the end.
    if d.flush(true).is_err() || (ended && d.send(ChainMsg::End).is_err()) {
        return Ok(());
    }
    let keep = if savepoint_on_stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
        control::Keep::AtStop
    } else {
        control::Keep::No
    };
    let Ok(last) = d.start(&mut |id| source.barrier(id), true, keep) else {
        return Ok(());
    };
    d.chain = None; // the chain ends once it has passed the last barrier on
    if d.wait_for(last).is_err() {
        return Ok(());
    }
    while let Some(id) = d.finished.pop_front() {
        source.checkpoint_done(id)?;
    }
    drop(d);
    drop(source); // a Kafka consumer leaves its group here, with everything committed
    Ok(())
}
