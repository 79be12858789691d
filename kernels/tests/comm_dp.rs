//! Data parallelism on the CPU: N = 2 workers (threads, [`ThreadComm`]) training a real
//! transformer step ([`TinyLlama`]: embedding, RMSNorm, RoPE, GQA attention with packing, SwiGLU,
//! LM head, fused cross-entropy) on batch slices equal one worker on the full batch, for plain
//! data parallelism and for ZeRO-1, over several optimizer steps.
use koala_kernels::comm::model::{Batch, Config, TinyLlama};
use koala_kernels::comm::{Communicator, DpOptimizer, ThreadComm, shard_len};
use koala_kernels::{AdamWParams, Backend, CpuBackend};

const STEPS: u64 = 3;
const BATCH: usize = 4;

fn hp(step: u64) -> AdamWParams {
    AdamWParams {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        step,
        grad_scale: 1.0,
    }
}

struct Run {
    losses: Vec<f64>,
    norms: Vec<f64>,
    params: Vec<Vec<f32>>,
    state_elements: usize,
}

/// Trains `STEPS` steps as rank `comm.rank()` of `comm.world_size()` on its rows of each batch.
fn train(comm: ThreadComm, zero1: bool) -> Run {
    let be = CpuBackend::with_threads(1).unwrap();
    let cfg = Config::tiny();
    let world = comm.world_size();
    let rows = BATCH / world;
    let mut model = TinyLlama::new(&be, cfg, 42).unwrap();
    let mut opt = DpOptimizer::new(&be, &comm, &model.params(), zero1).unwrap();
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for step in 1..=STEPS {
        let full = Batch::synthetic(&cfg, BATCH, 100 + step);
        // Weights stay those of the full batch (a masked mean over all its tokens), times `world`
        // so that averaging the ranks' gradients gives the full batch's gradient.
        let mine = full.rows(cfg.seq_len, comm.rank() * rows, rows, world as f32);
        model.zero_grads(&be).unwrap();
        let loss = model.forward_backward(&be, &mine).unwrap();
        losses.push(
            comm.all_reduce_scalar(loss, koala_kernels::comm::ReduceOp::Avg)
                .unwrap(),
        );
        let (mut params, mut grads) = model.params_and_grads_mut();
        norms.push(
            opt.step(&be, &comm, &mut params, &mut grads, &hp(step), Some(1.0))
                .unwrap(),
        );
    }
    let params = model
        .params()
        .iter()
        .map(|p| be.download(p).unwrap())
        .collect();
    Run {
        losses,
        norms,
        params,
        state_elements: opt.state_elements(&be),
    }
}

fn run_group(world: usize, zero1: bool) -> Vec<Run> {
    let comms = ThreadComm::group(world);
    std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .map(|c| s.spawn(move || train(c, zero1)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0, 0.0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs() / (1.0 + w.abs());
        if d > worst.1 {
            worst = (i, d);
        }
    }
    assert!(
        worst.1 <= tol,
        "{what}: worst relative diff {} at {} ({} vs {})",
        worst.1,
        worst.0,
        got[worst.0],
        want[worst.0]
    );
}

fn check_equivalent(zero1: bool) {
    let single = run_group(1, false).pop().unwrap();
    let ranks = run_group(2, zero1);
    // Training moved the parameters (the test is not vacuous).
    let init = TinyLlama::new(&CpuBackend::new(), Config::tiny(), 42).unwrap();
    let init: Vec<Vec<f32>> = init.params().iter().map(|p| p.to_vec()).collect();
    let moved: f32 = single
        .params
        .iter()
        .flatten()
        .zip(init.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(moved > 1e-3, "parameters did not move ({moved})");
    for (r, run) in ranks.iter().enumerate() {
        for (s, (l, l1)) in run.losses.iter().zip(&single.losses).enumerate() {
            assert!(
                (l - l1).abs() <= 1e-5 * l1.abs().max(1.0),
                "rank {r} step {s}: loss {l} vs {l1}"
            );
        }
        for (s, (n, n1)) in run.norms.iter().zip(&single.norms).enumerate() {
            assert!(
                (n - n1).abs() <= 1e-4 * n1.max(1e-3),
                "rank {r} step {s}: grad norm {n} vs {n1}"
            );
        }
        for (i, (p, p1)) in run.params.iter().zip(&single.params).enumerate() {
            assert_close(&format!("zero1={zero1} rank {r} param {i}"), p, p1, 2e-5);
        }
    }
    // Every rank holds bit-identical parameters.
    assert_eq!(ranks[0].params, ranks[1].params, "ranks diverged");
    let total: usize = Config::tiny().param_shapes().iter().map(|s| 2 * s.0).sum();
    assert_eq!(single.state_elements, total);
    if zero1 {
        let sharded: usize = Config::tiny()
            .param_shapes()
            .iter()
            .map(|s| 2 * shard_len(s.0, 2))
            .sum();
        assert_eq!(
            ranks[0].state_elements, sharded,
            "ZeRO-1 keeps 1/world of the optimizer state"
        );
    } else {
        assert_eq!(ranks[0].state_elements, total);
    }
}

#[test]
fn two_workers_equal_one_worker_on_the_full_batch() {
    check_equivalent(false);
}

#[test]
fn zero1_two_workers_equal_one_worker_on_the_full_batch() {
    check_equivalent(true);
}

/// The same training through the launcher a job uses (`launch_cpu`, `launch`).
struct Train {
    zero1: bool,
}

impl koala_kernels::comm::Worker for Train {
    type Output = Vec<Vec<f32>>;
    fn run<B: Backend, C: Communicator<B>>(
        &self,
        be: &B,
        comm: &C,
    ) -> koala_kernels::Result<Self::Output> {
        let cfg = Config::tiny();
        let world = comm.world_size();
        let rows = BATCH / world;
        let mut model = TinyLlama::new(be, cfg, 42)?;
        let mut opt = DpOptimizer::new(be, comm, &model.params(), self.zero1)?;
        for step in 1..=STEPS {
            let full = Batch::synthetic(&cfg, BATCH, 100 + step);
            let mine = full.rows(cfg.seq_len, comm.rank() * rows, rows, world as f32);
            model.zero_grads(be)?;
            model.forward_backward(be, &mine)?;
            let (mut params, mut grads) = model.params_and_grads_mut();
            opt.step(be, comm, &mut params, &mut grads, &hp(step), Some(1.0))?;
        }
        model.params().iter().map(|p| be.download(p)).collect()
    }
}

#[test]
fn launcher_runs_the_same_data_parallel_training() {
    use koala_kernels::comm::{launch, launch_cpu};
    use koala_kernels::select::DeviceSpec;
    let one = launch(&[DeviceSpec::Cpu], &Train { zero1: false })
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        one,
        run_group(1, false).pop().unwrap().params,
        "launch(cpu) is the single-worker run"
    );
    for zero1 in [false, true] {
        let two = launch_cpu(2, &Train { zero1 }).unwrap();
        assert_eq!(two[0], two[1]);
        for (i, (p, p1)) in two[0].iter().zip(&one).enumerate() {
            assert_close(
                &format!("launch_cpu(2) zero1={zero1} param {i}"),
                p,
                p1,
                2e-5,
            );
        }
    }
    // Device lists that cannot form a group are errors, never panics.
    assert!(launch(&[], &Train { zero1: false }).is_err());
    assert!(
        launch(
            &[DeviceSpec::Cpu, DeviceSpec::Cuda(0)],
            &Train { zero1: false }
        )
        .is_err()
    );
    if koala_kernels::select::select("cuda:0").is_err() {
        let e = launch(
            &[DeviceSpec::Cuda(0), DeviceSpec::Cuda(1)],
            &Train { zero1: false },
        )
        .err()
        .unwrap();
        eprintln!("cuda:0..2 without GPUs: {e}");
    }
}
