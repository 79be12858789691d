//! Bit-identical outputs for 1, 2 and 3 rayon threads, op by op, at sizes large enough to be split
//! into several parallel tasks (and, for matmul, above gemm's threading threshold).
use koala_kernels::{AdamWParams, AttnShape, Backend, CpuBackend};

use crate::common::*;

const ELEMS: usize = 70_001; // > 4 chunks of 16384, ragged tail

#[test]
fn matmul() {
    let (n, ic, oc) = (193, 257, 161);
    let mut r = rng(20);
    let inp = uniform(&mut r, n * ic, 1.0);
    let w = uniform(&mut r, oc * ic, 1.0);
    let dout = uniform(&mut r, n * oc, 1.0);
    assert_deterministic("matmul", || {
        let be = CpuBackend::new();
        let mut out = vec![0.0; n * oc];
        be.matmul_fwd(&mut out, &inp, &w, n, ic, oc).unwrap();
        let mut dinp = vec![0.0; n * ic];
        let mut dw = vec![0.5; oc * ic];
        be.matmul_bwd(&mut dinp, &mut dw, &dout, &inp, &w, n, ic, oc)
            .unwrap();
        vec![out, dinp, dw]
    });
    // A backend with its own pool gives the same bits as well.
    let run = |be: &CpuBackend| {
        let mut out = vec![0.0; n * oc];
        be.matmul_fwd(&mut out, &inp, &w, n, ic, oc).unwrap();
        out
    };
    let one = run(&CpuBackend::with_threads(1).unwrap());
    let three = CpuBackend::with_threads(3).unwrap();
    assert_eq!(three.threads(), 3);
    assert!(
        one.iter()
            .zip(run(&three))
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

#[test]
fn embedding_rmsnorm() {
    let (n, c, vocab) = (300, 96, 50);
    let mut r = rng(21);
    let table = uniform(&mut r, vocab * c, 1.0);
    let ids_h = ids(&mut r, n, vocab as u32);
    let x = uniform(&mut r, n * c, 1.0);
    let w = uniform(&mut r, c, 1.0);
    let dout = uniform(&mut r, n * c, 1.0);
    assert_deterministic("embedding+rmsnorm", || {
        let be = CpuBackend::new();
        let mut emb = vec![0.0; n * c];
        be.embedding_fwd(&mut emb, &ids_h, &table, n, c).unwrap();
        let mut dtable = vec![0.25; vocab * c];
        be.embedding_bwd(&mut dtable, &dout, &ids_h, n, c).unwrap();
        let (mut out, mut rstd) = (vec![0.0; n * c], vec![0.0; n]);
        be.rmsnorm_fwd(&mut out, &mut rstd, &x, &w, n, c, 1e-6)
            .unwrap();
        let (mut dx, mut dw) = (vec![0.0; n * c], vec![0.0; c]);
        be.rmsnorm_bwd(&mut dx, &mut dw, &dout, &x, &w, &rstd, n, c)
            .unwrap();
        vec![emb, dtable, out, rstd, dx, dw]
    });
}

#[test]
fn attention_rope() {
    let s = AttnShape {
        b: 2,
        t: 48,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
    };
    let mut r = rng(22);
    let q = uniform(&mut r, s.b * s.t * s.n_heads * s.head_dim, 1.0);
    let k = uniform(&mut r, s.b * s.t * s.n_kv_heads * s.head_dim, 1.0);
    let v = uniform(&mut r, k.len(), 1.0);
    let dout = uniform(&mut r, q.len(), 1.0);
    let seg: Vec<u32> = (0..s.b * s.t).map(|i| (i / 70) as u32).collect();
    let pos: Vec<u32> = (0..s.b * s.t).map(|i| (i % 70) as u32).collect();
    assert_deterministic("attention+rope", || {
        let be = CpuBackend::new();
        let mut qr = q.clone();
        be.rope_fwd(&mut qr, &pos, s.b * s.t, s.n_heads, s.head_dim, 10000.0)
            .unwrap();
        let (mut out, mut lse) = (vec![0.0; q.len()], vec![0.0; s.b * s.n_heads * s.t]);
        be.attention_fwd(&mut out, &mut lse, &qr, &k, &v, &seg, s)
            .unwrap();
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        be.attention_bwd(
            &mut dq, &mut dk, &mut dv, &dout, &qr, &k, &v, &out, &lse, &seg, s,
        )
        .unwrap();
        be.rope_bwd(&mut dq, &pos, s.b * s.t, s.n_heads, s.head_dim, 10000.0)
            .unwrap();
        vec![qr, out, lse, dq, dk, dv]
    });
}

#[test]
fn elementwise_loss_optimizer() {
    let mut r = rng(23);
    let a = uniform(&mut r, ELEMS, 3.0);
    let b = uniform(&mut r, ELEMS, 3.0);
    let (n, v) = (24, 3001);
    let logits = uniform(&mut r, n * v, 5.0);
    let targets = ids(&mut r, n, v as u32);
    let weights = uniform(&mut r, n, 1.0);
    assert_deterministic("elementwise+ce+adamw+norm", || {
        let be = CpuBackend::new();
        let mut out = vec![0.0; ELEMS];
        be.swiglu_fwd(&mut out, &a, &b, ELEMS).unwrap();
        let (mut dg, mut du) = (vec![0.0; ELEMS], vec![0.0; ELEMS]);
        be.swiglu_bwd(&mut dg, &mut du, &b, &a, &b, ELEMS).unwrap();
        let mut sum = vec![0.0; ELEMS];
        be.add_fwd(&mut sum, &a, &b, ELEMS).unwrap();
        be.add_inplace(&mut sum, &out, ELEMS).unwrap();
        let mut l = logits.clone();
        let mut losses = vec![0.0; n];
        be.cross_entropy_fwd_bwd(&mut l, &mut losses, &targets, &weights, n, v)
            .unwrap();
        let (mut p, mut m, mut vv) = (a.clone(), vec![0.0; ELEMS], vec![0.0; ELEMS]);
        let hp = AdamWParams {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            step: 3,
            grad_scale: 0.5,
        };
        be.adamw_step(&mut p, &b, &mut m, &mut vv, &hp).unwrap();
        let ss = be.sum_squares(&a).unwrap();
        be.scale(&mut sum, 0.3).unwrap();
        vec![
            out,
            dg,
            du,
            sum,
            l,
            losses,
            p,
            m,
            vv,
            vec![ss as f32, (ss - ss as f32 as f64) as f32],
        ]
    });
}

/// Above 2^20 elements the embedding runs in parallel (counting sort by id); its bits must equal
/// the sequential token-order loop used for small batches.
#[test]
fn embedding_parallel_path() {
    let (n, c, vocab) = (3500, 300, 97);
    let mut r = rng(24);
    let table = uniform(&mut r, vocab * c, 1.0);
    let ids_h = ids(&mut r, n, vocab as u32);
    let dout = uniform(&mut r, n * c, 1.0);
    let mut want = vec![0.5f32; vocab * c];
    for (i, &id) in ids_h.iter().enumerate() {
        for j in 0..c {
            want[id as usize * c + j] += dout[i * c + j];
        }
    }
    assert_deterministic("embedding parallel path", || {
        let be = CpuBackend::new();
        let mut out = vec![0.0; n * c];
        be.embedding_fwd(&mut out, &ids_h, &table, n, c).unwrap();
        let mut dtable = vec![0.5; vocab * c];
        be.embedding_bwd(&mut dtable, &dout, &ids_h, n, c).unwrap();
        assert!(
            dtable
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        assert_eq!(
            &out[c..2 * c],
            &table[ids_h[1] as usize * c..(ids_h[1] as usize + 1) * c]
        );
        vec![out, dtable]
    });
}
