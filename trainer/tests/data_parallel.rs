//! Data parallelism with the trainer's own step, the code a job's workers run
//! (`koala_trainer::train`): each rank computes the gradients of the trainer's `Llama` on its rows
//! of the global batch with the global batch's loss weights (`train::local_grads`), and
//! `dp::DpAdamW` sums them across ranks, clips by the global norm and applies AdamW, with the
//! optimizer state whole or sharded (ZeRO-1).
//!
//! * On the CPU (threads, `ThreadComm`): 2 and 3 workers, plain and ZeRO-1/2/3, with and without
//!   activation checkpointing, equal one worker on the whole batch (losses, gradient norms, fp32
//!   master weights) and every rank holds the same parameters; ZeRO keeps `1/world` of the
//!   moments. With one micro-batch per rank ZeRO-2 and ZeRO-3 are bit-identical to ZeRO-1 (the
//!   same reduce-scatter of the same gradients), and checkpointing is bit-identical to keeping
//!   the activations. A rank that fails in the middle of a ZeRO-3 pass makes the others fail
//!   with an error naming it, instead of hanging.
//! * On every visible GPU (NCCL, bf16): the same steps against the CPU run, `#[ignore = "needs an
//!   NVIDIA GPU"]` (run by `scripts/gpu-check.sh` with `--ignored`).
//!
//! The whole training loop on workers (`run` with `workers`, `zero1`, `device`) is tested in
//! `dp_train.rs`.
use koala_kernels::comm::{Communicator, ReduceOp, ThreadComm, shard_len};
use koala_kernels::{Backend, CpuBackend};
use koala_trainer::data::Row;
use koala_trainer::dp::{DpAdamW, Solo};
use koala_trainer::model::{Llama, ParamHook};
use koala_trainer::train::local_grads_with;
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

/// The model of `setup`: [`config`], with the LM head tied to the embedding when it says so.
fn config_for(setup: Setup) -> LlamaConfig {
    LlamaConfig {
        tie_word_embeddings: setup.tied,
        ..config()
    }
}

/// How a run shards and what it keeps.
#[derive(Clone, Copy, Debug)]
struct Setup {
    zero: u8,
    checkpointing: bool,
    /// Rows per micro-batch: 2 gives one worker two micro-batches and two workers one each; 1
    /// gives two workers two each (their gradient sums then round in another order).
    micro: usize,
    /// Tied embeddings: the embedding is also the LM head, so under ZeRO-3 it stays gathered
    /// from the forward's start to the head's backward, and its gradient stays open throughout.
    tied: bool,
}

const PLAIN: Setup = Setup {
    zero: 0,
    checkpointing: false,
    micro: 2,
    tied: false,
};

fn zero(stage: u8) -> Setup {
    Setup {
        zero: stage,
        ..PLAIN
    }
}

fn hyper(micro: usize) -> Hyper {
    Hyper {
        batch_size: B,
        micro_batch_size: micro,
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
fn train<B: Backend, C: Communicator<B>>(be: &B, comm: &C, setup: Setup) -> Run {
    try_train(be, comm, setup, |_| None).unwrap()
}

/// [`train`], with `fail(call)` asked at every hook call of the passes: `Some(error)` makes this
/// rank fail there (a rank that dies in the middle of a pass).
fn try_train<B: Backend, C: Communicator<B>>(
    be: &B,
    comm: &C,
    setup: Setup,
    fail: impl Fn(usize) -> Option<String>,
) -> koala_trainer::Result<Run> {
    let cfg = config_for(setup);
    let hyper = hyper(setup.micro);
    let mut model = Llama::from_tensors(be, cfg.clone(), &init_weights(&cfg, 5, 0.1))?;
    model.set_checkpointing(setup.checkpointing);
    let mut opt = DpAdamW::new(be, comm, &mut model, &hyper, setup.zero)?;
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    let mut calls = 0;
    for step in 1..=STEPS {
        let rows = rows(step, cfg.vocab_size as u32);
        let refs: Vec<&Row> = rows.iter().collect();
        let mut hook = Failing {
            inner: opt.hook(comm),
            calls: &mut calls,
            fail: &fail,
        };
        let (loss, _) = local_grads_with(
            be,
            &mut model,
            &refs,
            &hyper,
            comm.rank(),
            comm.world_size(),
            &mut hook,
        )?;
        losses.push(comm.all_reduce_scalar(loss, ReduceOp::Sum)?);
        norms.push(opt.update(be, comm, &mut model, LR)?);
    }
    let masters = opt.params_to_tensors(be, comm, &model)?;
    // Under ZeRO-3 the model holds no full weights between passes: the masters say it all.
    let forward = if opt.zero_stage() == 3 {
        Vec::new()
    } else {
        model
            .params
            .iter()
            .map(|p| be.download(p).unwrap())
            .collect()
    };
    Ok(Run {
        losses,
        norms,
        masters,
        forward,
        state: opt.state_elements(be),
    })
}

/// A hook that forwards to `inner` and fails where `fail` says.
struct Failing<'a, H, F> {
    inner: H,
    calls: &'a mut usize,
    fail: &'a F,
}

impl<H, F: Fn(usize) -> Option<String>> Failing<'_, H, F> {
    fn tick(&mut self) -> koala_trainer::Result<()> {
        *self.calls += 1;
        match (self.fail)(*self.calls) {
            Some(e) => Err(koala_trainer::Error::Invalid(e)),
            None => Ok(()),
        }
    }
}

impl<B: Backend, H: ParamHook<B>, F: Fn(usize) -> Option<String>> ParamHook<B>
    for Failing<'_, H, F>
{
    fn zero_grads(&mut self, be: &B) -> koala_trainer::Result<()> {
        self.inner.zero_grads(be)
    }
    fn gather(
        &mut self,
        be: &B,
        params: &mut [B::Buf],
        group: std::ops::Range<usize>,
    ) -> koala_trainer::Result<()> {
        self.tick()?;
        self.inner.gather(be, params, group)
    }
    fn release(
        &mut self,
        be: &B,
        params: &mut [B::Buf],
        group: std::ops::Range<usize>,
    ) -> koala_trainer::Result<()> {
        self.inner.release(be, params, group)
    }
    fn open_grads(
        &mut self,
        be: &B,
        grads: &mut [B::Buf],
        group: std::ops::Range<usize>,
    ) -> koala_trainer::Result<()> {
        self.inner.open_grads(be, grads, group)
    }
    fn close_grads(
        &mut self,
        be: &B,
        grads: &mut [B::Buf],
        group: std::ops::Range<usize>,
    ) -> koala_trainer::Result<()> {
        self.inner.close_grads(be, grads, group)
    }
}

fn cpu_group(world: usize, setup: Setup) -> Vec<Run> {
    let comms = ThreadComm::group(world);
    std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .map(|c| s.spawn(move || train(&CpuBackend::with_threads(1).unwrap(), &c, setup)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn single() -> Run {
    single_for(PLAIN)
}

/// One worker on the whole batch, on `setup`'s model.
fn single_for(setup: Setup) -> Run {
    let plain = Setup {
        tied: setup.tied,
        ..PLAIN
    };
    train(&CpuBackend::with_threads(1).unwrap(), &Solo, plain)
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

fn check_cpu(world: usize, setup: Setup) -> Vec<Run> {
    let one = single_for(setup);
    let init = init_weights(&config_for(setup), 5, 0.1);
    let moved = one
        .masters
        .as_ref()
        .unwrap()
        .iter()
        .map(|(name, t)| worst_rel(&t.data, &init[name].data))
        .fold(0.0f32, f32::max);
    assert!(moved > 1e-3, "training did not move the parameters");
    let ranks = cpu_group(world, setup);
    check_group(
        &format!("{world} CPU workers, {setup:?}"),
        &ranks,
        &one,
        1e-5,
        Params::Close(2e-5),
    );
    let specs = Llama::from_tensors(&CpuBackend::new(), config_for(setup), &init)
        .unwrap()
        .specs;
    let full: usize = specs.iter().map(|s| 2 * s.numel()).sum();
    assert_eq!(one.state, full);
    for run in &ranks {
        let want = if setup.zero > 0 {
            specs.iter().map(|s| 2 * shard_len(s.numel(), world)).sum()
        } else {
            full
        };
        assert_eq!(run.state, want, "{setup:?}: optimizer state per rank");
    }
    ranks
}

/// Losses, gradient norms and fp32 master weights bit for bit.
fn assert_bit_identical(what: &str, a: &Run, b: &Run) {
    assert_eq!(a.losses, b.losses, "{what}: losses");
    assert_eq!(a.norms, b.norms, "{what}: gradient norms");
    assert_eq!(a.masters, b.masters, "{what}: master weights");
}

#[test]
fn two_workers_on_halves_equal_one_worker_on_the_batch() {
    check_cpu(2, PLAIN);
}

#[test]
fn zero1_two_workers_on_halves_equal_one_worker_on_the_batch() {
    check_cpu(2, zero(1));
}

/// Four rows over three ranks: 2, 2 and 0 rows (the last rank has no micro-batch).
#[test]
fn zero1_three_workers_with_an_idle_rank_equal_one_worker() {
    check_cpu(3, zero(1));
}

/// ZeRO-2 and ZeRO-3 reduce-scatter each layer's gradients inside the backward and (ZeRO-3)
/// all-gather each layer's weights before use. With one micro-batch per rank that is the same
/// reduce-scatter of the same gradients as ZeRO-1's, so the runs are bit-identical to ZeRO-1;
/// and all of them equal one worker on the whole batch within 2e-5.
#[test]
fn zero2_and_zero3_two_workers_equal_zero1_bit_for_bit_and_one_worker() {
    let z1 = check_cpu(2, zero(1));
    for stage in [2, 3] {
        let z = check_cpu(2, zero(stage));
        assert_bit_identical(&format!("ZeRO-{stage} vs ZeRO-1"), &z[0], &z1[0]);
    }
}

/// The idle third rank makes idle passes, contributing zero gradients to each collective.
#[test]
fn zero3_three_workers_with_an_idle_rank_equal_zero1_and_one_worker() {
    let z1 = check_cpu(3, zero(1));
    let z3 = check_cpu(3, zero(3));
    assert_bit_identical("3 workers, ZeRO-3 vs ZeRO-1", &z3[0], &z1[0]);
}

/// Tied embeddings under ZeRO-2/3: bit-identical to ZeRO-1 and within 2e-5 of one worker.
#[test]
fn zero3_with_tied_embeddings_equals_zero1_and_one_worker() {
    let tied = Setup {
        tied: true,
        ..zero(1)
    };
    let z1 = check_cpu(2, tied);
    for stage in [2, 3] {
        let z = check_cpu(
            2,
            Setup {
                zero: stage,
                ..tied
            },
        );
        assert_bit_identical(&format!("tied, ZeRO-{stage} vs ZeRO-1"), &z[0], &z1[0]);
    }
}

/// Two micro-batches per rank: ZeRO-3 sums the reduced micro-batch gradients, ZeRO-1 reduces
/// the locally summed ones, so the order of the float additions differs; both within 2e-5 of
/// one worker.
#[test]
fn zero3_with_two_micro_batches_per_rank_equals_one_worker() {
    let setup = Setup {
        micro: 1,
        ..zero(3)
    };
    check_cpu(2, setup);
}

/// Activation checkpointing recomputes each layer's forward from its input before its
/// backward: the same kernels on the same inputs, so the run is bit-identical to keeping every
/// layer's activations, alone and under ZeRO-3.
#[test]
fn checkpointing_is_bit_identical_alone_and_under_zero3() {
    let be = CpuBackend::with_threads(1).unwrap();
    let with = Setup {
        checkpointing: true,
        ..PLAIN
    };
    assert_bit_identical(
        "one worker, checkpointing",
        &train(&be, &Solo, with),
        &single(),
    );
    let z3 = check_cpu(2, zero(3));
    let z3c = check_cpu(
        2,
        Setup {
            checkpointing: true,
            ..zero(3)
        },
    );
    assert_bit_identical("2 workers, ZeRO-3 with checkpointing", &z3c[0], &z3[0]);
}

/// A rank that fails in the middle of a ZeRO-3 pass (here at its 4th gather, inside the first
/// step's forward) or panics there: every other rank's next collective fails with an error
/// naming the rank that left, and the group returns instead of hanging.
#[test]
fn a_rank_dying_mid_pass_fails_the_zero3_group_cleanly() {
    for panic in [false, true] {
        let comms = ThreadComm::group(3);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let results: Vec<Result<koala_trainer::Result<Run>, String>> =
                std::thread::scope(|s| {
                    let hs: Vec<_> = comms
                        .into_iter()
                        .map(|c| {
                            s.spawn(move || {
                                let rank = c.rank();
                                let fail = move |call: usize| {
                                    (rank == 1 && call == 4).then(|| {
                                        assert!(!panic, "rank 1 panics mid-pass");
                                        "rank 1 fails mid-pass".to_string()
                                    })
                                };
                                try_train(&CpuBackend::with_threads(1).unwrap(), &c, zero(3), fail)
                            })
                        })
                        .collect();
                    hs.into_iter()
                        .map(|h| h.join().map_err(|_| "panicked".to_string()))
                        .collect()
                });
            let _ = tx.send(results);
        });
        let results = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the group hung after a rank failed");
        match &results[1] {
            Err(p) if panic => assert_eq!(p, "panicked"),
            Ok(Err(e)) if !panic => assert!(e.to_string().contains("fails mid-pass"), "{e}"),
            _ => panic!("rank 1 did not fail as arranged (panic={panic})"),
        }
        for r in [0, 2] {
            match &results[r] {
                Ok(Err(e)) => assert!(
                    e.to_string().contains("rank 1 left the group"),
                    "rank {r}: {e}"
                ),
                Ok(Ok(_)) => panic!("rank {r} finished although rank 1 failed"),
                Err(p) => panic!("rank {r} {p}"),
            }
        }
    }
}

/// The steps of `setup` on every visible GPU, one thread per GPU over NCCL (as a `cuda:0..N` job
/// runs), bf16 mixed precision.
#[cfg(feature = "cuda")]
fn nccl_group(setup: Setup) -> Vec<Run> {
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
    let id = NcclComm::new_id().unwrap_or_else(|e| panic!("NCCL unique id: {e}"));
    std::thread::scope(|s| {
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
                    train(be, &comm, setup)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Checks an NCCL group against one CPU worker in fp32: losses within 3%, gradient norms within
/// 6%, weight updates in the same direction (cosine >= 0.95); every rank holds the same
/// parameters.
#[cfg(feature = "cuda")]
fn check_nccl(setup: Setup) {
    let one = single();
    let ranks = nccl_group(setup);
    let n = ranks.len();
    eprintln!(
        "{n} GPU(s), {setup:?}: losses {:?} vs CPU {:?}; norms {:?} vs {:?}",
        ranks[0].losses, one.losses, ranks[0].norms, one.norms
    );
    check_group(
        &format!("{n} GPU(s) over NCCL, {setup:?}"),
        &ranks,
        &one,
        3e-2,
        Params::SameDirection(0.95),
    );
}

/// The same steps on every visible GPU over NCCL, plain and ZeRO-1, against one CPU worker. With
/// one GPU the NCCL group has one rank.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_nccl_data_parallel_steps_on_every_visible_gpu() {
    check_nccl(PLAIN);
    check_nccl(zero(1));
}

/// ZeRO-3 with activation checkpointing on every visible GPU over NCCL (weights all-gathered per
/// layer in bf16 from the fp32 master shards, gradients reduce-scattered per layer), against one
/// CPU worker. With one GPU there is nothing to shard (the group of one runs ZeRO-0), so this
/// checks checkpointing alone.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_sharded_zero3_with_checkpointing_over_nccl_follows_the_cpu() {
    check_nccl(Setup {
        checkpointing: true,
        ..zero(3)
    });
}
