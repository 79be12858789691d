use koala_kernels::{AttnShape, Backend, Error};

use crate::common::*;

/// Naive f64 attention with the contract's mask: returns `(out [b,t,nh,hd], lse [b,nh,t])`.
fn reference(q: &[f32], k: &[f32], v: &[f32], seg: &[u32], s: AttnShape) -> (Vec<f64>, Vec<f64>) {
    let AttnShape {
        b,
        t,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
    } = s;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0f64; b * t * nh * hd];
    let mut lse = vec![0f64; b * nh * t];
    for bi in 0..b {
        for h in 0..nh {
            let kvh = h / (nh / nkv);
            for i in 0..t {
                let qi = &q[((bi * t + i) * nh + h) * hd..][..hd];
                let keys: Vec<usize> = (0..=i)
                    .filter(|&j| seg[bi * t + j] == seg[bi * t + i])
                    .collect();
                let scores: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        let kj = &k[((bi * t + j) * nkv + kvh) * hd..][..hd];
                        qi.iter()
                            .zip(kj)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                lse[(bi * nh + h) * t + i] = m + z.ln();
                for (&j, s) in keys.iter().zip(&scores) {
                    let p = (s - m).exp() / z;
                    let vj = &v[((bi * t + j) * nkv + kvh) * hd..][..hd];
                    for d in 0..hd {
                        out[((bi * t + i) * nh + h) * hd + d] += p * vj[d] as f64;
                    }
                }
            }
        }
    }
    (out, lse)
}

fn run_fwd<B: Backend>(
    be: &B,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seg: &B::Ids,
    s: AttnShape,
) -> (Vec<f32>, Vec<f32>) {
    let mut out = be.zeros(s.b * s.t * s.n_heads * s.head_dim).unwrap();
    let mut lse = be.zeros(s.b * s.n_heads * s.t).unwrap();
    be.attention_fwd(
        &mut out,
        &mut lse,
        &up(be, q),
        &up(be, k),
        &up(be, v),
        seg,
        s,
    )
    .unwrap();
    (down(be, &out), down(be, &lse))
}

pub fn literal<B: Backend>(be: &B) {
    // t = 3, hd = 1 (scale 1), 2 query heads sharing 1 kv head. k = 0 → all visible scores are 0,
    // so each output is the mean of the visible values. Segments [0, 0, 1]: query 2 sees only key 2.
    let s = AttnShape {
        b: 1,
        t: 3,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 1,
    };
    let q = [1.0, -1.0, 2.0, 3.0, 0.5, 0.5];
    let k = [0.0, 0.0, 0.0];
    let v = [2.0, 4.0, 8.0];
    let seg = be.upload_ids(&[0, 0, 1]).unwrap();
    let (out, lse) = run_fwd(be, &q, &k, &v, &seg, s);
    check_close(
        "attn out",
        &out,
        &[2.0, 2.0, 3.0, 3.0, 8.0, 8.0],
        1e-6,
        1e-6,
    );
    let ln2 = 2f32.ln();
    check_close(
        "attn lse",
        &lse,
        &[0.0, ln2, 0.0, 0.0, ln2, 0.0],
        1e-6,
        1e-6,
    );

    // One segment, k = [0, ln 3]·(1/q), so query 1 (q = 1) weighs key 1 three times as much as key 0.
    let s1 = AttnShape {
        b: 1,
        t: 2,
        n_heads: 1,
        n_kv_heads: 1,
        head_dim: 1,
    };
    let seg1 = be.upload_ids(&[7, 7]).unwrap();
    let (out, lse) = run_fwd(be, &[5.0, 1.0], &[0.0, 3f32.ln()], &[4.0, 8.0], &seg1, s1);
    check_close(
        "attn out weighted",
        &out,
        &[4.0, 0.25 * 4.0 + 0.75 * 8.0],
        1e-6,
        1e-6,
    );
    check_close("attn lse weighted", &lse, &[0.0, 4f32.ln()], 1e-6, 1e-6);
}

fn case(seed: u64, s: AttnShape, seg: &[u32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut r = rng(seed);
    let q = uniform(&mut r, s.b * s.t * s.n_heads * s.head_dim, 1.5);
    let k = uniform(&mut r, s.b * s.t * s.n_kv_heads * s.head_dim, 1.5);
    let v = uniform(&mut r, s.b * s.t * s.n_kv_heads * s.head_dim, 1.0);
    assert_eq!(seg.len(), s.b * s.t);
    (q, k, v)
}

/// Packed rows with GQA against the f64 reference.
pub fn forward_vs_reference<B: Backend>(be: &B) {
    let s = AttnShape {
        b: 2,
        t: 9,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
    };
    let seg_h = [0, 0, 0, 1, 1, 1, 1, 2, 2, 5, 5, 5, 5, 5, 5, 5, 5, 5];
    let (q, k, v) = case(12, s, &seg_h);
    let (out, lse) = run_fwd(be, &q, &k, &v, &be.upload_ids(&seg_h).unwrap(), s);
    let (want_out, want_lse) = reference(&q, &k, &v, &seg_h, s);
    check_close64("attn out vs f64", &out, &want_out, 1e-5, 1e-5);
    check_close64("attn lse vs f64", &lse, &want_lse, 1e-5, 1e-5);
}

/// Rows longer than one block of queries (64), with segments that straddle block edges.
pub fn multi_block<B: Backend>(be: &B) {
    let s = AttnShape {
        b: 2,
        t: 150,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 4,
    };
    let seg_h: Vec<u32> = (0..300)
        .map(|i| if i < 150 { (i / 70) as u32 } else { 9 })
        .collect();
    let (q, k, v) = case(16, s, &seg_h);
    let seg = be.upload_ids(&seg_h).unwrap();
    let (out, lse) = run_fwd(be, &q, &k, &v, &seg, s);
    let (want_out, want_lse) = reference(&q, &k, &v, &seg_h, s);
    check_close64("attn multi-block out", &out, &want_out, 1e-5, 1e-5);
    check_close64("attn multi-block lse", &lse, &want_lse, 1e-5, 1e-5);
    let mut r = rng(17);
    let proj = uniform(&mut r, q.len(), 1.0);
    let (mut dq, mut dk, mut dv) = (
        be.zeros(q.len()).unwrap(),
        be.zeros(k.len()).unwrap(),
        be.zeros(v.len()).unwrap(),
    );
    let (qb, kb, vb) = (up(be, &q), up(be, &k), up(be, &v));
    be.attention_bwd(
        &mut dq,
        &mut dk,
        &mut dv,
        &up(be, &proj),
        &qb,
        &kb,
        &vb,
        &up(be, &out),
        &up(be, &lse),
        &seg,
        s,
    )
    .unwrap();
    let loss = |q: &[f32], k: &[f32], v: &[f32]| project(&run_fwd(be, q, k, v, &seg, s).0, &proj);
    // Every 37th element: enough to cover each block and segment, cheap in a debug build.
    check_grad(
        "attn multi-block dq",
        &down(be, &dq),
        &q,
        1e-2,
        2e-3,
        37,
        |x| loss(x, &k, &v),
    );
    check_grad(
        "attn multi-block dk",
        &down(be, &dk),
        &k,
        1e-2,
        2e-3,
        37,
        |x| loss(&q, x, &v),
    );
    check_grad(
        "attn multi-block dv",
        &down(be, &dv),
        &v,
        1e-2,
        2e-3,
        37,
        |x| loss(&q, &k, x),
    );
}

/// Segment ids that recur after another segment (not one contiguous run each) still follow the
/// contract: a query sees every earlier key with its id. Also: the contiguous fast path gives the
/// same bits as the general masked path for queries whose visible keys agree.
pub fn non_contiguous_segments<B: Backend>(be: &B) {
    let s = AttnShape {
        b: 1,
        t: 8,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 4,
    };
    let seg_h = [0, 0, 1, 1, 0, 0, 2, 1];
    let (q, k, v) = case(19, s, &seg_h);
    let seg = be.upload_ids(&seg_h).unwrap();
    let (out, lse) = run_fwd(be, &q, &k, &v, &seg, s);
    let (want_out, want_lse) = reference(&q, &k, &v, &seg_h, s);
    check_close64("attn non-contiguous out", &out, &want_out, 1e-5, 1e-5);
    check_close64("attn non-contiguous lse", &lse, &want_lse, 1e-5, 1e-5);
    let mut r = rng(20);
    let proj = uniform(&mut r, q.len(), 1.0);
    let (mut dq, mut dk, mut dv) = (
        be.zeros(q.len()).unwrap(),
        be.zeros(k.len()).unwrap(),
        be.zeros(v.len()).unwrap(),
    );
    let (qb, kb, vb) = (up(be, &q), up(be, &k), up(be, &v));
    be.attention_bwd(
        &mut dq,
        &mut dk,
        &mut dv,
        &up(be, &proj),
        &qb,
        &kb,
        &vb,
        &up(be, &out),
        &up(be, &lse),
        &seg,
        s,
    )
    .unwrap();
    let loss = |q: &[f32], k: &[f32], v: &[f32]| project(&run_fwd(be, q, k, v, &seg, s).0, &proj);
    check_grad(
        "attn non-contiguous dq",
        &down(be, &dq),
        &q,
        1e-2,
        2e-3,
        1,
        |x| loss(x, &k, &v),
    );
    check_grad(
        "attn non-contiguous dk",
        &down(be, &dk),
        &k,
        1e-2,
        2e-3,
        1,
        |x| loss(&q, x, &v),
    );
    check_grad(
        "attn non-contiguous dv",
        &down(be, &dv),
        &v,
        1e-2,
        2e-3,
        1,
        |x| loss(&q, &k, x),
    );

    // [0 0 0 1 1 2] is contiguous (fast path), [0 0 0 1 1 0] is not (masked path); queries 0..5
    // see the same keys in both.
    let s6 = AttnShape { t: 6, ..s };
    let (q, k, v) = case(21, s6, &[0; 6]);
    let (fast, _) = run_fwd(
        be,
        &q,
        &k,
        &v,
        &be.upload_ids(&[0, 0, 0, 1, 1, 2]).unwrap(),
        s6,
    );
    let (masked, _) = run_fwd(
        be,
        &q,
        &k,
        &v,
        &be.upload_ids(&[0, 0, 0, 1, 1, 0]).unwrap(),
        s6,
    );
    let rows = 5 * s.n_heads * s.head_dim;
    assert!(
        fast[..rows]
            .iter()
            .zip(&masked[..rows])
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

/// A packed row equals its segments run alone (what packing relies on).
pub fn packed_equals_separate<B: Backend>(be: &B) {
    let s = AttnShape {
        b: 1,
        t: 7,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 4,
    };
    let seg_h = [3, 3, 3, 3, 9, 9, 9];
    let (q, k, v) = case(13, s, &seg_h);
    let (out, _) = run_fwd(be, &q, &k, &v, &be.upload_ids(&seg_h).unwrap(), s);
    let (qw, kw) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
    let mut start = 0;
    for len in [4usize, 3] {
        let sub = AttnShape { t: len, ..s };
        let seg = be.upload_ids(&vec![0; len]).unwrap();
        let (o, _) = run_fwd(
            be,
            &q[start * qw..(start + len) * qw],
            &k[start * kw..(start + len) * kw],
            &v[start * kw..(start + len) * kw],
            &seg,
            sub,
        );
        check_close(
            "packed vs alone",
            &out[start * qw..(start + len) * qw],
            &o,
            1e-6,
            1e-6,
        );
        start += len;
    }
}

pub fn grad<B: Backend>(be: &B) {
    let s = AttnShape {
        b: 2,
        t: 5,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 4,
    };
    let seg_h = [0, 0, 1, 1, 1, 4, 4, 4, 4, 4];
    let (q, k, v) = case(14, s, &seg_h);
    let seg = be.upload_ids(&seg_h).unwrap();
    let mut r = rng(15);
    let proj = uniform(&mut r, q.len(), 1.0);
    let (out, lse) = run_fwd(be, &q, &k, &v, &seg, s);
    let mut dq = up(be, &vec![f32::NAN; q.len()]); // overwritten
    let mut dk = up(be, &vec![f32::NAN; k.len()]);
    let mut dv = up(be, &vec![f32::NAN; v.len()]);
    be.attention_bwd(
        &mut dq,
        &mut dk,
        &mut dv,
        &up(be, &proj),
        &up(be, &q),
        &up(be, &k),
        &up(be, &v),
        &up(be, &out),
        &up(be, &lse),
        &seg,
        s,
    )
    .unwrap();
    let loss = |q: &[f32], k: &[f32], v: &[f32]| project(&run_fwd(be, q, k, v, &seg, s).0, &proj);
    check_grad("attn dq", &down(be, &dq), &q, 1e-2, 2e-3, 1, |x| {
        loss(x, &k, &v)
    });
    check_grad("attn dk", &down(be, &dk), &k, 1e-2, 2e-3, 1, |x| {
        loss(&q, x, &v)
    });
    check_grad("attn dv", &down(be, &dv), &v, 1e-2, 2e-3, 1, |x| {
        loss(&q, &k, x)
    });
}

pub fn errors<B: Backend>(be: &B) {
    let s = AttnShape {
        b: 1,
        t: 2,
        n_heads: 3,
        n_kv_heads: 2,
        head_dim: 2,
    };
    let mut out = be.zeros(12).unwrap();
    let mut lse = be.zeros(6).unwrap();
    let seg = be.upload_ids(&[0, 0]).unwrap();
    let e = be
        .attention_fwd(
            &mut out,
            &mut lse,
            &up(be, &[0.0; 12]),
            &up(be, &[0.0; 8]),
            &up(be, &[0.0; 8]),
            &seg,
            s,
        )
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let s = AttnShape { n_kv_heads: 3, ..s };
    let short = be.upload_ids(&[0]).unwrap();
    let e = be
        .attention_fwd(
            &mut out,
            &mut lse,
            &up(be, &[0.0; 12]),
            &up(be, &[0.0; 12]),
            &up(be, &[0.0; 12]),
            &short,
            s,
        )
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

crate::cpu_tests!(
    literal,
    forward_vs_reference,
    multi_block,
    non_contiguous_segments,
    packed_equals_separate,
    grad,
    errors
);
