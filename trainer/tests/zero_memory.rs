//! ZeRO-3 and activation checkpointing, measured: what each data-parallel rank holds.
//!
//! A global allocator keeps one account per rank: each rank runs on a one-thread rayon pool of
//! its own (its ops too: `CpuBackend::new` runs on the enclosing pool), whose thread charges
//! every allocation to the rank. So the figures are each rank's own bytes (its ThreadComm
//! staging copies included), not the process's.
//!
//! Per rank, above what was allocated before the model: after building the model and optimizer
//! (`setup`), between steps once the activations are freed (`between`), and the peak during a
//! step (`peak`; the second step, after a warm-up). Every rank runs one micro-batch of the same
//! shape, so the activations are the same per rank whatever the world size.
//!
//! The checks: under ZeRO-3 the parameters, gradients and optimizer state per rank fall to
//! about `1/N` (held between steps, and at the step's peak with the activations taken out), and
//! the planner (`plan::plan`, CPU f32) predicts each measured peak within 10%.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};

use koala_kernels::comm::{Communicator, ReduceOp, ThreadComm};
use koala_kernels::cpu::CpuBackend;
use koala_trainer::data::Row;
use koala_trainer::dp::DpAdamW;
use koala_trainer::model::Llama;
use koala_trainer::plan::{self, Device, Dtype, Setup};
use koala_trainer::train::local_grads_with;
use koala_trainer::weights::{Tensors, init_weights};
use koala_trainer::{Hyper, LlamaConfig};

const ACCOUNTS: usize = 8;
static CURRENT: [AtomicIsize; ACCOUNTS] = [const { AtomicIsize::new(0) }; ACCOUNTS];
static PEAK: [AtomicIsize; ACCOUNTS] = [const { AtomicIsize::new(0) }; ACCOUNTS];

thread_local! {
    /// The rank this thread allocates for (`usize::MAX`: none).
    static ACCOUNT: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn account() -> Option<usize> {
    ACCOUNT.try_with(Cell::get).ok().filter(|&a| a < ACCOUNTS)
}

fn grew(by: usize) {
    if let Some(a) = account() {
        let now = CURRENT[a].fetch_add(by as isize, Ordering::SeqCst) + by as isize;
        PEAK[a].fetch_max(now, Ordering::SeqCst);
    }
}

fn shrank(by: usize) {
    if let Some(a) = account() {
        CURRENT[a].fetch_sub(by as isize, Ordering::SeqCst);
    }
}

/// `System`, charging each thread's allocations to its account.
struct PerRank;

// SAFETY: every call forwards to `System` with the caller's arguments unchanged; the counters
// are atomics and a const-initialised thread-local, and never affect the returned memory.
unsafe impl GlobalAlloc for PerRank {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (the caller upholds `GlobalAlloc::alloc`'s contract).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (hence from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `dealloc`; `new_size` is the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: PerRank = PerRank;

/// 8 layers, so that one layer in flight is a small part of the whole; untied head.
const CONFIG: &str = r#"{"vocab_size": 256, "hidden_size": 128, "intermediate_size": 256,
    "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2}"#;
/// Rows per rank (one micro-batch each) and tokens per row.
const B: usize = 2;
const T: usize = 32;

/// One rank's bytes, above what it had allocated before the model.
#[derive(Clone, Copy, Debug)]
struct Mem {
    setup: isize,
    between: isize,
    peak: isize,
    activations: isize,
}

fn rows(world: usize, step: u32) -> Vec<Row> {
    (0..B * world)
        .map(|r| Row {
            tokens: (0..T as u32)
                .map(|i| (i * 7 + r as u32 * 11 + step * 3) % 256)
                .collect(),
            loss_mask: vec![1; T],
            segment_ids: vec![0; T],
        })
        .collect()
}

/// A rank's run, on its own pool's thread (charged to account `comm.rank()`).
fn rank_run(comm: &ThreadComm, host: &Tensors, zero: u8, checkpointing: bool) -> Mem {
    let (rank, world) = (comm.rank(), comm.world_size());
    let cur = || CURRENT[rank].load(Ordering::SeqCst);
    let cfg = LlamaConfig::from_json_str(CONFIG).unwrap();
    let hyper = Hyper {
        batch_size: B * world,
        micro_batch_size: B,
        max_len: T,
        ..Hyper::default()
    };
    let be = CpuBackend::new();
    let base = cur();
    let mut model = Llama::from_tensors(&be, cfg, host).unwrap();
    model.set_checkpointing(checkpointing);
    let mut opt = DpAdamW::new(&be, comm, &mut model, &hyper, zero).unwrap();
    let setup = cur() - base;
    let mut step = |s: u32| {
        let rows = rows(world, s);
        let refs: Vec<&Row> = rows.iter().collect();
        let (loss, _) = local_grads_with(
            &be,
            &mut model,
            &refs,
            &hyper,
            rank,
            world,
            &mut opt.hook(comm),
        )
        .unwrap();
        comm.all_reduce_scalar(loss, ReduceOp::Sum).unwrap();
        opt.update(&be, comm, &mut model, 1e-3).unwrap();
    };
    // Warm-up: the RoPE table and the activations are allocated once, then reused.
    step(1);
    PEAK[rank].store(cur(), Ordering::SeqCst);
    step(2);
    let peak = PEAK[rank].load(Ordering::SeqCst) - base;
    let with_acts = cur() - base;
    model.release_activations();
    let between = cur() - base;
    Mem {
        setup,
        between,
        peak,
        activations: with_acts - between,
    }
}

/// Every rank's bytes for a group of `world` at ZeRO stage `zero`.
fn measure(world: usize, zero: u8, checkpointing: bool) -> Vec<Mem> {
    let cfg = LlamaConfig::from_json_str(CONFIG).unwrap();
    let host = init_weights(&cfg, 5, 0.02);
    let host = &host;
    let comms = ThreadComm::group(world);
    std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                s.spawn(move || {
                    let rank = comm.rank();
                    CURRENT[rank].store(0, Ordering::SeqCst);
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .start_handler(move |_| ACCOUNT.with(|a| a.set(rank)))
                        .build()
                        .unwrap();
                    pool.install(move || rank_run(&comm, host, zero, checkpointing))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn mib(x: isize) -> f64 {
    x as f64 / f64::from(1 << 20)
}

/// The planner's CPU f32 prediction per rank.
fn planned(world: usize, zero: u8, checkpointing: bool) -> isize {
    let cfg = LlamaConfig::from_json_str(CONFIG).unwrap();
    let mut s = Setup::new("zero memory", cfg, world, T, B);
    s.device = Device::Cpu { threads: 1 };
    s.dtype = Dtype::F32;
    s.zero = zero;
    s.checkpointing = checkpointing;
    plan::plan(&s).unwrap().total as isize
}

#[test]
fn zero3_holds_about_one_nth_per_rank_and_checkpointing_one_layer_of_activations() {
    let one = measure(1, 0, false)[0];
    let one_ckpt = measure(1, 0, true)[0];
    println!("1 rank, ZeRO-0: {one:?}");
    println!("1 rank, ZeRO-0, checkpointing: {one_ckpt:?}");
    let mut failures = Vec::new();
    let mut check_plan = |what: &str, m: &Mem, world, zero, ckpt| {
        let p = planned(world, zero, ckpt);
        let err = p as f64 / m.peak as f64 - 1.0;
        println!(
            "{what}: peak measured {:.2} MiB, planned {:.2} MiB ({:+.1}%)",
            mib(m.peak),
            mib(p),
            100.0 * err
        );
        if err.abs() > 0.10 {
            failures.push(format!("{what}: planner off by {:+.1}%", 100.0 * err));
        }
    };
    check_plan("1 rank, ZeRO-0", &one, 1, 0, false);
    check_plan("1 rank, ZeRO-0, checkpointing", &one_ckpt, 1, 0, true);
    // Checkpointing: the same state, far fewer activations.
    assert_eq!(
        one_ckpt.between, one.between,
        "checkpointing changed the state"
    );
    let acts_ratio = one_ckpt.activations as f64 / one.activations as f64;
    println!("activations with checkpointing: {acts_ratio:.3} of without");
    assert!(
        acts_ratio < 0.45,
        "checkpointing kept {acts_ratio:.3} of the activations of 8 layers"
    );
    // The state of one rank alone: parameters, gradients, AdamW m and v, all fp32.
    let state = one.between as f64;
    let state_peak = (one.peak - one.activations) as f64;
    for world in [2, 4] {
        for ckpt in [false, true] {
            let ranks = measure(world, 3, ckpt);
            for (r, m) in ranks.iter().enumerate() {
                let what = format!("{world} ranks, ZeRO-3, checkpointing {ckpt}, rank {r}");
                println!("{what}: {m:?}");
                let built = m.setup as f64 / one.setup as f64;
                assert!(
                    built <= 1.0 / world as f64 + 0.02,
                    "{what}: holds {built:.3} of the unsharded model and optimizer once built"
                );
                let held = m.between as f64 / state;
                let at_peak = (m.peak - m.activations) as f64 / state_peak;
                println!(
                    "    built {built:.3} of one rank's, held between steps {held:.3}, at the \
                     peak {at_peak:.3} (1/N = {:.3})",
                    1.0 / world as f64
                );
                // 1/N of the state, plus the last collective's staging copy between steps,
                // plus one layer's gathered weights and gradients at the peak.
                assert!(
                    held <= 1.0 / world as f64 + 0.05,
                    "{what}: holds {held:.3} of the unsharded state between steps"
                );
                assert!(
                    at_peak <= 1.0 / world as f64 + 0.15,
                    "{what}: peaks at {at_peak:.3} of the unsharded state"
                );
                if r == 0 {
                    check_plan(&what, m, world, 3, ckpt);
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}
