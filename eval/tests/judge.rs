//! `eval judge` against stand-in judges: one that prefers the longer answer (consistent in both
//! orders), one that always says [[A]] (flips with the order: a tie), one that never gives a
//! verdict; and the cache (a rerun makes zero requests).
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use koala_eval::client::{ChatClient, ClientConfig};
use koala_eval::judge::{JudgeConfig, Pairs, judge};
use koala_eval::rows::read_jsonl;
use koala_eval::{RatingRow, ResponseRow, Side, Winner};
use serde_json::{Value, json};

#[derive(Clone, Copy)]
enum Kind {
    Longer,
    AlwaysA,
    Mute,
}

struct Judge {
    kind: Kind,
    requests: AtomicU64,
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let i = s.find(start).map_or(0, |i| i + start.len());
    let j = s[i..].find(end).map_or(s.len(), |j| i + j);
    &s[i..j]
}

async fn chat(State(j): State<Arc<Judge>>, Json(body): Json<Value>) -> Json<Value> {
    j.requests.fetch_add(1, Ordering::SeqCst);
    assert_eq!(body["messages"][0]["role"], "system");
    let user = body["messages"][1]["content"].as_str().unwrap_or("");
    let a = between(
        user,
        "[The Start of Assistant A's Answer]\n",
        "\n[The End of Assistant A's Answer]",
    );
    let b = between(
        user,
        "[The Start of Assistant B's Answer]\n",
        "\n[The End of Assistant B's Answer]",
    );
    let reply = match j.kind {
        Kind::Longer if a.len() > b.len() => "A says more. [[A]]",
        Kind::Longer if a.len() < b.len() => "Mentioning [[A]] first, but B says more: [[B]]",
        Kind::Longer => "Same. [[C]]",
        Kind::AlwaysA => "[[A]]",
        Kind::Mute => "I cannot decide.",
    };
    Json(json!({
        "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
    }))
}

async fn server(kind: Kind) -> (SocketAddr, Arc<Judge>) {
    let j = Arc::new(Judge {
        kind,
        requests: AtomicU64::new(0),
    });
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(j.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (addr, j)
}

fn row(id: &str, system: &str, response: &str) -> ResponseRow {
    ResponseRow {
        prompt_id: id.into(),
        set: "koala".into(),
        prompt: format!("question {id}"),
        system: system.into(),
        response: response.into(),
        finish_reason: "stop".into(),
        latency_ms: 1,
        usage: None,
    }
}

/// Three systems, two prompts: `long` always writes more than `mid`, which writes more than `short`.
fn responses() -> Vec<ResponseRow> {
    let mut v = Vec::new();
    for id in ["q0", "q1"] {
        v.push(row(id, "short", "no"));
        v.push(row(id, "long", "a long and careful answer"));
        v.push(row(id, "mid", "a middling one"));
    }
    v
}

fn client(addr: SocketAddr) -> ChatClient {
    ChatClient::new(
        &format!("http://{addr}/v1"),
        "stand-in",
        ClientConfig {
            retries: 1,
            retry_initial: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
        },
    )
    .unwrap()
}

fn cfg(d: &std::path::Path, pairs: Pairs) -> JudgeConfig {
    JudgeConfig {
        out: d.join("ratings.jsonl"),
        cache: Some(d.join("cache.jsonl")),
        pairs,
        concurrency: 4,
        max_tokens: None,
        price_in: 2.0,
        price_out: 10.0,
        progress: false,
    }
}

#[tokio::test]
async fn consistent_judge_picks_the_longer_answer_and_the_cache_saves_every_request() {
    let (addr, j) = server(Kind::Longer).await;
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path(), Pairs::All);
    let s = judge(&responses(), client(addr), &c).await.unwrap();
    assert_eq!(
        (s.ratings, s.judgements, s.cached, s.flipped, s.unparsed),
        (6, 12, 0, 0, 0)
    );
    assert_eq!(j.requests.load(Ordering::SeqCst), 12);
    assert_eq!(s.usage.prompt_tokens, 1200);
    assert!((s.cost_usd - (1200.0 * 2.0 + 120.0 * 10.0) / 1e6).abs() < 1e-12);
    let rows: Vec<RatingRow> = read_jsonl(&c.out).unwrap();
    assert_eq!(rows.len(), 6);
    for r in &rows {
        assert!(r.system_a < r.system_b);
        assert_eq!(
            (r.rater.as_str(), r.left, r.set.as_deref()),
            ("judge:stand-in", Side::A, Some("koala"))
        );
        let rank = |s: &str| {
            ["short", "mid", "long"]
                .iter()
                .position(|x| *x == s)
                .unwrap()
        };
        let want = if rank(&r.system_a) > rank(&r.system_b) {
            Winner::A
        } else {
            Winner::B
        };
        assert_eq!(r.winner, want, "{r:?}");
    }
    // A rerun asks nothing.
    let s = judge(&responses(), client(addr), &c).await.unwrap();
    assert_eq!((s.cached, s.usage.total_tokens), (12, 0));
    assert_eq!(j.requests.load(Ordering::SeqCst), 12);
    assert_eq!(read_jsonl::<RatingRow>(&c.out).unwrap().len(), 6);
}

#[tokio::test]
async fn a_judge_that_follows_the_position_gives_ties() {
    let (addr, _) = server(Kind::AlwaysA).await;
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path(), Pairs::Versus("mid".into()));
    let s = judge(&responses(), client(addr), &c).await.unwrap();
    assert_eq!((s.ratings, s.flipped, s.ties), (4, 4, 4));
    let rows: Vec<RatingRow> = read_jsonl(&c.out).unwrap();
    assert!(rows.iter().all(|r| r.winner == Winner::Tie));
    assert!(
        rows.iter()
            .all(|r| r.system_a == "mid" || r.system_b == "mid")
    );
}

#[tokio::test]
async fn no_verdict_is_asked_twice_then_a_tie() {
    let (addr, j) = server(Kind::Mute).await;
    let d = tempfile::tempdir().unwrap();
    let mut rs = responses();
    rs.retain(|r| r.prompt_id == "q0" && r.system != "mid");
    let c = cfg(d.path(), Pairs::All);
    let s = judge(&rs, client(addr), &c).await.unwrap();
    assert_eq!((s.ratings, s.unparsed, s.ties), (1, 2, 1));
    assert_eq!(j.requests.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn unknown_versus_system_is_an_error() {
    let (addr, _) = server(Kind::AlwaysA).await;
    let d = tempfile::tempdir().unwrap();
    let e = judge(
        &responses(),
        client(addr),
        &cfg(d.path(), Pairs::Versus("gpt".into())),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("vs:gpt"), "{e}");
}
