use koala_kernels::Backend;
use koala_kernels::cpu::clip_scale;

use crate::common::*;

pub fn literal<B: Backend>(be: &B) {
    assert_eq!(be.sum_squares(&up(be, &[1.0, -2.0, 3.0])).unwrap(), 14.0);
    assert_eq!(be.sum_squares(&be.zeros(0).unwrap()).unwrap(), 0.0);
    let mut x = up(be, &[1.0, -2.0, 3.0]);
    be.scale(&mut x, 0.5).unwrap();
    assert_eq!(down(be, &x), vec![0.5, -1.0, 1.5]);
}

/// Σx² over several chunks against an f64 sum, and its gradient 2x by finite differences.
pub fn grad<B: Backend>(be: &B) {
    let mut r = rng(11);
    let x = uniform(&mut r, 40_000, 1.0);
    let want: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
    let got = be.sum_squares(&up(be, &x)).unwrap();
    assert!(
        (got - want).abs() <= 1e-9 * want,
        "sum_squares {got} vs {want}"
    );
    let small = &x[..16];
    let two_x: Vec<f32> = small.iter().map(|v| 2.0 * v).collect();
    check_grad("sum_squares d/dx", &two_x, small, 1e-2, 1e-4, 1, |x| {
        be.sum_squares(&up(be, x)).unwrap()
    });
}

/// Clipping folds into `grad_scale` as torch's `clip_grad_norm_` computes it.
pub fn clipping(_: &koala_kernels::CpuBackend) {
    assert_eq!(clip_scale(0.5, 1.0), 1.0);
    assert!((clip_scale(10.0, 1.0) as f64 - 1.0 / (10.0 + 1e-6)).abs() < 1e-8);
}

crate::cpu_tests!(literal, grad, clipping);
