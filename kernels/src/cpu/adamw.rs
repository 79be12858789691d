//! AdamW, one step on one parameter tensor, as `torch.optim.AdamW` (single-tensor path).
//!
//! Contract (see [`crate::Backend::adamw_step`]); `params, grads, m, v` have the same length:
//! ```text
//! g  = grad · grad_scale
//! p  = p · (1 − lr·wd)                       decoupled weight decay
//! m  = m + (1 − β1)·(g − m)                  = β1·m + (1 − β1)·g (torch's lerp)
//! v  = β2·v + (1 − β2)·g²
//! p -= (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + eps)
//! ```
//! with `t = step` (1-based). As in PyTorch, where hyperparameters are Python floats, the scalar
//! factors (`1 − β`, `1 − lr·wd`, `lr/(1 − β1^t)`, `sqrt(1 − β2^t)`) are computed in `f64` from the
//! decimal value of each `f32` hyperparameter and rounded to `f32` once; the elementwise update then
//! follows torch's order of operations, so the result tracks PyTorch to rounding. Elementwise
//! over fixed chunks; deterministic.
use rayon::prelude::*;

use super::{ELEM_CHUNK, expect_len};
use crate::{AdamWParams, Error, Result};

/// The `f64` a user meant when writing this `f32` (its shortest decimal form: `0.999f32` → `0.999`),
/// so that `1 − β2` and `lr / (1 − β1^t)` are the values PyTorch computes from Python floats.
fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

pub(crate) fn step(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    hp: &AdamWParams,
) -> Result<()> {
    const OP: &str = "adamw_step";
    let n = params.len();
    expect_len(OP, "grads", grads.len(), n)?;
    expect_len(OP, "m", m.len(), n)?;
    expect_len(OP, "v", v.len(), n)?;
    if hp.step == 0 {
        return Err(Error::Shape {
            op: OP,
            detail: "step is 1-based; got 0".into(),
        });
    }
    let t = hp.step.min(i32::MAX as u64) as i32;
    let (b1, b2, lr) = (decimal(hp.beta1), decimal(hp.beta2), decimal(hp.lr));
    let decay = (1.0 - lr * decimal(hp.weight_decay)) as f32;
    let step_size = (lr / (1.0 - b1.powi(t))) as f32;
    let bc2_sqrt = (1.0 - b2.powi(t)).sqrt() as f32;
    let one_m_b1 = (1.0 - b1) as f32;
    let one_m_b2 = (1.0 - b2) as f32;
    let (beta2, eps, gs) = (hp.beta2, hp.eps, hp.grad_scale);
    params
        .par_chunks_mut(ELEM_CHUNK)
        .zip(grads.par_chunks(ELEM_CHUNK))
        .zip(
            m.par_chunks_mut(ELEM_CHUNK)
                .zip(v.par_chunks_mut(ELEM_CHUNK)),
        )
        .for_each(|((p, g), (m, v))| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let g = g * gs;
                *p *= decay;
                *m += one_m_b1 * (g - *m);
                *v = *v * beta2 + one_m_b2 * g * g;
                let denom = v.sqrt() / bc2_sqrt + eps;
                *p += -step_size * *m / denom;
            }
        });
    Ok(())
}
