//! GPU checks in the manner of llm.c's dev/cuda: every CUDA kernel against the CPU reference
//! backend on random inputs, in fp32 (tight tolerance) and in bf16 mixed precision (bf16
//! tolerance). The whole training step on the GPU (the trainer's `Llama`) is checked against its
//! CPU step in `trainer/tests/cuda_step.rs`.
//!
//! Every test needs an NVIDIA GPU, so each is `#[ignore = "needs an NVIDIA GPU"]`: `cargo test`
//! lists them as ignored. `scripts/gpu-check.sh` runs them with `--ignored` on a GPU machine,
//! where a missing driver, GPU, NVRTC or cuBLAS fails them with the reason (see docs/gpu.md):
//! `cargo test -p koala-kernels --test cuda_ops -- --ignored --nocapture`.
#![cfg(feature = "cuda")]

use koala_kernels::cuda::{CudaBackend, Precision};
use koala_kernels::{AdamWParams, AttnShape, Backend, CpuBackend, LoraShape};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Opens `cuda:0` in the given precision; a test that needs it fails with the reason when it
/// cannot be opened (these tests only run with `--ignored`, i.e. when a GPU is expected).
fn gpu(precision: Precision) -> CudaBackend {
    CudaBackend::new(0, precision).unwrap_or_else(|e| {
        panic!("needs an NVIDIA GPU: cuda:0 ({precision:?}) could not be opened: {e}")
    })
}

/// Values uniform in `[-scale, scale)`, rounded to bf16 so that both precisions see the same inputs.
fn uniform(rng: &mut ChaCha8Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len)
        .map(|_| half::bf16::from_f32(rng.random_range(-scale..scale)).to_f32())
        .collect()
}

fn ids(rng: &mut ChaCha8Rng, len: usize, limit: u32) -> Vec<u32> {
    (0..len).map(|_| rng.random_range(0..limit)).collect()
}

/// `|got - want| <= atol + rtol·|want|` everywhere; prints the first mismatches and the worst one.
fn check(name: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> bool {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let mut bad = 0;
    let mut worst = (0usize, 0.0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        if d.is_nan() || d > atol + rtol * w.abs() {
            if bad < 5 {
                eprintln!("  {name}[{i}]: gpu {g} vs cpu {w}");
            }
            bad += 1;
        }
        if d > worst.1 || d.is_nan() {
            worst = (i, d);
        }
    }
    eprintln!(
        "{name}: {} elements, worst |diff| {:.3e} at {} ({} mismatches)",
        got.len(),
        worst.1,
        worst.0,
        bad
    );
    bad == 0
}

/// One op case: runs on any backend and returns named outputs (downloaded to the host).
type Case<B> = fn(&B, u64) -> Vec<(&'static str, Vec<f32>)>;

/// Runs `case` on the CPU and on the GPU in both precisions and compares every output.
fn compare(op: &str, cpu_case: Case<CpuBackend>, gpu_case: Case<CudaBackend>) {
    let f32_be = gpu(Precision::F32);
    let bf16_be = gpu(Precision::Bf16);
    let mut ok = true;
    for seed in [1u64, 2] {
        let want = cpu_case(&CpuBackend::new(), seed);
        for (be, label, atol, rtol) in [
            (&f32_be, "f32", 1e-4f32, 1e-3f32),
            (&bf16_be, "bf16", 3e-2, 3e-2),
        ] {
            let got = gpu_case(be, seed);
            for ((name, g), (_, w)) in got.iter().zip(&want) {
                ok &= check(&format!("{op}/{label}/{name}/seed{seed}"), g, w, atol, rtol);
            }
        }
    }
    assert!(
        ok,
        "{op}: GPU results differ from the CPU reference (see above)"
    );
}

macro_rules! gpu_op_test {
    ($name:ident) => {
        #[test]
        #[ignore = "needs an NVIDIA GPU"]
        fn $name() {
            compare(
                stringify!($name),
                cases::$name::<CpuBackend>,
                cases::$name::<CudaBackend>,
            );
        }
    };
}

mod cases {
    use super::*;

    pub fn embedding<B: Backend>(be: &B, seed: u64) -> Vec<(&'static str, Vec<f32>)> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let (n, c, vocab) = (67, 96, 50);
        let table = be.upload(&uniform(&mut r, vocab * c, 1.0)).unwrap();
        let idv = ids(&mut r, n, vocab as u32);
        let id = be.upload_ids(&idv).unwrap();
        let mut out = be.zeros(n * c).unwrap();
        be.embedding_fwd(&mut out, &id, &table, n, c).unwrap();
        let dout = be.upload(&uniform(&mut r, n * c, 1.0)).unwrap();
        let mut dtable = be.upload(&uniform(&mut r, vocab * c, 0.1)).unwrap();
        be.embedding_bwd(&mut dtable, &dout, &id, n, c).unwrap();
        vec![
            ("out", be.download(&out).unwrap()),
            ("dtable", be.download(&dtable).unwrap()),
        ]
    }

    pub fn rmsnorm<B: Backend>(be: &B, seed: u64) -> Vec<(&'static str, Vec<f32>)> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let (n, c) = (37, 200);
        let x = be.upload(&uniform(&mut r, n * c, 2.0)).unwrap();
        let w = be.upload(&uniform(&mut r, c, 1.0)).unwrap();
        let (mut out, mut rstd) = (be.zeros(n * c).unwrap(), be.zeros(n).unwrap());
        be.rmsnorm_fwd(&mut out, &mut rstd, &x, &w, n, c, 1e-5)
            .unwrap();
        let dout = be.upload(&uniform(&mut r, n * c, 1.0)).unwrap();
        let mut dx = be.zeros(n * c).unwrap();
        let mut dw = be.upload(&uniform(&mut r, c, 0.1)).unwrap();
        be.rmsnorm_bwd(&mut dx, &mut dw, &dout, &x, &w, &rstd, n, c)
            .unwrap();
        vec![
            ("out", be.download(&out).unwrap()),
            ("rstd", be.download(&rstd).unwrap()),
            ("dx", be.download(&dx).unwrap()),
            ("dw", be.download(&dw).unwrap()),
        ]
    }

    pub fn matmul<B: Backend>(be: &B, seed: u64) -> Vec<(&'static str, Vec<f32>)> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let (n, ic, oc) = (45, 64, 72);
        let inp = be.upload(&uniform(&mut r, n * ic, 1.0)).unwrap();
        let w = be.upload(&uniform(&mut r, oc * ic, 0.2)).unwrap();
        let mut out = be.zeros(n * oc).unwrap();
        be.matmul_fwd(&mut out, &inp, &w, n, ic, oc).unwrap();
        let dout = be.upload(&uniform(&mut r, n * oc, 1.0)).unwrap();
        let mut dinp = be.zeros(n * ic).unwrap();
        let mut dw = be.upload(&uniform(&mut r, oc * ic, 0.1)).unwrap();
        be.matmul_bwd(&mut dinp, &mut dw, &dout, &inp, &w, n, ic, oc)
            .unwrap();
        vec![
            ("out", be.download(&out).unwrap()),
            ("dinp", be.download(&dinp).unwrap()),
            ("dw", be.download(&dw).unwrap()),
        ]
    }

    /// LoRA forward and backward with dropout (the CUDA mask kernel must draw the CPU's mask),
    /// on top of a frozen matmul and its input-only backward.
    pub fn lora<B: Backend>(be: &B, seed: u64) -> Vec<(&'static str, Vec<f32>)> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let (n, ic, rank, oc) = (45, 64, 8, 72);
        let s = LoraShape {
            n,
            ic,
            r: rank,
            oc,
            scale: 2.0,
            dropout: 0.2,
            seed: 11 + seed,
        };
        let x = be.upload(&uniform(&mut r, n * ic, 1.0)).unwrap();
        let w = be.upload(&uniform(&mut r, oc * ic, 0.2)).unwrap();
        let a = be.upload(&uniform(&mut r, rank * ic, 0.2)).unwrap();
        let b = be.upload(&uniform(&mut r, oc * rank, 0.2)).unwrap();
        let mut out = be.zeros(n * oc).unwrap();
        be.matmul_fwd(&mut out, &x, &w, n, ic, oc).unwrap();
        let (mut xa, mut scratch) = (be.zeros(n * rank).unwrap(), be.zeros(n * ic).unwrap());
        be.lora_fwd(&mut out, &mut xa, &mut scratch, &x, &a, &b, &s)
            .unwrap();
        let dout = be.upload(&uniform(&mut r, n * oc, 1.0)).unwrap();
        let mut dx = be.zeros(n * ic).unwrap();
        be.matmul_bwd_data(&mut dx, &dout, &w, n, ic, oc).unwrap();
        let (mut da, mut db) = (
            be.zeros_f32(rank * ic).unwrap(),
            be.zeros_f32(oc * rank).unwrap(),
        );
        let mut dxa = be.zeros(n * rank).unwrap();
        be.lora_bwd(
            Some(&mut dx),
            &mut da,
            &mut db,
            &mut dxa,
            &mut scratch,
            &dout,
            &x,
            &xa,
            &a,
            &b,
            &s,
        )
        .unwrap();
        vec![
            ("out", be.download(&out).unwrap()),
            ("dx", be.download(&dx).unwrap()),
            ("da", be.download(&da).unwrap()),
            ("db", be.download(&db).unwrap()),
        ]
    }

    pub fn rope<B: Backend>(be: &B, seed: u64) -> Vec<(&'static str, Vec<f32>)> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let (n, heads, hd) = (40, 3, 32);
        let pos: Vec<u32> = (0..n as u32).map(|i| (i * 7) % 29).collect();
        let pos = be.upload_ids(&pos).unwrap();
        let mut x = be.upload(&uniform(&mut r, n * heads * hd, 1.0)).unwrap();
        be.rope_fwd(&mut x, &pos, n, heads, hd, 10_000.0).unwrap();
        let mut dx = be.upload(&uniform(&mut r, n * heads * hd, 1.0)).unwrap();
        be.rope_bwd(&mut dx, &pos, n, heads, hd, 10_000.0).unwrap();
        vec![
            ("x", be.download(&x).unwrap()),
            ("dx", be.download(&dx).unwrap()),
        ]
    }

    /// Two packed segments per row, GQA 6:2, t not a multiple of the kernel's tiles.
    pub fn attention<B: Backend>(be: &B, seed: u64) -> Vec<(&'static str, Vec<f32>)> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let s = AttnShape {
            b: 2,
            t: 45,
            n_heads: 6,
            n_kv_heads: 2,
            head_dim: 64,
        };
        let (ql, kvl) = (
            s.b * s.t * s.n_heads * s.head_dim,
            s.b * s.t * s.n_kv_heads * s.head_dim,
        );
        let q = be.upload(&uniform(&mut r, ql, 1.0)).unwrap();
        let k = be.upload(&uniform(&mut r, kvl, 1.0)).unwrap();
        let v = be.upload(&uniform(&mut r, kvl, 1.0)).unwrap();
        let seg: Vec<u32> = (0..s.b * s.t)
            .map(|i| u32::from(i % s.t >= 17 + 5 * (i / s.t)))
            .collect();
        let seg = be.upload_ids(&seg).unwrap();
        let mut out = be.zeros(ql).unwrap();
        let mut lse = be.zeros(s.b * s.n_heads * s.t).unwrap();
        be.attention_fwd(&mut out, &mut lse, &q, &k, &v, &seg, s)
            .unwrap();
        let dout = be.upload(&uniform(&mut r, ql, 1.0)).unwrap();
        let (mut dq, mut dk, mut dv) = (
            be.zeros(ql).unwrap(),
            be.zeros(kvl).unwrap(),
            be.zeros(kvl).unwrap(),
        );
        be.attention_bwd(
            &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, &seg, s,
        )
        .unwrap();
        vec![
            ("out", be.download(&out).unwrap()),
            ("lse", be.download(&lse).unwrap()),
            ("dq", be.download(&dq).unwrap()),
            ("dk", be.download(&dk).unwrap()),
            ("dv", be.download(&dv).unwrap()),
        ]
    }

    pub fn swiglu<B: Backend>(be: &B, seed: u64) -> Vec<(&'static str, Vec<f32>)> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let len = 1000;
        let gate = be.upload(&uniform(&mut r, len, 4.0)).unwrap();
        let up = be.upload(&uniform(&mut r, len, 2.0)).unwrap();
        let mut out = be.zeros(len).unwrap();
        be.swiglu_fwd(&mut out, &gate, &up, len).unwrap();
        let dout = be.upload(&uniform(&mut r, len, 1.0)).unwrap();
        let (mut dg, mut du) = (be.zeros(len).unwrap(), be.zeros(len).unwrap());
        be.swiglu_bwd(&mut dg, &mut du, &dout, &gate, &up, len)
            .unwrap();
        vec![
            ("out", be.download(&out).unwrap()),
            ("dgate", be.download(&dg).unwrap()),
            ("dup", be.download(&du).unwrap()),
        ]
    }

    pub fn residual<B: Backend>(be: &B, seed: u64) -> Vec<(&'static str, Vec<f32>)> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let len = 777;
        let a = be.upload(&uniform(&mut r, len, 1.0)).unwrap();
        let b = be.upload(&uniform(&mut r, len, 1.0)).unwrap();
        let mut out = be.zeros(len).unwrap();
        be.add_fwd(&mut out, &a, &b, len).unwrap();
        let mut acc = be.upload(&uniform(&mut r, len, 1.0)).unwrap();
        be.add_inplace(&mut acc, &out, len).unwrap();
        be.scale(&mut acc, 0.5).unwrap();
        let mut copied = be.zeros(len).unwrap();
        be.copy(&mut copied, &acc).unwrap();
        let mut zeroed = be.upload(&uniform(&mut r, len, 1.0)).unwrap();
        be.fill_zero(&mut zeroed).unwrap();
        vec![
            ("out", be.download(&out).unwrap()),
            ("acc", be.download(&acc).unwrap()),
            ("copy", be.download(&copied).unwrap()),
            ("fill_zero", be.download(&zeroed).unwrap()),
        ]
    }

    pub fn cross_entropy<B: Backend>(be: &B, seed: u64) -> Vec<(&'static str, Vec<f32>)> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let (n, v) = (23, 3001);
        let mut logits = be.upload(&uniform(&mut r, n * v, 8.0)).unwrap();
        let t = be.upload_ids(&ids(&mut r, n, v as u32)).unwrap();
        let w: Vec<f32> = (0..n)
            .map(|i| if i % 4 == 3 { 0.0 } else { 0.25 })
            .collect();
        let w = be.upload(&w).unwrap();
        let mut losses = be.zeros(n).unwrap();
        be.cross_entropy_fwd_bwd(&mut logits, &mut losses, &t, &w, n, v)
            .unwrap();
        vec![
            ("losses", be.download(&losses).unwrap()),
            ("dlogits", be.download(&logits).unwrap()),
        ]
    }

    pub fn adamw<B: Backend>(be: &B, seed: u64) -> Vec<(&'static str, Vec<f32>)> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let len = 513;
        let mut p = be.upload(&uniform(&mut r, len, 1.0)).unwrap();
        let g = be.upload(&uniform(&mut r, len, 1.0)).unwrap();
        let (mut m, mut v) = (be.zeros(len).unwrap(), be.zeros(len).unwrap());
        for step in 1..=3 {
            let hp = AdamWParams {
                lr: 1e-2,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.1,
                step,
                grad_scale: 0.5,
            };
            be.adamw_step(&mut p, &g, &mut m, &mut v, &hp).unwrap();
        }
        vec![
            ("params", be.download(&p).unwrap()),
            ("m", be.download(&m).unwrap()),
            ("v", be.download(&v).unwrap()),
        ]
    }

    pub fn sum_squares<B: Backend>(be: &B, seed: u64) -> Vec<(&'static str, Vec<f32>)> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let x = be.upload(&uniform(&mut r, 100_003, 1.0)).unwrap();
        // Compared relative to the value (~33k), as a 1-element output.
        vec![(
            "sum_squares",
            vec![(be.sum_squares(&x).unwrap() / 33_334.0) as f32],
        )]
    }
}

gpu_op_test!(embedding);
gpu_op_test!(rmsnorm);
gpu_op_test!(matmul);
gpu_op_test!(lora);
gpu_op_test!(rope);
gpu_op_test!(attention);
gpu_op_test!(swiglu);
gpu_op_test!(residual);
gpu_op_test!(cross_entropy);
gpu_op_test!(adamw);
gpu_op_test!(sum_squares);

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn bf16_parameters_keep_an_fp32_master_copy() {
    let be = gpu(Precision::Bf16);
    // An update far below bf16 resolution at 1.0 must still accumulate in the master copy.
    let mut p = be.upload_param(&[1.0; 64]).unwrap();
    let g = be.upload(&[1.0; 64]).unwrap();
    let (mut m, mut v) = (be.zeros(64).unwrap(), be.zeros(64).unwrap());
    for step in 1..=10 {
        let hp = AdamWParams {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            step,
            grad_scale: 1.0,
        };
        be.adamw_step(&mut p, &g, &mut m, &mut v, &hp).unwrap();
    }
    let master = be.download_param(&p).unwrap();
    assert!(
        master
            .iter()
            .all(|&x| (x - (1.0 - 10.0 * 1e-4)).abs() < 1e-5),
        "master {:?}",
        &master[..4]
    );
    assert!(p.has_master());
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn errors_not_panics_on_bad_ids() {
    let be = gpu(Precision::F32);
    let table = be.zeros(10 * 4).unwrap();
    let id = be.upload_ids(&[3, 10]).unwrap();
    let mut out = be.zeros(2 * 4).unwrap();
    assert!(be.embedding_fwd(&mut out, &id, &table, 2, 4).is_err());
    let mut logits = be.zeros(2 * 5).unwrap();
    let mut losses = be.zeros(2).unwrap();
    let w = be.upload(&[1.0, 1.0]).unwrap();
    let t = be.upload_ids(&[0, 5]).unwrap();
    assert!(
        be.cross_entropy_fwd_bwd(&mut logits, &mut losses, &t, &w, 2, 5)
            .is_err()
    );
}
