//! Rotary position embedding, rotate-half form (as Hugging Face LLaMA).
//!
//! Contract (see [`crate::Backend::rope_fwd`]): in place on `x: [n, heads, head_dim]` with
//! `positions: [n]`. For each pair `(j, j + head_dim/2)`:
//! `inv_freq[j] = 1 / theta^(2j/head_dim)`, `angle = positions[i] · inv_freq[j]`,
//! `x1' = x1·cos − x2·sin`, `x2' = x2·cos + x1·sin`.
//! The backward applies the transpose rotation in place on the gradient (`sin` negated):
//! `dx1 = dy1·cos + dy2·sin`, `dx2 = dy2·cos − dy1·sin`.
//!
//! Precision follows HF: `inv_freq` and `angle` are `f32` values (`angle` is one `f32` product, as
//! HF's `inv_freq @ position_ids` with an inner dimension of 1), and `cos`/`sin` of that `f32`
//! angle are correctly rounded to `f32` (computed in `f64`). `head_dim` must be even. Parallel over
//! token rows; elementwise, so deterministic.
use rayon::prelude::*;

use super::{expect_len, mul};
use crate::{Error, Result};

/// `inv_freq[j] = 1 / theta^(2j/head_dim)` as HF computes it, in `f32`.
fn inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|j| {
            let e = (2 * j) as f32 / head_dim as f32;
            1.0 / ((theta as f64).powf(e as f64) as f32)
        })
        .collect()
}

pub(crate) fn apply(
    x: &mut [f32],
    positions: &[u32],
    n: usize,
    heads: usize,
    head_dim: usize,
    theta: f32,
    transpose: bool,
) -> Result<()> {
    let op = if transpose { "rope_bwd" } else { "rope_fwd" };
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(Error::Shape {
            op,
            detail: format!("head_dim={head_dim} must be even and > 0"),
        });
    }
    if !(theta.is_finite() && theta > 0.0) {
        return Err(Error::Shape {
            op,
            detail: format!("theta={theta} must be a positive number"),
        });
    }
    expect_len(op, "x", x.len(), mul(op, &[n, heads, head_dim])?)?;
    expect_len(op, "positions", positions.len(), n)?;
    if heads == 0 {
        return Ok(());
    }
    let half = head_dim / 2;
    let inv = inv_freq(head_dim, theta);
    x.par_chunks_mut(heads * head_dim)
        .zip(positions.par_iter())
        .with_min_len(4)
        .for_each_init(
            || (vec![0f32; half], vec![0f32; half]),
            |(cos, sin), (row, &pos)| {
                for j in 0..half {
                    let angle = (pos as f32 * inv[j]) as f64;
                    cos[j] = angle.cos() as f32;
                    sin[j] = if transpose {
                        -(angle.sin() as f32)
                    } else {
                        angle.sin() as f32
                    };
                }
                for h in row.chunks_exact_mut(head_dim) {
                    let (x1, x2) = h.split_at_mut(half);
                    for j in 0..half {
                        let (a, b) = (x1[j], x2[j]);
                        x1[j] = a * cos[j] + (-b) * sin[j];
                        x2[j] = b * cos[j] + a * sin[j];
                    }
                }
            },
        );
    Ok(())
}
