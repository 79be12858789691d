//! A STAND-IN judge for `koala eval judge`: an OpenAI-compatible `POST /v1/chat/completions`
//! server that answers FastChat pairwise judge prompts with `[[A]]`, `[[B]]` or `[[C]]` by a
//! fixed word-counting rule. It reads no meaning and is **not a real judge**: its verdicts say
//! nothing about which model is better. It exists so that the whole evaluation loop (train →
//! serve → `eval generate` → `eval judge` → `eval report`) runs offline, in minutes, with no API
//! key (`scripts/eval-loop.sh`, docs/evaluation.md "The whole loop"). For a real evaluation
//! point `--judge` at a strong model (`openai:https://api.openai.com/v1#gpt-4o`, a vLLM server…).
//!
//! The rule, deterministic and symmetric (swapping A and B swaps the verdict, so `eval judge`'s
//! two orders agree whenever it is not a tie):
//! 1. the answer sharing more distinct words with the question wins (words: runs of letters and
//!    digits, lowercased);
//! 2. equal overlap: the answer with more words wins;
//! 3. equal again: `[[C]]`, a tie.
//!
//! A request whose user message is not in `koala eval judge`'s form gets `[[C]]` and a note.
//!
//! ```sh
//! cargo run --example stand_in_judge -- --listen 127.0.0.1:0
//! # prints: stand-in judge: listening on http://127.0.0.1:PORT
//! koala eval judge --responses responses.jsonl \
//!   --judge openai:http://127.0.0.1:PORT/v1#stand-in --out ratings.jsonl
//! ```
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use axum::Json;
use axum::extract::State;
use axum::routing::{get, post};
use serde_json::{Value, json};

const ANSWER_A: (&str, &str) = (
    "[The Start of Assistant A's Answer]\n",
    "\n[The End of Assistant A's Answer]",
);
const ANSWER_B: (&str, &str) = (
    "[The Start of Assistant B's Answer]\n",
    "\n[The End of Assistant B's Answer]",
);
const QUESTION: &str = "[User Question]\n";

/// The verdict of the rule, in the order shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    A,
    B,
    Tie,
}

impl Verdict {
    pub fn mark(self) -> &'static str {
        match self {
            Verdict::A => "[[A]]",
            Verdict::B => "[[B]]",
            Verdict::Tie => "[[C]]",
        }
    }
}

/// Distinct lowercased runs of letters and digits.
fn words(s: &str) -> BTreeSet<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn word_count(s: &str) -> usize {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .count()
}

/// (distinct words shared with the question, words) of one answer.
pub fn score(question: &str, answer: &str) -> (usize, usize) {
    let q = words(question);
    let overlap = words(answer).intersection(&q).count();
    (overlap, word_count(answer))
}

/// The rule: more overlap with the question, then more words, else a tie.
pub fn verdict(question: &str, a: &str, b: &str) -> Verdict {
    match score(question, a).cmp(&score(question, b)) {
        std::cmp::Ordering::Greater => Verdict::A,
        std::cmp::Ordering::Less => Verdict::B,
        std::cmp::Ordering::Equal => Verdict::Tie,
    }
}

/// The text between `start` and the next `end` after it.
fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let i = s.find(start)? + start.len();
    let j = s[i..].find(end)? + i;
    Some(&s[i..j])
}

/// Question, answer A and answer B of `koala eval judge`'s user message.
pub fn parse_prompt(user: &str) -> Option<(&str, &str, &str)> {
    let question = between(user, QUESTION, "\n\n[The Start of Assistant A's Answer]")?;
    let a = between(user, ANSWER_A.0, ANSWER_A.1)?;
    let b = between(user, ANSWER_B.0, ANSWER_B.1)?;
    Some((question, a, b))
}

/// The judge's reply to one user message: a short explanation ending in the verdict.
pub fn reply(user: &str) -> String {
    let Some((q, a, b)) = parse_prompt(user) else {
        return "Stand-in judge: this is not a pairwise judge prompt I can read. [[C]]".into();
    };
    let (sa, sb) = (score(q, a), score(q, b));
    let v = verdict(q, a, b);
    format!(
        "Stand-in judge (word counting, not a real judgement): A shares {} words with the \
         question and has {} words; B shares {} and has {}. {}",
        sa.0,
        sa.1,
        sb.0,
        sb.1,
        v.mark()
    )
}

/// Requests answered so far.
#[derive(Default)]
pub struct Judge {
    pub requests: AtomicU64,
}

/// Words, roughly, for the usage counts.
fn tokens(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

async fn chat(
    State(j): State<std::sync::Arc<Judge>>,
    Json(body): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    j.requests.fetch_add(1, Ordering::Relaxed);
    let Some(messages) = body["messages"].as_array() else {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            Json(
                json!({"error": {"message": "messages: expected an array", "type": "invalid_request_error"}}),
            ),
        );
    };
    let user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let prompt_tokens: u64 = messages
        .iter()
        .filter_map(|m| m["content"].as_str())
        .map(tokens)
        .sum();
    let text = reply(user);
    let completion_tokens = tokens(&text);
    (
        axum::http::StatusCode::OK,
        Json(json!({
            "id": format!("stand-in-{}", j.requests.load(Ordering::Relaxed)),
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop"
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens
            }
        })),
    )
}

async fn models() -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": "stand-in", "object": "model", "created": 0, "owned_by": "koala"}]
    }))
}

/// The server's routes: `POST /v1/chat/completions`, `GET /v1/models`.
pub fn router(judge: std::sync::Arc<Judge>) -> axum::Router {
    axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .with_state(judge)
}

#[derive(clap::Parser, Debug)]
#[command(
    about = "A stand-in pairwise judge (word counting, NOT a real judge) for `koala eval judge`"
)]
struct Args {
    /// Address to listen on (`127.0.0.1:0` picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8001")]
    listen: String,
}

fn main() -> Result<()> {
    use clap::Parser;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("--listen {}", args.listen))?;
        let addr = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "stand-in judge: listening on http://{addr}")?;
            out.flush()?;
        }
        tracing::warn!(
            "this is a stand-in judge (word counting); its verdicts do not measure quality"
        );
        let judge = std::sync::Arc::new(Judge::default());
        axum::serve(listener, router(judge.clone()))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving")?;
        tracing::info!(
            "answered {} requests",
            judge.requests.load(Ordering::Relaxed)
        );
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_then_length_then_tie() {
        let q = "Give me three tips for staying healthy.";
        assert_eq!(verdict(q, "tips: sleep", "sleep well and eat"), Verdict::A);
        assert_eq!(verdict(q, "sleep", "sleep well"), Verdict::B);
        assert_eq!(verdict(q, "Healthy TIPS", "tips, healthy!"), Verdict::Tie);
        // Symmetric: swapping the answers swaps the verdict.
        assert_eq!(verdict(q, "sleep well", "sleep"), Verdict::A);
    }

    #[test]
    fn reads_the_judge_prompt() {
        let user = koala_eval::judge::user_prompt("q words", "words", "no");
        let user = user.as_str();
        assert_eq!(parse_prompt(user), Some(("q words", "words", "no")));
        assert!(reply(user).ends_with("[[A]]"));
        assert!(reply("hello").ends_with("[[C]]"));
    }
}
