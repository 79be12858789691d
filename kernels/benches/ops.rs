//! One criterion bench per op direction, written once over [`Backend`] so each backend (CPU now,
//! CUDA behind its feature) runs the same shapes. Shapes are those of a stories15M-like training
//! step (dim 288, hidden 768, 6 heads of 48, vocab 32000, batch 4 × seq 256 = 1024 tokens).
//!
//! Baselines in the same run: `matmul_fwd` also times the `matrixmultiply` crate (single thread) and
//! our matmul on a 1-thread pool, so the report can give ratios.
//!
//! `cargo bench -p koala-kernels --bench ops` (criterion flags after `--`, e.g.
//! `-- --warm-up-time 0.5 --measurement-time 2 matmul`).
use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main, measurement::WallTime,
};
use koala_kernels::{AdamWParams, AttnShape, Backend, CpuBackend};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const B: usize = 4;
const T: usize = 256;
const N: usize = B * T;
const DIM: usize = 288;
const HIDDEN: usize = 768;
const HEADS: usize = 6;
const HEAD_DIM: usize = 48;
const VOCAB: usize = 32000;
/// Rows of the LM head / cross-entropy benches (a quarter batch: 256 × 32000 logits).
const LM_ROWS: usize = 256;
/// Elements of the optimizer benches (about a stories15M model).
const PARAMS: usize = 15_000_000;

fn data(seed: u64, len: usize, scale: f32) -> Vec<f32> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| r.random_range(-scale..scale)).collect()
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g
}

/// Every op of `be`, each as `<op>/<backend>`.
fn bench_backend<Bk: Backend>(c: &mut Criterion, be: &Bk) {
    let id = be.name();
    let up = |x: &[f32]| be.upload(x).unwrap();

    // ---- embedding
    let table = up(&data(1, VOCAB * DIM, 1.0));
    let ids: Vec<u32> = (0..N as u32).map(|i| (i * 7919) % VOCAB as u32).collect();
    let ids = be.upload_ids(&ids).unwrap();
    let mut act = be.zeros(N * DIM).unwrap();
    let dact = up(&data(2, N * DIM, 1.0));
    let mut g = group(c, "embedding_fwd");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function(&id, |b| {
        b.iter(|| be.embedding_fwd(&mut act, &ids, &table, N, DIM).unwrap())
    });
    g.finish();
    let mut dtable = be.zeros(VOCAB * DIM).unwrap();
    let mut g = group(c, "embedding_bwd");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function(&id, |b| {
        b.iter(|| be.embedding_bwd(&mut dtable, &dact, &ids, N, DIM).unwrap())
    });
    g.finish();

    // ---- rmsnorm
    let x = up(&data(3, N * DIM, 1.0));
    let w = up(&data(4, DIM, 1.0));
    let mut rstd = be.zeros(N).unwrap();
    let mut g = group(c, "rmsnorm_fwd");
    g.throughput(Throughput::Elements((N * DIM) as u64));
    g.bench_function(&id, |b| {
        b.iter(|| {
            be.rmsnorm_fwd(&mut act, &mut rstd, &x, &w, N, DIM, 1e-5)
                .unwrap()
        })
    });
    g.finish();
    let (mut dx, mut dw) = (be.zeros(N * DIM).unwrap(), be.zeros(DIM).unwrap());
    let mut g = group(c, "rmsnorm_bwd");
    g.throughput(Throughput::Elements((N * DIM) as u64));
    g.bench_function(&id, |b| {
        b.iter(|| {
            be.rmsnorm_bwd(&mut dx, &mut dw, &dact, &x, &w, &rstd, N, DIM)
                .unwrap()
        })
    });
    g.finish();

    // ---- matmul: the FFN up-projection and the LM head
    for (name, n, ic, oc) in [("ffn", N, DIM, HIDDEN), ("lm_head", LM_ROWS, DIM, VOCAB)] {
        let inp = up(&data(5, n * ic, 1.0));
        let wt = up(&data(6, oc * ic, 0.1));
        let dout = up(&data(7, n * oc, 1.0));
        let mut out = be.zeros(n * oc).unwrap();
        let flops = (2 * n * ic * oc) as u64;
        let mut g = group(c, &format!("matmul_fwd_{name}"));
        g.throughput(Throughput::Elements(flops));
        g.bench_function(&id, |b| {
            b.iter(|| be.matmul_fwd(&mut out, &inp, &wt, n, ic, oc).unwrap())
        });
        g.finish();
        let (mut dinp, mut dwt) = (be.zeros(n * ic).unwrap(), be.zeros(oc * ic).unwrap());
        let mut g = group(c, &format!("matmul_bwd_{name}"));
        g.throughput(Throughput::Elements(2 * flops));
        g.bench_function(&id, |b| {
            b.iter(|| {
                be.matmul_bwd(&mut dinp, &mut dwt, &dout, &inp, &wt, n, ic, oc)
                    .unwrap()
            })
        });
        g.finish();
    }

    // ---- rope (q of every token)
    let pos: Vec<u32> = (0..N as u32).map(|i| i % T as u32).collect();
    let pos = be.upload_ids(&pos).unwrap();
    let mut q = up(&data(8, N * HEADS * HEAD_DIM, 1.0));
    let mut g = group(c, "rope_fwd");
    g.throughput(Throughput::Elements((N * HEADS * HEAD_DIM) as u64));
    g.bench_function(&id, |b| {
        b.iter(|| {
            be.rope_fwd(&mut q, &pos, N, HEADS, HEAD_DIM, 10000.0)
                .unwrap()
        })
    });
    g.finish();
    let mut g = group(c, "rope_bwd");
    g.throughput(Throughput::Elements((N * HEADS * HEAD_DIM) as u64));
    g.bench_function(&id, |b| {
        b.iter(|| {
            be.rope_bwd(&mut q, &pos, N, HEADS, HEAD_DIM, 10000.0)
                .unwrap()
        })
    });
    g.finish();

    // ---- attention (one segment per row: full causal)
    let s = AttnShape {
        b: B,
        t: T,
        n_heads: HEADS,
        n_kv_heads: HEADS,
        head_dim: HEAD_DIM,
    };
    let qkv_len = N * HEADS * HEAD_DIM;
    let (q, k, v) = (
        up(&data(9, qkv_len, 1.0)),
        up(&data(10, qkv_len, 1.0)),
        up(&data(11, qkv_len, 1.0)),
    );
    let seg: Vec<u32> = (0..N as u32).map(|i| i / T as u32).collect();
    let seg = be.upload_ids(&seg).unwrap();
    let mut out = be.zeros(qkv_len).unwrap();
    let mut lse = be.zeros(B * HEADS * T).unwrap();
    // Causal score FLOPs: q·k and p·v over t(t+1)/2 pairs per head.
    let attn_flops = (4 * B * HEADS * HEAD_DIM * T * (T + 1) / 2) as u64;
    let mut g = group(c, "attention_fwd");
    g.throughput(Throughput::Elements(attn_flops));
    g.bench_function(&id, |b| {
        b.iter(|| {
            be.attention_fwd(&mut out, &mut lse, &q, &k, &v, &seg, s)
                .unwrap()
        })
    });
    g.finish();
    let dout = up(&data(12, qkv_len, 1.0));
    let (mut dq, mut dk, mut dv) = (
        be.zeros(qkv_len).unwrap(),
        be.zeros(qkv_len).unwrap(),
        be.zeros(qkv_len).unwrap(),
    );
    let mut g = group(c, "attention_bwd");
    g.throughput(Throughput::Elements(2 * attn_flops));
    g.bench_function(&id, |b| {
        b.iter(|| {
            be.attention_bwd(
                &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, &seg, s,
            )
            .unwrap()
        })
    });
    g.finish();

    // ---- swiglu and residual
    let len = N * HIDDEN;
    let (gate, upv) = (up(&data(13, len, 3.0)), up(&data(14, len, 1.0)));
    let mut h = be.zeros(len).unwrap();
    let mut g = group(c, "swiglu_fwd");
    g.throughput(Throughput::Elements(len as u64));
    g.bench_function(&id, |b| {
        b.iter(|| be.swiglu_fwd(&mut h, &gate, &upv, len).unwrap())
    });
    g.finish();
    let (mut dg, mut du) = (be.zeros(len).unwrap(), be.zeros(len).unwrap());
    let mut g = group(c, "swiglu_bwd");
    g.throughput(Throughput::Elements(len as u64));
    g.bench_function(&id, |b| {
        b.iter(|| {
            be.swiglu_bwd(&mut dg, &mut du, &h, &gate, &upv, len)
                .unwrap()
        })
    });
    g.finish();
    let mut g = group(c, "add_fwd");
    g.throughput(Throughput::Elements((N * DIM) as u64));
    g.bench_function(&id, |b| {
        b.iter(|| be.add_fwd(&mut act, &x, &dact, N * DIM).unwrap())
    });
    g.finish();
    let mut g = group(c, "add_inplace");
    g.throughput(Throughput::Elements((N * DIM) as u64));
    g.bench_function(&id, |b| {
        b.iter(|| be.add_inplace(&mut act, &x, N * DIM).unwrap())
    });
    g.finish();

    // ---- cross-entropy (after the first iteration the op runs on its own dlogits: same work)
    let logits_h = data(15, LM_ROWS * VOCAB, 5.0);
    let targets: Vec<u32> = (0..LM_ROWS as u32)
        .map(|i| (i * 104729) % VOCAB as u32)
        .collect();
    let targets = be.upload_ids(&targets).unwrap();
    let weights = up(&vec![1.0 / LM_ROWS as f32; LM_ROWS]);
    let mut losses = be.zeros(LM_ROWS).unwrap();
    let mut logits = up(&logits_h);
    let mut g = group(c, "cross_entropy_fwd_bwd");
    g.throughput(Throughput::Elements((LM_ROWS * VOCAB) as u64));
    g.bench_function(&id, |b| {
        b.iter(|| {
            be.cross_entropy_fwd_bwd(&mut logits, &mut losses, &targets, &weights, LM_ROWS, VOCAB)
                .unwrap();
        })
    });
    g.finish();

    // ---- optimizer and norm
    let mut p = up(&data(16, PARAMS, 1.0));
    let grads = up(&data(17, PARAMS, 1.0));
    let (mut m, mut v2) = (be.zeros(PARAMS).unwrap(), be.zeros(PARAMS).unwrap());
    let hp = AdamWParams {
        lr: 2e-5,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 1,
        grad_scale: 1.0,
    };
    let mut g = group(c, "adamw_step");
    g.throughput(Throughput::Elements(PARAMS as u64));
    g.bench_function(&id, |b| {
        b.iter(|| be.adamw_step(&mut p, &grads, &mut m, &mut v2, &hp).unwrap())
    });
    g.finish();
    let mut g = group(c, "sum_squares");
    g.throughput(Throughput::Elements(PARAMS as u64));
    g.bench_function(&id, |b| {
        b.iter(|| black_box(be.sum_squares(&grads).unwrap()))
    });
    g.finish();
    let mut g = group(c, "scale");
    g.throughput(Throughput::Elements(PARAMS as u64));
    g.bench_function(&id, |b| b.iter(|| be.scale(&mut p, 1.0).unwrap()));
    g.finish();
}

/// Baselines for the FFN matmul forward: our CPU matmul on one thread, and `matrixmultiply::sgemm`
/// (single-threaded) on the same problem. Same group as the backend runs, so ratios read off
/// directly.
fn matmul_baselines(c: &mut Criterion) {
    let (n, ic, oc) = (N, DIM, HIDDEN);
    let inp = data(5, n * ic, 1.0);
    let w = data(6, oc * ic, 0.1);
    let mut out = vec![0f32; n * oc];
    let mut g = group(c, "matmul_fwd_ffn");
    g.throughput(Throughput::Elements((2 * n * ic * oc) as u64));
    let one = CpuBackend::with_threads(1).unwrap();
    g.bench_function("cpu-1thread", |b| {
        b.iter(|| one.matmul_fwd(&mut out, &inp, &w, n, ic, oc).unwrap())
    });
    g.bench_function("matrixmultiply-1thread", |b| {
        b.iter(|| {
            // SAFETY: out is n×oc, inp n×ic and w oc×ic, all row-major; strides stay in bounds.
            unsafe {
                matrixmultiply::sgemm(
                    n,
                    ic,
                    oc,
                    1.0,
                    inp.as_ptr(),
                    ic as isize,
                    1,
                    w.as_ptr(),
                    1,
                    ic as isize,
                    0.0,
                    out.as_mut_ptr(),
                    oc as isize,
                    1,
                )
            }
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_backend(c, &CpuBackend::new());
    matmul_baselines(c);
}

criterion_group!(ops, benches);
criterion_main!(ops);
