//! Data parallelism with the trainer's own step, the code a job's workers run
//! (`koala_trainer::train`): each rank computes the gradients of the trainer's `Llama` on its rows
//! of the global batch with the global batch's loss weights (`train::local_grads`), and
//! `dp::DpAdamW` sums them across ranks, clips by the global norm and applies AdamW, with the
//! optimizer state whole or sharded (ZeRO-1).
//!
//! * On the CPU (threads, `ThreadComm`): 2 and 3 workers, plain and ZeRO-1, equal one worker on
//!   the whole batch (losses, gradient norms, fp32 master weights) and every rank holds the same
//!   parameters; ZeRO-1 keeps `1/world` of the moments.
//! * On every visible GPU (NCCL, bf16): the same steps against the CPU run, `#[ignore = "needs an
//!   NVIDIA GPU"]` (run by `scripts/gpu-check.sh` with `--ignored`).
//!
//! The whole training loop on workers (`run` with `workers`, `zero1`, `device`) is tested in
//! `dp_train.rs`.
use koala_kernels::comm::{Communicator, ReduceOp, ThreadComm, shard_len};
use koala_kernels::{Backend, CpuBackend};
use koala_trainer::data::Row;
use koala_trainer::dp::{DpAdamW, Solo};
use koala_trainer::model::Llama;
use koala_trainer::train::local_grads;
use koala_trainer::weights::{Tensors, init_weights};
use koala_trainer::{Hyper, LlamaConfig};

const B: usize = 4;
const T: usize = 12;
const STEPS: u64 = 3;
const LR: f32 = 1e-2;

fn config() -> LlamaConfig {
    LlamaConfig::from_json_str(
        r#"{"vocab_size": 61, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5}"#,
    )
    .unwrap()
}

fn hyper() -> Hyper {
    Hyper {
        batch_size: B,
        // One worker accumulates two micro-batches; two workers take one each.
        micro_batch_size: 2,
        max_len: T,
        weight_decay: 0.1,
        beta2: 0.95,
        grad_clip: 1.0,
        ..Hyper::default()
    }
}

/// The global batch of `step`: two packed documents per row (split at a row-dependent place),
/// the first two tokens of each row without loss.
fn rows(step: u64, vocab: u32) -> Vec<Row> {
    (0..B)
        .map(|r| {
            let base = (r * T) as u32;
            let tokens = (0..T as u32)
                .map(|i| ((base + i) * 7 + step as u32 * 13 + 3) % vocab)
                .collect();
            let segment_ids = (0..T).map(|i| u32::from(i >= 4 + r)).collect();
            let loss_mask = (0..T).map(|i| u8::from(i >= 2)).collect();
            Row {
                tokens,
                loss_mask,
                segment_ids,
            }
        })
        .collect()
}

struct Run {
    /// The global batch's loss per step.
    losses: Vec<f64>,
    /// The global gradient norm (before clipping) per step.
    norms: Vec<f64>,
    /// The fp32 master weights (rank 0 only; gathered from the shards under ZeRO-1).
    masters: Option<Tensors>,
    /// What the forward reads (bf16 on a bf16 GPU backend), on every rank.
    forward: Vec<Vec<f32>>,
    /// Elements of optimizer state this rank holds.
    state: usize,
}

/// `STEPS` optimizer steps as rank `comm.rank()`: the per-step body of the trainer's workers.
fn train<B: Backend, C: Communicator<B>>(be: &B, comm: &C, zero1: bool) -> Run {
    let cfg = config();
    let hyper = hyper();
    let mut model = Llama::from_tensors(be, cfg.clone(), &init_weights(&cfg, 5, 0.1)).unwrap();
    let mut opt = DpAdamW::new(be, comm, &mut model, &hyper, zero1).unwrap();
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for step in 1..=STEPS {
        let rows = rows(step, cfg.vocab_size as u32);
        let refs: Vec<&Row> = rows.iter().collect();
        let (loss, _) = local_grads(
            be,
            &mut model,
            &refs,
            &hyper,
            comm.rank(),
            comm.world_size(),
        )
        .unwrap();
        losses.push(comm.all_reduce_scalar(loss, ReduceOp::Sum).unwrap());
        norms.push(opt.update(be, comm, &mut model, LR).unwrap());
    }
    let masters = opt.params_to_tensors(be, comm, &model).unwrap();
    let forward = model
        .params
        .iter()
        .map(|p| be.download(p).unwrap())
        .collect();
    Run {
        losses,
        norms,
        masters,
        forward,
        state: opt.state_elements(be),
    }
}

fn cpu_group(world: usize, zero1: bool) -> Vec<Run> {
    let comms = ThreadComm::group(world);
    std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .map(|c| s.spawn(move || train(&CpuBackend::with_threads(1).unwrap(), &c, zero1)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn single() -> Run {
    train(&CpuBackend::with_threads(1).unwrap(), &Solo, false)
}

fn worst_rel(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f32::max)
}

/// How the group's fp32 master weights are compared with the single worker's.
enum Params {
    /// Elementwise, relative to `1 + |w|`.
    Close(f32),
    /// The updates (weights minus their initial values) of all tensors together point the same
    /// way: cosine at least this (bf16 gradients flip the sign of AdamW's step where they are
    /// tiny, so elementwise bounds would only restate the learning rate).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    SameDirection(f64),
}

/// Checks a group against the single worker: losses within `tol_loss` and norms within twice
/// that (relative), the fp32 masters as `params` says, and every rank holding the same forward
/// parameters and losses.
fn check_group(what: &str, ranks: &[Run], one: &Run, tol_loss: f64, params: Params) {
    for (s, (a, b)) in ranks[0].losses.iter().zip(&one.losses).enumerate() {
        assert!(
            (a - b).abs() <= tol_loss * b.abs().max(1.0),
            "{what} step {}: loss {a} vs one worker {b}",
            s + 1
        );
    }
    for (s, (a, b)) in ranks[0].norms.iter().zip(&one.norms).enumerate() {
        assert!(
            (a - b).abs() <= 2.0 * tol_loss * b.max(1e-3),
            "{what} step {}: gradient norm {a} vs one worker {b}",
            s + 1
        );
    }
    let (got, want) = (
        ranks[0].masters.as_ref().expect("rank 0 gets the weights"),
        one.masters.as_ref().unwrap(),
    );
    assert_eq!(got.len(), want.len());
    match params {
        Params::Close(tol) => {
            for (name, w) in want {
                let worst = worst_rel(&got[name].data, &w.data);
                assert!(
                    worst <= tol,
                    "{what} {name}: worst relative diff {worst} from one worker"
                );
            }
        }
        Params::SameDirection(min) => {
            let init = init_weights(&config(), 5, 0.1);
            let (mut dot, mut ng, mut nw) = (0.0f64, 0.0f64, 0.0f64);
            for (name, w) in want {
                for ((g, w), i) in got[name].data.iter().zip(&w.data).zip(&init[name].data) {
                    let (dg, dw) = (f64::from(g - i), f64::from(w - i));
                    dot += dg * dw;
                    ng += dg * dg;
                    nw += dw * dw;
                }
            }
            let cos = dot / (ng.sqrt() * nw.sqrt()).max(1e-30);
            eprintln!("{what}: cosine of the weight updates with one worker's {cos:.4}");
            assert!(
                cos >= min,
                "{what}: the weight updates point elsewhere than one worker's (cosine {cos:.4})"
            );
        }
    }
    for (r, run) in ranks.iter().enumerate().skip(1) {
        assert!(run.masters.is_none(), "{what}: rank {r} got the weights");
        assert_eq!(
            run.forward, ranks[0].forward,
            "{what}: rank {r} holds other parameters than rank 0"
        );
        assert_eq!(run.losses, ranks[0].losses, "{what}: rank {r} losses");
    }
}

fn check_cpu(world: usize, zero1: bool) {
    let one = single();
    let init = init_weights(&config(), 5, 0.1);
    let moved = one
        .masters
        .as_ref()
        .unwrap()
        .iter()
        .map(|(name, t)| worst_rel(&t.data, &init[name].data))
        .fold(0.0f32, f32::max);
    assert!(moved > 1e-3, "training did not move the parameters");
    let ranks = cpu_group(world, zero1);
    check_group(
        &format!("{world} CPU workers, zero1={zero1}"),
        &ranks,
        &one,
        1e-5,
        Params::Close(2e-5),
    );
    let specs = Llama::from_tensors(&CpuBackend::new(), config(), &init)
        .unwrap()
        .specs;
    let full: usize = specs.iter().map(|s| 2 * s.numel()).sum();
    assert_eq!(one.state, full);
    for run in &ranks {
        let want = if zero1 {
            specs.iter().map(|s| 2 * shard_len(s.numel(), world)).sum()
        } else {
            full
        };
        assert_eq!(run.state, want, "zero1={zero1}: optimizer state per rank");
    }
}

#[test]
fn two_workers_on_halves_equal_one_worker_on_the_batch() {
    check_cpu(2, false);
}

#[test]
fn zero1_two_workers_on_halves_equal_one_worker_on_the_batch() {
    check_cpu(2, true);
}

/// Four rows over three ranks: 2, 2 and 0 rows (the last rank has no micro-batch).
#[test]
fn zero1_three_workers_with_an_idle_rank_equal_one_worker() {
    check_cpu(3, true);
}

/// The same steps on every visible GPU, one thread per GPU over NCCL (as a `cuda:0..N` job runs),
/// bf16 mixed precision, plain and ZeRO-1, against one CPU worker in fp32: losses within 3%,
/// gradient norms within 6%, weight updates in the same direction (cosine >= 0.95); every rank
/// holds the same parameters. With one GPU the NCCL group has one rank.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_nccl_data_parallel_steps_on_every_visible_gpu() {
    use koala_kernels::comm::NcclComm;
    use koala_kernels::cuda::{CudaBackend, Precision, device_count};
    let n = device_count().unwrap_or_else(|e| panic!("needs an NVIDIA GPU: {e}"));
    let backends: Vec<CudaBackend> = (0..n)
        .map(|o| {
            CudaBackend::new(o, Precision::Bf16).unwrap_or_else(|e| {
                panic!("needs an NVIDIA GPU: cuda:{o} could not be opened: {e}")
            })
        })
        .collect();
    let one = single();
    for zero1 in [false, true] {
        let id = NcclComm::new_id().unwrap_or_else(|e| panic!("NCCL unique id: {e}"));
        let ranks: Vec<Run> = std::thread::scope(|s| {
            let hs: Vec<_> = backends
                .iter()
                .enumerate()
                .map(|(rank, be)| {
                    s.spawn(move || {
                        be.context()
                            .bind_to_thread()
                            .unwrap_or_else(|e| panic!("cuda:{rank}: bind context: {e:?}"));
                        let comm = NcclComm::new(be, rank, n, id)
                            .unwrap_or_else(|e| panic!("cuda:{rank}: NCCL init: {e}"));
                        train(be, &comm, zero1)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        eprintln!(
            "{n} GPU(s), zero1={zero1}: losses {:?} vs CPU {:?}; norms {:?} vs {:?}",
            ranks[0].losses, one.losses, ranks[0].norms, one.norms
        );
        check_group(
            &format!("{n} GPU(s) over NCCL, zero1={zero1}"),
            &ranks,
            &one,
            3e-2,
            Params::SameDirection(0.95),
        );
    }
}
