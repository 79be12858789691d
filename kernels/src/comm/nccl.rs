//! [`NcclComm`]: the [`Communicator`] over NVIDIA NCCL (cudarc's `nccl` bindings), one rank per GPU.
//!
//! Two ways to build a group:
//! * one process per GPU: every process calls [`NcclComm::from_id_file`] with the same path; rank 0
//!   creates the NCCL unique id and writes it (atomically: temp file + rename), the others wait for
//!   the file and read it (the daemon can pass the same path to every worker it spawns);
//! * one thread per GPU in one process: create the id once with [`NcclComm::new_id`], and call
//!   [`NcclComm::new`] from each thread with its rank (NCCL's init is collective, so the calls must
//!   run concurrently).
//!
//! Collectives run on the backend's stream, so they are ordered with its kernels. Reductions run in
//! fp32 (a bf16 buffer is converted to fp32 and back); all-gather moves the buffer's own bytes.
use std::path::Path;
use std::time::{Duration, Instant};

use cudarc::nccl::{Comm, Id};

use super::{Communicator, ReduceOp, shard_len};
use crate::cuda::{CudaBackend, CudaBuf, DType};
use crate::{Error, Result};

/// One rank of an NCCL group.
pub struct NcclComm {
    comm: Comm,
    rank: usize,
    world: usize,
}

// SAFETY: an NCCL communicator may be driven from any thread as long as no two threads use it at
// once; `NcclComm` is not `Sync`, so it can move to its worker thread but never be shared.
unsafe impl Send for NcclComm {}

fn nccl_err(what: &str) -> impl FnOnce(cudarc::nccl::result::NcclError) -> Error + '_ {
    move |e| Error::Device(format!("NCCL {what}: {e:?}"))
}

fn nccl_op(op: ReduceOp) -> cudarc::nccl::ReduceOp {
    match op {
        ReduceOp::Sum => cudarc::nccl::ReduceOp::Sum,
        ReduceOp::Avg => cudarc::nccl::ReduceOp::Avg,
    }
}

/// Whether libnccl can be loaded (never panics).
pub fn nccl_present() -> bool {
    // SAFETY: probes `dlopen` only.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

impl NcclComm {
    /// A fresh NCCL unique id (rank 0 creates it and shares it with the others).
    pub fn new_id() -> Result<Id> {
        if !nccl_present() {
            return Err(Error::Unavailable("NCCL (libnccl.so.2) not found".into()));
        }
        Id::new().map_err(nccl_err("get unique id"))
    }

    /// Joins the group `id` as `rank` of `world` on the backend's device and stream (collective:
    /// every rank must call it concurrently).
    pub fn new(be: &CudaBackend, rank: usize, world: usize, id: Id) -> Result<Self> {
        if rank >= world {
            return Err(Error::Shape {
                op: "NcclComm::new",
                detail: format!("rank {rank} >= world {world}"),
            });
        }
        if !nccl_present() {
            return Err(Error::Unavailable("NCCL (libnccl.so.2) not found".into()));
        }
        let comm =
            Comm::from_rank(be.stream().clone(), rank, world, id).map_err(nccl_err("init rank"))?;
        Ok(Self { comm, rank, world })
    }

    /// Joins a group whose id is exchanged through the file `path` (one process per GPU). Rank 0
    /// writes the id; the other ranks wait up to `timeout` for it.
    pub fn from_id_file(
        be: &CudaBackend,
        rank: usize,
        world: usize,
        path: &Path,
        timeout: Duration,
    ) -> Result<Self> {
        let id = if rank == 0 {
            let id = Self::new_id()?;
            write_id_file(path, &id)?;
            id
        } else {
            read_id_file(path, timeout)?
        };
        Self::new(be, rank, world, id)
    }

    fn pad_f32(&self, be: &CudaBackend, buf: &CudaBuf, len: usize) -> Result<CudaBuf> {
        let mut out = be.zeros_dtype(len, DType::F32)?;
        let src = be.convert(buf, DType::F32)?;
        let n = src.len();
        if let (Some(s), Some(mut d)) = (src.bytes(), out.bytes_mut()) {
            let mut d = d.slice_mut(0..n * 4);
            be.stream()
                .memcpy_dtod(&s, &mut d)
                .map_err(|e| Error::Device(format!("copy: {e:?}")))?;
        }
        Ok(out)
    }
}

/// Writes an NCCL id to `path` atomically (temp file, then rename).
pub fn write_id_file(path: &Path, id: &Id) -> Result<()> {
    let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &bytes)
        .map_err(|e| Error::Device(format!("writing {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::Device(format!("renaming to {}: {e}", path.display())))
}

/// Waits for and reads an NCCL id written by [`write_id_file`].
pub fn read_id_file(path: &Path, timeout: Duration) -> Result<Id> {
    let start = Instant::now();
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            if bytes.len() == 128 {
                let mut internal = [0 as std::ffi::c_char; 128];
                for (d, s) in internal.iter_mut().zip(bytes) {
                    *d = s as std::ffi::c_char;
                }
                return Ok(Id::uninit(internal));
            }
            return Err(Error::Device(format!(
                "{}: NCCL id file has {} bytes, expected 128",
                path.display(),
                bytes.len()
            )));
        }
        if start.elapsed() > timeout {
            return Err(Error::Unavailable(format!(
                "timed out after {timeout:?} waiting for the NCCL id file {}",
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Communicator<CudaBackend> for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce(&self, be: &CudaBackend, buf: &mut CudaBuf, op: ReduceOp) -> Result<()> {
        let dtype = buf.dtype();
        be.ensure_dtype(buf, DType::F32)?;
        if let Some(s) = buf.f32_mut() {
            self.comm
                .all_reduce_in_place(s, &nccl_op(op))
                .map_err(nccl_err("all_reduce"))?;
        }
        be.ensure_dtype(buf, dtype)
    }

    fn reduce_scatter(
        &self,
        be: &CudaBackend,
        full: &CudaBuf,
        shard: &mut CudaBuf,
        op: ReduceOp,
    ) -> Result<()> {
        let s = shard_len(full.len(), self.world);
        if shard.len() != s {
            return Err(Error::Shape {
                op: "reduce_scatter",
                detail: format!("shard has {} elements, expected {s}", shard.len()),
            });
        }
        let send = self.pad_f32(be, full, s * self.world)?;
        be.ensure_dtype(shard, DType::F32)?;
        let (Some(recv), Some(src)) = (shard.f32_mut(), send.f32_ref()) else {
            return Err(Error::Device(
                "reduce_scatter: fp32 buffers expected".into(),
            ));
        };
        self.comm
            .reduce_scatter(src, recv, &nccl_op(op))
            .map_err(nccl_err("reduce_scatter"))?;
        Ok(())
    }

    fn all_gather(&self, be: &CudaBackend, shard: &CudaBuf, full: &mut CudaBuf) -> Result<()> {
        let s = shard_len(full.len(), self.world);
        if shard.len() != s {
            return Err(Error::Shape {
                op: "all_gather",
                detail: format!("shard has {} elements, expected {s}", shard.len()),
            });
        }
        let dtype = full.dtype();
        let shard = be.convert(shard, dtype)?;
        let mut gathered = be.zeros_dtype(s * self.world, dtype)?;
        let len_bytes = full.len() * if dtype == DType::F32 { 4 } else { 2 };
        {
            let (Some(src), Some(mut dst)) = (shard.bytes(), gathered.bytes_mut()) else {
                return Err(Error::Device("all_gather: empty buffer".into()));
            };
            self.comm
                .all_gather(&src, &mut dst)
                .map_err(nccl_err("all_gather"))?;
        }
        {
            let (Some(src), Some(mut dst)) = (gathered.bytes(), full.bytes_mut()) else {
                return Err(Error::Device("all_gather: empty buffer".into()));
            };
            let src = src.slice(0..len_bytes);
            be.stream()
                .memcpy_dtod(&src, &mut dst)
                .map_err(|e| Error::Device(format!("copy: {e:?}")))?;
        }
        // `full` now holds values gathered from the shards (which step, and keep their own
        // masters): a master copy it carried is stale, so it is dropped, freeing its memory.
        be.drop_master(full);
        Ok(())
    }

    fn all_reduce_scalar(&self, x: f64, op: ReduceOp) -> Result<f64> {
        let stream = self.comm.stream();
        let mut d = stream
            .clone_htod(&[x])
            .map_err(|e| Error::Device(format!("upload: {e:?}")))?;
        self.comm
            .all_reduce_in_place(&mut d, &nccl_op(op))
            .map_err(nccl_err("all_reduce"))?;
        let h = stream
            .clone_dtoh(&d)
            .map_err(|e| Error::Device(format!("download: {e:?}")))?;
        h.first()
            .copied()
            .ok_or_else(|| Error::Device("all_reduce_scalar: empty".into()))
    }
}
