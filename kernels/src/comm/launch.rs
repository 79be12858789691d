//! Starting a data-parallel group: one worker thread per device, each with its backend and its
//! communicator, running the same generic [`Worker`] code: one thread per GPU over NCCL for
//! `cuda:0..N`, CPU threads over [`ThreadComm`] for `cpu` workers. (The trainer's jobs start
//! their groups in `koala_trainer::train`, the same way; this is the generic form, used by the
//! NCCL collectives test `kernels/tests/comm_nccl.rs`.)
//!
//! ```
//! use koala_kernels::comm::{Communicator, ReduceOp, Worker, launch_cpu};
//! use koala_kernels::{Backend, Result};
//!
//! struct SumRanks;
//! impl Worker for SumRanks {
//!     type Output = f64;
//!     fn run<B: Backend, C: Communicator<B>>(&self, _be: &B, comm: &C) -> Result<f64> {
//!         comm.all_reduce_scalar(comm.rank() as f64, ReduceOp::Sum)
//!     }
//! }
//! assert_eq!(launch_cpu(3, &SumRanks).unwrap(), vec![3.0, 3.0, 3.0]);
//! ```
use super::{Communicator, ThreadComm};
use crate::select::DeviceSpec;
use crate::{Backend, CpuBackend, Error, Result};

/// The per-rank body of a data-parallel job, generic over the backend and the communicator.
pub trait Worker: Sync {
    type Output: Send;
    /// Runs rank `comm.rank()` of `comm.world_size()` on `be`.
    fn run<B: Backend, C: Communicator<B>>(&self, be: &B, comm: &C) -> Result<Self::Output>;
}

fn join_all<T>(results: Vec<std::thread::Result<Result<T>>>) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(results.len());
    for (rank, r) in results.into_iter().enumerate() {
        match r {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::Device(format!(
                    "data-parallel worker {rank} panicked"
                )));
            }
        }
    }
    Ok(out)
}

/// Runs `worker` on `n` CPU workers (threads, each with a CPU backend on its share of the cores).
pub fn launch_cpu<W: Worker>(n: usize, worker: &W) -> Result<Vec<W::Output>> {
    let n = n.max(1);
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    let per = (cores / n).max(1);
    let comms = ThreadComm::group(n);
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                s.spawn(move || -> Result<W::Output> {
                    let be = CpuBackend::with_threads(per)?;
                    worker.run(&be, &comm)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    });
    join_all(results)
}

/// Runs `worker` on `devices`: a single `cpu`, or a list of distinct `cuda:N` (one thread per GPU,
/// bf16 mixed precision, NCCL). `auto` is not accepted here: a job names its devices.
pub fn launch<W: Worker>(devices: &[DeviceSpec], worker: &W) -> Result<Vec<W::Output>> {
    match devices {
        [DeviceSpec::Cpu] => launch_cpu(1, worker),
        [] => Err(Error::Unavailable("no devices given".into())),
        ds if ds.iter().all(|d| matches!(d, DeviceSpec::Cuda(_))) => launch_cuda(ds, worker),
        ds => Err(Error::Unavailable(format!(
            "devices {ds:?}: a data-parallel group is one `cpu` or distinct `cuda:N` devices"
        ))),
    }
}

#[cfg(feature = "cuda")]
fn launch_cuda<W: Worker>(devices: &[DeviceSpec], worker: &W) -> Result<Vec<W::Output>> {
    use crate::cuda::{CudaBackend, Precision};
    let ordinals: Vec<usize> = devices
        .iter()
        .filter_map(|d| {
            if let DeviceSpec::Cuda(n) = d {
                Some(*n)
            } else {
                None
            }
        })
        .collect();
    let world = ordinals.len();
    // Open every device first, so a missing GPU is a clear error before NCCL is involved.
    let backends = ordinals
        .iter()
        .map(|&o| CudaBackend::new(o, Precision::Bf16))
        .collect::<Result<Vec<_>>>()?;
    if world == 1 {
        // Gradient shards are fp32 state (`zeros_f32`), so the plain copy keeps them fp32.
        return Ok(vec![worker.run(&backends[0], &super::Solo)?]);
    }
    let id = super::NcclComm::new_id()?;
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = backends
            .iter()
            .enumerate()
            .map(|(rank, be)| {
                s.spawn(move || -> Result<W::Output> {
                    be.context()
                        .bind_to_thread()
                        .map_err(|e| Error::Device(format!("bind context: {e:?}")))?;
                    let comm = super::NcclComm::new(be, rank, world, id)?;
                    worker.run(be, &comm)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    });
    join_all(results)
}

#[cfg(not(feature = "cuda"))]
fn launch_cuda<W: Worker>(_devices: &[DeviceSpec], _worker: &W) -> Result<Vec<W::Output>> {
    Err(Error::Unavailable(
        "koala-kernels was built without the `cuda` feature".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ranks;
    impl Worker for Ranks {
        type Output = (usize, usize);
        fn run<B: Backend, C: Communicator<B>>(&self, _be: &B, comm: &C) -> Result<(usize, usize)> {
            Ok((comm.rank(), comm.world_size()))
        }
    }

    #[test]
    fn device_lists_that_cannot_form_a_group_are_errors() {
        assert_eq!(launch(&[DeviceSpec::Cpu], &Ranks).unwrap(), vec![(0, 1)]);
        assert_eq!(launch_cpu(3, &Ranks).unwrap(), vec![(0, 3), (1, 3), (2, 3)]);
        assert!(launch(&[], &Ranks).is_err());
        assert!(launch(&[DeviceSpec::Cpu, DeviceSpec::Cuda(0)], &Ranks).is_err());
        assert!(launch(&[DeviceSpec::Auto], &Ranks).is_err());
        // No machine has these GPUs: an error (no driver, or ordinals out of range), not a panic.
        let e = launch(&[DeviceSpec::Cuda(4094), DeviceSpec::Cuda(4095)], &Ranks).unwrap_err();
        assert!(matches!(e, Error::Unavailable(_)), "{e}");
    }
}
