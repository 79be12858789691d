//! The memory planner behind `koala plan`: per-GPU memory and tokens/s of a fine-tuning job
//! before it is launched (full fine-tuning or LoRA, ZeRO stage 0–3, activation checkpointing).
//!
//! # What the model counts, and where each figure comes from
//!
//! The planner mirrors the buffers **our** trainer allocates, not a textbook formula. Each line of
//! a [`MemoryPlan`] names the buffer it stands for:
//!
//! * **Activations** are the fields of `LayerActs` and `Acts` in `trainer/src/model.rs`, with the
//!   lengths `Llama::ensure_acts` gives them (`n = micro_batch · seq` token positions): per layer
//!   `h1, x_mid, h2: [n, hidden]`, `q, att: [n, q_dim]`, `k, v: [n, kv_dim]`,
//!   `gate, up, act: [n, intermediate]`, the fp32 statistics `rstd1, rstd2: [n]` and
//!   `lse: [b, heads, t]`; the residual stream `res[0..=L]: [n, hidden]`; the final norm's
//!   `h_f, rstd_f`. The same struct holds the logits `[n, vocab]` (the cross-entropy overwrites
//!   them with the dlogits in place), `losses`, the forward scratch `scratch_c` and the backward
//!   scratch `dres, dh, dtmp, dq, dk, dv, datt, dgate, dup, dact`, which the plan lists under
//!   workspace.
//! * **Element sizes** are the backend's: the CPU backend is fp32 throughout. The CUDA backend in
//!   bf16 ([`Dtype::Bf16`], see `kernels/src/cuda/backend.rs`) stores weights, activations and
//!   activation gradients in bf16, and keeps in fp32 the statistics (`rstd`, `lse`, `losses`), the
//!   **weight gradients** (`matmul_bwd` re-types `dw` to fp32), AdamW's `m` and `v`, and a master
//!   copy of every parameter that steps (`Backend::upload_param`): 2 + 4 + 4 + 8 = 18 bytes per
//!   trained parameter.
//! * **ZeRO-1** is what `trainer/src/dp.rs` (`DpAdamW`) does: every rank keeps the full weights
//!   (bf16, without master) and the full fp32 gradients, plus `1/N` of everything that steps: a
//!   parameter shard with its master, a gradient shard (the reduce-scatter target), `m` and `v`.
//!   The reduce-scatter in `kernels/src/comm/nccl.rs` pads and converts the largest gradient into
//!   two fp32 temporaries; that is the comm bucket.
//! * **ZeRO-2 and ZeRO-3** as `DpAdamW` does them through the model's `ParamHook`, on the same
//!   conventions (per-tensor `shard_len` shards): stage 2 also shards the gradients, holding one
//!   unit's (one layer's, or the embedding's) full gradients between its `open_grads` and its
//!   reduce-scatter; stage 3 also shards the weights and all-gathers one unit at a time. The
//!   trainer refuses stages 2 and 3 with LoRA (the frozen base is not sharded).
//! * **Checkpointing** (`Llama::set_checkpointing`) keeps only each layer's input (`res[l]`) and
//!   one `LayerActs`, recomputing each layer's forward just before its backward.
//!
//! `trainer/tests/zero_memory.rs` measures each rank's own peak (a per-rank allocator account)
//! for ZeRO-3 with 2 and 4 CPU ranks, with and without checkpointing, against this plan.
//! * **LoRA** as `Llama::with_lora` builds it: the base is frozen (uploaded with
//!   `Backend::upload`: bf16 without master, no gradients, no optimizer state); each
//!   target module gets `A: [r, in]` and `B: [out, r]` (`r·(in + out)` parameters) with gradients,
//!   master and AdamW state, and keeps `xa = drop(x)·Aᵀ: [n, r]` per target per layer for the
//!   backward (`LayerActs::xa`; `Backend::lora_fwd` adds `B·xa` into the frozen layer's output in
//!   place, so no `[n, out]` temporary), plus the scratch `Acts::lora_dxa: [n, r]`,
//!   `Acts::lora_scratch: [n, max in]` (`drop(x)`, only with dropout) and `Acts::norm_sink`.
//!   The backward still runs through every layer (the adapters of layer 0 need the gradient of
//!   the whole stack), so the activations are those of full fine-tuning.
//!
//! Kernel temporaries are counted too: on the CPU, the reference attention's per-head output and
//! gradient buffers (`kernels/src/cpu/attention.rs`); on CUDA, attention's `delta` and an estimate
//! of the CUDA context, cuBLAS and NCCL. The planner's CPU prediction is checked against the
//! peak bytes a counting allocator measures around a real `forward_backward` and AdamW step
//! (`trainer/tests/plan_memory.rs`, within 10%).
//!
//! # Throughput
//!
//! Tokens/s at a given MFU use model FLOPs per token as `trainer/benches/gpu_step.rs` counts them
//! (the PaLM definition): `6·N` for full fine-tuning, with `N` the parameters that multiply (all
//! but the input embedding table, a lookup; with tied embeddings the table multiplies as the LM
//! head and counts), plus causal attention's scores and weighted values, `6·L·seq·q_dim`. For
//! LoRA: forward plus input-gradient backward of the frozen base, `4·N`, plus `6·N_lora` for the
//! adapters, plus the same attention term (the attention backward is all input gradients).
//! Recomputation under checkpointing is not model FLOPs;
//! [`Throughput::hardware_flops_per_token`] adds it.
use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::config::LlamaConfig;
use crate::weights::param_specs;
use crate::{Error, Result};

/// Names of the built-in architectures ([`builtin`]).
pub const BUILTINS: &[&str] = &["llama-7b", "llama-13b"];

/// Default LoRA rank (PEFT's).
pub const DEFAULT_LORA_R: usize = 8;
/// The modules LoRA adapts when none are named.
pub const DEFAULT_LORA_TARGETS: &[&str] = &["q_proj", "v_proj"];
/// Default LoRA dropout (PEFT's).
pub const DEFAULT_LORA_DROPOUT: f32 = 0.05;
/// Every linear module a LoRA adapter can target.
pub const LORA_MODULES: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Query rows per task of the CPU attention kernel (`QB` in `kernels/src/cpu/attention.rs`):
/// each task holds one or two `[QB, seq]` score buffers.
const CPU_ATTENTION_QB: u128 = 64;
/// The CUDA context, cuBLAS's handle and workspace, and the NVRTC-compiled modules: an
/// estimate (not measured on our GPUs yet).
const CUDA_RUNTIME_BYTES: u128 = 768 << 20;
/// NCCL's communicator buffers with more than one GPU: an estimate.
const NCCL_BYTES: u128 = 512 << 20;

/// Storage type of weights and activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// fp32 everything (the CPU backend; the CUDA backend with `Precision::F32`).
    F32,
    /// bf16 weights and activations with fp32 master weights, weight gradients, AdamW state and
    /// statistics (the CUDA backend's `Precision::Bf16`, the default on GPUs).
    Bf16,
}

impl Dtype {
    /// Parses `bf16` or `f32` (also `fp32`, `float32`, `bfloat16`).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            "f32" | "fp32" | "float32" => Ok(Dtype::F32),
            _ => Err(Error::Config(format!("dtype {s:?}: expected bf16 or f32"))),
        }
    }

    /// Bytes of one weight or activation element.
    pub fn bytes(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        }
    }
}

/// The backend the job runs on: it decides the kernel temporaries and the runtime overhead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CUDA backend.
    Cuda,
    /// The CPU reference backend with `threads` rayon threads (fp32 only).
    Cpu { threads: usize },
}

/// LoRA settings: rank, target modules (names from [`LORA_MODULES`]) and dropout.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Lora {
    pub r: usize,
    pub targets: Vec<String>,
    /// Dropout on the adapter's input; above 0 the kernels need an `[n, in]` scratch for
    /// `drop(x)` (`Backend::lora_fwd`), which the plan counts.
    pub dropout: f32,
}

impl Default for Lora {
    /// r = 8 on `q_proj`, `v_proj` with dropout 0.05: PEFT's defaults.
    fn default() -> Self {
        Lora {
            r: DEFAULT_LORA_R,
            targets: DEFAULT_LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
            dropout: DEFAULT_LORA_DROPOUT,
        }
    }
}

/// A job to plan. [`Setup::new`] gives the defaults of `koala plan`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Setup {
    /// What the model is called in the report (`llama-7b`, a path).
    pub name: String,
    pub cfg: LlamaConfig,
    /// Data-parallel ranks (one per GPU).
    pub gpus: usize,
    /// Tokens per row (the longest row of a micro-batch; rows are padded to it).
    pub seq: usize,
    /// Rows per forward/backward on each GPU.
    pub micro_batch: usize,
    pub dtype: Dtype,
    pub device: Device,
    /// ZeRO stage: 0 (plain data parallel), 1 (optimizer state), 2 (+ gradients), 3 (+ weights).
    pub zero: u8,
    /// Activation checkpointing: keep each layer's input, recompute one layer at a time.
    pub checkpointing: bool,
    /// `Some` for LoRA (frozen base), `None` for full fine-tuning.
    pub lora: Option<Lora>,
    /// Memory of one GPU in bytes, when known: decides [`MemoryPlan::fits`].
    pub gpu_mem: Option<u64>,
    /// Model-FLOPs utilisation assumed for the throughput estimate, in `(0, 1]`.
    pub mfu: f64,
    /// Dense peak of one GPU in TFLOP/s at the compute dtype (A100 bf16: 312).
    pub gpu_tflops: f64,
}

impl Setup {
    /// bf16 on CUDA, ZeRO 0, no checkpointing, full fine-tuning, 40% MFU of an A100 (312 TFLOP/s).
    pub fn new(
        name: impl Into<String>,
        cfg: LlamaConfig,
        gpus: usize,
        seq: usize,
        micro_batch: usize,
    ) -> Self {
        Setup {
            name: name.into(),
            cfg,
            gpus,
            seq,
            micro_batch,
            dtype: Dtype::Bf16,
            device: Device::Cuda,
            zero: 0,
            checkpointing: false,
            lora: None,
            gpu_mem: None,
            mfu: 0.4,
            gpu_tflops: 312.0,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        self.cfg.validate().map_err(Error::Config)?;
        if self.gpus == 0 || self.seq == 0 || self.micro_batch == 0 {
            return bad(format!(
                "gpus ({}), seq ({}) and micro-batch ({}) must all be at least 1",
                self.gpus, self.seq, self.micro_batch
            ));
        }
        // Bounds that keep every count below exact-f64 and `usize` range (no overflow anywhere).
        const LIMIT: u128 = 1 << 48;
        if (self.micro_batch as u128) * (self.seq as u128) > LIMIT {
            return bad(format!(
                "micro-batch {} x seq {} tokens is too large to plan",
                self.micro_batch, self.seq
            ));
        }
        let c = &self.cfg;
        let widest = [c.vocab_size, c.intermediate_size, c.q_dim(), c.kv_dim()]
            .into_iter()
            .max()
            .unwrap_or(0) as u128;
        if c.num_hidden_layers > 1 << 16
            || widest * (c.hidden_size as u128) * (c.num_hidden_layers as u128 + 2) > LIMIT
        {
            return bad("the model config is too large to plan".into());
        }
        if self.zero > 3 {
            return bad(format!("ZeRO stage {} (expected 0, 1, 2 or 3)", self.zero));
        }
        if !(self.mfu > 0.0 && self.mfu <= 1.0) {
            return bad(format!("mfu {} must be in (0, 1]", self.mfu));
        }
        if !(self.gpu_tflops.is_finite() && self.gpu_tflops > 0.0) {
            return bad(format!("gpu TFLOP/s {} must be > 0", self.gpu_tflops));
        }
        if let Device::Cpu { threads } = self.device {
            if self.dtype != Dtype::F32 {
                return bad("the CPU backend computes in f32 only".into());
            }
            if threads == 0 {
                return bad("CPU threads must be at least 1".into());
            }
        }
        if let Some(l) = &self.lora {
            if l.r == 0 {
                return bad("LoRA rank must be at least 1".into());
            }
            if !(0.0..1.0).contains(&l.dropout) {
                return bad(format!("LoRA dropout {} is outside [0, 1)", l.dropout));
            }
            if l.targets.is_empty() {
                return bad("LoRA needs at least one target module".into());
            }
            for (i, t) in l.targets.iter().enumerate() {
                if !LORA_MODULES.contains(&t.as_str()) {
                    return bad(format!(
                        "LoRA target {t:?} is not a LLaMA linear module (one of {})",
                        LORA_MODULES.join(", ")
                    ));
                }
                if l.targets[..i].contains(t) {
                    return bad(format!("LoRA target {t:?} is listed twice"));
                }
            }
        }
        Ok(())
    }

    /// The ZeRO stage in effect: with one GPU there is nothing to shard (the trainer ignores
    /// `zero1` with a single worker), so any stage plans as 0.
    pub fn effective_zero(&self) -> u8 {
        if self.gpus == 1 { 0 } else { self.zero }
    }
}

/// Parameter counts of the planned job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ParamCounts {
    /// Every base-model parameter (embedding, layers, final norm, LM head unless tied).
    pub total: u64,
    /// Parameters that get gradients and optimizer state: `total`, or the adapters with LoRA.
    pub trainable: u64,
    /// One transformer layer's base parameters.
    pub per_layer: u64,
    /// The largest unit ZeRO-3 gathers (one layer, the embedding or the LM head).
    pub largest_unit: u64,
    /// The largest single tensor (the reduce-scatter is per tensor).
    pub largest_tensor: u64,
}

/// One buffer (or group of buffers) of the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Line {
    pub name: String,
    pub bytes: u64,
    /// What it is and where in the trainer it comes from.
    pub note: String,
}

/// One category of the memory breakdown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Part {
    /// `parameters`, `gradients`, `optimizer`, `activations` or `workspace`.
    pub name: &'static str,
    pub bytes: u64,
    pub lines: Vec<Line>,
}

/// Throughput at the assumed MFU.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Throughput {
    /// Model FLOPs per trained token (see the module docs).
    pub model_flops_per_token: f64,
    /// Model FLOPs plus the forward recomputed under checkpointing.
    pub hardware_flops_per_token: f64,
    /// Tokens/s of one GPU at `mfu` of `gpu_tflops`.
    pub tokens_per_s_per_gpu: f64,
    /// Tokens/s of all GPUs together.
    pub tokens_per_s: f64,
    /// Seconds of one forward/backward of a micro-batch.
    pub micro_batch_s: f64,
    /// The hardware FLOPs utilisation that `mfu` implies (above `mfu` with checkpointing).
    pub hfu: f64,
}

/// The plan: memory per GPU by category, whether it fits, and throughput.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryPlan {
    pub setup: Setup,
    pub params: ParamCounts,
    /// `parameters`, `gradients`, `optimizer`, `activations`, `workspace`, in that order.
    pub parts: Vec<Part>,
    /// Bytes per GPU, all parts together.
    pub total: u64,
    /// `total <= gpu_mem`, when the GPU memory is known.
    pub fits: Option<bool>,
    /// The largest micro-batch (up to 4096) whose plan fits, all else equal; `Some(0)` when not
    /// even one row fits; `None` without a GPU memory.
    pub max_micro_batch: Option<usize>,
    pub throughput: Throughput,
    /// What the trainer implements today versus what the plan assumes, and other caveats.
    pub notes: Vec<String>,
}

impl MemoryPlan {
    /// The bytes of one category (`parameters`, `gradients`, `optimizer`, `activations`,
    /// `workspace`); 0 for an unknown name.
    pub fn part(&self, name: &str) -> u64 {
        self.parts
            .iter()
            .find(|p| p.name == name)
            .map_or(0, |p| p.bytes)
    }
}

/// A built-in LLaMA-1 architecture (`llama-7b`: 6.74B parameters, `llama-13b`: 13.02B), as the
/// `config.json` of the Hugging Face conversions; `None` for another name.
pub fn builtin(name: &str) -> Option<LlamaConfig> {
    let (hidden, inter, layers, heads) = match name.trim().to_ascii_lowercase().as_str() {
        "llama-7b" | "llama7b" => (4096, 11008, 32, 32),
        "llama-13b" | "llama13b" => (5120, 13824, 40, 40),
        _ => return None,
    };
    Some(LlamaConfig {
        vocab_size: 32000,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: Some(heads),
        rope_theta: 10000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: false,
        max_position_embeddings: 2048,
        head_dim: None,
        bos_token_id: Some(1),
        eos_token_id: Some(serde_json::Value::from(2)),
    })
}

/// Resolves `--model`: a built-in name ([`BUILTINS`]), a `config.json`, or a folder holding one.
pub fn load_config(spec: &str) -> Result<LlamaConfig> {
    if let Some(cfg) = builtin(spec) {
        return Ok(cfg);
    }
    let path = Path::new(spec);
    let file = if path.is_dir() {
        let f = path.join("config.json");
        if !f.is_file() {
            return Err(Error::Config(format!(
                "model folder {} has no config.json",
                path.display()
            )));
        }
        f
    } else if path.is_file() {
        path.to_path_buf()
    } else {
        return Err(Error::Config(format!(
            "model {spec:?} is neither a built-in config ({}) nor an existing config.json or \
             folder holding one",
            BUILTINS.join(", ")
        )));
    };
    Ok(LlamaConfig::from_file(&file)?)
}

/// Parses a memory size: a number with a unit, `80GB`, `80GiB`, `81920MiB`, `79.5 GiB`, `1TB`.
/// GPU makers label memory in binary units (an "80GB" A100 has 81920 MiB), so `KB`/`MB`/`GB`/`TB`
/// mean the same powers of 1024 as `KiB`/`MiB`/`GiB`/`TiB`; a single letter (`80G`) too. `B`
/// is bytes. A bare number is an error (the unit is required).
///
/// ```
/// use koala_trainer::plan::parse_mem;
/// assert_eq!(parse_mem("80GB").unwrap(), 80 << 30);
/// assert_eq!(parse_mem("81920MiB").unwrap(), 80 << 30);
/// assert!(parse_mem("80").is_err());
/// ```
pub fn parse_mem(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (t[..split].trim(), t[split..].trim());
    let bad = |why: &str| {
        Error::Config(format!(
            "GPU memory {s:?}: {why} (expected a number and a unit, e.g. 80GB, 80GiB, 81920MiB)"
        ))
    };
    let x: f64 = num.parse().map_err(|_| bad("no number"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" => return Err(bad("no unit")),
        "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad(&format!("unknown unit {unit:?}"))),
    };
    let bytes = x * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(bad("out of range"));
    }
    Ok(bytes.round() as u64)
}

/// `(name, in, out)` of the seven linear modules of one layer.
fn modules(cfg: &LlamaConfig) -> [(&'static str, u128, u128); 7] {
    let (c, q, kv, im) = (
        cfg.hidden_size as u128,
        cfg.q_dim() as u128,
        cfg.kv_dim() as u128,
        cfg.intermediate_size as u128,
    );
    [
        ("q_proj", c, q),
        ("k_proj", c, kv),
        ("v_proj", c, kv),
        ("o_proj", q, c),
        ("gate_proj", c, im),
        ("up_proj", c, im),
        ("down_proj", im, c),
    ]
}

/// Element counts and byte widths, all in `u128` so that no input can overflow them.
struct Model {
    layers: u128,
    /// Every base tensor's length, in `param_specs` order.
    tensors: Vec<u128>,
    /// Trainable tensors' lengths (base tensors, or LoRA `A` and `B` of every layer).
    train: Vec<u128>,
    per_layer: u128,
    /// Largest all-gather unit of the base and of the trainable parameters.
    unit: u128,
    train_unit: u128,
    /// LoRA: `(targets, r, widest input when dropout needs its scratch, else 0)`.
    lora: Option<(u128, u128, u128)>,
}

impl Model {
    fn new(s: &Setup) -> Self {
        let cfg = &s.cfg;
        let layers = cfg.num_hidden_layers as u128;
        let tensors: Vec<u128> = param_specs(cfg).iter().map(|p| p.numel() as u128).collect();
        let (c, v) = (cfg.hidden_size as u128, cfg.vocab_size as u128);
        let per_layer: u128 = 2 * c + modules(cfg).iter().map(|m| m.1 * m.2).sum::<u128>();
        let head = if cfg.tie_word_embeddings { 0 } else { v * c };
        let unit = per_layer.max(v * c).max(head + c);
        match &s.lora {
            None => Model {
                layers,
                train: tensors.clone(),
                tensors,
                per_layer,
                unit,
                train_unit: unit,
                lora: None,
            },
            Some(l) => {
                let r = l.r as u128;
                let picked: Vec<(u128, u128)> = modules(cfg)
                    .iter()
                    .filter(|m| l.targets.iter().any(|t| t == m.0))
                    .map(|m| (m.1, m.2))
                    .collect();
                let mut train = Vec::new();
                for _ in 0..layers {
                    for &(i, o) in &picked {
                        train.push(r * i);
                        train.push(o * r);
                    }
                }
                let train_unit = picked.iter().map(|&(i, o)| r * (i + o)).sum();
                let widest = if l.dropout > 0.0 {
                    picked.iter().map(|m| m.0).max().unwrap_or(0)
                } else {
                    0
                };
                Model {
                    layers,
                    tensors,
                    train,
                    per_layer,
                    unit,
                    train_unit,
                    lora: Some((picked.len() as u128, r, widest)),
                }
            }
        }
    }
}

fn sum(v: &[u128]) -> u128 {
    v.iter().sum()
}

/// `Σ shard_len(len, world)` over tensors: every rank's shard, zero padding included.
fn sharded(v: &[u128], world: u128) -> u128 {
    v.iter().map(|&l| l.div_ceil(world)).sum()
}

fn sat(x: u128) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

struct Builder {
    lines: Vec<Line>,
}

impl Builder {
    fn new() -> Self {
        Builder { lines: Vec::new() }
    }
    fn add(&mut self, name: impl Into<String>, bytes: u128, note: impl Into<String>) {
        self.lines.push(Line {
            name: name.into(),
            bytes: sat(bytes),
            note: note.into(),
        });
    }
    fn part(self, name: &'static str) -> Part {
        let bytes = self
            .lines
            .iter()
            .fold(0u64, |a, l| a.saturating_add(l.bytes));
        Part {
            name,
            bytes,
            lines: self.lines,
        }
    }
}

/// Plans one job: memory per GPU broken down by buffer, whether it fits `gpu_mem`, the largest
/// micro-batch that would, and tokens/s at the assumed MFU. Errors are [`Error::Config`] naming the
/// bad setting.
///
/// ```
/// use koala_trainer::plan::{self, Setup};
///
/// // Alpaca: LLaMA-7B, seq 512, 4×A100-80GB, micro-batch 4, bf16 mixed precision, ZeRO-1.
/// let cfg = plan::builtin("llama-7b").unwrap();
/// let mut s = Setup::new("llama-7b", cfg, 4, 512, 4);
/// s.zero = 1;
/// s.gpu_mem = Some(plan::parse_mem("80GB").unwrap());
/// let p = plan::plan(&s).unwrap();
/// assert_eq!(p.params.total, 6_738_415_616);
/// assert_eq!(p.fits, Some(true));
/// // Optimizer state (fp32 master + m + v) is sharded four ways: 12 bytes / 4 per parameter.
/// let per_param = p.part("optimizer") as f64 / p.params.total as f64;
/// assert!((per_param - 3.0).abs() < 0.01);
/// println!("{p}");
/// ```
pub fn plan(s: &Setup) -> Result<MemoryPlan> {
    s.validate()?;
    let (total, parts) = memory(s);
    let fits = s.gpu_mem.map(|m| total <= m);
    let max_micro_batch = s.gpu_mem.map(|m| {
        // Memory grows with the micro-batch: bisect for the last size that fits.
        let fits_at = |mb: usize| {
            let mut t = s.clone();
            t.micro_batch = mb;
            memory(&t).0 <= m
        };
        let (mut lo, mut hi) = (0usize, 4096usize);
        if fits_at(hi) {
            return hi;
        }
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if fits_at(mid) { lo = mid } else { hi = mid }
        }
        lo
    });
    let m = Model::new(s);
    Ok(MemoryPlan {
        setup: s.clone(),
        params: ParamCounts {
            total: sat(sum(&m.tensors)),
            trainable: sat(sum(&m.train)),
            per_layer: sat(m.per_layer),
            largest_unit: sat(m.unit),
            largest_tensor: sat(m.tensors.iter().copied().max().unwrap_or(0)),
        },
        parts,
        total,
        fits,
        max_micro_batch,
        throughput: throughput(s, &m),
        notes: notes(s),
    })
}

/// The memory of `s` (assumed valid): total bytes per GPU and the parts.
fn memory(s: &Setup) -> (u64, Vec<Part>) {
    let m = Model::new(s);
    let cfg = &s.cfg;
    let z = s.effective_zero();
    let world = s.gpus as u128;
    let eb = s.dtype.bytes() as u128;
    let bf16 = s.dtype == Dtype::Bf16;
    let dt = s.dtype.name();
    let (p_all, p_train) = (sum(&m.tensors), sum(&m.train));
    let (sh_all, sh_train) = (sharded(&m.tensors, world), sharded(&m.train, world));
    let lora = m.lora.is_some();

    // ---- parameters ---------------------------------------------------------------------------
    let mut b = Builder::new();
    let base = if lora {
        "frozen base weights"
    } else {
        "weights"
    };
    if z < 3 {
        b.add(
            base,
            p_all * eb,
            format!("{dt}, every tensor of param_specs (Llama::params), what the forward reads"),
        );
    } else {
        b.add(
            format!("{base}: shard"),
            sh_all * eb,
            format!("{dt}, 1/{world} of every tensor (ZeRO-3)"),
        );
        b.add(
            "gathered unit in flight",
            m.unit * eb,
            "ZeRO-3 all-gathers one layer (or the embedding / LM head) at a time",
        );
    }
    if lora {
        if z < 3 {
            b.add(
                "LoRA adapters",
                p_train * eb,
                format!("{dt}, A [r, in] and B [out, r] per target module and layer"),
            );
        } else {
            b.add(
                "LoRA adapters: shard",
                sh_train * eb,
                format!("{dt}, 1/{world} (ZeRO-3)"),
            );
        }
    }
    if z == 1 || z == 2 {
        b.add(
            "stepping shard",
            sh_train * eb,
            format!(
                "{dt}, the 1/{world} of the trained weights AdamW updates, then all-gathers \
                 (dp::DpAdamW)"
            ),
        );
    }
    let params = b.part("parameters");

    // ---- gradients ----------------------------------------------------------------------------
    let mut b = Builder::new();
    let what = if lora { "adapter" } else { "weight" };
    if z <= 1 {
        b.add(
            format!("{what} gradients"),
            p_train * 4,
            "fp32 (matmul_bwd keeps dw in fp32), accumulated over micro-batches (Llama::grads)",
        );
    }
    if z >= 1 {
        let note = if z == 1 {
            "fp32, the reduce-scatter target of each rank (dp::DpAdamW)"
        } else {
            "fp32, each micro-batch's gradients are reduce-scattered into it"
        };
        b.add("gradient shard", sh_train * 4, note);
    }
    if z >= 2 {
        b.add(
            "gradient bucket",
            m.train_unit * 4,
            "fp32, one unit's full gradients before their reduce-scatter",
        );
        b.add(
            "bucket's reduced shards",
            m.train_unit.div_ceil(world) * 4,
            "fp32, the reduce-scatter's output before it is added to the gradient shard",
        );
    }
    let grads = b.part("gradients");

    // ---- optimizer ----------------------------------------------------------------------------
    let mut b = Builder::new();
    let held = if z >= 1 { sh_train } else { p_train };
    let share = if z >= 1 {
        format!(", 1/{world} per rank")
    } else {
        String::new()
    };
    b.add(
        "AdamW m, v",
        held * 8,
        format!("fp32 (optim::AdamW, Backend::zeros_f32){share}"),
    );
    if bf16 {
        b.add(
            "master weights",
            held * 4,
            format!("fp32 copy of every weight that steps (Backend::upload_param){share}"),
        );
    }
    let optim = b.part("optimizer");

    // ---- activations (Llama::ensure_acts) -----------------------------------------------------
    let n = (s.micro_batch as u128) * (s.seq as u128);
    let (c, q, kv, im, v, nh) = (
        cfg.hidden_size as u128,
        cfg.q_dim() as u128,
        cfg.kv_dim() as u128,
        cfg.intermediate_size as u128,
        cfg.vocab_size as u128,
        cfg.num_attention_heads as u128,
    );
    // One LayerActs: h1, x_mid, h2 [n, c]; q, att [n, q]; k, v [n, kv]; gate, up, act [n, im]
    // at the activation dtype; rstd1, rstd2 [n] and lse [b, heads, t] in fp32.
    let layer = n * (3 * c + 2 * q + 2 * kv + 3 * im) * eb + n * (2 + nh) * 4;
    let lora_layer = m.lora.map_or(0, |(t, r, _)| t * n * r * eb);
    let mut b = Builder::new();
    let kept = if s.checkpointing { 1 } else { m.layers };
    b.add(
        format!("LayerActs x {kept}"),
        kept * layer,
        if s.checkpointing {
            "one layer's activations, recomputed from its input in the backward".to_string()
        } else {
            format!(
                "per layer: h1, x_mid, h2, q, k, v, att, gate, up, act ({dt}); rstd1, rstd2, \
                 lse (fp32)"
            )
        },
    );
    b.add(
        "residual stream res[0..=L]",
        (m.layers + 1) * n * c * eb,
        "each layer's input and the final norm's",
    );
    b.add(
        "final norm h_f, rstd_f",
        n * c * eb + n * 4,
        format!("{dt}; rstd fp32"),
    );
    if lora_layer > 0 {
        b.add(
            format!("LoRA x·Aᵀ x {kept}"),
            kept * lora_layer,
            "xa = drop(x)·Aᵀ [n, r] per target module, kept for the backward (lora_fwd)",
        );
    }
    let acts = b.part("activations");

    // ---- workspace ----------------------------------------------------------------------------
    let mut b = Builder::new();
    b.add(
        "logits",
        n * v * eb,
        "[n, vocab]; the fused cross-entropy turns them into dlogits in place",
    );
    b.add(
        "losses, loss weights",
        2 * n * 4,
        "fp32 [n] each (Acts::losses, Backend::upload_f32)",
    );
    b.add(
        "token inputs",
        4 * n * 4,
        "u32 ids, positions, segment ids, targets",
    );
    b.add("forward scratch", n * c * eb, "Acts::scratch_c [n, hidden]");
    b.add(
        "backward scratch",
        n * (3 * c + 2 * q + 2 * kv + 3 * im) * eb,
        "dres, dh, dtmp, dq, dk, dv, datt, dgate, dup, dact",
    );
    if let Some((_, r, widest)) = m.lora {
        b.add(
            "LoRA scratch",
            n * (r + widest) * eb + c * 4,
            "Acts::lora_dxa [n, r], lora_scratch = drop(x) [n, max in] when dropout > 0, \
             norm_sink (the frozen norms' fp32 weight gradients)",
        );
    }
    // Temporaries of single ops: they do not overlap (one stream, one op at a time), so the
    // largest one counts.
    let mut transient: Vec<(u128, &str)> = Vec::new();
    match s.device {
        Device::Cpu { threads } => {
            let t = threads as u128;
            let row = CPU_ATTENTION_QB * s.seq as u128 * 4;
            transient.push((
                n * q * 4 + t * row,
                "CPU attention forward: per-head outputs [b, heads, t, hd] + scores per thread",
            ));
            transient.push((
                (3 * n * q + n * nh) * 4 + 2 * t * row,
                "CPU attention backward: per-head dq, dk, dv [b, heads, 3, t, hd], D, scores",
            ));
            transient.push((
                (2 * (v + 1) + n) * 8,
                "CPU embedding backward: counting sort of token ids",
            ));
        }
        Device::Cuda => {
            transient.push((
                n * nh * 4,
                "CUDA attention backward: delta [b, heads, t] fp32",
            ));
        }
    }
    if z >= 1 && matches!(s.device, Device::Cpu { .. }) {
        // ThreadComm deposits a copy of what each rank sends for the length of the collective:
        // one tensor's gradients at ZeRO-1, one unit's (a bucket) at ZeRO-2/3.
        let big = m.train.iter().copied().max().unwrap_or(0);
        let (sent, what) = if z >= 2 {
            (
                m.train_unit,
                "reduce-scatter of one unit's gradients as a bucket: ThreadComm's copy",
            )
        } else {
            (
                big,
                "reduce-scatter of the largest gradient: ThreadComm's copy",
            )
        };
        transient.push((sent * 4, what));
    } else if z >= 1 {
        let big = m.train.iter().copied().max().unwrap_or(0);
        let shard = big.div_ceil(world);
        transient.push((
            shard * world * 4 + big * 4,
            "reduce-scatter of the largest gradient: padded and converted fp32 copies (NcclComm)",
        ));
        let gathered = if z == 3 {
            m.tensors.iter().copied().max().unwrap_or(0)
        } else {
            big
        };
        transient.push((
            gathered.div_ceil(world) * (world + 1) * eb,
            "all-gather of the largest tensor: converted shard and gathered copy (NcclComm)",
        ));
    }
    if let Some(&(bytes, what)) = transient.iter().max_by_key(|x| x.0) {
        b.add("largest op temporary", bytes, what);
    }
    if s.device == Device::Cuda {
        let mut rt = CUDA_RUNTIME_BYTES;
        let mut note = "CUDA context, cuBLAS, kernel modules (estimate)".to_string();
        if s.gpus > 1 {
            rt += NCCL_BYTES;
            note = "CUDA context, cuBLAS, kernel modules, NCCL buffers (estimate)".into();
        }
        b.add("runtime", rt, note);
    }
    let work = b.part("workspace");

    let parts = vec![params, grads, optim, acts, work];
    let total = parts.iter().fold(0u64, |a, p| a.saturating_add(p.bytes));
    (total, parts)
}

fn throughput(s: &Setup, m: &Model) -> Throughput {
    let cfg = &s.cfg;
    // The input embedding is a lookup (no multiply-adds) unless it doubles as the LM head.
    let lookup = if cfg.tie_word_embeddings {
        0.0
    } else {
        cfg.vocab_size as f64 * cfg.hidden_size as f64
    };
    let n_all = sum(&m.tensors) as f64 - lookup;
    let n_train = sum(&m.train) as f64;
    let layers = cfg.num_hidden_layers as f64;
    // Causal attention, forward + backward: half of PaLM's 12·L·T·(heads·head_dim).
    let attn = 6.0 * layers * s.seq as f64 * cfg.q_dim() as f64;
    let model = match &s.lora {
        None => 6.0 * n_all + attn,
        Some(_) => 4.0 * n_all + 6.0 * n_train + attn,
    };
    // Checkpointing recomputes every layer's forward once: 2 FLOPs per layer weight (and
    // adapter weight) per token, plus the forward third of the attention term.
    let recompute = if s.checkpointing {
        let layer_weights = m.per_layer as f64 * layers;
        let adapters = if s.lora.is_some() { n_train } else { 0.0 };
        2.0 * (layer_weights + adapters) + attn / 3.0
    } else {
        0.0
    };
    let hardware = model + recompute;
    let per_gpu = s.mfu * s.gpu_tflops * 1e12 / model;
    Throughput {
        model_flops_per_token: model,
        hardware_flops_per_token: hardware,
        tokens_per_s_per_gpu: per_gpu,
        tokens_per_s: per_gpu * s.gpus as f64,
        micro_batch_s: (s.micro_batch * s.seq) as f64 / per_gpu,
        hfu: s.mfu * hardware / model,
    }
}

fn notes(s: &Setup) -> Vec<String> {
    let mut out = Vec::new();
    if s.gpus == 1 && s.zero > 0 {
        out.push(format!(
            "ZeRO-{} shards nothing on one GPU (the trainer ignores zero1 with a single worker): \
             planned as ZeRO-0",
            s.zero
        ));
    }
    if s.effective_zero() >= 2 && s.lora.is_some() {
        out.push(format!(
            "the trainer refuses ZeRO-{} with LoRA (it would shard a frozen base it does not \
             shard): train adapters with zero = 1 or 0",
            s.effective_zero()
        ));
    }
    if s.lora.is_some() {
        out.push(
            "LoRA as Llama::with_lora allocates it: a frozen base without master copies, \
             gradients or AdamW state"
                .into(),
        );
    }
    if s.device == Device::Cuda && s.cfg.head_dim() > 128 {
        out.push(format!(
            "head_dim {} exceeds the CUDA attention kernel's limit of 128",
            s.cfg.head_dim()
        ));
    }
    if s.seq > s.cfg.max_position_embeddings {
        out.push(format!(
            "seq {} is longer than the model's max_position_embeddings {}",
            s.seq, s.cfg.max_position_embeddings
        ));
    }
    if s.device == Device::Cuda {
        out.push(
            "runtime overhead (CUDA context, cuBLAS, NCCL) is an estimate; allocator \
             fragmentation is not modelled, so keep a few GiB of headroom"
                .into(),
        );
    }
    out
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// `x` with a metric prefix; `billion` is the prefix for 1e9 (`G` for FLOPs, `B` for counts).
fn si_with(x: f64, billion: &str) -> String {
    let (v, u) = if x >= 1e12 {
        (x / 1e12, "T")
    } else if x >= 1e9 {
        (x / 1e9, billion)
    } else if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    format!("{v:.2}{u}")
}

fn si(x: f64) -> String {
    si_with(x, "G")
}

/// A parameter count: `6.74B`, `4.19M`.
fn count(x: u64) -> String {
    si_with(x as f64, "B")
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.setup;
        let p = &self.params;
        let mode = match &s.lora {
            None => "full fine-tuning".to_string(),
            Some(l) => format!(
                "LoRA r={} on {} ({} trainable)",
                l.r,
                l.targets.join(","),
                count(p.trainable)
            ),
        };
        let precision = match (s.device, s.dtype) {
            (Device::Cpu { threads }, _) => format!("CPU f32, {threads} threads"),
            (Device::Cuda, Dtype::Bf16) => "bf16 (fp32 master, grads, AdamW)".into(),
            (Device::Cuda, Dtype::F32) => "f32".into(),
        };
        writeln!(
            f,
            "{}: {} params, {mode}, {precision}",
            s.name,
            count(p.total)
        )?;
        writeln!(
            f,
            "{} GPU(s), ZeRO-{}{}, {}micro-batch {} x seq {} = {} tokens per GPU",
            s.gpus,
            s.effective_zero(),
            if s.effective_zero() != s.zero {
                format!(" (asked {})", s.zero)
            } else {
                String::new()
            },
            if s.checkpointing {
                "checkpointing, "
            } else {
                ""
            },
            s.micro_batch,
            s.seq,
            s.micro_batch * s.seq
        )?;
        writeln!(f)?;
        writeln!(f, "memory per GPU                          GiB")?;
        for part in &self.parts {
            writeln!(f, "  {:<34}{:>8.2}", part.name, gib(part.bytes))?;
            for l in &part.lines {
                writeln!(f, "    {:<32}{:>8.2}  {}", l.name, gib(l.bytes), l.note)?;
            }
        }
        write!(f, "  {:<34}{:>8.2}", "total", gib(self.total))?;
        match (s.gpu_mem, self.fits) {
            (Some(m), Some(true)) => writeln!(
                f,
                "  fits in {:.2} GiB ({:.2} GiB free)",
                gib(m),
                gib(m - self.total)
            )?,
            (Some(m), _) => writeln!(
                f,
                "  does NOT fit in {:.2} GiB ({:.2} GiB over)",
                gib(m),
                gib(self.total - m)
            )?,
            _ => writeln!(f)?,
        }
        if let Some(mb) = self.max_micro_batch {
            if mb == 0 {
                writeln!(f, "  not even micro-batch 1 fits with these settings")?;
            } else {
                writeln!(f, "  largest micro-batch that fits: {mb}")?;
            }
        }
        let t = &self.throughput;
        writeln!(f)?;
        writeln!(
            f,
            "throughput at {:.0}% MFU of {} TFLOP/s per GPU",
            s.mfu * 100.0,
            s.gpu_tflops
        )?;
        let formula = if s.lora.is_some() {
            "4·N + 6·N_lora + 6·L·seq·q_dim, N without the embedding lookup"
        } else {
            "6·N + 6·L·seq·q_dim, N without the embedding lookup"
        };
        writeln!(
            f,
            "  model FLOPs/token {} ({formula})",
            si(t.model_flops_per_token)
        )?;
        if s.checkpointing {
            writeln!(
                f,
                "  hardware FLOPs/token {} with the recomputed forward (HFU {:.0}%)",
                si(t.hardware_flops_per_token),
                t.hfu * 100.0
            )?;
        }
        writeln!(
            f,
            "  {} tokens/s ({} per GPU), {:.2} s per micro-batch",
            si(t.tokens_per_s),
            si(t.tokens_per_s_per_gpu),
            t.micro_batch_s
        )?;
        if !self.notes.is_empty() {
            writeln!(f)?;
            writeln!(f, "notes")?;
            for n in &self.notes {
                writeln!(f, "  - {n}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(name: &str, gpus: usize, seq: usize, mb: usize) -> Setup {
        Setup::new(name, builtin(name).unwrap(), gpus, seq, mb)
    }

    fn bytes(p: &MemoryPlan, part: &str, line: &str) -> u64 {
        p.parts
            .iter()
            .find(|x| x.name == part)
            .and_then(|x| x.lines.iter().find(|l| l.name == line))
            .map_or(0, |l| l.bytes)
    }

    #[test]
    fn llama_parameter_counts_match_the_published_figures() {
        let p7 = plan(&setup("llama-7b", 1, 512, 1)).unwrap().params;
        let p13 = plan(&setup("llama-13b", 1, 512, 1)).unwrap().params;
        // 6.74B and 13.02B: the counts of the HF conversions.
        assert_eq!(p7.total, 6_738_415_616);
        assert_eq!(p13.total, 13_015_864_320);
        assert_eq!(p7.per_layer, 202_383_360);
        assert_eq!(p7.largest_unit, 202_383_360);
        assert_eq!(p7.largest_tensor, 32000 * 4096);
        // LoRA r=8 on q_proj, v_proj: 32 layers · 2 · 8·(4096 + 4096) = 4.19M (PEFT prints this).
        let mut s = setup("llama-7b", 1, 512, 1);
        s.lora = Some(Lora::default());
        assert_eq!(plan(&s).unwrap().params.trainable, 4_194_304);
    }

    #[test]
    fn bf16_full_fine_tuning_is_18_bytes_per_parameter() {
        let p = plan(&setup("llama-7b", 1, 512, 1)).unwrap();
        let n = p.params.total;
        assert_eq!(p.part("parameters"), 2 * n);
        assert_eq!(p.part("gradients"), 4 * n);
        assert_eq!(p.part("optimizer"), 12 * n);
        let mut s = setup("llama-7b", 1, 512, 1);
        s.dtype = Dtype::F32;
        let p = plan(&s).unwrap();
        assert_eq!(p.part("parameters"), 4 * n);
        assert_eq!(p.part("optimizer"), 8 * n);
    }

    #[test]
    fn zero_stages_shard_what_they_should() {
        let at = |z: u8| {
            let mut s = setup("llama-13b", 8, 2048, 1);
            s.zero = z;
            plan(&s).unwrap()
        };
        let (z0, z1, z2, z3) = (at(0), at(1), at(2), at(3));
        let n = z0.params.total;
        // Per-tensor shards of 13B over 8 ranks: every tensor length divides by 8.
        let shard = n / 8;
        // Stage 1: m, v and the master are 1/8; the ranks keep full weights and gradients, plus a
        // stepping shard and a gradient shard (dp::DpAdamW).
        assert_eq!(z1.part("optimizer"), 12 * shard);
        assert_eq!(bytes(&z1, "parameters", "weights"), 2 * n);
        assert_eq!(bytes(&z1, "parameters", "stepping shard"), 2 * shard);
        assert_eq!(bytes(&z1, "gradients", "weight gradients"), 4 * n);
        assert_eq!(bytes(&z1, "gradients", "gradient shard"), 4 * shard);
        // Stage 2: gradients sharded, plus one layer's fp32 bucket and its reduced shards.
        assert_eq!(z2.part("optimizer"), 12 * shard);
        let unit = z2.params.largest_unit;
        assert_eq!(
            z2.part("gradients"),
            4 * shard + 4 * unit + 4 * unit.div_ceil(8)
        );
        assert_eq!(z2.part("parameters"), z1.part("parameters"));
        // Stage 3: weights sharded, plus one gathered layer; no separate stepping shard.
        assert_eq!(
            z3.part("parameters"),
            2 * shard + 2 * z3.params.largest_unit
        );
        assert_eq!(z3.part("gradients"), z2.part("gradients"));
        // Each stage needs less than the one before; activations do not change.
        assert!(z0.total > z1.total && z1.total > z2.total && z2.total > z3.total);
        assert_eq!(z0.part("activations"), z3.part("activations"));
        // One GPU: any stage plans as 0.
        let mut s = setup("llama-7b", 1, 512, 4);
        s.zero = 3;
        let one = plan(&s).unwrap();
        s.zero = 0;
        assert_eq!(one.total, plan(&s).unwrap().total);
        assert!(one.notes.iter().any(|n| n.contains("shards nothing")));
    }

    #[test]
    fn activations_follow_ensure_acts() {
        // A tiny config, counted by hand from Llama::ensure_acts (fp32 on the CPU).
        let cfg = LlamaConfig::from_json_str(
            r#"{"vocab_size": 100, "hidden_size": 16, "intermediate_size": 40,
                "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2}"#,
        )
        .unwrap();
        let mut s = Setup::new("tiny", cfg, 1, 10, 2);
        s.device = Device::Cpu { threads: 1 };
        s.dtype = Dtype::F32;
        let n = 20u64;
        // h1, x_mid, h2 (16) + q, att (16) + k, v (8) + gate, up, act (40) + rstd1, rstd2 + lse (4).
        let layer = n * (3 * 16 + 2 * 16 + 2 * 8 + 3 * 40 + 2 + 4);
        let res = 4 * n * 16;
        let fin = n * 16 + n;
        assert_eq!(
            plan(&s).unwrap().part("activations"),
            4 * (3 * layer + res + fin)
        );
        // Checkpointing keeps one layer's LayerActs and every layer's input.
        s.checkpointing = true;
        assert_eq!(
            plan(&s).unwrap().part("activations"),
            4 * (layer + res + fin)
        );
    }

    #[test]
    fn lora_freezes_the_base() {
        let mut s = setup("llama-7b", 1, 512, 4);
        s.lora = Some(Lora::default());
        let p = plan(&s).unwrap();
        let (n, a) = (p.params.total, p.params.trainable);
        assert_eq!(p.part("parameters"), 2 * n + 2 * a);
        assert_eq!(p.part("gradients"), 4 * a);
        assert_eq!(p.part("optimizer"), 12 * a);
        let full = plan(&setup("llama-7b", 1, 512, 4)).unwrap();
        assert!(p.part("activations") > full.part("activations"));
        assert!(p.throughput.model_flops_per_token < full.throughput.model_flops_per_token);
        s.lora = Some(Lora {
            targets: vec!["qkv".into()],
            ..Lora::default()
        });
        assert!(plan(&s).unwrap_err().to_string().contains("qkv"));
    }

    #[test]
    fn throughput_uses_six_n_plus_attention() {
        let s = setup("llama-7b", 8, 2048, 1);
        let p = plan(&s).unwrap();
        // N: every parameter but the input embedding table (32000 x 4096).
        let want = 6.0 * (6_738_415_616.0 - 131_072_000.0) + 6.0 * 32.0 * 2048.0 * 4096.0;
        assert!((p.throughput.model_flops_per_token - want).abs() < 1.0);
        let per_gpu = 0.4 * 312e12 / want;
        assert!((p.throughput.tokens_per_s - 8.0 * per_gpu).abs() < 1e-6 * per_gpu);
        let mut c = s.clone();
        c.checkpointing = true;
        let pc = plan(&c).unwrap();
        assert_eq!(
            pc.throughput.model_flops_per_token,
            p.throughput.model_flops_per_token
        );
        assert!(pc.throughput.hfu > 0.4 && pc.throughput.hfu < 0.4 * 1.4);
    }

    #[test]
    fn memory_strings() {
        for (s, want) in [
            ("80GB", 80u64 << 30),
            ("80GiB", 80 << 30),
            ("80 GiB", 80 << 30),
            ("81920MiB", 80 << 30),
            ("80g", 80 << 30),
            ("1.5TB", 3 << 39),
            ("512MB", 512 << 20),
            ("1024B", 1024),
        ] {
            assert_eq!(parse_mem(s).unwrap(), want, "{s}");
        }
        for bad in [
            "80",
            "GB",
            "eighty GB",
            "80XB",
            "",
            "-1GB",
            "0GB",
            "1.2.3GB",
        ] {
            let e = parse_mem(bad).unwrap_err().to_string();
            assert!(e.contains("GPU memory"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        assert!(
            load_config("/no/such/dir/config.json")
                .unwrap_err()
                .to_string()
                .contains("neither a built-in config")
        );
        let d = std::env::temp_dir().join(format!("koala-plan-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert!(
            load_config(d.to_str().unwrap())
                .unwrap_err()
                .to_string()
                .contains("has no config.json")
        );
        std::fs::write(d.join("config.json"), "{not json").unwrap();
        let e = load_config(d.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        std::fs::write(
            d.join("config.json"),
            r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 8,
                "num_hidden_layers": 1, "num_attention_heads": 2}"#,
        )
        .unwrap();
        assert_eq!(load_config(d.to_str().unwrap()).unwrap().hidden_size, 8);
        std::fs::remove_dir_all(&d).unwrap();
        let mut s = setup("llama-7b", 0, 512, 1);
        assert!(plan(&s).is_err());
        s.gpus = 1;
        s.seq = usize::MAX;
        assert!(plan(&s).unwrap_err().to_string().contains("too large"));
        s.seq = 512;
        s.cfg.hidden_size = 1 << 40;
        s.cfg.head_dim = Some(128);
        assert!(plan(&s).unwrap_err().to_string().contains("too large"));
        s.cfg = builtin("llama-7b").unwrap();
        s.gpus = 2;
        s.zero = 4;
        assert!(plan(&s).unwrap_err().to_string().contains("ZeRO stage 4"));
        s.zero = 0;
        s.device = Device::Cpu { threads: 2 };
        assert!(plan(&s).is_err(), "the CPU backend is f32 only");
    }

    #[test]
    fn max_micro_batch_is_the_last_that_fits() {
        let mut s = setup("llama-7b", 4, 512, 1);
        s.zero = 1;
        s.gpu_mem = Some(80 << 30);
        let p = plan(&s).unwrap();
        let mb = p.max_micro_batch.unwrap();
        assert!(mb >= 1);
        s.micro_batch = mb;
        assert_eq!(plan(&s).unwrap().fits, Some(true));
        s.micro_batch = mb + 1;
        assert_eq!(plan(&s).unwrap().fits, Some(false));
    }
}
