//! The durable job store: SQLite (bundled) in WAL mode with `synchronous=FULL`, so that a job and
//! each of its events are on disk before the call that created them returns.
//!
//! One writer connection (behind a mutex) does every write in a transaction. Job rows are also
//! kept in memory, write-through: a write commits to SQLite first and then, still holding the
//! writer lock, refreshes the job it touched from the database, so [`Store::get`] and
//! [`Store::list`] (the hot read path of `GetJob`/`ListJobs`) are a map lookup that never waits
//! on SQLite or on the writer, and never see a state that is not on disk. Events and metrics are
//! read from a small pool of read-only connections, which WAL lets run beside the writer.
//!
//! ```
//! use koala_trainer::daemon::store::{Store, SubmitOutcome};
//! use koala_proto::v1::{JobSpec, JobState};
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(&dir.path().join("jobs.sqlite3")).unwrap();
//! let spec = JobSpec { idempotency_key: "k1".into(), ..Default::default() };
//! let SubmitOutcome::Created(job, _) = store.submit(&spec, "", 10).unwrap() else { panic!() };
//! assert_eq!(job.state(), JobState::Queued);
//! // The same key gives back the same job.
//! let SubmitOutcome::Existing(again) = store.submit(&spec, "", 10).unwrap() else { panic!() };
//! assert_eq!(again.id, job.id);
//! ```
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use koala_proto::v1::{
    CheckpointWritten, Job, JobError, JobEvent, JobSpec, JobState, MetricPoint, StateChanged,
    StepProgress, job_event::Kind,
};
use prost::Message;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};

use super::error::{DaemonError, Result};
use super::wire::EncodedJob;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  idempotency_key TEXT UNIQUE,
  spec BLOB NOT NULL,
  state INTEGER NOT NULL,
  created_ms INTEGER NOT NULL,
  started_ms INTEGER NOT NULL DEFAULT 0,
  finished_ms INTEGER NOT NULL DEFAULT 0,
  step INTEGER NOT NULL DEFAULT 0,
  total_steps INTEGER NOT NULL DEFAULT 0,
  last_loss REAL NOT NULL DEFAULT 0,
  last_checkpoint TEXT NOT NULL DEFAULT '',
  error TEXT NOT NULL DEFAULT '',
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_seq INTEGER NOT NULL DEFAULT 1,
  out_dir TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, id);
CREATE TABLE IF NOT EXISTS events (
  job_id INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  event BLOB NOT NULL,
  PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metrics (
  job_id INTEGER NOT NULL,
  step INTEGER NOT NULL,
  loss REAL NOT NULL,
  lr REAL NOT NULL,
  tokens_per_s REAL NOT NULL,
  time_ms INTEGER NOT NULL,
  val_loss REAL,
  PRIMARY KEY (job_id, step)
) WITHOUT ROWID;
";

const JOB_COLUMNS: &str = "id, spec, state, created_ms, started_ms, finished_ms, step, total_steps, \
     last_loss, last_checkpoint, error, cancel_requested, attempts";

/// Most read connections kept open for reuse.
const MAX_IDLE_READERS: usize = 16;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether a state is final.
pub fn is_terminal(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

/// What [`Store::submit`] did.
#[derive(Debug)]
pub enum SubmitOutcome {
    /// A new job, with its first event (QUEUED).
    Created(Job, JobEvent),
    /// The idempotency key names an existing job with the same spec.
    Existing(Job),
    /// The idempotency key names an existing job with a different spec.
    KeyConflict(Job),
    /// The queue already holds this many jobs.
    QueueFull(u64),
    /// A queued or running job already writes to this output directory.
    OutDirBusy(u64),
}

/// What [`Store::cancel`] did.
#[derive(Debug)]
pub enum CancelOutcome {
    /// The job was queued and is now CANCELLED.
    Cancelled(Job, JobEvent),
    /// The job is running; `cancel_requested` is now set and stored.
    Requested(Job),
    /// The job had already finished; nothing changed.
    AlreadyFinal(Job),
    NotFound,
}

/// The SQLite job store.
pub struct Store {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Every job, as last committed (write-through; see the module docs).
    jobs: RwLock<BTreeMap<u64, Cached>>,
}

/// A job in memory, with its protobuf encoding (made once per change, served by the hot reads).
struct Cached {
    job: Job,
    wire: EncodedJob,
}

impl Cached {
    fn new(job: Job) -> Self {
        Cached {
            wire: EncodedJob::new(&job),
            job,
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DaemonError::Config(format!(
                "{}: SQLite refused WAL mode (got {mode})",
                path.display()
            )));
        }
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000;")?;
        conn.execute_batch(SCHEMA)?;
        // Databases made before the validation loss existed lack its column.
        let has_val: bool = conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('metrics') WHERE name = 'val_loss'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has_val {
            conn.execute_batch("ALTER TABLE metrics ADD COLUMN val_loss REAL")?;
        }
        let mut jobs = BTreeMap::new();
        {
            let mut stmt = conn.prepare(&format!("SELECT {JOB_COLUMNS} FROM jobs"))?;
            for job in stmt.query_map([], job_from_row)? {
                let job = job??;
                jobs.insert(job.id, Cached::new(job));
            }
        }
        Ok(Store {
            path: path.to_path_buf(),
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            jobs: RwLock::new(jobs),
        })
    }

    /// Runs `f` in an immediate transaction, reads back the job `touched` names, commits, then
    /// updates the in-memory copy (still under the writer lock, so copies change in commit order).
    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
        touched: impl FnOnce(&T) -> Option<u64>,
    ) -> Result<T> {
        let mut conn = self
            .writer
            .lock()
            .map_err(|_| DaemonError::Corrupt("writer lock poisoned".into()))?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        // Read the new row inside the transaction: if that fails, nothing is committed, so a
        // write never succeeds on disk while reporting an error (or the reverse).
        let fresh = match touched(&out) {
            Some(id) => Some((id, get_job(&tx, id)?)),
            None => None,
        };
        tx.commit()?;
        if let Some((id, job)) = fresh {
            // Encoded before taking the map lock, so readers never wait on it.
            let job = job.map(Cached::new);
            let mut jobs = self.polite_write();
            let old = match job {
                Some(j) => jobs.insert(id, j),
                None => jobs.remove(&id),
            };
            drop(jobs);
            // Freed after the lock is released.
            drop(old);
        }
        Ok(out)
    }

    /// The job map for writing, taken only when no reader holds it. A writer that waited in
    /// the lock would make every new reader wait behind it, and writers are training threads
    /// running at a low priority: the RPC threads could stall until one got a core.
    fn polite_write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Cached>> {
        loop {
            match self.jobs.try_write() {
                Ok(g) => return g,
                // A poisoned lock only means a reader panicked; the map itself is consistent.
                Err(std::sync::TryLockError::Poisoned(e)) => return e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => std::thread::yield_now(),
            }
        }
    }

    fn cached(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Cached>> {
        self.jobs.read().unwrap_or_else(|e| e.into_inner())
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.readers.lock().ok().and_then(|mut v| v.pop());
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.execute_batch("PRAGMA busy_timeout=10000;")?;
                c
            }
        };
        let out = f(&conn);
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < MAX_IDLE_READERS
        {
            pool.push(conn);
        }
        out
    }

    /// The job holding an idempotency key.
    pub fn get_by_key(&self, key: &str) -> Result<Option<Job>> {
        self.read(|c| {
            match c
                .query_row(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE idempotency_key = ?1"),
                    [key],
                    job_from_row,
                )
                .optional()?
            {
                Some(j) => Ok(Some(j?)),
                None => Ok(None),
            }
        })
    }

    /// Stores a new QUEUED job, unless its idempotency key is known, the queue is full, or a
    /// live job writes to the same (resolved) `out_dir`.
    pub fn submit(&self, spec: &JobSpec, out_dir: &str, max_queued: u64) -> Result<SubmitOutcome> {
        self.write(
            |tx| {
                if !spec.idempotency_key.is_empty() {
                    let existing = tx
                        .query_row(
                            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE idempotency_key = ?1"),
                            [&spec.idempotency_key],
                            job_from_row,
                        )
                        .optional()?;
                    if let Some(job) = existing {
                        let job = job?;
                        return Ok(if job.spec.as_ref() == Some(spec) {
                            SubmitOutcome::Existing(job)
                        } else {
                            SubmitOutcome::KeyConflict(job)
                        });
                    }
                }
                let queued: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM jobs WHERE state = ?1",
                    [JobState::Queued as i32],
                    |r| r.get(0),
                )?;
                if queued as u64 >= max_queued {
                    return Ok(SubmitOutcome::QueueFull(queued as u64));
                }
                if !out_dir.is_empty() {
                    let busy: Option<i64> = tx
                        .query_row(
                            "SELECT id FROM jobs WHERE out_dir = ?1 AND state IN (?2, ?3) LIMIT 1",
                            params![out_dir, JobState::Queued as i32, JobState::Running as i32],
                            |r| r.get(0),
                        )
                        .optional()?;
                    if let Some(other) = busy {
                        return Ok(SubmitOutcome::OutDirBusy(other as u64));
                    }
                }
                let key = (!spec.idempotency_key.is_empty()).then_some(&spec.idempotency_key);
                tx.execute(
                    "INSERT INTO jobs (idempotency_key, spec, state, created_ms, out_dir) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        key,
                        spec.encode_to_vec(),
                        JobState::Queued as i32,
                        now_ms(),
                        out_dir
                    ],
                )?;
                let id = tx.last_insert_rowid() as u64;
                let ev = append_event(
                    tx,
                    id,
                    Kind::StateChanged(StateChanged {
                        state: JobState::Queued as i32,
                        message: "submitted".into(),
                        resumed_from_step: None,
                    }),
                )?;
                Ok(SubmitOutcome::Created(
                    get_job(tx, id)?.ok_or_else(missing(id))?,
                    ev,
                ))
            },
            |o| match o {
                SubmitOutcome::Created(job, _) => Some(job.id),
                _ => None,
            },
        )
    }

    /// One job (from memory; see the module docs).
    pub fn get(&self, id: u64) -> Result<Option<Job>> {
        Ok(self.cached().get(&id).map(|c| c.job.clone()))
    }

    /// One job's protobuf encoding (from memory, like [`Store::get`], without a copy).
    pub fn get_encoded(&self, id: u64) -> Option<EncodedJob> {
        self.cached().get(&id).map(|c| c.wire.clone())
    }

    /// Jobs newest first, optionally only in `states`, at most `limit`, with ids below `before`.
    /// Returns the page and, when more remain, the id to pass as `before` next.
    pub fn list(
        &self,
        states: &[JobState],
        limit: usize,
        before: Option<u64>,
    ) -> Result<(Vec<Job>, Option<u64>)> {
        Ok(self.page(states, limit, before, |c| c.job.clone()))
    }

    /// [`Store::list`], as each job's protobuf encoding (the `ListJobs` hot path).
    pub fn list_encoded(
        &self,
        states: &[JobState],
        limit: usize,
        before: Option<u64>,
    ) -> (Vec<prost::bytes::Bytes>, Option<u64>) {
        self.page(states, limit, before, |c| c.wire.bytes().clone())
    }

    fn page<T>(
        &self,
        states: &[JobState],
        limit: usize,
        before: Option<u64>,
        take: impl Fn(&Cached) -> T,
    ) -> (Vec<T>, Option<u64>) {
        let jobs = self.cached();
        let mut page = Vec::with_capacity(limit.min(1024));
        let mut last = None;
        let mut next = None;
        for c in jobs
            .range(..before.unwrap_or(u64::MAX))
            .rev()
            .map(|(_, c)| c)
            .filter(|c| states.is_empty() || states.contains(&c.job.state()))
        {
            if page.len() == limit {
                next = last;
                break;
            }
            last = Some(c.job.id);
            page.push(take(c));
        }
        (page, next)
    }

    /// Jobs in the given states, oldest first (the scheduler's FIFO order).
    pub fn jobs_in_states(&self, states: &[JobState]) -> Result<Vec<Job>> {
        let (mut jobs, _) = self.list(states, usize::MAX / 2, None)?;
        jobs.reverse();
        Ok(jobs)
    }

    /// Marks a job RUNNING: a QUEUED job starts (attempt 1), a RUNNING one left over from a
    /// crashed daemon restarts (attempt n+1). Returns `None` when the job is in neither state (for
    /// instance, cancelled in the meantime).
    pub fn start(&self, id: u64) -> Result<Option<(Job, JobEvent)>> {
        self.write(
            |tx| {
                let Some(job) = get_job(tx, id)? else {
                    return Ok(None);
                };
                let message = match job.state() {
                    JobState::Queued => "scheduled".to_string(),
                    JobState::Running => format!(
                        "restarted after the daemon stopped during attempt {}",
                        job.attempts
                    ),
                    _ => return Ok(None),
                };
                tx.execute(
                    "UPDATE jobs SET state = ?2, attempts = attempts + 1, \
                 started_ms = CASE WHEN started_ms = 0 THEN ?3 ELSE started_ms END WHERE id = ?1",
                    params![id as i64, JobState::Running as i32, now_ms()],
                )?;
                let ev = append_event(
                    tx,
                    id,
                    Kind::StateChanged(StateChanged {
                        state: JobState::Running as i32,
                        message,
                        resumed_from_step: None,
                    }),
                )?;
                Ok(Some((get_job(tx, id)?.ok_or_else(missing(id))?, ev)))
            },
            |_| Some(id),
        )
    }

    /// The trainer began (or resumed) its loop.
    pub fn record_started(
        &self,
        id: u64,
        total_steps: u64,
        resumed_from: Option<u64>,
    ) -> Result<JobEvent> {
        self.write(
            |tx| {
                tx.execute(
                    "UPDATE jobs SET total_steps = ?2 WHERE id = ?1",
                    params![id as i64, total_steps as i64],
                )?;
                let message = match resumed_from {
                    Some(s) => format!("training resumed from the checkpoint of step {s}"),
                    None => "training started".to_string(),
                };
                append_event(
                    tx,
                    id,
                    Kind::StateChanged(StateChanged {
                        state: JobState::Running as i32,
                        message,
                        resumed_from_step: resumed_from,
                    }),
                )
            },
            |_| Some(id),
        )
    }

    /// One optimizer step finished.
    pub fn record_progress(&self, id: u64, p: &StepProgress) -> Result<JobEvent> {
        self.write(
            |tx| {
                let now = now_ms();
                tx.execute(
                    "UPDATE jobs SET step = ?2, total_steps = ?3, last_loss = ?4 WHERE id = ?1",
                    params![
                        id as i64,
                        p.step as i64,
                        p.total_steps as i64,
                        p.loss as f64
                    ],
                )?;
                tx.execute(
                "INSERT OR REPLACE INTO metrics (job_id, step, loss, lr, tokens_per_s, time_ms, val_loss) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id as i64,
                    p.step as i64,
                    p.loss as f64,
                    p.lr as f64,
                    p.tokens_per_s,
                    now,
                    p.val_loss.map(f64::from)
                ],
            )?;
                append_event(tx, id, Kind::Progress(*p))
            },
            |_| Some(id),
        )
    }

    /// A checkpoint was written.
    pub fn record_checkpoint(&self, id: u64, step: u64, path: &str) -> Result<JobEvent> {
        self.write(
            |tx| {
                tx.execute(
                    "UPDATE jobs SET last_checkpoint = ?2 WHERE id = ?1",
                    params![id as i64, path],
                )?;
                append_event(
                    tx,
                    id,
                    Kind::Checkpoint(CheckpointWritten {
                        step,
                        path: path.to_string(),
                    }),
                )
            },
            |_| Some(id),
        )
    }

    /// Puts a job in a terminal state. A FAILED job also gets an error event first.
    pub fn finish(
        &self,
        id: u64,
        state: JobState,
        message: &str,
        final_step: Option<(u64, f32)>,
    ) -> Result<Vec<JobEvent>> {
        debug_assert!(is_terminal(state));
        self.write(
            |tx| {
                let mut events = Vec::new();
                let error = if state == JobState::Failed {
                    events.push(append_event(
                        tx,
                        id,
                        Kind::Error(JobError {
                            message: message.to_string(),
                        }),
                    )?);
                    message
                } else {
                    ""
                };
                tx.execute(
                    "UPDATE jobs SET state = ?2, finished_ms = ?3, error = ?4 WHERE id = ?1",
                    params![id as i64, state as i32, now_ms(), error],
                )?;
                if let Some((step, loss)) = final_step {
                    tx.execute(
                        "UPDATE jobs SET step = ?2, last_loss = ?3 WHERE id = ?1",
                        params![id as i64, step as i64, loss as f64],
                    )?;
                }
                events.push(append_event(
                    tx,
                    id,
                    Kind::StateChanged(StateChanged {
                        state: state as i32,
                        message: message.to_string(),
                        resumed_from_step: None,
                    }),
                )?);
                Ok(events)
            },
            |_| Some(id),
        )
    }

    /// Cancels a queued job, or records a cancel request for a running one.
    pub fn cancel(&self, id: u64) -> Result<CancelOutcome> {
        self.write(|tx| {
            let Some(job) = get_job(tx, id)? else {
                return Ok(CancelOutcome::NotFound);
            };
            match job.state() {
                JobState::Queued => {
                    tx.execute(
                        "UPDATE jobs SET state = ?2, finished_ms = ?3, cancel_requested = 1 WHERE id = ?1",
                        params![id as i64, JobState::Cancelled as i32, now_ms()],
                    )?;
                    let ev = append_event(
                        tx,
                        id,
                        Kind::StateChanged(StateChanged {
                            state: JobState::Cancelled as i32,
                            message: "cancelled while queued".into(),
                            resumed_from_step: None,
                        }),
                    )?;
                    Ok(CancelOutcome::Cancelled(
                        get_job(tx, id)?.ok_or_else(missing(id))?,
                        ev,
                    ))
                }
                JobState::Running => {
                    tx.execute(
                        "UPDATE jobs SET cancel_requested = 1 WHERE id = ?1",
                        [id as i64],
                    )?;
                    Ok(CancelOutcome::Requested(
                        get_job(tx, id)?.ok_or_else(missing(id))?,
                    ))
                }
                _ => Ok(CancelOutcome::AlreadyFinal(job)),
            }
        },
            |_| Some(id),
        )
    }

    /// Stored events of a job with `seq > after_seq`, in order.
    pub fn events_after(&self, id: u64, after_seq: u64) -> Result<Vec<JobEvent>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT event FROM events WHERE job_id = ?1 AND seq > ?2 ORDER BY seq",
            )?;
            let rows = stmt.query_map(params![id as i64, after_seq as i64], |r| {
                r.get::<_, Vec<u8>>(0)
            })?;
            let mut out = Vec::new();
            for r in rows {
                let bytes = r?;
                out.push(
                    JobEvent::decode(bytes.as_slice())
                        .map_err(|e| DaemonError::Corrupt(format!("event of job {id}: {e}")))?,
                );
            }
            Ok(out)
        })
    }

    /// The per-step metrics of a job (the latest value per step after a resume), in step order.
    pub fn metrics(&self, id: u64) -> Result<Vec<MetricPoint>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT step, loss, lr, tokens_per_s, time_ms, val_loss FROM metrics WHERE job_id = ?1 ORDER BY step",
            )?;
            let rows = stmt.query_map([id as i64], |r| {
                Ok(MetricPoint {
                    step: r.get::<_, i64>(0)? as u64,
                    loss: r.get::<_, f64>(1)? as f32,
                    lr: r.get::<_, f64>(2)? as f32,
                    tokens_per_s: r.get(3)?,
                    time_ms: r.get(4)?,
                    val_loss: r.get::<_, Option<f64>>(5)?.map(|v| v as f32),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

fn missing(id: u64) -> impl FnOnce() -> DaemonError {
    move || DaemonError::Corrupt(format!("job {id} vanished inside a transaction"))
}

fn get_job(c: &Connection, id: u64) -> Result<Option<Job>> {
    let mut stmt = c.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))?;
    match stmt.query_row([id as i64], job_from_row).optional()? {
        Some(job) => Ok(Some(job?)),
        None => Ok(None),
    }
}

fn job_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Job>> {
    let id = r.get::<_, i64>(0)? as u64;
    let spec_bytes: Vec<u8> = r.get(1)?;
    let spec = match JobSpec::decode(spec_bytes.as_slice()) {
        Ok(s) => s,
        Err(e) => return Ok(Err(DaemonError::Corrupt(format!("spec of job {id}: {e}")))),
    };
    Ok(Ok(Job {
        id,
        spec: Some(spec),
        state: r.get(2)?,
        created_at_ms: r.get(3)?,
        started_at_ms: r.get(4)?,
        finished_at_ms: r.get(5)?,
        step: r.get::<_, i64>(6)? as u64,
        total_steps: r.get::<_, i64>(7)? as u64,
        last_loss: r.get::<_, f64>(8)? as f32,
        last_checkpoint: r.get(9)?,
        error: r.get(10)?,
        cancel_requested: r.get::<_, i64>(11)? != 0,
        attempts: r.get::<_, i64>(12)? as u32,
    }))
}

fn append_event(tx: &Connection, id: u64, kind: Kind) -> Result<JobEvent> {
    let seq: i64 = tx.query_row(
        "UPDATE jobs SET next_seq = next_seq + 1 WHERE id = ?1 RETURNING next_seq - 1",
        [id as i64],
        |r| r.get(0),
    )?;
    let ev = JobEvent {
        job_id: id,
        seq: seq as u64,
        time_ms: now_ms(),
        kind: Some(kind),
    };
    tx.execute(
        "INSERT INTO events (job_id, seq, event) VALUES (?1, ?2, ?3)",
        params![id as i64, seq, ev.encode_to_vec()],
    )?;
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_writer_does_not_hold_up_new_readers() {
        let (_d, s) = store();
        let spec = JobSpec::default();
        let job = created(s.submit(&spec, "", 10).unwrap());
        let s = std::sync::Arc::new(s);
        // A reader holds the map while a (training-thread) write is waiting for it.
        let held = s.cached();
        let writer = {
            let s = s.clone();
            std::thread::spawn(move || s.start(job.id).unwrap())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        // A new reader still gets in at once (a plain `RwLock::write` would queue it behind
        // the writer, which waits on `held`: this would hang).
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let s = s.clone();
            std::thread::spawn(move || {
                let got = s.get(job.id).unwrap().map(|j| j.state());
                let _ = tx.send(got);
            });
        }
        let got = rx.recv_timeout(std::time::Duration::from_secs(5));
        assert_eq!(got, Ok(Some(JobState::Queued)));
        drop(held);
        assert!(writer.join().unwrap().is_some());
        assert_eq!(s.get(job.id).unwrap().unwrap().state(), JobState::Running);
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("jobs.sqlite3")).unwrap();
        (dir, s)
    }

    fn created(o: SubmitOutcome) -> Job {
        match o {
            SubmitOutcome::Created(j, _) => j,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lifecycle_events_and_metrics_survive_reopen() {
        let (dir, s) = store();
        let job = created(s.submit(&JobSpec::default(), "", 10).unwrap());
        let (running, _) = s.start(job.id).unwrap().unwrap();
        assert_eq!(running.state(), JobState::Running);
        assert_eq!(running.attempts, 1);
        s.record_started(job.id, 4, None).unwrap();
        for step in 1..=2 {
            let p = StepProgress {
                step,
                total_steps: 4,
                loss: 5.0 / step as f32,
                lr: 1e-3,
                tokens_per_s: 100.0,
                eta_s: 1.0,
                val_loss: (step == 2).then_some(4.5),
            };
            s.record_progress(job.id, &p).unwrap();
        }
        s.record_checkpoint(job.id, 2, "/x/step-2").unwrap();
        drop(s);
        // Reopen: everything is there, the job is still RUNNING and restarts as attempt 2.
        let s = Store::open(&dir.path().join("jobs.sqlite3")).unwrap();
        let j = s.get(job.id).unwrap().unwrap();
        assert_eq!(
            (j.state(), j.step, j.last_checkpoint.as_str()),
            (JobState::Running, 2, "/x/step-2")
        );
        let (again, ev) = s.start(job.id).unwrap().unwrap();
        assert_eq!(again.attempts, 2);
        assert_eq!(ev.seq, 7);
        // Resumed steps overwrite the metric of the same step.
        let p = StepProgress {
            step: 2,
            total_steps: 4,
            loss: 9.0,
            ..Default::default()
        };
        s.record_progress(job.id, &p).unwrap();
        let m = s.metrics(job.id).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].loss, 9.0);
        assert_eq!((m[0].val_loss, m[1].val_loss), (None, None));
        s.finish(job.id, JobState::Succeeded, "done", Some((4, 0.5)))
            .unwrap();
        let evs = s.events_after(job.id, 0).unwrap();
        let seqs: Vec<u64> = evs.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
        assert_eq!(s.events_after(job.id, 7).unwrap().len(), 2);
        assert_eq!(s.get(job.id).unwrap().unwrap().state(), JobState::Succeeded);
        assert!(s.start(job.id).unwrap().is_none());
    }

    #[test]
    fn idempotency_queue_limit_cancel_and_paging() {
        let (_dir, s) = store();
        let spec = |k: &str, name: &str| JobSpec {
            idempotency_key: k.into(),
            name: name.into(),
            ..Default::default()
        };
        let a = created(s.submit(&spec("a", "x"), "", 3).unwrap());
        assert!(
            matches!(s.submit(&spec("a", "x"), "", 3).unwrap(), SubmitOutcome::Existing(j) if j.id == a.id)
        );
        assert!(matches!(
            s.submit(&spec("a", "y"), "", 3).unwrap(),
            SubmitOutcome::KeyConflict(_)
        ));
        created(s.submit(&spec("", "b"), "", 3).unwrap());
        let c = created(s.submit(&spec("", "c"), "", 3).unwrap());
        assert!(matches!(
            s.submit(&spec("", "d"), "", 3).unwrap(),
            SubmitOutcome::QueueFull(3)
        ));
        assert!(
            matches!(s.cancel(c.id).unwrap(), CancelOutcome::Cancelled(j, _) if j.state() == JobState::Cancelled)
        );
        assert!(matches!(
            s.cancel(c.id).unwrap(),
            CancelOutcome::AlreadyFinal(_)
        ));
        assert!(matches!(s.cancel(999).unwrap(), CancelOutcome::NotFound));
        s.start(a.id).unwrap().unwrap();
        assert!(
            matches!(s.cancel(a.id).unwrap(), CancelOutcome::Requested(j) if j.cancel_requested)
        );
        // A cancelled queued job is never started.
        assert!(s.start(c.id).unwrap().is_none());
        let (page1, next) = s.list(&[], 2, None).unwrap();
        assert_eq!(page1.iter().map(|j| j.id).collect::<Vec<_>>(), vec![3, 2]);
        let (page2, next2) = s.list(&[], 2, next).unwrap();
        assert_eq!(page2.iter().map(|j| j.id).collect::<Vec<_>>(), vec![1]);
        assert!(next2.is_none());
        let (queued, _) = s.list(&[JobState::Queued], 10, None).unwrap();
        assert_eq!(queued.iter().map(|j| j.id).collect::<Vec<_>>(), vec![2]);
        let fifo = s
            .jobs_in_states(&[JobState::Queued, JobState::Running])
            .unwrap();
        assert_eq!(fifo.iter().map(|j| j.id).collect::<Vec<_>>(), vec![1, 2]);
    }
}
