//! Causal self-attention with grouped-query heads and a segment mask.
//!
//! Contract (see [`crate::Backend::attention_fwd`]):
//! * `q: [b, t, n_heads, hd]`, `k, v: [b, t, n_kv_heads, hd]`, `out: [b, t, n_heads, hd]`,
//!   `segment_ids: [b·t]`, `lse: [b, n_heads, t]`.
//! * Query `(bi, i)` attends key `(bi, j)` iff `j <= i` and the two segment ids are equal; scores
//!   are `s_ij = q_i·k_j / sqrt(hd)`; query head `h` reads kv head `h / (n_heads / n_kv_heads)`.
//! * forward: `out_i = Σ_j softmax_j(s_ij) v_j`; stores only `lse_i = log Σ_j exp(s_ij)` (a query
//!   always sees itself, so it is finite).
//! * backward (activation gradients: `dq, dk, dv` overwrite), probabilities recomputed as
//!   `p_ij = exp(s_ij − lse_i)`; with `D_i = dout_i · out_i` and `ds_ij = p_ij (dout_i·v_j − D_i)`:
//!   `dq_i = Σ_j ds_ij k_j / sqrt(hd)`, `dk_j = Σ_{h in group} Σ_i ds_ij q_i / sqrt(hd)`,
//!   `dv_j = Σ_{h in group} Σ_i p_ij dout_i`.
//!
//! Implementation: one task per `(batch row, query head)`; inside it, blocks of [`QB`] queries
//! against the keys they can see (from the first key of their segments to the block's last query,
//! so packed rows skip the work across segments and the causal upper triangle is mostly skipped).
//! Each block does its products with single-threaded `gemm` (`S = Q Kᵀ`, `O = P V`; backward
//! `dP = dO Vᵀ`, `dQ = dS K`, `dK += dSᵀ Q`, `dV += Pᵀ dO`) and its masked softmax row by row.
//!
//! Determinism: every task runs the same sequence of blocks whatever the thread count, and the
//! per-head `dk`/`dv` partials of a GQA group are summed afterwards in head order, so the results
//! are bit-identical for any number of threads.
use rayon::prelude::*;

use super::matmul::{Threads, gemm_strided};
use super::{dot, exp, expect_len, mul};
use crate::{AttnShape, Error, Result};

/// Queries per block.
const QB: usize = 64;

struct Dims {
    b: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    group: usize,
    scale: f32,
}

fn check(op: &'static str, s: AttnShape) -> Result<Dims> {
    if s.head_dim == 0
        || s.n_kv_heads == 0
        || s.n_heads == 0
        || !s.n_heads.is_multiple_of(s.n_kv_heads)
    {
        return Err(Error::Shape {
            op,
            detail: format!(
                "need head_dim > 0 and n_heads ({}) a positive multiple of n_kv_heads ({}), head_dim={}",
                s.n_heads, s.n_kv_heads, s.head_dim
            ),
        });
    }
    mul(op, &[s.b, s.t, s.n_heads.max(s.n_kv_heads), s.head_dim])?;
    Ok(Dims {
        b: s.b,
        t: s.t,
        nh: s.n_heads,
        nkv: s.n_kv_heads,
        hd: s.head_dim,
        group: s.n_heads / s.n_kv_heads,
        scale: (1.0 / (s.head_dim as f64).sqrt()) as f32,
    })
}

/// For each position, the first position of its batch row with the same segment id (no key
/// before it can be visible to this query), and per batch row whether every segment is one
/// contiguous run (the usual packing). In a contiguous row, key `j` is visible to query `i` iff
/// `lo[i] <= j <= i`, which lets the softmax loops run over a plain range.
fn first_of_segment(seg: &[u32], b: usize, t: usize) -> (Vec<usize>, Vec<bool>) {
    let mut lo = vec![0usize; b * t];
    let mut contiguous = vec![true; b];
    let mut first = std::collections::HashMap::new();
    for bi in 0..b {
        first.clear();
        for i in 0..t {
            let f = *first.entry(seg[bi * t + i]).or_insert(i);
            lo[bi * t + i] = f;
            // A segment id seen before but not continuing the previous run.
            if f != i && seg[bi * t + i] != seg[bi * t + i - 1] {
                contiguous[bi] = false;
            }
        }
    }
    (lo, contiguous)
}

/// One block of queries `i0..i1` of one `(bi, h)` task and the keys `klo..i1` it may see.
struct Block {
    i0: usize,
    m: usize,
    klo: usize,
    kn: usize,
}

fn blocks(lo: &[usize], t: usize) -> impl Iterator<Item = Block> + '_ {
    (0..t).step_by(QB).map(move |i0| {
        let i1 = (i0 + QB).min(t);
        let klo = lo[i0..i1].iter().copied().min().unwrap_or(i0);
        Block {
            i0,
            m: i1 - i0,
            klo,
            kn: i1 - klo,
        }
    })
}

/// `s[r][c] = q[i0 + r] · k[klo + c]` for the `m` queries and `kn` keys of a block (`s` is
/// `m × kn`, row-major; `qs` and `ks` are the row strides of `q` and `k`). The forward pass and
/// the backward pass (which recomputes the scores rather than storing them) share it.
fn block_scores(
    s: &mut [f32],
    q_h: &[f32],
    k_h: &[f32],
    (i0, m, klo, kn): (usize, usize, usize, usize),
    hd: usize,
    qs: usize,
    ks: usize,
) {
    gemm_strided(
        Threads::One,
        false,
        m,
        kn,
        hd,
        s,
        kn,
        1,
        &q_h[i0 * qs..],
        qs,
        1,
        &k_h[klo * ks..],
        1,
        ks,
    );
}

/// Is key `j` visible to query `i` (both within one batch row)?
#[inline]
fn visible(seg_row: &[u32], i: usize, j: usize) -> bool {
    j <= i && seg_row[j] == seg_row[i]
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seg: &[u32],
    shape: AttnShape,
) -> Result<()> {
    const OP: &str = "attention_fwd";
    let d = check(OP, shape)?;
    let (b, t, nh, nkv, hd) = (d.b, d.t, d.nh, d.nkv, d.hd);
    expect_len(OP, "q", q.len(), b * t * nh * hd)?;
    expect_len(OP, "out", out.len(), b * t * nh * hd)?;
    expect_len(OP, "k", k.len(), b * t * nkv * hd)?;
    expect_len(OP, "v", v.len(), b * t * nkv * hd)?;
    expect_len(OP, "segment_ids", seg.len(), b * t)?;
    expect_len(OP, "lse", lse.len(), b * nh * t)?;
    if out.is_empty() {
        return Ok(());
    }
    let (lo, contiguous) = first_of_segment(seg, b, t);
    let (qs, ks) = (nh * hd, nkv * hd);
    // Per task (bi, h): its output rows [t, hd], scattered into `out` below; lse is already
    // contiguous per task in the [b, nh, t] layout.
    let mut o_heads = vec![0f32; b * nh * t * hd];
    o_heads
        .par_chunks_mut(t * hd)
        .zip(lse.par_chunks_mut(t))
        .enumerate()
        .for_each_init(
            || vec![0f32; QB * t],
            |sbuf, (task, (o_h, lse_h))| {
                let (bi, h) = (task / nh, task % nh);
                let kvh = h / d.group;
                let q_h = &q[bi * t * qs + h * hd..];
                let k_h = &k[bi * t * ks + kvh * hd..];
                let v_h = &v[bi * t * ks + kvh * hd..];
                let seg_row = &seg[bi * t..(bi + 1) * t];
                for Block { i0, m, klo, kn } in blocks(&lo[bi * t..(bi + 1) * t], t) {
                    let s = &mut sbuf[..m * kn];
                    // S = Q_blk · K_keysᵀ
                    block_scores(s, q_h, k_h, (i0, m, klo, kn), hd, qs, ks);
                    for (r, srow) in s.chunks_exact_mut(kn).enumerate() {
                        let i = i0 + r;
                        let mut mx = f32::NEG_INFINITY;
                        let mut sum = 0f32;
                        if contiguous[bi] {
                            // Visible keys are exactly a..z: same operations in the same order
                            // as the masked loop below, so the same bits.
                            let (a, z) = (lo[bi * t + i] - klo, i - klo + 1);
                            for x in &mut srow[a..z] {
                                *x *= d.scale;
                                mx = mx.max(*x);
                            }
                            srow[..a].fill(0.0);
                            srow[z..].fill(0.0);
                            for x in &mut srow[a..z] {
                                *x = exp(*x - mx);
                                sum += *x;
                            }
                        } else {
                            for (jj, x) in srow.iter_mut().enumerate() {
                                if visible(seg_row, i, klo + jj) {
                                    *x *= d.scale;
                                    mx = mx.max(*x);
                                }
                            }
                            for (jj, x) in srow.iter_mut().enumerate() {
                                *x = if visible(seg_row, i, klo + jj) {
                                    exp(*x - mx)
                                } else {
                                    0.0
                                };
                                sum += *x;
                            }
                        }
                        let inv = 1.0 / sum;
                        srow.iter_mut().for_each(|x| *x *= inv);
                        lse_h[i] = mx + sum.ln();
                    }
                    // O_blk = P · V_keys
                    gemm_strided(
                        Threads::One,
                        false,
                        m,
                        hd,
                        kn,
                        &mut o_h[i0 * hd..],
                        hd,
                        1,
                        s,
                        kn,
                        1,
                        &v_h[klo * ks..],
                        ks,
                        1,
                    );
                }
            },
        );
    out.par_chunks_mut(hd).enumerate().for_each(|(r, o)| {
        let (bt, h) = (r / nh, r % nh);
        let (bi, i) = (bt / t, bt % t);
        let src = ((bi * nh + h) * t + i) * hd;
        o.copy_from_slice(&o_heads[src..src + hd]);
    });
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    seg: &[u32],
    shape: AttnShape,
) -> Result<()> {
    const OP: &str = "attention_bwd";
    let d = check(OP, shape)?;
    let (b, t, nh, nkv, hd) = (d.b, d.t, d.nh, d.nkv, d.hd);
    let qn = b * t * nh * hd;
    let kn_all = b * t * nkv * hd;
    for (name, len, want) in [
        ("dq", dq.len(), qn),
        ("dout", dout.len(), qn),
        ("q", q.len(), qn),
        ("out", out.len(), qn),
        ("dk", dk.len(), kn_all),
        ("dv", dv.len(), kn_all),
        ("k", k.len(), kn_all),
        ("v", v.len(), kn_all),
        ("lse", lse.len(), b * nh * t),
        ("segment_ids", seg.len(), b * t),
    ] {
        expect_len(OP, name, len, want)?;
    }
    if qn == 0 {
        return Ok(());
    }
    let (lo, contiguous) = first_of_segment(seg, b, t);
    let (qs, ks) = (nh * hd, nkv * hd);
    // D = dout · out per query row, in [b, t, nh] order.
    let dd: Vec<f32> = dout
        .par_chunks(hd)
        .zip(out.par_chunks(hd))
        .map(|(a, o)| dot(a, o))
        .collect();
    // Per task (bi, h): dq, dk and dv rows [t, hd] each.
    let th = t * hd;
    let mut grads = vec![0f32; b * nh * 3 * th];
    grads.par_chunks_mut(3 * th).enumerate().for_each_init(
        || (vec![0f32; QB * t], vec![0f32; QB * t]),
        |(pbuf, dsbuf), (task, g)| {
            let (bi, h) = (task / nh, task % nh);
            let kvh = h / d.group;
            let (dq_h, rest) = g.split_at_mut(th);
            let (dk_h, dv_h) = rest.split_at_mut(th);
            let q_h = &q[bi * t * qs + h * hd..];
            let do_h = &dout[bi * t * qs + h * hd..];
            let k_h = &k[bi * t * ks + kvh * hd..];
            let v_h = &v[bi * t * ks + kvh * hd..];
            let lse_h = &lse[(bi * nh + h) * t..(bi * nh + h + 1) * t];
            let seg_row = &seg[bi * t..(bi + 1) * t];
            for Block { i0, m, klo, kn } in blocks(&lo[bi * t..(bi + 1) * t], t) {
                let (p, ds) = (&mut pbuf[..m * kn], &mut dsbuf[..m * kn]);
                // S = Q K_keysᵀ → P; dP = dO V_keysᵀ → dS (scaled by 1/sqrt(hd)).
                block_scores(p, q_h, k_h, (i0, m, klo, kn), hd, qs, ks);
                gemm_strided(
                    Threads::One,
                    false,
                    m,
                    kn,
                    hd,
                    ds,
                    kn,
                    1,
                    &do_h[i0 * qs..],
                    qs,
                    1,
                    &v_h[klo * ks..],
                    1,
                    ks,
                );
                for (r, (prow, dsrow)) in p
                    .chunks_exact_mut(kn)
                    .zip(ds.chunks_exact_mut(kn))
                    .enumerate()
                {
                    let i = i0 + r;
                    let (l, di) = (lse_h[i], dd[(bi * t + i) * nh + h]);
                    if contiguous[bi] {
                        let (a, z) = (lo[bi * t + i] - klo, i - klo + 1);
                        for (pv, dsv) in prow[a..z].iter_mut().zip(dsrow[a..z].iter_mut()) {
                            *pv = exp(*pv * d.scale - l);
                            *dsv = *pv * (*dsv - di) * d.scale;
                        }
                        prow[..a].fill(0.0);
                        prow[z..].fill(0.0);
                        dsrow[..a].fill(0.0);
                        dsrow[z..].fill(0.0);
                    } else {
                        for (jj, (pv, dsv)) in prow.iter_mut().zip(dsrow.iter_mut()).enumerate() {
                            if visible(seg_row, i, klo + jj) {
                                *pv = exp(*pv * d.scale - l);
                                *dsv = *pv * (*dsv - di) * d.scale;
                            } else {
                                *pv = 0.0;
                                *dsv = 0.0;
                            }
                        }
                    }
                }
                // dQ_blk = dS · K_keys; dK_keys += dSᵀ · Q_blk; dV_keys += Pᵀ · dO_blk.
                gemm_strided(
                    Threads::One,
                    false,
                    m,
                    hd,
                    kn,
                    &mut dq_h[i0 * hd..],
                    hd,
                    1,
                    ds,
                    kn,
                    1,
                    &k_h[klo * ks..],
                    ks,
                    1,
                );
                gemm_strided(
                    Threads::One,
                    true,
                    kn,
                    hd,
                    m,
                    &mut dk_h[klo * hd..],
                    hd,
                    1,
                    ds,
                    1,
                    kn,
                    &q_h[i0 * qs..],
                    qs,
                    1,
                );
                gemm_strided(
                    Threads::One,
                    true,
                    kn,
                    hd,
                    m,
                    &mut dv_h[klo * hd..],
                    hd,
                    1,
                    p,
                    1,
                    kn,
                    &do_h[i0 * qs..],
                    qs,
                    1,
                );
            }
        },
    );
    let task_rows = |bi: usize, h: usize, which: usize, i: usize| {
        let base = (bi * nh + h) * 3 * th + which * th + i * hd;
        &grads[base..base + hd]
    };
    dq.par_chunks_mut(hd).enumerate().for_each(|(r, o)| {
        let (bt, h) = (r / nh, r % nh);
        o.copy_from_slice(task_rows(bt / t, h, 0, bt % t));
    });
    dk.par_chunks_mut(hd)
        .zip(dv.par_chunks_mut(hd))
        .enumerate()
        .for_each(|(r, (dko, dvo))| {
            let (bt, kvh) = (r / nkv, r % nkv);
            let (bi, j) = (bt / t, bt % t);
            dko.copy_from_slice(task_rows(bi, kvh * d.group, 1, j));
            dvo.copy_from_slice(task_rows(bi, kvh * d.group, 2, j));
            for h in kvh * d.group + 1..(kvh + 1) * d.group {
                for (o, x) in dko.iter_mut().zip(task_rows(bi, h, 1, j)) {
                    *o += x;
                }
                for (o, x) in dvo.iter_mut().zip(task_rows(bi, h, 2, j)) {
                    *o += x;
                }
            }
        });
    Ok(())
}
