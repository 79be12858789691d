//! Causal self-attention with grouped-query heads and a segment mask.
//!
//! Contract (see [`crate::Backend::attention_fwd`]):
//! * `q: [b, t, n_heads, hd]`, `k, v: [b, t, n_kv_heads, hd]`, `out: [b, t, n_heads, hd]`,
//!   `segment_ids: [b·t]`, `lse: [b, n_heads, t]`.
//! * Query `(bi, i)` attends key `(bi, j)` iff `j <= i` and the two segment ids are equal; scores
//!   are `q·k / sqrt(hd)`; query head `h` reads kv head `h / (n_heads / n_kv_heads)`.
//! * forward: `out_i = Σ_j softmax_j(s_ij) v_j`; stores only `lse_i = log Σ_j exp(s_ij)` (a query
//!   always sees itself, so it is finite).
//! * backward (activation gradients: `dq, dk, dv` overwrite), probabilities recomputed as
//!   `p_ij = exp(s_ij − lse_i)`; with `D_i = dout_i · out_i` and `ds_ij = p_ij (dout_i·v_j − D_i)`:
//!   `dq_i = Σ_j ds_ij k_j / sqrt(hd)`, `dk_j = Σ_{h in group} Σ_i ds_ij q_i / sqrt(hd)`,
//!   `dv_j = Σ_{h in group} Σ_i p_ij dout_i`.
//!
//! Determinism: the forward and `dq` are parallel over query rows `(bi, i, h)`, `dk`/`dv` over key
//! rows `(bi, j, kv_head)`; each output row is computed by one task summing in a fixed order
//! (keys ascending; heads of the group ascending, then queries ascending). The backward recomputes
//! scores in both passes rather than sharing per-thread partial sums: twice the score FLOPs, but
//! no reduction whose order could depend on scheduling.
use rayon::prelude::*;

use super::{axpy, dot, expect_len, mul};
use crate::{AttnShape, Error, Result};

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
    // lse in query-row order [b, t, nh] first, transposed to [b, nh, t] below.
    let mut lse_rows = vec![0f32; b * t * nh];
    out.par_chunks_mut(hd)
        .zip(lse_rows.par_iter_mut())
        .enumerate()
        .for_each_init(
            || vec![0f32; t],
            |p, (r, (o, l))| {
                let h = r % nh;
                let bt = r / nh; // bi * t + i
                let (bi, i) = (bt / t, bt % t);
                let kvh = h / d.group;
                let qr = &q[r * hd..(r + 1) * hd];
                let my_seg = seg[bt];
                let row0 = bi * t;
                let mut m = f32::NEG_INFINITY;
                for j in 0..=i {
                    if seg[row0 + j] == my_seg {
                        let kr = ((row0 + j) * nkv + kvh) * hd;
                        let s = dot(qr, &k[kr..kr + hd]) * d.scale;
                        p[j] = s;
                        m = m.max(s);
                    }
                }
                let mut sum = 0f32;
                o.fill(0.0);
                for j in 0..=i {
                    if seg[row0 + j] == my_seg {
                        let e = (p[j] - m).exp();
                        sum += e;
                        let vr = ((row0 + j) * nkv + kvh) * hd;
                        axpy(o, e, &v[vr..vr + hd]);
                    }
                }
                let inv = 1.0 / sum;
                o.iter_mut().for_each(|x| *x *= inv);
                *l = m + sum.ln();
            },
        );
    for bi in 0..b {
        for h in 0..nh {
            for i in 0..t {
                lse[(bi * nh + h) * t + i] = lse_rows[(bi * t + i) * nh + h];
            }
        }
    }
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
    let kn = b * t * nkv * hd;
    for (name, len, want) in [
        ("dq", dq.len(), qn),
        ("dout", dout.len(), qn),
        ("q", q.len(), qn),
        ("out", out.len(), qn),
        ("dk", dk.len(), kn),
        ("dv", dv.len(), kn),
        ("k", k.len(), kn),
        ("v", v.len(), kn),
        ("lse", lse.len(), b * nh * t),
        ("segment_ids", seg.len(), b * t),
    ] {
        expect_len(OP, name, len, want)?;
    }
    if qn == 0 {
        return Ok(());
    }
    // D_r = dout_r · out_r per query row [b, t, nh].
    let dd: Vec<f32> = dout
        .par_chunks(hd)
        .zip(out.par_chunks(hd))
        .map(|(a, o)| dot(a, o))
        .collect();

    // dq, parallel over query rows.
    dq.par_chunks_mut(hd).enumerate().for_each(|(r, dqr)| {
        let h = r % nh;
        let bt = r / nh;
        let (bi, i) = (bt / t, bt % t);
        let kvh = h / d.group;
        let qr = &q[r * hd..(r + 1) * hd];
        let gr = &dout[r * hd..(r + 1) * hd];
        let l = lse[(bi * nh + h) * t + i];
        let my_seg = seg[bt];
        let row0 = bi * t;
        dqr.fill(0.0);
        for j in 0..=i {
            if seg[row0 + j] == my_seg {
                let kr = ((row0 + j) * nkv + kvh) * hd;
                let kj = &k[kr..kr + hd];
                let p = (dot(qr, kj) * d.scale - l).exp();
                let ds = p * (dot(gr, &v[kr..kr + hd]) - dd[r]);
                axpy(dqr, ds, kj);
            }
        }
        dqr.iter_mut().for_each(|x| *x *= d.scale);
    });

    // dk and dv, parallel over key rows.
    dk.par_chunks_mut(hd)
        .zip(dv.par_chunks_mut(hd))
        .enumerate()
        .for_each(|(kr_idx, (dkr, dvr))| {
            let kvh = kr_idx % nkv;
            let bt = kr_idx / nkv;
            let (bi, j) = (bt / t, bt % t);
            let kj = &k[kr_idx * hd..(kr_idx + 1) * hd];
            let vj = &v[kr_idx * hd..(kr_idx + 1) * hd];
            let key_seg = seg[bt];
            let row0 = bi * t;
            dkr.fill(0.0);
            dvr.fill(0.0);
            for h in kvh * d.group..(kvh + 1) * d.group {
                for i in j..t {
                    if seg[row0 + i] != key_seg {
                        continue;
                    }
                    let r = (row0 + i) * nh + h;
                    let qr = &q[r * hd..(r + 1) * hd];
                    let gr = &dout[r * hd..(r + 1) * hd];
                    let p = (dot(qr, kj) * d.scale - lse[(bi * nh + h) * t + i]).exp();
                    axpy(dvr, p, gr);
                    let ds = p * (dot(gr, vj) - dd[r]);
                    axpy(dkr, ds, qr);
                }
            }
            dkr.iter_mut().for_each(|x| *x *= d.scale);
        });
    Ok(())
}
