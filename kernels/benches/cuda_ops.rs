//! Criterion benches of every kernel on every backend of this machine, in one binary: the CPU
//! reference, and (only when a GPU is usable) the CUDA backend in fp32 and in bf16. Each op is one
//! criterion group with one entry per backend, so the report shows them side by side.
//!
//! `cargo bench -p koala-kernels --bench cuda_ops` (add `-- attention` to run one group). The shapes
//! are one layer of a small LLaMA (256 tokens, dim 1024, 16 heads of 64, 4 kv heads, ffn 2816,
//! vocab 8192), sized so that the CPU entries finish in minutes.
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use koala_kernels::{AdamWParams, AttnShape, Backend, CpuBackend};

const N: usize = 256;
const C: usize = 1024;
const HEADS: usize = 16;
const KV: usize = 4;
const HD: usize = 64;
const FFN: usize = 2816;
const VOCAB: usize = 8192;

fn data(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Registers one entry per op for backend `be` under the label `label`; `sync` waits for the
/// device (a no-op on the CPU) so that each iteration times finished work.
fn bench_backend<B: Backend>(c: &mut Criterion, label: &str, be: &B, sync: &dyn Fn()) {
    let up = |len: usize, seed: u32| be.upload(&data(len, seed)).unwrap();
    let ids: Vec<u32> = (0..N as u32).map(|i| (i * 7919) % VOCAB as u32).collect();
    let ids = be.upload_ids(&ids).unwrap();
    let pos: Vec<u32> = (0..N as u32).collect();
    let pos = be.upload_ids(&pos).unwrap();
    let seg = be.upload_ids(&vec![0u32; N]).unwrap();
    let x = up(N * C, 1);
    let dout = up(N * C, 2);
    let w_norm = up(C, 3);
    let mut out = be.zeros(N * C).unwrap();
    let mut out2 = be.zeros(N * C).unwrap();
    let mut rstd = be.zeros(N).unwrap();
    let mut dw_norm = be.zeros(C).unwrap();

    let mut run = |group: &str, f: &mut dyn FnMut()| {
        let mut g = c.benchmark_group(group);
        g.sample_size(10);
        g.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                f();
                sync();
            })
        });
        g.finish();
    };

    let table = up(VOCAB * C, 4);
    let mut dtable = be.zeros(VOCAB * C).unwrap();
    run("embedding_fwd", &mut || {
        be.embedding_fwd(&mut out, &ids, &table, N, C).unwrap()
    });
    run("embedding_bwd", &mut || {
        be.embedding_bwd(&mut dtable, &dout, &ids, N, C).unwrap()
    });
    drop((table, dtable));

    run("rmsnorm_fwd", &mut || {
        be.rmsnorm_fwd(&mut out, &mut rstd, &x, &w_norm, N, C, 1e-5)
            .unwrap()
    });
    run("rmsnorm_bwd", &mut || {
        be.rmsnorm_bwd(&mut out2, &mut dw_norm, &dout, &x, &w_norm, &rstd, N, C)
            .unwrap()
    });

    let w = up(FFN * C, 5);
    let mut h = be.zeros(N * FFN).unwrap();
    let dh = up(N * FFN, 6);
    let mut dw = be.zeros(FFN * C).unwrap();
    run("matmul_fwd", &mut || {
        be.matmul_fwd(&mut h, &x, &w, N, C, FFN).unwrap()
    });
    run("matmul_bwd", &mut || {
        be.matmul_bwd(&mut out, &mut dw, &dh, &x, &w, N, C, FFN)
            .unwrap()
    });

    let mut q = up(N * HEADS * HD, 7);
    run("rope_fwd", &mut || {
        be.rope_fwd(&mut q, &pos, N, HEADS, HD, 10_000.0).unwrap()
    });
    run("rope_bwd", &mut || {
        be.rope_bwd(&mut q, &pos, N, HEADS, HD, 10_000.0).unwrap()
    });

    let s = AttnShape {
        b: 1,
        t: N,
        n_heads: HEADS,
        n_kv_heads: KV,
        head_dim: HD,
    };
    let k = up(N * KV * HD, 8);
    let v = up(N * KV * HD, 9);
    let mut att = be.zeros(N * HEADS * HD).unwrap();
    let mut lse = be.zeros(HEADS * N).unwrap();
    let datt = up(N * HEADS * HD, 10);
    let (mut dq, mut dk, mut dv) = (
        be.zeros(N * HEADS * HD).unwrap(),
        be.zeros(N * KV * HD).unwrap(),
        be.zeros(N * KV * HD).unwrap(),
    );
    run("attention_fwd", &mut || {
        be.attention_fwd(&mut att, &mut lse, &q, &k, &v, &seg, s)
            .unwrap()
    });
    run("attention_bwd", &mut || {
        be.attention_bwd(
            &mut dq, &mut dk, &mut dv, &datt, &q, &k, &v, &att, &lse, &seg, s,
        )
        .unwrap()
    });

    let gate = up(N * FFN, 11);
    let mut a = be.zeros(N * FFN).unwrap();
    let (mut dg, mut du) = (be.zeros(N * FFN).unwrap(), be.zeros(N * FFN).unwrap());
    run("swiglu_fwd", &mut || {
        be.swiglu_fwd(&mut a, &gate, &h, N * FFN).unwrap()
    });
    run("swiglu_bwd", &mut || {
        be.swiglu_bwd(&mut dg, &mut du, &dh, &gate, &h, N * FFN)
            .unwrap()
    });

    run("add_fwd", &mut || {
        be.add_fwd(&mut out, &x, &dout, N * C).unwrap()
    });
    run("add_inplace", &mut || {
        be.add_inplace(&mut out2, &x, N * C).unwrap()
    });

    let logits0 = data(N * VOCAB, 12);
    let mut logits = be.upload(&logits0).unwrap();
    let targets = be
        .upload_ids(
            &(0..N as u32)
                .map(|i| (i * 31) % VOCAB as u32)
                .collect::<Vec<_>>(),
        )
        .unwrap();
    let weights = be.upload(&vec![1.0 / N as f32; N]).unwrap();
    let mut losses = be.zeros(N).unwrap();
    // In place: the logits become dlogits; re-running on them times the same work.
    run("cross_entropy_fwd_bwd", &mut || {
        be.cross_entropy_fwd_bwd(&mut logits, &mut losses, &targets, &weights, N, VOCAB)
            .unwrap()
    });

    let mut p = up(FFN * C, 13);
    let g = up(FFN * C, 14);
    let (mut m, mut vv) = (be.zeros(FFN * C).unwrap(), be.zeros(FFN * C).unwrap());
    let hp = AdamWParams {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        step: 1,
        grad_scale: 1.0,
    };
    run("adamw_step", &mut || {
        be.adamw_step(&mut p, &g, &mut m, &mut vv, &hp).unwrap()
    });
    run("sum_squares", &mut || {
        std::hint::black_box(be.sum_squares(&g).unwrap());
    });
    run("scale", &mut || be.scale(&mut p, 1.0).unwrap());
}

fn benches(c: &mut Criterion) {
    bench_backend(c, "cpu", &CpuBackend::new(), &|| {});
    cuda_benches(c);
}

#[cfg(feature = "cuda")]
fn cuda_benches(c: &mut Criterion) {
    use koala_kernels::cuda::{CudaBackend, Precision};
    for (precision, label) in [(Precision::F32, "cuda-f32"), (Precision::Bf16, "cuda-bf16")] {
        match CudaBackend::new(0, precision) {
            Ok(be) => bench_backend(c, label, &be, &|| be.synchronize().unwrap()),
            Err(e) => {
                eprintln!("skipped: CUDA benches ({label}): {e}");
                return;
            }
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_benches(_c: &mut Criterion) {
    eprintln!("skipped: CUDA benches: built without the `cuda` feature");
}

criterion_group!(ops, benches);
criterion_main!(ops);
