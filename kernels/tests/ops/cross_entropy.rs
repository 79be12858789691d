use koala_kernels::{Backend, Error};

use crate::common::*;

pub fn literal<B: Backend>(be: &B) {
    // Row 0: logits [0, 0], target 0, weight 1 → loss ln 2, dlogits [−0.5, 0.5].
    // Row 1: logits [ln 3, 0], target 1, weight 0.5 → p = [0.75, 0.25], loss ln 4,
    //        dlogits 0.5·[0.75, −0.75]. Row 2: masked (weight 0): loss still written, gradient 0.
    let mut logits = up(be, &[0.0, 0.0, 3f32.ln(), 0.0, 1000.0, -1000.0]);
    let mut losses = be.zeros(3).unwrap();
    let targets = be.upload_ids(&[0, 1, 1]).unwrap();
    be.cross_entropy_fwd_bwd(
        &mut logits,
        &mut losses,
        &targets,
        &up(be, &[1.0, 0.5, 0.0]),
        3,
        2,
    )
    .unwrap();
    check_close64(
        "ce losses",
        &down(be, &losses),
        &[2f64.ln(), 4f64.ln(), 2000.0],
        1e-6,
        1e-6,
    );
    check_close64(
        "ce dlogits",
        &down(be, &logits),
        &[-0.5, 0.5, 0.375, -0.375, 0.0, 0.0],
        1e-6,
        1e-6,
    );
}

/// `L = Σ_i weights[i]·losses[i]`; the op's in-place output must be `∂L/∂logits`.
pub fn grad<B: Backend>(be: &B) {
    let (n, v) = (4, 11);
    let mut r = rng(9);
    let logits = uniform(&mut r, n * v, 3.0);
    let targets = be.upload_ids(&ids(&mut r, n, v as u32)).unwrap();
    let w_h = vec![1.0, 0.25, 0.0, 2.0];
    let w = up(be, &w_h);
    let run = |x: &[f32]| {
        let mut l = up(be, x);
        let mut losses = be.zeros(n).unwrap();
        be.cross_entropy_fwd_bwd(&mut l, &mut losses, &targets, &w, n, v)
            .unwrap();
        (down(be, &l), down(be, &losses))
    };
    let (dlogits, _) = run(&logits);
    check_grad("ce dlogits", &dlogits, &logits, 1e-2, 1e-3, 1, |x| {
        project(&run(x).1, &w_h)
    });
}

pub fn errors<B: Backend>(be: &B) {
    let mut logits = be.zeros(4).unwrap();
    let mut losses = be.zeros(2).unwrap();
    let w = up(be, &[1.0, 0.0]);
    let e = be
        .cross_entropy_fwd_bwd(
            &mut logits,
            &mut losses,
            &be.upload_ids(&[0, 2]).unwrap(),
            &w,
            2,
            2,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Index {
                index: 2,
                limit: 2,
                ..
            }
        ),
        "{e}"
    );
    let e = be
        .cross_entropy_fwd_bwd(
            &mut logits,
            &mut losses,
            &be.upload_ids(&[0]).unwrap(),
            &w,
            2,
            2,
        )
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

crate::cpu_tests!(literal, grad, errors);
