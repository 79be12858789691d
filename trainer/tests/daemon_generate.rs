//! `Generate` on the daemon, in-process: a tiny job trained by the real trainer is sampled over
//! gRPC, and the streamed tokens are exactly what koala-model's engine gives on the job's
//! checkpoint directly (same engine, same request: greedy and seeded sampling). Also the text
//! path (a model directory with a tokenizer, stop strings) and the refusals: token, unknown job,
//! bad parameters, a job without a checkpoint, model directories when not allowed.
mod daemon_common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use daemon_common::process::tiny_training_data;
use daemon_common::*;
use koala_model::text::{TextStream, Tokenizer};
use koala_model::{Engine, EngineConfig, Request, SampleParams, Weights};
use koala_proto::v1::generate_request::Model;
use koala_proto::v1::{GenerateRequest, GenerateResponse, JobSpec, JobState, job_spec::BaseModel};
use koala_trainer::daemon::DaemonConfig;
use koala_trainer::daemon::client::{self, Client};
use koala_trainer::daemon::train_runner::TrainRunner;
use tonic::Code;

/// All messages of one Generate call.
async fn generate(
    c: &mut Client,
    req: GenerateRequest,
) -> Result<Vec<GenerateResponse>, tonic::Status> {
    let mut stream = c.generate(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.push(m);
    }
    Ok(out)
}

fn refused_code(r: Result<Vec<GenerateResponse>, tonic::Status>) -> tonic::Status {
    match r {
        Ok(m) => panic!("expected a refusal, got {m:?}"),
        Err(e) => e,
    }
}

/// Checks the shape of a finished stream and returns its token ids and text.
fn tokens_and_text(msgs: &[GenerateResponse], checkpoint: &Path) -> (Vec<u32>, String) {
    let (last, body) = msgs.split_last().expect("at least the last message");
    assert!(!last.finish_reason.is_empty(), "{last:?}");
    assert_eq!(
        msgs[0].checkpoint,
        checkpoint.to_string_lossy(),
        "the first message names the checkpoint"
    );
    for m in body {
        assert!(m.finish_reason.is_empty(), "{m:?}");
        assert_eq!(m.token_ids.len(), 1, "one token per message: {m:?}");
    }
    for m in &msgs[1..] {
        assert!(m.checkpoint.is_empty(), "{m:?}");
    }
    (
        msgs.iter()
            .flat_map(|m| m.token_ids.iter().copied())
            .collect(),
        msgs.iter().map(|m| m.text.as_str()).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_problem() {
    let fx = Fixture::new();
    let d = TestDaemon::start(fx.config(), Arc::new(ScriptedRunner { step_ms: 1 })).await;
    let req = |id: u64| GenerateRequest {
        model: Some(Model::JobId(id)),
        prompt_ids: vec![1, 2, 3],
        max_tokens: 4,
        ..Default::default()
    };
    for token in [None, Some("wrong-token")] {
        let mut c = d.client(token).await;
        let e = refused_code(generate(&mut c, req(1)).await);
        assert_eq!(e.code(), Code::Unauthenticated, "{token:?}: {e:?}");
    }
    let mut c = d.client(Some(TOKEN)).await;
    let e = refused_code(generate(&mut c, req(99)).await);
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("99"), "{e:?}");
    let e = refused_code(
        generate(
            &mut c,
            GenerateRequest {
                temperature: Some(-1.0),
                ..req(99)
            },
        )
        .await,
    );
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("temperature:"), "{e:?}");
    let e = refused_code(
        generate(
            &mut c,
            GenerateRequest {
                top_p: Some(0.0),
                ..req(99)
            },
        )
        .await,
    );
    assert!(e.message().starts_with("top_p:"), "{e:?}");
    let e = refused_code(
        generate(
            &mut c,
            GenerateRequest {
                model: None,
                ..req(1)
            },
        )
        .await,
    );
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // The scripted runner writes no real checkpoints: a finished job without one.
    let job = c.submit_job(fx.spec("a", 2)).await.unwrap().into_inner();
    wait_state(&mut c, job.id, JobState::Succeeded, 30).await;
    let e = refused_code(generate(&mut c, req(job.id)).await);
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("no checkpoint"), "{e:?}");
    // Model directories are off unless the config allows them.
    let e = refused_code(
        generate(
            &mut c,
            GenerateRequest {
                model: Some(Model::ModelDir("models/tiny".into())),
                ..req(1)
            },
        )
        .await,
    );
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // The daemon still answers everything else.
    let listed = c
        .list_jobs(koala_proto::v1::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 1);
    d.stop().await;
}

/// `Engine::generate` (which blocks) off the async runtime.
async fn direct(engine: &Arc<Engine>, req: Request) -> koala_model::engine::Output {
    let e = engine.clone();
    tokio::task::spawn_blocking(move || e.generate(req))
        .await
        .unwrap()
        .unwrap()
}

fn tiny_hf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/tiny_hf")
}

/// The text a tokenizer gives for `ids`, cut before the first of `stops`, as streamed.
fn detokenise(tk: &Tokenizer, ids: &[u32], stops: &[String]) -> String {
    let mut ts = TextStream::new(tk, stops.to_vec());
    let mut text = String::new();
    for &t in ids {
        let d = ts.push(t).unwrap();
        text.push_str(&d.text);
        if d.stopped {
            return text;
        }
    }
    text + &ts.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trained_jobs_checkpoint_samples_as_the_engine_does() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_training_data(&root);
    let hf = root.join("models/hf");
    std::fs::create_dir_all(&hf).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny_hf().join(f), hf.join(f)).unwrap();
    }
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let cfg = DaemonConfig {
        listen: "127.0.0.1:0".into(),
        data_root: root.clone(),
        state_dir: dir.path().join("state"),
        token_file,
        max_queued_jobs: 10,
        max_message_bytes: 1 << 20,
        training_nice: 0,
        training_idle: false,
        generate_device: "cpu".into(),
        generate_allow_dirs: true,
        tls: None,
    };
    let d = TestDaemon::start(cfg, Arc::new(TrainRunner::default())).await;
    let mut c = d.client(Some(TOKEN)).await;
    let spec = JobSpec {
        name: "sampled".into(),
        base_model: Some(BaseModel::InitConfig("models/tiny/config.json".into())),
        shards_dir: "shards/tiny".into(),
        out_dir: "runs/gen".into(),
        preset: "tiny-cpu".into(),
        hyperparameters: Some(koala_proto::v1::Hyperparameters {
            batch_size: Some(4),
            micro_batch_size: Some(2),
            epochs: Some(1),
            lr: Some(3e-3),
            ..Default::default()
        }),
        seed: 11,
        checkpoint_every: 2,
        ..Default::default()
    };
    let job = c.submit_job(spec).await.unwrap().into_inner();
    let done = client::watch(&mut c, job.id, false).await.unwrap();
    assert_eq!(done.state(), JobState::Succeeded, "{done:?}");
    let ckpt = koala_trainer::checkpoint::latest(&root.join("runs/gen/checkpoints"))
        .unwrap()
        .expect("the job's checkpoint")
        .canonicalize()
        .unwrap();
    assert!(ckpt.ends_with("step-00000005"), "{}", ckpt.display());

    // The same engine on the checkpoint directly. The tiny model names no EOS, nor do its
    // shards: no stop tokens on either side.
    let engine = Arc::new(Engine::cpu(
        Arc::new(Weights::load(&ckpt).unwrap()),
        EngineConfig::default(),
    ));
    let prompt = vec![3u32, 5, 7, 9];
    let cases = [
        // Greedy, as `SampleParams::greedy()`.
        (
            Some(0.0),
            Some(0),
            Some(1.0),
            Some(0),
            SampleParams::greedy(),
        ),
        // Seeded sampling: the same seed gives the same draws.
        (
            Some(0.9),
            Some(20),
            Some(0.95),
            Some(7),
            SampleParams {
                temperature: 0.9,
                top_k: 20,
                top_p: 0.95,
                seed: Some(7),
            },
        ),
    ];
    for (temperature, top_k, top_p, seed, params) in cases {
        let want = direct(&engine, Request::new(prompt.clone(), 16, params.clone())).await;
        let msgs = generate(
            &mut c,
            GenerateRequest {
                model: Some(Model::JobId(job.id)),
                prompt_ids: prompt.clone(),
                max_tokens: 16,
                temperature,
                top_k,
                top_p,
                seed,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let (ids, text) = tokens_and_text(&msgs, &ckpt);
        assert_eq!(ids, want.tokens, "{params:?}");
        assert_eq!(text, "", "no tokenizer with this job: ids only");
        let last = msgs.last().unwrap();
        assert_eq!(last.finish_reason, want.finish.as_str());
        assert_eq!(last.finish_reason, "length");
        assert_eq!(last.prompt_tokens as usize, prompt.len());
        assert_eq!(last.completion_tokens as usize, want.tokens.len());
        assert!(last.token_ids.is_empty());
    }
    // Without a tokenizer, text prompts and stop strings are refused.
    let e = refused_code(
        generate(
            &mut c,
            GenerateRequest {
                model: Some(Model::JobId(job.id)),
                prompt: "hello".into(),
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().starts_with("prompt:") && e.message().contains("prompt_ids"),
        "{e:?}"
    );
    let e = refused_code(
        generate(
            &mut c,
            GenerateRequest {
                model: Some(Model::JobId(job.id)),
                prompt_ids: prompt.clone(),
                stop: vec!["x".into()],
                ..Default::default()
            },
        )
        .await,
    );
    assert!(e.message().starts_with("stop:"), "{e:?}");
    // A token outside the vocabulary names the field it came in.
    let e = refused_code(
        generate(
            &mut c,
            GenerateRequest {
                model: Some(Model::JobId(job.id)),
                prompt_ids: vec![1, 64],
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("prompt_ids:"), "{e:?}");

    // The text path: a model directory with its tokenizer (allowed by this config).
    let hf_canon = hf.canonicalize().unwrap();
    let tk = Tokenizer::from_file(hf.join("tokenizer.json")).unwrap();
    let hf_engine = Arc::new(Engine::cpu(
        Arc::new(Weights::load(&hf).unwrap()),
        EngineConfig::default(),
    ));
    let text_prompt = "BEGINNING OF CONVERSATION: USER: Hello! GPT:";
    let ids = tk.encode(text_prompt, true).unwrap().get_ids().to_vec();
    let want = direct(
        &hf_engine,
        Request {
            prompt: ids.clone(),
            max_tokens: 24,
            params: SampleParams::greedy(),
            // The config's eos_token_id.
            stop_tokens: vec![2],
            watermark: None,
        },
    )
    .await;
    let text_req = |stop: Vec<String>| GenerateRequest {
        model: Some(Model::ModelDir("models/hf".into())),
        prompt: text_prompt.into(),
        max_tokens: 24,
        temperature: Some(0.0),
        top_k: Some(0),
        seed: Some(0),
        stop,
        ..Default::default()
    };
    let msgs = generate(&mut c, text_req(Vec::new())).await.unwrap();
    let (got_ids, text) = tokens_and_text(&msgs, &hf_canon);
    assert_eq!(got_ids, want.tokens);
    let full = detokenise(&tk, &want.tokens, &[]);
    assert_eq!(text, full);
    let last = msgs.last().unwrap();
    assert_eq!(last.finish_reason, want.finish.as_str());
    assert_eq!(last.prompt_tokens as usize, ids.len());
    // A stop string from the middle of that completion ends the text before it.
    let chars: Vec<(usize, char)> = full.char_indices().collect();
    if chars.len() >= 4 {
        let (a, _) = chars[chars.len() / 2];
        let b = chars
            .get(chars.len() / 2 + 2)
            .map_or(full.len(), |(i, _)| *i);
        let stop = full[a..b].to_string();
        eprintln!("completion {full:?}, cut at {stop:?}");
        let msgs = generate(&mut c, text_req(vec![stop.clone()]))
            .await
            .unwrap();
        let (got_ids, text) = tokens_and_text(&msgs, &hf_canon);
        assert_eq!(
            text,
            detokenise(&tk, &want.tokens, std::slice::from_ref(&stop))
        );
        assert_eq!(text, full[..full.find(&stop).unwrap()], "{stop:?}");
        let last = msgs.last().unwrap();
        assert_eq!(last.finish_reason, "stop");
        assert_eq!(last.completion_tokens as usize, got_ids.len());
        assert!(got_ids.len() <= want.tokens.len());
        assert_eq!(got_ids[..], want.tokens[..got_ids.len()]);
    } else {
        panic!("the tiny model's completion is too short to cut: {full:?}");
    }
    d.stop().await;
}
