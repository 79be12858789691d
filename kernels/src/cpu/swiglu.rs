//! SwiGLU.
//!
//! Contract (see [`crate::Backend::swiglu_fwd`]): `out = silu(gate) * up` elementwise over `len`
//! elements (`[n, c]` in the model), `silu(x) = x·σ(x)`. Backward (activation gradients:
//! overwrite): `dup = dout · silu(gate)`,
//! `dgate = dout · up · σ(gate) · (1 + gate · (1 − σ(gate)))`. σ is computed as `1/(1+e^(−x))`
//! with the vectorisable [`exp`](super::exp), which saturates cleanly to 0 or 1 for large |x| (no
//! NaN). Elementwise, fixed chunks.
use rayon::prelude::*;

use super::{ELEM_CHUNK, exp, expect_len};
use crate::Result;

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

pub(crate) fn forward(out: &mut [f32], gate: &[f32], up: &[f32], len: usize) -> Result<()> {
    expect_len("swiglu_fwd", "out", out.len(), len)?;
    expect_len("swiglu_fwd", "gate", gate.len(), len)?;
    expect_len("swiglu_fwd", "up", up.len(), len)?;
    out.par_chunks_mut(ELEM_CHUNK)
        .zip(gate.par_chunks(ELEM_CHUNK).zip(up.par_chunks(ELEM_CHUNK)))
        .for_each(|(o, (g, u))| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g * sigmoid(g) * u;
            }
        });
    Ok(())
}

pub(crate) fn backward(
    dgate: &mut [f32],
    dup: &mut [f32],
    dout: &[f32],
    gate: &[f32],
    up: &[f32],
    len: usize,
) -> Result<()> {
    const OP: &str = "swiglu_bwd";
    expect_len(OP, "dgate", dgate.len(), len)?;
    expect_len(OP, "dup", dup.len(), len)?;
    expect_len(OP, "dout", dout.len(), len)?;
    expect_len(OP, "gate", gate.len(), len)?;
    expect_len(OP, "up", up.len(), len)?;
    dgate
        .par_chunks_mut(ELEM_CHUNK)
        .zip(dup.par_chunks_mut(ELEM_CHUNK))
        .zip(
            dout.par_chunks(ELEM_CHUNK)
                .zip(gate.par_chunks(ELEM_CHUNK).zip(up.par_chunks(ELEM_CHUNK))),
        )
        .for_each(|((dg, du), (d, (g, u)))| {
            for ((dg, du), ((&d, &g), &u)) in
                dg.iter_mut().zip(du.iter_mut()).zip(d.iter().zip(g).zip(u))
            {
                let s = sigmoid(g);
                *du = d * (g * s);
                *dg = d * u * (s * (1.0 + g * (1.0 - s)));
            }
        });
    Ok(())
}
