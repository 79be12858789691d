//! The rating server: axum routes over one writer thread that owns the SQLite connection.
//!
//! Routes: `GET /` (the rating page), `GET /rate.js`, `GET /admin`, `GET /admin.js`,
//! `GET /health`, `GET /api/state?rater=NAME`, `POST /api/vote`, `POST /api/undo`,
//! `GET /api/admin/progress` (bearer token).
//!
//! Every change goes through the writer thread as a command. The writer takes all the commands
//! waiting, applies them in one transaction, commits (`synchronous=FULL`: on disk), and only then
//! answers each; so many raters voting at once share one fsync, and no answer claims a vote that
//! is not on disk. Rater positions live in memory too (read back from the votes at start), so a
//! page load reads no database.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::db::{self, DbSettings, Item};
use super::{RateConfig, check_rater_name, plan_len, rater_plan};
use crate::error::{Error, Result};
use crate::rows::{Side, Winner};

const PAGE: &str = include_str!("page.html");
const PAGE_JS: &str = include_str!("rate.js");
const ADMIN: &str = include_str!("admin.html");
const ADMIN_JS: &str = include_str!("admin.js");
/// Scripts only from this server, no inline script, no framing: a model's answer is text, and
/// even a bug that put it into HTML could not run script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";
/// Commands applied in one transaction at most.
const MAX_BATCH: usize = 1024;

/// A rater's place: their order and how far they are in it.
#[derive(Clone, Debug)]
struct RaterState {
    plan: Arc<Vec<(u32, Side)>>,
    pos: usize,
}

type Raters = Arc<RwLock<HashMap<String, RaterState>>>;

/// A vote as the page sends it: which side won.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Choice {
    Left,
    Right,
    Tie,
    BothBad,
}

enum Cmd {
    Join(String),
    Vote {
        rater: String,
        pos: usize,
        choice: Choice,
    },
    Undo(String),
}

/// What the writer answers: the rater's state after the command, and the pair's systems
/// (left, right) after a vote.
struct Ack {
    state: RaterState,
    voted: Option<(String, String)>,
}

#[derive(Debug)]
enum ApiError {
    BadRequest(String),
    /// The page is out of step with the server (a vote for a position already voted, an undo
    /// with nothing to undo): the answer carries the current state.
    Conflict(String, Option<String>),
    Unauthorized,
    Internal(String),
}

type Reply = oneshot::Sender<std::result::Result<Ack, ApiError>>;

struct Shared {
    items: Vec<Item>,
    raters: Raters,
    tx: mpsc::Sender<(Cmd, Reply)>,
    admin_token: String,
    reveal: bool,
    db_path: PathBuf,
}

/// A rating server over one database, ready to serve.
pub struct RateApp {
    shared: Arc<Shared>,
    settings: DbSettings,
}

impl RateApp {
    /// Opens (or creates) the database for `items` and starts its writer thread.
    pub fn open(config: &RateConfig, items: &[Item]) -> Result<RateApp> {
        if config.admin_token.trim().is_empty() {
            return Err(Error::Invalid("the admin token is empty".into()));
        }
        let pairs = match &config.pairs {
            crate::judge::Pairs::All => "all".to_string(),
            crate::judge::Pairs::Versus(n) => format!("vs:{n}"),
        };
        let wanted = DbSettings {
            seed: config.seed.unwrap_or_else(rand::random),
            pairs,
            per_rater: config.per_rater,
        };
        let (conn, items, settings) = db::open_for_server(&config.db, items, &wanted)?;
        if let Some(s) = config.seed
            && s != settings.seed
        {
            return Err(Error::Invalid(format!(
                "{}: made with --seed {}, not {s}",
                config.db.display(),
                settings.seed
            )));
        }
        let sql =
            |e: rusqlite::Error| Error::Invalid(format!("{}: SQLite: {e}", config.db.display()));
        let counts: HashMap<String, u64> =
            db::vote_counts(&conn).map_err(sql)?.into_iter().collect();
        let mut map = HashMap::new();
        let mut next_idx = 0;
        for r in db::read_raters(&conn).map_err(sql)? {
            let plan = rater_plan(
                settings.seed,
                items.len(),
                settings.per_rater,
                &r.name,
                r.idx,
            );
            let pos = counts.get(&r.name).copied().unwrap_or(0) as usize;
            next_idx = next_idx.max(r.idx + 1);
            map.insert(
                r.name,
                RaterState {
                    plan: Arc::new(plan),
                    pos,
                },
            );
        }
        let raters: Raters = Arc::new(RwLock::new(map));
        let (tx, rx) = mpsc::channel(4096);
        let writer = Writer {
            conn,
            ctx: WriterCtx {
                raters: raters.clone(),
                next_idx,
                seed: settings.seed,
                per_rater: settings.per_rater,
                items: items.clone(),
                reveal: config.reveal,
            },
        };
        std::thread::Builder::new()
            .name("rate-db-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::io(&config.db, e))?;
        Ok(RateApp {
            shared: Arc::new(Shared {
                items,
                raters,
                tx,
                admin_token: config.admin_token.clone(),
                reveal: config.reveal,
                db_path: config.db.clone(),
            }),
            settings,
        })
    }

    /// The number of items (prompt, pair of systems).
    pub fn items(&self) -> usize {
        self.shared.items.len()
    }

    /// The number of raters so far.
    pub fn raters(&self) -> usize {
        self.shared.raters.read().map(|m| m.len()).unwrap_or(0)
    }

    /// The seed of the orders (stored in the database).
    pub fn seed(&self) -> u64 {
        self.settings.seed
    }

    /// Each rater's number of items.
    pub fn per_rater(&self) -> usize {
        plan_len(self.shared.items.len(), self.settings.per_rater)
    }

    /// The routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(page))
            .route("/rate.js", get(page_js))
            .route("/admin", get(admin))
            .route("/admin.js", get(admin_js))
            .route("/health", get(|| async { "ok" }))
            .route("/api/state", get(state))
            .route("/api/vote", post(vote))
            .route("/api/undo", post(undo))
            .route("/api/admin/progress", get(admin_progress))
            .with_state(self.shared.clone())
    }

    /// Serves until `shutdown` completes.
    pub async fn serve_with_shutdown(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| Error::io(addr, e))
    }

    /// Serves until the process ends.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> Result<()> {
        self.serve_with_shutdown(listener, std::future::pending())
            .await
    }
}

struct Writer {
    conn: Connection,
    ctx: WriterCtx,
}

/// The writer's state besides its connection.
struct WriterCtx {
    raters: Raters,
    next_idx: u64,
    seed: u64,
    per_rater: u64,
    items: Vec<Item>,
    reveal: bool,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<(Cmd, Reply)>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            self.apply(batch);
        }
    }

    /// Applies a batch in one transaction; answers after the commit.
    fn apply(&mut self, batch: Vec<(Cmd, Reply)>) {
        let mut overlay: HashMap<String, RaterState> = HashMap::new();
        let ctx = &mut self.ctx;
        let mut next_idx = ctx.next_idx;
        let mut results = Vec::with_capacity(batch.len());
        let conn = &mut self.conn;
        let outcome = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for (cmd, reply) in batch {
                let r = ctx.apply_one(&tx, cmd, &mut overlay, &mut next_idx)?;
                results.push((reply, r));
            }
            tx.commit()
        })();
        match outcome {
            Ok(()) => {
                ctx.next_idx = next_idx;
                match ctx.raters.write() {
                    Ok(mut m) => m.extend(overlay),
                    Err(p) => p.into_inner().extend(overlay),
                }
                for (reply, r) in results {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!("rating database: {e}; the batch was rolled back");
                for (reply, _) in results {
                    let _ = reply.send(Err(ApiError::Internal(format!(
                        "the vote was not saved: {e}"
                    ))));
                }
            }
        }
    }
}

impl WriterCtx {
    fn state_of(&self, overlay: &HashMap<String, RaterState>, name: &str) -> Option<RaterState> {
        overlay
            .get(name)
            .cloned()
            .or_else(|| self.raters.read().ok().and_then(|m| m.get(name).cloned()))
    }

    /// One command. An `Err` is a database error (the batch fails); a refused command is an
    /// `Ok(Err(..))`.
    fn apply_one(
        &self,
        tx: &rusqlite::Transaction<'_>,
        cmd: Cmd,
        overlay: &mut HashMap<String, RaterState>,
        next_idx: &mut u64,
    ) -> rusqlite::Result<std::result::Result<Ack, ApiError>> {
        match cmd {
            Cmd::Join(name) => {
                if let Some(state) = self.state_of(overlay, &name) {
                    return Ok(Ok(Ack { state, voted: None }));
                }
                let idx = *next_idx;
                let plan = rater_plan(self.seed, self.items.len(), self.per_rater, &name, idx);
                tx.execute(
                    "INSERT INTO raters (name, idx, total, joined_ts) VALUES (?1, ?2, ?3, ?4)",
                    params![name, idx as i64, plan.len() as i64, db::now_ms()],
                )?;
                *next_idx += 1;
                let state = RaterState {
                    plan: Arc::new(plan),
                    pos: 0,
                };
                overlay.insert(name, state.clone());
                Ok(Ok(Ack { state, voted: None }))
            }
            Cmd::Vote { rater, pos, choice } => {
                let Some(mut state) = self.state_of(overlay, &rater) else {
                    return Ok(Err(ApiError::BadRequest(format!(
                        "unknown rater {rater:?}: open the page first"
                    ))));
                };
                if pos != state.pos || pos >= state.plan.len() {
                    let why = if state.pos >= state.plan.len() {
                        "every pair is rated already".to_string()
                    } else {
                        format!(
                            "the vote is for pair {} but the rater is at pair {}",
                            pos + 1,
                            state.pos + 1
                        )
                    };
                    return Ok(Err(ApiError::Conflict(why, Some(rater))));
                }
                let (item_id, left) = state.plan[pos];
                let winner = match (choice, left) {
                    (Choice::Left, Side::A) | (Choice::Right, Side::B) => Winner::A,
                    (Choice::Left, Side::B) | (Choice::Right, Side::A) => Winner::B,
                    (Choice::Tie, _) => Winner::Tie,
                    (Choice::BothBad, _) => Winner::BothBad,
                };
                tx.execute(
                    "INSERT INTO votes (rater, pos, item_id, winner, left_side, ts)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        rater,
                        pos as i64,
                        item_id as i64,
                        db::winner_str(winner),
                        if left == Side::A { "a" } else { "b" },
                        db::now_ms()
                    ],
                )?;
                state.pos += 1;
                overlay.insert(rater, state.clone());
                let voted = self.reveal.then(|| {
                    let it = &self.items[item_id as usize];
                    match left {
                        Side::A => (it.system_a.clone(), it.system_b.clone()),
                        Side::B => (it.system_b.clone(), it.system_a.clone()),
                    }
                });
                Ok(Ok(Ack { state, voted }))
            }
            Cmd::Undo(rater) => {
                let Some(mut state) = self.state_of(overlay, &rater) else {
                    return Ok(Err(ApiError::BadRequest(format!(
                        "unknown rater {rater:?}: open the page first"
                    ))));
                };
                if state.pos == 0 {
                    return Ok(Err(ApiError::Conflict(
                        "nothing to undo".into(),
                        Some(rater),
                    )));
                }
                let pos = (state.pos - 1) as i64;
                tx.execute(
                    "INSERT INTO undone (rater, pos, item_id, winner, left_side, ts, undone_ts)
                     SELECT rater, pos, item_id, winner, left_side, ts, ?3 FROM votes
                     WHERE rater = ?1 AND pos = ?2",
                    params![rater, pos, db::now_ms()],
                )?;
                tx.execute(
                    "DELETE FROM votes WHERE rater = ?1 AND pos = ?2",
                    params![rater, pos],
                )?;
                state.pos -= 1;
                overlay.insert(rater, state.clone());
                Ok(Ok(Ack { state, voted: None }))
            }
        }
    }
}

/// What the page sees: never a system name, item id or side (see the module docs).
#[derive(Serialize)]
struct View<'a> {
    rater: &'a str,
    /// 0-based position of the pair shown (= votes so far).
    pos: usize,
    total: usize,
    done: bool,
    prompt: Option<&'a str>,
    left: Option<&'a str>,
    right: Option<&'a str>,
    can_undo: bool,
    /// With `--reveal`: the systems of the pair just voted, left and right.
    #[serde(skip_serializing_if = "Option::is_none")]
    revealed: Option<Revealed>,
}

#[derive(Serialize)]
struct Revealed {
    left: String,
    right: String,
}

fn view(shared: &Shared, rater: &str, ack: Ack) -> Response {
    no_store(axum::Json(view_value(shared, rater, ack)).into_response())
}

fn view_value(shared: &Shared, rater: &str, ack: Ack) -> serde_json::Value {
    let st = &ack.state;
    let total = st.plan.len();
    let current = st
        .plan
        .get(st.pos)
        .map(|&(i, left)| (&shared.items[i as usize], left));
    let (prompt, left, right) = match current {
        Some((it, Side::A)) => (
            Some(it.prompt.as_str()),
            Some(it.response_a.as_str()),
            Some(it.response_b.as_str()),
        ),
        Some((it, Side::B)) => (
            Some(it.prompt.as_str()),
            Some(it.response_b.as_str()),
            Some(it.response_a.as_str()),
        ),
        None => (None, None, None),
    };
    let v = View {
        rater,
        pos: st.pos,
        total,
        done: st.pos >= total,
        prompt,
        left,
        right,
        can_undo: st.pos > 0,
        revealed: ack.voted.map(|(left, right)| Revealed { left, right }),
    };
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(shared: &Shared, e: ApiError) -> Response {
    let (status, body) = match e {
        ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, json!({ "error": m })),
        ApiError::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            json!({ "error": "the admin token is missing or wrong" }),
        ),
        ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": m })),
        ApiError::Conflict(m, rater) => {
            let mut body = json!({ "error": m });
            let current = rater.and_then(|r| {
                let st = shared.raters.read().ok()?.get(&r).cloned()?;
                Some(view_value(
                    shared,
                    &r,
                    Ack {
                        state: st,
                        voted: None,
                    },
                ))
            });
            if let Some(v) = current {
                body["state"] = v;
            }
            (StatusCode::CONFLICT, body)
        }
    };
    no_store((status, axum::Json(body)).into_response())
}

async fn send(shared: &Shared, cmd: Cmd) -> std::result::Result<Ack, ApiError> {
    let (tx, rx) = oneshot::channel();
    shared
        .tx
        .send((cmd, tx))
        .await
        .map_err(|_| ApiError::Internal("the database writer has stopped".into()))?;
    rx.await
        .map_err(|_| ApiError::Internal("the database writer has stopped".into()))?
}

fn html(body: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    no_store(r)
}

fn js(body: &'static str) -> Response {
    no_store(
        (
            [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
            body,
        )
            .into_response(),
    )
}

async fn page() -> Response {
    html(PAGE)
}
async fn page_js() -> Response {
    js(PAGE_JS)
}
async fn admin() -> Response {
    html(ADMIN)
}
async fn admin_js() -> Response {
    js(ADMIN_JS)
}

#[derive(Deserialize)]
struct StateQuery {
    rater: String,
}

async fn state(
    State(shared): State<Arc<Shared>>,
    q: std::result::Result<Query<StateQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(
            &shared,
            ApiError::BadRequest("GET /api/state needs ?rater=NAME".into()),
        );
    };
    let name = match check_rater_name(&q.rater) {
        Ok(n) => n.to_string(),
        Err(m) => return error(&shared, ApiError::BadRequest(m)),
    };
    let known = shared
        .raters
        .read()
        .ok()
        .and_then(|m| m.get(&name).cloned());
    let ack = match known {
        Some(state) => Ack { state, voted: None },
        None => match send(&shared, Cmd::Join(name.clone())).await {
            Ok(a) => a,
            Err(e) => return error(&shared, e),
        },
    };
    view(&shared, &name, ack)
}

#[derive(Deserialize)]
struct VoteBody {
    rater: String,
    pos: usize,
    choice: Choice,
}

async fn vote(
    State(shared): State<Arc<Shared>>,
    body: std::result::Result<axum::Json<VoteBody>, JsonRejection>,
) -> Response {
    let b = match body {
        Ok(axum::Json(b)) => b,
        Err(e) => {
            return error(
                &shared,
                ApiError::BadRequest(format!(
                    "POST /api/vote wants {{\"rater\", \"pos\", \"choice\": \"left\"|\"right\"|\"tie\"|\"both_bad\"}}: {}",
                    e.body_text()
                )),
            );
        }
    };
    let name = match check_rater_name(&b.rater) {
        Ok(n) => n.to_string(),
        Err(m) => return error(&shared, ApiError::BadRequest(m)),
    };
    let cmd = Cmd::Vote {
        rater: name.clone(),
        pos: b.pos,
        choice: b.choice,
    };
    match send(&shared, cmd).await {
        Ok(ack) => view(&shared, &name, ack),
        Err(e) => error(&shared, e),
    }
}

#[derive(Deserialize)]
struct UndoBody {
    rater: String,
}

async fn undo(
    State(shared): State<Arc<Shared>>,
    body: std::result::Result<axum::Json<UndoBody>, JsonRejection>,
) -> Response {
    let b = match body {
        Ok(axum::Json(b)) => b,
        Err(e) => {
            return error(
                &shared,
                ApiError::BadRequest(format!(
                    "POST /api/undo wants {{\"rater\"}}: {}",
                    e.body_text()
                )),
            );
        }
    };
    let name = match check_rater_name(&b.rater) {
        Ok(n) => n.to_string(),
        Err(m) => return error(&shared, ApiError::BadRequest(m)),
    };
    match send(&shared, Cmd::Undo(name.clone())).await {
        Ok(ack) => view(&shared, &name, ack),
        Err(e) => error(&shared, e),
    }
}

/// Constant-time comparison of the bearer token.
fn token_ok(headers: &HeaderMap, token: &str) -> bool {
    let Some(got) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (got.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn admin_progress(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !token_ok(&headers, &shared.admin_token) {
        return error(&shared, ApiError::Unauthorized);
    }
    let path = shared.db_path.clone();
    let reveal = shared.reveal;
    let r = tokio::task::spawn_blocking(move || {
        let conn = db::open_read_only(&path)?;
        db::progress(&path, &conn)
    })
    .await;
    match r {
        Ok(Ok(p)) => {
            no_store(axum::Json(json!({ "progress": p, "reveal": reveal })).into_response())
        }
        Ok(Err(e)) => error(&shared, ApiError::Internal(e.to_string())),
        Err(e) => error(&shared, ApiError::Internal(e.to_string())),
    }
}
