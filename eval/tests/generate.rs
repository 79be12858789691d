//! `eval generate` against stand-in servers and files: retries with Retry-After, resume, `file:`.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use koala_eval::client::ClientConfig;
use koala_eval::generate::{GenerateConfig, generate};
use koala_eval::rows::read_jsonl;
use koala_eval::systems::{System, SystemOptions, open_system, parse_spec, parse_system};
use koala_eval::{Error, ResponseRow};
use koala_testsets::TestPrompt;
use serde_json::{Value, json};

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    /// Answer 429 (Retry-After: 1) to this many first requests.
    throttle: AtomicU64,
}

async fn chat(State(c): State<Arc<Counters>>, Json(body): Json<Value>) -> Response {
    c.requests.fetch_add(1, Ordering::SeqCst);
    if c.throttle
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "1".parse().unwrap());
        return (StatusCode::TOO_MANY_REQUESTS, h, "slow down").into_response();
    }
    let prompt = body["messages"][0]["content"].as_str().unwrap_or("");
    Json(json!({
        "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("echo: {prompt}")},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    }))
    .into_response()
}

async fn server(c: Arc<Counters>) -> SocketAddr {
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(c);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

fn prompts(n: usize) -> Vec<TestPrompt> {
    (0..n)
        .map(|i| TestPrompt {
            id: format!("p{i}"),
            prompt: format!("question {i}"),
            file: "t".into(),
            record: i as u64 + 1,
        })
        .collect()
}

fn opts() -> SystemOptions {
    SystemOptions {
        client: ClientConfig {
            retries: 3,
            retry_initial: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
        },
        ..Default::default()
    }
}

fn open(arg: &str) -> (String, Arc<dyn System>) {
    let (name, spec) = parse_system(arg).unwrap();
    let s = open_system(&name, &spec, &opts()).unwrap();
    (name, s)
}

#[tokio::test]
async fn retries_after_429_honouring_retry_after() {
    let c = Arc::new(Counters::default());
    c.throttle.store(1, Ordering::SeqCst);
    let addr = server(c.clone()).await;
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("r.jsonl");
    let sys = vec![open(&format!("m=openai:http://{addr}/v1#stand-in"))];
    let t0 = Instant::now();
    let s = generate(
        "t",
        &prompts(1),
        &sys,
        &GenerateConfig {
            out: out.clone(),
            concurrency: 1,
            progress: false,
        },
    )
    .await
    .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 not honoured"
    );
    assert_eq!((s.written, s.failed), (1, 0));
    assert_eq!(c.requests.load(Ordering::SeqCst), 2);
    let rows: Vec<ResponseRow> = read_jsonl(&out).unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        (r.prompt_id.as_str(), r.set.as_str(), r.system.as_str()),
        ("p0", "t", "m")
    );
    assert_eq!(r.response, "echo: question 0");
    assert_eq!(r.finish_reason, "stop");
    assert_eq!(r.usage.unwrap().total_tokens, 7);
}

#[tokio::test]
async fn gives_up_after_the_retries_and_counts_the_failure() {
    let c = Arc::new(Counters::default());
    c.throttle.store(100, Ordering::SeqCst);
    let addr = server(c.clone()).await;
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("r.jsonl");
    let (name, spec) = parse_system(&format!("m=openai:http://{addr}/v1#x")).unwrap();
    let mut o = opts();
    o.client.retries = 1;
    let sys = vec![(name.clone(), open_system(&name, &spec, &o).unwrap())];
    // Retry-After: 1 is honoured once, then it gives up.
    let s = generate(
        "t",
        &prompts(1),
        &sys,
        &GenerateConfig {
            out,
            concurrency: 1,
            progress: false,
        },
    )
    .await
    .unwrap();
    assert_eq!((s.written, s.failed), (0, 1));
    assert_eq!(c.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn resumes_without_duplicates() {
    let c = Arc::new(Counters::default());
    let addr = server(c.clone()).await;
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("r.jsonl");
    let sys = vec![
        open(&format!("a=openai:http://{addr}/v1#x")),
        open(&format!("b=openai:http://{addr}/v1#y")),
    ];
    let cfg = GenerateConfig {
        out: out.clone(),
        concurrency: 3,
        progress: false,
    };
    let ps = prompts(5);
    // A first run answers 2 prompts, then "is killed" mid-write of a third row.
    generate("t", &ps[..2], &sys, &cfg).await.unwrap();
    assert_eq!(c.requests.load(Ordering::SeqCst), 4);
    let mut text = std::fs::read_to_string(&out).unwrap();
    text.push_str(r#"{"prompt_id":"p2","set":"t","prompt":"question 2","sys"#);
    std::fs::write(&out, text).unwrap();
    let s = generate("t", &ps, &sys, &cfg).await.unwrap();
    assert_eq!((s.resumed, s.written, s.failed), (4, 6, 0));
    assert_eq!(c.requests.load(Ordering::SeqCst), 10);
    let rows: Vec<ResponseRow> = read_jsonl(&out).unwrap();
    let mut keys: Vec<_> = rows
        .iter()
        .map(|r| (r.system.clone(), r.prompt_id.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!((rows.len(), keys.len()), (10, 10));
    // A third run has nothing to do.
    let s = generate("t", &ps, &sys, &cfg).await.unwrap();
    assert_eq!((s.resumed, s.written), (10, 0));
    assert_eq!(c.requests.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn file_systems_read_answers_by_prompt_id() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("answers.jsonl");
    std::fs::write(
        &src,
        "{\"prompt_id\":\"p0\",\"response\":\"zero\"}\n\n{\"prompt_id\":\"p1\",\"response\":\"one\",\"finish_reason\":\"length\",\"extra\":1}\n",
    )
    .unwrap();
    let out = d.path().join("r.jsonl");
    let sys = vec![open(&format!("f=file:{}", src.display()))];
    let s = generate(
        "koala",
        &prompts(3),
        &sys,
        &GenerateConfig {
            out: out.clone(),
            concurrency: 2,
            progress: false,
        },
    )
    .await
    .unwrap();
    // p2 is not in the file: a failure, not a crash.
    assert_eq!((s.written, s.failed), (2, 1));
    let mut rows: Vec<ResponseRow> = read_jsonl(&out).unwrap();
    rows.sort_by(|a, b| a.prompt_id.cmp(&b.prompt_id));
    assert_eq!(rows[0].response, "zero");
    assert_eq!(rows[0].finish_reason, "stop");
    assert_eq!(rows[1].finish_reason, "length");
    assert_eq!(rows[1].prompt, "question 1");
    assert_eq!(rows[1].usage, None);
}

#[test]
fn bad_specs_are_named() {
    for arg in [
        "noequals",
        "=file:x",
        "m=file:/no/such/file",
        "m=/no/such/dir",
        "m=openai:nourl",
    ] {
        let e = match arg.split_once('=') {
            Some((n, s)) if !n.is_empty() => parse_spec(s).unwrap_err(),
            _ => parse_system(arg).unwrap_err(),
        };
        assert!(matches!(e, Error::Invalid(_)), "{e:?}");
        let spec = arg.split_once('=').map_or(arg, |(_, s)| s);
        assert!(
            e.to_string().contains(&format!("{spec:?}"))
                || e.to_string().contains(&format!("{arg:?}")),
            "{e}"
        );
    }
}

#[tokio::test]
async fn checkpoint_systems_run_on_our_engine_greedily() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../model/tests/fixtures/tiny_hf");
    let (name, spec) = parse_system(&format!("tiny={}", dir.display())).unwrap();
    let mut o = opts();
    o.max_tokens = Some(8);
    let sys = vec![(name.clone(), open_system(&name, &spec, &o).unwrap())];
    let d = tempfile::tempdir().unwrap();
    let run = |out: std::path::PathBuf| {
        let sys = sys.clone();
        async move {
            generate(
                "t",
                &prompts(2),
                &sys,
                &GenerateConfig {
                    out: out.clone(),
                    concurrency: 2,
                    progress: false,
                },
            )
            .await
            .unwrap();
            let mut rows: Vec<ResponseRow> = read_jsonl(&out).unwrap();
            rows.sort_by(|a, b| a.prompt_id.cmp(&b.prompt_id));
            rows
        }
    };
    let a = run(d.path().join("a.jsonl")).await;
    let b = run(d.path().join("b.jsonl")).await;
    assert_eq!(a.len(), 2);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.response, y.response, "greedy answers differ between runs");
        let u = x.usage.unwrap();
        assert!(u.prompt_tokens > 0 && u.completion_tokens <= 8, "{u:?}");
        assert!(["stop", "length"].contains(&x.finish_reason.as_str()));
    }
}
