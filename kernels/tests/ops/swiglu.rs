use koala_kernels::{Backend, Error};

use crate::common::*;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

pub fn literal<B: Backend>(be: &B) {
    let gate = up(be, &[0.0, 1.0, -2.0, 100.0, -100.0]);
    let upv = up(be, &[5.0, 2.0, 3.0, 1.0, 1.0]);
    let mut out = be.zeros(5).unwrap();
    be.swiglu_fwd(&mut out, &gate, &upv, 5).unwrap();
    let want = [
        0.0,
        2.0 * sigmoid(1.0),
        3.0 * -2.0 * sigmoid(-2.0),
        100.0,
        0.0,
    ];
    check_close64("swiglu_fwd", &down(be, &out), &want, 1e-6, 1e-6);
    // d silu(g)/dg at 0 is 1/2: dgate = dout·up/2, dup = dout·silu(0) = 0. Saturated gates stay finite.
    let mut dg = be.zeros(5).unwrap();
    let mut du = be.zeros(5).unwrap();
    be.swiglu_bwd(&mut dg, &mut du, &up(be, &[1.0; 5]), &gate, &upv, 5)
        .unwrap();
    let (dg, du) = (down(be, &dg), down(be, &du));
    assert_eq!(dg[0], 2.5);
    assert_eq!(du[0], 0.0);
    check_close64("swiglu dgate", &dg[3..], &[1.0, 0.0], 1e-6, 1e-6);
    check_close64("swiglu dup", &du[3..], &[100.0, 0.0], 1e-6, 1e-6);
}

pub fn grad<B: Backend>(be: &B) {
    let len = 40;
    let mut r = rng(7);
    let gate = uniform(&mut r, len, 4.0);
    let upv = uniform(&mut r, len, 2.0);
    let proj = uniform(&mut r, len, 1.0);
    let fwd = |g: &[f32], u: &[f32]| {
        let mut out = be.zeros(len).unwrap();
        be.swiglu_fwd(&mut out, &up(be, g), &up(be, u), len)
            .unwrap();
        project(&down(be, &out), &proj)
    };
    let mut dg = be.zeros(len).unwrap();
    let mut du = be.zeros(len).unwrap();
    be.swiglu_bwd(
        &mut dg,
        &mut du,
        &up(be, &proj),
        &up(be, &gate),
        &up(be, &upv),
        len,
    )
    .unwrap();
    check_grad("swiglu dgate", &down(be, &dg), &gate, 1e-2, 1e-3, 1, |g| {
        fwd(g, &upv)
    });
    check_grad("swiglu dup", &down(be, &du), &upv, 1e-2, 1e-4, 1, |u| {
        fwd(&gate, u)
    });
}

pub fn errors<B: Backend>(be: &B) {
    let mut out = be.zeros(3).unwrap();
    let e = be
        .swiglu_fwd(&mut out, &up(be, &[0.0; 3]), &up(be, &[0.0; 2]), 3)
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

crate::cpu_tests!(literal, grad, errors);
