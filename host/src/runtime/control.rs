//! Commands for a running pipeline, from outside it (the control plane): a savepoint now, a
//! plugin swap at a checkpoint barrier, and a stop that keeps its last checkpoint as a savepoint.
//!
//! A [`Control`] is the caller's end and [`Controls`] the run's ([`super::RunOptions::control`]).
//! Requests reach the threads that act on them without locks on the hot path: the source thread
//! looks for checkpoint requests between batches (it owns the barriers), the stage thread looks
//! for swaps at each barrier (it owns the stages).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use tokio::sync::oneshot;

use crate::{checkpoint::Savepoint, plugin::StageRunner};

/// Why a request to a run could not be carried out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// The run has ended, or ended before it got to the request.
    #[error("the pipeline is not running")]
    NotRunning,
    /// The run tried and failed.
    #[error("{0}")]
    Failed(String),
}

/// The caller's end: cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Control {
    /// To the source thread.
    barriers: mpsc::Sender<BarrierRequest>,
    /// To the stage thread.
    swaps: mpsc::Sender<SwapRequest>,
    /// Whether the last checkpoint, at the stop, is kept as a savepoint.
    savepoint_on_stop: Arc<AtomicBool>,
}

/// The run's end.
pub struct Controls {
    /// Read by the source thread.
    pub(crate) barriers: mpsc::Receiver<BarrierRequest>,
    /// Read by the stage thread.
    pub(crate) swaps: mpsc::Receiver<SwapRequest>,
    /// Read when the run stops.
    pub(crate) savepoint_on_stop: Arc<AtomicBool>,
}

/// A pair of ends.
pub fn control() -> (Control, Controls) {
    let (barriers_tx, barriers) = mpsc::channel();
    let (swaps_tx, swaps) = mpsc::channel();
    let savepoint_on_stop = Arc::new(AtomicBool::new(false));
    (
        Control {
            barriers: barriers_tx,
            swaps: swaps_tx,
            savepoint_on_stop: savepoint_on_stop.clone(),
        },
        Controls {
            barriers,
            swaps,
            savepoint_on_stop,
        },
    )
}

/// Where the coordinator says how a savepoint went.
pub(crate) type SavepointReply = oneshot::Sender<Result<Savepoint, String>>;

/// Where the coordinator says that a swap's checkpoint committed.
pub(crate) type SwapReply = oneshot::Sender<Result<Swapped, String>>;

/// Whether a checkpoint is kept as a savepoint, and who waits to hear how that went.
pub(crate) enum Keep {
    /// An ordinary checkpoint.
    No,
    /// The last checkpoint of a stop that asked for a savepoint (the run's end reports it).
    AtStop,
    /// A savepoint asked for while the run goes on.
    Asked(SavepointReply),
}

impl Keep {
    /// Whether the checkpoint is a savepoint (its state is then one full snapshot).
    pub(crate) fn is_savepoint(&self) -> bool {
        !matches!(self, Keep::No)
    }
}

/// A checkpoint barrier asked for now, instead of at the next interval.
pub(crate) enum BarrierRequest {
    /// An ordinary checkpoint (a swap waits at its barrier).
    Checkpoint,
    /// A checkpoint kept as a savepoint.
    Savepoint(SavepointReply),
}

/// A new runner for stage `stage`, to put in place at the next barrier.
pub(crate) struct SwapRequest {
    /// The stage's index.
    pub(crate) stage: usize,
    /// Instantiated and initialised off the hot path.
    pub(crate) runner: StageRunner,
    /// Told once the checkpoint at whose barrier the stage swapped has committed.
    pub(crate) reply: SwapReply,
}

/// A swap that happened: its checkpoint committed.
#[derive(Debug, Clone)]
pub struct Swapped {
    /// The checkpoint at whose barrier the stage swapped: records before it went through the
    /// old version, records after it through the new one.
    pub checkpoint: u64,
    /// How long the stage did not process records for the swap itself.
    pub pause: Duration,
}

impl Control {
    /// Takes a checkpoint now and keeps it as a savepoint; returns once it is committed and
    /// stored.
    pub async fn savepoint(&self) -> Result<Savepoint, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.barriers
            .send(BarrierRequest::Savepoint(reply))
            .map_err(|_| ControlError::NotRunning)?;
        answer
            .await
            .map_err(|_| ControlError::NotRunning)?
            .map_err(ControlError::Failed)
    }

    /// Swaps stage `stage` to `runner` (started with [`StageRunner::start`] with the stage's config and limits) at a checkpoint
    /// barrier taken at once; returns once that checkpoint has committed. A run that fails
    /// before then recovers from the checkpoint before, with the version before: the swap did
    /// not happen, and this says so.
    pub async fn swap(&self, stage: usize, runner: StageRunner) -> Result<Swapped, ControlError> {
        let (reply, answer) = oneshot::channel();
        // The swap is queued before the barrier is asked for, so that barrier finds it.
        self.swaps
            .send(SwapRequest {
                stage,
                runner,
                reply,
            })
            .map_err(|_| ControlError::NotRunning)?;
        self.barriers
            .send(BarrierRequest::Checkpoint)
            .map_err(|_| ControlError::NotRunning)?;
        answer
            .await
            .map_err(|_| ControlError::NotRunning)?
            .map_err(ControlError::Failed)
    }

    /// Makes the checkpoint a stop ends with a savepoint (call before stopping the run).
    pub fn keep_savepoint_on_stop(&self) {
        self.savepoint_on_stop.store(true, Ordering::Relaxed);
    }
}
