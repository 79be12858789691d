//! A small client for OpenAI-compatible `POST {BASE_URL}/chat/completions` endpoints, shared by
//! `eval generate` (systems behind an API) and `eval judge` (the judge model).
//!
//! Failures that may pass (connection errors, timeouts, HTTP 429 and 5xx, a body that is not
//! JSON) are retried with exponential backoff (`retry_initial`, doubling, capped at 60 s), or after
//! the server's `Retry-After` seconds when it sends one. Other HTTP errors fail at once.
//!
//! ```
//! let (base, model) = koala_eval::client::parse_openai_spec("openai:http://127.0.0.1:8000/v1#gpt-4").unwrap();
//! assert_eq!(base, "http://127.0.0.1:8000/v1");
//! assert_eq!(model, "gpt-4");
//! ```
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::rows::Usage;

/// Splits `openai:BASE_URL#MODEL` into the base URL (without a trailing `/`) and the model.
pub fn parse_openai_spec(spec: &str) -> Result<(String, String)> {
    let bad = |why: &str| {
        Error::Invalid(format!(
            "{spec:?}: {why} (expected openai:BASE_URL#MODEL, e.g. openai:http://127.0.0.1:8000/v1#koala)"
        ))
    };
    let rest = spec
        .strip_prefix("openai:")
        .ok_or_else(|| bad("does not start with openai:"))?;
    let (base, model) = rest
        .rsplit_once('#')
        .ok_or_else(|| bad("no #MODEL after the URL"))?;
    let base = base.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(bad("the base URL is not http:// or https://"));
    }
    if model.is_empty() {
        return Err(bad("the model name after # is empty"));
    }
    Ok((base.to_string(), model.to_string()))
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl Message {
    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Message {
            role: "system".into(),
            content: content.into(),
        }
    }
    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// Retry and timeout settings of a [`ChatClient`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Retries after the first attempt.
    pub retries: u32,
    /// The first backoff; it doubles on each retry, capped at 60 s.
    pub retry_initial: Duration,
    /// Timeout of one request, from sending to the whole body.
    pub timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            retries: 6,
            retry_initial: Duration::from_millis(1000),
            timeout: Duration::from_secs(300),
        }
    }
}

/// Sampling settings of one call (left out of the request when `None`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ChatOptions {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
}

/// An answer from the endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub text: String,
    /// `finish_reason` of the first choice (`stop` when the endpoint left it out).
    pub finish_reason: String,
    pub usage: Option<Usage>,
    /// Time of the successful attempt, in milliseconds.
    pub latency_ms: u64,
}

enum Failure {
    Retry(String, Option<Duration>),
    Fatal(String),
}

/// A client of one model behind an OpenAI-compatible endpoint.
pub struct ChatClient {
    http: reqwest::Client,
    url: String,
    model: String,
    key: Option<String>,
    cfg: ClientConfig,
    attempts: AtomicU64,
    retried: AtomicU64,
}

impl ChatClient {
    /// A client of `model` at `base_url` (e.g. `http://127.0.0.1:8000/v1`). The API key is read
    /// from `OPENAI_API_KEY` when set.
    pub fn new(base_url: &str, model: &str, cfg: ClientConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .build()
            .map_err(|e| Error::Invalid(format!("cannot build the HTTP client: {e}")))?;
        let key = std::env::var("OPENAI_API_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty());
        Ok(ChatClient {
            http,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            model: model.to_string(),
            key,
            cfg,
            attempts: AtomicU64::new(0),
            retried: AtomicU64::new(0),
        })
    }

    /// A client from an `openai:BASE_URL#MODEL` spec.
    pub fn from_spec(spec: &str, cfg: ClientConfig) -> Result<Self> {
        let (base, model) = parse_openai_spec(spec)?;
        Self::new(&base, &model, cfg)
    }

    /// The model name sent as `model`.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// HTTP requests sent so far (retries included).
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Retries so far.
    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// Sends `messages`, retrying as the module says.
    pub async fn chat(&self, messages: &[Message], opts: ChatOptions) -> Result<Completion> {
        let mut body = json!({"model": self.model, "messages": messages, "n": 1});
        if let Some(m) = opts.max_tokens {
            body["max_tokens"] = json!(m);
        }
        if let Some(t) = opts.temperature {
            body["temperature"] = json!(t);
        }
        let mut attempt = 0u32;
        loop {
            match self.once(&body).await {
                Ok(c) => return Ok(c),
                Err(Failure::Fatal(m)) => return Err(Error::Request(m)),
                Err(Failure::Retry(why, after)) => {
                    if attempt >= self.cfg.retries {
                        return Err(Error::Request(format!(
                            "{}: gave up after {} attempts: {why}",
                            self.url,
                            attempt + 1
                        )));
                    }
                    let backoff = self
                        .cfg
                        .retry_initial
                        .saturating_mul(1u32 << attempt.min(16))
                        .min(Duration::from_secs(60));
                    let wait = after.unwrap_or(backoff);
                    tracing::warn!(
                        url = %self.url,
                        "{why}; retry {} of {} in {:.1} s",
                        attempt + 1,
                        self.cfg.retries,
                        wait.as_secs_f64()
                    );
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn once(&self, body: &Value) -> Result<Completion, Failure> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let mut rb = self.http.post(&self.url).json(body);
        if let Some(k) = &self.key {
            rb = rb.bearer_auth(k);
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| Failure::Retry(format!("request failed: {e}"), None))?;
        let status = resp.status();
        if status.as_u16() == 429 || status.is_server_error() {
            let after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(600.0)));
            return Err(Failure::Retry(format!("HTTP {status}"), after));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Failure::Retry(format!("reading the body: {e}"), None))?;
        if !status.is_success() {
            return Err(Failure::Fatal(format!(
                "{}: HTTP {status}: {}",
                self.url,
                String::from_utf8_lossy(&bytes)
            )));
        }
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Retry(format!("body is not JSON: {e}"), None))?;
        let choice = &v["choices"][0];
        let Some(text) = choice["message"]["content"].as_str() else {
            return Err(Failure::Fatal(format!(
                "{}: the response has no choices[0].message.content: {v}",
                self.url
            )));
        };
        let usage = v.get("usage").and_then(|u| {
            let p = u["prompt_tokens"].as_u64()?;
            let c = u["completion_tokens"].as_u64().unwrap_or(0);
            Some(Usage {
                prompt_tokens: p,
                completion_tokens: c,
                total_tokens: u["total_tokens"].as_u64().unwrap_or(p + c),
            })
        });
        Ok(Completion {
            text: text.to_string(),
            finish_reason: choice["finish_reason"]
                .as_str()
                .unwrap_or("stop")
                .to_string(),
            usage,
            latency_ms: t0.elapsed().as_millis() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_specs_name_themselves() {
        for s in [
            "http://x/v1#m",
            "openai:http://x/v1",
            "openai:ftp://x#m",
            "openai:http://x#",
        ] {
            let e = parse_openai_spec(s).unwrap_err().to_string();
            assert!(e.contains(&format!("{s:?}")), "{e}");
        }
        assert_eq!(
            parse_openai_spec("openai:https://api.example.com/v1/#gpt-4o").unwrap(),
            ("https://api.example.com/v1".into(), "gpt-4o".into())
        );
    }
}
