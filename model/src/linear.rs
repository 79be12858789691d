//! The CPU projection kernel of the decoding engine: `y[m, n] = x[m, k] · W[n, k]ᵀ`, with `W` in
//! Hugging Face's `[out, in]` layout read straight from the weights' memory map.
//!
//! Decoding is bound by memory bandwidth: every weight is read once per step, whatever the batch.
//! So the kernel streams each pair of weight rows once and multiplies it with every input row
//! while it is in L1 (the inputs, `m · k` floats, stay in L1/L2). Work is split over output rows
//! with rayon.
//!
//! Each output `y[i, j]` is one chain of fused multiply-adds over `k` in a fixed lane order, then
//! a fixed reduction, whatever `m` is and wherever row `i` sits in the batch: a sequence decodes to
//! the same bits alone or in a batch of 16. The SIMD width is picked at run time (AVX-512, AVX2 +
//! FMA, or portable code); all three give results within rounding of the others, not equal bits.
use rayon::prelude::*;

/// Output rows per rayon task (a multiple of 2: rows go through the kernel in pairs).
const ROWS_PER_TASK: usize = 32;

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
pub fn linear(out: &mut [f32], x: &[f32], w: &[f32], m: usize, k: usize, n: usize) {
    assert!(out.len() >= m * n && x.len() >= m * k && w.len() >= n * k);
    if m == 0 || n == 0 {
        return;
    }
    let kernel = pick();
    // Tasks own disjoint column ranges of `out`; each writes `out[i, j0..j1]` for all i. Rows of
    // `out` are strided by `n`, so collect per-task results in a scratch and scatter after.
    let tasks = n.div_ceil(ROWS_PER_TASK);
    if tasks == 1 || m * n * k < 1 << 16 {
        let mut tmp = vec![0f32; m * n];
        kernel(&mut tmp, x, w, m, k, 0, n);
        scatter(out, &tmp, m, n, 0, n);
        return;
    }
    let parts: Vec<(usize, usize, Vec<f32>)> = (0..tasks)
        .into_par_iter()
        .map(|t| {
            let j0 = t * ROWS_PER_TASK;
            let j1 = (j0 + ROWS_PER_TASK).min(n);
            let mut tmp = vec![0f32; m * (j1 - j0)];
            kernel(&mut tmp, x, w, m, k, j0, j1);
            (j0, j1, tmp)
        })
        .collect();
    for (j0, j1, tmp) in parts {
        scatter(out, &tmp, m, n, j0, j1);
    }
}

/// `tmp` is `[j1-j0, m]` (column-major for the task); writes it into `out[m, n]`.
fn scatter(out: &mut [f32], tmp: &[f32], m: usize, n: usize, j0: usize, j1: usize) {
    for (jj, j) in (j0..j1).enumerate() {
        for i in 0..m {
            out[i * n + j] = tmp[jj * m + i];
        }
    }
}

/// Computes rows `j0..j1` of `W` against all `m` inputs into `tmp[(j - j0) * m + i]`.
type Kernel = fn(&mut [f32], &[f32], &[f32], usize, usize, usize, usize);

fn pick() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return x86::rows_avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return x86::rows_avx2;
        }
    }
    rows_portable
}

/// Portable kernel: 8 lanes of independent accumulators per (row, input), fixed reduction.
fn rows_portable(tmp: &mut [f32], x: &[f32], w: &[f32], m: usize, k: usize, j0: usize, j1: usize) {
    for j in j0..j1 {
        let wr = &w[j * k..(j + 1) * k];
        for i in 0..m {
            let xr = &x[i * k..(i + 1) * k];
            let mut acc = [0f32; 8];
            let body = k - k % 8;
            for c in (0..body).step_by(8) {
                for l in 0..8 {
                    acc[l] += wr[c + l] * xr[c + l];
                }
            }
            let mut s =
                ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
            for c in body..k {
                s += wr[c] * xr[c];
            }
            tmp[(j - j0) * m + i] = s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Inputs per block: 2 weight rows × 4 inputs = 8 accumulators, 6 loads per 8 FMAs.
    const XB: usize = 4;

    pub(super) fn rows_avx512(
        tmp: &mut [f32],
        x: &[f32],
        w: &[f32],
        m: usize,
        k: usize,
        j0: usize,
        j1: usize,
    ) {
        // SAFETY: only picked when the CPU reports avx512f; bounds are checked by `linear`.
        unsafe { avx512(tmp, x, w, m, k, j0, j1) }
    }

    pub(super) fn rows_avx2(
        tmp: &mut [f32],
        x: &[f32],
        w: &[f32],
        m: usize,
        k: usize,
        j0: usize,
        j1: usize,
    ) {
        // SAFETY: only picked when the CPU reports avx2 and fma; bounds are checked by `linear`.
        unsafe { avx2(tmp, x, w, m, k, j0, j1) }
    }

    /// The scalar tail of one dot product (`k % lanes` elements).
    #[inline(always)]
    fn tail(wr: &[f32], xr: &[f32], from: usize) -> f32 {
        let mut s = 0f32;
        for c in from..wr.len() {
            s += wr[c] * xr[c];
        }
        s
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(
        tmp: &mut [f32],
        x: &[f32],
        w: &[f32],
        m: usize,
        k: usize,
        j0: usize,
        j1: usize,
    ) {
        let body = k - k % 16;
        let mut j = j0;
        while j < j1 {
            let two = j + 1 < j1;
            let w0 = &w[j * k..(j + 1) * k];
            let w1 = if two {
                &w[(j + 1) * k..(j + 2) * k]
            } else {
                w0
            };
            let mut i = 0;
            while i < m {
                let nb = XB.min(m - i);
                let mut a0 = [_mm512_setzero_ps(); XB];
                let mut a1 = [_mm512_setzero_ps(); XB];
                let mut c = 0;
                while c < body {
                    // SAFETY: c + 16 <= body <= k for every row slice.
                    unsafe {
                        let v0 = _mm512_loadu_ps(w0.as_ptr().add(c));
                        let v1 = _mm512_loadu_ps(w1.as_ptr().add(c));
                        for b in 0..nb {
                            let xv = _mm512_loadu_ps(x.as_ptr().add((i + b) * k + c));
                            a0[b] = _mm512_fmadd_ps(v0, xv, a0[b]);
                            a1[b] = _mm512_fmadd_ps(v1, xv, a1[b]);
                        }
                    }
                    c += 16;
                }
                for b in 0..nb {
                    let xr = &x[(i + b) * k..(i + b + 1) * k];
                    let r0 = _mm512_reduce_add_ps(a0[b]) + tail(w0, xr, body);
                    tmp[(j - j0) * m + i + b] = r0;
                    if two {
                        let r1 = _mm512_reduce_add_ps(a1[b]) + tail(w1, xr, body);
                        tmp[(j + 1 - j0) * m + i + b] = r1;
                    }
                }
                i += nb;
            }
            j += 2;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(
        tmp: &mut [f32],
        x: &[f32],
        w: &[f32],
        m: usize,
        k: usize,
        j0: usize,
        j1: usize,
    ) {
        let body = k - k % 8;
        let mut j = j0;
        while j < j1 {
            let two = j + 1 < j1;
            let w0 = &w[j * k..(j + 1) * k];
            let w1 = if two {
                &w[(j + 1) * k..(j + 2) * k]
            } else {
                w0
            };
            let mut i = 0;
            while i < m {
                let nb = XB.min(m - i);
                let mut a0 = [_mm256_setzero_ps(); XB];
                let mut a1 = [_mm256_setzero_ps(); XB];
                let mut c = 0;
                while c < body {
                    // SAFETY: c + 8 <= body <= k for every row slice.
                    unsafe {
                        let v0 = _mm256_loadu_ps(w0.as_ptr().add(c));
                        let v1 = _mm256_loadu_ps(w1.as_ptr().add(c));
                        for b in 0..nb {
                            let xv = _mm256_loadu_ps(x.as_ptr().add((i + b) * k + c));
                            a0[b] = _mm256_fmadd_ps(v0, xv, a0[b]);
                            a1[b] = _mm256_fmadd_ps(v1, xv, a1[b]);
                        }
                    }
                    c += 8;
                }
                for b in 0..nb {
                    let xr = &x[(i + b) * k..(i + b + 1) * k];
                    tmp[(j - j0) * m + i + b] = hsum256(a0[b]) + tail(w0, xr, body);
                    if two {
                        tmp[(j + 1 - j0) * m + i + b] = hsum256(a1[b]) + tail(w1, xr, body);
                    }
                }
                i += nb;
            }
            j += 2;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    fn hsum256(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
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
            // The portable fallback (picked where the CPU has neither AVX-512 nor AVX2).
            let mut p = vec![0f32; m * n];
            rows_portable(&mut p, &x, &w, m, k, 0, n);
            for i in 0..m {
                for j in 0..n {
                    let (a, b) = (p[j * m + i] as f64, r[i * n + j]);
                    assert!(
                        (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                        "portable {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_or_in_a_batch() {
        let (k, n) = (300, 70);
        let w = data(n * k, 3);
        let batch = data(9 * k, 5);
        let mut yb = vec![0f32; 9 * n];
        linear(&mut yb, &batch, &w, 9, k, n);
        for i in 0..9 {
            let mut y1 = vec![0f32; n];
            linear(&mut y1, &batch[i * k..(i + 1) * k], &w, 1, k, n);
            assert_eq!(y1, yb[i * n..(i + 1) * n], "row {i}");
        }
    }
}
