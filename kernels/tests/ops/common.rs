//! Test helpers shared by every op test: random data, closeness checks that print the first
//! mismatches and the worst difference, central finite differences, and thread-count runs.
#![allow(dead_code)]

use koala_kernels::Backend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `len` values uniform in `[-scale, scale)`.
pub fn uniform(rng: &mut ChaCha8Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

pub fn ids(rng: &mut ChaCha8Rng, len: usize, limit: u32) -> Vec<u32> {
    (0..len).map(|_| rng.random_range(0..limit)).collect()
}

/// Asserts `|got - want| <= atol + rtol·|want|` elementwise. On failure prints the first few
/// mismatches and the worst one, then panics.
pub fn check_close(name: &str, got: &[f32], want: &[f32], atol: f64, rtol: f64) {
    let want64: Vec<f64> = want.iter().map(|&x| x as f64).collect();
    check_close64(name, got, &want64, atol, rtol)
}

/// [`check_close`] against an `f64` reference.
pub fn check_close64(name: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "{name}: length {} vs reference {}",
        got.len(),
        want.len()
    );
    let mut bad = Vec::new();
    let mut worst = (0usize, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let diff = (g as f64 - w).abs();
        let ok = diff <= atol + rtol * w.abs() && g.is_finite() == w.is_finite();
        if diff > worst.1 || (!g.is_finite() && w.is_finite()) {
            worst = (i, if g.is_finite() { diff } else { f64::INFINITY });
        }
        if !ok {
            bad.push(i);
        }
    }
    if !bad.is_empty() {
        eprintln!(
            "{name}: {} of {} elements differ (atol {atol:e}, rtol {rtol:e})",
            bad.len(),
            got.len()
        );
        for &i in bad.iter().take(8) {
            eprintln!("  [{i}] got {:.9e} want {:.9e}", got[i], want[i]);
        }
        let (i, d) = worst;
        eprintln!(
            "  worst [{i}]: got {:.9e} want {:.9e} (|diff| {d:.3e})",
            got[i], want[i]
        );
        panic!("{name}: mismatch");
    }
}

/// Central finite differences of `loss` with respect to every element of `x` (or every `stride`-th
/// one, starting at 0), in `f64`.
pub fn fd_grad(
    x: &[f32],
    h: f32,
    stride: usize,
    mut loss: impl FnMut(&[f32]) -> f64,
) -> Vec<(usize, f64)> {
    let mut xp = x.to_vec();
    (0..x.len())
        .step_by(stride.max(1))
        .map(|i| {
            let x0 = xp[i];
            xp[i] = x0 + h;
            let lp = loss(&xp);
            xp[i] = x0 - h;
            let lm = loss(&xp);
            xp[i] = x0;
            // The actual step, as represented in f32.
            let step = (x0 + h) as f64 - (x0 - h) as f64;
            (i, (lp - lm) / step)
        })
        .collect()
}

/// Checks an analytic gradient against central finite differences of `loss`: every checked
/// element within `tol · max(1, max |fd|)`.
pub fn check_grad(
    name: &str,
    analytic: &[f32],
    x: &[f32],
    h: f32,
    tol: f64,
    stride: usize,
    loss: impl FnMut(&[f32]) -> f64,
) {
    assert_eq!(analytic.len(), x.len(), "{name}: gradient length");
    let fd = fd_grad(x, h, stride, loss);
    let scale = fd.iter().fold(1f64, |m, &(_, g)| m.max(g.abs()));
    let got: Vec<f32> = fd.iter().map(|&(i, _)| analytic[i]).collect();
    let want: Vec<f64> = fd.iter().map(|&(_, g)| g).collect();
    check_close64(name, &got, &want, tol * scale, 0.0);
}

/// `Σ r·y` in `f64`: the scalar loss whose gradient with respect to `y` is `r`.
pub fn project(y: &[f32], r: &[f32]) -> f64 {
    y.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

pub fn up<B: Backend>(be: &B, x: &[f32]) -> B::Buf {
    be.upload(x).unwrap()
}

pub fn down<B: Backend>(be: &B, x: &B::Buf) -> Vec<f32> {
    be.download(x).unwrap()
}

/// Runs `f` inside a fresh rayon pool of `threads` threads.
pub fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// Runs `f` in pools of 1, 2 and 3 threads and asserts that every output is bit-identical.
pub fn assert_deterministic(name: &str, f: impl Fn() -> Vec<Vec<f32>> + Sync) {
    let base = in_pool(1, &f);
    for threads in [2, 3] {
        let other = in_pool(threads, &f);
        assert_eq!(base.len(), other.len());
        for (k, (a, b)) in base.iter().zip(&other).enumerate() {
            let first = a
                .iter()
                .zip(b)
                .position(|(x, y)| x.to_bits() != y.to_bits());
            if let Some(i) = first {
                panic!(
                    "{name}: output {k} differs at [{i}] with {threads} threads: {:e} vs {:e}",
                    a[i], b[i]
                );
            }
            assert_eq!(a.len(), b.len());
        }
    }
}

/// Generates `#[test]`s that run the listed generic test functions (each `fn<B: Backend>(&B)`) on
/// the CPU backend. A GPU backend adds its own list under its feature flag.
#[macro_export]
macro_rules! cpu_tests {
    ($($name:ident),* $(,)?) => {
        mod cpu {
            $(
                #[test]
                fn $name() {
                    super::$name(&koala_kernels::CpuBackend::new());
                }
            )*
        }
    };
}
