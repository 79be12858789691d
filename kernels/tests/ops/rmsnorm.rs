use koala_kernels::{Backend, Error};

use crate::common::*;

pub fn literal<B: Backend>(be: &B) {
    // x = [3, 4]: mean(x²) = 12.5, rstd = 1/sqrt(12.5); w = [1, 2].
    let x = up(be, &[3.0, 4.0]);
    let w = up(be, &[1.0, 2.0]);
    let mut out = be.zeros(2).unwrap();
    let mut rstd = be.zeros(1).unwrap();
    be.rmsnorm_fwd(&mut out, &mut rstd, &x, &w, 1, 2, 0.0)
        .unwrap();
    let r = 1.0 / 12.5f64.sqrt();
    check_close64("rmsnorm rstd", &down(be, &rstd), &[r], 1e-7, 1e-6);
    check_close64(
        "rmsnorm out",
        &down(be, &out),
        &[3.0 * r, 8.0 * r],
        1e-7,
        1e-6,
    );

    // eps enters under the root: x = [0, 0], eps = 0.25 → rstd = 2, out = 0.
    let z = up(be, &[0.0, 0.0]);
    be.rmsnorm_fwd(&mut out, &mut rstd, &z, &w, 1, 2, 0.25)
        .unwrap();
    assert_eq!(down(be, &rstd), vec![2.0]);
    assert_eq!(down(be, &out), vec![0.0, 0.0]);

    // Backward at x = [3, 4], w = [1, 2], dout = [1, 0]:
    // dx_k = r·w_k·g_k − x_k·r³/c·Σ g·w·x = r·[1, 0] − [3, 4]·r³·3/2; dw = [3r, 0] + previous 1.
    be.rmsnorm_fwd(&mut out, &mut rstd, &x, &w, 1, 2, 0.0)
        .unwrap();
    let mut dx = be.zeros(2).unwrap();
    let mut dw = up(be, &[1.0, 1.0]);
    be.rmsnorm_bwd(&mut dx, &mut dw, &up(be, &[1.0, 0.0]), &x, &w, &rstd, 1, 2)
        .unwrap();
    let r3 = r * r * r * 1.5;
    check_close64(
        "rmsnorm dx",
        &down(be, &dx),
        &[r - 3.0 * r3, -4.0 * r3],
        1e-7,
        1e-5,
    );
    check_close64(
        "rmsnorm dw",
        &down(be, &dw),
        &[1.0 + 3.0 * r, 1.0],
        1e-7,
        1e-6,
    );
}

pub fn grad<B: Backend>(be: &B) {
    let (n, c, eps) = (5, 12, 1e-5);
    let mut r = rng(2);
    let x = uniform(&mut r, n * c, 1.0);
    let w = uniform(&mut r, c, 1.5);
    let proj = uniform(&mut r, n * c, 1.0);
    let fwd = |x: &[f32], w: &[f32]| {
        let mut out = be.zeros(n * c).unwrap();
        let mut rstd = be.zeros(n).unwrap();
        be.rmsnorm_fwd(&mut out, &mut rstd, &up(be, x), &up(be, w), n, c, eps)
            .unwrap();
        (out, rstd)
    };
    let (_, rstd) = fwd(&x, &w);
    let mut dx = be.zeros(n * c).unwrap();
    let dw0 = uniform(&mut r, c, 1.0);
    let mut dw = up(be, &dw0);
    be.rmsnorm_bwd(
        &mut dx,
        &mut dw,
        &up(be, &proj),
        &up(be, &x),
        &up(be, &w),
        &rstd,
        n,
        c,
    )
    .unwrap();
    let dw: Vec<f32> = down(be, &dw).iter().zip(&dw0).map(|(a, b)| a - b).collect();
    check_grad("rmsnorm dx", &down(be, &dx), &x, 1e-2, 2e-3, 1, |x| {
        project(&down(be, &fwd(x, &w).0), &proj)
    });
    check_grad("rmsnorm dw (accumulated)", &dw, &w, 1e-2, 2e-3, 1, |w| {
        project(&down(be, &fwd(&x, w).0), &proj)
    });
}

pub fn errors<B: Backend>(be: &B) {
    let mut out = be.zeros(4).unwrap();
    let mut rstd = be.zeros(2).unwrap();
    let x = up(be, &[1.0; 4]);
    let e = be
        .rmsnorm_fwd(&mut out, &mut rstd, &x, &up(be, &[1.0; 3]), 2, 2, 1e-5)
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = be
        .rmsnorm_fwd(&mut out, &mut rstd, &x, &up(be, &[1.0; 2]), 2, 0, 1e-5)
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

crate::cpu_tests!(literal, grad, errors);
