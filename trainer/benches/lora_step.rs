//! LoRA training-step speed, three runs in one process: our full fine-tuning step, our LoRA step
//! on the same model (peft's defaults: r 8 on q_proj and v_proj, alpha 16, dropout 0.05), and
//! PyTorch + peft running the same LoRA step on the CPU with the same thread count
//! (scripts/bench_lora_torch.py, with `$KOALA_TORCH_PYTHON`, else `python3`).
//!
//! Goals (issue 18): a LoRA step under 0.5x the time of a full step, and at least 1.5x the
//! tokens/s of PyTorch + peft. The model is stories15M-like (dim 288, 6 layers, 6 heads, ffn 768,
//! vocab 32000, seq 256), as in the `step` bench.
//!
//! `cargo bench -p koala-trainer --bench lora_step -- [--threads N] [--batch B] [--steps S]`
mod common;

use std::time::Instant;

use koala_kernels::cpu::CpuBackend;
use koala_trainer::data::Row;
use koala_trainer::lora::{self, LoraConfig};
use koala_trainer::model::Llama;
use koala_trainer::optim::AdamW;
use koala_trainer::train::train_step;
use koala_trainer::{Hyper, weights};

use common::{arg, rows, stories15m};

/// Median seconds per optimizer step over `steps` steps after one warm-up step.
fn time_steps(
    be: &CpuBackend,
    model: &mut Llama<CpuBackend>,
    rows: &[&Row],
    hyper: &Hyper,
    steps: usize,
) -> f64 {
    let mut opt = AdamW::new(be, model, 0.9, 0.999, 1e-8, 0.0, 1.0).expect("optimizer");
    let mut times = Vec::new();
    for i in 0..=steps {
        model.set_train_mode(true);
        model.start_step(0, i as u64);
        let t0 = Instant::now();
        train_step(be, model, &mut opt, rows, hyper, 1e-4).expect("step");
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
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
    let hyper = Hyper {
        batch_size: batch,
        micro_batch_size: batch,
        max_len: t + 1,
        ..Hyper::default()
    };
    let rows = rows(batch, t);
    let refs: Vec<&Row> = rows.iter().collect();
    let tokens = (batch * t) as f64;

    let mut full = Llama::from_tensors(&be, cfg.clone(), &w).expect("model");
    let full_s = time_steps(&be, &mut full, &refs, &hyper, steps);
    drop(full);
    let lc = LoraConfig::default();
    let ad = lora::init_adapter(&cfg, &lc, 0).expect("adapter");
    let mut lm = Llama::with_lora(&be, cfg.clone(), &w, &lc, &ad).expect("lora model");
    let lora_s = time_steps(&be, &mut lm, &refs, &hyper, steps);
    println!(
        "koala full step : {} params trained, {threads} threads, batch {batch}x{t}: median {full_s:.3} s, {:.0} tokens/s",
        lm.n_params(),
        tokens / full_s
    );
    println!(
        "koala LoRA step : {} params trained (r {}, {:?}): median {lora_s:.3} s, {:.0} tokens/s",
        lm.n_trainable(),
        lc.r,
        lc.target_modules,
        tokens / lora_s
    );
    let ratio = lora_s / full_s;
    println!(
        "LoRA / full time: {ratio:.2}x (goal < 0.5x: {})",
        if ratio < 0.5 { "met" } else { "missed" }
    );

    let py = std::env::var("KOALA_TORCH_PYTHON")
        .or_else(|_| std::env::var("KOALA_PYTHON"))
        .unwrap_or_else(|_| "python3".into());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/bench_lora_torch.py"
    );
    let out = std::process::Command::new(&py)
        .arg(script)
        .args(["--threads", &threads.to_string()])
        .args(["--batch", &batch.to_string()])
        .args(["--steps", &steps.to_string()])
        .output();
    let text = match &out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => format!("{{\"skipped\": \"cannot run {py}: {e}\"}}"),
    };
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("{}");
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    match v["median_step_s"].as_f64() {
        Some(s) => {
            println!(
                "peft LoRA step  : torch {}, peft {}, {threads} threads: median {s:.3} s, {:.0} tokens/s",
                v["torch"],
                v["peft"],
                tokens / s
            );
            let r = s / lora_s;
            println!(
                "koala vs peft   : {r:.2}x tokens/s (goal >= 1.5x: {})",
                if r >= 1.5 { "met" } else { "missed" }
            );
        }
        None => {
            let why = match &out {
                Ok(o) if !o.status.success() => String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
                    .to_string(),
                _ => text.trim().to_string(),
            };
            println!("peft LoRA step  : skipped: {why}");
        }
    }
}
