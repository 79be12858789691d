//! The rating app under load: 50 raters voting at once, each vote acknowledged only after its
//! SQLite transaction has committed (WAL, `synchronous=FULL`).
//!
//! `cargo bench --bench eval_rate` (release). In one process: a [`RateApp`] on 127.0.0.1 with
//! its own 1-thread runtime, and a client runtime of 1 thread that runs every rater, so the two
//! share the machine's 2 cores as a server and a browser crowd on one box would. Items: 180
//! prompts answered by 4 systems, all 6 pairs (1,080 pairs per rater).
//!
//! Each rater registers (`GET /api/state?rater=…`) and then votes as fast as it can, with no
//! pause between votes (a closed loop: far harsher than people, who take seconds a vote). Timed,
//! per request, from send to the parsed reply:
//! - **baseline:** the same 50 clients each sending `GET /health` (no database) as fast as they
//!   can, run just before, so the vote figures can be read against what the HTTP stack alone costs
//!   on this machine at this concurrency;
//! - **votes:** `POST /api/vote`.
//!
//! Then the server is stopped and the database is read back with a fresh connection: every
//! acknowledged vote must be there, with its rater, position and choice, and no other (the target
//! is p99 under 50 ms a vote and no vote lost).
//!
//! Environment: `KOALA_BENCH_RATERS` (default 50), `KOALA_BENCH_VOTES` (votes per rater, 100).
#[path = "common/stats.rs"]
mod stats;
use stats::percentile;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use koala_eval::rate::db::{self, Item};
use koala_eval::rate::{RateApp, RateConfig};
use koala_eval::{Side, Winner};
use serde_json::{Value, json};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn items() -> Vec<Item> {
    let systems = ["alpaca", "chatgpt", "koala-all", "koala-distill"];
    let mut items = Vec::new();
    for p in 0..180 {
        for i in 0..systems.len() {
            for j in i + 1..systems.len() {
                items.push(Item {
                    prompt_id: format!("koala_{p}"),
                    set: "koala".into(),
                    prompt: format!("Question {p}: explain something at some length."),
                    system_a: systems[i].into(),
                    system_b: systems[j].into(),
                    response_a: format!("{} says: {}", systems[i], "words ".repeat(120)),
                    response_b: format!("{} says: {}", systems[j], "other words ".repeat(90)),
                });
            }
        }
    }
    items
}

struct Summary {
    n: usize,
    secs: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

fn summarise(lat: Vec<Duration>, secs: f64) -> Summary {
    let mut ms: Vec<f64> = lat.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    Summary {
        n: ms.len(),
        secs,
        p50: percentile(&ms, 50.0),
        p90: percentile(&ms, 90.0),
        p99: percentile(&ms, 99.0),
        max: percentile(&ms, 100.0),
    }
}

fn print(label: &str, s: &Summary) {
    println!(
        "{label:<22} {:>7} requests in {:>6.2} s ({:>7.0}/s)   p50 {:>6.2} ms   p90 {:>6.2} ms   p99 {:>6.2} ms   max {:>7.2} ms",
        s.n,
        s.secs,
        s.n as f64 / s.secs,
        s.p50,
        s.p90,
        s.p99,
        s.max
    );
}

/// What the server acknowledged: (rater, pos) → choice.
type Acks = BTreeMap<(String, u64), &'static str>;

const CHOICES: [&str; 4] = ["left", "right", "tie", "both_bad"];

async fn rater(
    http: reqwest::Client,
    base: Arc<str>,
    name: String,
    votes: usize,
) -> (Vec<Duration>, Acks) {
    let state: Value = http
        .get(format!("{base}/api/state?rater={name}"))
        .send()
        .await
        .expect("GET /api/state")
        .json()
        .await
        .expect("state JSON");
    let mut pos = state["pos"].as_u64().expect("state has pos");
    let mut lat = Vec::with_capacity(votes);
    let mut acks = Acks::new();
    for k in 0..votes {
        let choice = CHOICES[(k + name.len()) % 4];
        let t = Instant::now();
        let resp = http
            .post(format!("{base}/api/vote"))
            .json(&json!({"rater": name, "pos": pos, "choice": choice}))
            .send()
            .await
            .expect("POST /api/vote");
        let status = resp.status();
        let body: Value = resp.json().await.expect("vote reply JSON");
        lat.push(t.elapsed());
        assert!(status.is_success(), "vote {pos} of {name}: {status} {body}");
        acks.insert((name.clone(), pos), choice);
        pos = body["pos"].as_u64().expect("vote reply has pos");
    }
    (lat, acks)
}

async fn health(http: reqwest::Client, base: Arc<str>, n: usize) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let resp = http
            .get(format!("{base}/health"))
            .send()
            .await
            .expect("GET /health");
        assert!(resp.status().is_success());
        resp.bytes().await.expect("health body");
        lat.push(t.elapsed());
    }
    lat
}

fn main() {
    let raters = env("KOALA_BENCH_RATERS", 50);
    let votes = env("KOALA_BENCH_VOTES", 100);
    let dir = tempfile::tempdir().expect("temp dir");
    let db_path = dir.path().join("ratings.sqlite");
    let items = items();
    let mut config = RateConfig::new(db_path.clone(), "bench-token".into());
    config.seed = Some(7);
    let app = RateApp::open(&config, &items).expect("open the rating app");
    println!(
        "eval_rate: {} pairs per rater, {raters} raters x {votes} votes, database {}",
        app.per_rater(),
        db_path.display()
    );

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = server_rt.spawn(app.serve_with_shutdown(listener, async {
        let _ = stop_rx.await;
    }));

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime");
    let base: Arc<str> = format!("http://{addr}").into();
    // One connection per rater, as 50 browsers would hold.
    let clients: Vec<reqwest::Client> = (0..raters)
        .map(|_| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("client")
        })
        .collect();

    // Baseline: /health from the same 50 clients, same closed loop.
    let (health_sum, vote_sum, acks) = client_rt.block_on(async {
        // Warm every connection first.
        for c in &clients {
            health(c.clone(), base.clone(), 3).await;
        }
        let t = Instant::now();
        let tasks: Vec<_> = clients
            .iter()
            .map(|c| tokio::spawn(health(c.clone(), base.clone(), votes)))
            .collect();
        let mut lat = Vec::new();
        for task in tasks {
            lat.extend(task.await.expect("health task"));
        }
        let health_sum = summarise(lat, t.elapsed().as_secs_f64());

        let t = Instant::now();
        let tasks: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                tokio::spawn(rater(
                    c.clone(),
                    base.clone(),
                    format!("rater{i:02}"),
                    votes,
                ))
            })
            .collect();
        let mut lat = Vec::new();
        let mut acks = Acks::new();
        for task in tasks {
            let (l, a) = task.await.expect("rater task");
            lat.extend(l);
            acks.extend(a);
        }
        (health_sum, summarise(lat, t.elapsed().as_secs_f64()), acks)
    });
    drop(clients);
    drop(client_rt);
    let _ = stop_tx.send(());
    server_rt
        .block_on(server)
        .expect("server task")
        .expect("server");
    drop(server_rt);

    print("baseline GET /health", &health_sum);
    print("POST /api/vote", &vote_sum);
    println!(
        "vote p99 / health p99 = {:.2}x;  vote p50 / health p50 = {:.2}x",
        vote_sum.p99 / health_sum.p99,
        vote_sum.p50 / health_sum.p50
    );

    // Every acknowledged vote is in the database, as it was cast, and nothing else is.
    let conn = db::open_read_only(&db_path).expect("open the database");
    let rows = db::export(&db_path, &conn).expect("export");
    let mut next: BTreeMap<&str, u64> = BTreeMap::new();
    let mut stored = 0usize;
    for row in &rows {
        let pos = next.entry(row.rater.as_str()).or_insert(0);
        let choice = acks.get(&(row.rater.clone(), *pos)).unwrap_or_else(|| {
            panic!(
                "stored vote {} of {} was never acknowledged",
                pos, row.rater
            )
        });
        let expected = match (*choice, row.left) {
            ("left", Side::A) | ("right", Side::B) => Winner::A,
            ("left", Side::B) | ("right", Side::A) => Winner::B,
            ("tie", _) => Winner::Tie,
            _ => Winner::BothBad,
        };
        assert_eq!(
            row.winner, expected,
            "vote {pos} of {}: stored {:?}, cast {choice}",
            row.rater, row.winner
        );
        *pos += 1;
        stored += 1;
    }
    assert_eq!(
        stored,
        acks.len(),
        "{} votes acknowledged, {stored} stored",
        acks.len()
    );
    println!(
        "no vote lost: {} acknowledged, {stored} stored, every one with the choice cast",
        acks.len()
    );
    let target = 50.0;
    println!(
        "target p99 < {target} ms a vote: {} ({:.2} ms)",
        if vote_sum.p99 < target {
            "met"
        } else {
            "NOT met"
        },
        vote_sum.p99
    );
}
