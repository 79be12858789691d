//! Fused softmax cross-entropy, forward and backward in one pass, in place.
//!
//! Contract (see [`crate::Backend::cross_entropy_fwd_bwd`]): `logits: [n, v]`, `targets: [n]`,
//! `weights: [n]`, `losses: [n]`. For each row `i`:
//! `losses[i] = logsumexp(logits[i]) − logits[i, targets[i]]`, then the row is overwritten with
//! `weights[i] · (softmax(logits[i]) − onehot(targets[i]))`. No probability tensor exists beside
//! the logits. `weights[i] = 0` masks a row (its loss is still written, its gradient is zero).
//! A target `>= v` is an [`Error::Index`](crate::Error::Index), checked before anything is written.
//!
//! Per row: the max, then `e_j = exp(x_j − max)` (`f32`, the vectorisable [`exp`](super::exp))
//! stored in place, `Σ e_j` in `f64` over four lanes in a fixed order, then `p_j = e_j / Σ`.
//! Parallel over rows; deterministic.
use rayon::prelude::*;

use super::{check_ids, exp, expect_len, mul};
use crate::{Error, Result};

pub(crate) fn fwd_bwd(
    logits: &mut [f32],
    losses: &mut [f32],
    targets: &[u32],
    weights: &[f32],
    n: usize,
    v: usize,
) -> Result<()> {
    const OP: &str = "cross_entropy_fwd_bwd";
    if v == 0 {
        return Err(Error::Shape {
            op: OP,
            detail: "v must be > 0".into(),
        });
    }
    expect_len(OP, "logits", logits.len(), mul(OP, &[n, v])?)?;
    expect_len(OP, "losses", losses.len(), n)?;
    expect_len(OP, "targets", targets.len(), n)?;
    expect_len(OP, "weights", weights.len(), n)?;
    check_ids(OP, targets, v)?;
    logits
        .par_chunks_mut(v)
        .zip(losses.par_iter_mut())
        .zip(targets.par_iter().zip(weights.par_iter()))
        .for_each(|((row, loss), (&tgt, &w))| {
            let tgt = tgt as usize;
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let x_t = row[tgt];
            for x in row.iter_mut() {
                *x = exp(*x - m);
            }
            // Σ e_j in f64, four lanes combined in a fixed order.
            let mut acc = [0f64; 4];
            let chunks = row.chunks_exact(4);
            let mut sum: f64 = chunks.remainder().iter().map(|&e| e as f64).sum();
            for c in chunks {
                for (a, &e) in acc.iter_mut().zip(c) {
                    *a += e as f64;
                }
            }
            sum += (acc[0] + acc[2]) + (acc[1] + acc[3]);
            let lse = m as f64 + sum.ln();
            *loss = (lse - x_t as f64) as f32;
            let inv = (1.0 / sum) as f32;
            for x in row.iter_mut() {
                *x = w * (*x * inv);
            }
            row[tgt] -= w;
        });
    Ok(())
}
