//! The scheduler: FIFO per device set, one job at a time on overlapping device sets, each job on
//! a dedicated OS thread (never on the async runtime).
//!
//! On start-up, a job left RUNNING by a daemon that died is started again (its runner resumes
//! from the newest checkpoint in the job's output directory); if a cancel had been requested, it
//! is marked CANCELLED instead.
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use koala_proto::v1::{JobEvent, JobState, StepProgress};
use tokio::sync::broadcast;

use super::devices::DeviceSet;
use super::error::{DaemonError, Result};
use super::hooks::pause_point;
use super::runner::{RunEvent, RunOutcome, RunRequest, RunSink, Runner};
use super::store::{CancelOutcome, Store};

/// Shared state: the store, the live event feed and the daemon's directories.
pub struct Core {
    pub store: Store,
    /// Every stored event is published here after its commit (WatchJob subscribes).
    pub events: broadcast::Sender<JobEvent>,
    pub data_root: PathBuf,
    pub state_dir: PathBuf,
}

impl Core {
    pub fn new(store: Store, data_root: PathBuf, state_dir: PathBuf) -> Self {
        let (events, _) = broadcast::channel(4096);
        Core {
            store,
            events,
            data_root,
            state_dir,
        }
    }

    /// Publishes stored events to live watchers (no watcher is fine).
    pub fn publish(&self, evs: impl IntoIterator<Item = JobEvent>) {
        for ev in evs {
            let _ = self.events.send(ev);
        }
    }
}

struct Active {
    devices: DeviceSet,
    cancel: Arc<AtomicBool>,
}

/// Starts queued jobs when their devices are free.
pub struct Scheduler {
    core: Arc<Core>,
    runner: Arc<dyn Runner>,
    active: Mutex<HashMap<u64, Active>>,
    wake: Mutex<Sender<()>>,
}

impl Scheduler {
    /// Starts the scheduling thread; it makes a first pass at once (restarting orphaned jobs).
    pub fn start(core: Arc<Core>, runner: Arc<dyn Runner>) -> Result<Arc<Self>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let sched = Arc::new(Scheduler {
            core,
            runner,
            active: Mutex::new(HashMap::new()),
            wake: Mutex::new(tx),
        });
        let weak = Arc::downgrade(&sched);
        std::thread::Builder::new()
            .name("koala-scheduler".into())
            .spawn(move || scheduler_loop(weak, rx))
            .map_err(|e| DaemonError::Server(format!("cannot spawn the scheduler thread: {e}")))?;
        sched.wake();
        Ok(sched)
    }

    /// Asks for a scheduling pass (after a submit or a job's end).
    pub fn wake(&self) {
        if let Ok(tx) = self.wake.lock() {
            let _ = tx.send(());
        }
    }

    /// Ids of the jobs now running in this process.
    pub fn running(&self) -> Vec<u64> {
        self.lock_active().keys().copied().collect()
    }

    fn lock_active(&self) -> MutexGuard<'_, HashMap<u64, Active>> {
        // A poisoned lock only means a thread panicked while holding it; the map stays usable.
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cancels a queued job now, or asks a running one to stop at its next step boundary.
    pub fn cancel(&self, id: u64) -> Result<CancelOutcome> {
        let active = self.lock_active();
        let outcome = self.core.store.cancel(id)?;
        match &outcome {
            CancelOutcome::Cancelled(_, ev) => self.core.publish([ev.clone()]),
            CancelOutcome::Requested(_) => {
                if let Some(a) = active.get(&id) {
                    a.cancel.store(true, Ordering::SeqCst);
                }
            }
            _ => {}
        }
        Ok(outcome)
    }

    fn pass(self: &Arc<Self>) -> Result<()> {
        let mut active = self.lock_active();
        let jobs = self
            .core
            .store
            .jobs_in_states(&[JobState::Running, JobState::Queued])?;
        // Jobs left RUNNING by an earlier process go first, then the queue in submission order.
        let (orphans, queued): (Vec<_>, Vec<_>) = jobs
            .into_iter()
            .filter(|j| !active.contains_key(&j.id))
            .partition(|j| j.state() == JobState::Running);
        let mut blocked: Vec<DeviceSet> = active.values().map(|a| a.devices.clone()).collect();
        for job in orphans.into_iter().chain(queued) {
            let spec = job.spec.clone().unwrap_or_default();
            let devices = match DeviceSet::parse(&spec.devices) {
                Ok(d) => d,
                Err(e) => {
                    let evs = self.core.store.finish(
                        job.id,
                        JobState::Failed,
                        &format!("devices: {e}"),
                        None,
                    )?;
                    self.core.publish(evs);
                    continue;
                }
            };
            if blocked.iter().any(|b| b.overlaps(&devices)) {
                // Later jobs on these devices wait behind this one (FIFO).
                blocked.push(devices);
                continue;
            }
            if job.state() == JobState::Running && job.cancel_requested {
                let evs = self.core.store.finish(
                    job.id,
                    JobState::Cancelled,
                    "cancel was requested before the daemon stopped",
                    None,
                )?;
                self.core.publish(evs);
                continue;
            }
            let Some((job, ev)) = self.core.store.start(job.id)? else {
                continue;
            };
            self.core.publish([ev]);
            let cancel = Arc::new(AtomicBool::new(false));
            active.insert(
                job.id,
                Active {
                    devices: devices.clone(),
                    cancel: cancel.clone(),
                },
            );
            blocked.push(devices);
            let req = RunRequest {
                job_id: job.id,
                spec,
                data_root: self.core.data_root.clone(),
                attempt: job.attempts,
            };
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("koala-job-{}", job.id))
                .spawn(move || me.run_job(req, cancel));
            if let Err(e) = spawned {
                active.remove(&job.id);
                let evs = self.core.store.finish(
                    job.id,
                    JobState::Failed,
                    &format!("cannot spawn a training thread: {e}"),
                    None,
                )?;
                self.core.publish(evs);
            }
        }
        Ok(())
    }

    fn run_job(self: Arc<Self>, req: RunRequest, cancel: Arc<AtomicBool>) {
        let id = req.job_id;
        pause_point("running");
        let mut sink = JobSink {
            core: &self.core,
            id,
            cancel,
            store_error: None,
            finished: None,
        };
        let result =
            std::panic::catch_unwind(AssertUnwindSafe(|| self.runner.run(&req, &mut sink)));
        let (store_error, finished) = (sink.store_error.take(), sink.finished);
        let (state, message, last) = match (result, store_error) {
            (_, Some(e)) => (JobState::Failed, format!("job store error: {e}"), None),
            (Ok(Ok(RunOutcome::Finished)), None) => {
                pause_point("finished");
                (JobState::Succeeded, "finished".to_string(), finished)
            }
            (Ok(Ok(RunOutcome::Cancelled { step })), None) => (
                JobState::Cancelled,
                format!("cancelled at step {step}"),
                None,
            ),
            (Ok(Err(e)), None) => (JobState::Failed, e, None),
            (Err(panic), None) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                (
                    JobState::Failed,
                    format!("the trainer panicked: {what}"),
                    None,
                )
            }
        };
        {
            let mut active = self.lock_active();
            match self.core.store.finish(id, state, &message, last) {
                Ok(evs) => self.core.publish(evs),
                // The job stays RUNNING in the store and is restarted by the next daemon.
                Err(e) => tracing::error!("job {id}: cannot store its end ({message}): {e}"),
            }
            active.remove(&id);
        }
        tracing::info!("job {id}: {} ({message})", state.as_str_name());
        self.wake();
    }
}

fn scheduler_loop(sched: std::sync::Weak<Scheduler>, rx: Receiver<()>) {
    loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while rx.try_recv().is_ok() {}
        let Some(s) = sched.upgrade() else { return };
        if let Err(e) = s.pass() {
            tracing::error!("scheduling pass failed: {e}");
        }
    }
}

/// Stores and publishes a running job's events.
struct JobSink<'a> {
    core: &'a Core,
    id: u64,
    cancel: Arc<AtomicBool>,
    store_error: Option<String>,
    finished: Option<(u64, f32)>,
}

impl RunSink for JobSink<'_> {
    fn event(&mut self, ev: RunEvent) {
        if self.store_error.is_some() {
            return;
        }
        let store = &self.core.store;
        let stored = match ev {
            RunEvent::Started {
                total_steps,
                resumed_from,
            } => store.record_started(self.id, total_steps, resumed_from),
            RunEvent::Step {
                step,
                total_steps,
                loss,
                lr,
                tokens_per_s,
                eta_s,
                val_loss,
            } => {
                let p = StepProgress {
                    step,
                    total_steps,
                    loss,
                    lr,
                    tokens_per_s,
                    eta_s,
                    val_loss,
                };
                let r = store.record_progress(self.id, &p);
                if r.is_ok() {
                    self.core.publish(r.as_ref().ok().cloned());
                    pause_point(&format!("step-{step}"));
                    return;
                }
                r
            }
            RunEvent::Checkpoint { step, path } => {
                pause_point(&format!("checkpoint-{step}"));
                store.record_checkpoint(self.id, step, &path.to_string_lossy())
            }
            RunEvent::Finished { step, final_loss } => {
                self.finished = Some((step, final_loss));
                return;
            }
        };
        match stored {
            Ok(ev) => self.core.publish([ev]),
            Err(e) => {
                tracing::error!("job {}: {e}; stopping the run", self.id);
                self.store_error = Some(e.to_string());
            }
        }
    }

    fn cancelled(&self) -> bool {
        self.store_error.is_some() || self.cancel.load(Ordering::SeqCst)
    }
}
