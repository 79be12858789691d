//! The CPU projection kernel of the decoding engine: `y[m, n] = x[m, k] · W[n, k]ᵀ`, with `W` in
//! Hugging Face's `[out, in]` layout read straight from the weights' memory map.
//!
//! Decoding is bound by memory bandwidth: every weight is read once per step, whatever the batch.
//! So the kernel streams each block of weight rows once and multiplies it with every input row
//! while it is in L1 (the inputs, `m · k` floats, stay in L1/L2). With AVX-512 a tile is 4 weight
//! rows × up to 4 inputs (16 accumulators: 8 loads per 16 fused multiply-adds), and a full tile's
//! 16 horizontal sums are reduced together. With AVX2, rows shorter than
//! [`WeightElem::AVX2_TILE_MIN_K`] run one at a time with 4 independent FMA chains (as llama.cpp's
//! `ggml_vec_dot_f32`), longer ones in tiles of 4 rows read side by side with 2 chains each. Work
//! is split over output rows into rayon tasks of at least 128 KB of weights, up to 16 per thread,
//! each writing its columns of `out` in place (no per-task buffers).
//!
//! Each output `y[i, j]` is a fixed set of fused multiply-add chains over `k` in a fixed lane
//! order, then a fixed reduction (AVX-512: lanes paired at distance 8, 4, 2, 1, then the scalar
//! tail), chosen by the matrix alone (its type and `k`): whatever `m` is, whichever tile computes
//! it and wherever row `i` sits in the batch, a sequence decodes to the same bits alone or in a
//! batch of 16. The SIMD width is picked at run time (AVX-512, AVX2 + FMA, or portable code); all
//! three give results within rounding of the others, not equal bits.
//!
//! Weights are `f32` or `bf16` ([`WeightElem`]). A `bf16` weight is widened to `f32` exactly (a
//! 16-bit shift) as it is loaded and accumulated in `f32`, so the activations keep full precision
//! and the bytes read per step halve.
use half::bf16;
use rayon::prelude::*;

use crate::isa::Isa;

/// A weight element type: `f32`, or `bf16` widened exactly to `f32` on load.
pub trait WeightElem: Copy + Send + Sync + 'static {
    /// AVX2 runs rows at least this long in tiles of 4 rows, shorter ones one at a time.
    /// Measured on a 2-core AMD EPYC (Zen 3) with 25M, 58M and 200M models: 4 `f32` weight
    /// streams side by side read ~8% faster once rows reach 4 KB, while one row with 4 chains
    /// is ~15% faster on rows of 1–2 KB, and faster for `bf16` at every size (its widening
    /// adds work per byte). It depends on the type and `k` only, so a matrix always takes the
    /// same path, whatever the batch.
    const AVX2_TILE_MIN_K: usize;
    /// The value as `f32` (exact for both types).
    fn to_f32(self) -> f32;
    /// 16 values from `p`, widened.
    ///
    /// # Safety
    /// `p` points at 16 readable values, and the CPU has avx512f.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
    /// 8 values from `p`, widened.
    ///
    /// # Safety
    /// `p` points at 8 readable values, and the CPU has avx2.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl WeightElem for f32 {
    const AVX2_TILE_MIN_K: usize = 1024;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

impl WeightElem for bf16 {
    const AVX2_TILE_MIN_K: usize = usize::MAX;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract (16 × 2 bytes readable, avx512f).
        unsafe {
            let h = _mm256_loadu_si256(p.cast::<__m256i>());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract (8 × 2 bytes readable, avx2).
        unsafe {
            let h = _mm_loadu_si128(p.cast::<__m128i>());
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
    }
}

/// Fewest output rows per rayon task (a multiple of every kernel's row tile).
const MIN_ROWS_PER_TASK: usize = 16;
/// Tasks per pool thread: several, so that a thread slowed by another process is helped out...
const TASKS_PER_THREAD: usize = 16;
/// ...but each task streams at least this many bytes of weights, so that small matrices are
/// not cut into tasks that cost more to hand out than to run.
const MIN_TASK_BYTES: usize = 128 << 10;

/// `out[m, n] = x[m, k] · w[n, k]ᵀ`.
///
/// # Panics
/// If a slice is shorter than its shape says (the engine sizes every buffer from the config).
///
/// ```
/// let w = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]; // [n=2, k=3]
/// let x = [1.0f32, 0.0, -1.0];               // [m=1, k=3]
/// let mut y = [0.0f32; 2];
/// koala_model::linear::linear(&mut y, &x, &w, 1, 3, 2);
/// assert_eq!(y, [-2.0, -2.0]);
/// ```
pub fn linear<W: WeightElem>(out: &mut [f32], x: &[f32], w: &[W], m: usize, k: usize, n: usize) {
    assert!(out.len() >= m * n && x.len() >= m * k && w.len() >= n * k);
    if m == 0 || n == 0 {
        return;
    }
    let kernel = pick::<W>();
    let o = Out(out.as_mut_ptr());
    let threads = rayon::current_num_threads();
    if threads == 1 || m * n * k < 1 << 16 {
        // SAFETY: the lengths were checked above, and this is the only writer.
        unsafe { kernel(o, x, w, m, k, n, 0, n) };
        return;
    }
    let per = n
        .div_ceil(threads * TASKS_PER_THREAD)
        .max(MIN_TASK_BYTES / (k * std::mem::size_of::<W>()).max(1))
        .next_multiple_of(4)
        .max(MIN_ROWS_PER_TASK);
    (0..n.div_ceil(per)).into_par_iter().for_each(|t| {
        let j0 = t * per;
        let j1 = (j0 + per).min(n);
        // SAFETY: the lengths were checked above; tasks write disjoint column ranges `j0..j1`.
        unsafe { kernel(o, x, w, m, k, n, j0, j1) };
    });
}

/// `out` of [`linear`], shared by tasks that write disjoint columns of it.
#[derive(Clone, Copy)]
struct Out(*mut f32);

// SAFETY: every task writes only its own columns of `out`, which outlives the tasks (`linear`
// returns after they all end).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// Computes rows `j0..j1` of `W` against all `m` inputs into `out[i * n + j]`.
///
/// # Safety
/// `out` must hold `m * n` floats, `x` `m * k`, `w` `n * k`; nobody else may touch columns
/// `j0..j1` of `out` meanwhile.
#[allow(clippy::too_many_arguments)]
type Kernel<W> = unsafe fn(Out, &[f32], &[W], usize, usize, usize, usize, usize);

fn pick<W: WeightElem>() -> Kernel<W> {
    version(Isa::detect())
}

/// The kernel of one instruction set.
fn version<W: WeightElem>(isa: Isa) -> Kernel<W> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::rows_avx512::<W>,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => x86::rows_avx2::<W>,
        _ => rows_portable::<W>,
    }
}

/// Portable kernel: 8 lanes of independent accumulators per (row, input), fixed reduction.
#[allow(clippy::too_many_arguments)]
unsafe fn rows_portable<W: WeightElem>(
    out: Out,
    x: &[f32],
    w: &[W],
    m: usize,
    k: usize,
    n: usize,
    j0: usize,
    j1: usize,
) {
    for j in j0..j1 {
        let wr = &w[j * k..(j + 1) * k];
        for i in 0..m {
            let xr = &x[i * k..(i + 1) * k];
            let mut acc = [0f32; 8];
            let body = k - k % 8;
            for c in (0..body).step_by(8) {
                for l in 0..8 {
                    acc[l] += wr[c + l].to_f32() * xr[c + l];
                }
            }
            let mut s =
                ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
            for c in body..k {
                s += wr[c].to_f32() * xr[c];
            }
            // SAFETY: i < m, j < n, and column j is this call's (the caller's contract).
            unsafe { *out.0.add(i * n + j) = s };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::isa::hsum256;

    use super::{Out, WeightElem};

    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn rows_avx512<W: WeightElem>(
        out: Out,
        x: &[f32],
        w: &[W],
        m: usize,
        k: usize,
        n: usize,
        j0: usize,
        j1: usize,
    ) {
        // SAFETY: only picked when the CPU reports avx512f; the rest is the caller's contract.
        unsafe { avx512(out, x, w, m, k, n, j0, j1) }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn rows_avx2<W: WeightElem>(
        out: Out,
        x: &[f32],
        w: &[W],
        m: usize,
        k: usize,
        n: usize,
        j0: usize,
        j1: usize,
    ) {
        // SAFETY: only picked when the CPU reports avx2 and fma; the rest is the caller's contract.
        unsafe { avx2(out, x, w, m, k, n, j0, j1) }
    }

    /// The scalar tail of one dot product (`k % lanes` elements).
    #[inline(always)]
    fn tail<W: WeightElem>(wr: &[W], xr: &[f32], from: usize) -> f32 {
        let mut s = 0f32;
        for c in from..wr.len() {
            s += wr[c].to_f32() * xr[c];
        }
        s
    }

    /// The sum of 16 lanes: lanes paired at distance 8, then 4, 2, 1 (the tree of [`reduce16`]).
    #[inline(always)]
    fn reduce(v: __m512) -> f32 {
        // SAFETY: only inlined into `avx512`, which runs where the CPU has avx512f.
        unsafe {
            let v = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0b11_10_11_10>(v, v));
            let v = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0b01_01_01_01>(v, v));
            let v = _mm512_add_ps(v, _mm512_shuffle_ps::<0b11_10_11_10>(v, v));
            let v = _mm512_add_ps(v, _mm512_shuffle_ps::<0b01_01_01_01>(v, v));
            _mm_cvtss_f32(_mm512_castps512_ps128(v))
        }
    }

    /// Lane `q` of [`reduce16`]'s result is the sum of `v[ORDER[q]]`.
    const ORDER: [usize; 16] = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15];

    /// The 16 lane sums of `v` at once (15 adds instead of 64), each by the same tree as
    /// [`reduce`], so bit for bit the same sums.
    #[inline(always)]
    fn reduce16(v: &[__m512; 16]) -> __m512 {
        // SAFETY: only inlined into `avx512`, which runs where the CPU has avx512f.
        unsafe {
            // Distance 8: [a's 8 partial sums | b's 8].
            let mut s8 = [_mm512_setzero_ps(); 8];
            for (p, s) in s8.iter_mut().enumerate() {
                let (a, b) = (v[2 * p], v[2 * p + 1]);
                *s = _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                    _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
                );
            }
            // Distance 4: four vectors' 4 partial sums, one per 128-bit block.
            let mut s4 = [_mm512_setzero_ps(); 4];
            for (p, s) in s4.iter_mut().enumerate() {
                let (a, b) = (s8[2 * p], s8[2 * p + 1]);
                *s = _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
                    _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
                );
            }
            // Distance 2: two vectors' 2 partial sums per block.
            let mut s2 = [_mm512_setzero_ps(); 2];
            for (p, s) in s2.iter_mut().enumerate() {
                let (a, b) = (s4[2 * p], s4[2 * p + 1]);
                *s = _mm512_add_ps(
                    _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
                    _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
                );
            }
            // Distance 1.
            let (a, b) = (s2[0], s2[1]);
            _mm512_add_ps(
                _mm512_shuffle_ps::<0b10_00_10_00>(a, b),
                _mm512_shuffle_ps::<0b11_01_11_01>(a, b),
            )
        }
    }

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn avx512<W: WeightElem>(
        out: Out,
        x: &[f32],
        w: &[W],
        m: usize,
        k: usize,
        n: usize,
        j0: usize,
        j1: usize,
    ) {
        let passes = m.div_ceil(4);
        let mut j = j0;
        while j < j1 {
            let r = (j1 - j).min(4);
            let mut i = 0;
            while i < m {
                let b = (m - i).min(4);
                // With several input blocks (m > 4), prefetch the next row block into L2 while
                // this one is in L1, each pass over the inputs taking its share of the next 4
                // rows: the weights then stream while the FMAs run. (With one pass it only adds
                // loads; into L1 it would crowd out the inputs, 32 KB for 16 rows of 512.)
                let (p0, p1) = if passes > 1 {
                    let share = 4usize.div_ceil(passes);
                    let p0 = (j + r + (i / 4) * share).min(n);
                    (p0, (p0 + share).min(j + r + 4).min(n))
                } else {
                    (0, 0)
                };
                let t = Tile {
                    x,
                    w,
                    k,
                    n,
                    i,
                    j,
                    p0,
                    p1,
                };
                // SAFETY: rows j..j+r < j1 and inputs i..i+b < m: the caller's contract.
                unsafe {
                    match (r, b) {
                        (4, 4) => t.run::<4, 4>(out),
                        (4, 3) => t.run::<4, 3>(out),
                        (4, 2) => t.run::<4, 2>(out),
                        (4, 1) => t.run::<4, 1>(out),
                        (3, 4) => t.run::<3, 4>(out),
                        (3, 3) => t.run::<3, 3>(out),
                        (3, 2) => t.run::<3, 2>(out),
                        (3, 1) => t.run::<3, 1>(out),
                        (2, 4) => t.run::<2, 4>(out),
                        (2, 3) => t.run::<2, 3>(out),
                        (2, 2) => t.run::<2, 2>(out),
                        (2, 1) => t.run::<2, 1>(out),
                        (1, 4) => t.run::<1, 4>(out),
                        (1, 3) => t.run::<1, 3>(out),
                        (1, 2) => t.run::<1, 2>(out),
                        _ => t.run::<1, 1>(out),
                    }
                }
                i += b;
            }
            j += r;
        }
    }

    /// Weight rows `j..j+R` against inputs `i..i+B`.
    #[derive(Clone, Copy)]
    struct Tile<'a, W> {
        x: &'a [f32],
        w: &'a [W],
        k: usize,
        n: usize,
        i: usize,
        j: usize,
        /// Weight rows to prefetch alongside (none when `p0 == p1`).
        p0: usize,
        p1: usize,
    }

    impl<W: WeightElem> Tile<'_, W> {
        /// # Safety
        /// Rows `j..j+R` of `w` and inputs `i..i+B` of `x` exist, `out` holds `[m, n]`, and its
        /// columns `j..j+R` are the caller's alone; the CPU has avx512f.
        #[inline(always)]
        unsafe fn run<const R: usize, const B: usize>(&self, out: Out) {
            let Tile {
                x,
                w,
                k,
                n,
                i,
                j,
                p0,
                p1,
            } = *self;
            let body = k - k % 16;
            // SAFETY: the CPU has avx512f (the function's contract).
            let zero = unsafe { _mm512_setzero_ps() };
            let mut acc = [[zero; B]; R];
            let (wp, xp) = (w.as_ptr(), x.as_ptr());
            let mut c = 0;
            while c < body {
                // SAFETY: c + 16 <= body <= k within rows j..j+R of w and i..i+B of x.
                unsafe {
                    for p in p0..p1 {
                        // A hint only: rows p0..p1 < n exist, and c < k.
                        _mm_prefetch::<_MM_HINT_T1>(wp.add(p * k + c).cast::<i8>());
                    }
                    let mut xv = [zero; B];
                    for (bb, v) in xv.iter_mut().enumerate() {
                        *v = _mm512_loadu_ps(xp.add((i + bb) * k + c));
                    }
                    for (rr, row) in acc.iter_mut().enumerate() {
                        let wv = W::load16(wp.add((j + rr) * k + c));
                        for (a, &xb) in row.iter_mut().zip(&xv) {
                            *a = _mm512_fmadd_ps(wv, xb, *a);
                        }
                    }
                }
                c += 16;
            }
            if R == 4 && B == 4 && body == k {
                let mut v = [zero; 16];
                for (rr, row) in acc.iter().enumerate() {
                    for (bb, a) in row.iter().enumerate() {
                        v[rr * 4 + bb] = *a;
                    }
                }
                let mut sums = [0f32; 16];
                // SAFETY: `sums` holds 16 floats.
                unsafe { _mm512_storeu_ps(sums.as_mut_ptr(), reduce16(&v)) };
                for (&idx, &s) in ORDER.iter().zip(&sums) {
                    let (rr, bb) = (idx / 4, idx % 4);
                    // SAFETY: the tile's own outputs (see the function's contract).
                    unsafe { *out.0.add((i + bb) * n + j + rr) = s };
                }
                return;
            }
            for (rr, row) in acc.iter().enumerate() {
                let wr = &w[(j + rr) * k..(j + rr + 1) * k];
                for (bb, a) in row.iter().enumerate() {
                    let xr = &x[(i + bb) * k..(i + bb + 1) * k];
                    let s = reduce(*a) + tail(wr, xr, body);
                    // SAFETY: the tile's own outputs (see the function's contract).
                    unsafe { *out.0.add((i + bb) * n + j + rr) = s };
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn avx2<W: WeightElem>(
        out: Out,
        x: &[f32],
        w: &[W],
        m: usize,
        k: usize,
        n: usize,
        j0: usize,
        j1: usize,
    ) {
        if k < W::AVX2_TILE_MIN_K {
            for j in j0..j1 {
                let wr = &w[j * k..(j + 1) * k];
                let mut i = 0;
                while i < m {
                    let b = (m - i).min(3);
                    // SAFETY: row j < j1 and inputs i..i+b < m: the caller's contract.
                    unsafe {
                        match b {
                            3 => dot_avx2::<W, 3>(out, x, wr, k, n, i, j),
                            2 => dot_avx2::<W, 2>(out, x, wr, k, n, i, j),
                            _ => dot_avx2::<W, 1>(out, x, wr, k, n, i, j),
                        }
                    }
                    i += b;
                }
            }
            return;
        }
        let mut j = j0;
        while j < j1 {
            let r = (j1 - j).min(4);
            // The tile's rows stay in L1/L2 while every input passes over them.
            for i in 0..m {
                // SAFETY: rows j..j+r < j1 and input i < m: the caller's contract.
                unsafe {
                    match r {
                        4 => tile_avx2::<W, 4>(out, x, w, k, n, i, j),
                        3 => tile_avx2::<W, 3>(out, x, w, k, n, i, j),
                        2 => tile_avx2::<W, 2>(out, x, w, k, n, i, j),
                        _ => tile_avx2::<W, 1>(out, x, w, k, n, i, j),
                    }
                }
            }
            j += r;
        }
    }

    /// One weight row against inputs `i..i+B`. Each dot product runs 4 independent chains of
    /// 8 lanes over blocks of 32, then the remaining 8-blocks into chains 0, 1, 2, then
    /// `(a0 + a1) + (a2 + a3)`, the 8-lane sum and the scalar tail: the same order whatever `B`.
    ///
    /// # Safety
    /// Inputs `i..i+B` of `x` exist, `wr` holds `k` values, `out` holds `[m, n]` and column `j`
    /// is the caller's alone; the CPU has avx2 and fma.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn dot_avx2<W: WeightElem, const B: usize>(
        out: Out,
        x: &[f32],
        wr: &[W],
        k: usize,
        n: usize,
        i: usize,
        j: usize,
    ) {
        // SAFETY: every load is within row `wr` (c + 32 <= k, then c + 8 <= k) and inputs
        // i..i+B of `x`; the CPU features are the function's contract.
        unsafe {
            let (wp, xp) = (wr.as_ptr(), x.as_ptr());
            let mut acc = [[_mm256_setzero_ps(); 4]; B];
            let mut c = 0;
            while c + 32 <= k {
                for u in 0..4 {
                    let wv = W::load8(wp.add(c + 8 * u));
                    for (bb, a) in acc.iter_mut().enumerate() {
                        let xv = _mm256_loadu_ps(xp.add((i + bb) * k + c + 8 * u));
                        a[u] = _mm256_fmadd_ps(wv, xv, a[u]);
                    }
                }
                c += 32;
            }
            let mut u = 0;
            while c + 8 <= k {
                let wv = W::load8(wp.add(c));
                for (bb, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_loadu_ps(xp.add((i + bb) * k + c));
                    a[u] = _mm256_fmadd_ps(wv, xv, a[u]);
                }
                u += 1;
                c += 8;
            }
            for (bb, a) in acc.iter().enumerate() {
                let v = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
                let xr = &x[(i + bb) * k..(i + bb + 1) * k];
                *out.0.add((i + bb) * n + j) = hsum256(v) + tail(wr, xr, c);
            }
        }
    }

    /// Weight rows `j..j+R` against input `i`: R weight streams read side by side (more loads
    /// in flight than one row at a time). Each dot product runs 2 chains of 8 lanes over blocks
    /// of 16, then a last 8-block into chain 0, then `a0 + a1`, the 8-lane sum and the scalar
    /// tail: the same order whatever `R` is and whichever tile or batch computes it.
    ///
    /// # Safety
    /// Rows `j..j+R` of `w` and input `i` of `x` exist, `out` holds `[m, n]` and columns
    /// `j..j+R` are the caller's alone; the CPU has avx2 and fma.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_avx2<W: WeightElem, const R: usize>(
        out: Out,
        x: &[f32],
        w: &[W],
        k: usize,
        n: usize,
        i: usize,
        j: usize,
    ) {
        // SAFETY: every load is within rows j..j+R of `w` (c + 16 <= k, then c + 8 <= k) and
        // input i of `x`; the CPU features are the function's contract.
        unsafe {
            let (wp, xp) = (w.as_ptr().add(j * k), x.as_ptr().add(i * k));
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            let mut c = 0;
            while c + 16 <= k {
                let x0 = _mm256_loadu_ps(xp.add(c));
                let x1 = _mm256_loadu_ps(xp.add(c + 8));
                for (rr, a) in acc.iter_mut().enumerate() {
                    a[0] = _mm256_fmadd_ps(W::load8(wp.add(rr * k + c)), x0, a[0]);
                    a[1] = _mm256_fmadd_ps(W::load8(wp.add(rr * k + c + 8)), x1, a[1]);
                }
                c += 16;
            }
            if c + 8 <= k {
                let x0 = _mm256_loadu_ps(xp.add(c));
                for (rr, a) in acc.iter_mut().enumerate() {
                    a[0] = _mm256_fmadd_ps(W::load8(wp.add(rr * k + c)), x0, a[0]);
                }
                c += 8;
            }
            let xr = &x[i * k..(i + 1) * k];
            for (rr, a) in acc.iter().enumerate() {
                let wr = &w[(j + rr) * k..(j + rr + 1) * k];
                *out.0.add(i * n + j + rr) = hsum256(_mm256_add_ps(a[0], a[1])) + tail(wr, xr, c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k)
                    .map(|c| x[i * k + c] as f64 * w[j * k + c] as f64)
                    .sum();
            }
        }
        y
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    #[test]
    fn matches_f64_reference_for_odd_shapes() {
        for &(m, k, n) in &[
            (1, 3, 2),
            (1, 512, 1000),
            (5, 37, 67),
            (16, 130, 33),
            (3, 1376, 96),
            (16, 512, 100),
            (7, 64, 4),
        ] {
            let x = data(m * k, 7);
            let w = data(n * k, 11);
            let mut y = vec![f32::NAN; m * n];
            linear(&mut y, &x, &w, m, k, n);
            let r = reference(&x, &w, m, k, n);
            for (a, b) in y.iter().zip(&r) {
                assert!(
                    (*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()),
                    "{m}x{k}x{n}: {a} vs {b}"
                );
            }
            // Every kernel this CPU can run, the portable fallback included (picked where the
            // CPU has neither AVX-512 nor AVX2), over the whole matrix and over a column range.
            for (name, kernel) in kernels::<f32>() {
                let mut p = vec![f32::NAN; m * n];
                let mid = (n / 2).next_multiple_of(4).min(n);
                // SAFETY: `p`, `x` and `w` have their shapes; the two calls own disjoint columns.
                unsafe {
                    kernel(Out(p.as_mut_ptr()), &x, &w, m, k, n, 0, mid);
                    kernel(Out(p.as_mut_ptr()), &x, &w, m, k, n, mid, n);
                }
                for (a, b) in p.iter().zip(&r) {
                    assert!(
                        (*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()),
                        "{name:?} {m}x{k}x{n}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn bf16_weights_match_f64_reference_of_the_rounded_weights() {
        for &(m, k, n) in &[
            (1, 3, 2),
            (1, 512, 1000),
            (5, 37, 67),
            (16, 130, 33),
            (4, 64, 4),
        ] {
            let x = data(m * k, 7);
            let w: Vec<bf16> = data(n * k, 11).into_iter().map(bf16::from_f32).collect();
            let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            let r = reference(&x, &wf, m, k, n);
            let mut y = vec![f32::NAN; m * n];
            linear(&mut y, &x, &w, m, k, n);
            let close = |a: f32, b: f64| (a as f64 - b).abs() < 1e-4 * (1.0 + b.abs());
            for (a, b) in y.iter().zip(&r) {
                assert!(close(*a, *b), "{m}x{k}x{n}: {a} vs {b}");
            }
            for (name, kernel) in kernels::<bf16>() {
                let mut p = vec![f32::NAN; m * n];
                // SAFETY: `p`, `x` and `w` have their shapes.
                unsafe { kernel(Out(p.as_mut_ptr()), &x, &w, m, k, n, 0, n) };
                for (a, b) in p.iter().zip(&r) {
                    assert!(close(*a, *b), "{name:?} {m}x{k}x{n}: {a} vs {b}");
                }
            }
            // The same weights as f32 give the same bits: widening is exact.
            let mut yf = vec![f32::NAN; m * n];
            linear(&mut yf, &x, &wf, m, k, n);
            assert_eq!(y, yf);
        }
    }

    fn kernels<W: WeightElem>() -> Vec<(Isa, Kernel<W>)> {
        Isa::available()
            .into_iter()
            .map(|i| (i, version(i)))
            .collect()
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_or_in_a_batch() {
        // k = 300 has a scalar tail; k = 256 and 512 do not, so full 4x4 tiles take the grouped
        // reduction while a lone row takes the single one; n = 1000 runs in parallel tasks.
        // k >= 1024 takes AVX2's 4-row tiles for f32 (k = 1030 with a remainder block and a tail).
        for &(k, n) in &[(300, 70), (256, 70), (512, 1000), (1030, 70), (1024, 300)] {
            let w = data(n * k, 3);
            for m in [2, 5, 9, 16] {
                let batch = data(m * k, 5);
                let mut yb = vec![0f32; m * n];
                linear(&mut yb, &batch, &w, m, k, n);
                for i in 0..m {
                    let mut y1 = vec![0f32; n];
                    linear(&mut y1, &batch[i * k..(i + 1) * k], &w, 1, k, n);
                    assert_eq!(y1, yb[i * n..(i + 1) * n], "k {k} n {n}: row {i} of {m}");
                }
            }
        }
    }
}
