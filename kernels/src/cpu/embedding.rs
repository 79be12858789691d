//! Token embedding.
//!
//! Contract (see [`crate::Backend::embedding_fwd`]):
//! * forward: `out[i, :] = table[ids[i], :]`; `out: [n, c]`, `ids: [n]`, `table: [vocab, c]`;
//!   an id `>= vocab` is an [`Error::Index`](crate::Error::Index), checked before anything is written.
//! * backward: `dtable[ids[i], :] += dout[i, :]` (weight gradient: accumulates), summed in token
//!   order. Small batches (under 2^20 elements) run one sequential loop in token order; larger ones
//!   run parallel over vocab rows: a counting sort groups the tokens of each id (stably, so in token
//!   order) and each row is owned by one task. Both add each row's tokens in token order, so the
//!   bits are the same either way and never depend on the thread count.
use rayon::prelude::*;

use super::{check_ids, expect_len, mul};
use crate::{Error, Result};

const OP_F: &str = "embedding_fwd";
const OP_B: &str = "embedding_bwd";

/// Below this many elements (`n·c`) the ops run on the calling thread: a copy or add of a few MB
/// is faster than waking the pool.
const SEQUENTIAL_BELOW: usize = 1 << 20;

fn vocab_of(op: &'static str, table_len: usize, c: usize) -> Result<usize> {
    if c == 0 || !table_len.is_multiple_of(c) {
        return Err(Error::Shape {
            op,
            detail: format!("table has {table_len} elements, not a multiple of c={c}"),
        });
    }
    Ok(table_len / c)
}

pub(crate) fn forward(
    out: &mut [f32],
    ids: &[u32],
    table: &[f32],
    n: usize,
    c: usize,
) -> Result<()> {
    expect_len(OP_F, "ids", ids.len(), n)?;
    expect_len(OP_F, "out", out.len(), mul(OP_F, &[n, c])?)?;
    let vocab = vocab_of(OP_F, table.len(), c)?;
    check_ids(OP_F, ids, vocab)?;
    out.par_chunks_mut(c)
        .zip(ids.par_iter())
        .with_min_len(16)
        .for_each(|(row, &id)| {
            let id = id as usize;
            row.copy_from_slice(&table[id * c..(id + 1) * c]);
        });
    Ok(())
}

pub(crate) fn backward(
    dtable: &mut [f32],
    dout: &[f32],
    ids: &[u32],
    n: usize,
    c: usize,
) -> Result<()> {
    expect_len(OP_B, "ids", ids.len(), n)?;
    expect_len(OP_B, "dout", dout.len(), mul(OP_B, &[n, c])?)?;
    let vocab = vocab_of(OP_B, dtable.len(), c)?;
    check_ids(OP_B, ids, vocab)?;
    if n * c < SEQUENTIAL_BELOW {
        for (&id, g) in ids.iter().zip(dout.chunks_exact(c)) {
            let id = id as usize;
            for (d, s) in dtable[id * c..(id + 1) * c].iter_mut().zip(g) {
                *d += *s;
            }
        }
        return Ok(());
    }
    // Counting sort of token indices by id: tokens of id `v` are order[start[v]..start[v+1]], in
    // token order.
    let mut start = vec![0usize; vocab + 1];
    for &id in ids {
        start[id as usize + 1] += 1;
    }
    for v in 0..vocab {
        start[v + 1] += start[v];
    }
    let mut fill = start.clone();
    let mut order = vec![0usize; n];
    for (i, &id) in ids.iter().enumerate() {
        order[fill[id as usize]] = i;
        fill[id as usize] += 1;
    }
    dtable
        .par_chunks_mut(c)
        .enumerate()
        .with_min_len(64)
        .for_each(|(v, row)| {
            for &i in &order[start[v]..start[v + 1]] {
                for (d, s) in row.iter_mut().zip(&dout[i * c..(i + 1) * c]) {
                    *d += *s;
                }
            }
        });
    Ok(())
}
