//! [`ThreadComm`]: the [`Communicator`] for CPU workers running as threads of one process.
//!
//! Each collective is a rendezvous: every rank deposits its buffer in its slot, waits at a barrier,
//! then reads all slots and reduces them **in rank order** (so every rank computes bit-identical
//! sums, whatever the thread scheduling), and waits at a second barrier before the slots are reused.
//!
//! A rank that leaves the group (its handle is dropped: the worker returned early with an error,
//! or panicked) releases every rank waiting at, or later arriving at, a barrier with an error
//! naming it, so one failed worker can never hang the others.
use std::sync::{Arc, Condvar, Mutex};

use super::{Communicator, ReduceOp, shard_len, shard_range};
use crate::{CpuBackend, Error, Result};

struct Shared {
    slots: Mutex<Vec<Vec<f32>>>,
    barrier: Rendezvous,
}

/// A reusable barrier that fails, instead of blocking forever, once a rank has left.
struct Rendezvous {
    world: usize,
    state: Mutex<BarrierState>,
    cv: Condvar,
}

#[derive(Default)]
struct BarrierState {
    arrived: usize,
    generation: u64,
    left: Option<usize>,
}

impl Rendezvous {
    fn lock(&self) -> std::sync::MutexGuard<'_, BarrierState> {
        // Only this module's code holds the lock, and it cannot panic while holding it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn left_error(rank: usize) -> Error {
        Error::Device(format!(
            "thread comm: rank {rank} left the group (it failed or panicked) before this collective"
        ))
    }

    fn wait(&self) -> Result<()> {
        let mut st = self.lock();
        if let Some(r) = st.left {
            return Err(Self::left_error(r));
        }
        st.arrived += 1;
        if st.arrived == self.world {
            st.arrived = 0;
            st.generation += 1;
            self.cv.notify_all();
            return Ok(());
        }
        let generation = st.generation;
        while st.generation == generation && st.left.is_none() {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        match st.left {
            Some(r) if st.generation == generation => Err(Self::left_error(r)),
            _ => Ok(()),
        }
    }

    fn leave(&self, rank: usize) {
        let mut st = self.lock();
        st.left.get_or_insert(rank);
        self.cv.notify_all();
    }
}

/// One rank of a thread group; create the group with [`ThreadComm::group`] and move one handle
/// into each worker thread.
pub struct ThreadComm {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
}

impl ThreadComm {
    /// Handles for a group of `world` ranks, in rank order.
    pub fn group(world: usize) -> Vec<ThreadComm> {
        let world = world.max(1);
        let shared = Arc::new(Shared {
            slots: Mutex::new(vec![Vec::new(); world]),
            barrier: Rendezvous {
                world,
                state: Mutex::new(BarrierState::default()),
                cv: Condvar::new(),
            },
        });
        (0..world)
            .map(|rank| ThreadComm {
                rank,
                world,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Deposits `data`, then calls `f` with every rank's data in rank order.
    fn exchange<R>(&self, data: Vec<f32>, f: impl FnOnce(&[Vec<f32>]) -> R) -> Result<R> {
        {
            let mut slots = self
                .shared
                .slots
                .lock()
                .map_err(|_| Error::Device("thread comm: poisoned".into()))?;
            slots[self.rank] = data;
        }
        self.shared.barrier.wait()?;
        let out = {
            let slots = self
                .shared
                .slots
                .lock()
                .map_err(|_| Error::Device("thread comm: poisoned".into()))?;
            let lens: Vec<usize> = slots.iter().map(Vec::len).collect();
            if lens.iter().any(|&l| l != lens[0]) {
                drop(slots);
                self.shared.barrier.wait()?;
                return Err(Error::Shape {
                    op: "collective",
                    detail: format!("ranks passed different lengths {lens:?}"),
                });
            }
            f(&slots)
        };
        self.shared.barrier.wait()?;
        // Every rank has read the slots: free this rank's deposit now (on its own thread), so a
        // collective's staging copy lasts only as long as the collective.
        if let Ok(mut slots) = self.shared.slots.lock() {
            slots[self.rank] = Vec::new();
        }
        Ok(out)
    }
}

/// Every shard of a bucket has `shard_len` of its full tensor's length.
fn check_shards(op: &'static str, world: usize, pairs: &[(usize, usize)]) -> Result<()> {
    for &(full, shard) in pairs {
        let s = shard_len(full, world);
        if shard != s {
            return Err(Error::Shape {
                op,
                detail: format!("shard has {shard} elements, expected {s}"),
            });
        }
    }
    Ok(())
}

impl ThreadComm {
    /// Reduce-scatters a bucket (one tensor or several) in one rendezvous: each rank deposits
    /// its full tensors back to back and reduces its range of each, in rank order.
    fn reduce_scatter_bucket(
        &self,
        op_name: &'static str,
        fulls: &[&Vec<f32>],
        shards: &mut [&mut Vec<f32>],
        op: ReduceOp,
    ) -> Result<()> {
        super::check_bucket(op_name, fulls.len(), shards.len())?;
        let lens: Vec<(usize, usize)> = fulls
            .iter()
            .zip(shards.iter())
            .map(|(f, s)| (f.len(), s.len()))
            .collect();
        check_shards(op_name, self.world, &lens)?;
        let mut data = Vec::with_capacity(fulls.iter().map(|f| f.len()).sum());
        for f in fulls {
            data.extend_from_slice(f);
        }
        self.exchange(data, |parts| {
            let mut at = 0;
            for (full, shard) in fulls.iter().zip(shards.iter_mut()) {
                let range = shard_range(full.len(), self.world, self.rank);
                let slices: Vec<&[f32]> = parts
                    .iter()
                    .map(|p| &p[at + range.start..at + range.end])
                    .collect();
                shard.iter_mut().for_each(|x| *x = 0.0);
                reduce(&slices, op, &mut shard[..range.len()]);
                at += full.len();
            }
        })
    }

    /// All-gathers a bucket (one tensor or several) in one rendezvous: each rank deposits its
    /// shards back to back.
    fn all_gather_bucket(
        &self,
        op_name: &'static str,
        shards: &[&Vec<f32>],
        fulls: &mut [&mut Vec<f32>],
    ) -> Result<()> {
        super::check_bucket(op_name, shards.len(), fulls.len())?;
        let lens: Vec<(usize, usize)> = fulls
            .iter()
            .zip(shards.iter())
            .map(|(f, s)| (f.len(), s.len()))
            .collect();
        check_shards(op_name, self.world, &lens)?;
        let mut data = Vec::with_capacity(shards.iter().map(|s| s.len()).sum());
        for s in shards {
            data.extend_from_slice(s);
        }
        self.exchange(data, |parts| {
            let mut at = 0;
            for (shard, full) in shards.iter().zip(fulls.iter_mut()) {
                let len = full.len();
                for (r, p) in parts.iter().enumerate() {
                    let range = shard_range(len, self.world, r);
                    let n = range.len();
                    full[range].copy_from_slice(&p[at..at + n]);
                }
                at += shard.len();
            }
        })
    }
}

impl Drop for ThreadComm {
    fn drop(&mut self) {
        // After the last collective nobody waits any more, so this only matters for a rank that
        // stops early; the others then get an error instead of waiting for it forever.
        self.shared.barrier.leave(self.rank);
    }
}

/// `out[i] = op over parts (part[i])`, adding in rank order; each part at least `out.len()` long.
fn reduce<P: AsRef<[f32]>>(parts: &[P], op: ReduceOp, out: &mut [f32]) {
    let inv = 1.0 / parts.len() as f32;
    for (i, o) in out.iter_mut().enumerate() {
        let mut acc = 0.0f32;
        for p in parts {
            acc += p.as_ref()[i];
        }
        *o = if op == ReduceOp::Avg { acc * inv } else { acc };
    }
}

impl Communicator<CpuBackend> for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce(&self, _be: &CpuBackend, buf: &mut Vec<f32>, op: ReduceOp) -> Result<()> {
        let mine = buf.clone();
        self.exchange(mine, |parts| reduce(parts, op, buf))
    }

    fn reduce_scatter(
        &self,
        _be: &CpuBackend,
        full: &Vec<f32>,
        shard: &mut Vec<f32>,
        op: ReduceOp,
    ) -> Result<()> {
        self.reduce_scatter_bucket("reduce_scatter", &[full], &mut [shard], op)
    }

    fn all_gather(&self, _be: &CpuBackend, shard: &Vec<f32>, full: &mut Vec<f32>) -> Result<()> {
        self.all_gather_bucket("all_gather", &[shard], &mut [full])
    }

    fn reduce_scatter_many(
        &self,
        _be: &CpuBackend,
        fulls: &[&Vec<f32>],
        shards: &mut [&mut Vec<f32>],
        op: ReduceOp,
    ) -> Result<()> {
        self.reduce_scatter_bucket("reduce_scatter_many", fulls, shards, op)
    }

    fn all_gather_many(
        &self,
        _be: &CpuBackend,
        shards: &[&Vec<f32>],
        fulls: &mut [&mut Vec<f32>],
    ) -> Result<()> {
        self.all_gather_bucket("all_gather_many", shards, fulls)
    }

    fn all_reduce_scalar(&self, x: f64, op: ReduceOp) -> Result<f64> {
        // Carried as the two halves of its bit pattern so the f32 slots hold it exactly.
        let bits = x.to_bits();
        let mine = vec![
            f32::from_bits((bits >> 32) as u32),
            f32::from_bits(bits as u32),
        ];
        self.exchange(mine, |parts| {
            let mut acc = 0.0f64;
            for p in parts {
                acc += f64::from_bits(((p[0].to_bits() as u64) << 32) | p[1].to_bits() as u64);
            }
            if op == ReduceOp::Avg {
                acc / parts.len() as f64
            } else {
                acc
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::host_shard;

    fn run<R: Send>(world: usize, f: impl Fn(ThreadComm) -> R + Sync) -> Vec<R> {
        let comms = ThreadComm::group(world);
        std::thread::scope(|s| {
            let hs: Vec<_> = comms.into_iter().map(|c| s.spawn(|| f(c))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn collectives_on_three_ranks() {
        let be = CpuBackend::new();
        let outs = run(3, |c| {
            let r = c.rank() as f32;
            // all_reduce sum / avg
            let mut a = vec![r, 10.0 * r, 1.0, -r, 0.5, 2.0, 3.0];
            c.all_reduce(&be, &mut a, ReduceOp::Sum).unwrap();
            let mut b = vec![r; 2];
            c.all_reduce(&be, &mut b, ReduceOp::Avg).unwrap();
            // reduce_scatter of 7 elements over 3 ranks: shards of 3, 3, 1 (+2 padding)
            let full: Vec<f32> = (0..7).map(|i| i as f32 + 100.0 * r).collect();
            let mut shard = vec![9.0; 3];
            c.reduce_scatter(&be, &full, &mut shard, ReduceOp::Sum)
                .unwrap();
            // all_gather back
            let mut gathered = vec![0.0; 7];
            c.all_gather(&be, &shard, &mut gathered).unwrap();
            let local = host_shard(&full, 3, c.rank());
            (a, b, shard, gathered, local)
        });
        for (rank, (a, b, shard, gathered, local)) in outs.into_iter().enumerate() {
            assert_eq!(a, vec![3.0, 30.0, 3.0, -3.0, 1.5, 6.0, 9.0]);
            assert_eq!(b, vec![1.0, 1.0]);
            // sum over ranks of (i + 100 r) = 3 i + 300
            let want: Vec<f32> = shard_range(7, 3, rank)
                .map(|i| 3.0 * i as f32 + 300.0)
                .collect();
            assert_eq!(&shard[..want.len()], &want[..]);
            assert!(
                shard[want.len()..].iter().all(|&x| x == 0.0),
                "padding is zero"
            );
            let all: Vec<f32> = (0..7).map(|i| 3.0 * i as f32 + 300.0).collect();
            assert_eq!(gathered, all);
            let mine: Vec<f32> = shard_range(7, 3, rank)
                .map(|i| i as f32 + 100.0 * rank as f32)
                .collect();
            assert_eq!(&local[..mine.len()], &mine[..]);
        }
    }

    /// A bucket (one rendezvous) gives exactly what one collective per tensor gives, for tensors
    /// whose lengths do and do not divide by the world size; the default (per-tensor) trait
    /// methods are the reference.
    #[test]
    fn buckets_equal_one_collective_per_tensor() {
        let be = CpuBackend::new();
        let lens = [7usize, 3, 1, 12, 5];
        let outs = run(3, |c| {
            let r = c.rank() as f32;
            let fulls: Vec<Vec<f32>> = lens
                .iter()
                .enumerate()
                .map(|(t, &n)| {
                    (0..n)
                        .map(|i| (i as f32 * 0.37 + t as f32) * (r + 1.3))
                        .collect()
                })
                .collect();
            let mut one = Vec::new();
            for f in &fulls {
                let mut s = vec![f32::NAN; shard_len(f.len(), 3)];
                c.reduce_scatter(&be, f, &mut s, ReduceOp::Sum).unwrap();
                one.push(s);
            }
            let mut bucket: Vec<Vec<f32>> = lens
                .iter()
                .map(|&n| vec![f32::NAN; shard_len(n, 3)])
                .collect();
            {
                let ins: Vec<&Vec<f32>> = fulls.iter().collect();
                let mut outs: Vec<&mut Vec<f32>> = bucket.iter_mut().collect();
                c.reduce_scatter_many(&be, &ins, &mut outs, ReduceOp::Sum)
                    .unwrap();
            }
            let mut gathered_one = Vec::new();
            for (s, &n) in one.iter().zip(&lens) {
                let mut f = vec![f32::NAN; n];
                c.all_gather(&be, s, &mut f).unwrap();
                gathered_one.push(f);
            }
            let mut gathered: Vec<Vec<f32>> = lens.iter().map(|&n| vec![f32::NAN; n]).collect();
            {
                let ins: Vec<&Vec<f32>> = bucket.iter().collect();
                let mut outs: Vec<&mut Vec<f32>> = gathered.iter_mut().collect();
                c.all_gather_many(&be, &ins, &mut outs).unwrap();
            }
            // A bucket whose inputs and outputs do not pair up is an error, not a hang.
            let mut short: Vec<&mut Vec<f32>> = Vec::new();
            let bad = c.all_gather_many(&be, &[&one[0]], &mut short).is_err();
            (one, bucket, gathered_one, gathered, bad)
        });
        for (one, bucket, gathered_one, gathered, bad) in outs {
            let bits = |v: &Vec<Vec<f32>>| -> Vec<Vec<u32>> {
                v.iter()
                    .map(|t| t.iter().map(|x| x.to_bits()).collect())
                    .collect()
            };
            assert_eq!(bits(&bucket), bits(&one), "reduce-scatter bucket");
            assert_eq!(bits(&gathered), bits(&gathered_one), "all-gather bucket");
            assert!(bad);
        }
    }

    #[test]
    fn mismatched_lengths_are_an_error_on_every_rank() {
        let be = CpuBackend::new();
        let outs = run(2, |c| {
            let mut a = vec![0.0; 2 + c.rank()];
            c.all_reduce(&be, &mut a, ReduceOp::Sum).is_err()
        });
        assert_eq!(outs, vec![true, true]);
    }

    #[test]
    fn a_rank_that_leaves_or_panics_releases_the_others_with_an_error() {
        let be = CpuBackend::new();
        // Rank 1 returns before the collective (as a worker whose step failed would).
        let outs = run(3, |c| {
            if c.rank() == 1 {
                return None;
            }
            let mut a = vec![1.0; 4];
            Some(
                c.all_reduce(&be, &mut a, ReduceOp::Sum)
                    .map_err(|e| e.to_string()),
            )
        });
        for (rank, o) in outs.iter().enumerate() {
            if rank == 1 {
                continue;
            }
            let err = o.as_ref().unwrap().as_ref().unwrap_err();
            assert!(err.contains("rank 1 left the group"), "{err}");
        }
        // Rank 0 panics after one good collective; rank 1 is released from the next one.
        let comms = ThreadComm::group(2);
        let results: Vec<std::thread::Result<Result<()>>> = std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .into_iter()
                .map(|c| {
                    let be = &be;
                    s.spawn(move || {
                        let mut a = vec![1.0; 3];
                        c.all_reduce(be, &mut a, ReduceOp::Sum)?;
                        assert_eq!(a, vec![2.0; 3]);
                        if c.rank() == 0 {
                            panic!("worker 0 fails mid-step");
                        }
                        c.all_reduce(be, &mut a, ReduceOp::Sum)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join()).collect()
        });
        assert!(results[0].is_err(), "rank 0 panicked");
        let err = results[1].as_ref().unwrap().as_ref().unwrap_err();
        assert!(err.to_string().contains("rank 0 left the group"), "{err}");
    }
}
