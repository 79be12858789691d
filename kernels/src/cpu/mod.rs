//! The CPU backend: the `f32` reference implementation of [`Backend`].
//!
//! Buffers are plain `Vec<f32>` / `Vec<u32>`. Matmuls go through the `gemm` crate; everything
//! else is hand-written here, one op per file (each file opens with its contract).
//!
//! # Determinism
//!
//! Every op gives bit-identical results whatever the rayon thread count:
//!
//! * parallel work is split over *independent outputs* (rows, vocab rows, column blocks of
//!   RMSNorm's `dw`, attention heads), each computed by exactly one task in a fixed sequential
//!   order;
//! * reductions that need partial results (`sum_squares`; attention's GQA `dk`/`dv`, one partial per
//!   query head) combine them sequentially in a fixed order, over chunks whose size is a constant,
//!   never a function of the thread count;
//! * `gemm` with [`gemm::Parallelism::Rayon`] runs the depth (`k`) loop sequentially and hands
//!   whole output tiles to threads; its blocking (`kc`, `mc`, `nc`) depends on the shapes only, so
//!   the order of every sum is the same for 1 or N threads (see `gemm-common` `gemm_basic_generic`;
//!   pinned by the `determinism` tests).
//!
//! Bit-identity holds on one machine and build; different SIMD levels (AVX2 vs AVX-512) may round
//! differently.
//!
//! # Example
//!
//! ```
//! use koala_kernels::{Backend, cpu::CpuBackend};
//!
//! let be = CpuBackend::new();
//! let inp = be.upload(&[1.0, 2.0, 3.0, 4.0]).unwrap(); // [n=2, ic=2]
//! let w = be.upload(&[1.0, 0.0, 1.0, 1.0]).unwrap(); // [oc=2, ic=2]
//! let mut out = be.zeros(4).unwrap();
//! be.matmul_fwd(&mut out, &inp, &w, 2, 2, 2).unwrap();
//! assert_eq!(be.download(&out).unwrap(), vec![1.0, 3.0, 3.0, 7.0]);
//! ```
mod adamw;
mod attention;
mod cross_entropy;
mod embedding;
mod lora;
mod matmul;
mod norm;
mod residual;
mod rmsnorm;
mod rope;
mod swiglu;

use std::sync::Arc;

use crate::{AdamWParams, AttnShape, Backend, Error, LoraShape, Result};

pub use norm::clip_scale;

/// The CPU backend. Cheap to clone.
///
/// [`CpuBackend::new`] runs ops on the rayon pool of the caller (the global pool, or the pool of an
/// enclosing `ThreadPool::install`); [`CpuBackend::with_threads`] owns a pool of its own.
#[derive(Clone, Default)]
pub struct CpuBackend {
    pool: Option<Arc<rayon::ThreadPool>>,
    /// RoPE cos/sin table of the last `(head_dim, theta)` used.
    rope: rope::Cache,
}

impl std::fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBackend")
            .field("threads", &self.threads())
            .finish()
    }
}

impl CpuBackend {
    /// A backend that runs on the caller's rayon pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend with its own pool of `threads` threads (`0` = one per core).
    pub fn with_threads(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("koala-cpu-{i}"))
            .build()
            .map_err(|e| {
                Error::Unavailable(format!("cannot start a {threads}-thread pool: {e}"))
            })?;
        Ok(Self {
            pool: Some(Arc::new(pool)),
            rope: Default::default(),
        })
    }

    /// The number of threads ops run on.
    pub fn threads(&self) -> usize {
        match &self.pool {
            Some(p) => p.current_num_threads(),
            None => rayon::current_num_threads(),
        }
    }

    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }
}

/// `a * b`, or a shape error naming the op (never an overflow).
pub(crate) fn mul(op: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::Shape {
            op,
            detail: format!("{dims:?} overflows usize"),
        })
}

/// Checks that a buffer holds exactly `want` elements.
pub(crate) fn expect_len(op: &'static str, name: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::Shape {
            op,
            detail: format!("{name} has {got} elements, expected {want}"),
        })
    }
}

/// Checks that every id is `< limit`.
pub(crate) fn check_ids(op: &'static str, ids: &[u32], limit: usize) -> Result<()> {
    match ids.iter().find(|&&i| i as usize >= limit) {
        Some(&bad) => Err(Error::Index {
            op,
            index: bad as u64,
            limit: limit as u64,
        }),
        None => Ok(()),
    }
}

/// Dot product with 8 independent accumulators, summed in a fixed order (vectorisable, and the
/// same bits wherever it runs). Plain `*` and `+`, never `mul_add`: without a compile-time `fma`
/// target feature `mul_add` is a slow libm call.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `e^x` in `f32`, branch-free so that loops over slices vectorise (std's `exp` is a scalar libm
/// call, and was most of the time of the cross-entropy and SwiGLU). Cody–Waite range reduction
/// `x = n·ln2 + r`, `|r| <= ln2/2`, then the Cephes `expf` polynomial and `2^n` built from its bits.
/// Relative error below 2.5e-7 (about 2 ulp) against the exact value; inputs below −87 give `0`
/// (the true value is under 1.7e-38), above 88 saturate at `e^88`; NaN propagates.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round-to-nearest via the 1.5·2^23 trick (no roundf call, no SSE4.1 needed).
    const SHIFTER: f32 = 12_582_912.0;
    // max/min (not clamp) lower to maxps/minps; NaN is handled at the end.
    #[allow(clippy::manual_clamp)]
    let xc = x.max(-87.0).min(88.0);
    let t = xc * LOG2E + SHIFTER;
    let n = t - SHIFTER;
    // The integer n sits in the low mantissa bits of t: no float→int conversion needed.
    let ni = (t.to_bits() as i32).wrapping_sub(SHIFTER.to_bits() as i32);
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes 5.0000001201e-1, which rounds to 0.5 in f32
    let y = p * (r * r) + r + 1.0;
    let scale = f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    let out = if x < -87.0 { 0.0 } else { y * scale };
    if x.is_nan() { x } else { out }
}

/// Elements per parallel task/// Elements per parallel task in elementwise ops (a constant, so chunking never depends on the
/// thread count).
pub(crate) const ELEM_CHUNK: usize = 1 << 14;

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Ids = Vec<u32>;

    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }
    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }
    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }
    fn upload_ids(&self, ids: &[u32]) -> Result<Vec<u32>> {
        Ok(ids.to_vec())
    }
    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn fill_zero(&self, buf: &mut Vec<f32>) -> Result<()> {
        buf.fill(0.0);
        Ok(())
    }
    fn copy(&self, dst: &mut Vec<f32>, src: &Vec<f32>) -> Result<()> {
        expect_len("copy", "src", src.len(), dst.len())?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn embedding_fwd(
        &self,
        out: &mut Vec<f32>,
        ids: &Vec<u32>,
        table: &Vec<f32>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        self.run(|| embedding::forward(out, ids, table, n, c))
    }
    fn embedding_bwd(
        &self,
        dtable: &mut Vec<f32>,
        dout: &Vec<f32>,
        ids: &Vec<u32>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        self.run(|| embedding::backward(dtable, dout, ids, n, c))
    }

    fn rmsnorm_fwd(
        &self,
        out: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        n: usize,
        c: usize,
        eps: f32,
    ) -> Result<()> {
        self.run(|| rmsnorm::forward(out, rstd, x, w, n, c, eps))
    }
    fn rmsnorm_bwd(
        &self,
        dx: &mut Vec<f32>,
        dw: &mut Vec<f32>,
        dout: &Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        rstd: &Vec<f32>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        self.run(|| rmsnorm::backward(dx, dw, dout, x, w, rstd, n, c))
    }

    fn matmul_fwd(
        &self,
        out: &mut Vec<f32>,
        inp: &Vec<f32>,
        w: &Vec<f32>,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()> {
        self.run(|| matmul::forward(out, inp, w, n, ic, oc))
    }
    fn matmul_bwd(
        &self,
        dinp: &mut Vec<f32>,
        dw: &mut Vec<f32>,
        dout: &Vec<f32>,
        inp: &Vec<f32>,
        w: &Vec<f32>,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()> {
        self.run(|| matmul::backward(dinp, dw, dout, inp, w, n, ic, oc))
    }
    fn matmul_bwd_data(
        &self,
        dinp: &mut Vec<f32>,
        dout: &Vec<f32>,
        w: &Vec<f32>,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()> {
        self.run(|| matmul::backward_data(dinp, dout, w, n, ic, oc))
    }

    fn lora_fwd(
        &self,
        out: &mut Vec<f32>,
        xa: &mut Vec<f32>,
        scratch: &mut Vec<f32>,
        x: &Vec<f32>,
        a: &Vec<f32>,
        b: &Vec<f32>,
        s: &LoraShape,
    ) -> Result<()> {
        self.run(|| lora::forward(out, xa, scratch, x, a, b, s))
    }
    fn lora_bwd(
        &self,
        dx: Option<&mut Vec<f32>>,
        da: &mut Vec<f32>,
        db: &mut Vec<f32>,
        dxa: &mut Vec<f32>,
        scratch: &mut Vec<f32>,
        dout: &Vec<f32>,
        x: &Vec<f32>,
        xa: &Vec<f32>,
        a: &Vec<f32>,
        b: &Vec<f32>,
        s: &LoraShape,
    ) -> Result<()> {
        let dx = dx.map(|v| v.as_mut_slice());
        self.run(|| lora::backward(dx, da, db, dxa, scratch, dout, x, xa, a, b, s))
    }

    fn rope_fwd(
        &self,
        x: &mut Vec<f32>,
        positions: &Vec<u32>,
        n: usize,
        heads: usize,
        head_dim: usize,
        theta: f32,
    ) -> Result<()> {
        self.run(|| rope::apply(x, positions, n, heads, head_dim, theta, false, &self.rope))
    }
    fn rope_bwd(
        &self,
        dx: &mut Vec<f32>,
        positions: &Vec<u32>,
        n: usize,
        heads: usize,
        head_dim: usize,
        theta: f32,
    ) -> Result<()> {
        self.run(|| rope::apply(dx, positions, n, heads, head_dim, theta, true, &self.rope))
    }

    fn attention_fwd(
        &self,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        segment_ids: &Vec<u32>,
        shape: AttnShape,
    ) -> Result<()> {
        self.run(|| attention::forward(out, lse, q, k, v, segment_ids, shape))
    }
    fn attention_bwd(
        &self,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
        dout: &Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &Vec<f32>,
        lse: &Vec<f32>,
        segment_ids: &Vec<u32>,
        shape: AttnShape,
    ) -> Result<()> {
        self.run(|| attention::backward(dq, dk, dv, dout, q, k, v, out, lse, segment_ids, shape))
    }

    fn swiglu_fwd(
        &self,
        out: &mut Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
        len: usize,
    ) -> Result<()> {
        self.run(|| swiglu::forward(out, gate, up, len))
    }
    fn swiglu_bwd(
        &self,
        dgate: &mut Vec<f32>,
        dup: &mut Vec<f32>,
        dout: &Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
        len: usize,
    ) -> Result<()> {
        self.run(|| swiglu::backward(dgate, dup, dout, gate, up, len))
    }

    fn add_fwd(&self, out: &mut Vec<f32>, a: &Vec<f32>, b: &Vec<f32>, len: usize) -> Result<()> {
        self.run(|| residual::add(out, a, b, len))
    }
    fn add_inplace(&self, acc: &mut Vec<f32>, x: &Vec<f32>, len: usize) -> Result<()> {
        self.run(|| residual::add_inplace(acc, x, len))
    }

    fn cross_entropy_fwd_bwd(
        &self,
        logits: &mut Vec<f32>,
        losses: &mut Vec<f32>,
        targets: &Vec<u32>,
        weights: &Vec<f32>,
        n: usize,
        v: usize,
    ) -> Result<()> {
        self.run(|| cross_entropy::fwd_bwd(logits, losses, targets, weights, n, v))
    }

    fn adamw_step(
        &self,
        params: &mut Vec<f32>,
        grads: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        hp: &AdamWParams,
    ) -> Result<()> {
        self.run(|| adamw::step(params, grads, m, v, hp))
    }
    fn sum_squares(&self, x: &Vec<f32>) -> Result<f64> {
        Ok(self.run(|| norm::sum_squares(x)))
    }
    fn scale(&self, x: &mut Vec<f32>, s: f32) -> Result<()> {
        self.run(|| norm::scale(x, s));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let got = super::exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.000_731;
        }
        assert!(worst < 2.5e-7, "exp: worst relative error {worst:e}");
        assert_eq!(super::exp(0.0), 1.0);
        assert_eq!(super::exp(-100.0), 0.0);
        assert_eq!(super::exp(f32::NEG_INFINITY), 0.0);
        assert!(super::exp(f32::NAN).is_nan());
    }

    #[test]
    fn dot_matches_f64() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        assert!((super::dot(&a, &b) as f64 - want).abs() < 1e-5);
    }
}
