//! Training-step throughput on one GPU: tokens/s and MFU of a full forward + backward + AdamW
//! step of a 1.1B-parameter LLaMA (TinyLlama-1.1B shape) in bf16 mixed precision, built from the
//! CUDA backend's ops (`koala_kernels::comm::model::TinyLlama`).
//!
//! `cargo bench --bench gpu_step` (options through env: `KOALA_BENCH_SEQ` (default 2048),
//! `KOALA_BENCH_BATCH` (4), `KOALA_BENCH_STEPS` (5), `KOALA_BENCH_LAYERS` (22),
//! `KOALA_PEAK_TFLOPS` (the GPU's dense bf16 peak; known for H100 SXM/PCIe, H200, A100)).
//! Without a GPU it prints why it skipped and exits successfully. MFU is model FLOPs
//! (6·params + attention, per token) times tokens/s over the peak, as in the PaLM paper.
use std::time::Instant;

use koala_kernels::comm::model::{Batch, Config, TinyLlama};
use koala_kernels::cuda::{CudaBackend, Precision};
use koala_kernels::{AdamWParams, Backend};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let be = match CudaBackend::new(0, Precision::Bf16) {
        Ok(be) => be,
        Err(e) => {
            println!("skipped: gpu_step needs a GPU: {e}");
            return;
        }
    };
    let seq = env_usize("KOALA_BENCH_SEQ", 2048);
    let batch = env_usize("KOALA_BENCH_BATCH", 4);
    let steps = env_usize("KOALA_BENCH_STEPS", 5).max(1);
    let mut cfg = Config::llama_1b(seq);
    cfg.n_layers = env_usize("KOALA_BENCH_LAYERS", cfg.n_layers);
    let name = be.context().name().unwrap_or_default();
    let peak = std::env::var("KOALA_PEAK_TFLOPS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .or_else(|| {
            let n = name.to_ascii_uppercase();
            if n.contains("H100") && n.contains("PCIE") {
                Some(756.0)
            } else if n.contains("H100") || n.contains("H200") || n.contains("GH200") {
                Some(989.0)
            } else if n.contains("A100") {
                Some(312.0)
            } else {
                None
            }
        });
    println!(
        "gpu_step: {name} ({}), {:.2}B params, {} layers, batch {batch} x seq {seq}, bf16",
        be.arch(),
        cfg.n_params() as f64 / 1e9,
        cfg.n_layers
    );
    let mut model = match TinyLlama::new(&be, cfg, 1) {
        Ok(m) => m,
        Err(e) => {
            println!("failed to build the model: {e}");
            std::process::exit(1);
        }
    };
    let data = Batch::synthetic(&cfg, batch, 7);
    let lens: Vec<usize> = cfg.param_shapes().iter().map(|s| s.0).collect();
    let mut m: Vec<_> = lens.iter().map(|&l| be.zeros(l).unwrap()).collect();
    let mut v: Vec<_> = lens.iter().map(|&l| be.zeros(l).unwrap()).collect();
    let mut step = |i: u64| -> f64 {
        model.zero_grads(&be).unwrap();
        let loss = model.forward_backward(&be, &data).unwrap();
        let hp = AdamWParams {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            step: i,
            grad_scale: 1.0,
        };
        let (mut params, grads) = model.params_and_grads_mut();
        for (j, (p, g)) in params.iter_mut().zip(grads.iter()).enumerate() {
            be.adamw_step(p, g, &mut m[j], &mut v[j], &hp).unwrap();
        }
        be.synchronize().unwrap();
        loss
    };
    for i in 1..=2 {
        let loss = step(i);
        println!("warmup step {i}: loss {loss:.4}");
    }
    let t0 = Instant::now();
    let mut loss = 0.0;
    for i in 0..steps {
        loss = step(3 + i as u64);
    }
    let dt = t0.elapsed().as_secs_f64() / steps as f64;
    let tokens = (batch * seq) as f64;
    let tps = tokens / dt;
    let achieved = cfg.flops_per_token() * tps / 1e12;
    println!(
        "step time {:.1} ms, {:.0} tokens/s, {:.1} model TFLOP/s, last loss {loss:.4}",
        dt * 1e3,
        tps,
        achieved
    );
    match peak {
        Some(p) => println!("MFU {:.1}% of {p} TFLOP/s dense bf16", 100.0 * achieved / p),
        None => println!("MFU: unknown peak for {name}; set KOALA_PEAK_TFLOPS"),
    }
}
