//! Data parallelism with the trainer's own model: two CPU workers (threads, `ThreadComm`) training
//! `Llama` on halves of each batch, with gradients averaged by `DpOptimizer`, end with the same
//! parameters as one worker on the whole batch; plain data parallel and ZeRO-1 (sharded optimizer
//! state). The same code path runs on GPUs with `NcclComm` (docs/gpu.md).
use koala_kernels::comm::{Communicator, DpOptimizer, ReduceOp, ThreadComm};
use koala_kernels::{AdamWParams, Backend, CpuBackend};
use koala_trainer::LlamaConfig;
use koala_trainer::model::{Inputs, Llama};
use koala_trainer::weights::init_weights;

const B: usize = 4;
const T: usize = 12;
const STEPS: u64 = 3;

struct FullBatch {
    ids: Vec<u32>,
    targets: Vec<u32>,
    positions: Vec<u32>,
    segments: Vec<u32>,
    weights: Vec<f32>,
}

/// A packed batch: two documents per row, the first two positions of each row masked, weights a
/// token mean over the whole batch.
fn batch(step: u64, vocab: u32) -> FullBatch {
    let n = B * T;
    let ids: Vec<u32> = (0..n as u32)
        .map(|i| (i * 7 + step as u32 * 13 + 3) % vocab)
        .collect();
    let targets: Vec<u32> = (0..n as u32)
        .map(|i| (i * 11 + step as u32 * 5 + 1) % vocab)
        .collect();
    let split = |r: usize| 4 + r;
    let segments: Vec<u32> = (0..n).map(|i| u32::from(i % T >= split(i / T))).collect();
    let positions: Vec<u32> =
        (0..n).map(|i| if i % T >= split(i / T) { i % T - split(i / T) } else { i % T } as u32).collect();
    let mask: Vec<bool> = (0..n).map(|i| i % T >= 2).collect();
    let count = mask.iter().filter(|&&m| m).count() as f32;
    let weights = mask
        .iter()
        .map(|&m| if m { 1.0 / count } else { 0.0 })
        .collect();
    FullBatch {
        ids,
        targets,
        positions,
        segments,
        weights,
    }
}

fn config() -> LlamaConfig {
    LlamaConfig::from_json_str(
        r#"{"vocab_size": 61, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5}"#,
    )
    .unwrap()
}

fn train(comm: ThreadComm, zero1: bool) -> (Vec<f64>, Vec<Vec<f32>>) {
    let be = CpuBackend::with_threads(1).unwrap();
    let cfg = config();
    let mut model = Llama::from_tensors(&be, cfg.clone(), &init_weights(&cfg, 5, 0.1)).unwrap();
    let mut opt =
        DpOptimizer::new(&be, &comm, &model.params.iter().collect::<Vec<_>>(), zero1).unwrap();
    let world = comm.world_size();
    let rows = B / world;
    let r = comm.rank() * rows * T..(comm.rank() + 1) * rows * T;
    let mut losses = Vec::new();
    for step in 1..=STEPS {
        let full = batch(step, cfg.vocab_size as u32);
        let inp = Inputs::upload(
            &be,
            rows,
            T,
            &full.ids[r.clone()],
            &full.positions[r.clone()],
            &full.segments[r.clone()],
        )
        .unwrap();
        let targets = be.upload_ids(&full.targets[r.clone()]).unwrap();
        // Full-batch weights times `world`: the average of the ranks' gradients is the full gradient.
        let weights: Vec<f32> = full.weights[r.clone()]
            .iter()
            .map(|w| w * world as f32)
            .collect();
        model.zero_grads(&be).unwrap();
        let loss = model
            .forward_backward(&be, &inp, &targets, &weights)
            .unwrap();
        losses.push(comm.all_reduce_scalar(loss, ReduceOp::Avg).unwrap());
        let hp = AdamWParams {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            step,
            grad_scale: 1.0,
        };
        let mut params: Vec<&mut Vec<f32>> = model.params.iter_mut().collect();
        let mut grads: Vec<&mut Vec<f32>> = model.grads.iter_mut().collect();
        opt.step(&be, &comm, &mut params, &mut grads, &hp, Some(1.0))
            .unwrap();
    }
    (losses, model.params.clone())
}

fn group(world: usize, zero1: bool) -> Vec<(Vec<f64>, Vec<Vec<f32>>)> {
    let comms = ThreadComm::group(world);
    std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .map(|c| s.spawn(move || train(c, zero1)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn check(zero1: bool) {
    let (l1, p1) = group(1, false).pop().unwrap();
    let init = init_weights(&config(), 5, 0.1);
    let moved = p1
        .iter()
        .zip(
            Llama::from_tensors(&CpuBackend::new(), config(), &init)
                .unwrap()
                .params,
        )
        .flat_map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .collect::<Vec<_>>()
        })
        .fold(0.0f32, f32::max);
    assert!(moved > 1e-3, "training did not move the parameters");
    let ranks = group(2, zero1);
    for (r, (l, p)) in ranks.iter().enumerate() {
        for (s, (a, b)) in l.iter().zip(&l1).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "zero1={zero1} rank {r} step {s}: loss {a} vs {b}"
            );
        }
        for (i, (a, b)) in p.iter().zip(&p1).enumerate() {
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
                .fold(0.0f32, f32::max);
            assert!(
                worst <= 2e-5,
                "zero1={zero1} rank {r} param {i}: worst relative diff {worst}"
            );
        }
    }
    assert_eq!(
        ranks[0].1, ranks[1].1,
        "the two ranks hold different parameters"
    );
}

#[test]
fn two_workers_on_halves_equal_one_worker_on_the_batch() {
    check(false);
}

#[test]
fn zero1_two_workers_on_halves_equal_one_worker_on_the_batch() {
    check(true);
}
