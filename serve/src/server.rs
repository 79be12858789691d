//! The HTTP server: routes, auth, body limits, and the completion handlers (streamed as SSE or
//! whole), over the engines of [`crate::models`].
//!
//! Every request becomes one engine [`Stream`]: its tokens go through a [`TextStream`] (stop
//! strings, whole UTF-8 characters), and the text deltas either become SSE chunks or are joined
//! into one response. The non-streamed text is the concatenation of the very deltas a stream would
//! send, so the two are equal by construction. When a client goes away, its SSE body is dropped,
//! the task feeding it fails to send and drops the engine stream, and the engine frees the
//! sequence at its next step.
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use koala_format::Turn;
use koala_model::{Event, Request as GenRequest, SampleParams, Watermark};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::{self, ApiError, ChatRequest, Checked, CompletionRequest, Prompt};
use crate::models::{Served, fit};
use crate::moderation::{Lists, ModerationMode, Moderator, Policy};

/// Largest request body, in bytes (413 beyond).
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;

/// Settings of a server.
pub struct ServerConfig {
    /// Bearer token required on `/v1/*` (none: open).
    pub token: Option<String>,
    pub body_limit: usize,
    pub moderator: Option<Moderator>,
    pub policy: Policy,
    pub watermark: Option<Watermark>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            token: None,
            body_limit: DEFAULT_BODY_LIMIT,
            moderator: None,
            policy: Policy::Refuse,
            watermark: None,
        }
    }
}

/// Shared state of the handlers.
pub struct AppState {
    pub models: Vec<Arc<Served>>,
    pub cfg: ServerConfig,
}

impl AppState {
    fn model(&self, name: &str) -> Result<Arc<Served>, ApiError> {
        self.models
            .iter()
            .find(|m| m.name == name)
            .cloned()
            .ok_or_else(|| {
                ApiError::unknown_model(
                    name,
                    &self
                        .models
                        .iter()
                        .map(|m| m.name.clone())
                        .collect::<Vec<_>>(),
                )
            })
    }
}

/// The router with every route.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.body_limit;
    let v1 = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/moderations", post(moderations))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route(
            "/",
            get(|| async { Html(include_str!("../static/index.html")) }),
        )
        .route("/chat.js", get(static_js))
        .route("/chat.css", get(static_css))
        .route("/health", get(health))
        .merge(v1)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn static_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/chat.js"),
    )
}

async fn static_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../static/chat.css"),
    )
}

async fn not_found(req: Request) -> ApiError {
    ApiError::status(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

/// Checks `Authorization: Bearer …` when a token is configured (constant-time comparison).
async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(want) = &st.cfg.token {
        let got = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match got {
            None => {
                return ApiError::unauthorized(
                    "missing bearer token: send `Authorization: Bearer <token>`",
                )
                .into_response();
            }
            Some(g) if !ct_eq(g.as_bytes(), want.as_bytes()) => {
                return ApiError::unauthorized("incorrect bearer token").into_response();
            }
            Some(_) => {}
        }
    }
    next.run(req).await
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(st): State<Arc<AppState>>) -> Json<Value> {
    let models: Vec<Value> = st
        .models
        .iter()
        .map(|m| {
            let g = m.engine.gauges();
            json!({
                "id": m.name,
                "device": m.engine.device(),
                "active": g.active.load(std::sync::atomic::Ordering::Relaxed),
                "waiting": g.waiting.load(std::sync::atomic::Ordering::Relaxed),
                "kv_cache_bytes": g.kv_bytes.load(std::sync::atomic::Ordering::Relaxed),
            })
        })
        .collect();
    Json(json!({"status": "ok", "models": models}))
}

async fn list_models(State(st): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = st
        .models
        .iter()
        .map(
            |m| json!({"id": m.name, "object": "model", "created": m.created, "owned_by": "koala"}),
        )
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// The body, or the right error: 413 past the limit, 400 otherwise.
fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|r| {
        let status = r.status();
        let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "the request body is too large".to_string()
        } else {
            r.body_text()
        };
        ApiError::status(status, msg)
    })
}

async fn moderations(
    State(st): State<Arc<AppState>>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let req: api::ModerationRequest = api::parse(&body(b)?)?;
    let inputs = match req.input {
        api::ModerationInput::One(s) => vec![s],
        api::ModerationInput::Many(v) => v,
    };
    // Served from the builtin lists (or the edited lists file the server runs with).
    let fallback;
    let m = match &st.cfg.moderator {
        Some(m) => m,
        None => {
            fallback = Moderator::new(ModerationMode::Builtin(Lists::builtin()))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            &fallback
        }
    };
    Ok(Json(m.openai_response(&inputs)))
}

/// Which endpoint a generation serves (they differ only in their JSON shapes).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ChatRequest = api::parse_with_sampling(&body(b)?)?;
    let checked = req.sampling.check()?;
    let served = st.model(&req.model)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let mut turns = Vec::with_capacity(req.messages.len());
    let mut user_text = String::new();
    for (i, m) in req.messages.iter().enumerate() {
        let text = m.text(i)?;
        let turn = match m.role.as_str() {
            "user" => {
                user_text.push_str(&text);
                user_text.push('\n');
                Turn::user(text)
            }
            "assistant" => Turn::assistant(text),
            "system" | "developer" => Turn::system(text),
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("role must be system, user or assistant, got `{other}`"),
                ));
            }
        };
        turns.push(turn);
    }
    let prompt = served.chat_prompt(&turns)?;
    generate(st, served, Kind::Chat, prompt, checked, user_text, &headers).await
}

async fn completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = api::parse_with_sampling(&body(b)?)?;
    let mut checked = req.sampling.check()?;
    if checked.max_tokens.is_none() {
        checked.max_tokens = Some(16); // OpenAI's default for completions
    }
    let served = st.model(&req.model)?;
    let (prompt, text) = match &req.prompt {
        Prompt::Text(s) => (served.text_prompt(s)?, s.clone()),
        Prompt::Texts(v) if v.len() == 1 => (served.text_prompt(&v[0])?, v[0].clone()),
        Prompt::Texts(v) => {
            return Err(ApiError::invalid(
                "prompt",
                format!(
                    "one prompt per request (batch the requests instead), got {}",
                    v.len()
                ),
            ));
        }
        Prompt::Ids(ids) => {
            let text = served.tokenizer.decode(ids, true).unwrap_or_default();
            (ids.clone(), text)
        }
    };
    generate(st, served, Kind::Text, prompt, checked, text, &headers).await
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn new_id(kind: Kind) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let x = t ^ N
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    match kind {
        Kind::Chat => format!("chatcmpl-{x:016x}"),
        Kind::Text => format!("cmpl-{x:016x}"),
    }
}

/// A moderation outcome attached to a response under the `flag` policy.
fn flag_json(categories: &[String]) -> Value {
    json!({"flagged": true, "categories": categories})
}

/// What one generation produced.
struct Finished {
    finish: &'static str,
    prompt_tokens: usize,
    completion_tokens: usize,
    flagged: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
async fn generate(
    st: Arc<AppState>,
    served: Arc<Served>,
    kind: Kind,
    prompt: Vec<u32>,
    c: Checked,
    input_text: String,
    _headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let ctx = served.engine.config().max_position_embeddings;
    let (prompt, max_tokens) = fit(prompt, c.max_tokens, ctx, served.bos)?;
    let id = new_id(kind);
    let created = now();
    let model = served.name.clone();
    // The user's input is checked before generation (as FastChat does).
    let mut flagged_input = Vec::new();
    if let Some(m) = &st.cfg.moderator {
        let v = m
            .check(&input_text)
            .await
            .map_err(|e| ApiError::internal(format!("moderation: {e}")))?;
        if v.flagged {
            let cats: Vec<String> = v
                .flagged_categories()
                .into_iter()
                .map(str::to_string)
                .collect();
            tracing::info!(request = %id, categories = ?cats, policy = ?st.cfg.policy, "moderation: input flagged");
            match st.cfg.policy {
                Policy::Refuse => {
                    return Ok(refusal(
                        kind,
                        &id,
                        created,
                        &model,
                        prompt.len(),
                        c.stream,
                        c.include_usage,
                    ));
                }
                Policy::Flag => flagged_input = cats,
            }
        }
    }
    let req = GenRequest {
        prompt,
        max_tokens,
        params: SampleParams {
            temperature: c.temperature,
            top_k: c.top_k,
            top_p: c.top_p,
            seed: c.seed,
        },
        stop_tokens: served.eos.clone(),
        watermark: st.cfg.watermark.clone(),
    };
    let req_len = req.prompt.len();
    let stream = served.engine.submit(req).map_err(|e| match e {
        koala_model::Error::QueueFull(_) => {
            ApiError::overloaded(format!("{e}; retry after the time in Retry-After"))
        }
        koala_model::Error::Invalid(m) => ApiError::invalid("prompt", m),
        other => ApiError::internal(other.to_string()),
    })?;
    // Deltas flow from a task that owns the engine stream to the response.
    let (tx, rx) = mpsc::channel::<Delta>(64);
    let st2 = st.clone();
    let served2 = served.clone();
    let stops = c.stop.clone();
    let prompt_len = req_len;
    tokio::spawn(async move { drive(st2, served2, stream, stops, prompt_len, tx).await });
    if c.stream {
        Ok(sse(kind, id, created, model, rx, c.include_usage, flagged_input).into_response())
    } else {
        whole(kind, id, created, model, rx, flagged_input).await
    }
}

/// What the driving task sends: text, or the end.
enum Delta {
    Text(String),
    End(Finished),
    Failed(String),
}

/// Runs the engine stream through the detokeniser and the output moderation.
async fn drive(
    st: Arc<AppState>,
    served: Arc<Served>,
    mut stream: koala_model::Stream,
    stops: Vec<String>,
    prompt_len: usize,
    tx: mpsc::Sender<Delta>,
) {
    let tk = served.tokenizer.clone();
    let mut text = koala_model::TextStream::new(&tk, stops);
    let mut so_far = String::new();
    let mut flagged = Vec::new();
    let moderate_output = st.cfg.moderator.as_ref();
    // Sends one delta after checking the output so far; false = stop generating.
    macro_rules! send_text {
        ($t:expr) => {{
            let t: String = $t;
            let mut go = true;
            if !t.is_empty() {
                let mut blocked = false;
                if let Some(m) = moderate_output {
                    so_far.push_str(&t);
                    if let Ok(v) = m.check(&so_far).await
                        && v.flagged
                    {
                        let cats: Vec<String> = v.flagged_categories().into_iter().map(str::to_string).collect();
                        tracing::info!(categories = ?cats, policy = ?st.cfg.policy, "moderation: output flagged");
                        if st.cfg.policy == Policy::Refuse {
                            blocked = true;
                        } else if flagged.is_empty() {
                            flagged = cats;
                        }
                    }
                }
                if blocked {
                    let _ = tx
                        .send(Delta::End(Finished {
                            finish: "content_filter",
                            prompt_tokens: prompt_len,
                            completion_tokens: text.token_count(),
                            flagged: Vec::new(),
                        }))
                        .await;
                    go = false;
                } else if tx.send(Delta::Text(t)).await.is_err() {
                    go = false;
                }
            }
            go
        }};
    }
    while let Some(ev) = stream.next().await {
        match ev {
            Event::Token(t) => {
                let d = match text.push(t) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(Delta::Failed(e.to_string())).await;
                        return;
                    }
                };
                if !send_text!(d.text) {
                    return; // dropping `stream` cancels the sequence
                }
                if d.stopped {
                    let _ = tx
                        .send(Delta::End(Finished {
                            finish: "stop",
                            prompt_tokens: prompt_len,
                            completion_tokens: text.token_count(),
                            flagged,
                        }))
                        .await;
                    return;
                }
            }
            Event::Done {
                reason,
                prompt_tokens,
                completion_tokens,
            } => {
                let rest = text.finish();
                if !send_text!(rest) {
                    return;
                }
                let _ = tx
                    .send(Delta::End(Finished {
                        finish: reason.as_str(),
                        prompt_tokens,
                        completion_tokens,
                        flagged,
                    }))
                    .await;
                return;
            }
            Event::Failed(m) => {
                let _ = tx.send(Delta::Failed(m)).await;
                return;
            }
        }
    }
    let _ = tx.send(Delta::Failed("the engine stopped".into())).await;
}

/// A fixed refusal for a flagged input (`finish_reason: "content_filter"`).
fn refusal(
    kind: Kind,
    id: &str,
    created: u64,
    model: &str,
    prompt_tokens: usize,
    stream: bool,
    include_usage: bool,
) -> Response {
    let text = crate::moderation::REFUSAL;
    if stream {
        let mut events = vec![chunk(kind, id, created, model, Some(text), None, true)];
        events.push(chunk(
            kind,
            id,
            created,
            model,
            None,
            Some("content_filter"),
            false,
        ));
        if include_usage {
            events.push(usage_chunk(kind, id, created, model, prompt_tokens, 0));
        }
        let evs: Vec<Result<SseEvent, Infallible>> = events
            .into_iter()
            .map(|v| Ok(SseEvent::default().data(v.to_string())))
            .chain(std::iter::once(Ok(SseEvent::default().data("[DONE]"))))
            .collect();
        return Sse::new(tokio_stream::iter(evs)).into_response();
    }
    Json(full(
        kind,
        id,
        created,
        model,
        text,
        "content_filter",
        prompt_tokens,
        0,
    ))
    .into_response()
}

#[allow(clippy::too_many_arguments)]
fn full(
    kind: Kind,
    id: &str,
    created: u64,
    model: &str,
    text: &str,
    finish: &str,
    prompt_tokens: usize,
    completion_tokens: usize,
) -> Value {
    let choice = match kind {
        Kind::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null},
            "logprobs": null,
            "finish_reason": finish,
        }),
        Kind::Text => json!({
            "index": 0, "text": text, "logprobs": null, "finish_reason": finish,
        }),
    };
    json!({
        "id": id,
        "object": if kind == Kind::Chat { "chat.completion" } else { "text_completion" },
        "created": created,
        "model": model,
        "system_fingerprint": null,
        "choices": [choice],
        "usage": api::usage(prompt_tokens, completion_tokens),
    })
}

/// One stream chunk: `role` (first chat chunk), `text`, or `finish`.
fn chunk(
    kind: Kind,
    id: &str,
    created: u64,
    model: &str,
    text: Option<&str>,
    finish: Option<&str>,
    first: bool,
) -> Value {
    let choice = match kind {
        Kind::Chat => {
            let mut delta = serde_json::Map::new();
            if first {
                delta.insert("role".into(), "assistant".into());
            }
            if let Some(t) = text {
                delta.insert("content".into(), t.into());
            }
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        }
        Kind::Text => json!({
            "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish,
        }),
    };
    json!({
        "id": id,
        "object": if kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
        "created": created,
        "model": model,
        "system_fingerprint": null,
        "choices": [choice],
    })
}

fn usage_chunk(kind: Kind, id: &str, created: u64, model: &str, p: usize, c: usize) -> Value {
    json!({
        "id": id,
        "object": if kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
        "created": created,
        "model": model,
        "system_fingerprint": null,
        "choices": [],
        "usage": api::usage(p, c),
    })
}

/// The whole response of a non-streamed request.
async fn whole(
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    mut rx: mpsc::Receiver<Delta>,
    flagged_input: Vec<String>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let mut text = String::new();
    while let Some(d) = rx.recv().await {
        match d {
            Delta::Text(t) => text.push_str(&t),
            Delta::Failed(m) => return Err(ApiError::internal(format!("generation failed: {m}"))),
            Delta::End(f) => {
                let (p, c) = (f.prompt_tokens, f.completion_tokens);
                let mut v = full(kind, &id, created, &model, &text, f.finish, p, c);
                let mut cats = flagged_input.clone();
                cats.extend(f.flagged);
                if !cats.is_empty() {
                    v["moderation"] = flag_json(&cats);
                }
                tracing::debug!(request = %id, ms = started.elapsed().as_millis() as u64, "done");
                return Ok(Json(v).into_response());
            }
        }
    }
    Err(ApiError::internal(
        "generation ended without a result".into(),
    ))
}

/// The SSE response of a streamed request.
fn sse(
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    mut rx: mpsc::Receiver<Delta>,
    include_usage: bool,
    flagged_input: Vec<String>,
) -> impl IntoResponse {
    let (otx, orx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let ev = |v: Value| Ok(SseEvent::default().data(v.to_string()));
        let with_usage = |mut v: Value| {
            if include_usage {
                v["usage"] = Value::Null;
            }
            v
        };
        // Chat streams open with the role (OpenAI sends it with empty content).
        if kind == Kind::Chat {
            let first = chunk(kind, &id, created, &model, Some(""), None, true);
            if otx.send(ev(with_usage(first))).await.is_err() {
                return;
            }
        }
        while let Some(d) = rx.recv().await {
            match d {
                Delta::Text(t) => {
                    let v = chunk(kind, &id, created, &model, Some(&t), None, false);
                    if otx.send(ev(with_usage(v))).await.is_err() {
                        return; // the client left: dropping `rx` stops the generation
                    }
                }
                Delta::Failed(m) => {
                    let e = ApiError::internal(format!("generation failed: {m}"));
                    let _ = otx.send(ev(e.body())).await;
                    break;
                }
                Delta::End(f) => {
                    let mut last = chunk(kind, &id, created, &model, None, Some(f.finish), false);
                    let mut cats = flagged_input.clone();
                    cats.extend(f.flagged);
                    if !cats.is_empty() {
                        last["moderation"] = flag_json(&cats);
                    }
                    if otx.send(ev(with_usage(last))).await.is_err() {
                        return;
                    }
                    if include_usage {
                        let u = usage_chunk(
                            kind,
                            &id,
                            created,
                            &model,
                            f.prompt_tokens,
                            f.completion_tokens,
                        );
                        if otx.send(ev(u)).await.is_err() {
                            return;
                        }
                    }
                    break;
                }
            }
        }
        let _ = otx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(orx)).keep_alive(KeepAlive::default())
}
