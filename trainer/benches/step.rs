//! Training-step throughput: forward + backward + AdamW on a stories15M-like LLaMA (dim 288,
//! 6 layers, 6 heads, hidden 768, vocab 32000, seq 256), beside PyTorch CPU running the same step
//! (scripts/bench_step_torch.py, when `torch` and `transformers` are importable) with the same
//! thread count. Prints tokens/s of both, the ratio, and peak memory.
//!
//! `cargo bench -p koala-trainer --bench step -- [--threads N] [--batch B] [--steps S]`
mod common;

use std::time::Instant;

use koala_kernels::Backend;
use koala_kernels::cpu::CpuBackend;
use koala_trainer::data::{Batch, Row};
use koala_trainer::model::Llama;
use koala_trainer::optim::AdamW;
use koala_trainer::train::train_step;
use koala_trainer::{Hyper, weights};

use common::{arg, rows, stories15m};

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|x| x.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = arg("--threads", cores);
    let batch = arg("--batch", 4);
    let steps = arg("--steps", 5);
    let t = 256;
    let cfg = stories15m();
    let be = CpuBackend::with_threads(threads).expect("thread pool");
    let w = weights::init_weights(&cfg, 0, 0.02);
    let mut model = Llama::from_tensors(&be, cfg.clone(), &w).expect("model");
    drop(w);
    let hyper = Hyper {
        batch_size: batch,
        micro_batch_size: batch,
        max_len: t + 1,
        weight_decay: 0.1,
        ..Hyper::default()
    };
    let mut opt = AdamW::new(&be, &model, 0.9, 0.95, 1e-8, 0.1, 1.0).expect("optimizer");
    // Rows of t+1 tokens give t trained positions each, like a [b, t] step with shifted labels.
    let rows = rows(batch, t);
    let refs: Vec<&Row> = rows.iter().collect();
    assert_eq!(Batch::from_rows(&refs, hyper.max_len).t, t);
    let mut times = Vec::new();
    let mut loss = 0.0;
    for i in 0..=steps {
        let t0 = Instant::now();
        let (l, _, _) = train_step(&be, &mut model, &mut opt, &refs, &hyper, 1e-4).expect("step");
        let dt = t0.elapsed().as_secs_f64();
        if i > 0 {
            times.push(dt); // step 0 is warmup (allocation)
        }
        loss = l;
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    let ours = (batch * t) as f64 / med;
    let rss = peak_rss_mib();
    println!(
        "koala  : {} params, {threads} threads, batch {batch}x{t}: median step {:.3} s, {ours:.0} tokens/s, peak RSS {rss:.0} MiB (loss {loss:.3}, backend {})",
        model.n_params(),
        med,
        be.name()
    );
    let py = std::env::var("KOALA_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/bench_step_torch.py"
    );
    let out = std::process::Command::new(&py)
        .arg(script)
        .args([
            "--threads",
            &threads.to_string(),
            "--batch",
            &batch.to_string(),
            "--steps",
            &steps.to_string(),
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let line = text
                .lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .unwrap_or("{}");
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            match v["tokens_per_s"].as_f64() {
                Some(tp) => {
                    println!(
                        "pytorch: torch {}, {threads} threads: median step {:.3} s, {tp:.0} tokens/s, peak RSS {:.0} MiB",
                        v["torch"],
                        v["median_step_s"].as_f64().unwrap_or(f64::NAN),
                        v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
                    );
                    println!(
                        "ratio  : {:.2}x PyTorch CPU tokens/s (goal >= 1.0x)",
                        ours / tp
                    );
                }
                None => println!("pytorch: skipped: {}", text.trim()),
            }
        }
        Ok(o) => println!(
            "pytorch: skipped: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => println!("pytorch: skipped: cannot run {py}: {e}"),
    }
}
