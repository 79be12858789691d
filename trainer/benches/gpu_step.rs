//! Training-step throughput on one GPU: tokens/s and MFU of the trainer's own step
//! (`koala_trainer::train::train_step`: the `Llama` forward + backward, global-norm clipping and
//! AdamW, as a job runs it) in bf16 mixed precision on `cuda:0`, for a LLaMA of about 100M
//! parameters; beside PyTorch running the same step on the same GPU
//! (`scripts/bench_step_torch.py --device cuda --dtype bf16`, when `torch` imports), with the
//! ratio.
//!
//! `cargo bench -p koala-trainer --bench gpu_step`. Options through the environment:
//! `KOALA_BENCH_LAYERS` (8), `KOALA_BENCH_HIDDEN` (768), `KOALA_BENCH_HEADS` (12),
//! `KOALA_BENCH_KV_HEADS` (12), `KOALA_BENCH_FFN` (2048), `KOALA_BENCH_VOCAB` (32000),
//! `KOALA_BENCH_SEQ` (1024), `KOALA_BENCH_BATCH` (16 rows per step, one micro-batch),
//! `KOALA_BENCH_STEPS` (10 timed steps after 2 warm-up steps), `KOALA_BENCH_TORCH=0` (leave
//! PyTorch out), `KOALA_PYTHON` (the interpreter for PyTorch; `python3`),
//! `KOALA_GPU_PEAK_TFLOPS` (the GPU's dense bf16 peak, when its name is not in [`PEAKS`]).
//!
//! MFU = model FLOPs per step / step time / peak, with the model FLOPs of a step
//! `tokens · (6·N + 6·L·T·q)` (as `koala_trainer::plan` counts them): N the parameters that
//! multiply (all but the input embedding table, which is a lookup), and causal attention's scores
//! and weighted values (half of the `12·L·T·q` of a full attention matrix) for L layers, sequence
//! length T and query width q (heads × head_dim). PyTorch's MFU uses the same count, so the ratio
//! is the ratio of tokens/s.
//!
//! Without a GPU it prints `skipped: needs an NVIDIA GPU (…)` and exits 0 (a bench is not a test);
//! it builds without CUDA installed (the CUDA libraries are loaded at run time). The last line,
//! `gpu_step: …`, is the summary `scripts/gpu-check.sh` reports.

#[cfg(not(feature = "cuda"))]
fn main() {
    println!("skipped: needs an NVIDIA GPU (koala-trainer was built without the `cuda` feature)");
}

#[cfg(feature = "cuda")]
fn main() {
    bench::main();
}

/// Dense bf16 peaks (TFLOP/s, no sparsity) by a substring of the device name, first match wins.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
const PEAKS: &[(&str, f64)] = &[
    ("H100 PCIE", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0), // SXM
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
];

#[cfg(feature = "cuda")]
mod bench {
    use std::time::Instant;

    use koala_kernels::cuda::{CudaBackend, Precision};
    use koala_trainer::data::{Batch, Row};
    use koala_trainer::model::Llama;
    use koala_trainer::optim::AdamW;
    use koala_trainer::train::train_step;
    use koala_trainer::{Hyper, LlamaConfig, weights};

    fn env_usize(name: &str, default: usize) -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    fn fail(what: &str, e: impl std::fmt::Display) -> ! {
        println!("gpu_step: FAILED: {what}: {e}");
        std::process::exit(1);
    }

    /// The peak from `KOALA_GPU_PEAK_TFLOPS`, else from the device name; with where it came from.
    fn peak(name: &str) -> Option<(f64, String)> {
        if let Some(p) = std::env::var("KOALA_GPU_PEAK_TFLOPS")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
        {
            return Some((p, "KOALA_GPU_PEAK_TFLOPS".into()));
        }
        let n = name.to_ascii_uppercase();
        super::PEAKS
            .iter()
            .find(|(k, _)| n.contains(k))
            .map(|&(k, p)| (p, format!("dense bf16 peak of {k}")))
    }

    struct Torch {
        tokens_per_s: f64,
        line: String,
    }

    /// The same step in PyTorch on the same GPU, or why not.
    fn torch(cfg: &LlamaConfig, batch: usize, seq: usize, steps: usize) -> Result<Torch, String> {
        if std::env::var("KOALA_BENCH_TORCH").is_ok_and(|v| v == "0") {
            return Err("skipped: KOALA_BENCH_TORCH=0".into());
        }
        let py = std::env::var("KOALA_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/bench_step_torch.py"
        );
        let s = |x: usize| x.to_string();
        let out = std::process::Command::new(&py)
            .arg(script)
            .args(["--device", "cuda", "--dtype", "bf16", "--warmup", "2"])
            .args([
                "--vocab",
                &s(cfg.vocab_size),
                "--hidden",
                &s(cfg.hidden_size),
            ])
            .args(["--ffn", &s(cfg.intermediate_size)])
            .args(["--layers", &s(cfg.num_hidden_layers)])
            .args(["--heads", &s(cfg.num_attention_heads)])
            .args(["--kv-heads", &s(cfg.n_kv_heads())])
            .args(["--seq", &s(seq), "--batch", &s(batch), "--steps", &s(steps)])
            .output()
            .map_err(|e| format!("skipped: cannot run {py}: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or("")
            .to_string();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(3).collect();
            return Err(format!(
                "failed ({}): {}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ));
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| format!("unreadable output {line:?}: {e}"))?;
        if let Some(why) = v["skipped"].as_str() {
            return Err(why.to_string());
        }
        if let Some(e) = v["error"].as_str() {
            return Err(format!("failed: {e}"));
        }
        let tokens_per_s = v["tokens_per_s"]
            .as_f64()
            .ok_or_else(|| format!("no tokens_per_s in {line}"))?;
        Ok(Torch { tokens_per_s, line })
    }

    pub fn main() {
        let be = match CudaBackend::new(0, Precision::Bf16) {
            Ok(be) => be,
            Err(e) => {
                println!("skipped: needs an NVIDIA GPU ({e})");
                return;
            }
        };
        let layers = env_usize("KOALA_BENCH_LAYERS", 8);
        let hidden = env_usize("KOALA_BENCH_HIDDEN", 768);
        let heads = env_usize("KOALA_BENCH_HEADS", 12);
        let kv_heads = env_usize("KOALA_BENCH_KV_HEADS", heads);
        let ffn = env_usize("KOALA_BENCH_FFN", 2048);
        let vocab = env_usize("KOALA_BENCH_VOCAB", 32_000);
        let seq = env_usize("KOALA_BENCH_SEQ", 1024);
        let batch = env_usize("KOALA_BENCH_BATCH", 16).max(1);
        let steps = env_usize("KOALA_BENCH_STEPS", 10).max(1);
        let cfg = LlamaConfig::from_json_str(&format!(
            r#"{{"vocab_size": {vocab}, "hidden_size": {hidden}, "intermediate_size": {ffn},
                "num_hidden_layers": {layers}, "num_attention_heads": {heads},
                "num_key_value_heads": {kv_heads}, "rms_norm_eps": 1e-5,
                "max_position_embeddings": {seq}}}"#
        ))
        .unwrap_or_else(|e| fail("model config", e));
        let name = be.context().name().unwrap_or_default();
        let w = weights::init_weights(&cfg, 0, 0.02);
        let mut model = Llama::from_tensors(&be, cfg.clone(), &w)
            .unwrap_or_else(|e| fail("uploading the model", e));
        drop(w);
        let n = model.n_params();
        // The input embedding is a lookup, no multiply-adds (tied, the table is also the LM head).
        let n_matmul = if cfg.tie_word_embeddings {
            n
        } else {
            n - vocab * hidden
        };
        let q_dim = cfg.q_dim();
        let flops_per_token = 6.0 * n_matmul as f64 + 6.0 * (layers * seq * q_dim) as f64;
        println!(
            "model  : {name} ({}), the trainer's Llama: {:.1}M params ({layers} layers, hidden \
             {hidden}, {heads}/{kv_heads} heads, ffn {ffn}, vocab {vocab}), batch {batch} x seq \
             {seq}, bf16 mixed precision",
            be.arch(),
            n as f64 / 1e6,
        );
        let hyper = Hyper {
            batch_size: batch,
            micro_batch_size: batch,
            max_len: seq,
            weight_decay: 0.1,
            beta2: 0.95,
            grad_clip: 1.0,
            ..Hyper::default()
        };
        let mut opt = AdamW::new(&be, &model, 0.9, 0.95, 1e-8, 0.1, 1.0)
            .unwrap_or_else(|e| fail("optimizer state", e));
        let rows: Vec<Row> = (0..batch)
            .map(|r| Row {
                tokens: (0..seq as u32)
                    .map(|j| (j * 7919 + r as u32 * 104_729) % vocab as u32)
                    .collect(),
                loss_mask: vec![1; seq],
                segment_ids: vec![0; seq],
            })
            .collect();
        let refs: Vec<&Row> = rows.iter().collect();
        assert_eq!(Batch::from_rows(&refs, hyper.max_len).t, seq);
        let mut times = Vec::with_capacity(steps);
        let mut loss = 0.0f32;
        for i in 0..steps + 2 {
            let t0 = Instant::now();
            // The loss and the gradient norm are read back to the host: the step has finished.
            let (l, _, _) = train_step(&be, &mut model, &mut opt, &refs, &hyper, 1e-4)
                .unwrap_or_else(|e| fail("training step", e));
            be.synchronize().unwrap_or_else(|e| fail("synchronize", e));
            let dt = t0.elapsed().as_secs_f64();
            if i < 2 {
                println!("warm-up step {}: {:.1} ms, loss {l:.4}", i + 1, dt * 1e3);
            } else {
                times.push(dt);
            }
            loss = l;
        }
        if !loss.is_finite() {
            fail("training step", format!("non-finite loss {loss}"));
        }
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        let tokens = (batch * seq) as f64;
        let tps = tokens / med;
        let tflops = flops_per_token * tps / 1e12;
        let peak = peak(&name);
        let mfu = |tflops: f64| match &peak {
            Some((p, _)) => format!("MFU {:.1}%", 100.0 * tflops / p),
            None => "MFU unknown (set KOALA_GPU_PEAK_TFLOPS)".into(),
        };
        println!(
            "koala  : median step {:.1} ms (of {steps}; min {:.1}, max {:.1}), {tps:.0} tokens/s, \
             {tflops:.1} model TFLOP/s, {}, last loss {loss:.4}",
            med * 1e3,
            times[0] * 1e3,
            times[times.len() - 1] * 1e3,
            mfu(tflops)
        );
        match &peak {
            Some((p, from)) => println!(
                "peak   : {p} TFLOP/s ({from}); model FLOPs/token {:.3e} = 6 x {:.1}M + attention",
                flops_per_token,
                n_matmul as f64 / 1e6
            ),
            None => println!("peak   : unknown for {name:?}: set KOALA_GPU_PEAK_TFLOPS"),
        }
        // Free the GPU memory before PyTorch runs on the same GPU.
        drop(opt);
        drop(model);
        let summary = match torch(&cfg, batch, seq, steps) {
            Ok(t) => {
                let ttf = flops_per_token * t.tokens_per_s / 1e12;
                println!(
                    "pytorch: {:.0} tokens/s, {ttf:.1} model TFLOP/s, {} ({})",
                    t.tokens_per_s,
                    mfu(ttf),
                    t.line
                );
                format!(
                    "pytorch {:.0} tokens/s, {}; koala/pytorch {:.2}x",
                    t.tokens_per_s,
                    mfu(ttf),
                    tps / t.tokens_per_s
                )
            }
            Err(why) => {
                println!("pytorch: {why}");
                format!("pytorch: {why}")
            }
        };
        println!(
            "gpu_step: koala {tps:.0} tokens/s, {} ({:.1}M params, bf16, {name}) | {summary}",
            mfu(tflops),
            n as f64 / 1e6
        );
    }
}
