//! The real `koala-trainerd` binary on a loopback port with the real trainer: a tiny job runs to
//! SUCCEEDED with its checkpoint; and `kill -9` at six points of a job's life (including inside a
//! checkpoint write), then a restart, resumes the job to final weights bit-identical to an
//! uninterrupted run.
mod daemon_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use daemon_common::process::*;
use daemon_common::{TOKEN, wait_state};
use koala_proto::v1::{GetJobRequest, GetMetricsRequest, JobSpec, JobState, job_spec::BaseModel};
use koala_trainer::daemon::client::{self, Client, ClientOptions};

const BIN: &str = env!("CARGO_BIN_EXE_koala-trainerd");

fn tiny_spec(out: &str) -> JobSpec {
    JobSpec {
        name: format!("tiny {out}"),
        base_model: Some(BaseModel::InitConfig("models/tiny/config.json".into())),
        shards_dir: "shards/tiny".into(),
        out_dir: format!("runs/{out}"),
        preset: "tiny-cpu".into(),
        hyperparameters: Some(koala_proto::v1::Hyperparameters {
            batch_size: Some(4),
            micro_batch_size: Some(2),
            epochs: Some(2),
            lr: Some(3e-3),
            ..Default::default()
        }),
        seed: 11,
        checkpoint_every: 2,
        idempotency_key: format!("tiny-{out}"),
        ..Default::default()
    }
}

async fn connect(addr: &str) -> Client {
    client::connect(&ClientOptions {
        addr: addr.to_string(),
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await
    .unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    base: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_training_data(&root);
    Setup {
        base: dir.path().to_path_buf(),
        root,
        _dir: dir,
    }
}

fn final_weights(root: &Path, out: &str) -> Vec<u8> {
    std::fs::read(root.join("runs").join(out).join("final/model.safetensors")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_daemon_trains_a_tiny_job_to_success() {
    let s = setup();
    let state = s.base.join("state");
    let cfg = write_config(&s.base, &s.root, &state, TOKEN);
    let d = spawn_daemon(BIN, &cfg, &[], &s.base.join("daemon.log"));
    let mut c = connect(&d.addr).await;
    let job = c.submit_job(tiny_spec("ok")).await.unwrap().into_inner();
    let done = client::watch(&mut c, job.id, false).await.unwrap();
    assert_eq!(done.state(), JobState::Succeeded, "{done:?}");
    // 20 rows, batch 4, 2 epochs: 10 steps, checkpoints every 2 (the trainer keeps the newest 3).
    assert_eq!((done.step, done.total_steps), (10, 10));
    let ckpt = s.root.join("runs/ok/checkpoints/step-00000010");
    assert_eq!(
        Path::new(&done.last_checkpoint),
        ckpt.canonicalize().unwrap()
    );
    for f in [
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ] {
        assert!(ckpt.join(f).is_file(), "{f} missing in {}", ckpt.display());
    }
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("state.json")).unwrap()).unwrap();
    assert_eq!(st["step"], 10);
    // The checkpoint's weights are the final model's.
    assert_eq!(
        std::fs::read(ckpt.join("model.safetensors")).unwrap(),
        final_weights(&s.root, "ok")
    );
    let m = c
        .get_metrics(GetMetricsRequest { id: job.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.points.len(), 10);
    assert!(
        m.points
            .iter()
            .all(|p| p.loss.is_finite() && p.tokens_per_s > 0.0)
    );
    assert!(
        m.points[9].loss < m.points[0].loss,
        "the loss goes down: {:?}",
        m.points
    );
    // A clean SIGTERM exits 0.
    assert!(d.terminate().success());
}

/// Kill -9 at `point`, restart, and return the job's final weights and per-step losses.
async fn crash_and_resume(s: &Setup, point: &str) -> (Vec<u8>, Vec<f32>, u32) {
    let name = point.replace('-', "_");
    let state = s.base.join(format!("state-{name}"));
    let cfgdir = s.base.join(format!("cfg-{name}"));
    std::fs::create_dir_all(&cfgdir).unwrap();
    let cfg = write_config(&cfgdir, &s.root, &state, TOKEN);
    let log = cfgdir.join("daemon.log");
    let marker = cfgdir.join(format!("paused-at-{point}"));
    let pause_dir = cfgdir.to_string_lossy().into_owned();
    let d = spawn_daemon(
        BIN,
        &cfg,
        &[
            ("KOALA_TRAINERD_PAUSE_AT", point),
            ("KOALA_TRAINERD_PAUSE_DIR", &pause_dir),
        ],
        &log,
    );
    let spec = tiny_spec(&name);
    // At `submitted` the answer never comes: submit in the background.
    let addr = d.addr.clone();
    let submit = {
        let spec = spec.clone();
        tokio::spawn(async move { connect(&addr).await.submit_job(spec).await })
    };
    wait_file(&marker, 60, &log);
    d.kill9();
    let _ = tokio::time::timeout(Duration::from_secs(10), submit).await;
    if point.starts_with("checkpoint-write-") {
        // Killed mid-write: the half-built checkpoint directory is left behind.
        let step: u64 = point.rsplit('-').next().unwrap().parse().unwrap();
        let tmp = s
            .root
            .join(format!("runs/{name}/checkpoints/.step-{step:08}.tmp"));
        assert!(
            tmp.join("model.safetensors").exists(),
            "{} should hold a partial write",
            tmp.display()
        );
        assert!(!tmp.join("state.json").exists());
    }
    let d = spawn_daemon(BIN, &cfg, &[], &log);
    let mut c = connect(&d.addr).await;
    // The accepted job survived the crash; resubmitting with its key returns it.
    let again = c.submit_job(spec).await.unwrap().into_inner();
    assert_eq!(again.id, 1, "{point}");
    let done = wait_state(&mut c, 1, JobState::Succeeded, 120).await;
    let m = c
        .get_metrics(GetMetricsRequest { id: 1 })
        .await
        .unwrap()
        .into_inner();
    let steps: Vec<u64> = m.points.iter().map(|p| p.step).collect();
    assert_eq!(steps, (1..=10).collect::<Vec<_>>(), "{point}");
    let job = c
        .get_job(GetJobRequest { id: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.step, 10);
    drop(d);
    (
        final_weights(&s.root, &name),
        m.points.iter().map(|p| p.loss).collect(),
        done.attempts,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_six_points_then_resume_bit_identically() {
    let s = setup();
    // The uninterrupted reference run, through the daemon too.
    let state = s.base.join("state-ref");
    let cfg = write_config(&s.base, &s.root, &state, TOKEN);
    let d = spawn_daemon(BIN, &cfg, &[], &s.base.join("ref.log"));
    let mut c = connect(&d.addr).await;
    let job = c
        .submit_job(tiny_spec("reference"))
        .await
        .unwrap()
        .into_inner();
    wait_state(&mut c, job.id, JobState::Succeeded, 120).await;
    let ref_losses: Vec<f32> = c
        .get_metrics(GetMetricsRequest { id: job.id })
        .await
        .unwrap()
        .into_inner()
        .points
        .iter()
        .map(|p| p.loss)
        .collect();
    drop(d);
    let reference = final_weights(&s.root, "reference");

    // (point, attempts expected: a job killed before it started runs once).
    let points = [
        ("submitted", 1),
        ("running", 2),
        ("step-3", 2),
        ("checkpoint-write-4", 2),
        ("checkpoint-6", 2),
        ("finished", 2),
    ];
    for (point, attempts) in points {
        let (weights, losses, got_attempts) = crash_and_resume(&s, point).await;
        assert!(
            weights == reference,
            "{point}: final weights differ from the uninterrupted run"
        );
        let same: Vec<bool> = losses
            .iter()
            .zip(&ref_losses)
            .map(|(a, b)| a.to_bits() == b.to_bits())
            .collect();
        assert!(
            same.iter().all(|x| *x),
            "{point}: losses {losses:?} vs {ref_losses:?}"
        );
        assert_eq!(got_attempts, attempts, "{point}");
    }
}
