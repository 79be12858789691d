use koala_kernels::{Backend, Error};

use crate::common::*;

/// Naive `f64` reference: `out[n, oc] = inp · wᵀ`.
fn reference(inp: &[f32], w: &[f32], n: usize, ic: usize, oc: usize) -> Vec<f64> {
    let mut out = vec![0f64; n * oc];
    for i in 0..n {
        for o in 0..oc {
            out[i * oc + o] = (0..ic)
                .map(|k| inp[i * ic + k] as f64 * w[o * ic + k] as f64)
                .sum();
        }
    }
    out
}

pub fn literal<B: Backend>(be: &B) {
    let inp = up(be, &[1.0, 2.0, 3.0, 4.0]); // [2, 2]
    let w = up(be, &[1.0, 0.0, 1.0, 1.0]); // [oc 2, ic 2]
    let mut out = up(be, &[f32::NAN; 4]); // overwritten, never read
    be.matmul_fwd(&mut out, &inp, &w, 2, 2, 2).unwrap();
    assert_eq!(down(be, &out), vec![1.0, 3.0, 3.0, 7.0]);
    // dout = ones: dinp = dout·w = [[2, 1], [2, 1]]; dw += doutᵀ·inp = [[4, 6], [4, 6]] (+1 before).
    let mut dinp = up(be, &[f32::NAN; 4]);
    let mut dw = up(be, &[1.0; 4]);
    be.matmul_bwd(&mut dinp, &mut dw, &up(be, &[1.0; 4]), &inp, &w, 2, 2, 2)
        .unwrap();
    assert_eq!(down(be, &dinp), vec![2.0, 1.0, 2.0, 1.0]);
    assert_eq!(down(be, &dw), vec![5.0, 7.0, 5.0, 7.0]);
}

/// Odd shapes around gemm's tile edges (and above its threading threshold) against an f64 loop.
pub fn forward_vs_reference<B: Backend>(be: &B) {
    let mut r = rng(3);
    for &(n, ic, oc) in &[
        (1, 7, 3),
        (3, 1, 5),
        (17, 33, 9),
        (65, 130, 47),
        (100, 96, 72),
    ] {
        let inp = uniform(&mut r, n * ic, 1.0);
        let w = uniform(&mut r, oc * ic, 1.0);
        let mut out = be.zeros(n * oc).unwrap();
        be.matmul_fwd(&mut out, &up(be, &inp), &up(be, &w), n, ic, oc)
            .unwrap();
        let tol = 1e-6 * ic as f64;
        check_close64(
            &format!("matmul_fwd {n}x{ic}x{oc}"),
            &down(be, &out),
            &reference(&inp, &w, n, ic, oc),
            tol,
            1e-6,
        );
    }
}

pub fn grad<B: Backend>(be: &B) {
    let (n, ic, oc) = (6, 9, 5);
    let mut r = rng(4);
    let inp = uniform(&mut r, n * ic, 1.0);
    let w = uniform(&mut r, oc * ic, 1.0);
    let proj = uniform(&mut r, n * oc, 1.0);
    let fwd = |inp: &[f32], w: &[f32]| {
        let mut out = be.zeros(n * oc).unwrap();
        be.matmul_fwd(&mut out, &up(be, inp), &up(be, w), n, ic, oc)
            .unwrap();
        project(&down(be, &out), &proj)
    };
    let dw0 = uniform(&mut r, oc * ic, 1.0);
    let mut dinp = be.zeros(n * ic).unwrap();
    let mut dw = up(be, &dw0);
    be.matmul_bwd(
        &mut dinp,
        &mut dw,
        &up(be, &proj),
        &up(be, &inp),
        &up(be, &w),
        n,
        ic,
        oc,
    )
    .unwrap();
    let dw: Vec<f32> = down(be, &dw).iter().zip(&dw0).map(|(a, b)| a - b).collect();
    check_grad("matmul dinp", &down(be, &dinp), &inp, 1e-2, 1e-4, 1, |x| {
        fwd(x, &w)
    });
    check_grad("matmul dw (accumulated)", &dw, &w, 1e-2, 1e-4, 1, |w| {
        fwd(&inp, w)
    });
}

pub fn errors<B: Backend>(be: &B) {
    let mut out = be.zeros(4).unwrap();
    let e = be
        .matmul_fwd(&mut out, &up(be, &[0.0; 4]), &up(be, &[0.0; 6]), 2, 2, 2)
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = be
        .matmul_fwd(
            &mut out,
            &up(be, &[0.0; 4]),
            &up(be, &[0.0; 4]),
            usize::MAX,
            2,
            2,
        )
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let mut dw = be.zeros(4).unwrap();
    let e = be
        .matmul_bwd(
            &mut out,
            &mut dw,
            &up(be, &[0.0; 2]),
            &up(be, &[0.0; 4]),
            &up(be, &[0.0; 4]),
            2,
            2,
            2,
        )
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

crate::cpu_tests!(literal, forward_vs_reference, grad, errors);
