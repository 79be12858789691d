//! Residual add.
//!
//! Contract (see [`crate::Backend::add_fwd`]): `out = a + b` and `acc += x`, all `len` elements.
//! The backward of a residual add passes `dout` unchanged to both inputs; the caller does that with
//! `add_inplace` (activation gradients that meet at a residual accumulate there). Elementwise, so
//! deterministic trivially; parallel over fixed chunks of [`ELEM_CHUNK`](super::ELEM_CHUNK).
use rayon::prelude::*;

use super::{ELEM_CHUNK, expect_len};
use crate::Result;

pub(crate) fn add(out: &mut [f32], a: &[f32], b: &[f32], len: usize) -> Result<()> {
    expect_len("add_fwd", "out", out.len(), len)?;
    expect_len("add_fwd", "a", a.len(), len)?;
    expect_len("add_fwd", "b", b.len(), len)?;
    out.par_chunks_mut(ELEM_CHUNK)
        .zip(a.par_chunks(ELEM_CHUNK).zip(b.par_chunks(ELEM_CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                *o = a + b;
            }
        });
    Ok(())
}

pub(crate) fn add_inplace(acc: &mut [f32], x: &[f32], len: usize) -> Result<()> {
    expect_len("add_inplace", "acc", acc.len(), len)?;
    expect_len("add_inplace", "x", x.len(), len)?;
    acc.par_chunks_mut(ELEM_CHUNK)
        .zip(x.par_chunks(ELEM_CHUNK))
        .for_each(|(o, x)| {
            for (o, x) in o.iter_mut().zip(x) {
                *o += x;
            }
        });
    Ok(())
}
