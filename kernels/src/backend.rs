//! The op set: one backend trait, one method per op direction.
//!
//! Every op has a forward and a backward with the contract written on its method. The CPU backend
//! ([`crate::cpu`]) is the reference; the CUDA backend implements the same trait with the same
//! semantics. Layout conventions shared by all ops:
//!
//! * Tensors are dense, row-major `f32` buffers (`Self::Buf`); token ids, targets, positions and
//!   segment ids are `u32` buffers (`Self::Ids`).
//! * `n` is the number of token positions in a batch (`n = b * t`), `c` a channel dimension.
//! * Activations of a linear layer are `[n, c]`; a linear weight has the Hugging Face layout
//!   `[out, in]`, so `out = inp · wᵀ`.
//! * Attention tensors are `[b, t, heads, head_dim]` (exactly what the q/k/v projections produce).
//! * **Gradient rule:** gradients of *weights* accumulate (`+=`, so gradient accumulation is free);
//!   gradients of *activations* overwrite (`=`). Each method says which applies.
//! * Backends are deterministic: the same inputs give bit-identical outputs whatever the thread
//!   count (the CPU backend fixes every reduction order).
use crate::Result;

/// AdamW hyperparameters for one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay (`p -= lr * wd * p`), as in `torch.optim.AdamW`.
    pub weight_decay: f32,
    /// 1-based step count, used for bias correction.
    pub step: u64,
    /// Every gradient is multiplied by this before use (gradient clipping folds in here).
    pub grad_scale: f32,
}

/// Shapes of one causal attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub b: usize,
    pub t: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads; `n_heads % n_kv_heads == 0` (grouped-query attention).
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// Shapes and constants of one LoRA-adapted linear layer (see [`Backend::lora_fwd`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraShape {
    /// Token positions.
    pub n: usize,
    /// Input features of the adapted linear layer.
    pub ic: usize,
    /// The adapter's rank.
    pub r: usize,
    /// Output features of the adapted linear layer.
    pub oc: usize,
    /// `lora_alpha / r`.
    pub scale: f32,
    /// Dropout probability on the adapter's input (`0` disables it).
    pub dropout: f32,
    /// Seeds the dropout mask ([`lora_keep`]); the same seed gives the same mask in the forward
    /// and the backward, on every backend.
    pub seed: u64,
}

/// Whether LoRA dropout keeps element `i` of a call seeded with `seed` at drop probability `p`:
/// a SplitMix64 hash of `(seed, i)` turned into 24 uniform bits, kept when `u >= p`. The CUDA
/// kernel (`kernels/cuda/lora.cu`) computes the same bits, so both backends draw the same mask.
///
/// ```
/// use koala_kernels::backend::lora_keep;
/// let kept = (0..10_000u64).filter(|&i| lora_keep(7, i, 0.25)).count();
/// assert!((7_200..7_800).contains(&kept));
/// assert!((0..100u64).all(|i| lora_keep(7, i, 0.0)));
/// ```
pub fn lora_keep(seed: u64, i: u64, p: f32) -> bool {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32) * (1.0 / 16_777_216.0) >= p
}

/// The op set. `Buf` holds `f32`, `Ids` holds `u32`.
pub trait Backend: Send + Sync {
    /// An `f32` tensor living on this backend.
    type Buf: Send + Sync;
    /// A `u32` tensor living on this backend.
    type Ids: Send + Sync;

    /// A short name for logs (`cpu`, `cuda:0`).
    fn name(&self) -> String;

    // ---- memory -------------------------------------------------------------------------------
    /// A zero-filled buffer of `len` elements.
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    /// Copies host data into a new buffer.
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    /// Copies a buffer back to the host.
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// Copies host ids into a new id buffer.
    fn upload_ids(&self, ids: &[u32]) -> Result<Self::Ids>;

    // ---- full-precision training state -------------------------------------------------------
    // A backend that computes in reduced precision (CUDA bf16) must not round what training
    // carries from step to step. These four calls say which buffers those are; on a backend that
    // is fp32 throughout they are plain `upload` / `download` / `zeros`.

    /// Copies a trainable parameter to the device, keeping an exact full-precision copy of `data`
    /// (the fp32 master weight) where the buffer itself is stored in lower precision.
    fn upload_param(&self, data: &[f32]) -> Result<Self::Buf> {
        self.upload(data)
    }
    /// A parameter's full-precision value (its master copy where it has one): what checkpoints
    /// and exported models must hold, so that a resumed run continues from exactly where it was.
    fn download_param(&self, buf: &Self::Buf) -> Result<Vec<f32>> {
        self.download(buf)
    }
    /// A buffer stored in fp32 whatever the compute precision, from host data: optimizer state
    /// (AdamW `m`, `v`) and loss weights, which bf16 would round to 8 bits.
    fn upload_f32(&self, data: &[f32]) -> Result<Self::Buf> {
        self.upload(data)
    }
    /// A zero-filled buffer stored in fp32 whatever the compute precision (optimizer state).
    fn zeros_f32(&self, len: usize) -> Result<Self::Buf> {
        self.zeros(len)
    }
    /// Number of elements in a buffer.
    fn len(&self, buf: &Self::Buf) -> usize;
    /// Sets every element to zero.
    fn fill_zero(&self, buf: &mut Self::Buf) -> Result<()>;
    /// `dst = src` (same length).
    fn copy(&self, dst: &mut Self::Buf, src: &Self::Buf) -> Result<()>;

    // ---- embedding ----------------------------------------------------------------------------
    /// `out[i, :] = table[ids[i], :]`. `out: [n, c]`, `ids: [n]`, `table: [vocab, c]`.
    /// An id `>= vocab` is an error, never an out-of-bounds read.
    fn embedding_fwd(
        &self,
        out: &mut Self::Buf,
        ids: &Self::Ids,
        table: &Self::Buf,
        n: usize,
        c: usize,
    ) -> Result<()>;
    /// `dtable[ids[i], :] += dout[i, :]` (weight gradient: accumulates), summed in token order.
    fn embedding_bwd(
        &self,
        dtable: &mut Self::Buf,
        dout: &Self::Buf,
        ids: &Self::Ids,
        n: usize,
        c: usize,
    ) -> Result<()>;

    // ---- RMSNorm ------------------------------------------------------------------------------
    /// `rstd[i] = 1/sqrt(mean(x[i,:]²) + eps)`, `out[i,:] = x[i,:] * rstd[i] * w`.
    /// `x, out: [n, c]`, `w: [c]`, `rstd: [n]` (cached for the backward).
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_fwd(
        &self,
        out: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        n: usize,
        c: usize,
        eps: f32,
    ) -> Result<()>;
    /// `dx = ∂L/∂x` (activation gradient: overwrites), `dw += ∂L/∂w` (accumulates).
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_bwd(
        &self,
        dx: &mut Self::Buf,
        dw: &mut Self::Buf,
        dout: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        rstd: &Self::Buf,
        n: usize,
        c: usize,
    ) -> Result<()>;

    // ---- matmul -------------------------------------------------------------------------------
    /// `out[n, oc] = inp[n, ic] · w[oc, ic]ᵀ`.
    fn matmul_fwd(
        &self,
        out: &mut Self::Buf,
        inp: &Self::Buf,
        w: &Self::Buf,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()>;
    /// `dinp[n, ic] = dout · w` (overwrites) and `dw[oc, ic] += doutᵀ · inp` (accumulates).
    #[allow(clippy::too_many_arguments)]
    fn matmul_bwd(
        &self,
        dinp: &mut Self::Buf,
        dw: &mut Self::Buf,
        dout: &Self::Buf,
        inp: &Self::Buf,
        w: &Self::Buf,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()>;

    /// `dinp[n, ic] = dout · w` (overwrites): the activation half of [`Backend::matmul_bwd`],
    /// for a frozen weight that gets no gradient (LoRA's base model).
    fn matmul_bwd_data(
        &self,
        dinp: &mut Self::Buf,
        dout: &Self::Buf,
        w: &Self::Buf,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()>;

    // ---- LoRA (peft's `lora_B(lora_A(dropout(x))) · scale`) -------------------------------------
    /// Adds a LoRA adapter's output to a frozen linear layer's: `xa[n, r] = drop(x) · aᵀ`
    /// (overwrites; the backward needs it) and `out[n, oc] += s.scale · xa · bᵀ`, with
    /// `a: [r, ic]` (`lora_A`) and `b: [oc, r]` (`lora_B`). `drop` is inverted dropout: element
    /// `i` of `x` is kept where [`lora_keep`]`(s.seed, i, s.dropout)` and then multiplied by
    /// `1 / (1 − s.dropout)` (rounded to f32 once), else zeroed; `s.dropout = 0` is the
    /// identity. `scratch` receives `drop(x)` in its first `n·ic` elements (it may be longer, so one
    /// buffer serves every layer) when `s.dropout > 0`, and is not touched otherwise.
    #[allow(clippy::too_many_arguments)]
    fn lora_fwd(
        &self,
        out: &mut Self::Buf,
        xa: &mut Self::Buf,
        scratch: &mut Self::Buf,
        x: &Self::Buf,
        a: &Self::Buf,
        b: &Self::Buf,
        s: &LoraShape,
    ) -> Result<()>;
    /// Backward of [`Backend::lora_fwd`] from `dout: [n, oc]`: `db += s.scale · doutᵀ · xa` and
    /// `da += dxaᵀ · drop(x)` (weight gradients accumulate), where `dxa[n, r] = s.scale · dout · b`
    /// (overwritten; scratch for the caller), and, when `dx` is given, `dx += drop(dxa · a)`
    /// (**accumulates**: `dx` already holds the frozen layer's input gradient). `scratch` is as in
    /// the forward: at least `n·ic` elements when `s.dropout > 0`.
    #[allow(clippy::too_many_arguments)]
    fn lora_bwd(
        &self,
        dx: Option<&mut Self::Buf>,
        da: &mut Self::Buf,
        db: &mut Self::Buf,
        dxa: &mut Self::Buf,
        scratch: &mut Self::Buf,
        dout: &Self::Buf,
        x: &Self::Buf,
        xa: &Self::Buf,
        a: &Self::Buf,
        b: &Self::Buf,
        s: &LoraShape,
    ) -> Result<()>;

    // ---- RoPE (rotate-half, as Hugging Face LLaMA) ---------------------------------------------
    /// In place on `x: [n, heads, head_dim]`: for each pair `(j, j + head_dim/2)`,
    /// `inv_freq[j] = theta^(-2j/head_dim)`, `angle = positions[i] * inv_freq[j]`,
    /// `x1' = x1·cos − x2·sin`, `x2' = x2·cos + x1·sin`. `positions: [n]` (reset per packed segment).
    fn rope_fwd(
        &self,
        x: &mut Self::Buf,
        positions: &Self::Ids,
        n: usize,
        heads: usize,
        head_dim: usize,
        theta: f32,
    ) -> Result<()>;
    /// In place on the gradient: applies the transpose rotation (the same angles, `sin` negated).
    fn rope_bwd(
        &self,
        dx: &mut Self::Buf,
        positions: &Self::Ids,
        n: usize,
        heads: usize,
        head_dim: usize,
        theta: f32,
    ) -> Result<()>;

    // ---- causal attention with GQA and a segment mask ------------------------------------------
    /// `q: [b,t,n_heads,hd]`, `k, v: [b,t,n_kv_heads,hd]`, `out: [b,t,n_heads,hd]`,
    /// `segment_ids: [b*t]`, `lse: [b, n_heads, t]` (log-sum-exp of the scaled scores, cached for
    /// the backward). Query `(bi, i)` attends key `(bi, j)` iff `j <= i` and
    /// `segment_ids[bi*t+j] == segment_ids[bi*t+i]`; scores are scaled by `1/sqrt(hd)`; query head
    /// `h` reads kv head `h / (n_heads / n_kv_heads)`.
    #[allow(clippy::too_many_arguments)]
    fn attention_fwd(
        &self,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        segment_ids: &Self::Ids,
        shape: AttnShape,
    ) -> Result<()>;
    /// `dq, dk, dv` overwrite. Recomputes probabilities from `q, k` and `lse` (nothing else stored).
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd(
        &self,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        dout: &Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &Self::Buf,
        lse: &Self::Buf,
        segment_ids: &Self::Ids,
        shape: AttnShape,
    ) -> Result<()>;

    // ---- SwiGLU -------------------------------------------------------------------------------
    /// `out = silu(gate) * up`, all `[n, c]`, with `silu(x) = x·σ(x)`.
    fn swiglu_fwd(
        &self,
        out: &mut Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        len: usize,
    ) -> Result<()>;
    /// `dgate, dup` overwrite.
    fn swiglu_bwd(
        &self,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        dout: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        len: usize,
    ) -> Result<()>;

    // ---- residual -----------------------------------------------------------------------------
    /// `out = a + b` (forward of the residual add; its backward passes `dout` to both inputs,
    /// which the caller does with [`Backend::add_inplace`]).
    fn add_fwd(&self, out: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf, len: usize) -> Result<()>;
    /// `acc += x`.
    fn add_inplace(&self, acc: &mut Self::Buf, x: &Self::Buf, len: usize) -> Result<()>;

    // ---- loss ---------------------------------------------------------------------------------
    /// Fused softmax cross-entropy over `logits: [n, v]`, in place. For each row `i`:
    /// `losses[i] = logsumexp(logits[i]) − logits[i, targets[i]]` and then
    /// `logits[i, :] = weights[i] · (softmax(logits[i]) − onehot(targets[i]))` (the dlogits).
    /// No probability tensor is stored. `weights[i] = 0` masks a position (its loss is still
    /// written); the caller picks weights for a masked token mean or a per-row mean.
    /// A target `>= v` is an error.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_fwd_bwd(
        &self,
        logits: &mut Self::Buf,
        losses: &mut Self::Buf,
        targets: &Self::Ids,
        weights: &Self::Buf,
        n: usize,
        v: usize,
    ) -> Result<()>;

    // ---- optimizer ----------------------------------------------------------------------------
    /// One AdamW step on a parameter tensor, as `torch.optim.AdamW`:
    /// `g = grad·grad_scale; m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²;`
    /// `p −= lr·wd·p; p −= lr · (m/(1−β1^t)) / (sqrt(v/(1−β2^t)) + eps)`.
    fn adamw_step(
        &self,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        hp: &AdamWParams,
    ) -> Result<()>;
    /// `Σ x²` of one buffer, accumulated in `f64` in a fixed order. The global gradient norm is
    /// `sqrt` of the sum over all gradient tensors.
    fn sum_squares(&self, x: &Self::Buf) -> Result<f64>;
    /// `x *= s`.
    fn scale(&self, x: &mut Self::Buf, s: f32) -> Result<()>;
}
