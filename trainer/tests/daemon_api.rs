//! The daemon's API in-process, with a scripted runner (no real training): job lifecycle,
//! scheduling, cancel, idempotency, auth, TLS and every validation rule. The real trainer runs in
//! `daemon_e2e.rs`.
mod daemon_common;

use std::sync::Arc;
use std::time::Duration;

use daemon_common::*;
use koala_proto::v1::{
    CancelJobRequest, GetJobRequest, GetMetricsRequest, Hyperparameters, JobSpec, JobState,
    ListJobsRequest, WatchJobRequest, job_event::Kind, job_spec::BaseModel,
};
use koala_trainer::daemon::client::{self, ClientOptions};
use tonic::Code;

fn runner(step_ms: u64) -> Arc<ScriptedRunner> {
    Arc::new(ScriptedRunner { step_ms })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_runs_to_success_with_events_metrics_and_checkpoints() {
    let fx = Fixture::new();
    let d = TestDaemon::start(fx.config(), runner(5)).await;
    let mut c = d.client(Some(TOKEN)).await;
    let job = c.submit_job(fx.spec("a", 5)).await.unwrap().into_inner();
    assert_eq!(job.state(), JobState::Queued);
    // Watch from the start: history then live events, ending with SUCCEEDED.
    let mut stream = c
        .watch_job(WatchJobRequest {
            id: job.id,
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    let mut steps = Vec::new();
    let mut checkpoints = Vec::new();
    let mut states = Vec::new();
    while let Some(ev) = stream.message().await.unwrap() {
        seqs.push(ev.seq);
        match ev.kind.unwrap() {
            Kind::Progress(p) => steps.push(p.step),
            Kind::Checkpoint(cp) => checkpoints.push(cp.step),
            Kind::StateChanged(s) => states.push(s.state()),
            Kind::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "gapless");
    assert_eq!(steps, vec![1, 2, 3, 4, 5]);
    assert_eq!(checkpoints, vec![2, 4]);
    assert_eq!(states.first(), Some(&JobState::Queued));
    assert_eq!(states.last(), Some(&JobState::Succeeded));
    let done = c
        .get_job(GetJobRequest { id: job.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (done.state(), done.step, done.total_steps, done.attempts),
        (JobState::Succeeded, 5, 5, 1)
    );
    assert!(
        done.last_checkpoint.ends_with("ckpt-4"),
        "{}",
        done.last_checkpoint
    );
    assert!(done.finished_at_ms >= done.started_at_ms && done.started_at_ms >= done.created_at_ms);
    let m = c
        .get_metrics(GetMetricsRequest { id: job.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        m.points.iter().map(|p| p.step).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(m.points[1].loss, 5.0);
    // The validation loss the run reported (on even steps) is kept per step, and only there.
    assert_eq!(
        m.points.iter().map(|p| p.val_loss).collect::<Vec<_>>(),
        vec![None, Some(10.0), None, Some(5.0), None]
    );
    // Watching a finished job replays its history and ends; after_seq skips.
    let mut s2 = c
        .watch_job(WatchJobRequest {
            id: job.id,
            after_seq: seqs.len() as u64 - 1,
        })
        .await
        .unwrap()
        .into_inner();
    let last = s2.message().await.unwrap().unwrap();
    assert_eq!(last.seq, seqs.len() as u64);
    assert!(s2.message().await.unwrap().is_none());
    // Nothing after the end: the stream of a finished job closes at once.
    let mut s3 = c
        .watch_job(WatchJobRequest {
            id: job.id,
            after_seq: seqs.len() as u64,
        })
        .await
        .unwrap()
        .into_inner();
    let end = tokio::time::timeout(Duration::from_secs(5), s3.message()).await;
    assert!(matches!(end, Ok(Ok(None))), "{end:?}");
    // Unknown ids.
    let e = c.get_job(GetJobRequest { id: 999 }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .watch_job(WatchJobRequest {
            id: 999,
            after_seq: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_per_device_set_cancel_failures_and_paging() {
    let fx = Fixture::new();
    let d = TestDaemon::start(fx.config(), runner(20)).await;
    let mut c = d.client(Some(TOKEN)).await;
    let a = c.submit_job(fx.spec("a", 4)).await.unwrap().into_inner();
    let b = c.submit_job(fx.spec("b", 2)).await.unwrap().into_inner();
    let mut on_gpu = fx.spec("g", 2);
    on_gpu.devices = "cuda:0".into();
    let g = c.submit_job(on_gpu).await.unwrap().into_inner();
    let queued = c.submit_job(fx.spec("q", 2)).await.unwrap().into_inner();
    // The cuda:0 job does not wait for the cpu queue.
    let g_done = wait_state(&mut c, g.id, JobState::Succeeded, 20).await;
    let a_now = c
        .get_job(GetJobRequest { id: a.id })
        .await
        .unwrap()
        .into_inner();
    assert!(g_done.finished_at_ms > 0 && a_now.started_at_ms > 0);
    // Cancel the still-queued fourth job: immediate.
    let q = c
        .cancel_job(CancelJobRequest { id: queued.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(q.state(), JobState::Cancelled);
    let a_done = wait_state(&mut c, a.id, JobState::Succeeded, 20).await;
    let b_done = wait_state(&mut c, b.id, JobState::Succeeded, 20).await;
    assert!(
        b_done.started_at_ms >= a_done.finished_at_ms,
        "cpu jobs run one at a time, in order"
    );
    let q = c
        .get_job(GetJobRequest { id: queued.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (q.state(), q.attempts),
        (JobState::Cancelled, 0),
        "a cancelled job never starts"
    );

    // Cancel a running job: it stops at a step boundary.
    let long = c
        .submit_job(fx.spec("long", 1000))
        .await
        .unwrap()
        .into_inner();
    let running = wait_state(&mut c, long.id, JobState::Running, 20).await;
    assert_eq!(running.attempts, 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = c
        .cancel_job(CancelJobRequest { id: long.id })
        .await
        .unwrap()
        .into_inner();
    assert!(r.cancel_requested);
    let cancelled = wait_state(&mut c, long.id, JobState::Cancelled, 20).await;
    assert!(cancelled.step < 1000);

    // A runner error and a runner panic both give FAILED with the reason.
    let mut fail = fx.spec("f", 5);
    fail.name = "fail".into();
    let f = c.submit_job(fail).await.unwrap().into_inner();
    let f = wait_state(&mut c, f.id, JobState::Failed, 20).await;
    assert!(f.error.contains("scripted failure"), "{}", f.error);
    let mut p = fx.spec("p", 5);
    p.name = "panic".into();
    let p = c.submit_job(p).await.unwrap().into_inner();
    let p = wait_state(&mut c, p.id, JobState::Failed, 20).await;
    assert!(
        p.error.contains("panicked") && p.error.contains("scripted panic"),
        "{}",
        p.error
    );

    // Paging (newest first) and the state filter.
    let all: Vec<u64> = (1..=p.id).rev().collect();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_jobs(ListJobsRequest {
                states: vec![],
                page_size: 3,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.jobs.len() <= 3);
        seen.extend(page.jobs.iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, all);
    let failed = c
        .list_jobs(ListJobsRequest {
            states: vec![JobState::Failed as i32, JobState::Cancelled as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<u64> = failed.jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids, vec![p.id, f.id, long.id, queued.id]);
    for bad in [
        ListJobsRequest {
            states: vec![0],
            ..Default::default()
        },
        ListJobsRequest {
            states: vec![42],
            ..Default::default()
        },
        ListJobsRequest {
            page_size: 5000,
            ..Default::default()
        },
        ListJobsRequest {
            page_token: "abc".into(),
            ..Default::default()
        },
    ] {
        assert_eq!(
            c.list_jobs(bad).await.unwrap_err().code(),
            Code::InvalidArgument
        );
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_queue_limit_and_busy_out_dir() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    cfg.max_queued_jobs = 2;
    let d = TestDaemon::start(cfg, runner(50)).await;
    let mut c = d.client(Some(TOKEN)).await;
    let mut spec = fx.spec("idem", 100);
    spec.idempotency_key = "run-2026-11-24".into();
    let first = c.submit_job(spec.clone()).await.unwrap().into_inner();
    wait_state(&mut c, first.id, JobState::Running, 20).await;
    // Resubmitting the same spec returns the same job, even though its out_dir is now in use.
    let again = c.submit_job(spec.clone()).await.unwrap().into_inner();
    assert_eq!(again.id, first.id);
    let mut other = spec.clone();
    other.seed = 2;
    let e = c.submit_job(other).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().contains("idempotency_key"), "{}", e.message());
    // A second job may not write where a live job writes (its out_dir is still empty here).
    let mut clash = fx.spec("busy", 2);
    std::fs::create_dir_all(fx.root.join("runs/busy")).unwrap();
    let busy_first = c.submit_job(clash.clone()).await.unwrap().into_inner();
    clash.name = "other".into();
    let e = c.submit_job(clash).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("out_dir") && e.message().contains(&format!("job {}", busy_first.id))
    );
    // Queue limit: one queued so far (busy), one more fits, then RESOURCE_EXHAUSTED.
    c.submit_job(fx.spec("q2", 2)).await.unwrap();
    let e = c.submit_job(fx.spec("q3", 2)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    c.cancel_job(CancelJobRequest { id: first.id })
        .await
        .unwrap();
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_needs_the_token_but_health_does_not() {
    let fx = Fixture::new();
    let d = TestDaemon::start(fx.config(), runner(1)).await;
    for token in [None, Some("wrong-token"), Some("")] {
        let mut c = d.client(token).await;
        let codes = [
            c.submit_job(fx.spec("x", 1))
                .await
                .map(|_| ())
                .unwrap_err()
                .code(),
            c.get_job(GetJobRequest { id: 1 })
                .await
                .map(|_| ())
                .unwrap_err()
                .code(),
            c.list_jobs(ListJobsRequest::default())
                .await
                .map(|_| ())
                .unwrap_err()
                .code(),
            c.cancel_job(CancelJobRequest { id: 1 })
                .await
                .map(|_| ())
                .unwrap_err()
                .code(),
            c.watch_job(WatchJobRequest {
                id: 1,
                after_seq: 0,
            })
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
            c.get_metrics(GetMetricsRequest { id: 1 })
                .await
                .map(|_| ())
                .unwrap_err()
                .code(),
        ];
        assert!(
            codes.iter().all(|c| *c == Code::Unauthenticated),
            "{token:?}: {codes:?}"
        );
    }
    // Nothing was submitted by the refused calls.
    let mut ok = d.client(Some(TOKEN)).await;
    assert!(
        ok.list_jobs(ListJobsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .jobs
            .is_empty()
    );
    // Health answers without a token.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", d.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "koala.trainer.v1.TrainerService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    d.stop().await;
}

/// Lists services over gRPC reflection (v1), as grpcurl does.
async fn reflect_services(addr: &str, token: Option<&str>) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let auth = koala_trainer::daemon::auth::BearerToken::new(token).unwrap();
    let mut c = ServerReflectionClient::with_interceptor(channel, auth);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = c
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await?
        .into_inner();
    let resp = stream.message().await?.expect("one response");
    match resp.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            Ok(l.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services_with_the_token() {
    let fx = Fixture::new();
    let d = TestDaemon::start(fx.config(), runner(1)).await;
    let services = reflect_services(&d.addr, Some(TOKEN)).await.unwrap();
    assert!(
        services.contains(&"koala.trainer.v1.TrainerService".to_string()),
        "{services:?}"
    );
    assert!(
        services.contains(&"grpc.health.v1.Health".to_string()),
        "{services:?}"
    );
    let e = reflect_services(&d.addr, None).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused() {
    let fx = Fixture::new();
    let d = TestDaemon::start(fx.config(), runner(1)).await;
    let mut c = d.client(Some(TOKEN)).await;
    let mut spec = fx.spec("big", 1);
    spec.name = "x".repeat(100 * 1024); // above max_message_bytes (64 KiB)
    let e = c.submit_job(spec).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    // GetJob and ListJobs have their own routes (pre-encoded replies): the same limit holds.
    let e = c
        .list_jobs(ListJobsRequest {
            page_token: "1".repeat(100 * 1024),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(
        c.list_jobs(ListJobsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .jobs
            .is_empty()
    );
    d.stop().await;
}

/// Submits `spec` and expects INVALID_ARGUMENT naming `field`.
async fn refused(c: &mut client::Client, spec: JobSpec, field: &str) {
    let e = c.submit_job(spec).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
    assert!(
        e.message().starts_with(&format!("{field}:")),
        "expected the message to name {field}: {}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_names_the_field() {
    let fx = Fixture::new();
    let d = TestDaemon::start(fx.config(), runner(1)).await;
    let mut c = d.client(Some(TOKEN)).await;
    let root = &fx.root;
    let outside = fx.dir.path().join("outside");
    std::fs::create_dir_all(outside.join("shards")).unwrap();
    std::fs::copy(
        root.join("shards/demo/manifest.json"),
        outside.join("shards/manifest.json"),
    )
    .unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    let ok = || fx.spec("v", 1);
    let with = |f: &dyn Fn(&mut JobSpec)| {
        let mut s = ok();
        f(&mut s);
        s
    };

    // LoRA: known target modules, and a base with weights (not init_config).
    refused(
        &mut c,
        with(&|s| {
            s.lora = Some(koala_proto::v1::LoraSpec {
                target_modules: vec!["lm_head".into()],
                ..Default::default()
            })
        }),
        "lora",
    )
    .await;
    refused(&mut c, with(&|s| s.lora = Some(Default::default())), "lora").await;

    // Paths: required, no `..`, inside the root (absolute or through a symlink), existing.
    refused(&mut c, with(&|s| s.base_model = None), "base_model").await;
    refused(
        &mut c,
        with(&|s| s.shards_dir = String::new()),
        "shards_dir",
    )
    .await;
    refused(
        &mut c,
        with(&|s| s.shards_dir = "shards/../shards/demo".into()),
        "shards_dir",
    )
    .await;
    refused(
        &mut c,
        with(&|s| s.out_dir = "runs/../../x".into()),
        "out_dir",
    )
    .await;
    refused(
        &mut c,
        with(&|s| s.shards_dir = path_str(&outside.join("shards"))),
        "shards_dir",
    )
    .await;
    refused(
        &mut c,
        with(&|s| s.shards_dir = "escape/shards".into()),
        "shards_dir",
    )
    .await;
    refused(
        &mut c,
        with(&|s| s.out_dir = "escape/run".into()),
        "out_dir",
    )
    .await;
    refused(
        &mut c,
        with(&|s| s.out_dir = "/tmp/koala-run".into()),
        "out_dir",
    )
    .await;
    refused(&mut c, with(&|s| s.out_dir = ".".into()), "out_dir").await;
    refused(
        &mut c,
        with(&|s| s.shards_dir = "shards/none".into()),
        "shards_dir",
    )
    .await;
    refused(
        &mut c,
        with(&|s| s.base_model = Some(BaseModel::InitConfig("escape/shards/manifest.json".into()))),
        "init_config",
    )
    .await;
    refused(
        &mut c,
        with(&|s| s.base_model = Some(BaseModel::ModelDir("models/none".into()))),
        "model_dir",
    )
    .await;
    std::fs::create_dir_all(root.join("models/empty")).unwrap();
    refused(
        &mut c,
        with(&|s| s.base_model = Some(BaseModel::ModelDir("models/empty".into()))),
        "model_dir",
    )
    .await;
    // out_dir must be new or empty.
    std::fs::create_dir_all(root.join("runs/used")).unwrap();
    std::fs::write(root.join("runs/used/old.txt"), "x").unwrap();
    refused(&mut c, with(&|s| s.out_dir = "runs/used".into()), "out_dir").await;
    // Shards: a manifest is needed, its shards must exist, its vocab must fit the model.
    std::fs::create_dir_all(root.join("shards/nomanifest")).unwrap();
    refused(
        &mut c,
        with(&|s| s.shards_dir = "shards/nomanifest".into()),
        "shards_dir",
    )
    .await;
    std::fs::create_dir_all(root.join("shards/missing")).unwrap();
    std::fs::write(
        root.join("shards/missing/manifest.json"),
        r#"{"vocab_size": 64, "shards": ["gone.arrow"]}"#,
    )
    .unwrap();
    refused(
        &mut c,
        with(&|s| s.shards_dir = "shards/missing".into()),
        "shards_dir",
    )
    .await;
    // The layout `koala tokenize` writes: splits.<name>.files[].path.
    std::fs::create_dir_all(root.join("shards/splits")).unwrap();
    std::fs::write(
        root.join("shards/splits/manifest.json"),
        r#"{"vocab_size": 64, "splits": {"train": {"files": [{"path": "train-00000.arrow", "rows": 4}]}}}"#,
    )
    .unwrap();
    refused(
        &mut c,
        with(&|s| s.shards_dir = "shards/splits".into()),
        "shards_dir",
    )
    .await;
    std::fs::create_dir_all(root.join("shards/bigvocab")).unwrap();
    std::fs::write(
        root.join("shards/bigvocab/manifest.json"),
        r#"{"vocab_size": 32000}"#,
    )
    .unwrap();
    refused(
        &mut c,
        with(&|s| s.shards_dir = "shards/bigvocab".into()),
        "shards_dir",
    )
    .await;
    // Tokenizer hash: shards made with another tokenizer than the model's.
    std::fs::create_dir_all(root.join("models/hf")).unwrap();
    std::fs::write(root.join("models/hf/config.json"), r#"{"vocab_size": 64}"#).unwrap();
    std::fs::write(root.join("models/hf/tokenizer.json"), r#"{"model": {}}"#).unwrap();
    std::fs::create_dir_all(root.join("shards/othertok")).unwrap();
    std::fs::write(
        root.join("shards/othertok/manifest.json"),
        format!(
            r#"{{"vocab_size": 64, "tokenizer_hash": "{}"}}"#,
            "ab".repeat(32)
        ),
    )
    .unwrap();
    refused(
        &mut c,
        with(&|s| {
            s.base_model = Some(BaseModel::ModelDir("models/hf".into()));
            s.shards_dir = "shards/othertok".into();
        }),
        "shards_dir",
    )
    .await;
    // Strings are size-limited.
    refused(&mut c, with(&|s| s.name = "n".repeat(257)), "name").await;
    refused(
        &mut c,
        with(&|s| s.idempotency_key = "k".repeat(129)),
        "idempotency_key",
    )
    .await;
    refused(
        &mut c,
        with(&|s| s.idempotency_key = "a b".into()),
        "idempotency_key",
    )
    .await;
    refused(&mut c, with(&|s| s.preset = "../etc".into()), "preset").await;
    refused(&mut c, with(&|s| s.preset = "p".repeat(65)), "preset").await;
    refused(
        &mut c,
        with(&|s| s.out_dir = format!("runs/{}", "d".repeat(5000))),
        "out_dir",
    )
    .await;
    // Numbers in range.
    refused(&mut c, with(&|s| s.devices = "gpu0".into()), "devices").await;
    refused(&mut c, with(&|s| s.devices = "cuda:4..2".into()), "devices").await;
    refused(
        &mut c,
        with(&|s| s.checkpoint_every = 2_000_000_000),
        "checkpoint_every",
    )
    .await;
    refused(&mut c, with(&|s| s.max_steps = u64::MAX), "max_steps").await;
    let h = Hyperparameters::default;
    let bad_hyper: Vec<(Hyperparameters, &str)> = vec![
        (
            Hyperparameters {
                lr: Some(0.0),
                ..h()
            },
            "lr",
        ),
        (
            Hyperparameters {
                lr: Some(f64::NAN),
                ..h()
            },
            "lr",
        ),
        (
            Hyperparameters {
                batch_size: Some(0),
                ..h()
            },
            "batch_size",
        ),
        (
            Hyperparameters {
                micro_batch_size: Some(100_000),
                ..h()
            },
            "micro_batch_size",
        ),
        (
            Hyperparameters {
                batch_size: Some(8),
                micro_batch_size: Some(3),
                ..h()
            },
            "batch_size",
        ),
        (
            Hyperparameters {
                max_len: Some(1),
                ..h()
            },
            "max_len",
        ),
        (
            Hyperparameters {
                epochs: Some(0),
                ..h()
            },
            "epochs",
        ),
        (
            Hyperparameters {
                warmup_ratio: Some(1.5),
                ..h()
            },
            "warmup_ratio",
        ),
        (
            Hyperparameters {
                weight_decay: Some(f64::INFINITY),
                ..h()
            },
            "weight_decay",
        ),
        (
            Hyperparameters {
                grad_clip: Some(-1.0),
                ..h()
            },
            "grad_clip",
        ),
        (
            Hyperparameters {
                beta2: Some(1.0),
                ..h()
            },
            "beta2",
        ),
        (
            Hyperparameters {
                eps: Some(0.0),
                ..h()
            },
            "eps",
        ),
        (
            Hyperparameters {
                min_lr_ratio: Some(2.0),
                ..h()
            },
            "min_lr_ratio",
        ),
        (
            Hyperparameters {
                schedule: Some("exp".into()),
                ..h()
            },
            "schedule",
        ),
        (
            Hyperparameters {
                loss: Some("sum".into()),
                ..h()
            },
            "loss",
        ),
    ];
    for (hyper, field) in bad_hyper {
        let mut s = ok();
        s.hyperparameters = Some(hyper);
        refused(&mut c, s, &format!("hyperparameters.{field}")).await;
    }
    refused(&mut c, with(&|s| s.preset = "gpt-5".into()), "preset").await;
    // None of the refused specs became a job; a valid one (absolute path inside the root) does.
    assert!(
        c.list_jobs(ListJobsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .jobs
            .is_empty()
    );
    let good = with(&|s| s.shards_dir = path_str(&root.join("shards/demo")));
    let job = c.submit_job(good).await.unwrap().into_inner();
    wait_state(&mut c, job.id, JobState::Succeeded, 20).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_configured_certificate() {
    let fx = Fixture::new();
    let dir = fx.dir.path();
    let (cert, key, ca) = (
        dir.join("server.pem"),
        dir.join("server.key"),
        dir.join("ca.pem"),
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    // A test CA, and a server certificate it signs.
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=koala-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    ];
    for args in steps {
        match std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
        {
            Ok(o) if o.status.success() => {}
            other => {
                eprintln!("skipped: openssl could not make a test certificate: {other:?}");
                return;
            }
        }
    }
    let mut cfg = fx.config();
    cfg.tls = Some(koala_trainer::daemon::config::TlsConfig { cert, key });
    let d = TestDaemon::start(cfg, runner(1)).await;
    let mut c = client::connect(&ClientOptions {
        addr: d.addr.clone(),
        token: Some(TOKEN.into()),
        ca_cert: Some(ca),
        tls_domain: Some("localhost".into()),
    })
    .await
    .unwrap();
    let job = c.submit_job(fx.spec("tls", 2)).await.unwrap().into_inner();
    wait_state(&mut c, job.id, JobState::Succeeded, 20).await;
    // A plaintext client gets no answer from the TLS port.
    let plain = client::connect(&ClientOptions {
        addr: d.addr.clone(),
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await;
    if let Ok(mut plain) = plain {
        assert!(plain.get_job(GetJobRequest { id: job.id }).await.is_err());
    }
    d.stop().await;
}
