//! Shared helpers of the daemon tests: a data root with tiny fixtures, an in-process daemon on
//! 127.0.0.1:0 with a scripted runner, and clients with or without the token.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use koala_proto::v1::{Job, JobSpec, JobState, job_spec::BaseModel};
use koala_trainer::daemon::client::{self, Client, ClientOptions};
use koala_trainer::daemon::runner::{RunEvent, RunOutcome, RunRequest, RunSink, Runner};
use koala_trainer::daemon::validate::resolve_paths;
use koala_trainer::daemon::{DaemonConfig, server};

/// The tiny training data, shared with the training-loop tests.
#[path = "../train_common/mod.rs"]
pub mod train_common;

pub const TOKEN: &str = "test-token-0123456789";

/// A runner that pretends to train: `max_steps` steps of `step_ms` each, a checkpoint file
/// every `checkpoint_every` steps, resuming from the newest one. A job named "fail" returns an
/// error at step 2, one named "panic" panics.
pub struct ScriptedRunner {
    pub step_ms: u64,
}

impl Runner for ScriptedRunner {
    fn run(&self, req: &RunRequest, sink: &mut dyn RunSink) -> Result<RunOutcome, String> {
        let paths = resolve_paths(&req.spec, &req.data_root).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&paths.out_dir).map_err(|e| e.to_string())?;
        let total = req.spec.max_steps.max(1);
        let every = req.spec.checkpoint_every;
        let resumed = (1..=total)
            .rev()
            .find(|s| paths.out_dir.join(format!("ckpt-{s}")).exists());
        sink.event(RunEvent::Started {
            total_steps: total,
            resumed_from: resumed,
        });
        for step in resumed.unwrap_or(0) + 1..=total {
            if sink.cancelled() {
                return Ok(RunOutcome::Cancelled { step: step - 1 });
            }
            std::thread::sleep(Duration::from_millis(self.step_ms));
            if req.spec.name == "fail" && step == 2 {
                return Err("scripted failure at step 2".into());
            }
            if req.spec.name == "panic" && step == 2 {
                panic!("scripted panic");
            }
            sink.event(RunEvent::Step {
                step,
                total_steps: total,
                loss: 10.0 / step as f32,
                lr: 1e-3,
                tokens_per_s: 1000.0,
                eta_s: (total - step) as f64 * self.step_ms as f64 / 1000.0,
                // A validation loss on every 2nd step, as a run with val_every = 2 reports it.
                val_loss: (step % 2 == 0).then_some(20.0 / step as f32),
            });
            if every > 0 && step % every == 0 {
                let p = paths.out_dir.join(format!("ckpt-{step}"));
                std::fs::write(&p, step.to_string()).map_err(|e| e.to_string())?;
                sink.event(RunEvent::Checkpoint { step, path: p });
            }
        }
        sink.event(RunEvent::Finished {
            step: total,
            final_loss: 10.0 / total as f32,
        });
        Ok(RunOutcome::Finished)
    }
}

/// A data root with a tiny model config and a shard directory whose manifest fits it.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub token_file: PathBuf,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(root.join("models/tiny")).unwrap();
        std::fs::write(
            root.join("models/tiny/config.json"),
            r#"{"vocab_size": 64, "hidden_size": 16}"#,
        )
        .unwrap();
        std::fs::create_dir_all(root.join("shards/demo")).unwrap();
        std::fs::write(
            root.join("shards/demo/manifest.json"),
            r#"{"vocab_size": 64, "shards": ["shard-00000.arrow"]}"#,
        )
        .unwrap();
        std::fs::write(root.join("shards/demo/shard-00000.arrow"), b"x").unwrap();
        std::fs::create_dir_all(root.join("runs")).unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let state = dir.path().join("state");
        Fixture {
            root,
            state,
            token_file,
            dir,
        }
    }

    pub fn config(&self) -> DaemonConfig {
        DaemonConfig {
            listen: "127.0.0.1:0".into(),
            data_root: self.root.clone(),
            state_dir: self.state.clone(),
            token_file: self.token_file.clone(),
            max_queued_jobs: 100,
            max_message_bytes: 64 * 1024,
            training_nice: 0,
            training_idle: false,
            generate_device: "cpu".into(),
            generate_allow_dirs: false,
            tls: None,
        }
    }

    /// A valid spec writing to `runs/<out>`.
    pub fn spec(&self, out: &str, steps: u64) -> JobSpec {
        JobSpec {
            name: out.into(),
            base_model: Some(BaseModel::InitConfig("models/tiny/config.json".into())),
            shards_dir: "shards/demo".into(),
            out_dir: format!("runs/{out}"),
            max_steps: steps,
            checkpoint_every: 2,
            seed: 1,
            ..Default::default()
        }
    }
}

/// A daemon served in-process on an ephemeral loopback port.
pub struct TestDaemon {
    pub addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestDaemon {
    pub async fn start(cfg: DaemonConfig, runner: Arc<dyn Runner>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server::serve_on(cfg, runner, listener, || {}, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        TestDaemon {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self, token: Option<&str>) -> Client {
        client::connect(&ClientOptions {
            addr: self.addr.clone(),
            token: token.map(str::to_string),
            ..Default::default()
        })
        .await
        .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// Polls GetJob until the job is in `state` (panics after `secs`).
pub async fn wait_state(c: &mut Client, id: u64, state: JobState, secs: u64) -> Job {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let job = c
            .get_job(koala_proto::v1::GetJobRequest { id })
            .await
            .unwrap()
            .into_inner();
        if job.state() == state {
            return job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} is {:?}, waited for {state:?}: {job:?}",
            job.state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

pub mod process;
