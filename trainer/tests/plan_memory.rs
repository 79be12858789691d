//! The memory planner (`koala_trainer::plan`) against memory actually allocated: a counting global
//! allocator measures the peak bytes of the trainer's real `Llama<CpuBackend>`, AdamW state, one
//! `forward_backward` and one optimizer step, and the planner's CPU f32 prediction must be within
//! 10% of it, for configs of different size, sequence length, micro-batch, attention (GQA, tied
//! embeddings) and for LoRA (frozen base, adapters with dropout).
//!
//! One `#[test]` only: the allocator counts the whole process, so nothing may run beside it.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use koala_kernels::Backend;
use koala_kernels::cpu::CpuBackend;
use koala_trainer::LlamaConfig;
use koala_trainer::lora::{self, LoraConfig};
use koala_trainer::model::{Inputs, Llama};
use koala_trainer::optim::AdamW;
use koala_trainer::plan::{self, Device, Dtype, Lora, Setup};
use koala_trainer::weights::init_weights;

/// `System`, counting the bytes currently allocated and the peak since the last reset.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::SeqCst) + by;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every call forwards to `System` with the caller's arguments unchanged; the counters
// are atomics and never affect the returned memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (the caller upholds `GlobalAlloc::alloc`'s contract).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (hence from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `dealloc`; `new_size` is the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One validation case: a model, a micro-batch shape, a thread count, and LoRA or not.
struct Case {
    name: &'static str,
    cfg: &'static str,
    b: usize,
    t: usize,
    threads: usize,
    lora: Option<LoraConfig>,
}

/// Measured peak bytes of building the model and optimizer state and running one
/// forward/backward and one AdamW step, above what was allocated before (host weights, which the
/// planner does not count, are freed before the step).
fn measure(cfg: &LlamaConfig, c: &Case, be: &CpuBackend) -> usize {
    let n = c.b * c.t;
    let v = cfg.vocab_size as u32;
    let ids: Vec<u32> = (0..n as u32).map(|i| (i * 7 + 3) % v).collect();
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 5 + 1) % v).collect();
    let weights = vec![1.0 / n as f32; n];
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let host = init_weights(cfg, 7, 0.02);
    let mut model = match &c.lora {
        None => Llama::from_tensors(be, cfg.clone(), &host).unwrap(),
        Some(lc) => {
            let adapter = lora::init_adapter(cfg, lc, 3).unwrap();
            let mut m = Llama::with_lora(be, cfg.clone(), &host, lc, &adapter).unwrap();
            // Dropout on, as in training: the kernels then need their `drop(x)` scratch.
            m.set_train_mode(true);
            m.start_step(11, 1);
            m
        }
    };
    drop(host);
    let mut opt = AdamW::new(be, &model, 0.9, 0.999, 1e-8, 0.0, 1.0).unwrap();
    // From here on: the steady state of training, which is what the planner predicts.
    PEAK.store(CURRENT.load(Ordering::SeqCst), Ordering::SeqCst);
    let inp = Inputs::plain(be, c.b, c.t, &ids).unwrap();
    let tgt = be.upload_ids(&targets).unwrap();
    let loss = model.forward_backward(be, &inp, &tgt, &weights).unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{}: loss {loss}", c.name);
    opt.update(be, &mut model, 1e-3).unwrap();
    let peak = PEAK.load(Ordering::SeqCst) - base;
    drop((model, opt, inp, tgt));
    peak
}

#[test]
fn planner_predicts_measured_cpu_peak_within_ten_percent() {
    let cases = [
        Case {
            name: "1M params, b 4 x t 128",
            cfg: r#"{"vocab_size": 512, "hidden_size": 128, "intermediate_size": 344,
                     "num_hidden_layers": 4, "num_attention_heads": 4}"#,
            b: 4,
            t: 128,
            threads: 2,
            lora: None,
        },
        Case {
            name: "20M params, b 2 x t 256",
            cfg: r#"{"vocab_size": 4096, "hidden_size": 512, "intermediate_size": 1376,
                     "num_hidden_layers": 5, "num_attention_heads": 8}"#,
            b: 2,
            t: 256,
            threads: 2,
            lora: None,
        },
        Case {
            name: "4M params GQA, tied, b 1 x t 512",
            cfg: r#"{"vocab_size": 2048, "hidden_size": 256, "intermediate_size": 688,
                     "num_hidden_layers": 4, "num_attention_heads": 8,
                     "num_key_value_heads": 2, "tie_word_embeddings": true}"#,
            b: 1,
            t: 512,
            threads: 1,
            lora: None,
        },
        Case {
            name: "LoRA r=16 on q,k,v,o,gate of 20M params, dropout 0.05, b 2 x t 256",
            cfg: r#"{"vocab_size": 4096, "hidden_size": 512, "intermediate_size": 1376,
                     "num_hidden_layers": 5, "num_attention_heads": 8}"#,
            b: 2,
            t: 256,
            threads: 2,
            lora: Some(LoraConfig {
                r: 16,
                target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"]
                    .map(String::from)
                    .to_vec(),
                ..LoraConfig::default()
            }),
        },
    ];
    let mut failures = Vec::new();
    for c in &cases {
        let cfg = LlamaConfig::from_json_str(c.cfg).unwrap();
        let be = CpuBackend::with_threads(c.threads).unwrap();
        // A warm-up step first, with a one-layer model of the same head_dim and sequence length:
        // gemm's per-thread packing slabs and the backend's RoPE table are allocated once per
        // backend, not per step, so they are not training state.
        let warm = LlamaConfig {
            vocab_size: 64,
            hidden_size: cfg.head_dim(),
            intermediate_size: 32,
            num_hidden_layers: 1,
            num_attention_heads: 1,
            num_key_value_heads: Some(1),
            tie_word_embeddings: false,
            ..cfg.clone()
        };
        measure(&warm, c, &be);
        let measured = measure(&cfg, c, &be);
        let mut s = Setup::new(c.name, cfg, 1, c.t, c.b);
        s.device = Device::Cpu { threads: c.threads };
        s.dtype = Dtype::F32;
        s.lora = c.lora.as_ref().map(|lc| Lora {
            r: lc.r,
            targets: lc.target_modules.clone(),
            dropout: lc.dropout,
        });
        let p = plan::plan(&s).unwrap();
        let predicted = p.total as usize;
        let err = predicted as f64 / measured as f64 - 1.0;
        println!(
            "{}: {} params, predicted {:.2} MiB, measured {:.2} MiB, error {:+.1}%",
            c.name,
            p.params.total,
            predicted as f64 / (1 << 20) as f64,
            measured as f64 / (1 << 20) as f64,
            100.0 * err
        );
        for part in &p.parts {
            println!(
                "    {:<12} {:>10.3} MiB",
                part.name,
                part.bytes as f64 / (1 << 20) as f64
            );
        }
        if err.abs() > 0.10 {
            failures.push(format!("{}: {:+.1}%", c.name, 100.0 * err));
        }
    }
    assert!(
        failures.is_empty(),
        "planner off by more than 10%: {failures:?}"
    );
}
