//! The inference forward pass over a ragged batch: each sequence brings some new tokens (a chunk
//! of its prompt, or the one token it just sampled) at its own positions, and every projection
//! runs once over all of them. Attention reads each sequence's own [`KvCache`].
//!
//! The math is Hugging Face's `LlamaForCausalLM` in `f32`: RMSNorm as `(x · rstd) · w`, rotate-half
//! RoPE with `f32` angles and correctly rounded `cos`/`sin`, softmax attention with GQA, SwiGLU.
//! Activations live on the host; projections go through a [`Projector`]: the CPU kernel of
//! [`crate::linear`] on the memory-mapped weights, or a [`koala_kernels::Backend`] (CUDA with
//! cuBLAS where a GPU exists).
use std::sync::Arc;

use koala_kernels::Backend;
use rayon::prelude::*;

use crate::isa::Isa;
use crate::kv::KvCache;
use crate::weights::{Tensor, View, Weights};
use crate::{Error, Result};

/// Index of a projection weight: layer `l`'s q, k, v, o, gate, up, down are `7l..7l+7`; the
/// output head is `7·layers`.
pub type WeightId = usize;

/// Runs `out[m, n] = x[m, k] · W[n, k]ᵀ` for the model's projection weights.
pub trait Projector: Send {
    /// A short name for logs (`cpu`, `cuda:0`).
    fn name(&self) -> String;
    /// Projects with weight `id`; `w` is the same weight on the host.
    fn project(
        &mut self,
        out: &mut [f32],
        x: &[f32],
        id: WeightId,
        w: &Tensor,
        m: usize,
    ) -> Result<()>;
}

/// The CPU path: the memory-mapped weights, read in place.
pub struct CpuProjector;

impl Projector for CpuProjector {
    fn name(&self) -> String {
        "cpu".into()
    }
    fn project(
        &mut self,
        out: &mut [f32],
        x: &[f32],
        _id: WeightId,
        w: &Tensor,
        m: usize,
    ) -> Result<()> {
        let (n, k) = (w.shape[0], w.shape[1]);
        match w.view() {
            View::F32(w) => crate::linear::linear(out, x, w, m, k, n),
            View::Bf16(w) => crate::linear::linear(out, x, w, m, k, n),
        }
        Ok(())
    }
}

/// Projections through any kernels backend (CUDA: cuBLAS). The weights are uploaded once; each
/// call uploads `x` and downloads `out` (activations stay on the host).
pub struct BackendProjector<B: Backend> {
    be: B,
    bufs: Vec<B::Buf>,
}

impl<B: Backend + Send> BackendProjector<B>
where
    B::Buf: Send,
{
    /// Uploads every projection weight of `w` to the backend.
    pub fn new(be: B, w: &Weights) -> Result<Self> {
        let mut bufs = Vec::new();
        for t in projection_weights(w) {
            bufs.push(be.upload(&t.to_f32())?);
        }
        Ok(BackendProjector { be, bufs })
    }
}

impl<B: Backend + Send> Projector for BackendProjector<B>
where
    B::Buf: Send,
{
    fn name(&self) -> String {
        self.be.name()
    }
    fn project(
        &mut self,
        out: &mut [f32],
        x: &[f32],
        id: WeightId,
        w: &Tensor,
        m: usize,
    ) -> Result<()> {
        let (n, k) = (w.shape[0], w.shape[1]);
        let xb = self.be.upload(&x[..m * k])?;
        let mut ob = self.be.zeros(m * n)?;
        self.be.matmul_fwd(&mut ob, &xb, &self.bufs[id], m, k, n)?;
        out[..m * n].copy_from_slice(&self.be.download(&ob)?);
        Ok(())
    }
}

/// The projection weights in [`WeightId`] order.
pub fn projection_weights(w: &Weights) -> Vec<&Tensor> {
    let mut v = Vec::with_capacity(w.layers.len() * 7 + 1);
    for l in &w.layers {
        v.extend([&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]);
    }
    v.push(w.head());
    v
}

/// One sequence's part of a step.
pub struct Slice<'a> {
    pub cache: &'a mut KvCache,
    /// New tokens, at positions `cache.len ..`.
    pub tokens: &'a [u32],
    /// Whether to return the logits of the last new token.
    pub logits: bool,
}

/// The model with its RoPE table and a projector.
pub struct Model {
    pub w: Arc<Weights>,
    proj: Box<dyn Projector>,
    /// `cos`/`sin` for positions `0..max_position_embeddings`, `[pos, head_dim/2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Run each step on a rayon worker (the CPU projector): its many parallel loops then fork
    /// from inside the pool instead of each waking the pool and waiting from outside it.
    on_pool: bool,
    /// The step's buffers, kept between steps: they grow to the largest batch seen and are then
    /// reused, so a decoding step allocates nothing in the forward pass.
    scratch: Scratch,
}

/// Activations and index buffers of one step (see [`Model::step_logits`]).
#[derive(Default)]
struct Scratch {
    pos: Vec<usize>,
    ids: Vec<u32>,
    /// (slice, position) of each row, for attention.
    rows: Vec<(usize, usize)>,
    /// The rows whose logits are wanted.
    wanted: Vec<usize>,
    x: Vec<f32>,
    hb: Vec<f32>,
    qb: Vec<f32>,
    kb: Vec<f32>,
    vb: Vec<f32>,
    att: Vec<f32>,
    ob: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    last: Vec<f32>,
    normed: Vec<f32>,
    logits: Vec<f32>,
}

/// `v` with room for `n` values (grown, never shrunk); its first `n` values. Every caller
/// overwrites them all before reading.
fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

thread_local! {
    /// Attention scores of one head, per pool thread, reused across heads, layers and steps.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Model {
    /// A model that projects on the CPU.
    pub fn cpu(w: Arc<Weights>) -> Self {
        let mut m = Self::with_projector(w, Box::new(CpuProjector));
        m.on_pool = true;
        m
    }

    /// A model with any projector.
    pub fn with_projector(w: Arc<Weights>, proj: Box<dyn Projector>) -> Self {
        let cfg = &w.cfg;
        let (hd, theta) = (cfg.head_dim(), cfg.rope_theta);
        let half = hd / 2;
        let inv: Vec<f32> = (0..half)
            .map(|j| {
                let e = (2 * j) as f32 / hd as f32;
                1.0 / ((theta as f64).powf(e as f64) as f32)
            })
            .collect();
        let rows = cfg.max_position_embeddings;
        let mut cos = vec![0f32; rows * half];
        let mut sin = vec![0f32; rows * half];
        for p in 0..rows {
            for j in 0..half {
                let a = (p as f32 * inv[j]) as f64;
                cos[p * half + j] = a.cos() as f32;
                sin[p * half + j] = a.sin() as f32;
            }
        }
        Model {
            w,
            proj,
            cos,
            sin,
            on_pool: false,
            scratch: Scratch::default(),
        }
    }

    /// Where projections run.
    pub fn device(&self) -> String {
        self.proj.name()
    }

    /// Runs one step over `slices`; returns the logits of each slice that asked for them, in
    /// order. Every slice's cache grows by its token count.
    pub fn step(&mut self, slices: &mut [Slice<'_>]) -> Result<Vec<Vec<f32>>> {
        let vocab = self.w.cfg.vocab_size;
        Ok(self
            .step_logits(slices)?
            .chunks(vocab)
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// [`Model::step`] without allocating: the logits of the slices that asked for them, one
    /// `vocab_size` row each in order, in a buffer the model reuses at the next step.
    pub fn step_logits(&mut self, slices: &mut [Slice<'_>]) -> Result<&mut [f32]> {
        let mut sc = std::mem::take(&mut self.scratch);
        let r = if self.on_pool && rayon::current_thread_index().is_none() {
            // One hand-over to the pool per step instead of one per projection (57 for 8 layers).
            rayon::scope(|_| self.step_here(slices, &mut sc))
        } else {
            self.step_here(slices, &mut sc)
        };
        self.scratch = sc;
        let n = r?;
        Ok(&mut self.scratch.logits[..n])
    }

    /// The step into `sc`; returns how many logits it wrote (rows × vocab).
    fn step_here(&mut self, slices: &mut [Slice<'_>], sc: &mut Scratch) -> Result<usize> {
        let cfg = self.w.cfg.clone();
        let (c, q, kv, im, vocab) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
            cfg.vocab_size,
        );
        let (h, kvh, hd, eps) = (
            cfg.num_attention_heads,
            cfg.n_kv_heads(),
            cfg.head_dim(),
            cfg.rms_norm_eps,
        );
        let m: usize = slices.iter().map(|s| s.tokens.len()).sum();
        if m == 0 {
            return Ok(0);
        }
        // Rows: for each slice, its tokens in order; `pos[r]` the position of row r.
        let Scratch {
            pos,
            ids,
            rows,
            wanted,
            x,
            hb,
            qb,
            kb,
            vb,
            att,
            ob,
            g,
            u,
            last,
            normed,
            logits,
        } = sc;
        pos.clear();
        ids.clear();
        rows.clear();
        for s in slices.iter() {
            if s.cache.len + s.tokens.len() > s.cache.capacity {
                return Err(Error::Invalid(format!(
                    "sequence of {} tokens exceeds max_position_embeddings {}",
                    s.cache.len + s.tokens.len(),
                    s.cache.capacity
                )));
            }
            for (i, &t) in s.tokens.iter().enumerate() {
                if t as usize >= vocab {
                    return Err(Error::Invalid(format!(
                        "token id {t} >= vocab_size {vocab}"
                    )));
                }
                pos.push(s.cache.len + i);
                ids.push(t);
            }
        }
        for (si, s) in slices.iter().enumerate() {
            rows.extend((0..s.tokens.len()).map(|i| (si, s.cache.len + i)));
        }
        let w = self.w.clone();
        let embed = w.embed.as_slice();
        let x = sized(x, m * c);
        for (r, &t) in ids.iter().enumerate() {
            x[r * c..(r + 1) * c].copy_from_slice(&embed[t as usize * c..(t as usize + 1) * c]);
        }
        let hb = sized(hb, m * c);
        let (qb, kb, vb) = (sized(qb, m * q), sized(kb, m * kv), sized(vb, m * kv));
        let att = sized(att, m * q);
        let ob = sized(ob, m * c);
        let (g, u) = (sized(g, m * im), sized(u, m * im));
        for (l, lw) in w.layers.iter().enumerate() {
            let id = 7 * l;
            rmsnorm(hb, x, lw.attn_norm.as_slice(), c, eps);
            self.proj.project(qb, hb, id, &lw.q, m)?;
            self.proj.project(kb, hb, id + 1, &lw.k, m)?;
            self.proj.project(vb, hb, id + 2, &lw.v, m)?;
            self.rope(qb, pos, h, hd);
            self.rope(kb, pos, kvh, hd);
            // Append k, v to each sequence's cache, then attend.
            let mut r0 = 0;
            for s in slices.iter_mut() {
                let n = s.tokens.len();
                s.cache.k[l].extend_from_slice(&kb[r0 * kv..(r0 + n) * kv]);
                s.cache.v[l].extend_from_slice(&vb[r0 * kv..(r0 + n) * kv]);
                r0 += n;
            }
            attend(att, qb, slices, rows, l, h, kvh, hd);
            self.proj.project(ob, att, id + 3, &lw.o, m)?;
            add_inplace(x, ob);
            rmsnorm(hb, x, lw.mlp_norm.as_slice(), c, eps);
            self.proj.project(g, hb, id + 4, &lw.gate, m)?;
            self.proj.project(u, hb, id + 5, &lw.up, m)?;
            swiglu(g, u);
            self.proj.project(ob, g, id + 6, &lw.down, m)?;
            add_inplace(x, ob);
        }
        // The rows whose logits are wanted: the last new token of those slices.
        wanted.clear();
        let mut r0 = 0;
        for s in slices.iter_mut() {
            let n = s.tokens.len();
            if s.logits {
                wanted.push(r0 + n - 1);
            }
            s.cache.len += n;
            r0 += n;
        }
        if wanted.is_empty() {
            return Ok(0);
        }
        let mo = wanted.len();
        let last = sized(last, mo * c);
        for (i, &r) in wanted.iter().enumerate() {
            last[i * c..(i + 1) * c].copy_from_slice(&x[r * c..(r + 1) * c]);
        }
        let normed = sized(normed, mo * c);
        rmsnorm(normed, last, w.norm.as_slice(), c, eps);
        let logits = sized(logits, mo * vocab);
        self.proj
            .project(logits, normed, 7 * w.layers.len(), w.head(), mo)?;
        Ok(mo * vocab)
    }

    /// Rotate-half RoPE in place on `x: [rows, heads, hd]`.
    fn rope(&self, x: &mut [f32], pos: &[usize], heads: usize, hd: usize) {
        let half = hd / 2;
        let (cos, sin) = (&self.cos, &self.sin);
        x.par_chunks_mut(heads * hd)
            .zip(pos.par_iter())
            .for_each(|(row, &p)| {
                let (cs, sn) = (
                    &cos[p * half..(p + 1) * half],
                    &sin[p * half..(p + 1) * half],
                );
                for hrow in row.chunks_mut(hd) {
                    let (a, b) = hrow.split_at_mut(half);
                    for j in 0..half {
                        let (x1, x2) = (a[j], b[j]);
                        a[j] = x1 * cs[j] - x2 * sn[j];
                        b[j] = x2 * cs[j] + x1 * sn[j];
                    }
                }
            });
    }
}

/// `out[r] = (x[r] · rstd) · w`, `rstd = 1/sqrt(mean(x²) + eps)`, as HF `LlamaRMSNorm` in f32.
fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], c: usize, eps: f32) {
    for (o, xr) in out.chunks_mut(c).zip(x.chunks(c)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / c as f32;
        let rs = 1.0 / (ms + eps).sqrt();
        for ((o, &xv), &wv) in o.iter_mut().zip(xr).zip(w) {
            *o = (xv * rs) * wv;
        }
    }
}

fn add_inplace(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `g = silu(g) · u`, in parallel chunks (one `exp` per element: a batch of 16 rows of a
/// 1376-wide MLP is 22k of them per layer, too many for one thread between two projections).
fn swiglu(g: &mut [f32], u: &[f32]) {
    g.par_chunks_mut(4096)
        .zip(u.par_chunks(4096))
        .for_each(|(g, u)| {
            for (a, &b) in g.iter_mut().zip(u) {
                let s = *a / (1.0 + (-*a).exp());
                *a = s * b;
            }
        });
}

/// Causal attention of every new row over its sequence's cache (which already holds the new
/// keys and values). `att` and `q` are `[rows, heads·hd]`. The (row, head) pairs run in parallel;
/// each is computed the same way whatever the batch, so batching does not change a row's bits.
#[allow(clippy::too_many_arguments)]
fn attend(
    att: &mut [f32],
    q: &[f32],
    slices: &[Slice<'_>],
    rows: &[(usize, usize)],
    l: usize,
    h: usize,
    kvh: usize,
    hd: usize,
) {
    let group = h / kvh;
    let scale = 1.0 / (hd as f32).sqrt();
    let head_fn = pick_head();
    let items = rows.len() * h;
    let min = (items / (rayon::current_num_threads() * 4)).max(1);
    att.par_chunks_mut(hd)
        .zip(q.par_chunks(hd))
        .enumerate()
        .with_min_len(min)
        .for_each(|(idx, (out, qv))| {
            let (si, p) = rows[idx / h];
            let kh = (idx % h) / group;
            let cache = &*slices[si].cache;
            let kvd = cache.kv_dim();
            SCORES.with_borrow_mut(|scores| {
                let head = Head {
                    out,
                    q: qv,
                    k: &cache.k[l],
                    v: &cache.v[l],
                    kvd,
                    off: kh * hd,
                    len: p + 1,
                    scale,
                    scores,
                };
                // SAFETY: `pick_head` returns a SIMD version only where the CPU has its features
                // (each checks the shapes itself); the cache holds `len` positions of `kvd` floats.
                unsafe { head_fn(head) }
            })
        });
}

/// One query head's attention over `len` cached positions: `out = softmax(q·K * scale)·V`, with
/// the keys and values of that head at `off..off+hd` of each `kvd`-float cache row.
struct Head<'a> {
    out: &'a mut [f32],
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    kvd: usize,
    off: usize,
    len: usize,
    scale: f32,
    scores: &'a mut Vec<f32>,
}

type HeadFn = unsafe fn(Head<'_>);

fn pick_head() -> HeadFn {
    version(Isa::detect())
}

/// The kernel of one instruction set.
fn version(isa: Isa) -> HeadFn {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => simd::head_avx512,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => simd::head_avx2,
        _ => head_portable,
    }
}

/// Softmax of `scores` in place (`exp(s - max) / Σ`), as HF's f32 softmax.
#[inline(always)]
fn softmax(scores: &mut [f32], mx: f32) {
    let mut z = 0f32;
    for sc in scores.iter_mut() {
        *sc = (*sc - mx).exp();
        z += *sc;
    }
    for sc in scores.iter_mut() {
        *sc /= z;
    }
}

/// Portable attention of one head (any `hd`).
fn head_portable(a: Head<'_>) {
    let Head {
        out,
        q,
        k,
        v,
        kvd,
        off,
        len,
        scale,
        scores,
    } = a;
    let hd = out.len();
    scores.clear();
    scores.resize(len, 0.0);
    let mut mx = f32::NEG_INFINITY;
    for (j, sc) in scores.iter_mut().enumerate() {
        *sc = dot(q, &k[j * kvd + off..j * kvd + off + hd]) * scale;
        mx = mx.max(*sc);
    }
    softmax(scores, mx);
    out.fill(0.0);
    for (j, &pj) in scores.iter().enumerate() {
        let vr = &v[j * kvd + off..j * kvd + off + hd];
        for (o, &b) in out.iter_mut().zip(vr) {
            *o += pj * b;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use crate::isa::hsum256;

    use super::{Head, head_portable, softmax};

    /// One head with `$lanes`-wide vectors; falls back to the portable code when `hd` is not a
    /// multiple of the width.
    macro_rules! head_simd {
        ($name:ident, $feat:literal, $lanes:expr, $zero:ident, $load:ident, $store:ident,
         $fmadd:ident, $set1:ident, $reduce:ident) => {
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $name(a: Head<'_>) {
                let hd = a.out.len();
                if hd % $lanes != 0 {
                    return head_portable(a);
                }
                let Head {
                    out,
                    q,
                    k,
                    v,
                    kvd,
                    off,
                    len,
                    scale,
                    scores,
                } = a;
                assert!(q.len() >= hd && k.len() >= len * kvd && v.len() >= len * kvd);
                assert!(off + hd <= kvd);
                scores.clear();
                scores.resize(len, 0.0);
                let (qp, kp, vp) = (q.as_ptr(), k.as_ptr(), v.as_ptr());
                let mut mx = f32::NEG_INFINITY;
                // Four positions at a time (independent FMA chains); each score is the same
                // chain over `hd` whichever group it falls in.
                let mut j = 0;
                while j < len {
                    let g = (len - j).min(4);
                    let mut acc = [$zero(); 4];
                    // The cache rows are `kvd` floats apart and a head reads `hd` of each, a
                    // stride the hardware prefetcher does not follow across pages: fetch the
                    // keys of the group after next ahead (a hint: never faults).
                    for t in 0..4 {
                        let row = kp.wrapping_add((j + 8 + t) * kvd + off);
                        let mut c = 0;
                        while c < hd {
                            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(c).cast::<i8>());
                            c += 16;
                        }
                    }
                    let mut c = 0;
                    while c < hd {
                        // SAFETY: c + lanes <= hd; rows j..j+g < len, off + hd <= kvd.
                        unsafe {
                            let qv = $load(qp.add(c));
                            if g == 4 {
                                for (t, a) in acc.iter_mut().enumerate() {
                                    *a = $fmadd(qv, $load(kp.add((j + t) * kvd + off + c)), *a);
                                }
                            } else {
                                for (t, a) in acc.iter_mut().enumerate().take(g) {
                                    *a = $fmadd(qv, $load(kp.add((j + t) * kvd + off + c)), *a);
                                }
                            }
                        }
                        c += $lanes;
                    }
                    for (t, a) in acc.iter().enumerate().take(g) {
                        let sc = $reduce(*a) * scale;
                        scores[j + t] = sc;
                        mx = mx.max(sc);
                    }
                    j += g;
                }
                softmax(scores, mx);
                let op = out.as_mut_ptr();
                // Up to four vectors of the output at a time (independent FMA chains); each
                // output lane sums over the positions in order whatever the blocking.
                let mut c = 0;
                while c < hd {
                    let nv = ((hd - c) / $lanes).min(4);
                    let mut acc = [$zero(); 4];
                    for (j, &pj) in scores.iter().enumerate() {
                        // The values 8 positions ahead, as for the keys.
                        let ahead = vp.wrapping_add((j + 8) * kvd + off + c);
                        let mut f = 0;
                        while f < nv * $lanes {
                            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(f).cast::<i8>());
                            f += 16;
                        }
                        // SAFETY: c + nv * lanes <= hd; row j < len, off + hd <= kvd.
                        unsafe {
                            let pv = $set1(pj);
                            let base = vp.add(j * kvd + off + c);
                            if nv == 4 {
                                for (t, a) in acc.iter_mut().enumerate() {
                                    *a = $fmadd(pv, $load(base.add(t * $lanes)), *a);
                                }
                            } else {
                                for (t, a) in acc.iter_mut().enumerate().take(nv) {
                                    *a = $fmadd(pv, $load(base.add(t * $lanes)), *a);
                                }
                            }
                        }
                    }
                    for (t, a) in acc.iter().enumerate().take(nv) {
                        // SAFETY: c + nv * lanes <= hd = out.len().
                        unsafe { $store(op.add(c + t * $lanes), *a) };
                    }
                    c += nv * $lanes;
                }
            }
        };
    }

    head_simd!(
        head_avx512,
        "avx512f",
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_fmadd_ps,
        _mm512_set1_ps,
        _mm512_reduce_add_ps
    );

    head_simd!(
        head_avx2,
        "avx2,fma",
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_fmadd_ps,
        _mm256_set1_ps,
        hsum256
    );
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// Every attention version this CPU can run against an f64 reference, for head sizes with
    /// and without a SIMD tail and for context lengths around the 4-position groups.
    #[test]
    fn every_head_version_matches_an_f64_reference() {
        let versions: Vec<(Isa, HeadFn)> = Isa::available()
            .into_iter()
            .map(|i| (i, version(i)))
            .collect();
        for &(hd, heads) in &[(64, 4), (16, 2), (40, 3), (128, 2), (7, 2)] {
            let kvd = hd * heads;
            for len in [1, 3, 4, 5, 9, 33] {
                let k = data(len * kvd, 3);
                let v = data(len * kvd, 5);
                let q = data(hd, 7);
                let scale = 1.0 / (hd as f32).sqrt();
                let off = (heads - 1) * hd;
                let mut sc: Vec<f64> = (0..len)
                    .map(|j| {
                        (0..hd)
                            .map(|c| q[c] as f64 * k[j * kvd + off + c] as f64)
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                sc.iter_mut().for_each(|s| *s = (*s - mx).exp());
                let z: f64 = sc.iter().sum();
                let want: Vec<f64> = (0..hd)
                    .map(|c| {
                        (0..len)
                            .map(|j| sc[j] / z * v[j * kvd + off + c] as f64)
                            .sum()
                    })
                    .collect();
                for (name, f) in &versions {
                    let mut out = vec![f32::NAN; hd];
                    let mut scores = Vec::new();
                    let head = Head {
                        out: &mut out,
                        q: &q,
                        k: &k,
                        v: &v,
                        kvd,
                        off,
                        len,
                        scale,
                        scores: &mut scores,
                    };
                    // SAFETY: only versions this CPU supports; the shapes are as documented.
                    unsafe { f(head) };
                    for (a, b) in out.iter().zip(&want) {
                        assert!(
                            (*a as f64 - b).abs() < 1e-5 * (1.0 + b.abs()),
                            "{name:?} hd {hd} len {len}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
