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
//!
//! The backend caches the cos/sin table of the last `(head_dim, theta)` for positions below
//! 2^17 (the same values, computed once instead of in every call); larger positions are computed
//! on the fly.
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::{expect_len, mul};
use crate::{Error, Result};

/// Positions below this are served from a cached cos/sin table (at most
/// `MAX_CACHED_POSITIONS · head_dim · 4` bytes); larger ones are computed per call.
const MAX_CACHED_POSITIONS: usize = 1 << 17;

/// `cos`/`sin` of every `(position, j)` for one `(head_dim, theta)`, `[rows, head_dim/2]` each.
/// The trainer calls RoPE for q and k of every layer, forward and backward, with the same
/// positions: the table turns 24 rounds of trigonometry per step into one.
pub(crate) struct Table {
    head_dim: usize,
    theta_bits: u32,
    rows: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// The backend's cache slot (shared by clones of one backend).
pub(crate) type Cache = Arc<Mutex<Option<Arc<Table>>>>;

/// `cos`/`sin` of one angle as HF computes it: an `f32` angle, correctly rounded results.
#[inline]
fn cos_sin(pos: u32, inv_freq: f32) -> (f32, f32) {
    let angle = (pos as f32 * inv_freq) as f64;
    (angle.cos() as f32, angle.sin() as f32)
}

fn build(head_dim: usize, theta: f32, rows: usize) -> Table {
    let half = head_dim / 2;
    let inv = inv_freq(head_dim, theta);
    let mut cos = vec![0f32; rows * half];
    let mut sin = vec![0f32; rows * half];
    cos.par_chunks_mut(half)
        .zip(sin.par_chunks_mut(half))
        .enumerate()
        .for_each(|(pos, (c, s))| {
            for j in 0..half {
                (c[j], s[j]) = cos_sin(pos as u32, inv[j]);
            }
        });
    Table {
        head_dim,
        theta_bits: theta.to_bits(),
        rows,
        cos,
        sin,
    }
}

/// A table covering positions `0..=max_pos`, from the cache when it fits.
fn table(cache: &Cache, head_dim: usize, theta: f32, max_pos: usize) -> Arc<Table> {
    let mut slot = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = slot.as_ref()
        && t.head_dim == head_dim
        && t.theta_bits == theta.to_bits()
        && t.rows > max_pos
    {
        return t.clone();
    }
    // Round up so that growing sequence lengths rebuild rarely.
    let rows = (max_pos + 1).next_power_of_two().min(MAX_CACHED_POSITIONS);
    let t = Arc::new(build(head_dim, theta, rows));
    *slot = Some(t.clone());
    t
}
/// `inv_freq[j] = 1 / theta^(2j/head_dim)` as HF computes it, in `f32`.
fn inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|j| {
            let e = (2 * j) as f32 / head_dim as f32;
            1.0 / ((theta as f64).powf(e as f64) as f32)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn apply(
    x: &mut [f32],
    positions: &[u32],
    n: usize,
    heads: usize,
    head_dim: usize,
    theta: f32,
    transpose: bool,
    cache: &Cache,
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
    if heads == 0 || n == 0 {
        return Ok(());
    }
    let half = head_dim / 2;
    let max_pos = positions.iter().copied().max().unwrap_or(0) as usize;
    let tab = (max_pos < MAX_CACHED_POSITIONS).then(|| table(cache, head_dim, theta, max_pos));
    let inv = inv_freq(head_dim, theta);
    x.par_chunks_mut(heads * head_dim)
        .zip(positions.par_iter())
        .with_min_len(4)
        .for_each_init(
            || (vec![0f32; half], vec![0f32; half]),
            |(cbuf, sbuf), (row, &pos)| {
                let (cos, sin): (&[f32], &[f32]) = match &tab {
                    Some(t) => {
                        let p = pos as usize * half;
                        (&t.cos[p..p + half], &t.sin[p..p + half])
                    }
                    None => {
                        for j in 0..half {
                            (cbuf[j], sbuf[j]) = cos_sin(pos, inv[j]);
                        }
                        (cbuf, sbuf)
                    }
                };
                // The transpose rotation is the same with sin negated.
                let sign = if transpose { -1.0f32 } else { 1.0 };
                for h in row.chunks_exact_mut(head_dim) {
                    let (x1, x2) = h.split_at_mut(half);
                    for j in 0..half {
                        let (a, b, c, s) = (x1[j], x2[j], cos[j], sign * sin[j]);
                        x1[j] = a * c + (-b) * s;
                        x2[j] = b * c + a * s;
                    }
                }
            },
        );
    Ok(())
}
