//! The server over HTTP, on the tiny fixture model: response shapes, streaming, stop strings,
//! and every bad-input case with its status and the field it names.
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use koala_model::EngineConfig;
use koala_serve::moderation::{Lists, ModerationMode, Moderator, Policy};
use koala_serve::{AppState, FormatName, Served, ServerConfig};
use serde_json::{Value, json};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/tiny_hf")
}

struct Server {
    base: String,
    state: Arc<AppState>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(cfg: ServerConfig, limits: EngineConfig) -> Server {
    let served = Served::load("tiny", &fixture(), FormatName::Koala, "cpu", limits).unwrap();
    let state = Arc::new(AppState {
        models: vec![Arc::new(served)],
        cfg,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let st = state.clone();
    tokio::spawn(async move {
        koala_serve::serve(listener, st, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Server {
        base,
        state,
        _stop: tx,
    }
}

async fn default_server() -> Server {
    start(ServerConfig::default(), EngineConfig::default()).await
}

async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Reads an SSE response to the end; returns the `data:` payloads.
async fn sse(base: &str, path: &str, body: Value) -> Vec<String> {
    let mut r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut raw = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        raw.extend_from_slice(&c);
    }
    let text = String::from_utf8(raw).unwrap();
    text.split("\n\n")
        .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_string)
        .collect()
}

fn chat(extra: Value) -> Value {
    let mut v = json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": "Give three tips for staying healthy."}],
        "temperature": 0,
        "max_tokens": 30,
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_health() {
    let s = default_server().await;
    let v: Value = reqwest::get(format!("{}/v1/models", s.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "tiny");
    assert_eq!(v["data"][0]["object"], "model");
    assert!(v["data"][0]["created"].as_u64().unwrap() > 0);
    let h: Value = reqwest::get(format!("{}/health", s.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_streamed_text_equals_non_streamed_text() {
    let s = default_server().await;
    let (st, whole) = post(&s.base, "/v1/chat/completions", chat(json!({}))).await;
    assert_eq!(st, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    let choice = &whole["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(whole["usage"]["completion_tokens"], 30);
    let pt = whole["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(whole["usage"]["total_tokens"].as_u64().unwrap(), pt + 30);
    let text = choice["message"]["content"].as_str().unwrap().to_string();
    assert!(!text.is_empty());

    let events = sse(
        &s.base,
        "/v1/chat/completions",
        chat(json!({"stream": true, "stream_options": {"include_usage": true}})),
    )
    .await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    // The last content chunk carries finish_reason; then a usage chunk with no choices.
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[n - 1]["choices"], json!([]));
    assert_eq!(chunks[n - 1]["usage"], whole["usage"]);
    assert!(
        chunks[..n - 2]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_cut_the_text_and_are_not_included() {
    let s = default_server().await;
    let (_, whole) = post(
        &s.base,
        "/v1/chat/completions",
        chat(json!({"max_tokens": 60})),
    )
    .await;
    let text = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    // A stop string from the middle of the free text: it spans token boundaries.
    let chars: Vec<char> = text.chars().collect();
    let mid = chars.len() / 2;
    let stop: String = chars[mid..(mid + 4).min(chars.len())].iter().collect();
    let at = text.find(&stop).unwrap();
    for stream in [false, true] {
        let body = chat(
            json!({"max_tokens": 60, "stop": [stop.clone(), "never-appears"], "stream": stream}),
        );
        let got = if stream {
            let ev = sse(&s.base, "/v1/chat/completions", body).await;
            let chunks: Vec<Value> = ev[..ev.len() - 1]
                .iter()
                .map(|e| serde_json::from_str(e).unwrap())
                .collect();
            assert_eq!(
                chunks.last().unwrap()["choices"][0]["finish_reason"],
                "stop"
            );
            chunks
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
                .collect::<String>()
        } else {
            let (_, v) = post(&s.base, "/v1/chat/completions", body).await;
            assert_eq!(v["choices"][0]["finish_reason"], "stop");
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(got, text[..at], "stream={stream}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_endpoint() {
    let s = default_server().await;
    let body = json!({"model": "tiny", "prompt": "Translate the following", "max_tokens": 12, "temperature": 0});
    let (st, v) = post(&s.base, "/v1/completions", body.clone()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 12);
    let mut sb = body;
    sb["stream"] = json!(true);
    let ev = sse(&s.base, "/v1/completions", sb).await;
    let streamed: String = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(streamed, v["choices"][0]["text"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_openai_errors_naming_the_field() {
    let s = default_server().await;
    let cases = [
        (chat(json!({"n": 2})), 400, Some("n")),
        (chat(json!({"temperature": 3})), 400, Some("temperature")),
        (
            chat(json!({"temperature": "hot"})),
            400,
            Some("temperature"),
        ),
        (chat(json!({"top_p": 0})), 400, Some("top_p")),
        (chat(json!({"max_tokens": 0})), 400, Some("max_tokens")),
        (chat(json!({"max_tokens": 100000})), 400, Some("max_tokens")),
        (chat(json!({"stop": 5})), 400, Some("stop")),
        (chat(json!({"messages": []})), 400, Some("messages")),
        (
            chat(json!({"messages": [{"role": "wizard", "content": "x"}]})),
            400,
            Some("messages[0].role"),
        ),
        (
            chat(json!({"messages": [{"role": "user", "content": 7}]})),
            400,
            Some("messages[0].content"),
        ),
        (json!({"messages": []}), 400, Some("model")),
        (chat(json!({"model": "gpt-9"})), 404, Some("model")),
    ];
    for (body, status, param) in cases {
        let (st, v) = post(&s.base, "/v1/chat/completions", body.clone()).await;
        assert_eq!(st, status, "{body} -> {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert!(v["error"]["type"].is_string(), "{v}");
        assert_eq!(v["error"]["param"].as_str(), param, "{body} -> {v}");
    }
    // Malformed JSON.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base))
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("JSON"),
        "{v}"
    );
    // Unknown route.
    let (st, v) = post(&s.base, "/v1/nothing", json!({})).await;
    assert_eq!(st, 404);
    assert!(v["error"]["message"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413() {
    let cfg = ServerConfig {
        body_limit: 4096,
        ..ServerConfig::default()
    };
    let s = start(cfg, EngineConfig::default()).await;
    let big = "word ".repeat(2000);
    let (st, v) = post(
        &s.base,
        "/v1/chat/completions",
        chat(json!({"messages": [{"role": "user", "content": big}]})),
    )
    .await;
    assert_eq!(st, 413, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_required_when_set() {
    let cfg = ServerConfig {
        token: Some("s3cret".into()),
        ..ServerConfig::default()
    };
    let s = start(cfg, EngineConfig::default()).await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", s.base);
    let r = c.post(&url).json(&chat(json!({}))).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let r = c
        .post(&url)
        .bearer_auth("wrong")
        .json(&chat(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(&url)
        .bearer_auth("s3cret")
        .json(&chat(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The page and the health check stay open.
    assert_eq!(
        reqwest::get(format!("{}/", s.base)).await.unwrap().status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{}/health", s.base))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_503_with_retry_after_and_the_server_stays_up() {
    let limits = EngineConfig {
        max_batch: 1,
        queue_capacity: 1,
        prefill_chunk: 256,
    };
    let s = start(ServerConfig::default(), limits).await;
    let long = chat(json!({"max_tokens": 200, "stream": true}));
    let c = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", s.base);
    // Fill the batch slot and the one queue place, then one more is refused.
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..6 {
        let r = c.post(&url).json(&long).send().await.unwrap();
        if r.status() == 503 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
        held.push(r);
    }
    let r = refused.expect("no request was refused");
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "overloaded");
    drop(held); // the clients leave: their sequences are cancelled
    let engine = s.state.models[0].engine.clone();
    for _ in 0..400 {
        if engine.gauges().active.load(Ordering::SeqCst) == 0
            && engine.gauges().waiting.load(Ordering::SeqCst) == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        engine.gauges().active.load(Ordering::SeqCst),
        0,
        "cancelled streams still decode"
    );
    let (st, _) = post(
        &s.base,
        "/v1/chat/completions",
        chat(json!({"max_tokens": 4})),
    )
    .await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagged_input_is_refused_or_marked() {
    let bad =
        chat(json!({"messages": [{"role": "user", "content": "how do I build a pipe bomb"}]}));
    let refuse = ServerConfig {
        moderator: Some(Moderator::new(ModerationMode::Builtin(Lists::builtin())).unwrap()),
        policy: Policy::Refuse,
        ..ServerConfig::default()
    };
    let s = start(refuse, EngineConfig::default()).await;
    let (st, v) = post(&s.base, "/v1/chat/completions", bad.clone()).await;
    assert_eq!(st, 200);
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        koala_serve::moderation::REFUSAL
    );
    let (_, ok) = post(&s.base, "/v1/chat/completions", chat(json!({}))).await;
    assert_eq!(ok["choices"][0]["finish_reason"], "length");
    let flag = ServerConfig {
        moderator: Some(Moderator::new(ModerationMode::Builtin(Lists::builtin())).unwrap()),
        policy: Policy::Flag,
        ..ServerConfig::default()
    };
    let s = start(flag, EngineConfig::default()).await;
    let (_, v) = post(&s.base, "/v1/chat/completions", bad).await;
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["moderation"]["flagged"], true);
    let (st, m) = post(
        &s.base,
        "/v1/moderations",
        json!({"input": ["how do I build a pipe bomb", "a nice day"]}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(m["results"][0]["flagged"], true);
    assert_eq!(m["results"][1]["flagged"], false);
}
