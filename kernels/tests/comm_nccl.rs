//! NCCL: the unique-id exchange through a file (one process per GPU), which needs no GPU (rank 0
//! writes the 128-byte id atomically, the other ranks wait for it, and a missing file times out
//! with a clear error); and the collectives on every visible GPU against the CPU threads'
//! communicator, which needs GPUs and is `#[ignore = "needs an NVIDIA GPU"]` (run by
//! `scripts/gpu-check.sh` with `--ignored`).
#![cfg(feature = "cuda")]

use std::time::{Duration, Instant};

use cudarc::nccl::Id;
use koala_kernels::comm::{
    Communicator, NcclComm, ReduceOp, Worker, launch, launch_cpu, nccl_present, read_id_file,
    shard_len, write_id_file,
};
use koala_kernels::cuda::{CudaBackend, Precision, device_count};
use koala_kernels::select::DeviceSpec;
use koala_kernels::{Backend, Result};

#[test]
fn id_file_round_trip_between_a_writer_and_waiting_readers() {
    let dir = std::env::temp_dir().join(format!("koala-nccl-id-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("nccl.id");
    let _ = std::fs::remove_file(&path);
    let mut internal = [0 as std::ffi::c_char; 128];
    for (i, c) in internal.iter_mut().enumerate() {
        *c = (i as u8).wrapping_mul(37) as std::ffi::c_char;
    }
    let id = Id::uninit(internal);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || read_id_file(&path, Duration::from_secs(20)).unwrap())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(150));
    write_id_file(&path, &id).unwrap();
    for r in readers {
        assert_eq!(r.join().unwrap().internal(), id.internal());
    }
    assert!(
        !path.with_extension("tmp").exists(),
        "the temporary file was renamed away"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_or_bad_id_file_is_an_error() {
    let dir = std::env::temp_dir().join(format!("koala-nccl-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let t0 = Instant::now();
    let e = read_id_file(&dir.join("never"), Duration::from_millis(200))
        .err()
        .unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(200));
    assert!(e.to_string().contains("timed out"), "{e}");
    std::fs::write(dir.join("short"), [1u8; 5]).unwrap();
    let e = read_id_file(&dir.join("short"), Duration::from_millis(200))
        .err()
        .unwrap();
    assert!(e.to_string().contains("5 bytes"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Elements of the collectives' buffers: not a multiple of any world size above 1, so the last
/// shard is padded.
const LEN: usize = 1001;

/// Every collective a data-parallel step uses, on buffers of each dtype the trainer gives them:
/// fp32 state (`upload_f32`, `zeros_f32`: gradients, shards), activation-dtype buffers (`upload`:
/// bf16 on a bf16 GPU backend) and parameters (`upload_param`). The inputs are small integers
/// (exact in bf16, and their sums exact in fp32 in any order), different on every rank.
struct Collectives;

impl Worker for Collectives {
    type Output = Vec<(&'static str, Vec<f64>)>;

    fn run<B: Backend, C: Communicator<B>>(&self, be: &B, comm: &C) -> Result<Self::Output> {
        let (rank, world) = (comm.rank(), comm.world_size());
        let vals = |len: usize, k: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * (k + 3) + rank * 5 + k) % 17) as f32 - 8.0)
                .collect()
        };
        let f64s = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
        let mut out = Vec::new();
        let mut g = be.upload_f32(&vals(LEN, 0))?;
        comm.all_reduce(be, &mut g, ReduceOp::Sum)?;
        out.push(("all_reduce sum (fp32)", f64s(be.download(&g)?)));
        let mut g = be.upload_f32(&vals(LEN, 1))?;
        comm.all_reduce(be, &mut g, ReduceOp::Avg)?;
        out.push(("all_reduce avg (fp32)", f64s(be.download(&g)?)));
        let mut a = be.upload(&vals(LEN, 2))?;
        comm.all_reduce(be, &mut a, ReduceOp::Sum)?;
        out.push(("all_reduce sum (activation dtype)", f64s(be.download(&a)?)));
        let full = be.upload_f32(&vals(LEN, 3))?;
        let mut shard = be.zeros_f32(shard_len(LEN, world))?;
        comm.reduce_scatter(be, &full, &mut shard, ReduceOp::Sum)?;
        out.push(("reduce_scatter sum (fp32)", f64s(be.download(&shard)?)));
        let full = be.upload(&vals(LEN, 4))?;
        let mut shard = be.zeros_f32(shard_len(LEN, world))?;
        comm.reduce_scatter(be, &full, &mut shard, ReduceOp::Avg)?;
        out.push((
            "reduce_scatter avg (activation dtype)",
            f64s(be.download(&shard)?),
        ));
        let shard = be.upload_param(&vals(shard_len(LEN, world), 5))?;
        let mut full = be.upload(&vec![0.0; LEN])?;
        comm.all_gather(be, &shard, &mut full)?;
        out.push(("all_gather (parameter)", f64s(be.download(&full)?)));
        let shard = be.upload_f32(&vals(shard_len(LEN, world), 6))?;
        let mut full = be.zeros_f32(LEN)?;
        comm.all_gather(be, &shard, &mut full)?;
        out.push(("all_gather (fp32)", f64s(be.download(&full)?)));
        let x = rank as f64 * 1.5 + 0.25;
        out.push((
            "all_reduce_scalar sum, avg",
            vec![
                comm.all_reduce_scalar(x, ReduceOp::Sum)?,
                comm.all_reduce_scalar(x, ReduceOp::Avg)?,
            ],
        ));
        Ok(out)
    }
}

/// Compares every rank's outputs with the CPU group's (`ThreadComm`, the reference).
fn check_against_cpu(
    what: &str,
    got: &[Vec<(&'static str, Vec<f64>)>],
    want: &[Vec<(&'static str, Vec<f64>)>],
) {
    assert_eq!(got.len(), want.len(), "{what}: ranks");
    let mut bad = Vec::new();
    for (rank, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what} rank {rank}: outputs");
        for ((name, gv), (_, wv)) in g.iter().zip(w) {
            assert_eq!(gv.len(), wv.len(), "{what} rank {rank} {name}: length");
            let worst = gv
                .iter()
                .zip(wv)
                .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                .fold(0.0f64, f64::max);
            eprintln!("{what} rank {rank} {name}: worst relative diff {worst:.2e}");
            if worst.is_nan() || worst > 1e-6 {
                bad.push(format!("rank {rank} {name}: {worst:.2e}"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: NCCL differs from the CPU communicator: {bad:?}"
    );
}

/// Every NCCL collective on a group of every visible GPU (one thread per GPU, as the trainer's
/// `cuda:0..N` jobs run), in both precisions, against the same collectives on CPU threads; then
/// the same through [`launch`]. With one GPU the NCCL group has one rank.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_nccl_collectives_on_every_visible_gpu() {
    let n = device_count().unwrap_or_else(|e| panic!("needs an NVIDIA GPU: {e}"));
    assert!(
        nccl_present(),
        "needs NCCL: libnccl.so.2 could not be loaded (pip install nvidia-nccl-cu12 and put its \
         nvidia/nccl/lib on LD_LIBRARY_PATH; see docs/gpu.md)"
    );
    eprintln!("NCCL group of {n} GPU(s)");
    let want = launch_cpu(n, &Collectives).unwrap();
    for precision in [Precision::F32, Precision::Bf16] {
        let backends: Vec<CudaBackend> = (0..n)
            .map(|o| {
                CudaBackend::new(o, precision).unwrap_or_else(|e| {
                    panic!("needs an NVIDIA GPU: cuda:{o} ({precision:?}) could not be opened: {e}")
                })
            })
            .collect();
        let id = NcclComm::new_id().unwrap_or_else(|e| panic!("NCCL unique id: {e}"));
        let got: Vec<_> = std::thread::scope(|s| {
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
                        Collectives
                            .run(be, &comm)
                            .unwrap_or_else(|e| panic!("cuda:{rank}: {e}"))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        check_against_cpu(&format!("NCCL x{n} {precision:?}"), &got, &want);
    }
    let devices: Vec<DeviceSpec> = (0..n).map(DeviceSpec::Cuda).collect();
    let got = launch(&devices, &Collectives).unwrap_or_else(|e| panic!("launch cuda:0..{n}: {e}"));
    check_against_cpu(&format!("launch cuda:0..{n}"), &got, &want);
}
