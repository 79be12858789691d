//! Load bench of the trainer daemon: waves of 1,000 concurrent GetJob/ListJobs calls against the
//! real `koala-trainerd` binary while it trains a small model, beside the same job trained with
//! no load in the same run.
//!
//! Reports the per-call latency (p50/p90/p99/max) under training, the same with no job training,
//! the very first wave on fresh connections on its own (cold: buffers and tables still growing),
//! and the training step-time slowdown (median step time under load ÷ median without load).
//!
//! Where `h2load` (nghttp2's HTTP/2 load generator) is installed, a last phase drives the same
//! GetJob/ListJobs mix from it, 1,000 calls in flight at all times while a job trains: the
//! daemon's latency with a client far cheaper per call than tonic's on the same two cores.
//!
//! ```sh
//! cargo bench -p koala-trainer --bench daemon_load
//! # knobs: KOALA_BENCH_CALLS (1000), KOALA_BENCH_STEPS (30), KOALA_BENCH_CHANNELS (8),
//! #        KOALA_BENCH_PAGE (ListJobs page size, 50), KOALA_BENCH_NICE (training_nice, 10),
//! #        KOALA_BENCH_IDLE (set: training_idle = true, SCHED_IDLE training threads),
//! #        KOALA_BENCH_VERBOSE (set: print every wave's p99 and wall time),
//! #        KOALA_H2LOAD (h2load binary; default `h2load` on PATH), KOALA_BENCH_H2_SECONDS (3),
//! #        KOALA_TRAINERD (path of the daemon binary; default: the one cargo built)
//! ```
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use koala_proto::v1::{
    CancelJobRequest, GetJobRequest, GetMetricsRequest, JobSpec, JobState, ListJobsRequest,
    job_spec::BaseModel,
};
use koala_trainer::daemon::client::{self, Client, ClientOptions};
use koala_trainer::data::{Row, write_shard};

// The client side runs on the same two cores as the daemon; give it the same allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "bench-token-0123456789abcdef";

fn env_num(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn write_data(root: &Path) {
    let shards = root.join("shards/bench");
    std::fs::create_dir_all(&shards).unwrap();
    let (vocab, len) = (256u32, 64usize);
    let rows: Vec<Row> = (0..512u32)
        .map(|i| Row {
            tokens: (0..len as u32)
                .map(|j| (7 + i * 31 + j * (3 + i % 5)) % vocab)
                .collect(),
            loss_mask: (0..len).map(|j| u8::from(j >= 8)).collect(),
            segment_ids: vec![0; len],
        })
        .collect();
    write_shard(&shards.join("part-0.arrow"), &rows).unwrap();
    std::fs::write(
        shards.join("manifest.json"),
        r#"{"vocab_size": 256, "shards": ["part-0.arrow"]}"#,
    )
    .unwrap();
    std::fs::create_dir_all(root.join("models/bench")).unwrap();
    std::fs::write(
        root.join("models/bench/config.json"),
        r#"{"vocab_size": 256, "hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5}"#,
    )
    .unwrap();
}

fn spec(out: &str, steps: u64) -> JobSpec {
    JobSpec {
        name: format!("bench {out}"),
        base_model: Some(BaseModel::InitConfig("models/bench/config.json".into())),
        shards_dir: "shards/bench".into(),
        out_dir: format!("runs/{out}"),
        preset: "tiny-cpu".into(),
        hyperparameters: Some(koala_proto::v1::Hyperparameters {
            batch_size: Some(8),
            micro_batch_size: Some(8),
            max_len: Some(64),
            epochs: Some(1),
            ..Default::default()
        }),
        seed: 5,
        checkpoint_every: 1_000,
        max_steps: steps,
        ..Default::default()
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    pct(v, 0.5)
}

async fn wait_state(c: &mut Client, id: u64, st: JobState) {
    loop {
        let j = c.get_job(GetJobRequest { id }).await.unwrap().into_inner();
        if j.state() == st {
            return;
        }
        assert!(
            !(koala_trainer::daemon::store::is_terminal(j.state())),
            "job {id} ended {:?}: {}",
            j.state(),
            j.error
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_step(c: &mut Client, id: u64, step: u64) {
    loop {
        let j = c.get_job(GetJobRequest { id }).await.unwrap().into_inner();
        if j.step >= step {
            return;
        }
        assert!(
            j.state() == JobState::Running || j.state() == JobState::Queued,
            "job {id}: {:?}",
            j.state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_state_any_end(c: &mut Client, id: u64) {
    loop {
        let j = c.get_job(GetJobRequest { id }).await.unwrap().into_inner();
        if koala_trainer::daemon::store::is_terminal(j.state()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Step durations (ms) of a job from its stored metric timestamps, skipping step 1 (warm-up),
/// optionally only for steps that ended inside `[from, to]` (Unix ms).
async fn step_times(c: &mut Client, id: u64, window: Option<(i64, i64)>) -> Vec<f64> {
    let pts = c
        .get_metrics(GetMetricsRequest { id })
        .await
        .unwrap()
        .into_inner()
        .points;
    pts.windows(2)
        .filter(|w| w[0].step >= 1)
        .filter(|w| window.is_none_or(|(a, b)| w[0].time_ms >= a && w[1].time_ms <= b))
        .map(|w| (w[1].time_ms - w[0].time_ms) as f64)
        .collect()
}

/// One wave: `n` calls launched at once (alternating GetJob and ListJobs), spread over the
/// channels; returns per-call latencies in ms.
async fn wave(clients: &[Client], n: usize, job: u64, page: u32) -> Vec<f64> {
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = clients[i % clients.len()].clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            if i % 2 == 0 {
                c.get_job(GetJobRequest { id: job })
                    .await
                    .map(|_| ())
                    .unwrap();
            } else {
                c.list_jobs(ListJobsRequest {
                    page_size: page,
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .unwrap();
            }
            t.elapsed().as_secs_f64() * 1e3
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn summary_quiet(lat: &mut [f64]) -> serde_json::Value {
    lat.sort_by(|a, b| a.total_cmp(b));
    let (p50, p90, p99, max) = (pct(lat, 0.5), pct(lat, 0.9), pct(lat, 0.99), pct(lat, 1.0));
    serde_json::json!({"calls": lat.len(), "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "max_ms": max})
}

fn summary(name: &str, lat: &mut [f64]) -> serde_json::Value {
    let s = summary_quiet(lat);
    let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "{name:<28} calls {:>6}  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        lat.len(),
        f("p50_ms"),
        f("p90_ms"),
        f("p99_ms"),
        f("max_ms")
    );
    s
}

/// One gRPC message as it goes on the wire (uncompressed flag, big-endian length, payload).
fn grpc_frame(msg: &impl prost::Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The h2load binary (nghttp2's HTTP/2 load generator), if there is one.
fn find_h2load() -> Option<String> {
    let bin = std::env::var("KOALA_H2LOAD").unwrap_or_else(|_| "h2load".into());
    match Command::new(&bin).arg("--version").output() {
        Ok(o) if o.status.success() => Some(bin),
        _ => None,
    }
}

/// The h2load phase's figures: calls measured, their rate, latency summary, and the training job's
/// median step time (and step count) during the phase.
struct H2Phase {
    calls: usize,
    calls_per_s: f64,
    latency: serde_json::Value,
    step_ms: f64,
    steps: usize,
}

/// What one h2load run reported: per-request latencies (ms) from its log file, and its summary.
struct H2Run {
    lat: Vec<f64>,
    done: u64,
    succeeded: u64,
    data_bytes: u64,
}

/// Runs h2load against one unary method for `secs` seconds after `warm` seconds of unmeasured
/// warm-up, with `conns` connections of `streams` concurrent calls each.
#[allow(clippy::too_many_arguments)]
fn h2load(
    bin: &str,
    addr: &str,
    method: &str,
    body: &Path,
    log: &Path,
    conns: usize,
    streams: usize,
    secs: f64,
    warm: f64,
) -> std::process::Child {
    Command::new(bin)
        .args(["-c", &conns.to_string(), "-m", &streams.to_string()])
        .args(["-D", &format!("{}ms", (secs * 1e3) as u64)])
        .args(["--warm-up-time", &format!("{}ms", (warm * 1e3) as u64)])
        .arg("-d")
        .arg(body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(["-H", &format!("authorization: Bearer {TOKEN}")])
        .arg("--log-file")
        .arg(log)
        .arg(format!(
            "http://{addr}/koala.trainer.v1.TrainerService/{method}"
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e}"))
}

fn h2load_result(child: std::process::Child, log: &Path) -> H2Run {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "h2load failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "requests: 9000 total, 9000 started, 9000 done, 9000 succeeded, 0 failed, 0 errored, 0 timeout"
    let field = |line: &str, key: &str| -> u64 {
        line.split(',')
            .find_map(|part| part.trim().strip_suffix(key).map(str::trim))
            .and_then(|v| v.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let req = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or("");
    let traffic = text
        .lines()
        .find(|l| l.starts_with("traffic:"))
        .unwrap_or("");
    // "traffic: 1.2MB (1234) total, 10KB (10000) headers (space savings 90%), 1MB (1000) data"
    let data_bytes = traffic
        .split(',')
        .find(|p| p.trim_end().ends_with("data"))
        .and_then(|p| p.split('(').nth(1))
        .and_then(|p| p.split(')').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Log lines: start (µs since epoch), HTTP status, duration (µs).
    let lat = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok())
        .map(|us| us / 1e3)
        .collect();
    H2Run {
        lat,
        done: field(req, "done"),
        succeeded: field(req, "succeeded"),
        data_bytes,
    }
}

async fn bench() {
    let calls = env_num("KOALA_BENCH_CALLS", 1000);
    let steps = env_num("KOALA_BENCH_STEPS", 30) as u64;
    let n_channels = env_num("KOALA_BENCH_CHANNELS", 8).max(1);
    let page = env_num("KOALA_BENCH_PAGE", 50) as u32;
    let nice = env_num("KOALA_BENCH_NICE", 10);
    let idle = std::env::var_os("KOALA_BENCH_IDLE").is_some();
    let bin = std::env::var("KOALA_TRAINERD")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_koala-trainerd").to_string());

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    write_data(&root);
    std::fs::create_dir_all(root.join("runs")).unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let cfg = dir.path().join("daemon.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_root = {root:?}\nstate_dir = {:?}\ntoken_file = \"token\"\nmax_queued_jobs = 1000\ntraining_nice = {nice}\n{}",
            dir.path().join("state"),
            // Only when asked, so that the bench also drives daemons older than the key.
            if idle { "training_idle = true\n" } else { "" }
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let mut child = KillOnDrop(
        Command::new(&bin)
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e}")),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("daemon said {line:?}"))
        .to_string();
    let opts = ClientOptions {
        addr,
        token: Some(TOKEN.into()),
        ..Default::default()
    };
    let mut clients = Vec::new();
    for _ in 0..n_channels {
        clients.push(client::connect(&opts).await.unwrap());
    }
    let mut c = clients[0].clone();

    // Phase A: the job alone. 200 cancelled jobs give ListJobs full pages.
    for i in 0..200 {
        let j = c
            .submit_job(spec(&format!("filler-{i}"), 1))
            .await
            .unwrap()
            .into_inner();
        c.cancel_job(CancelJobRequest { id: j.id }).await.unwrap();
    }
    // The first burst on fresh connections grows every buffer, slab and HTTP/2 stream table on
    // both sides; it is reported on its own ("cold") and not mixed into the steady-state figures.
    let mut cold = wave(&clients, calls, 1, page).await;
    let a = c
        .submit_job(spec("alone", steps))
        .await
        .unwrap()
        .into_inner();
    wait_state(&mut c, a.id, JobState::Succeeded).await;
    let mut alone = step_times(&mut c, a.id, None).await;

    // Phase B: the same job while waves of `calls` concurrent calls run.
    let b = c
        .submit_job(spec("loaded", steps))
        .await
        .unwrap()
        .into_inner();
    loop {
        let j = c
            .get_job(GetJobRequest { id: b.id })
            .await
            .unwrap()
            .into_inner();
        if j.step >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let load_start = koala_trainer::daemon::store::now_ms();
    let mut loaded_lat = Vec::new();
    let mut first_wave = Vec::new();
    let mut waves = 0;
    let mut wave_ms = Vec::new();
    loop {
        let j = c
            .get_job(GetJobRequest { id: b.id })
            .await
            .unwrap()
            .into_inner();
        if j.state() != JobState::Running || j.step + 1 >= steps {
            break;
        }
        let t = Instant::now();
        let lat = wave(&clients, calls, b.id, page).await;
        wave_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if waves == 0 {
            first_wave = lat.clone();
        }
        loaded_lat.extend(lat);
        waves += 1;
    }
    let load_end = koala_trainer::daemon::store::now_ms();
    wait_state(&mut c, b.id, JobState::Succeeded).await;
    let mut under_load = step_times(&mut c, b.id, Some((load_start, load_end))).await;

    // Phase C: the same waves with nothing training.
    let mut idle_lat = Vec::new();
    for _ in 0..waves.clamp(1, 5) {
        idle_lat.extend(wave(&clients, calls, b.id, page).await);
    }

    // Phase D: the same load from h2load, a C HTTP/2 load generator far cheaper per call than a
    // tonic client, so that more of the two cores go to the daemon, as with remote clients:
    // half the calls GetJob, half ListJobs, 1,000 in flight at all times for `h2_secs` seconds
    // (after 0.5 s of unmeasured warm-up) while a job trains.
    let h2_secs = env_num("KOALA_BENCH_H2_SECONDS", 3) as f64;
    let mut h2 = None;
    match find_h2load() {
        None => println!(
            "h2load phase skipped: no h2load (Debian package nghttp2-client, or KOALA_H2LOAD)"
        ),
        Some(bin) => {
            let d = c
                .submit_job(spec("loaded-h2load", steps * 10))
                .await
                .unwrap()
                .into_inner();
            wait_step(&mut c, d.id, 2).await;
            let get_body = dir.path().join("getjob.bin");
            let list_body = dir.path().join("listjobs.bin");
            std::fs::write(&get_body, grpc_frame(&GetJobRequest { id: d.id })).unwrap();
            std::fs::write(
                &list_body,
                grpc_frame(&ListJobsRequest {
                    page_size: page,
                    ..Default::default()
                }),
            )
            .unwrap();
            let (get_log, list_log) = (dir.path().join("get.log"), dir.path().join("list.log"));
            let half = (calls / 2).max(1);
            let conns = (n_channels / 2).max(1);
            let streams = half.div_ceil(conns);
            let t0 = koala_trainer::daemon::store::now_ms() + 500;
            let g = h2load(
                &bin, &opts.addr, "GetJob", &get_body, &get_log, conns, streams, h2_secs, 0.5,
            );
            let l = h2load(
                &bin, &opts.addr, "ListJobs", &list_body, &list_log, conns, streams, h2_secs, 0.5,
            );
            let (g, l) = (h2load_result(g, &get_log), h2load_result(l, &list_log));
            let t1 = koala_trainer::daemon::store::now_ms();
            let still = c
                .get_job(GetJobRequest { id: d.id })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                still.state(),
                JobState::Running,
                "the job ended during the h2load phase"
            );
            c.cancel_job(CancelJobRequest { id: d.id }).await.unwrap();
            for (name, r) in [("GetJob", &g), ("ListJobs", &l)] {
                // A gRPC error is HTTP 200 with no DATA; every call must have returned a message.
                assert!(
                    r.done > 0 && r.succeeded == r.done && r.data_bytes >= r.done * 10,
                    "h2load {name}: {} done, {} succeeded, {} data bytes",
                    r.done,
                    r.succeeded,
                    r.data_bytes
                );
            }
            let mut lat: Vec<f64> = g.lat.iter().chain(&l.lat).copied().collect();
            let calls_per_s = lat.len() as f64 / h2_secs;
            wait_state_any_end(&mut c, d.id).await;
            let mut steps_h2 = step_times(&mut c, d.id, Some((t0, t1))).await;
            h2 = Some(H2Phase {
                calls: lat.len(),
                calls_per_s,
                latency: summary_quiet(&mut lat),
                step_ms: median(&mut steps_h2),
                steps: steps_h2.len(),
            });
        }
    }

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "daemon load bench: {calls} concurrent calls per wave over {n_channels} channels, {waves} waves; {cores} cores, loadavg {}",
        load.trim()
    );
    if std::env::var_os("KOALA_BENCH_VERBOSE").is_some() {
        // Per-wave tails, in order: shows whether a high p99 comes from every wave or a few.
        let tails: Vec<String> = loaded_lat
            .chunks(calls)
            .zip(&wave_ms)
            .map(|(w, ms)| {
                let mut w = w.to_vec();
                w.sort_by(|a, b| a.total_cmp(b));
                format!("{:.0}/{ms:.0}", pct(&w, 0.99))
            })
            .collect();
        println!("per-wave p99/wall ms: {}", tails.join(" "));
    }
    let s_cold = summary("cold first wave, idle", &mut cold);
    let s_first = summary("first wave, training", &mut first_wave);
    let s_loaded = summary("all waves, training", &mut loaded_lat);
    let s_idle = summary("idle (no job training)", &mut idle_lat);
    let m_alone = median(&mut alone);
    let m_loaded = median(&mut under_load);
    let slowdown = m_loaded / m_alone;
    println!(
        "step time: alone median {m_alone:.1} ms ({} steps), under load median {m_loaded:.1} ms ({} steps): slowdown {slowdown:.2}x",
        alone.len(),
        under_load.len()
    );
    println!(
        "wave wall time: median {:.1} ms; p99 goal < 50 ms: {}",
        median(&mut wave_ms),
        if s_loaded["p99_ms"].as_f64().unwrap_or(f64::INFINITY) < 50.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    let mut report = serde_json::json!({
        "calls_per_wave": calls, "channels": n_channels, "list_page": page, "training_nice": nice, "training_idle": idle, "waves": waves, "cores": cores,
        "loadavg": load.trim(), "cold_wave": s_cold, "first_wave": s_first, "training": s_loaded, "idle": s_idle,
        "step_ms_alone_median": m_alone, "step_ms_loaded_median": m_loaded,
        "step_slowdown": slowdown,
    });
    if let Some(H2Phase {
        calls: n,
        calls_per_s: rate,
        latency: s,
        step_ms,
        steps: n_steps,
    }) = &h2
    {
        let p99 = s["p99_ms"].as_f64().unwrap_or(f64::INFINITY);
        println!(
            "h2load, training             calls {n:>6}  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {p99:>7.2} ms  max {:>7.2} ms  ({rate:.0} calls/s; p99 goal < 50 ms: {})",
            s["p50_ms"].as_f64().unwrap_or(f64::NAN),
            s["p90_ms"].as_f64().unwrap_or(f64::NAN),
            s["max_ms"].as_f64().unwrap_or(f64::NAN),
            if p99 < 50.0 { "met" } else { "NOT met" }
        );
        println!(
            "h2load step time: under load median {step_ms:.1} ms ({n_steps} steps): slowdown {:.2}x",
            step_ms / m_alone
        );
    }
    if let Some(h) = h2 {
        report["h2load"] = serde_json::json!({"calls": h.calls, "calls_per_s": h.calls_per_s,
            "latency": h.latency, "step_ms_median": h.step_ms, "step_slowdown": h.step_ms / m_alone});
    }
    println!("{report}");
    drop(child);
}

/// The daemon under test, killed when the bench ends, by a panic too: a daemon left training
/// would skew every later run on the same cores.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    // `cargo bench` passes --bench; there are no other arguments to honour.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench());
}
