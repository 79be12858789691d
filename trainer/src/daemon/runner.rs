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

/// Progress reported by a runner, mirroring the trainer's events.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    Started {
        total_steps: u64,
        resumed_from: Option<u64>,
    },
    Step {
        step: u64,
        total_steps: u64,
        loss: f32,
        lr: f32,
        tokens_per_s: f64,
        eta_s: f64,
    },
    Checkpoint {
        step: u64,
        path: PathBuf,
    },
    Finished {
        step: u64,
        final_loss: f32,
    },
}

/// Where a runner reports to; it also carries the cancel flag, checked at step boundaries.
pub trait RunSink {
    fn event(&mut self, ev: RunEvent);
    fn cancelled(&self) -> bool;
}

/// How a run ended (errors are `Err(message)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    Finished,
    Cancelled { step: u64 },
}

/// Runs a job to completion on the calling (dedicated, non-async) thread. A run must resume from
/// the newest checkpoint in its output directory when there is one.
pub trait Runner: Send + Sync + 'static {
    fn run(&self, req: &RunRequest, sink: &mut dyn RunSink) -> Result<RunOutcome, String>;
}
