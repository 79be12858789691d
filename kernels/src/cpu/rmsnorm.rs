//! RMSNorm (LLaMA's, no mean subtraction, no bias).
//!
//! Contract (see [`crate::Backend::rmsnorm_fwd`]):
//! * forward: `rstd[i] = 1/sqrt(mean(x[i,:]²) + eps)`, `out[i,:] = (x[i,:] · rstd[i]) · w` (the
//!   multiplication order of HF `LlamaRMSNorm`); `x, out: [n, c]`, `w: [c]`, `rstd: [n]` is cached
//!   for the backward.
//! * backward: with `g = dout[i,:]` and `r = rstd[i]`,
//!   `dx[i,k] = r·w[k]·g[k] − x[i,k] · r³/c · Σ_j g[j]·w[j]·x[i,j]` (activation gradient:
//!   overwrites), and `dw[k] += Σ_i g[i,k]·x[i,k]·r_i` (weight gradient: accumulates).
//! * determinism: `dx` is parallel over rows; `dw` is parallel over fixed blocks of columns, each
//!   block summing over rows in row order.
use rayon::prelude::*;

use super::{dot, expect_len, mul};
use crate::{Error, Result};

/// Columns per `dw` task.
const DW_COLS: usize = 64;

pub(crate) fn forward(
    out: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    c: usize,
    eps: f32,
) -> Result<()> {
    const OP: &str = "rmsnorm_fwd";
    if c == 0 {
        return Err(Error::Shape {
            op: OP,
            detail: "c must be > 0".into(),
        });
    }
    let nc = mul(OP, &[n, c])?;
    expect_len(OP, "x", x.len(), nc)?;
    expect_len(OP, "out", out.len(), nc)?;
    expect_len(OP, "w", w.len(), c)?;
    expect_len(OP, "rstd", rstd.len(), n)?;
    out.par_chunks_mut(c)
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(c))
        .with_min_len(8)
        .for_each(|((o, r), xr)| {
            let ms = dot(xr, xr) / c as f32;
            let rs = 1.0 / (ms + eps).sqrt();
            *r = rs;
            for ((o, &xv), &wv) in o.iter_mut().zip(xr).zip(w) {
                *o = (xv * rs) * wv;
            }
        });
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    dx: &mut [f32],
    dw: &mut [f32],
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    n: usize,
    c: usize,
) -> Result<()> {
    const OP: &str = "rmsnorm_bwd";
    if c == 0 {
        return Err(Error::Shape {
            op: OP,
            detail: "c must be > 0".into(),
        });
    }
    let nc = mul(OP, &[n, c])?;
    expect_len(OP, "dx", dx.len(), nc)?;
    expect_len(OP, "dout", dout.len(), nc)?;
    expect_len(OP, "x", x.len(), nc)?;
    expect_len(OP, "w", w.len(), c)?;
    expect_len(OP, "dw", dw.len(), c)?;
    expect_len(OP, "rstd", rstd.len(), n)?;
    dx.par_chunks_mut(c)
        .zip(dout.par_chunks(c).zip(x.par_chunks(c)))
        .zip(rstd.par_iter())
        .with_min_len(8)
        .for_each(|((dxr, (g, xr)), &r)| {
            // Σ_j g_j w_j x_j, in a fixed lane order.
            let mut acc = [0f32; 8];
            let (gc, wc, xc) = (g.chunks_exact(8), w.chunks_exact(8), xr.chunks_exact(8));
            let mut tail = 0f32;
            for ((gv, wv), xv) in gc
                .remainder()
                .iter()
                .zip(wc.remainder())
                .zip(xc.remainder())
            {
                tail += gv * wv * xv;
            }
            for ((gv, wv), xv) in gc.zip(wc).zip(xc) {
                for (l, a) in acc.iter_mut().enumerate() {
                    *a += gv[l] * wv[l] * xv[l];
                }
            }
            let s = ((acc[0] + acc[4]) + (acc[1] + acc[5]))
                + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
                + tail;
            let k = r * r * r * s / c as f32;
            for j in 0..c {
                dxr[j] = r * (w[j] * g[j]) - xr[j] * k;
            }
        });
    dw.par_chunks_mut(DW_COLS)
        .enumerate()
        .for_each(|(blk, dwb)| {
            let j0 = blk * DW_COLS;
            for (i, &r) in rstd.iter().enumerate() {
                let base = i * c + j0;
                let g = &dout[base..base + dwb.len()];
                let xr = &x[base..base + dwb.len()];
                for ((d, &gv), &xv) in dwb.iter_mut().zip(g).zip(xr) {
                    *d += gv * xv * r;
                }
            }
        });
    Ok(())
}
