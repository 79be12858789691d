use koala_kernels::{AdamWParams, Backend, Error};

use crate::common::*;

fn hp(step: u64) -> AdamWParams {
    AdamWParams {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.5,
        step,
        grad_scale: 1.0,
    }
}

pub fn literal<B: Backend>(be: &B) {
    // Step 1 with p = 1, g = 2: decay p = 1·(1 − 0.1·0.5) = 0.95; m = 0.2, v = 0.004;
    // m̂ = 2, v̂ = 4 → p = 0.95 − 0.1·2/(2 + 1e-8) = 0.85.
    let mut p = up(be, &[1.0, -1.0]);
    let mut m = be.zeros(2).unwrap();
    let mut v = be.zeros(2).unwrap();
    be.adamw_step(&mut p, &up(be, &[2.0, 0.0]), &mut m, &mut v, &hp(1))
        .unwrap();
    check_close64("adamw p", &down(be, &p), &[0.85, -0.95], 1e-6, 1e-6);
    check_close64("adamw m", &down(be, &m), &[0.2, 0.0], 1e-7, 1e-6);
    check_close64("adamw v", &down(be, &v), &[0.004, 0.0], 1e-9, 1e-6);
    // grad_scale folds clipping in: g = 4·0.5 = 2 gives the same step as above.
    let mut p2 = up(be, &[1.0, -1.0]);
    let (mut m2, mut v2) = (be.zeros(2).unwrap(), be.zeros(2).unwrap());
    let h = AdamWParams {
        grad_scale: 0.5,
        ..hp(1)
    };
    be.adamw_step(&mut p2, &up(be, &[4.0, 0.0]), &mut m2, &mut v2, &h)
        .unwrap();
    assert_eq!(down(be, &p2), down(be, &p));
}

/// Five steps against an f64 transcription of `torch.optim.AdamW`'s update.
pub fn steps_vs_reference<B: Backend>(be: &B) {
    let len = 33;
    let mut r = rng(10);
    let mut p64: Vec<f64> = uniform(&mut r, len, 1.0)
        .into_iter()
        .map(f64::from)
        .collect();
    let p0: Vec<f32> = p64.iter().map(|&x| x as f32).collect();
    let (mut m64, mut v64) = (vec![0f64; len], vec![0f64; len]);
    let mut p = up(be, &p0);
    let (mut m, mut v) = (be.zeros(len).unwrap(), be.zeros(len).unwrap());
    for step in 1..=5u64 {
        let g = uniform(&mut r, len, 1.0);
        let h = AdamWParams {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-6,
            weight_decay: 0.1,
            step,
            grad_scale: 0.7,
        };
        be.adamw_step(&mut p, &up(be, &g), &mut m, &mut v, &h)
            .unwrap();
        for i in 0..len {
            let g = g[i] as f64 * 0.7;
            p64[i] *= 1.0 - 1e-2 * 0.1;
            m64[i] = 0.9 * m64[i] + 0.1 * g;
            v64[i] = 0.95 * v64[i] + 0.05 * g * g;
            let mh = m64[i] / (1.0 - 0.9f64.powi(step as i32));
            let vh = v64[i] / (1.0 - 0.95f64.powi(step as i32));
            p64[i] -= 1e-2 * mh / (vh.sqrt() + 1e-6);
        }
    }
    check_close64("adamw 5 steps", &down(be, &p), &p64, 1e-6, 1e-6);
}

pub fn errors<B: Backend>(be: &B) {
    let mut p = be.zeros(2).unwrap();
    let (mut m, mut v) = (be.zeros(2).unwrap(), be.zeros(3).unwrap());
    let e = be
        .adamw_step(&mut p, &up(be, &[0.0; 2]), &mut m, &mut v, &hp(1))
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let mut v = be.zeros(2).unwrap();
    let e = be
        .adamw_step(&mut p, &up(be, &[0.0; 2]), &mut m, &mut v, &hp(0))
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

crate::cpu_tests!(literal, steps_vs_reference, errors);
