use koala_kernels::{Backend, Error};

use crate::common::*;

pub fn literal<B: Backend>(be: &B) {
    let mut out = be.zeros(3).unwrap();
    be.add_fwd(
        &mut out,
        &up(be, &[1.0, 2.0, 3.0]),
        &up(be, &[0.5, -2.0, 10.0]),
        3,
    )
    .unwrap();
    assert_eq!(down(be, &out), vec![1.5, 0.0, 13.0]);
    be.add_inplace(&mut out, &up(be, &[1.0, 1.0, -13.0]), 3)
        .unwrap();
    assert_eq!(down(be, &out), vec![2.5, 1.0, 0.0]);
}

/// The residual add's gradient is `dout` for both inputs: checked by finite differences of `a + b`.
pub fn grad<B: Backend>(be: &B) {
    let len = 10;
    let mut r = rng(8);
    let a = uniform(&mut r, len, 1.0);
    let b = uniform(&mut r, len, 1.0);
    let proj = uniform(&mut r, len, 1.0);
    // Backward through add: da = db = dout, built with add_inplace from zero.
    let mut da = be.zeros(len).unwrap();
    be.add_inplace(&mut da, &up(be, &proj), len).unwrap();
    let fwd = |a: &[f32], b: &[f32]| {
        let mut out = be.zeros(len).unwrap();
        be.add_fwd(&mut out, &up(be, a), &up(be, b), len).unwrap();
        project(&down(be, &out), &proj)
    };
    check_grad("add da", &down(be, &da), &a, 1e-2, 1e-4, 1, |a| fwd(a, &b));
    check_grad("add db", &down(be, &da), &b, 1e-2, 1e-4, 1, |b| fwd(&a, b));
}

pub fn errors<B: Backend>(be: &B) {
    let mut out = be.zeros(3).unwrap();
    let e = be
        .add_fwd(&mut out, &up(be, &[0.0; 3]), &up(be, &[0.0; 4]), 3)
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = be.add_inplace(&mut out, &up(be, &[0.0; 3]), 4).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

crate::cpu_tests!(literal, grad, errors);
