//! The sharded training step on CPU thread-ranks against the unsharded one, in one run: a
//! stories15M-like LLaMA (dim 288, 6 layers, vocab 32000), a global batch of `--batch` rows of 256
//! tokens split across `--ranks` thread-ranks (one micro-batch each, one core each), and the
//! trainer's own per-step body (`train::local_grads_with` with `DpAdamW::hook`, then
//! `DpAdamW::update`) at ZeRO 0, 1 and 3, and ZeRO-3 with activation checkpointing.
//!
//! The setups take turns for `--rounds` rounds (so drift in the machine's speed hits them all
//! alike); each round times `--steps` steps after a warm-up step, and the figure is the median
//! step over all rounds. Goal (issue 18): ZeRO-3 with 2 ranks within 15% of the unsharded step.
//!
//! `cargo bench -p koala-trainer --bench sharded_step -- [--ranks N] [--batch B] [--steps S] [--rounds R]`
mod common;

use std::time::Instant;

use koala_kernels::comm::{Communicator, ReduceOp, ThreadComm};
use koala_kernels::cpu::CpuBackend;
use koala_trainer::Hyper;
use koala_trainer::data::Row;
use koala_trainer::dp::DpAdamW;
use koala_trainer::model::Llama;
use koala_trainer::train::local_grads_with;
use koala_trainer::weights::{self, Tensors};

use common::{arg, rows, stories15m};

/// The same allocator as the `koala` and `koala-trainerd` binaries that run training.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy)]
struct Setup {
    name: &'static str,
    zero: u8,
    checkpointing: bool,
}

const SETUPS: [Setup; 4] = [
    Setup {
        name: "ZeRO-0 (unsharded)",
        zero: 0,
        checkpointing: false,
    },
    Setup {
        name: "ZeRO-1",
        zero: 1,
        checkpointing: false,
    },
    Setup {
        name: "ZeRO-3",
        zero: 3,
        checkpointing: false,
    },
    Setup {
        name: "ZeRO-3 + checkpointing",
        zero: 3,
        checkpointing: true,
    },
];

/// One rank's step times (after a warm-up step).
fn rank(comm: &ThreadComm, host: &Tensors, rows: &[Row], s: Setup, steps: usize) -> Vec<f64> {
    let be = CpuBackend::with_threads(1).expect("thread pool");
    let cfg = stories15m();
    let world = comm.world_size();
    let hyper = Hyper {
        batch_size: rows.len(),
        micro_batch_size: rows.len().div_ceil(world),
        max_len: 257,
        weight_decay: 0.1,
        ..Hyper::default()
    };
    let mut model = Llama::from_tensors(&be, cfg, host).expect("model");
    model.set_checkpointing(s.checkpointing);
    let mut opt = DpAdamW::new(&be, comm, &mut model, &hyper, s.zero).expect("optimizer");
    let refs: Vec<&Row> = rows.iter().collect();
    let mut times = Vec::new();
    for i in 0..=steps {
        let t0 = Instant::now();
        model.set_train_mode(true);
        let (loss, _) = local_grads_with(
            &be,
            &mut model,
            &refs,
            &hyper,
            comm.rank(),
            world,
            &mut opt.hook(comm),
        )
        .expect("gradients");
        comm.all_reduce_scalar(loss, ReduceOp::Sum).expect("loss");
        opt.update(&be, comm, &mut model, 1e-4).expect("update");
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times
}

fn main() {
    let ranks = arg("--ranks", 2);
    let batch = arg("--batch", 4);
    let steps = arg("--steps", 3);
    let rounds = arg("--rounds", 3);
    let cfg = stories15m();
    let host = weights::init_weights(&cfg, 0, 0.02);
    let rows = rows(batch, 257);
    println!(
        "stories15M-like model, {ranks} thread-ranks x 1 thread, global batch {batch} x 256 \
         tokens, {rounds} rounds x {steps} steps"
    );
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); SETUPS.len()];
    for _ in 0..rounds {
        for (k, &s) in SETUPS.iter().enumerate() {
            let comms = ThreadComm::group(ranks);
            let per_rank: Vec<Vec<f64>> = std::thread::scope(|sc| {
                let hs: Vec<_> = comms
                    .into_iter()
                    .map(|c| {
                        let (host, rows) = (&host, &rows);
                        sc.spawn(move || rank(&c, host, rows, s, steps))
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().expect("rank")).collect()
            });
            // A step ends when its slowest rank ends.
            for i in 0..steps {
                times[k].push(per_rank.iter().map(|t| t[i]).fold(0.0, f64::max));
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&mut times[0]);
    for (k, s) in SETUPS.iter().enumerate() {
        let m = median(&mut times[k]);
        println!(
            "{:<24} median step {m:.3} s, {:.0} tokens/s, {:.3}x the unsharded step's time",
            s.name,
            (batch * 256) as f64 / m,
            m / base
        );
    }
    let z3 = median(&mut times[2]);
    println!(
        "goal: ZeRO-3 within 15% of the unsharded step: {:.3}x ({})",
        z3 / base,
        if z3 / base <= 1.15 { "met" } else { "missed" }
    );
}
