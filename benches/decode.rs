//! Single-stream CPU decoding at the memory-bandwidth limit (issue 21): our engine beside
//! llama.cpp on the same weights, in one run.
//!
//! ```sh
//! cargo bench --bench decode
//! ```
//!
//! For each model size (default 25M, 58M and 200M parameters; vocab 32,000, untied, f32):
//!
//! * the bench writes a seeded random LLaMA once into `target/bench-decode/<size>/` (config.json,
//!   model.safetensors with weights drawn from N(0, 0.15²) so that greedy steps are decisive, and
//!   the byte-level BPE tokenizer of `model/tests/fixtures/tiny_hf`, padded to the vocabulary by
//!   the export), and exports it with `koala_model::gguf::export` to an f32 GGUF file;
//! * each of RUNS rounds times, back to back: llama.cpp (llama-cpp-python, in a fresh Python
//!   process running `tests/python/llama_cpp_greedy.py`, 2 threads, f32 KV cache, one warm-up
//!   decode and then the timed one), our engine with f32 weights and our engine with
//!   `--dtype bf16` weights (`WeightDtype::Bf16`), both on a rayon pool of THREADS threads;
//! * every side decodes TOKENS greedy tokens after the same fixed 25-token prompt, and the rate
//!   is timed from the first generated token to the last (prefill excluded, as llama.cpp's
//!   `eval time` and `koala generate`'s `decode:` line): (TOKENS − 1) / seconds. Figures are
//!   medians over the rounds.
//!
//! It also measures the machine's memory bandwidth with THREADS threads: a read-only sum over a
//! 1 GiB buffer (what a decode step does to its weights) and a `memcpy` of 512 MiB (bytes copied
//! per second), each the best of 5. The bandwidth bound of a model is read bandwidth ÷ bytes read
//! per token.
//!
//! Goals (docs/serving.md): f32 at least 1.0× llama.cpp's tokens/s with identical greedy tokens;
//! bf16 at least 1.5× llama.cpp f32. A missed goal prints MISSED. Without llama-cpp-python the
//! comparison is skipped with a message and only our figures print.
//!
//! Knobs: `KOALA_BENCH_SIZES` (comma-separated from 25M, 58M, 200M), `KOALA_BENCH_TOKENS`
//! (default 128), `KOALA_BENCH_THREADS` (2), `KOALA_BENCH_RUNS` (3), `KOALA_PYTHON` (else
//! `.venv/bin/python`, else `python3`). Writes `target/bench-decode.json`.
#[path = "common/env.rs"]
mod env;
use env::{env_usize, median, root, verdict};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use koala_model::{Engine, EngineConfig, Event, Request, SampleParams, WeightDtype, Weights};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde_json::{Value, json};

/// The same allocator as the `koala` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A bench model: name, hidden, layers, heads, intermediate.
struct Size {
    name: &'static str,
    hidden: usize,
    layers: usize,
    heads: usize,
    inter: usize,
}

const VOCAB: usize = 32_000;

const SIZES: [Size; 3] = [
    Size {
        name: "25M",
        hidden: 320,
        layers: 4,
        heads: 5,
        inter: 864,
    },
    // The issue's reference model (and benches/serving.rs's).
    Size {
        name: "58M",
        hidden: 512,
        layers: 8,
        heads: 8,
        inter: 1376,
    },
    Size {
        name: "200M",
        hidden: 1024,
        layers: 11,
        heads: 16,
        inter: 2752,
    },
];

/// The fixed 25-token prompt (benches/serving.rs's).
fn prompt() -> Vec<u32> {
    (0..25u32).map(|i| (17 + 1231 * i) % VOCAB as u32).collect()
}

/// Read and copy bandwidth in GB/s with the current rayon pool.
fn bandwidth() -> (f64, f64) {
    let threads = rayon::current_num_threads();
    let src: Vec<f32> = (0..(1usize << 28)).map(|i| (i % 7) as f32).collect(); // 1 GiB
    let mut reads = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let s: f32 = src
            .par_chunks(src.len() / threads)
            .map(|c| {
                // 8 independent lanes, so the adds keep up with memory.
                let mut acc = [0f32; 8];
                for b in c.chunks_exact(8) {
                    for l in 0..8 {
                        acc[l] += b[l];
                    }
                }
                acc.iter().sum::<f32>()
            })
            .sum();
        std::hint::black_box(s);
        reads.push((src.len() * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    let half = src.len() / 2;
    let mut dst = vec![0f32; half];
    let mut copies = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        dst.par_chunks_mut(half / threads)
            .zip(src[..half].par_chunks(half / threads))
            .for_each(|(d, s)| d.copy_from_slice(s));
        std::hint::black_box(&dst);
        copies.push((half * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    // The best of 5: the bound is what the machine can do, not what a noisy moment gave.
    let best = |v: Vec<f64>| v.into_iter().fold(0f64, f64::max);
    (best(reads), best(copies))
}

/// Writes a seeded random LLaMA of `size` into `dir` unless one is there.
fn ensure_model(dir: &Path, size: &Size) {
    let cfg = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB,
        "hidden_size": size.hidden,
        "intermediate_size": size.inter,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "num_key_value_heads": size.heads,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
    });
    let cfg_path = dir.join("config.json");
    if dir.join("model.safetensors").exists()
        && std::fs::read_to_string(&cfg_path)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            == Some(cfg.clone())
    {
        return;
    }
    std::fs::create_dir_all(dir).expect("bench model dir");
    let (c, im, l) = (size.hidden, size.inter, size.layers);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![VOCAB, c]),
        ("model.norm.weight".into(), vec![c]),
        ("lm_head.weight".into(), vec![VOCAB, c]),
    ];
    for i in 0..l {
        let p = format!("model.layers.{i}");
        for (n, s) in [
            ("input_layernorm.weight", vec![c]),
            ("post_attention_layernorm.weight", vec![c]),
            ("self_attn.q_proj.weight", vec![c, c]),
            ("self_attn.k_proj.weight", vec![c, c]),
            ("self_attn.v_proj.weight", vec![c, c]),
            ("self_attn.o_proj.weight", vec![c, c]),
            ("mlp.gate_proj.weight", vec![im, c]),
            ("mlp.up_proj.weight", vec![im, c]),
            ("mlp.down_proj.weight", vec![c, im]),
        ] {
            shapes.push((format!("{p}.{n}"), s));
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20261207);
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(name, s)| {
            let n: usize = s.iter().product();
            let mut v = Vec::with_capacity(n * 4);
            for _ in 0..n {
                let x = if name.ends_with("norm.weight") {
                    1.0
                } else {
                    // Box–Muller: N(0, 0.15²).
                    let (u1, u2): (f32, f32) = (rng.random::<f32>().max(1e-12), rng.random());
                    0.15 * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                };
                v.extend_from_slice(&x.to_le_bytes());
            }
            v
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = shapes
        .iter()
        .zip(&data)
        .map(|((n, s), d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .expect("tensor view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors"))
        .expect("writing the bench model");
    std::fs::copy(
        root().join("model/tests/fixtures/tiny_hf/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .expect("tokenizer");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).expect("config");
    let _ = std::fs::remove_file(dir.join("model-f32.gguf"));
}

/// The Python with llama-cpp-python, or why there is none.
fn python() -> Result<String, String> {
    let candidates: Vec<String> = match std::env::var("KOALA_PYTHON") {
        Ok(p) => vec![p],
        Err(_) => vec![
            root().join(".venv/bin/python").display().to_string(),
            "python3".into(),
        ],
    };
    for py in &candidates {
        if Command::new(py)
            .args(["-c", "import llama_cpp"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(py.clone());
        }
    }
    Err(format!(
        "none of {candidates:?} can import llama_cpp (pip install llama-cpp-python, or set KOALA_PYTHON)"
    ))
}

/// One llama.cpp round: (tokens/s, tokens) of the decode after a warm-up one.
fn llama_cpp(py: &str, gguf: &Path, n: usize, threads: usize) -> (f64, Vec<u32>) {
    let req = json!({
        "prompts": [{"ids": prompt()}, {"ids": prompt()}],
        "new_tokens": n,
        "threads": threads,
        "n_ctx": 512,
        "kv": "f32",
    });
    let mut child = Command::new(py)
        .arg(root().join("tests/python/llama_cpp_greedy.py"))
        .arg(gguf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting llama.cpp");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(req.to_string().as_bytes())
        .expect("request");
    let out = child.wait_with_output().expect("llama.cpp");
    assert!(
        out.status.success(),
        "llama.cpp failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("llama.cpp JSON");
    let timed = &v["results"][1];
    let tokens = timed["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .filter_map(Value::as_u64)
        .map(|t| t as u32)
        .collect();
    (timed["decode_tps"].as_f64().unwrap_or(0.0), tokens)
}

/// One decode on our engine: (tokens/s from the first token to the last, tokens).
fn ours(engine: &Engine, n: usize) -> (f64, Vec<u32>) {
    let mut stream = engine
        .submit(Request::new(prompt(), n, SampleParams::greedy()))
        .expect("submit");
    let (mut first, mut last) = (None, None);
    let mut tokens = Vec::with_capacity(n);
    while let Some(ev) = stream.blocking_next() {
        match ev {
            Event::Token(t) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
                tokens.push(t);
            }
            Event::Done { .. } => break,
            Event::Failed(m) => panic!("decode failed: {m}"),
        }
    }
    let secs = match (first, last) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => 0.0,
    };
    ((tokens.len().saturating_sub(1)) as f64 / secs, tokens)
}

/// `MATCH (n tokens)` or where the first difference is.
fn compare(a: &[u32], b: &[u32]) -> (bool, String) {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        None if a.len() == b.len() => (true, format!("MATCH ({} tokens)", a.len())),
        None => (false, format!("lengths {} and {}", a.len(), b.len())),
        Some(i) => (false, format!("DIFFER from token {i}")),
    }
}

fn main() {
    let n = env_usize("KOALA_BENCH_TOKENS", 128);
    let threads = env_usize("KOALA_BENCH_THREADS", 2);
    let runs = env_usize("KOALA_BENCH_RUNS", 3).max(1);
    let wanted = std::env::var("KOALA_BENCH_SIZES").unwrap_or_else(|_| "25M,58M,200M".into());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("rayon pool");
    let py = python();
    if let Err(why) = &py {
        println!("llama.cpp comparison skipped: {why}");
    }
    let (read_bw, copy_bw) = bandwidth();
    println!(
        "memory bandwidth, {threads} threads: read {read_bw:.1} GB/s, memcpy {copy_bw:.1} GB/s"
    );
    let mut rows = Vec::new();
    let mut report = Vec::new();
    for size in SIZES
        .iter()
        .filter(|s| wanted.split(',').any(|w| w.trim() == s.name))
    {
        let dir = root().join("target/bench-decode").join(size.name);
        ensure_model(&dir, size);
        let gguf = dir.join("model-f32.gguf");
        if !gguf.exists() {
            koala_model::gguf::export(&dir, &gguf, &Default::default()).expect("export");
        }
        let w32 = Arc::new(Weights::load(&dir).expect("bench model"));
        let wbf = Arc::new(Weights::load_as(&dir, WeightDtype::Bf16).expect("bench model"));
        let (params, b32, bbf) = (w32.n_params(), w32.bytes_per_token(), wbf.bytes_per_token());
        let e32 = Engine::cpu(w32, EngineConfig::default());
        let ebf = Engine::cpu(wbf, EngineConfig::default());
        // Warm-ups: page the weights in, size the buffers.
        ours(&e32, 8);
        ours(&ebf, 8);
        let (mut lc, mut o32, mut obf) = (Vec::new(), Vec::new(), Vec::new());
        let (mut lc_tokens, mut t32, mut tbf) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            if let Ok(py) = &py {
                let (r, t) = llama_cpp(py, &gguf, n, threads);
                lc.push(r);
                lc_tokens = t;
            }
            let (r, t) = ours(&e32, n);
            o32.push(r);
            t32 = t;
            let (r, t) = ours(&ebf, n);
            obf.push(r);
            tbf = t;
        }
        let (m32, mbf) = (median(o32.clone()), median(obf.clone()));
        let bound32 = read_bw * 1e9 / b32 as f64;
        let boundbf = read_bw * 1e9 / bbf as f64;
        let mut row = json!({
            "size": size.name, "params": params,
            "bytes_per_token_f32": b32, "bytes_per_token_bf16": bbf,
            "bound_f32_tps": bound32, "bound_bf16_tps": boundbf,
            "ours_f32_tps": m32, "ours_bf16_tps": mbf,
            "ours_f32_rounds": o32, "ours_bf16_rounds": obf,
            "bf16_vs_f32_tokens": compare(&t32, &tbf).1,
        });
        let mut line = format!(
            "| {} ({:.1}M) | {:.0} MB | {:.0} | {m32:.1} ({:.0}%) | {mbf:.1} ({:.0}%) |",
            size.name,
            params as f64 / 1e6,
            b32 as f64 / 1e6,
            bound32,
            100.0 * m32 / bound32,
            100.0 * mbf / boundbf,
        );
        if !lc.is_empty() {
            let mlc = median(lc.clone());
            let (same, how) = compare(&t32, &lc_tokens);
            let (r32, rbf) = (m32 / mlc, mbf / mlc);
            line.push_str(&format!(
                " {mlc:.1} | **{r32:.2}x** ({}) | **{rbf:.2}x** ({}) | {how} |",
                verdict(r32 >= 1.0 && same),
                verdict(rbf >= 1.5)
            ));
            row["llama_cpp_f32_tps"] = json!(mlc);
            row["llama_cpp_rounds"] = json!(lc);
            row["ratio_f32"] = json!(r32);
            row["ratio_bf16"] = json!(rbf);
            row["tokens_vs_llama_cpp"] = json!(how);
        } else {
            line.push_str(" - | - | - | - |");
        }
        rows.push(line);
        report.push(row);
    }
    println!(
        "\nsingle-stream greedy decode, {n} tokens after a 25-token prompt, {threads} threads, median of {runs}:\n"
    );
    println!(
        "| model | f32 bytes/token | bandwidth bound f32 (tok/s) | ours f32 (of bound) | ours bf16 (of bf16 bound) | llama.cpp f32 | f32 ratio (goal 1.0x) | bf16 ratio (goal 1.5x) | greedy tokens f32 vs llama.cpp |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    let out = json!({
        "threads": threads, "tokens": n, "runs": runs,
        "read_gbps": read_bw, "memcpy_gbps": copy_bw, "models": report,
    });
    let path = root().join("target/bench-decode.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).expect("report");
    println!("\nwrote {}", path.display());
}
