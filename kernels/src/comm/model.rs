//! A minimal LLaMA (pre-norm decoder: RMSNorm, RoPE, causal GQA attention with packing, SwiGLU,
//! untied LM head) written directly on the op set, generic over [`Backend`].
//!
//! It is the test vehicle of the backends, not the product's model (that lives in the trainer):
//! the data-parallel equivalence test runs its training step on 1 and N workers, the GPU tests
//! compare its CUDA step with its CPU step, and `benches/gpu_step.rs` times it on a 1B-class
//! configuration.
//!
//! ```
//! use koala_kernels::comm::model::{Batch, Config, TinyLlama};
//! use koala_kernels::CpuBackend;
//!
//! let be = CpuBackend::new();
//! let cfg = Config::tiny();
//! let mut model = TinyLlama::new(&be, cfg, 7).unwrap();
//! let batch = Batch::synthetic(&cfg, 1, 3);
//! let loss = model.forward_backward(&be, &batch).unwrap();
//! assert!(loss.is_finite() && loss > 0.0);
//! ```
use crate::{AttnShape, Backend, Error, Result};

/// Model shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    pub vocab: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub ffn: usize,
    pub seq_len: usize,
    pub rope_theta: f32,
    pub norm_eps: f32,
}

impl Config {
    /// A few-thousand-parameter model for tests.
    pub fn tiny() -> Self {
        Config {
            vocab: 37,
            dim: 16,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            ffn: 24,
            seq_len: 8,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
        }
    }

    /// A 1.1B-parameter LLaMA (the TinyLlama-1.1B shape: dim 2048, 22 layers, 32 heads, 4 kv heads).
    pub fn llama_1b(seq_len: usize) -> Self {
        Config {
            vocab: 32_000,
            dim: 2048,
            n_layers: 22,
            n_heads: 32,
            n_kv_heads: 4,
            ffn: 5632,
            seq_len,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// Shapes `[len, fan_in]` of every parameter tensor, in [`TinyLlama::params`] order.
    pub fn param_shapes(&self) -> Vec<(usize, usize)> {
        let (c, hd) = (self.dim, self.head_dim());
        let mut v = vec![(self.vocab * c, c)];
        for _ in 0..self.n_layers {
            v.extend([
                (c, 0),
                (self.n_heads * hd * c, c),
                (self.n_kv_heads * hd * c, c),
                (self.n_kv_heads * hd * c, c),
                (c * self.n_heads * hd, self.n_heads * hd),
                (c, 0),
                (self.ffn * c, c),
                (self.ffn * c, c),
                (c * self.ffn, self.ffn),
            ]);
        }
        v.extend([(c, 0), (self.vocab * c, c)]);
        v
    }

    /// Number of parameters.
    pub fn n_params(&self) -> usize {
        self.param_shapes().iter().map(|s| s.0).sum()
    }

    /// Training FLOPs per token: 6·params plus the attention scores and values (causal: half of
    /// `12·layers·seq·dim`), as in the PaLM MFU definition.
    pub fn flops_per_token(&self) -> f64 {
        6.0 * self.n_params() as f64 + 6.0 * (self.n_layers * self.seq_len * self.dim) as f64
    }
}

/// One batch of packed sequences, `b` rows of `cfg.seq_len` tokens.
#[derive(Clone, Debug)]
pub struct Batch {
    pub b: usize,
    pub ids: Vec<u32>,
    pub targets: Vec<u32>,
    pub positions: Vec<u32>,
    pub segments: Vec<u32>,
    /// Per-token loss weights (0 masks a token; the caller chooses the normalisation).
    pub weights: Vec<f32>,
}

impl Batch {
    /// A deterministic pseudo-random batch with two packed segments per row and a few masked
    /// targets, weights `1 / (number of unmasked tokens)`.
    pub fn synthetic(cfg: &Config, b: usize, seed: u64) -> Self {
        let t = cfg.seq_len;
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let n = b * t;
        let ids: Vec<u32> = (0..n).map(|_| next() % cfg.vocab as u32).collect();
        let targets: Vec<u32> = (0..n).map(|_| next() % cfg.vocab as u32).collect();
        let split = (t / 2).max(1);
        let mut positions = Vec::with_capacity(n);
        let mut segments = Vec::with_capacity(n);
        for _ in 0..b {
            for i in 0..t {
                let seg = u32::from(i >= split);
                segments.push(seg);
                positions.push(if i >= split { i - split } else { i } as u32);
            }
        }
        let mask: Vec<bool> = (0..n).map(|i| i % 5 != 4).collect();
        let count = mask.iter().filter(|&&m| m).count().max(1);
        let weights = mask
            .iter()
            .map(|&m| if m { 1.0 / count as f32 } else { 0.0 })
            .collect();
        Batch {
            b,
            ids,
            targets,
            positions,
            segments,
            weights,
        }
    }

    /// Rows `[from, from + rows)` of the batch, with the weights left as they are (so the slices'
    /// gradients sum to the full batch's) scaled by `scale`.
    pub fn rows(&self, seq_len: usize, from: usize, rows: usize, scale: f32) -> Batch {
        let r = from * seq_len..(from + rows) * seq_len;
        Batch {
            b: rows,
            ids: self.ids[r.clone()].to_vec(),
            targets: self.targets[r.clone()].to_vec(),
            positions: self.positions[r.clone()].to_vec(),
            segments: self.segments[r.clone()].to_vec(),
            weights: self.weights[r].iter().map(|w| w * scale).collect(),
        }
    }
}

struct Layer<B: Backend> {
    attn_norm: B::Buf,
    wq: B::Buf,
    wk: B::Buf,
    wv: B::Buf,
    wo: B::Buf,
    mlp_norm: B::Buf,
    w_gate: B::Buf,
    w_up: B::Buf,
    w_down: B::Buf,
}

/// Saved activations of one layer.
struct Acts<B: Backend> {
    x: B::Buf,
    h: B::Buf,
    rstd1: B::Buf,
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    att: B::Buf,
    lse: B::Buf,
    x2: B::Buf,
    h2: B::Buf,
    rstd2: B::Buf,
    g: B::Buf,
    u: B::Buf,
    a: B::Buf,
}

/// The model: parameters and their gradients (accumulated by [`TinyLlama::forward_backward`]).
pub struct TinyLlama<B: Backend> {
    pub cfg: Config,
    tok_emb: B::Buf,
    layers: Vec<Layer<B>>,
    final_norm: B::Buf,
    lm_head: B::Buf,
    grads: Vec<B::Buf>,
}

/// Deterministic initial values: norms 1, matrices uniform in `±1/sqrt(fan_in)` (embedding ±1).
pub fn init_values(cfg: &Config, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    cfg.param_shapes()
        .into_iter()
        .enumerate()
        .map(|(i, (len, fan_in))| {
            if fan_in == 0 {
                vec![1.0; len]
            } else {
                let s = if i == 0 {
                    1.0
                } else {
                    1.0 / (fan_in as f64).sqrt()
                };
                (0..len).map(|_| (next() * s) as f32).collect()
            }
        })
        .collect()
}

impl<B: Backend> TinyLlama<B> {
    /// A model with [`init_values`] parameters and zero gradients.
    pub fn new(be: &B, cfg: Config, seed: u64) -> Result<Self> {
        if !cfg.dim.is_multiple_of(cfg.n_heads)
            || !cfg.n_heads.is_multiple_of(cfg.n_kv_heads)
            || !cfg.head_dim().is_multiple_of(2)
        {
            return Err(Error::Shape {
                op: "TinyLlama::new",
                detail: format!("inconsistent config {cfg:?}"),
            });
        }
        let vals = init_values(&cfg, seed);
        let mut bufs = vals
            .iter()
            .map(|v| be.upload_param(v))
            .collect::<Result<Vec<_>>>()?
            .into_iter();
        let mut next = || {
            bufs.next().ok_or_else(|| Error::Shape {
                op: "TinyLlama::new",
                detail: "parameter count".into(),
            })
        };
        let tok_emb = next()?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for _ in 0..cfg.n_layers {
            layers.push(Layer {
                attn_norm: next()?,
                wq: next()?,
                wk: next()?,
                wv: next()?,
                wo: next()?,
                mlp_norm: next()?,
                w_gate: next()?,
                w_up: next()?,
                w_down: next()?,
            });
        }
        let final_norm = next()?;
        let lm_head = next()?;
        let grads = cfg
            .param_shapes()
            .iter()
            .map(|s| be.zeros(s.0))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg,
            tok_emb,
            layers,
            final_norm,
            lm_head,
            grads,
        })
    }

    /// The parameters, in [`Config::param_shapes`] order.
    pub fn params(&self) -> Vec<&B::Buf> {
        let mut v = vec![&self.tok_emb];
        for l in &self.layers {
            v.extend([
                &l.attn_norm,
                &l.wq,
                &l.wk,
                &l.wv,
                &l.wo,
                &l.mlp_norm,
                &l.w_gate,
                &l.w_up,
                &l.w_down,
            ]);
        }
        v.extend([&self.final_norm, &self.lm_head]);
        v
    }

    /// Mutable parameters and gradients together, in the same order.
    pub fn params_and_grads_mut(&mut self) -> (Vec<&mut B::Buf>, Vec<&mut B::Buf>) {
        let mut v = vec![&mut self.tok_emb];
        for l in &mut self.layers {
            v.extend([
                &mut l.attn_norm,
                &mut l.wq,
                &mut l.wk,
                &mut l.wv,
                &mut l.wo,
                &mut l.mlp_norm,
                &mut l.w_gate,
                &mut l.w_up,
                &mut l.w_down,
            ]);
        }
        v.extend([&mut self.final_norm, &mut self.lm_head]);
        (v, self.grads.iter_mut().collect())
    }

    /// The gradients, in parameter order.
    pub fn grads(&self) -> &[B::Buf] {
        &self.grads
    }

    /// Sets every gradient to zero.
    pub fn zero_grads(&mut self, be: &B) -> Result<()> {
        self.grads.iter_mut().try_for_each(|g| be.fill_zero(g))
    }

    /// Forward and backward on one batch: accumulates the gradients of
    /// `Σ_i weights[i]·loss_i` into [`TinyLlama::grads`] and returns that weighted loss.
    pub fn forward_backward(&mut self, be: &B, batch: &Batch) -> Result<f64> {
        let cfg = self.cfg;
        let (c, t, hd) = (cfg.dim, cfg.seq_len, cfg.head_dim());
        let n = batch.b * t;
        let (qd, kvd, f, vocab) = (cfg.n_heads * hd, cfg.n_kv_heads * hd, cfg.ffn, cfg.vocab);
        for (name, len) in [
            ("ids", batch.ids.len()),
            ("targets", batch.targets.len()),
            ("positions", batch.positions.len()),
            ("segments", batch.segments.len()),
            ("weights", batch.weights.len()),
        ] {
            if len != n {
                return Err(Error::Shape {
                    op: "forward_backward",
                    detail: format!("batch {name} has {len} entries, expected {n}"),
                });
            }
        }
        let shape = AttnShape {
            b: batch.b,
            t,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: hd,
        };
        let ids = be.upload_ids(&batch.ids)?;
        let targets = be.upload_ids(&batch.targets)?;
        let pos = be.upload_ids(&batch.positions)?;
        let seg = be.upload_ids(&batch.segments)?;
        let weights = be.upload_f32(&batch.weights)?;

        // ---- forward ----
        let mut x = be.zeros(n * c)?;
        be.embedding_fwd(&mut x, &ids, &self.tok_emb, n, c)?;
        let mut acts: Vec<Acts<B>> = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let mut h = be.zeros(n * c)?;
            let mut rstd1 = be.zeros(n)?;
            be.rmsnorm_fwd(&mut h, &mut rstd1, &x, &l.attn_norm, n, c, cfg.norm_eps)?;
            let mut q = be.zeros(n * qd)?;
            let mut k = be.zeros(n * kvd)?;
            let mut v = be.zeros(n * kvd)?;
            be.matmul_fwd(&mut q, &h, &l.wq, n, c, qd)?;
            be.matmul_fwd(&mut k, &h, &l.wk, n, c, kvd)?;
            be.matmul_fwd(&mut v, &h, &l.wv, n, c, kvd)?;
            be.rope_fwd(&mut q, &pos, n, cfg.n_heads, hd, cfg.rope_theta)?;
            be.rope_fwd(&mut k, &pos, n, cfg.n_kv_heads, hd, cfg.rope_theta)?;
            let mut att = be.zeros(n * qd)?;
            let mut lse = be.zeros(batch.b * cfg.n_heads * t)?;
            be.attention_fwd(&mut att, &mut lse, &q, &k, &v, &seg, shape)?;
            let mut o = be.zeros(n * c)?;
            be.matmul_fwd(&mut o, &att, &l.wo, n, qd, c)?;
            let mut x2 = be.zeros(n * c)?;
            be.add_fwd(&mut x2, &x, &o, n * c)?;
            let mut h2 = be.zeros(n * c)?;
            let mut rstd2 = be.zeros(n)?;
            be.rmsnorm_fwd(&mut h2, &mut rstd2, &x2, &l.mlp_norm, n, c, cfg.norm_eps)?;
            let mut g = be.zeros(n * f)?;
            let mut u = be.zeros(n * f)?;
            be.matmul_fwd(&mut g, &h2, &l.w_gate, n, c, f)?;
            be.matmul_fwd(&mut u, &h2, &l.w_up, n, c, f)?;
            let mut a = be.zeros(n * f)?;
            be.swiglu_fwd(&mut a, &g, &u, n * f)?;
            let mut m = be.zeros(n * c)?;
            be.matmul_fwd(&mut m, &a, &l.w_down, n, f, c)?;
            let mut x3 = be.zeros(n * c)?;
            be.add_fwd(&mut x3, &x2, &m, n * c)?;
            acts.push(Acts {
                x: std::mem::replace(&mut x, x3),
                h,
                rstd1,
                q,
                k,
                v,
                att,
                lse,
                x2,
                h2,
                rstd2,
                g,
                u,
                a,
            });
        }
        let mut hf = be.zeros(n * c)?;
        let mut rstdf = be.zeros(n)?;
        be.rmsnorm_fwd(
            &mut hf,
            &mut rstdf,
            &x,
            &self.final_norm,
            n,
            c,
            cfg.norm_eps,
        )?;
        let mut logits = be.zeros(n * vocab)?;
        be.matmul_fwd(&mut logits, &hf, &self.lm_head, n, c, vocab)?;
        let mut losses = be.zeros(n)?;
        be.cross_entropy_fwd_bwd(&mut logits, &mut losses, &targets, &weights, n, vocab)?;
        let loss: f64 = be
            .download(&losses)?
            .iter()
            .zip(&batch.weights)
            .map(|(&l, &w)| l as f64 * w as f64)
            .sum();

        // ---- backward (logits now hold dlogits) ----
        let ng = self.grads.len();
        let (g_final_norm, g_lm_head) = (ng - 2, ng - 1);
        let mut dhf = be.zeros(n * c)?;
        be.matmul_bwd(
            &mut dhf,
            &mut self.grads[g_lm_head],
            &logits,
            &hf,
            &self.lm_head,
            n,
            c,
            vocab,
        )?;
        drop(logits);
        let mut dx = be.zeros(n * c)?;
        be.rmsnorm_bwd(
            &mut dx,
            &mut self.grads[g_final_norm],
            &dhf,
            &x,
            &self.final_norm,
            &rstdf,
            n,
            c,
        )?;
        for (li, (l, s)) in self.layers.iter().zip(acts.iter()).enumerate().rev() {
            let gi = 1 + 9 * li;
            let gr = &mut self.grads;
            // MLP branch: x3 = x2 + w_down(swiglu(w_gate h2, w_up h2))
            let mut da = be.zeros(n * f)?;
            be.matmul_bwd(&mut da, &mut gr[gi + 8], &dx, &s.a, &l.w_down, n, f, c)?;
            let mut dg = be.zeros(n * f)?;
            let mut du = be.zeros(n * f)?;
            be.swiglu_bwd(&mut dg, &mut du, &da, &s.g, &s.u, n * f)?;
            let mut dh2 = be.zeros(n * c)?;
            let mut dh2b = be.zeros(n * c)?;
            be.matmul_bwd(&mut dh2, &mut gr[gi + 6], &dg, &s.h2, &l.w_gate, n, c, f)?;
            be.matmul_bwd(&mut dh2b, &mut gr[gi + 7], &du, &s.h2, &l.w_up, n, c, f)?;
            be.add_inplace(&mut dh2, &dh2b, n * c)?;
            let mut dx2 = be.zeros(n * c)?;
            be.rmsnorm_bwd(
                &mut dx2,
                &mut gr[gi + 5],
                &dh2,
                &s.x2,
                &l.mlp_norm,
                &s.rstd2,
                n,
                c,
            )?;
            be.add_inplace(&mut dx2, &dx, n * c)?;
            // attention branch: x2 = x + wo(attention(rope(wq h), rope(wk h), wv h))
            let mut datt = be.zeros(n * qd)?;
            be.matmul_bwd(&mut datt, &mut gr[gi + 4], &dx2, &s.att, &l.wo, n, qd, c)?;
            let mut dq = be.zeros(n * qd)?;
            let mut dk = be.zeros(n * kvd)?;
            let mut dv = be.zeros(n * kvd)?;
            be.attention_bwd(
                &mut dq, &mut dk, &mut dv, &datt, &s.q, &s.k, &s.v, &s.att, &s.lse, &seg, shape,
            )?;
            be.rope_bwd(&mut dq, &pos, n, cfg.n_heads, hd, cfg.rope_theta)?;
            be.rope_bwd(&mut dk, &pos, n, cfg.n_kv_heads, hd, cfg.rope_theta)?;
            let mut dh = be.zeros(n * c)?;
            let mut dhk = be.zeros(n * c)?;
            let mut dhv = be.zeros(n * c)?;
            be.matmul_bwd(&mut dh, &mut gr[gi + 1], &dq, &s.h, &l.wq, n, c, qd)?;
            be.matmul_bwd(&mut dhk, &mut gr[gi + 2], &dk, &s.h, &l.wk, n, c, kvd)?;
            be.matmul_bwd(&mut dhv, &mut gr[gi + 3], &dv, &s.h, &l.wv, n, c, kvd)?;
            be.add_inplace(&mut dh, &dhk, n * c)?;
            be.add_inplace(&mut dh, &dhv, n * c)?;
            let mut dxa = be.zeros(n * c)?;
            be.rmsnorm_bwd(
                &mut dxa,
                &mut gr[gi],
                &dh,
                &s.x,
                &l.attn_norm,
                &s.rstd1,
                n,
                c,
            )?;
            be.add_inplace(&mut dxa, &dx2, n * c)?;
            dx = dxa;
        }
        be.embedding_bwd(&mut self.grads[0], &dx, &ids, n, c)?;
        Ok(loss)
    }
}
