//! Data parallelism's collectives: a [`Communicator`] with all-reduce, reduce-scatter and
//! all-gather, a CPU implementation over threads ([`ThreadComm`]), an NCCL implementation on GPUs
//! ([`NcclComm`], feature `cuda`), and the [`launch`]er of a group of workers.
//!
//! The data-parallel training step itself (gradient sum, global-norm clipping, AdamW, ZeRO-1
//! sharding of the optimizer state) is the trainer's: `koala_trainer::dp::DpAdamW`, on the
//! trainer's `Llama`. Its tests (`trainer/tests/data_parallel.rs`, `trainer/tests/dp_train.rs`)
//! run N workers on slices of a batch against one worker on the whole batch.
//!
//! # Sharding convention
//!
//! A tensor of `len` elements is cut into `world` shards of `shard_len(len, world)` =
//! `ceil(len / world)` elements; shard `r` covers [`shard_range`]`(len, world, r)`, and the last
//! shards are zero-padded up to `shard_len` (so every rank's shard buffer has the same length, as
//! NCCL requires).
//!
//! ```
//! use koala_kernels::comm::{Communicator, ReduceOp, ThreadComm};
//! use koala_kernels::CpuBackend;
//!
//! let comms = ThreadComm::group(2);
//! let outs: Vec<Vec<f32>> = std::thread::scope(|s| {
//!     let hs: Vec<_> = comms
//!         .into_iter()
//!         .map(|c| {
//!             s.spawn(move || {
//!                 let be = CpuBackend::new();
//!                 let mut buf = vec![c.rank() as f32 + 1.0; 3];
//!                 c.all_reduce(&be, &mut buf, ReduceOp::Avg).unwrap();
//!                 buf
//!             })
//!         })
//!         .collect();
//!     hs.into_iter().map(|h| h.join().unwrap()).collect()
//! });
//! assert_eq!(outs, vec![vec![1.5; 3], vec![1.5; 3]]);
//! ```
mod launch;
#[cfg(feature = "cuda")]
mod nccl;
mod threads;

pub use launch::{Worker, launch, launch_cpu};
#[cfg(feature = "cuda")]
pub use nccl::{NcclComm, nccl_present, read_id_file, write_id_file};
pub use threads::ThreadComm;

use crate::{Backend, Result};

/// The reduction of a collective.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// The sum divided by the number of ranks.
    Avg,
}

/// `ceil(len / world)`: the length of every rank's shard.
pub fn shard_len(len: usize, world: usize) -> usize {
    len.div_ceil(world.max(1))
}

/// The element range of `full` that rank `rank` owns (possibly shorter than [`shard_len`], or
/// empty, for the last ranks).
pub fn shard_range(len: usize, world: usize, rank: usize) -> std::ops::Range<usize> {
    let s = shard_len(len, world);
    let start = (rank * s).min(len);
    let end = ((rank + 1) * s).min(len);
    start..end
}

/// Collectives across the workers of one data-parallel group, on buffers of backend `B`.
///
/// Every rank must call the same collectives in the same order with buffers of the same length
/// (as with NCCL). Implementations are deterministic: every rank receives bit-identical results.
pub trait Communicator<B: Backend>: Send {
    /// This worker's rank, `0..world_size`.
    fn rank(&self) -> usize;
    /// The number of workers.
    fn world_size(&self) -> usize;
    /// In place: `buf = op over ranks (buf)`.
    fn all_reduce(&self, be: &B, buf: &mut B::Buf, op: ReduceOp) -> Result<()>;
    /// `shard = op over ranks (full[shard_range(rank)])`, zero-padded; `shard` has
    /// `shard_len(len(full), world)` elements.
    fn reduce_scatter(&self, be: &B, full: &B::Buf, shard: &mut B::Buf, op: ReduceOp)
    -> Result<()>;
    /// `full[shard_range(r)] = shard of rank r` for every rank `r` (padding dropped).
    fn all_gather(&self, be: &B, shard: &B::Buf, full: &mut B::Buf) -> Result<()>;
    /// `op` over ranks of one `f64` scalar (losses, norms), exact in `f64`.
    fn all_reduce_scalar(&self, x: f64, op: ReduceOp) -> Result<f64>;

    /// A bucket of reduce-scatters: `shards[i]` as [`Communicator::reduce_scatter`] of
    /// `fulls[i]`, with the same results bit for bit. An implementation may run them as one
    /// collective ([`ThreadComm`]: one rendezvous); the default runs them one after another.
    fn reduce_scatter_many(
        &self,
        be: &B,
        fulls: &[&B::Buf],
        shards: &mut [&mut B::Buf],
        op: ReduceOp,
    ) -> Result<()> {
        check_bucket("reduce_scatter_many", fulls.len(), shards.len())?;
        for (full, shard) in fulls.iter().zip(shards.iter_mut()) {
            self.reduce_scatter(be, full, shard, op)?;
        }
        Ok(())
    }

    /// A bucket of all-gathers: `fulls[i]` as [`Communicator::all_gather`] of `shards[i]`. An
    /// implementation may run them as one collective; the default runs them one after another.
    fn all_gather_many(&self, be: &B, shards: &[&B::Buf], fulls: &mut [&mut B::Buf]) -> Result<()> {
        check_bucket("all_gather_many", shards.len(), fulls.len())?;
        for (shard, full) in shards.iter().zip(fulls.iter_mut()) {
            self.all_gather(be, shard, full)?;
        }
        Ok(())
    }
}

/// A bucket's inputs and outputs pair up.
fn check_bucket(op: &'static str, inputs: usize, outputs: usize) -> Result<()> {
    if inputs != outputs {
        return Err(crate::Error::Shape {
            op,
            detail: format!("{inputs} inputs for {outputs} outputs"),
        });
    }
    Ok(())
}

/// This rank's shard of host values, no communication: `full[shard_range(rank)]`, zero-padded to
/// [`shard_len`]. ZeRO-1 cuts its state with it on the host, from full-precision values
/// ([`Backend::download_param`], checkpoints), and uploads the shard as a parameter or as fp32
/// state, so that on a bf16 backend nothing that steps starts rounded.
pub fn host_shard(full: &[f32], world: usize, rank: usize) -> Vec<f32> {
    let range = shard_range(full.len(), world, rank);
    let mut shard = vec![0.0f32; shard_len(full.len(), world)];
    shard[..range.len()].copy_from_slice(&full[range]);
    shard
}

/// The communicator of a group of one: every collective is the identity (a copy into the output,
/// which keeps the output's dtype: reduce-scatter into an fp32 state buffer stays fp32).
#[derive(Debug, Default, Clone, Copy)]
pub struct Solo;

impl<B: Backend> Communicator<B> for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce(&self, _be: &B, _buf: &mut B::Buf, _op: ReduceOp) -> Result<()> {
        Ok(())
    }
    fn reduce_scatter(
        &self,
        be: &B,
        full: &B::Buf,
        shard: &mut B::Buf,
        _op: ReduceOp,
    ) -> Result<()> {
        be.copy(shard, full)
    }
    fn all_gather(&self, be: &B, shard: &B::Buf, full: &mut B::Buf) -> Result<()> {
        be.copy(full, shard)
    }
    fn all_reduce_scalar(&self, x: f64, _op: ReduceOp) -> Result<f64> {
        Ok(x)
    }
}
