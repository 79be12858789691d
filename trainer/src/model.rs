//! The LLaMA model over any [`Backend`]: forward, hand-derived backward (as llm.c: no autograd),
//! with every per-layer activation kept for the backward.
//!
//! Shapes, with `n = b·t` token positions: the residual stream is `[n, hidden]`; q is
//! `[n, heads·head_dim]`, k and v `[n, kv_heads·head_dim]` (the `[b, t, heads, head_dim]` layout
//! the attention op expects); the MLP runs at `[n, intermediate]`; logits are `[n, vocab]`.
use koala_kernels::{AttnShape, Backend};

use crate::config::LlamaConfig;
use crate::weights::{HostTensor, PER_LAYER, ParamSpec, Tensors, param_specs};
use crate::{Error, Result};

/// Activations of one transformer layer, kept from the forward for the backward.
struct LayerActs<B: Backend> {
    rstd1: B::Buf,
    h1: B::Buf,
    /// q and k after RoPE.
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    att: B::Buf,
    lse: B::Buf,
    x_mid: B::Buf,
    rstd2: B::Buf,
    h2: B::Buf,
    gate: B::Buf,
    up: B::Buf,
    act: B::Buf,
}

/// All activations and scratch buffers of one `(b, t)` shape.
struct Acts<B: Backend> {
    b: usize,
    t: usize,
    /// `res[l]` is the input of layer `l`; `res[L]` the input of the final norm.
    res: Vec<B::Buf>,
    layers: Vec<LayerActs<B>>,
    rstd_f: B::Buf,
    h_f: B::Buf,
    logits: B::Buf,
    losses: B::Buf,
    scratch_c: B::Buf,
    // Backward scratch.
    dres: B::Buf,
    dh: B::Buf,
    dtmp: B::Buf,
    dq: B::Buf,
    dk: B::Buf,
    dv: B::Buf,
    datt: B::Buf,
    dgate: B::Buf,
    dup: B::Buf,
    dact: B::Buf,
}

/// Token-level inputs of one forward pass, already on the backend.
pub struct Inputs<B: Backend> {
    pub b: usize,
    pub t: usize,
    pub ids: B::Ids,
    pub positions: B::Ids,
    pub segment_ids: B::Ids,
}

impl<B: Backend> Inputs<B> {
    /// Uploads `[b, t]` ids with their RoPE positions and segment ids.
    pub fn upload(
        be: &B,
        b: usize,
        t: usize,
        ids: &[u32],
        positions: &[u32],
        segment_ids: &[u32],
    ) -> Result<Self> {
        let n = b * t;
        if ids.len() != n || positions.len() != n || segment_ids.len() != n {
            return Err(Error::Invalid(format!(
                "inputs for [{b}, {t}]: {} ids, {} positions, {} segment ids",
                ids.len(),
                positions.len(),
                segment_ids.len()
            )));
        }
        Ok(Inputs {
            b,
            t,
            ids: be.upload_ids(ids)?,
            positions: be.upload_ids(positions)?,
            segment_ids: be.upload_ids(segment_ids)?,
        })
    }

    /// Unpacked rows: positions `0..t` and one segment per row.
    pub fn plain(be: &B, b: usize, t: usize, ids: &[u32]) -> Result<Self> {
        let pos: Vec<u32> = (0..b * t).map(|i| (i % t) as u32).collect();
        Self::upload(be, b, t, ids, &pos, &vec![0; b * t])
    }
}

/// A LLaMA model with its parameters and gradients on backend `B`.
pub struct Llama<B: Backend> {
    pub cfg: LlamaConfig,
    pub specs: Vec<ParamSpec>,
    pub params: Vec<B::Buf>,
    /// Gradients, same order as `params`; they accumulate across [`Llama::forward_backward`]
    /// calls until [`Llama::zero_grads`].
    pub grads: Vec<B::Buf>,
    acts: Option<Acts<B>>,
}

impl<B: Backend> Llama<B> {
    /// Uploads host weights (checked against the config) and allocates zero gradients.
    pub fn from_tensors(be: &B, cfg: LlamaConfig, tensors: &Tensors) -> Result<Self> {
        let specs = param_specs(&cfg);
        let mut params = Vec::with_capacity(specs.len());
        let mut grads = Vec::with_capacity(specs.len());
        for s in &specs {
            let t = tensors
                .get(&s.name)
                .ok_or_else(|| Error::Invalid(format!("missing tensor {}", s.name)))?;
            if t.shape != s.shape {
                return Err(Error::Invalid(format!(
                    "tensor {}: shape {:?}, expected {:?}",
                    s.name, t.shape, s.shape
                )));
            }
            params.push(be.upload_param(&t.data)?);
            grads.push(be.zeros(s.numel())?);
        }
        Ok(Llama {
            cfg,
            specs,
            params,
            grads,
            acts: None,
        })
    }

    /// Downloads the parameters as host tensors (HF names), at full precision: the fp32 master
    /// weights where the backend computes in bf16 ([`Backend::download_param`]).
    pub fn to_tensors(&self, be: &B) -> Result<Tensors> {
        self.download_all(be, &self.params, B::download_param)
    }

    /// Downloads the gradients as host tensors (HF names).
    pub fn grads_to_tensors(&self, be: &B) -> Result<Tensors> {
        self.download_all(be, &self.grads, B::download)
    }

    fn download_all(
        &self,
        be: &B,
        bufs: &[B::Buf],
        download: impl Fn(&B, &B::Buf) -> koala_kernels::Result<Vec<f32>>,
    ) -> Result<Tensors> {
        let mut out = Tensors::new();
        for (s, b) in self.specs.iter().zip(bufs) {
            out.insert(
                s.name.clone(),
                HostTensor {
                    shape: s.shape.clone(),
                    data: download(be, b)?,
                },
            );
        }
        Ok(out)
    }

    /// Number of parameters.
    pub fn n_params(&self) -> usize {
        self.specs.iter().map(ParamSpec::numel).sum()
    }

    /// Sets every gradient to zero.
    pub fn zero_grads(&mut self, be: &B) -> Result<()> {
        for g in &mut self.grads {
            be.fill_zero(g)?;
        }
        Ok(())
    }

    fn lm_head_index(&self) -> usize {
        if self.cfg.tie_word_embeddings {
            0
        } else {
            2 + self.cfg.num_hidden_layers * PER_LAYER
        }
    }

    fn norm_index(&self) -> usize {
        1 + self.cfg.num_hidden_layers * PER_LAYER
    }

    fn attn_shape(&self, b: usize, t: usize) -> AttnShape {
        AttnShape {
            b,
            t,
            n_heads: self.cfg.num_attention_heads,
            n_kv_heads: self.cfg.n_kv_heads(),
            head_dim: self.cfg.head_dim(),
        }
    }

    fn ensure_acts(&mut self, be: &B, b: usize, t: usize) -> Result<()> {
        if let Some(a) = &self.acts
            && a.b == b
            && a.t == t
        {
            return Ok(());
        }
        self.acts = None; // free the old shape first
        let cfg = &self.cfg;
        let n = b * t;
        let (c, q, kv, im, v) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
            cfg.vocab_size,
        );
        let z = |len: usize| be.zeros(len);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            layers.push(LayerActs {
                rstd1: z(n)?,
                h1: z(n * c)?,
                q: z(n * q)?,
                k: z(n * kv)?,
                v: z(n * kv)?,
                att: z(n * q)?,
                lse: z(b * cfg.num_attention_heads * t)?,
                x_mid: z(n * c)?,
                rstd2: z(n)?,
                h2: z(n * c)?,
                gate: z(n * im)?,
                up: z(n * im)?,
                act: z(n * im)?,
            });
        }
        let res = (0..=cfg.num_hidden_layers)
            .map(|_| z(n * c))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        self.acts = Some(Acts {
            b,
            t,
            res,
            layers,
            rstd_f: z(n)?,
            h_f: z(n * c)?,
            logits: z(n * v)?,
            losses: z(n)?,
            scratch_c: z(n * c)?,
            dres: z(n * c)?,
            dh: z(n * c)?,
            dtmp: z(n * c)?,
            dq: z(n * q)?,
            dk: z(n * kv)?,
            dv: z(n * kv)?,
            datt: z(n * q)?,
            dgate: z(n * im)?,
            dup: z(n * im)?,
            dact: z(n * im)?,
        });
        Ok(())
    }

    /// Runs the forward pass; the logits stay on the backend (see [`Llama::logits`]).
    pub fn forward(&mut self, be: &B, inp: &Inputs<B>) -> Result<()> {
        self.ensure_acts(be, inp.b, inp.t)?;
        let shape = self.attn_shape(inp.b, inp.t);
        let (norm_i, head_i) = (self.norm_index(), self.lm_head_index());
        let cfg = &self.cfg;
        let p = &self.params;
        let a = self
            .acts
            .as_mut()
            .ok_or_else(|| Error::Invalid("activations not allocated".into()))?;
        let n = inp.b * inp.t;
        let (c, q, kv, im, v) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
            cfg.vocab_size,
        );
        let (h, kvh, hd, theta, eps) = (
            cfg.num_attention_heads,
            cfg.n_kv_heads(),
            cfg.head_dim(),
            cfg.rope_theta,
            cfg.rms_norm_eps,
        );
        be.embedding_fwd(&mut a.res[0], &inp.ids, &p[0], n, c)?;
        for (l, la) in a.layers.iter_mut().enumerate() {
            let w = 1 + l * PER_LAYER;
            let (lo, hi) = a.res.split_at_mut(l + 1);
            let (x, x_next) = (&lo[l], &mut hi[0]);
            be.rmsnorm_fwd(&mut la.h1, &mut la.rstd1, x, &p[w], n, c, eps)?;
            be.matmul_fwd(&mut la.q, &la.h1, &p[w + 1], n, c, q)?;
            be.matmul_fwd(&mut la.k, &la.h1, &p[w + 2], n, c, kv)?;
            be.matmul_fwd(&mut la.v, &la.h1, &p[w + 3], n, c, kv)?;
            be.rope_fwd(&mut la.q, &inp.positions, n, h, hd, theta)?;
            be.rope_fwd(&mut la.k, &inp.positions, n, kvh, hd, theta)?;
            be.attention_fwd(
                &mut la.att,
                &mut la.lse,
                &la.q,
                &la.k,
                &la.v,
                &inp.segment_ids,
                shape,
            )?;
            be.matmul_fwd(&mut a.scratch_c, &la.att, &p[w + 4], n, q, c)?;
            be.add_fwd(&mut la.x_mid, x, &a.scratch_c, n * c)?;
            be.rmsnorm_fwd(&mut la.h2, &mut la.rstd2, &la.x_mid, &p[w + 5], n, c, eps)?;
            be.matmul_fwd(&mut la.gate, &la.h2, &p[w + 6], n, c, im)?;
            be.matmul_fwd(&mut la.up, &la.h2, &p[w + 7], n, c, im)?;
            be.swiglu_fwd(&mut la.act, &la.gate, &la.up, n * im)?;
            be.matmul_fwd(&mut a.scratch_c, &la.act, &p[w + 8], n, im, c)?;
            be.add_fwd(x_next, &la.x_mid, &a.scratch_c, n * c)?;
        }
        let last = &a.res[cfg.num_hidden_layers];
        be.rmsnorm_fwd(&mut a.h_f, &mut a.rstd_f, last, &p[norm_i], n, c, eps)?;
        be.matmul_fwd(&mut a.logits, &a.h_f, &p[head_i], n, c, v)?;
        Ok(())
    }

    /// The logits of the last forward, `[b·t, vocab]`, on the host.
    pub fn logits(&self, be: &B) -> Result<Vec<f32>> {
        let a = self
            .acts
            .as_ref()
            .ok_or_else(|| Error::Invalid("no forward pass yet".into()))?;
        Ok(be.download(&a.logits)?)
    }

    /// The residual stream `[b·t, hidden]` of the last forward at the input of layer `l`
    /// (`l = num_hidden_layers` gives the input of the final norm), for inspecting activations
    /// layer by layer (e.g. against HF's `output_hidden_states`).
    pub fn hidden_state(&self, be: &B, l: usize) -> Result<Vec<f32>> {
        let a = self
            .acts
            .as_ref()
            .ok_or_else(|| Error::Invalid("no forward pass yet".into()))?;
        let r = a
            .res
            .get(l)
            .ok_or_else(|| Error::Invalid(format!("layer {l} out of range")))?;
        Ok(be.download(r)?)
    }

    /// Forward, fused cross-entropy and backward. `targets[i]` is the token position `i`
    /// predicts and `weights[i]` its weight in the loss (0 masks it); the returned loss is
    /// `Σ weights[i]·loss[i]`. Gradients accumulate into [`Llama::grads`].
    pub fn forward_backward(
        &mut self,
        be: &B,
        inp: &Inputs<B>,
        targets: &B::Ids,
        weights: &[f32],
    ) -> Result<f64> {
        let n = inp.b * inp.t;
        if weights.len() != n {
            return Err(Error::Invalid(format!(
                "{} loss weights for {n} positions",
                weights.len()
            )));
        }
        self.forward(be, inp)?;
        let v = self.cfg.vocab_size;
        // fp32 on every backend: in bf16, `1/count` would be rounded to 8 bits.
        let wbuf = be.upload_f32(weights)?;
        let losses = {
            let a = self
                .acts
                .as_mut()
                .ok_or_else(|| Error::Invalid("activations not allocated".into()))?;
            be.cross_entropy_fwd_bwd(&mut a.logits, &mut a.losses, targets, &wbuf, n, v)?;
            be.download(&a.losses)?
        };
        let loss: f64 = losses
            .iter()
            .zip(weights)
            .map(|(&l, &w)| l as f64 * w as f64)
            .sum();
        self.backward(be, inp)?;
        Ok(loss)
    }

    /// Backward from the dlogits left in the logits buffer by the fused cross-entropy.
    fn backward(&mut self, be: &B, inp: &Inputs<B>) -> Result<()> {
        let shape = self.attn_shape(inp.b, inp.t);
        let (norm_i, head_i) = (self.norm_index(), self.lm_head_index());
        let cfg = &self.cfg;
        let p = &self.params;
        let g = &mut self.grads;
        let a = self
            .acts
            .as_mut()
            .ok_or_else(|| Error::Invalid("activations not allocated".into()))?;
        let n = inp.b * inp.t;
        let (c, q, kv, im, v) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
            cfg.vocab_size,
        );
        let (h, kvh, hd, theta) = (
            cfg.num_attention_heads,
            cfg.n_kv_heads(),
            cfg.head_dim(),
            cfg.rope_theta,
        );
        let nl = cfg.num_hidden_layers;
        be.matmul_bwd(
            &mut a.dh,
            &mut g[head_i],
            &a.logits,
            &a.h_f,
            &p[head_i],
            n,
            c,
            v,
        )?;
        be.rmsnorm_bwd(
            &mut a.dres,
            &mut g[norm_i],
            &a.dh,
            &a.res[nl],
            &p[norm_i],
            &a.rstd_f,
            n,
            c,
        )?;
        for l in (0..nl).rev() {
            let la = &a.layers[l];
            let w = 1 + l * PER_LAYER;
            // res[l+1] = x_mid + down(act)
            be.matmul_bwd(
                &mut a.dact,
                &mut g[w + 8],
                &a.dres,
                &la.act,
                &p[w + 8],
                n,
                im,
                c,
            )?;
            be.swiglu_bwd(&mut a.dgate, &mut a.dup, &a.dact, &la.gate, &la.up, n * im)?;
            be.matmul_bwd(
                &mut a.dh,
                &mut g[w + 6],
                &a.dgate,
                &la.h2,
                &p[w + 6],
                n,
                c,
                im,
            )?;
            be.matmul_bwd(
                &mut a.dtmp,
                &mut g[w + 7],
                &a.dup,
                &la.h2,
                &p[w + 7],
                n,
                c,
                im,
            )?;
            be.add_inplace(&mut a.dh, &a.dtmp, n * c)?;
            be.rmsnorm_bwd(
                &mut a.dtmp,
                &mut g[w + 5],
                &a.dh,
                &la.x_mid,
                &p[w + 5],
                &la.rstd2,
                n,
                c,
            )?;
            be.add_inplace(&mut a.dres, &a.dtmp, n * c)?;
            // x_mid = res[l] + o_proj(att)
            be.matmul_bwd(
                &mut a.datt,
                &mut g[w + 4],
                &a.dres,
                &la.att,
                &p[w + 4],
                n,
                q,
                c,
            )?;
            be.attention_bwd(
                &mut a.dq,
                &mut a.dk,
                &mut a.dv,
                &a.datt,
                &la.q,
                &la.k,
                &la.v,
                &la.att,
                &la.lse,
                &inp.segment_ids,
                shape,
            )?;
            be.rope_bwd(&mut a.dq, &inp.positions, n, h, hd, theta)?;
            be.rope_bwd(&mut a.dk, &inp.positions, n, kvh, hd, theta)?;
            be.matmul_bwd(&mut a.dh, &mut g[w + 1], &a.dq, &la.h1, &p[w + 1], n, c, q)?;
            be.matmul_bwd(
                &mut a.dtmp,
                &mut g[w + 2],
                &a.dk,
                &la.h1,
                &p[w + 2],
                n,
                c,
                kv,
            )?;
            be.add_inplace(&mut a.dh, &a.dtmp, n * c)?;
            be.matmul_bwd(
                &mut a.dtmp,
                &mut g[w + 3],
                &a.dv,
                &la.h1,
                &p[w + 3],
                n,
                c,
                kv,
            )?;
            be.add_inplace(&mut a.dh, &a.dtmp, n * c)?;
            be.rmsnorm_bwd(
                &mut a.dtmp,
                &mut g[w],
                &a.dh,
                &a.res[l],
                &p[w],
                &la.rstd1,
                n,
                c,
            )?;
            be.add_inplace(&mut a.dres, &a.dtmp, n * c)?;
        }
        be.embedding_bwd(&mut g[0], &a.dres, &inp.ids, n, c)?;
        Ok(())
    }

    /// Drops the cached activations (frees memory between phases).
    pub fn release_activations(&mut self) {
        self.acts = None;
    }
}
