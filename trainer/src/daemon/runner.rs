//! What the scheduler runs: the [`Runner`] trait, which the real trainer implements
//! ([`super::train_runner::TrainRunner`]) and tests replace with a scripted one.
use std::path::PathBuf;

use koala_proto::v1::JobSpec;

/// One run of a job (a first start or a restart after a daemon crash).
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub job_id: u64,
    pub spec: JobSpec,
    /// The daemon's data root; spec paths resolve against it.
    pub data_root: PathBuf,
    /// 1 for the first run, more after restarts.
    pub attempt: u32,
}

/// Progress reported by a runner: the trainer's own events.
pub use crate::train::TrainEvent as RunEvent;

/// Where a runner reports to; it also carries the cancel flag, checked at step boundaries.
pub trait RunSink {
    fn event(&mut self, ev: RunEvent);
    fn cancelled(&self) -> bool;
}

/// How a run ended (errors are `Err(message)`): the trainer's own outcome.
pub use crate::train::RunOutcome;

/// Runs a job to completion on the calling (dedicated, non-async) thread. A run must resume from
/// the newest checkpoint in its output directory when there is one.
pub trait Runner: Send + Sync + 'static {
    fn run(&self, req: &RunRequest, sink: &mut dyn RunSink) -> Result<RunOutcome, String>;
}
