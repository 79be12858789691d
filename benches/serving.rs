//! Serving performance of the inference engine and the OpenAI-compatible server (issue 14), as
//! same-run ratios:
//!
//! ```sh
//! cargo bench --bench serving
//! ```
//!
//! 1. **Single-stream decode** against Hugging Face `transformers` `generate` on the CPU:
//!    `scripts/bench_decode_hf.py` builds (once, cached in `target/bench-model`) a seeded random
//!    58M-parameter LLaMA (8 layers, width 512, vocab 32000, f32, untied) and times greedy
//!    decoding of a fixed 25-token prompt with `torch.set_num_threads(THREADS)`. We load the same
//!    directory and time the same decode with our engine on a rayon pool of THREADS threads; the
//!    tokens must be identical (printed as MATCH, or MISMATCH at the first differing position).
//!    Tokens/s = new tokens / whole-request wall time, prompt prefill included, for both (HF:
//!    the `generate` call; ours: submit to the last token). Goal: at least 2x.
//! 2. **Batching**: aggregate tokens/s of 16 concurrent greedy streams (distinct prompts, all
//!    submitted at once, drained by one client thread) against 1 stream, same definition (first
//!    submit to the last stream's end, prefill included). Goal: at least 4x.
//!
//!    Both after a warm-up, in RUNS interleaved rounds of (HF in a fresh process: its own
//!    warm-up, then one timed `generate`; ours, 1 stream; ours, 16 streams), so that a busy
//!    neighbour on a shared machine slows both sides of a ratio alike; each figure is the
//!    median over the rounds.
//! 3. **Time to first token** over HTTP: the real server, `koala serve-model` (built by cargo
//!    with this bench) as a child process on 127.0.0.1:0 with its defaults (max_batch 16,
//!    queue 64, 2 tokio workers) and RAYON_NUM_THREADS=THREADS; its log goes to
//!    `target/bench-serving-server.log`. 32 concurrent streaming `/v1/completions` clients per
//!    round (token-id prompts, temperature 0) from this process; TTFT is from
//!    sending the request to the first SSE chunk with text; p50 and p99 over all rounds. Also the
//!    KV-cache bytes per token of context.
//! 4. **Stress**: 500 streaming requests from 64 concurrent clients; every 5th client (clients
//!    4, 9, 14, ...) drops its connection after 3 content chunks of each of its requests. Every
//!    other request must end in a complete answer (`finish_reason` then `[DONE]`) or a clean
//!    error (HTTP 503 with OpenAI's error JSON when the queue is full); anything else is counted
//!    and must be 0. The server's resident memory (VmRSS) is read after the TTFT phase and a warm-up that
//!    reads every page of the memory-mapped embedding table (model fully resident, server warm),
//!    and again once the engine is idle after the stress run (active and waiting 0, then 1 s);
//!    goal: within 10%. Private memory (RssAnon) is printed beside it.
//!
//! Knobs (environment): `KOALA_BENCH_TOKENS` (new tokens per decode, default 128),
//! `KOALA_BENCH_THREADS` (default 2), `KOALA_BENCH_RUNS` (default 3), `KOALA_BENCH_STREAMS`
//! (default 16), `KOALA_BENCH_TTFT_CLIENTS` (32), `KOALA_BENCH_TTFT_ROUNDS` (3),
//! `KOALA_BENCH_TTFT_TOKENS` (32), `KOALA_BENCH_STRESS_REQUESTS` (500),
//! `KOALA_BENCH_STRESS_CLIENTS` (64), `KOALA_BENCH_STRESS_ROUNDS` (1: more runs the stress again
//! and prints the memory after each, to tell a plateau from a leak), `KOALA_BENCH_MODEL_DIR` (default `target/bench-model`),
//! `KOALA_PYTHON` (else `~/.cache/torchvenv/bin/python`, else `python3`). Without torch and
//! transformers the HF comparison is skipped with a message (and, with no cached model, the
//! whole bench). A missed goal prints MISSED. Writes `target/bench-serving.json`.
#[path = "common/env.rs"]
mod env;
#[path = "common/stats.rs"]
mod stats;
use env::{env_usize, median, root, verdict};
use stats::percentile;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use koala_model::{Engine, EngineConfig, Event, Request, SampleParams, Weights};
use serde_json::{Value, json};

/// The same allocator as the `koala` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn python() -> String {
    if let Ok(p) = std::env::var("KOALA_PYTHON") {
        return p;
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = Path::new(&home).join(".cache/torchvenv/bin/python");
        if p.exists() {
            return p.to_string_lossy().into_owned();
        }
    }
    "python3".into()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_u64())
                .map(|t| t as u32)
                .collect()
        })
        .unwrap_or_default()
}

/// The fixed 25-token prompt of `scripts/bench_decode_hf.py`.
fn base_prompt() -> Vec<u32> {
    (0..25u32).map(|i| (17 + 1231 * i) % 32000).collect()
}

/// A distinct 25-token prompt per stream (stream 0 gets the base prompt).
fn prompt_for(stream: usize, vocab: usize) -> Vec<u32> {
    (0..25u32)
        .map(|i| ((17 + 1231 * i as usize + 7919 * stream) % vocab) as u32)
        .collect()
}

/// A `kB` field of `/proc/PID/status` (0 when absent).
fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs the HF baseline; `None` (with the reason printed) when it cannot run.
fn hf_baseline(dir: &Path, tokens: usize, threads: usize) -> Option<Value> {
    let py = python();
    let script = root().join("scripts/bench_decode_hf.py");
    eprintln!(
        "HF baseline: {py} {} (builds the model on first use)",
        script.display()
    );
    let out = std::process::Command::new(&py)
        .arg(&script)
        .arg("--dir")
        .arg(dir)
        .args(["--new-tokens", &tokens.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--runs", "1"])
        .env("TOKENIZERS_PARALLELISM", "false")
        .stderr(std::process::Stdio::inherit())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            println!("skipped: HF baseline: cannot run {py}: {e}");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{'));
    let v: Option<Value> = line.and_then(|l| serde_json::from_str(l).ok());
    match v {
        Some(v) if v.get("skipped").is_some() => {
            println!(
                "skipped: HF baseline ({py}): {} (install torch and transformers, or set KOALA_PYTHON)",
                v["skipped"].as_str().unwrap_or("")
            );
            None
        }
        Some(v) if out.status.success() => Some(v),
        _ => {
            println!(
                "skipped: HF baseline failed ({}): {}",
                out.status,
                text.trim()
            );
            None
        }
    }
}

/// One single-stream greedy decode: (seconds, tokens).
fn single_once(engine: &Engine, prompt: &[u32], n: usize) -> (f64, Vec<u32>) {
    let t0 = Instant::now();
    let out = engine
        .generate(Request::new(prompt.to_vec(), n, SampleParams::greedy()))
        .expect("decode");
    (t0.elapsed().as_secs_f64(), out.tokens)
}

/// `streams` concurrent greedy streams: (seconds, tokens in all, stream 0's tokens).
///
/// All are submitted at once from this thread, which then drains them in order (a stream's
/// events queue while it waits): one client thread, as a server has one runtime, rather than 16
/// OS threads each woken per token on a 2-core machine.
fn batched_once(engine: &Engine, streams: usize, n: usize) -> (f64, usize, Vec<u32>) {
    let vocab = engine.config().vocab_size;
    let t0 = Instant::now();
    let subs: Vec<_> = (0..streams)
        .map(|i| {
            let r = Request::new(prompt_for(i, vocab), n, SampleParams::greedy());
            engine.submit(r).expect("batched submit")
        })
        .collect();
    let mut outs = Vec::new();
    for mut s in subs {
        let mut toks = Vec::new();
        loop {
            match s.blocking_next() {
                Some(Event::Token(t)) => toks.push(t),
                Some(Event::Done { .. }) => break,
                other => panic!("batched decode: {other:?}"),
            }
        }
        outs.push(toks);
    }
    let dt = t0.elapsed().as_secs_f64();
    let total = outs.iter().map(Vec::len).sum();
    (dt, total, outs.into_iter().next().unwrap_or_default())
}

/// How one streamed request ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// `finish_reason` then `[DONE]`.
    Complete { chunks: usize },
    /// HTTP 503 with an error JSON (queue full).
    CleanError,
    /// An error JSON event inside the stream (the engine failed): clean, but not expected.
    StreamError(String),
    /// We dropped the connection on purpose.
    Cancelled,
    /// Anything else (must not happen).
    Other(String),
}

struct Timed {
    outcome: Outcome,
    /// Seconds from sending to the first chunk with text.
    ttft: Option<f64>,
}

/// One streaming `/v1/completions` request; drops the connection after `cancel_after` chunks.
async fn stream_request(
    client: &reqwest::Client,
    base: &str,
    prompt: &[u32],
    max_tokens: usize,
    cancel_after: Option<usize>,
) -> Timed {
    let body = json!({
        "model": "bench",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
    });
    let t0 = Instant::now();
    let other = |m: String| Timed {
        outcome: Outcome::Other(m),
        ttft: None,
    };
    let mut r = match client
        .post(format!("{base}/v1/completions"))
        .json(&body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return other(format!("send: {e}")),
    };
    let status = r.status().as_u16();
    if status != 200 {
        let text = r.text().await.unwrap_or_default();
        let is_err_json = serde_json::from_str::<Value>(&text)
            .ok()
            .is_some_and(|v| v["error"]["message"].is_string());
        let outcome = if status == 503 && is_err_json {
            Outcome::CleanError
        } else {
            Outcome::Other(format!("HTTP {status}: {text}"))
        };
        return Timed {
            outcome,
            ttft: None,
        };
    }
    let mut buf = String::new();
    let mut ttft = None;
    let mut chunks = 0usize;
    let mut finish = None::<String>;
    loop {
        let c = match r.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return other(format!(
                    "stream ended without [DONE] after {chunks} chunks (finish {finish:?})"
                ));
            }
            Err(e) => return other(format!("reading the stream: {e}")),
        };
        buf.push_str(&String::from_utf8_lossy(&c));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            for line in block.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue; // keep-alive comments
                };
                let data = data.trim_start();
                if data == "[DONE]" {
                    let outcome = if finish.is_some() {
                        Outcome::Complete { chunks }
                    } else {
                        Outcome::Other("[DONE] without a finish_reason".into())
                    };
                    return Timed { outcome, ttft };
                }
                let v: Value = match serde_json::from_str(data) {
                    Ok(v) => v,
                    Err(e) => return other(format!("bad SSE JSON ({e}): {data}")),
                };
                if let Some(m) = v["error"]["message"].as_str() {
                    return Timed {
                        outcome: Outcome::StreamError(m.to_string()),
                        ttft,
                    };
                }
                let ch = &v["choices"][0];
                if ch["text"].as_str().is_some_and(|t| !t.is_empty()) {
                    chunks += 1;
                    if ttft.is_none() {
                        ttft = Some(t0.elapsed().as_secs_f64());
                    }
                }
                if let Some(f) = ch["finish_reason"].as_str() {
                    finish = Some(f.to_string());
                }
            }
        }
        if cancel_after.is_some_and(|n| chunks >= n) && finish.is_none() {
            drop(r); // the client leaves mid-stream
            return Timed {
                outcome: Outcome::Cancelled,
                ttft,
            };
        }
    }
}

/// `koala serve-model` (the real binary, with its allocator and runtime) on 127.0.0.1:0.
struct ServerHandle {
    base: String,
    child: std::process::Child,
}

impl ServerHandle {
    fn start(dir: &Path, threads: usize) -> Self {
        let log = root().join("target/bench-serving-server.log");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_koala"))
            .args(["serve-model", "--listen", "127.0.0.1:0", "--device", "cpu"])
            .arg("--model")
            .arg(format!("bench={}", dir.display()))
            .env("RAYON_NUM_THREADS", threads.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(
                std::fs::File::create(&log)
                    .map(std::process::Stdio::from)
                    .unwrap_or_else(|_| std::process::Stdio::null()),
            )
            .spawn()
            .expect("starting koala serve-model");
        let out = child.stdout.take().expect("server stdout");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)
            .expect("reading the server's address");
        let Some(addr) = line.trim().strip_prefix("koala serve-model: listening on ") else {
            let _ = child.kill();
            panic!(
                "koala serve-model did not start (`{}`); see {}",
                line.trim(),
                log.display()
            );
        };
        ServerHandle {
            base: addr.to_string(),
            child,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the engine holds no sequence and no request waits (`/health`).
    async fn wait_idle(&self, client: &reqwest::Client) {
        let t0 = Instant::now();
        loop {
            let idle = match client.get(format!("{}/health", self.base)).send().await {
                Ok(r) => r.json::<Value>().await.ok().is_some_and(|v| {
                    v["models"][0]["active"] == 0 && v["models"][0]["waiting"] == 0
                }),
                Err(_) => false,
            };
            if idle {
                return;
            }
            if t0.elapsed() > Duration::from_secs(120) {
                println!("warning: the engine is still busy after 120 s");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default, Debug)]
struct StressCounts {
    complete: usize,
    clean_error: usize,
    stream_error: usize,
    cancelled: usize,
    other: usize,
    other_examples: Vec<String>,
}

fn main() {
    let n = env_usize("KOALA_BENCH_TOKENS", 128);
    let threads = env_usize("KOALA_BENCH_THREADS", 2);
    let runs = env_usize("KOALA_BENCH_RUNS", 3).max(1);
    let streams = env_usize("KOALA_BENCH_STREAMS", 16);
    let ttft_clients = env_usize("KOALA_BENCH_TTFT_CLIENTS", 32);
    let ttft_rounds = env_usize("KOALA_BENCH_TTFT_ROUNDS", 3).max(1);
    let ttft_tokens = env_usize("KOALA_BENCH_TTFT_TOKENS", 32);
    let stress_requests = env_usize("KOALA_BENCH_STRESS_REQUESTS", 500);
    let stress_clients = env_usize("KOALA_BENCH_STRESS_CLIENTS", 64).max(1);
    let stress_rounds = env_usize("KOALA_BENCH_STRESS_ROUNDS", 1).max(1);
    let dir = std::env::var_os("KOALA_BENCH_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/bench-model"));
    let load_start = loadavg();

    // The engine's projections and attention run on rayon's global pool.
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("rayon pool");

    // 1. HF baseline: its first run builds the model when absent.
    let mut hf_runs: Vec<Value> = hf_baseline(&dir, n, threads).into_iter().collect();
    if !dir.join("model.safetensors").exists() {
        println!(
            "skipped: no bench model in {} (it is made by scripts/bench_decode_hf.py, which needs torch and transformers)",
            dir.display()
        );
        return;
    }
    let w = Arc::new(Weights::load(&dir).expect("loading the bench model"));
    let cfg = w.cfg.clone();
    let params = w.n_params();
    let kv_per_token = koala_model::kv::bytes_per_token(&cfg);
    println!(
        "model: {} ({} layers, width {}, vocab {}, {:.1}M parameters, f32); {threads} threads; {n} new tokens; load {load_start}",
        dir.display(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.vocab_size,
        params as f64 / 1e6
    );

    // 2. Rounds of: HF single stream (a fresh process: warm-up + one timed run), ours single
    //    stream, ours 16 streams. Interleaved, so that a noisy neighbour on a shared VM slows
    //    both sides of each ratio alike; medians over the rounds.
    let engine = Engine::cpu(w.clone(), EngineConfig::default());
    let prompt = base_prompt();
    single_once(&engine, &prompt, n);
    batched_once(&engine, streams, n);
    let (mut ours_times, mut batch_times, mut batch_rates) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ours_tokens, mut batch_first) = (Vec::new(), Vec::new());
    for round in 0..runs {
        if round > 0 && !hf_runs.is_empty() {
            hf_runs.extend(hf_baseline(&dir, n, threads));
        }
        let (dt, toks) = single_once(&engine, &prompt, n);
        ours_times.push(dt);
        ours_tokens = toks;
        let (bt, total, first) = batched_once(&engine, streams, n);
        batch_times.push(bt);
        batch_rates.push(total as f64 / bt);
        batch_first = first;
        println!(
            "round {}: HF {} tok/s, ours {:.1} tok/s, {streams} streams {:.1} tok/s",
            round + 1,
            hf_runs
                .get(round)
                .and_then(|v| v["tokens_per_s"].as_f64())
                .map_or("n/a".into(), |h| format!("{h:.1}")),
            n as f64 / dt,
            total as f64 / bt
        );
    }
    let ours_tps = n as f64 / median(ours_times.clone());
    let hf_rates: Vec<f64> = hf_runs
        .iter()
        .filter_map(|v| v["tokens_per_s"].as_f64())
        .collect();
    let hf_tps = (!hf_rates.is_empty()).then(|| median(hf_rates.clone()));
    let hf_tokens = hf_runs.first().map(|v| ids(&v["tokens"]));
    let hf_consistent = hf_runs.iter().all(|v| Some(ids(&v["tokens"])) == hf_tokens);
    let parity = match &hf_tokens {
        None => "n/a (no HF baseline)".to_string(),
        Some(t) if *t == ours_tokens && hf_consistent => format!("MATCH ({} tokens)", t.len()),
        Some(t) if *t == ours_tokens => "MISMATCH between HF runs".to_string(),
        Some(t) => {
            let k = t
                .iter()
                .zip(&ours_tokens)
                .position(|(a, b)| a != b)
                .unwrap_or(t.len().min(ours_tokens.len()));
            format!("MISMATCH at position {k}")
        }
    };
    let decode_ratio = hf_tps.map(|h| ours_tps / h);
    println!(
        "single stream: ours {ours_tps:.1} tok/s (runs {ours_times:.3?} s), HF {} tok/s (runs {hf_rates:.1?}); greedy tokens {parity}",
        hf_tps.map_or("n/a".into(), |h| format!("{h:.1}"))
    );

    let batch_tps = median(batch_rates.clone());
    let batch_ratio = batch_tps / ours_tps;
    let batch_same = batch_first == ours_tokens;
    println!(
        "batching: {streams} streams {batch_tps:.1} tok/s aggregate (runs {batch_times:.3?} s), 1 stream {ours_tps:.1} tok/s: {batch_ratio:.2}x; stream 0 in the batch {} the single stream",
        if batch_same { "equals" } else { "DIFFERS from" }
    );
    drop(engine);
    drop(w);

    // 3. The HTTP server: time to first token with concurrent streaming clients.
    let server = ServerHandle::start(&dir, threads);
    let base = server.base.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let vocab = cfg.vocab_size;
    let warm = rt.block_on(stream_request(&client, &base, &prompt, 8, None));
    assert!(
        matches!(warm.outcome, Outcome::Complete { .. }),
        "warm-up request: {:?}",
        warm.outcome
    );
    let mut ttfts = Vec::new();
    let mut ttft_bad = Vec::new();
    for round in 0..ttft_rounds {
        let res: Vec<Timed> = rt.block_on(async {
            let hs: Vec<_> = (0..ttft_clients)
                .map(|i| {
                    let (c, b) = (client.clone(), base.clone());
                    let p = prompt_for(round * ttft_clients + i, vocab);
                    tokio::spawn(async move { stream_request(&c, &b, &p, ttft_tokens, None).await })
                })
                .collect();
            let mut out = Vec::new();
            for h in hs {
                out.push(h.await.unwrap());
            }
            out
        });
        for t in res {
            match (&t.outcome, t.ttft) {
                (Outcome::Complete { .. }, Some(s)) => ttfts.push(s),
                (o, _) => ttft_bad.push(format!("{o:?}")),
            }
        }
        rt.block_on(server.wait_idle(&client));
    }
    ttfts.sort_by(f64::total_cmp);
    let (p50, p99) = if ttfts.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        (percentile(&ttfts, 50.0), percentile(&ttfts, 99.0))
    };
    println!(
        "time to first token, {ttft_clients} concurrent clients x {ttft_rounds} rounds ({ttft_tokens} tokens each): p50 {:.1} ms, p99 {:.1} ms ({} samples{})",
        p50 * 1e3,
        p99 * 1e3,
        ttfts.len(),
        if ttft_bad.is_empty() {
            String::new()
        } else {
            format!(
                ", {} failed: {:?}",
                ttft_bad.len(),
                &ttft_bad[..ttft_bad.len().min(3)]
            )
        }
    );
    println!(
        "KV cache: {kv_per_token} bytes per token ({} KiB)",
        kv_per_token / 1024
    );

    // 4. Stress: many clients, some leaving mid-stream; memory before and after.
    //
    // The weights are memory-mapped, and VmRSS counts a page of the map once something reads
    // it: the embedding table (vocab x width, 64 MB here) is read a row per token, so a run
    // over new token ids maps new pages of it whatever the engine frees. The warm-up therefore
    // first feeds every other token id (one per 4 KB page of the table) as prompts, so that
    // "before" is the model fully resident, as in a server that has been up a while. Private
    // memory (RssAnon: heap, KV caches, buffers) is printed apart.
    let page_rows = (4096 / (4 * cfg.hidden_size)).max(1);
    let all_ids: Vec<u32> = (0..vocab as u32).step_by(page_rows).collect();
    let t_touch = Instant::now();
    for chunk in all_ids.chunks(1024) {
        let t = rt.block_on(stream_request(&client, &base, chunk, 1, None));
        assert!(
            matches!(t.outcome, Outcome::Complete { .. }),
            "warm-up over the vocabulary: {:?}",
            t.outcome
        );
    }
    println!(
        "warm-up: every token id's embedding page read ({} prompt tokens, {:.1} s)",
        all_ids.len(),
        t_touch.elapsed().as_secs_f64()
    );
    // The clients' idle keep-alive connections hold buffers in the server: close them (drop the
    // client) before each reading; `/health` is polled without keeping a connection.
    drop(client);
    let health = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    rt.block_on(server.wait_idle(&health));
    std::thread::sleep(Duration::from_secs(1));
    let rss_before = proc_status(server.pid(), "VmRSS:");
    let anon_before = proc_status(server.pid(), "RssAnon:");
    let mut results: Vec<(usize, Timed)> = Vec::new();
    let mut rss_rounds = Vec::new();
    let t0 = Instant::now();
    for round in 0..stress_rounds {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .unwrap();
        let next = Arc::new(AtomicUsize::new(0));
        let first_id = 1000 + round * stress_requests;
        results.extend(rt.block_on(async {
            let hs: Vec<_> = (0..stress_clients)
                .map(|c| {
                    let (cl, b, next) = (client.clone(), base.clone(), next.clone());
                    tokio::spawn(async move {
                        let mut mine = Vec::new();
                        let cancels = c % 5 == 4;
                        loop {
                            let i = next.fetch_add(1, Ordering::SeqCst);
                            if i >= stress_requests {
                                break;
                            }
                            let max_tokens = 8 + (i * 37) % 57;
                            let p = prompt_for(first_id + i, vocab);
                            let t =
                                stream_request(&cl, &b, &p, max_tokens, cancels.then_some(3)).await;
                            mine.push((i, t));
                        }
                        mine
                    })
                })
                .collect();
            let mut out = Vec::new();
            for h in hs {
                out.extend(h.await.unwrap());
            }
            out
        }));
        drop(client);
        rt.block_on(server.wait_idle(&health));
        std::thread::sleep(Duration::from_secs(1));
        let (rss, anon) = (
            proc_status(server.pid(), "VmRSS:"),
            proc_status(server.pid(), "RssAnon:"),
        );
        if stress_rounds > 1 {
            println!(
                "stress round {}: VmRSS {:.1} MiB, RssAnon {:.1} MiB (idle)",
                round + 1,
                rss as f64 / 1024.0,
                anon as f64 / 1024.0
            );
        }
        rss_rounds.push((rss, anon));
    }
    let stress_s = t0.elapsed().as_secs_f64();
    let (rss_after, anon_after) = *rss_rounds.last().expect("at least one stress round");
    let rss_peak = proc_status(server.pid(), "VmHWM:");
    let mut counts = StressCounts::default();
    let mut stress_tokens = 0usize;
    for (_, t) in &results {
        match &t.outcome {
            Outcome::Complete { chunks } => {
                counts.complete += 1;
                stress_tokens += chunks;
            }
            Outcome::CleanError => counts.clean_error += 1,
            Outcome::StreamError(_) => counts.stream_error += 1,
            Outcome::Cancelled => counts.cancelled += 1,
            Outcome::Other(m) => {
                counts.other += 1;
                if counts.other_examples.len() < 5 {
                    counts.other_examples.push(m.clone());
                }
            }
        }
    }
    let rss_ratio = rss_after as f64 / rss_before as f64;
    let stress_ok = counts.other == 0 && results.len() == stress_requests * stress_rounds;
    let rss_ok = (rss_ratio - 1.0).abs() <= 0.10;
    println!(
        "stress: {} requests from {stress_clients} clients in {stress_s:.1} s: {} complete ({stress_tokens} chunks), {} clean 503 errors, {} stream errors, {} cancelled by the client, {} other{}",
        results.len(),
        counts.complete,
        counts.clean_error,
        counts.stream_error,
        counts.cancelled,
        counts.other,
        if counts.other_examples.is_empty() {
            String::new()
        } else {
            format!(": {:?}", counts.other_examples)
        }
    );
    println!(
        "memory: VmRSS {:.1} MiB before, {:.1} MiB after (idle) = {rss_ratio:.3}x (private RssAnon {:.1} -> {:.1} MiB); peak (VmHWM) {:.1} MiB",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        anon_before as f64 / 1024.0,
        anon_after as f64 / 1024.0,
        rss_peak as f64 / 1024.0
    );
    drop(server);
    let load_end = loadavg();

    // Summary.
    let decode_ok = decode_ratio.is_some_and(|r| r >= 2.0) && parity.starts_with("MATCH");
    let batch_ok = batch_ratio >= 4.0;
    println!();
    println!("| figure | value | goal |");
    println!("|---|---|---|");
    println!(
        "| single-stream decode, ours | {ours_tps:.1} tok/s | |\n| single-stream decode, HF transformers generate | {} | |",
        hf_tps.map_or("n/a".into(), |h| format!("{h:.1} tok/s"))
    );
    println!(
        "| ratio ours / HF (greedy tokens {parity}) | {} | >= 2x: {} |",
        decode_ratio.map_or("n/a".into(), |r| format!("{r:.2}x")),
        if decode_ratio.is_none() {
            "n/a"
        } else {
            verdict(decode_ok)
        }
    );
    println!(
        "| batching: {streams} streams aggregate / 1 stream | {batch_tps:.1} / {ours_tps:.1} tok/s = {batch_ratio:.2}x | >= 4x: {} |",
        verdict(batch_ok)
    );
    println!(
        "| TTFT p50 / p99, {ttft_clients} concurrent clients | {:.1} / {:.1} ms | |",
        p50 * 1e3,
        p99 * 1e3
    );
    println!("| KV cache per token | {kv_per_token} bytes | |");
    println!(
        "| stress: {} requests, {stress_clients} clients | {} complete, {} clean errors, {} cancelled, {} other | 0 other: {} |",
        results.len(),
        counts.complete,
        counts.clean_error + counts.stream_error,
        counts.cancelled,
        counts.other,
        verdict(stress_ok)
    );
    println!(
        "| RSS after / before stress | {:.1} / {:.1} MiB = {rss_ratio:.3}x | within 10%: {} |",
        rss_after as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        verdict(rss_ok)
    );
    println!("load average: {load_start} at start, {load_end} at end");

    let report = json!({
        "model": {
            "dir": dir.display().to_string(),
            "params": params,
            "layers": cfg.num_hidden_layers,
            "hidden": cfg.hidden_size,
            "vocab": cfg.vocab_size,
        },
        "threads": threads,
        "new_tokens": n,
        "runs": runs,
        "definition": "tokens/s = new tokens / whole-request wall time (25-token prefill included), median of runs after a warm-up",
        "single_stream": {
            "ours_tokens_per_s": ours_tps,
            "ours_times_s": ours_times,
            "hf_runs": hf_runs,
            "hf_tokens_per_s": hf_tps,
            "ratio": decode_ratio,
            "parity": parity,
            "goal_2x": decode_ok,
        },
        "batching": {
            "streams": streams,
            "aggregate_tokens_per_s": batch_tps,
            "times_s": batch_times,
            "single_tokens_per_s": ours_tps,
            "ratio": batch_ratio,
            "stream0_equals_single": batch_same,
            "goal_4x": batch_ok,
        },
        "ttft": {
            "clients": ttft_clients,
            "rounds": ttft_rounds,
            "max_tokens": ttft_tokens,
            "p50_ms": p50 * 1e3,
            "p99_ms": p99 * 1e3,
            "samples": ttfts.len(),
            "failed": ttft_bad,
        },
        "kv_bytes_per_token": kv_per_token,
        "stress": {
            "requests": results.len(),
            "clients": stress_clients,
            "seconds": stress_s,
            "complete": counts.complete,
            "clean_error_503": counts.clean_error,
            "stream_error": counts.stream_error,
            "cancelled": counts.cancelled,
            "other": counts.other,
            "other_examples": counts.other_examples,
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "rss_anon_before_kib": anon_before,
            "rss_anon_after_kib": anon_after,
            "rounds": stress_rounds,
            "rss_rounds_kib": rss_rounds,
            "rss_ratio": rss_ratio,
            "rss_peak_kib": rss_peak,
            "goal_no_other": stress_ok,
            "goal_rss_10pct": rss_ok,
        },
        "loadavg": {"start": load_start, "end": load_end},
    });
    let out = root().join("target/bench-serving.json");
    match std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap()) {
        Ok(()) => println!("wrote {}", out.display()),
        Err(e) => println!("could not write {}: {e}", out.display()),
    }
}
