use koala_kernels::{Backend, Error};

use crate::common::*;

pub fn literal<B: Backend>(be: &B) {
    // head_dim 4, theta 10000: inv_freq = [1, 1/100]. Token 0 at position 2, token 1 at position 0.
    let mut x = up(be, &[1.0, 3.0, 0.5, 2.0, 1.0, 3.0, 0.5, 2.0]);
    let pos = be.upload_ids(&[2, 0]).unwrap();
    be.rope_fwd(&mut x, &pos, 2, 1, 4, 10000.0).unwrap();
    let (c0, s0) = (2f64.cos(), 2f64.sin());
    let (c1, s1) = (0.02f64.cos(), 0.02f64.sin());
    let want = [
        1.0 * c0 - 0.5 * s0, // x1[0]·cos − x2[0]·sin
        3.0 * c1 - 2.0 * s1,
        0.5 * c0 + 1.0 * s0, // x2[0]·cos + x1[0]·sin
        2.0 * c1 + 3.0 * s1,
        1.0, // position 0: unchanged
        3.0,
        0.5,
        2.0,
    ];
    check_close64("rope_fwd", &down(be, &x), &want, 1e-6, 1e-6);
    // The backward is the inverse rotation: it undoes the forward.
    be.rope_bwd(&mut x, &pos, 2, 1, 4, 10000.0).unwrap();
    check_close(
        "rope_bwd∘rope_fwd",
        &down(be, &x),
        &[1.0, 3.0, 0.5, 2.0, 1.0, 3.0, 0.5, 2.0],
        1e-6,
        1e-6,
    );
}

/// f64 reference over many heads and positions (HF's rotate-half formula).
pub fn forward_vs_reference<B: Backend>(be: &B) {
    let (n, heads, hd, theta) = (9, 3, 8, 500000.0f32);
    let mut r = rng(5);
    let x0 = uniform(&mut r, n * heads * hd, 1.0);
    let pos_h: Vec<u32> = (0..n as u32).map(|i| i * 37).collect();
    let mut x = up(be, &x0);
    be.rope_fwd(&mut x, &be.upload_ids(&pos_h).unwrap(), n, heads, hd, theta)
        .unwrap();
    let mut want = vec![0f64; x0.len()];
    for (i, &pos) in pos_h.iter().enumerate() {
        for h in 0..heads {
            let base = (i * heads + h) * hd;
            for j in 0..hd / 2 {
                let inv = 1.0 / (theta as f64).powf(2.0 * j as f64 / hd as f64);
                let a = pos as f64 * inv;
                let (x1, x2) = (x0[base + j] as f64, x0[base + j + hd / 2] as f64);
                want[base + j] = x1 * a.cos() - x2 * a.sin();
                want[base + j + hd / 2] = x2 * a.cos() + x1 * a.sin();
            }
        }
    }
    // Angles up to 296 rad carry f32 rounding of ~2e-5 rad, as in HF's f32 computation.
    check_close64("rope_fwd vs f64", &down(be, &x), &want, 1e-4, 0.0);
}

/// Positions past the cached table (2^17) take the uncached path: same bits for a shared position.
pub fn cached_equals_uncached<B: Backend>(be: &B) {
    let (heads, hd) = (2, 8);
    let mut r = rng(18);
    let row = uniform(&mut r, heads * hd, 1.0);
    let mut both = up(be, &[row.clone(), row.clone()].concat());
    be.rope_fwd(
        &mut both,
        &be.upload_ids(&[300, 200_000]).unwrap(),
        2,
        heads,
        hd,
        10000.0,
    )
    .unwrap();
    let mut alone = up(be, &row);
    be.rope_fwd(
        &mut alone,
        &be.upload_ids(&[300]).unwrap(),
        1,
        heads,
        hd,
        10000.0,
    )
    .unwrap();
    let (both, alone) = (down(be, &both), down(be, &alone));
    assert!(
        both[..heads * hd]
            .iter()
            .zip(&alone)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
    // A different theta must not reuse the cached table.
    let mut other = up(be, &row);
    be.rope_fwd(
        &mut other,
        &be.upload_ids(&[300]).unwrap(),
        1,
        heads,
        hd,
        500000.0,
    )
    .unwrap();
    assert_ne!(down(be, &other), alone);
}

/// RoPE is linear in x, so the finite-difference gradient is exact up to rounding.
pub fn grad<B: Backend>(be: &B) {
    let (n, heads, hd) = (4, 2, 6);
    let mut r = rng(6);
    let x = uniform(&mut r, n * heads * hd, 1.0);
    let proj = uniform(&mut r, n * heads * hd, 1.0);
    let pos = be.upload_ids(&[0, 5, 1, 11]).unwrap();
    let mut dx = up(be, &proj);
    be.rope_bwd(&mut dx, &pos, n, heads, hd, 10000.0).unwrap();
    check_grad("rope dx", &down(be, &dx), &x, 1e-2, 1e-4, 1, |x| {
        let mut y = up(be, x);
        be.rope_fwd(&mut y, &pos, n, heads, hd, 10000.0).unwrap();
        project(&down(be, &y), &proj)
    });
}

pub fn errors<B: Backend>(be: &B) {
    let mut x = be.zeros(6).unwrap();
    let pos = be.upload_ids(&[0, 1]).unwrap();
    let e = be.rope_fwd(&mut x, &pos, 2, 1, 3, 10000.0).unwrap_err(); // odd head_dim
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = be.rope_fwd(&mut x, &pos, 3, 1, 2, 10000.0).unwrap_err(); // positions too short
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

crate::cpu_tests!(
    literal,
    forward_vs_reference,
    cached_equals_uncached,
    grad,
    errors
);
