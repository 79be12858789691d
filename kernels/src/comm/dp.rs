//! [`DpOptimizer`]: the data-parallel optimizer step (gradient averaging, global-norm clipping,
//! AdamW), with the optimizer state optionally sharded across ranks (ZeRO-1, llm.c's `-z 1`).
//!
//! * Plain data parallel: every gradient is all-reduced (average), every rank runs AdamW on the
//!   whole parameter with a full copy of `m` and `v`.
//! * ZeRO-1 (`zero1 = true`): every gradient is reduce-scattered (average), so rank `r` holds the
//!   averaged gradient of its shard only; it keeps `m`, `v` (and the parameter shard it updates)
//!   for its shard only — `1/world` of the optimizer memory — runs AdamW on the shard and
//!   all-gathers the updated shards back into the full parameter.
//!
//! Both give the same parameters as one worker on the whole batch, within fp tolerance (the
//! reduction order of the averaged gradient differs).
use super::{Communicator, ReduceOp, host_shard, shard_len};
use crate::{AdamWParams, Backend, Result};

struct Slot<B: Backend> {
    m: B::Buf,
    v: B::Buf,
    /// ZeRO-1 only: this rank's shard of the parameter and of the averaged gradient.
    param_shard: Option<B::Buf>,
    grad_shard: Option<B::Buf>,
}

/// Optimizer state of one rank for a list of parameter tensors.
pub struct DpOptimizer<B: Backend> {
    zero1: bool,
    slots: Vec<Slot<B>>,
}

impl<B: Backend> DpOptimizer<B> {
    /// State for `params` (the rank's full, identical-on-every-rank parameters). With `zero1`,
    /// only this rank's shard of each tensor gets optimizer state.
    pub fn new<C: Communicator<B>>(
        be: &B,
        comm: &C,
        params: &[&B::Buf],
        zero1: bool,
    ) -> Result<Self> {
        let world = comm.world_size();
        let mut slots = Vec::with_capacity(params.len());
        for p in params {
            let len = be.len(p);
            if zero1 {
                let s = shard_len(len, world);
                // The shard steps, so it starts from the full-precision values.
                let full = be.download_param(p)?;
                let shard = be.upload_param(&host_shard(&full, world, comm.rank()))?;
                slots.push(Slot {
                    m: be.zeros_f32(s)?,
                    v: be.zeros_f32(s)?,
                    param_shard: Some(shard),
                    grad_shard: Some(be.zeros_f32(s)?),
                });
            } else {
                slots.push(Slot {
                    m: be.zeros_f32(len)?,
                    v: be.zeros_f32(len)?,
                    param_shard: None,
                    grad_shard: None,
                });
            }
        }
        Ok(Self { zero1, slots })
    }

    /// Whether the optimizer state is sharded.
    pub fn is_zero1(&self) -> bool {
        self.zero1
    }

    /// Elements of optimizer state (`m` plus `v`) this rank holds.
    pub fn state_elements(&self, be: &B) -> usize {
        self.slots.iter().map(|s| be.len(&s.m) + be.len(&s.v)).sum()
    }

    /// One step: averages `grads` across ranks, clips to `max_norm` (if given) by the global norm,
    /// and applies AdamW (`hp.grad_scale` is multiplied by the clip factor). Returns the global
    /// gradient norm before clipping. `grads` are left averaged (plain DP) or untouched (ZeRO-1).
    pub fn step<C: Communicator<B>>(
        &mut self,
        be: &B,
        comm: &C,
        params: &mut [&mut B::Buf],
        grads: &mut [&mut B::Buf],
        hp: &AdamWParams,
        max_norm: Option<f64>,
    ) -> Result<f64> {
        if params.len() != self.slots.len() || grads.len() != self.slots.len() {
            return Err(crate::Error::Shape {
                op: "dp_step",
                detail: format!(
                    "{} params / {} grads for {} optimizer slots",
                    params.len(),
                    grads.len(),
                    self.slots.len()
                ),
            });
        }
        // 1. average the gradients (full, or this rank's shard)
        let mut sumsq = 0.0f64;
        for (slot, g) in self.slots.iter_mut().zip(grads.iter_mut()) {
            match &mut slot.grad_shard {
                Some(gs) => {
                    comm.reduce_scatter(be, g, gs, ReduceOp::Avg)?;
                    sumsq += be.sum_squares(gs)?;
                }
                None => {
                    comm.all_reduce(be, g, ReduceOp::Avg)?;
                    sumsq += be.sum_squares(g)?;
                }
            }
        }
        // 2. the global norm: with ZeRO-1 each rank only saw its shards, so add the partial sums
        if self.zero1 {
            sumsq = comm.all_reduce_scalar(sumsq, ReduceOp::Sum)?;
        }
        let norm = sumsq.sqrt();
        let mut hp = *hp;
        if let Some(max) = max_norm {
            hp.grad_scale *= crate::cpu::clip_scale(norm, max);
        }
        // 3. AdamW (on the shard, then gather the updated shards)
        for ((slot, p), g) in self
            .slots
            .iter_mut()
            .zip(params.iter_mut())
            .zip(grads.iter())
        {
            match (&mut slot.param_shard, &slot.grad_shard) {
                (Some(ps), Some(gs)) => {
                    be.adamw_step(ps, gs, &mut slot.m, &mut slot.v, &hp)?;
                    comm.all_gather(be, ps, p)?;
                }
                _ => be.adamw_step(p, g, &mut slot.m, &mut slot.v, &hp)?,
            }
        }
        Ok(norm)
    }
}
