//! Global gradient norm and scale.
//!
//! Contract (see [`crate::Backend::sum_squares`]): `sum_squares(x) = Σ x²`, accumulated in `f64`
//! over fixed chunks of [`ELEM_CHUNK`](super::ELEM_CHUNK) elements (each chunk summed in index
//! order, then the chunk sums added in chunk order), so the result is the same bits for any thread
//! count. The global norm is `sqrt` of the sum over all gradient tensors (the caller adds them in a
//! fixed tensor order). `scale(x, s)`: `x *= s`.
use rayon::prelude::*;

use super::ELEM_CHUNK;

pub(crate) fn sum_squares(x: &[f32]) -> f64 {
    let partial: Vec<f64> = x
        .par_chunks(ELEM_CHUNK)
        .map(|c| {
            // Four f64 lanes, combined in a fixed order.
            let mut acc = [0f64; 4];
            let it = c.chunks_exact(4);
            let rem = it.remainder();
            for q in it {
                for l in 0..4 {
                    let v = q[l] as f64;
                    acc[l] += v * v;
                }
            }
            let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
            for &v in rem {
                s += (v as f64) * (v as f64);
            }
            s
        })
        .collect();
    partial.iter().sum()
}

pub(crate) fn scale(x: &mut [f32], s: f32) {
    x.par_chunks_mut(ELEM_CHUNK)
        .for_each(|c| c.iter_mut().for_each(|v| *v *= s));
}

/// The factor that clips gradients to a global norm of at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_`: `min(1, max_norm / (total_norm + 1e-6))`. Pass it as
/// [`AdamWParams::grad_scale`](crate::AdamWParams::grad_scale) (or to `scale`).
///
/// ```
/// use koala_kernels::cpu::clip_scale;
/// assert_eq!(clip_scale(0.5, 1.0), 1.0);
/// assert!((clip_scale(4.0, 1.0) - 0.25).abs() < 1e-6);
/// ```
pub fn clip_scale(total_norm: f64, max_norm: f64) -> f32 {
    let coef = max_norm / (total_norm + 1e-6);
    coef.min(1.0) as f32
}
