//! The LLaMA model over any [`Backend`]: forward, hand-derived backward (as llm.c: no autograd),
//! with every per-layer activation kept for the backward.
//!
//! Shapes, with `n = b·t` token positions: the residual stream is `[n, hidden]`; q is
//! `[n, heads·head_dim]`, k and v `[n, kv_heads·head_dim]` (the `[b, t, heads, head_dim]` layout
//! the attention op expects); the MLP runs at `[n, intermediate]`; logits are `[n, vocab]`.
use std::ops::Range;

use koala_kernels::{AttnShape, Backend, LoraShape};

use crate::config::LlamaConfig;
use crate::lora::{self, LoraConfig};
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
    /// `drop(x)·Aᵀ` of each adapted linear layer, by slot (LoRA only).
    xa: Vec<Option<B::Buf>>,
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
    // LoRA: `drop(x)` and `drop(dxa·A)` (`n·max_in` elements with dropout, else 1), `dxa`, and
    // where the frozen norms' weight gradients go (never read).
    lora_scratch: B::Buf,
    lora_dxa: B::Buf,
    norm_sink: B::Buf,
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

/// A LLaMA model with its trainable parameters and their gradients on backend `B`.
///
/// In full fine-tuning the trainable parameters are the model's weights ([`param_specs`]). With
/// a LoRA adapter ([`Llama::with_lora`]) they are the adapter's `lora_A` / `lora_B` tensors
/// (peft's names), and the model's weights are frozen: kept apart, with no gradient and no
/// optimizer state. The optimizer, data parallelism and checkpoints see only the trainable set.
pub struct Llama<B: Backend> {
    pub cfg: LlamaConfig,
    /// Names and shapes of the trainable parameters.
    pub specs: Vec<ParamSpec>,
    pub params: Vec<B::Buf>,
    /// Gradients, same order as `params`; they accumulate across [`Llama::forward_backward`]
    /// calls until [`Llama::zero_grads`].
    pub grads: Vec<B::Buf>,
    /// The frozen model weights, in [`param_specs`] order, when training an adapter.
    frozen: Option<Vec<B::Buf>>,
    lora: Option<LoraLayout>,
    /// Dropout on (training) or off (evaluation, inference).
    train_mode: bool,
    /// Seeds LoRA dropout: set per optimizer step, advanced per forward.
    dropout_seed: u64,
    dropout_calls: u64,
    /// The seed of the current forward (the backward redraws its masks).
    call_seed: u64,
    /// Activation checkpointing: one [`LayerActs`] for all layers, each layer's forward
    /// recomputed from its input (`res[l]`) just before its backward.
    checkpointing: bool,
    acts: Option<Acts<B>>,
}

/// Called by [`Llama::forward_with`], [`Llama::forward_backward_with`] and [`Llama::idle_with`]
/// around each group of parameters, as ranges of [`Llama::params`] (and of [`Llama::grads`]):
/// the embedding `0..1`, each layer's nine tensors, and the final norm with the LM head.
///
/// The order is fixed by the model, the same on every data-parallel rank, so an implementation
/// may run collectives in it (ZeRO-3: [`crate::dp::DpAdamW::hook`]):
/// - forward: `gather(embedding)`, `release(embedding)` (kept when tied), then per layer
///   `gather`, `release`, and `gather(norm, head)`;
/// - backward: `open_grads(norm, head)` (and the tied embedding), `close_grads(norm, head)`,
///   `release(norm, head)` (and the tied embedding), then per layer from the top `gather`,
///   `open_grads`, `close_grads`, `release`, and last `open_grads(embedding)` (unless tied),
///   `close_grads(embedding)`.
///
/// Under LoRA no hook is called (the trainable set is the adapter, held whole on every rank).
/// Every method defaults to doing nothing ([`NoHook`]).
pub trait ParamHook<B: Backend> {
    /// At the start of a step's gradient accumulation, beside [`Llama::zero_grads`]: gradients
    /// the hook keeps outside the model are zeroed.
    fn zero_grads(&mut self, _be: &B) -> Result<()> {
        Ok(())
    }
    /// Before `params[group]` are read: they must hold the full weights afterwards.
    fn gather(&mut self, _be: &B, _params: &mut [B::Buf], _group: Range<usize>) -> Result<()> {
        Ok(())
    }
    /// After the last read of `params[group]` in this pass: they may be freed.
    fn release(&mut self, _be: &B, _params: &mut [B::Buf], _group: Range<usize>) -> Result<()> {
        Ok(())
    }
    /// Before the backward accumulates into `grads[group]`: they must be full-size buffers,
    /// holding what is to be accumulated onto (zero, unless kept from an earlier micro-batch).
    fn open_grads(&mut self, _be: &B, _grads: &mut [B::Buf], _group: Range<usize>) -> Result<()> {
        Ok(())
    }
    /// After the backward of this micro-batch has written its last gradient into `grads[group]`.
    fn close_grads(&mut self, _be: &B, _grads: &mut [B::Buf], _group: Range<usize>) -> Result<()> {
        Ok(())
    }
}

/// The [`ParamHook`] that does nothing: every parameter and gradient stays whole in the model.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHook;

impl<B: Backend> ParamHook<B> for NoHook {}

fn acts_mut<B: Backend>(acts: &mut Option<Acts<B>>) -> Result<&mut Acts<B>> {
    acts.as_mut()
        .ok_or_else(|| Error::Invalid("activations not allocated".into()))
}

/// Where each adapter sits in [`Llama::params`].
struct LoraLayout {
    cfg: LoraConfig,
    /// `a_index[layer][slot]`: the index of `lora_A` in `params` (`lora_B` follows it).
    a_index: Vec<[Option<usize>; PER_LAYER]>,
    max_in: usize,
}

impl LoraLayout {
    fn a(&self, layer: usize, slot: usize) -> Option<usize> {
        self.a_index[layer][slot]
    }
}

/// SplitMix64's finaliser of `a` and `b`: decorrelated dropout seeds per step, call and layer.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The weights a linear layer reads and, with LoRA, its adapter; `n` token positions.
struct Linear<'a, B: Backend> {
    be: &'a B,
    /// The model's weights ([`param_specs`] order).
    base: &'a [B::Buf],
    /// The adapter tensors (`Llama::params` under LoRA).
    adapters: &'a [B::Buf],
    lora: Option<&'a LoraLayout>,
    n: usize,
    dropout: f32,
    seed: u64,
}

impl<'a, B: Backend> Linear<'a, B> {
    /// The view of a model's weights: `params` are the weights in full fine-tuning; under LoRA
    /// the weights are `frozen` and `params` the adapters. Dropout only in training mode.
    fn new(
        be: &'a B,
        params: &'a [B::Buf],
        frozen: Option<&'a [B::Buf]>,
        lora: Option<&'a LoraLayout>,
        train_mode: bool,
        seed: u64,
        n: usize,
    ) -> Self {
        Linear {
            be,
            base: frozen.unwrap_or(params),
            adapters: params,
            lora,
            n,
            dropout: match lora {
                Some(lo) if train_mode => lo.cfg.dropout,
                _ => 0.0,
            },
            seed,
        }
    }

    fn shape(&self, lc: &LoraConfig, l: usize, slot: usize, ic: usize, oc: usize) -> LoraShape {
        LoraShape {
            n: self.n,
            ic,
            r: lc.r,
            oc,
            scale: lc.scale(),
            dropout: self.dropout,
            seed: mix(self.seed, (l * PER_LAYER + slot) as u64),
        }
    }

    /// `out = x·Wᵀ` for weight `slot` of layer `l`, plus its adapter's output.
    #[allow(clippy::too_many_arguments)]
    fn fwd(
        &self,
        l: usize,
        slot: usize,
        out: &mut B::Buf,
        x: &B::Buf,
        (ic, oc): (usize, usize),
        xa: &mut [Option<B::Buf>],
        scratch: &mut B::Buf,
    ) -> Result<()> {
        let w = 1 + l * PER_LAYER + slot;
        self.be.matmul_fwd(out, x, &self.base[w], self.n, ic, oc)?;
        if let Some(lo) = self.lora
            && let Some(ia) = lo.a(l, slot)
        {
            let xa = xa[slot]
                .as_mut()
                .ok_or_else(|| Error::Invalid("LoRA activation not allocated".into()))?;
            let sh = self.shape(&lo.cfg, l, slot, ic, oc);
            let (a, b) = (&self.adapters[ia], &self.adapters[ia + 1]);
            self.be.lora_fwd(out, xa, scratch, x, a, b, &sh)?;
        }
        Ok(())
    }

    /// Backward of [`Linear::fwd`]: `dx = dout·W` (when wanted) and the weight gradients: `W`'s
    /// in full fine-tuning (`grads` in [`param_specs`] order), the adapter's under LoRA (`dx`
    /// then also gets the adapter's part).
    #[allow(clippy::too_many_arguments)]
    fn bwd(
        &self,
        l: usize,
        slot: usize,
        mut dx: Option<&mut B::Buf>,
        grads: &mut [B::Buf],
        dout: &B::Buf,
        x: &B::Buf,
        (ic, oc): (usize, usize),
        xa: &[Option<B::Buf>],
        dxa: &mut B::Buf,
        scratch: &mut B::Buf,
    ) -> Result<()> {
        let w = 1 + l * PER_LAYER + slot;
        let n = self.n;
        let Some(lo) = self.lora else {
            let dx = dx.ok_or_else(|| Error::Invalid("full fine-tuning needs dx".into()))?;
            self.be
                .matmul_bwd(dx, &mut grads[w], dout, x, &self.base[w], n, ic, oc)?;
            return Ok(());
        };
        if let Some(dx) = dx.as_deref_mut() {
            self.be
                .matmul_bwd_data(dx, dout, &self.base[w], n, ic, oc)?;
        }
        if let Some(ia) = lo.a(l, slot) {
            let xa = xa[slot]
                .as_ref()
                .ok_or_else(|| Error::Invalid("LoRA activation not allocated".into()))?;
            let sh = self.shape(&lo.cfg, l, slot, ic, oc);
            let (ga, gb) = grads[ia..].split_at_mut(1);
            let (a, b) = (&self.adapters[ia], &self.adapters[ia + 1]);
            self.be.lora_bwd(
                dx, &mut ga[0], &mut gb[0], dxa, scratch, dout, x, xa, a, b, &sh,
            )?;
        }
        Ok(())
    }
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
            frozen: None,
            lora: None,
            train_mode: false,
            dropout_seed: 0,
            dropout_calls: 0,
            call_seed: 0,
            checkpointing: false,
            acts: None,
        })
    }

    /// The model's weights `base` (checked against the config, uploaded frozen: no gradient, no
    /// master copy) with a LoRA adapter `adapter` (checked against [`lora::targets`]) as the
    /// trainable parameters, in target order, `lora_A` before `lora_B`.
    pub fn with_lora(
        be: &B,
        cfg: LlamaConfig,
        base: &Tensors,
        lc: &LoraConfig,
        adapter: &Tensors,
    ) -> Result<Self> {
        let mut frozen = Vec::new();
        for s in &param_specs(&cfg) {
            let t = base
                .get(&s.name)
                .ok_or_else(|| Error::Invalid(format!("missing tensor {}", s.name)))?;
            if t.shape != s.shape {
                return Err(Error::Invalid(format!(
                    "tensor {}: shape {:?}, expected {:?}",
                    s.name, t.shape, s.shape
                )));
            }
            frozen.push(be.upload(&t.data)?);
        }
        let targets = lora::targets(&cfg, lc)?;
        let mut a_index = vec![[None; PER_LAYER]; cfg.num_hidden_layers];
        let (mut specs, mut params, mut grads) = (Vec::new(), Vec::new(), Vec::new());
        let mut max_in = 0;
        for t in &targets {
            a_index[t.layer][t.slot] = Some(specs.len());
            max_in = max_in.max(t.ic);
            for s in [&t.a, &t.b] {
                let h = adapter
                    .get(&s.name)
                    .ok_or_else(|| Error::Invalid(format!("adapter lacks {}", s.name)))?;
                if h.shape != s.shape {
                    return Err(Error::Invalid(format!(
                        "adapter tensor {}: shape {:?}, expected {:?}",
                        s.name, h.shape, s.shape
                    )));
                }
                params.push(be.upload_param(&h.data)?);
                grads.push(be.zeros(s.numel())?);
                specs.push(s.clone());
            }
        }
        Ok(Llama {
            cfg,
            specs,
            params,
            grads,
            frozen: Some(frozen),
            lora: Some(LoraLayout {
                cfg: lc.clone(),
                a_index,
                max_in,
            }),
            train_mode: false,
            dropout_seed: 0,
            dropout_calls: 0,
            call_seed: 0,
            checkpointing: false,
            acts: None,
        })
    }

    /// The LoRA settings when the trainable parameters are an adapter.
    pub fn lora(&self) -> Option<&LoraConfig> {
        self.lora.as_ref().map(|l| &l.cfg)
    }

    /// Turns dropout on (training) or off (validation, inference: the default).
    pub fn set_train_mode(&mut self, on: bool) {
        self.train_mode = on;
    }

    /// Seeds the dropout of one optimizer step: every forward of the step draws its masks from
    /// `(seed, step, call number)`, so a resumed run redraws exactly the masks it would have.
    pub fn start_step(&mut self, seed: u64, step: u64) {
        self.dropout_seed = mix(seed, step);
        self.dropout_calls = 0;
    }

    /// Sets the call number of the next forward within the step (then counting on): the global
    /// micro-batch index, so that data-parallel ranks draw the masks one worker would.
    pub fn set_dropout_call(&mut self, call: u64) {
        self.dropout_calls = call;
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

    /// Number of parameters of the model (frozen ones included).
    pub fn n_params(&self) -> usize {
        param_specs(&self.cfg).iter().map(ParamSpec::numel).sum()
    }

    /// Number of trainable parameters: the model's, or under LoRA the adapter's.
    pub fn n_trainable(&self) -> usize {
        self.specs.iter().map(ParamSpec::numel).sum()
    }

    /// Sets every gradient to zero.
    pub fn zero_grads(&mut self, be: &B) -> Result<()> {
        for g in &mut self.grads {
            be.fill_zero(g)?;
        }
        if let Some(a) = &mut self.acts {
            be.fill_zero(&mut a.norm_sink)?;
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

    /// Layer `l`'s tensors in [`Llama::params`] (full fine-tuning), a [`ParamHook`] group.
    fn layer_group(&self, l: usize) -> Range<usize> {
        let w = 1 + l * PER_LAYER;
        w..w + PER_LAYER
    }

    /// The final norm and, unless tied to the embedding, the LM head: a [`ParamHook`] group.
    fn tail_group(&self) -> Range<usize> {
        let n = self.norm_index();
        if self.cfg.tie_word_embeddings {
            n..n + 1
        } else {
            n..n + 2
        }
    }

    /// Turns activation checkpointing on or off: with it the forward keeps only each layer's
    /// input (`L + 1` residual-stream tensors) and one layer's activations, and the backward
    /// recomputes each layer's forward from its input before its backward; the gradients are
    /// bit-identical, for about one more forward of compute.
    pub fn set_checkpointing(&mut self, on: bool) {
        if self.checkpointing != on {
            self.checkpointing = on;
            self.acts = None;
        }
    }

    /// Whether activation checkpointing is on.
    pub fn checkpointing(&self) -> bool {
        self.checkpointing
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
        let lora = self.lora.as_ref();
        // Under checkpointing one LayerActs serves every layer: it has an adapter slot where
        // any layer has one.
        let nl = cfg.num_hidden_layers;
        let kept = if self.checkpointing { 1 } else { nl };
        let adapted = |l: usize, slot: usize, lo: &LoraLayout| {
            if self.checkpointing {
                (0..nl).any(|ll| lo.a(ll, slot).is_some())
            } else {
                lo.a(l, slot).is_some()
            }
        };
        let mut layers = Vec::with_capacity(kept);
        for l in 0..kept {
            let mut xa = Vec::with_capacity(PER_LAYER);
            for slot in 0..PER_LAYER {
                xa.push(match lora.filter(|lo| adapted(l, slot, lo)) {
                    Some(lo) => Some(z(n * lo.cfg.r)?),
                    None => None,
                });
            }
            layers.push(LayerActs {
                xa,
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
            lora_scratch: z(match lora {
                Some(lo) if lo.cfg.dropout > 0.0 => n * lo.max_in,
                _ => 1,
            })?,
            lora_dxa: z(lora.map_or(1, |lo| n * lo.cfg.r))?,
            norm_sink: z(c)?,
        });
        Ok(())
    }

    /// Runs the forward pass; the logits stay on the backend (see [`Llama::logits`]).
    pub fn forward(&mut self, be: &B, inp: &Inputs<B>) -> Result<()> {
        self.forward_with(be, inp, &mut NoHook)
    }

    /// [`Llama::forward`] with `hook` called around each parameter group (ZeRO-3 gathers a
    /// group's weights before it and frees them after it). Every group is released at the end.
    pub fn forward_with(
        &mut self,
        be: &B,
        inp: &Inputs<B>,
        hook: &mut dyn ParamHook<B>,
    ) -> Result<()> {
        self.forward_pass(be, Some(inp), hook)?;
        self.release_tail(be, hook)
    }

    /// The forward over the groups, each wrapped in `hook.gather` / `hook.release`; the final
    /// norm and LM head (and the tied embedding) stay gathered for the backward. Without `inp`
    /// only the hook calls are made (see [`Llama::idle_with`]).
    fn forward_pass(
        &mut self,
        be: &B,
        inp: Option<&Inputs<B>>,
        hook: &mut dyn ParamHook<B>,
    ) -> Result<()> {
        let hooked = self.lora.is_none();
        let tied = self.cfg.tie_word_embeddings;
        if let Some(inp) = inp {
            self.ensure_acts(be, inp.b, inp.t)?;
            self.call_seed = mix(self.dropout_seed, self.dropout_calls);
            self.dropout_calls += 1;
        }
        if hooked {
            hook.gather(be, &mut self.params, 0..1)?;
        }
        if let Some(inp) = inp {
            let c = self.cfg.hidden_size;
            let p = self.frozen.as_deref().unwrap_or(&self.params);
            let a = acts_mut(&mut self.acts)?;
            be.embedding_fwd(&mut a.res[0], &inp.ids, &p[0], inp.b * inp.t, c)?;
        }
        if hooked && !tied {
            hook.release(be, &mut self.params, 0..1)?;
        }
        for l in 0..self.cfg.num_hidden_layers {
            let group = self.layer_group(l);
            if hooked {
                hook.gather(be, &mut self.params, group.clone())?;
            }
            if let Some(inp) = inp {
                self.layer_fwd(be, inp, l)?;
            }
            if hooked {
                hook.release(be, &mut self.params, group)?;
            }
        }
        if hooked {
            let tail = self.tail_group();
            hook.gather(be, &mut self.params, tail)?;
        }
        let Some(inp) = inp else { return Ok(()) };
        let (norm_i, head_i) = (self.norm_index(), self.lm_head_index());
        let cfg = &self.cfg;
        let (n, c, v) = (inp.b * inp.t, cfg.hidden_size, cfg.vocab_size);
        let p = self.frozen.as_deref().unwrap_or(&self.params);
        let a = acts_mut(&mut self.acts)?;
        let last = &a.res[cfg.num_hidden_layers];
        be.rmsnorm_fwd(
            &mut a.h_f,
            &mut a.rstd_f,
            last,
            &p[norm_i],
            n,
            c,
            cfg.rms_norm_eps,
        )?;
        be.matmul_fwd(&mut a.logits, &a.h_f, &p[head_i], n, c, v)?;
        Ok(())
    }

    /// Releases what [`Llama::forward_pass`] left gathered.
    fn release_tail(&mut self, be: &B, hook: &mut dyn ParamHook<B>) -> Result<()> {
        if self.lora.is_some() {
            return Ok(());
        }
        let tail = self.tail_group();
        hook.release(be, &mut self.params, tail)?;
        if self.cfg.tie_word_embeddings {
            hook.release(be, &mut self.params, 0..1)?;
        }
        Ok(())
    }

    /// Forward of layer `l`, from `res[l]` into `res[l + 1]`, keeping its activations in its
    /// [`LayerActs`] (the one shared slot under checkpointing).
    fn layer_fwd(&mut self, be: &B, inp: &Inputs<B>, l: usize) -> Result<()> {
        let shape = self.attn_shape(inp.b, inp.t);
        let slot = if self.checkpointing { 0 } else { l };
        let (train_mode, seed) = (self.train_mode, self.call_seed);
        let Llama {
            cfg,
            params,
            frozen,
            lora,
            acts,
            ..
        } = self;
        let n = inp.b * inp.t;
        let lin = Linear::new(
            be,
            params,
            frozen.as_deref(),
            lora.as_ref(),
            train_mode,
            seed,
            n,
        );
        let Acts {
            res,
            layers,
            scratch_c,
            lora_scratch: sc,
            ..
        } = acts_mut(acts)?;
        let (c, q, kv, im) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
        );
        let (h, kvh, hd, theta, eps) = (
            cfg.num_attention_heads,
            cfg.n_kv_heads(),
            cfg.head_dim(),
            cfg.rope_theta,
            cfg.rms_norm_eps,
        );
        let p = lin.base;
        let w = 1 + l * PER_LAYER;
        let la = &mut layers[slot];
        let (lo, hi) = res.split_at_mut(l + 1);
        let (x, x_next) = (&lo[l], &mut hi[0]);
        be.rmsnorm_fwd(&mut la.h1, &mut la.rstd1, x, &p[w], n, c, eps)?;
        lin.fwd(l, 1, &mut la.q, &la.h1, (c, q), &mut la.xa, sc)?;
        lin.fwd(l, 2, &mut la.k, &la.h1, (c, kv), &mut la.xa, sc)?;
        lin.fwd(l, 3, &mut la.v, &la.h1, (c, kv), &mut la.xa, sc)?;
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
        lin.fwd(l, 4, scratch_c, &la.att, (q, c), &mut la.xa, sc)?;
        be.add_fwd(&mut la.x_mid, x, scratch_c, n * c)?;
        be.rmsnorm_fwd(&mut la.h2, &mut la.rstd2, &la.x_mid, &p[w + 5], n, c, eps)?;
        lin.fwd(l, 6, &mut la.gate, &la.h2, (c, im), &mut la.xa, sc)?;
        lin.fwd(l, 7, &mut la.up, &la.h2, (c, im), &mut la.xa, sc)?;
        be.swiglu_fwd(&mut la.act, &la.gate, &la.up, n * im)?;
        lin.fwd(l, 8, scratch_c, &la.act, (im, c), &mut la.xa, sc)?;
        be.add_fwd(x_next, &la.x_mid, scratch_c, n * c)?;
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
        self.forward_backward_with(be, inp, targets, weights, &mut NoHook)
    }

    /// [`Llama::forward_backward`] with `hook` called around each parameter group: before a
    /// group's weights are read and after their last use, and around each group's gradients in
    /// the backward (ZeRO-2/3 reduce-scatter a group's gradients as soon as they are complete).
    pub fn forward_backward_with(
        &mut self,
        be: &B,
        inp: &Inputs<B>,
        targets: &B::Ids,
        weights: &[f32],
        hook: &mut dyn ParamHook<B>,
    ) -> Result<f64> {
        let n = inp.b * inp.t;
        if weights.len() != n {
            return Err(Error::Invalid(format!(
                "{} loss weights for {n} positions",
                weights.len()
            )));
        }
        self.forward_pass(be, Some(inp), hook)?;
        let v = self.cfg.vocab_size;
        // fp32 on every backend: in bf16, `1/count` would be rounded to 8 bits.
        let wbuf = be.upload_f32(weights)?;
        let losses = {
            let a = acts_mut(&mut self.acts)?;
            be.cross_entropy_fwd_bwd(&mut a.logits, &mut a.losses, targets, &wbuf, n, v)?;
            be.download(&a.losses)?
        };
        let loss: f64 = losses
            .iter()
            .zip(weights)
            .map(|(&l, &w)| l as f64 * w as f64)
            .sum();
        self.backward_pass(be, Some(inp), hook)?;
        Ok(loss)
    }

    /// Exactly the `hook` calls of one [`Llama::forward_backward_with`], with no computation: a
    /// data-parallel rank that has no micro-batch in this round still takes part in ZeRO-2/3's
    /// collectives, contributing zero gradients.
    pub fn idle_with(&mut self, be: &B, hook: &mut dyn ParamHook<B>) -> Result<()> {
        self.forward_pass(be, None, hook)?;
        self.backward_pass(be, None, hook)
    }

    /// Backward from the dlogits left in the logits buffer by the fused cross-entropy, group by
    /// group from the head down, each group's gradients opened and closed through `hook`. Under
    /// checkpointing each layer's forward is recomputed from its input first. Without `inp`
    /// only the hook calls are made.
    fn backward_pass(
        &mut self,
        be: &B,
        inp: Option<&Inputs<B>>,
        hook: &mut dyn ParamHook<B>,
    ) -> Result<()> {
        let hooked = self.lora.is_none();
        let tied = self.cfg.tie_word_embeddings;
        let tail = self.tail_group();
        if hooked {
            hook.open_grads(be, &mut self.grads, tail.clone())?;
            if tied {
                hook.open_grads(be, &mut self.grads, 0..1)?;
            }
        }
        if let Some(inp) = inp {
            self.head_bwd(be, inp)?;
        }
        if hooked {
            hook.close_grads(be, &mut self.grads, tail)?;
            self.release_tail(be, hook)?;
        }
        for l in (0..self.cfg.num_hidden_layers).rev() {
            let group = self.layer_group(l);
            if hooked {
                hook.gather(be, &mut self.params, group.clone())?;
                hook.open_grads(be, &mut self.grads, group.clone())?;
            }
            let mut below = true;
            if let Some(inp) = inp {
                if self.checkpointing {
                    self.layer_fwd(be, inp, l)?;
                }
                below = self.layer_bwd(be, inp, l)?;
            }
            if hooked {
                hook.close_grads(be, &mut self.grads, group.clone())?;
                hook.release(be, &mut self.params, group)?;
            }
            if !below {
                break;
            }
        }
        if hooked && !tied {
            hook.open_grads(be, &mut self.grads, 0..1)?;
        }
        if let Some(inp) = inp
            && self.frozen.is_none()
        {
            let a = acts_mut(&mut self.acts)?;
            let (n, c) = (inp.b * inp.t, self.cfg.hidden_size);
            be.embedding_bwd(&mut self.grads[0], &a.dres, &inp.ids, n, c)?;
        }
        if hooked {
            hook.close_grads(be, &mut self.grads, 0..1)?;
        }
        Ok(())
    }

    /// Backward of the LM head and the final norm, into `dres`. Under LoRA the frozen weights
    /// get no gradient (their matmuls compute only the input gradient).
    fn head_bwd(&mut self, be: &B, inp: &Inputs<B>) -> Result<()> {
        let (norm_i, head_i) = (self.norm_index(), self.lm_head_index());
        let frozen = self.frozen.is_some();
        let Llama {
            cfg,
            params,
            grads: g,
            frozen: base,
            acts,
            ..
        } = self;
        let p = base.as_deref().unwrap_or(params);
        let a = acts_mut(acts)?;
        let (n, c, v) = (inp.b * inp.t, cfg.hidden_size, cfg.vocab_size);
        if frozen {
            be.matmul_bwd_data(&mut a.dh, &a.logits, &p[head_i], n, c, v)?;
        } else {
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
        }
        let dnorm = if frozen {
            &mut a.norm_sink
        } else {
            &mut g[norm_i]
        };
        let last = &a.res[cfg.num_hidden_layers];
        be.rmsnorm_bwd(&mut a.dres, dnorm, &a.dh, last, &p[norm_i], &a.rstd_f, n, c)?;
        Ok(())
    }

    /// Backward of layer `l` from `dres` (the gradient at `res[l + 1]`) to the gradient at
    /// `res[l]`, from the activations in its [`LayerActs`]. Returns whether the layers below
    /// need the gradient: under LoRA nothing below layer 0's q/k/v projections is trainable, so
    /// their input gradient (and the norm and embedding backward after it) is skipped.
    fn layer_bwd(&mut self, be: &B, inp: &Inputs<B>, l: usize) -> Result<bool> {
        let shape = self.attn_shape(inp.b, inp.t);
        let slot = if self.checkpointing { 0 } else { l };
        let (train_mode, seed) = (self.train_mode, self.call_seed);
        let Llama {
            cfg,
            params,
            grads: g,
            frozen,
            lora,
            acts,
            ..
        } = self;
        let n = inp.b * inp.t;
        let is_frozen = frozen.is_some();
        let lin = Linear::new(
            be,
            params,
            frozen.as_deref(),
            lora.as_ref(),
            train_mode,
            seed,
            n,
        );
        let p = lin.base;
        let a = acts_mut(acts)?;
        let (c, q, kv, im) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
        );
        let (h, kvh, hd, theta) = (
            cfg.num_attention_heads,
            cfg.n_kv_heads(),
            cfg.head_dim(),
            cfg.rope_theta,
        );
        let la = &a.layers[slot];
        let w = 1 + l * PER_LAYER;
        let (dxa, sc) = (&mut a.lora_dxa, &mut a.lora_scratch);
        // res[l+1] = x_mid + down(act)
        lin.bwd(
            l,
            8,
            Some(&mut a.dact),
            g,
            &a.dres,
            &la.act,
            (im, c),
            &la.xa,
            dxa,
            sc,
        )?;
        be.swiglu_bwd(&mut a.dgate, &mut a.dup, &a.dact, &la.gate, &la.up, n * im)?;
        lin.bwd(
            l,
            6,
            Some(&mut a.dh),
            g,
            &a.dgate,
            &la.h2,
            (c, im),
            &la.xa,
            dxa,
            sc,
        )?;
        lin.bwd(
            l,
            7,
            Some(&mut a.dtmp),
            g,
            &a.dup,
            &la.h2,
            (c, im),
            &la.xa,
            dxa,
            sc,
        )?;
        be.add_inplace(&mut a.dh, &a.dtmp, n * c)?;
        let dnorm = if is_frozen {
            &mut a.norm_sink
        } else {
            &mut g[w + 5]
        };
        be.rmsnorm_bwd(
            &mut a.dtmp,
            dnorm,
            &a.dh,
            &la.x_mid,
            &p[w + 5],
            &la.rstd2,
            n,
            c,
        )?;
        be.add_inplace(&mut a.dres, &a.dtmp, n * c)?;
        // x_mid = res[l] + o_proj(att)
        lin.bwd(
            l,
            4,
            Some(&mut a.datt),
            g,
            &a.dres,
            &la.att,
            (q, c),
            &la.xa,
            dxa,
            sc,
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
        let below = !(is_frozen && l == 0);
        lin.bwd(
            l,
            1,
            below.then_some(&mut a.dh),
            g,
            &a.dq,
            &la.h1,
            (c, q),
            &la.xa,
            dxa,
            sc,
        )?;
        lin.bwd(
            l,
            2,
            below.then_some(&mut a.dtmp),
            g,
            &a.dk,
            &la.h1,
            (c, kv),
            &la.xa,
            dxa,
            sc,
        )?;
        if below {
            be.add_inplace(&mut a.dh, &a.dtmp, n * c)?;
        }
        lin.bwd(
            l,
            3,
            below.then_some(&mut a.dtmp),
            g,
            &a.dv,
            &la.h1,
            (c, kv),
            &la.xa,
            dxa,
            sc,
        )?;
        if !below {
            return Ok(false);
        }
        be.add_inplace(&mut a.dh, &a.dtmp, n * c)?;
        let dnorm = if is_frozen {
            &mut a.norm_sink
        } else {
            &mut g[w]
        };
        be.rmsnorm_bwd(&mut a.dtmp, dnorm, &a.dh, &a.res[l], &p[w], &la.rstd1, n, c)?;
        be.add_inplace(&mut a.dres, &a.dtmp, n * c)?;
        Ok(true)
    }

    /// Drops the cached activations (frees memory between phases).
    pub fn release_activations(&mut self) {
        self.acts = None;
    }
}
