//! Every op against PyTorch / Hugging Face `transformers`, from the fixture recorded by
//! `scripts/kernels_fixtures.py` (kernels/tests/fixtures/torch_ops.json; no Python needed here).
use koala_kernels::{AdamWParams, AttnShape, Backend};
use serde_json::Value;

use crate::common::*;

fn fixture(op: &str) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/torch_ops.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut all: Value = serde_json::from_str(&text).unwrap();
    all[op].take()
}

fn f(v: &Value, key: &str) -> Vec<f32> {
    let arr = v[key]
        .as_array()
        .unwrap_or_else(|| panic!("fixture field {key}"));
    arr.iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn u(v: &Value, key: &str) -> Vec<u32> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn z(v: &Value, key: &str) -> usize {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("fixture field {key}")) as usize
}

fn num(v: &Value, key: &str) -> f32 {
    v[key].as_f64().unwrap() as f32
}

const ATOL: f64 = 1e-5;
const RTOL: f64 = 1e-5;

pub fn rmsnorm<B: Backend>(be: &B) {
    let fx = fixture("rmsnorm");
    let (n, c) = (z(&fx, "n"), z(&fx, "c"));
    let (x, w) = (up(be, &f(&fx, "x")), up(be, &f(&fx, "w")));
    let (mut out, mut rstd) = (be.zeros(n * c).unwrap(), be.zeros(n).unwrap());
    be.rmsnorm_fwd(&mut out, &mut rstd, &x, &w, n, c, num(&fx, "eps"))
        .unwrap();
    check_close(
        "torch rmsnorm out",
        &down(be, &out),
        &f(&fx, "out"),
        ATOL,
        RTOL,
    );
    let (mut dx, mut dw) = (be.zeros(n * c).unwrap(), be.zeros(c).unwrap());
    be.rmsnorm_bwd(
        &mut dx,
        &mut dw,
        &up(be, &f(&fx, "dout")),
        &x,
        &w,
        &rstd,
        n,
        c,
    )
    .unwrap();
    check_close(
        "torch rmsnorm dx",
        &down(be, &dx),
        &f(&fx, "dx"),
        ATOL,
        RTOL,
    );
    check_close(
        "torch rmsnorm dw",
        &down(be, &dw),
        &f(&fx, "dw"),
        ATOL,
        RTOL,
    );
}

pub fn rope<B: Backend>(be: &B) {
    let fx = fixture("rope");
    let (n, heads, hd, theta) = (
        z(&fx, "n"),
        z(&fx, "heads"),
        z(&fx, "head_dim"),
        num(&fx, "theta"),
    );
    let pos = be.upload_ids(&u(&fx, "positions")).unwrap();
    let mut x = up(be, &f(&fx, "x"));
    be.rope_fwd(&mut x, &pos, n, heads, hd, theta).unwrap();
    check_close("torch rope out", &down(be, &x), &f(&fx, "out"), ATOL, RTOL);
    let mut dx = up(be, &f(&fx, "dout"));
    be.rope_bwd(&mut dx, &pos, n, heads, hd, theta).unwrap();
    check_close("torch rope dx", &down(be, &dx), &f(&fx, "dx"), ATOL, RTOL);
}

pub fn attention<B: Backend>(be: &B) {
    let fx = fixture("attention");
    let s = AttnShape {
        b: z(&fx, "b"),
        t: z(&fx, "t"),
        n_heads: z(&fx, "n_heads"),
        n_kv_heads: z(&fx, "n_kv_heads"),
        head_dim: z(&fx, "head_dim"),
    };
    let seg = be.upload_ids(&u(&fx, "segment_ids")).unwrap();
    let (q, k, v) = (
        up(be, &f(&fx, "q")),
        up(be, &f(&fx, "k")),
        up(be, &f(&fx, "v")),
    );
    let qn = s.b * s.t * s.n_heads * s.head_dim;
    let kn = s.b * s.t * s.n_kv_heads * s.head_dim;
    let (mut out, mut lse) = (
        be.zeros(qn).unwrap(),
        be.zeros(s.b * s.n_heads * s.t).unwrap(),
    );
    be.attention_fwd(&mut out, &mut lse, &q, &k, &v, &seg, s)
        .unwrap();
    check_close(
        "torch attention out",
        &down(be, &out),
        &f(&fx, "out"),
        ATOL,
        RTOL,
    );
    check_close(
        "torch attention lse",
        &down(be, &lse),
        &f(&fx, "lse"),
        ATOL,
        RTOL,
    );
    let (mut dq, mut dk, mut dv) = (
        be.zeros(qn).unwrap(),
        be.zeros(kn).unwrap(),
        be.zeros(kn).unwrap(),
    );
    let dout = up(be, &f(&fx, "dout"));
    be.attention_bwd(
        &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, &seg, s,
    )
    .unwrap();
    check_close(
        "torch attention dq",
        &down(be, &dq),
        &f(&fx, "dq"),
        ATOL,
        RTOL,
    );
    check_close(
        "torch attention dk",
        &down(be, &dk),
        &f(&fx, "dk"),
        ATOL,
        RTOL,
    );
    check_close(
        "torch attention dv",
        &down(be, &dv),
        &f(&fx, "dv"),
        ATOL,
        RTOL,
    );
}

pub fn cross_entropy<B: Backend>(be: &B) {
    let fx = fixture("cross_entropy");
    let (n, v) = (z(&fx, "n"), z(&fx, "v"));
    let mut logits = up(be, &f(&fx, "logits"));
    let mut losses = be.zeros(n).unwrap();
    let targets = be.upload_ids(&u(&fx, "targets")).unwrap();
    be.cross_entropy_fwd_bwd(
        &mut logits,
        &mut losses,
        &targets,
        &up(be, &f(&fx, "weights")),
        n,
        v,
    )
    .unwrap();
    check_close(
        "torch ce losses",
        &down(be, &losses),
        &f(&fx, "losses"),
        ATOL,
        RTOL,
    );
    check_close(
        "torch ce dlogits",
        &down(be, &logits),
        &f(&fx, "dlogits"),
        ATOL,
        RTOL,
    );
}

pub fn swiglu<B: Backend>(be: &B) {
    let fx = fixture("swiglu");
    let len = z(&fx, "len");
    let (gate, upv) = (up(be, &f(&fx, "gate")), up(be, &f(&fx, "up")));
    let mut out = be.zeros(len).unwrap();
    be.swiglu_fwd(&mut out, &gate, &upv, len).unwrap();
    check_close(
        "torch swiglu out",
        &down(be, &out),
        &f(&fx, "out"),
        ATOL,
        RTOL,
    );
    let (mut dg, mut du) = (be.zeros(len).unwrap(), be.zeros(len).unwrap());
    be.swiglu_bwd(&mut dg, &mut du, &up(be, &f(&fx, "dout")), &gate, &upv, len)
        .unwrap();
    check_close(
        "torch swiglu dgate",
        &down(be, &dg),
        &f(&fx, "dgate"),
        ATOL,
        RTOL,
    );
    check_close(
        "torch swiglu dup",
        &down(be, &du),
        &f(&fx, "dup"),
        ATOL,
        RTOL,
    );
}

pub fn matmul<B: Backend>(be: &B) {
    let fx = fixture("matmul");
    let (n, ic, oc) = (z(&fx, "n"), z(&fx, "ic"), z(&fx, "oc"));
    let (inp, w) = (up(be, &f(&fx, "inp")), up(be, &f(&fx, "w")));
    let mut out = be.zeros(n * oc).unwrap();
    be.matmul_fwd(&mut out, &inp, &w, n, ic, oc).unwrap();
    check_close(
        "torch matmul out",
        &down(be, &out),
        &f(&fx, "out"),
        ATOL,
        RTOL,
    );
    let (mut dinp, mut dw) = (be.zeros(n * ic).unwrap(), be.zeros(oc * ic).unwrap());
    be.matmul_bwd(
        &mut dinp,
        &mut dw,
        &up(be, &f(&fx, "dout")),
        &inp,
        &w,
        n,
        ic,
        oc,
    )
    .unwrap();
    check_close(
        "torch matmul dinp",
        &down(be, &dinp),
        &f(&fx, "dinp"),
        ATOL,
        RTOL,
    );
    check_close("torch matmul dw", &down(be, &dw), &f(&fx, "dw"), ATOL, RTOL);
}

pub fn embedding<B: Backend>(be: &B) {
    let fx = fixture("embedding");
    let (n, c) = (z(&fx, "n"), z(&fx, "c"));
    let (table, ids) = (
        up(be, &f(&fx, "table")),
        be.upload_ids(&u(&fx, "ids")).unwrap(),
    );
    let mut out = be.zeros(n * c).unwrap();
    be.embedding_fwd(&mut out, &ids, &table, n, c).unwrap();
    check_close(
        "torch embedding out",
        &down(be, &out),
        &f(&fx, "out"),
        0.0,
        0.0,
    );
    let mut dtable = be.zeros(be.len(&table)).unwrap();
    be.embedding_bwd(&mut dtable, &up(be, &f(&fx, "dout")), &ids, n, c)
        .unwrap();
    check_close(
        "torch embedding dtable",
        &down(be, &dtable),
        &f(&fx, "dtable"),
        ATOL,
        RTOL,
    );
}

/// `clip_grad_norm_` over two tensors + `torch.optim.AdamW`, three steps; the clip factor comes
/// from `sum_squares` and `clip_scale` and enters as `grad_scale`.
pub fn adamw_with_clipping<B: Backend>(be: &B) {
    let fx = fixture("adamw");
    let tensors = |key: &str, v: &Value| -> Vec<Vec<f32>> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                t.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect()
    };
    let mut p: Vec<B::Buf> = tensors("params0", &fx).iter().map(|t| up(be, t)).collect();
    let mut m: Vec<B::Buf> = p.iter().map(|t| be.zeros(be.len(t)).unwrap()).collect();
    let mut v: Vec<B::Buf> = p.iter().map(|t| be.zeros(be.len(t)).unwrap()).collect();
    for (step, grads) in fx["grads"].as_array().unwrap().iter().enumerate() {
        let grads: Vec<B::Buf> = grads
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                up(
                    be,
                    &g.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap() as f32)
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let total: f64 = grads.iter().map(|g| be.sum_squares(g).unwrap()).sum();
        let hp = AdamWParams {
            lr: num(&fx, "lr"),
            beta1: num(&fx, "beta1"),
            beta2: num(&fx, "beta2"),
            eps: num(&fx, "eps"),
            weight_decay: num(&fx, "weight_decay"),
            step: step as u64 + 1,
            grad_scale: koala_kernels::cpu::clip_scale(total.sqrt(), num(&fx, "max_norm") as f64),
        };
        assert!(
            hp.grad_scale < 1.0,
            "the fixture's gradients are meant to be clipped"
        );
        for i in 0..p.len() {
            be.adamw_step(&mut p[i], &grads[i], &mut m[i], &mut v[i], &hp)
                .unwrap();
        }
    }
    for (i, ((want_p, want_m), want_v)) in tensors("params", &fx)
        .iter()
        .zip(tensors("exp_avg", &fx))
        .zip(tensors("exp_avg_sq", &fx))
        .enumerate()
    {
        check_close(
            &format!("torch adamw params[{i}]"),
            &down(be, &p[i]),
            want_p,
            1e-6,
            1e-6,
        );
        check_close(
            &format!("torch adamw exp_avg[{i}]"),
            &down(be, &m[i]),
            &want_m,
            1e-7,
            1e-6,
        );
        check_close(
            &format!("torch adamw exp_avg_sq[{i}]"),
            &down(be, &v[i]),
            &want_v,
            1e-8,
            1e-6,
        );
    }
}

crate::cpu_tests!(
    rmsnorm,
    rope,
    attention,
    cross_entropy,
    swiglu,
    matmul,
    embedding,
    adamw_with_clipping
);
