//! Device selection and data parallelism for the training loop.
//!
//! [`TrainConfig::device`](crate::TrainConfig::device) (the daemon's `JobSpec.devices`) picks the
//! path, together with [`TrainConfig::workers`](crate::TrainConfig::workers) and
//! [`TrainConfig::zero1`](crate::TrainConfig::zero1):
//!
//! | `device`                       | runs on                                                      |
//! |--------------------------------|--------------------------------------------------------------|
//! | `cpu` (default)                | `workers` CPU workers (threads over `ThreadComm`; 1 = plain)  |
//! | `cuda`, `cuda:N`               | one GPU (`CudaBackend`, bf16 mixed precision)                 |
//! | `cuda:0,1`, `cuda:0,cuda:1`, `cuda:A..B` | one worker thread per GPU, gradients over NCCL     |
//! | `auto`                         | `cuda:0` when usable, else the CPU (the reason is logged)     |
//!
//! Every worker runs the same generic loop ([`crate::train`]) on its slice of each global batch
//! (rows split by rank with [`shard_range`]); the loss weights are computed over the **global**
//! batch, so each rank's gradient is its share of the global gradient and the ranks' gradients are
//! **summed** (not averaged). [`DpAdamW`] then clips by the global norm of the summed gradient and
//! applies the trainer's AdamW (same math, bias correction and no-decay rule for 1-D weights as
//! [`AdamW::update`]); with `zero1` the moments are sharded across ranks (ZeRO-1, llm.c's `-z 1`),
//! and gathered to rank 0 for checkpoints, which therefore have the single-worker format and can be
//! resumed with any worker count.
//!
//! ```
//! use koala_trainer::dp::DeviceRequest;
//! assert_eq!(DeviceRequest::parse("cuda:0..2").unwrap(), DeviceRequest::Cuda(vec![0, 1]));
//! assert_eq!(DeviceRequest::parse("cuda:0,1").unwrap(), DeviceRequest::Cuda(vec![0, 1]));
//! assert_eq!(DeviceRequest::parse("auto").unwrap(), DeviceRequest::Auto);
//! assert!(DeviceRequest::parse("tpu").is_err());
//! ```
use std::ops::Range;

use koala_kernels::Backend;
use koala_kernels::comm::{Communicator, ReduceOp, host_shard, shard_len};

use crate::hparams::Hyper;
use crate::model::{Llama, ParamHook};
use crate::optim::AdamW;
use crate::weights::{HostTensor, ParamSpec, Tensors};
use crate::{Error, Result};

/// The largest CUDA ordinal accepted (a sanity bound, not a hardware query).
pub const MAX_CUDA_ORDINAL: usize = 1023;
/// The most CPU workers a run may ask for.
pub const MAX_CPU_WORKERS: usize = 256;

/// A parsed device string: what the user asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    Cpu,
    /// `cuda:0` when usable, else the CPU.
    Auto,
    /// Distinct GPU ordinals, in the order given (a range is ascending).
    Cuda(Vec<usize>),
}

impl DeviceRequest {
    /// Parses `cpu` (also the empty string), `auto`, `cuda` (= `cuda:0`), `cuda:N`, a list
    /// `cuda:0,1` or `cuda:0,cuda:1`, or a half-open range `cuda:A..B`. The message of an error
    /// says what was expected.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "" | "cpu" => return Ok(DeviceRequest::Cpu),
            "auto" => return Ok(DeviceRequest::Auto),
            "cuda" => return Ok(DeviceRequest::Cuda(vec![0])),
            _ => {}
        }
        let Some(rest) = t.strip_prefix("cuda:") else {
            return Err(format!(
                "{s:?} is not a device (expected cpu, auto, cuda:N, cuda:N,M or cuda:A..B)"
            ));
        };
        let ordinal = |x: &str| -> std::result::Result<usize, String> {
            let x = x.trim();
            let n: usize = x
                .parse()
                .map_err(|_| format!("{x:?} is not a CUDA device ordinal (in {s:?})"))?;
            if n > MAX_CUDA_ORDINAL {
                return Err(format!(
                    "CUDA ordinal {n} is out of range (0..={MAX_CUDA_ORDINAL})"
                ));
            }
            Ok(n)
        };
        let mut out = Vec::new();
        if let Some((a, b)) = rest.split_once("..") {
            let (a, b) = (ordinal(a)?, ordinal(b)?);
            if a >= b {
                return Err(format!("cuda:{a}..{b} is an empty range"));
            }
            out.extend(a..b);
        } else {
            for part in rest.split(',') {
                let part = part.trim();
                let n = ordinal(part.strip_prefix("cuda:").unwrap_or(part))?;
                if out.contains(&n) {
                    return Err(format!("device cuda:{n} is listed twice"));
                }
                out.push(n);
            }
        }
        Ok(DeviceRequest::Cuda(out))
    }
}

/// Where a run executes, after `auto` was resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// `workers` CPU workers (1: the plain single-worker loop).
    Cpu { workers: usize },
    /// One worker per GPU ordinal.
    Cuda(Vec<usize>),
}

impl Plan {
    /// The number of data-parallel workers.
    pub fn world(&self) -> usize {
        match self {
            Plan::Cpu { workers } => *workers,
            Plan::Cuda(o) => o.len(),
        }
    }
}

/// A bad device setting: which field (`device` or `workers`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceError {
    pub field: &'static str,
    pub reason: String,
}

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Checks `device` and `workers` together (without touching any device): `workers` counts CPU
/// workers (0 or 1: one); with GPUs there is one worker per device, so `workers` must then be 0
/// or the number of devices.
pub fn check_devices(
    device: &str,
    workers: usize,
) -> std::result::Result<DeviceRequest, DeviceError> {
    let req = DeviceRequest::parse(device).map_err(|reason| DeviceError {
        field: "device",
        reason,
    })?;
    if workers > MAX_CPU_WORKERS {
        return Err(DeviceError {
            field: "workers",
            reason: format!("{workers} is out of range (0..={MAX_CPU_WORKERS})"),
        });
    }
    match &req {
        DeviceRequest::Cuda(o) if workers > 1 && workers != o.len() => Err(DeviceError {
            field: "workers",
            reason: format!(
                "{workers} does not match the {} CUDA device(s) of {device:?} (one worker per \
                 GPU; leave workers at 0)",
                o.len()
            ),
        }),
        _ => Ok(req),
    }
}

/// Resolves the device request into a [`Plan`], probing the GPU for `auto` (which falls back to
/// the CPU, logging why). An explicit `cuda` request is not probed here: opening the device
/// reports what is missing.
pub fn plan(device: &str, workers: usize) -> Result<Plan> {
    match check_devices(device, workers).map_err(|e| Error::Config(e.to_string()))? {
        DeviceRequest::Cpu => Ok(Plan::Cpu {
            workers: workers.max(1),
        }),
        DeviceRequest::Cuda(o) => Ok(Plan::Cuda(o)),
        DeviceRequest::Auto => match koala_kernels::select::select("auto") {
            Ok(sel) if sel.fallback().is_none() && sel.name() != "cpu" => {
                if workers > 1 {
                    tracing::warn!(
                        workers,
                        "device auto picked cuda:0: one worker (workers counts CPU workers)"
                    );
                }
                Ok(Plan::Cuda(vec![0]))
            }
            Ok(sel) => {
                tracing::warn!(
                    reason = sel.fallback().unwrap_or("no GPU"),
                    "device auto: training on the CPU"
                );
                Ok(Plan::Cpu {
                    workers: workers.max(1),
                })
            }
            Err(e) => {
                tracing::warn!(reason = %e, "device auto: training on the CPU");
                Ok(Plan::Cpu {
                    workers: workers.max(1),
                })
            }
        },
    }
}

/// The communicator of a group of one (every collective is the identity).
pub use koala_kernels::comm::Solo;

/// The message of the error a rank returns when another rank failed (the group reports the
/// failing rank's own error instead).
pub const PEER_FAILED: &str = "another data-parallel worker failed";

/// Makes every rank agree on whether a phase failed on any of them: a rank that failed returns
/// its error, the others return [`PEER_FAILED`], so no rank is left waiting in a collective.
pub fn agree<B: Backend, C: Communicator<B>, T>(comm: &C, r: Result<T>) -> Result<T> {
    if comm.world_size() == 1 {
        return r;
    }
    let failed = comm.all_reduce_scalar(f64::from(u8::from(r.is_err())), ReduceOp::Sum)?;
    match r {
        Err(e) => Err(e),
        Ok(_) if failed > 0.0 => Err(Error::Invalid(PEER_FAILED.into())),
        Ok(v) => Ok(v),
    }
}

/// All-gathers one fp32 shard per rank into the full tensor `spec` and, on rank 0, stores it in
/// `out` under `name`. A collective.
fn gather_into<B: Backend, C: Communicator<B>>(
    be: &B,
    comm: &C,
    shard: &B::Buf,
    spec: &ParamSpec,
    name: String,
    out: &mut Tensors,
) -> Result<()> {
    let mut full = be.zeros_f32(spec.numel())?;
    comm.all_gather(be, shard, &mut full)?;
    if comm.rank() == 0 {
        out.insert(
            name,
            HostTensor {
                shape: spec.shape.clone(),
                data: be.download(&full)?,
            },
        );
    }
    Ok(())
}

/// ZeRO state of one parameter: this rank's shard of the parameter (the fp32 master that steps)
/// and of the summed gradient (accumulated over the step's micro-batches under ZeRO-2/3).
struct Shard<B: Backend> {
    param: B::Buf,
    grad: B::Buf,
}

/// The trainer's [`AdamW`] across a data-parallel group: the ranks' gradients are summed, clipped
/// by their global norm and applied with the same rules as [`AdamW::update`]. The ZeRO stage says
/// what each rank keeps whole and what only as its `1/world` shard:
///
/// | stage | moments `m`, `v` and fp32 master | gradients | parameters |
/// |---|---|---|---|
/// | 0 | whole | whole, all-reduced | whole |
/// | 1 | shard | whole, reduce-scattered at the step | whole, all-gathered after the step |
/// | 2 | shard | one group at a time, reduce-scattered as its backward ends | whole |
/// | 3 | shard | as stage 2 | one group at a time, all-gathered before use |
///
/// Stages 2 and 3 work through the model's [`ParamHook`] ([`DpAdamW::hook`]); stage 3 is
/// FSDP's full sharding. A group of one is stage 0 whatever is asked.
pub struct DpAdamW<B: Backend> {
    /// Hyperparameters, step count and moments (full, or this rank's shards with ZeRO).
    pub adam: AdamW<B>,
    shards: Option<Vec<Shard<B>>>,
    stage: u8,
    /// Elements of each parameter (ZeRO-2/3 rebuild full buffers of these lengths).
    lens: Vec<usize>,
    /// Full-size buffers released within the step, for the next group of the same shapes.
    pool: Pool<B>,
}

/// Released full-size buffers kept for reuse within a step (ZeRO-2/3 rebuild every group's
/// weights and gradients for every micro-batch; fresh buffers of tens of MB cost page faults
/// each time). Weights and gradients are kept apart (a device backend may store them in
/// different precisions). Together they hold at most `cap` elements (the largest tensor: every
/// layer's buffers, or one embedding-sized buffer), and they are emptied at each optimizer
/// step, so the pool adds at most one tensor to a rank's peak and nothing between steps.
struct Pool<B: Backend> {
    /// `[weights, gradients]`.
    bufs: [Vec<B::Buf>; 2],
    held: usize,
    cap: usize,
}

/// Which of a [`Pool`]'s two lists.
#[derive(Clone, Copy)]
enum Kind {
    Weight = 0,
    Grad = 1,
}

impl<B: Backend> Pool<B> {
    fn new(cap: usize) -> Self {
        Pool {
            bufs: [Vec::new(), Vec::new()],
            held: 0,
            cap,
        }
    }

    /// A buffer of `len` elements: a released one (`true`: its contents are stale) or a new
    /// zeroed one.
    fn take(&mut self, be: &B, kind: Kind, len: usize) -> Result<(B::Buf, bool)> {
        let list = &mut self.bufs[kind as usize];
        match list.iter().position(|b| be.len(b) == len) {
            Some(i) => {
                self.held -= len;
                Ok((list.swap_remove(i), true))
            }
            None => Ok((be.zeros(len)?, false)),
        }
    }

    /// Keeps `buf` for reuse if it fits under the cap (else frees it).
    fn give(&mut self, be: &B, kind: Kind, buf: B::Buf) {
        let len = be.len(&buf);
        if len > 1 && self.held + len <= self.cap {
            self.held += len;
            self.bufs[kind as usize].push(buf);
        }
    }

    fn clear(&mut self) {
        self.bufs.iter_mut().for_each(Vec::clear);
        self.held = 0;
    }
}

/// The ZeRO stage a run takes: `asked` (a config's or job's `zero`), else its preset's stage
/// `preset` (at most 1 for a LoRA adapter: a preset's stage is for full fine-tuning), and at
/// least 1 with `zero1`. Stages above 3, and 2 or 3 for an adapter (the frozen base is not
/// sharded), are refused with the reason. `TrainConfig`, the daemon's job validation and
/// [`DpAdamW::new`] all apply this one rule.
pub fn zero_stage(
    asked: Option<u8>,
    preset: u8,
    zero1: bool,
    lora: bool,
) -> std::result::Result<u8, String> {
    let chosen = match asked {
        Some(z) => z,
        None if lora => preset.min(1),
        None => preset,
    };
    let stage = chosen.max(u8::from(zero1));
    if stage > 3 {
        return Err(format!("stage {stage}; stages are 0 to 3"));
    }
    if stage >= 2 && lora {
        return Err(format!(
            "stage {stage} shards the model's weights and gradients, which LoRA freezes; an \
             adapter's state is small: use zero = 1 or 0"
        ));
    }
    Ok(stage)
}

/// What a released parameter or gradient holds: one element (some device allocators refuse zero
/// bytes), so a read of a released group fails its length check instead of reading stale data.
fn placeholder<B: Backend>(be: &B) -> Result<B::Buf> {
    Ok(be.zeros(1)?)
}

impl<B: Backend> DpAdamW<B> {
    /// Fresh state for `model`'s parameters (identical on every rank), with `hyper`'s betas,
    /// eps, weight decay and clipping, at ZeRO stage `zero` (0 to 3; see the table above). With a
    /// group of one it is the plain optimizer. Stages 2 and 3 free the model's full gradients
    /// (and, at 3, its full parameters) here: from now on they exist one group at a time, inside
    /// passes given [`DpAdamW::hook`].
    pub fn new<C: Communicator<B>>(
        be: &B,
        comm: &C,
        model: &mut Llama<B>,
        hyper: &Hyper,
        zero: u8,
    ) -> Result<Self> {
        zero_stage(Some(zero), 0, false, model.lora().is_some())
            .map_err(|r| Error::Invalid(format!("zero: {r}")))?;
        let world = comm.world_size();
        let lens: Vec<usize> = model.params.iter().map(|p| be.len(p)).collect();
        let pool = Pool::new(lens.iter().copied().max().unwrap_or(0));
        if zero == 0 || world == 1 {
            let adam = AdamW::new(
                be,
                model,
                hyper.beta1,
                hyper.beta2,
                hyper.eps,
                hyper.weight_decay,
                hyper.grad_clip,
            )?;
            return Ok(Self {
                adam,
                shards: None,
                stage: 0,
                lens,
                pool,
            });
        }
        let n = model.specs.len();
        let mut adam = AdamW {
            m: Vec::with_capacity(n),
            v: Vec::with_capacity(n),
            step: 0,
            beta1: hyper.beta1,
            beta2: hyper.beta2,
            eps: hyper.eps,
            weight_decay: hyper.weight_decay,
            grad_clip: hyper.grad_clip,
        };
        let mut shards = Vec::with_capacity(n);
        for (p, g) in model.params.iter_mut().zip(&mut model.grads) {
            let len = be.len(p);
            let s = shard_len(len, world);
            // The shard is the one that steps: it starts from the full-precision values.
            let full = be.download_param(p)?;
            let param = be.upload_param(&host_shard(&full, world, comm.rank()))?;
            // The full buffer is only read by the forward and overwritten by the all-gather, so
            // it needs no master copy: re-upload it plain, which frees that copy (ZeRO-1 is about
            // not holding full-size fp32 state on every rank). Stage 3 keeps no full buffer.
            *p = if zero == 3 {
                placeholder(be)?
            } else {
                be.upload(&full)?
            };
            if zero >= 2 {
                *g = placeholder(be)?;
            }
            adam.m.push(be.zeros_f32(s)?);
            adam.v.push(be.zeros_f32(s)?);
            shards.push(Shard {
                param,
                grad: be.zeros_f32(s)?,
            });
        }
        Ok(Self {
            adam,
            shards: Some(shards),
            stage: zero,
            lens,
            pool,
        })
    }

    /// The ZeRO stage in effect (0 with a group of one).
    pub fn zero_stage(&self) -> u8 {
        self.stage
    }

    /// The [`ParamHook`] to pass to the model's passes (through [`crate::train::local_grads`]):
    /// under ZeRO-3 it all-gathers each group's weights before use and frees them after; under
    /// ZeRO-2/3 it gives each group full-size gradients for the backward and reduce-scatters
    /// them into this rank's shard as soon as the group's backward ends, then frees them. At
    /// stages 0 and 1 it does nothing. Its calls are collectives: every rank must make the
    /// same passes ([`Llama::idle_with`] for a rank without a micro-batch).
    pub fn hook<'a, C: Communicator<B>>(&'a mut self, comm: &'a C) -> ShardHook<'a, B, C> {
        ShardHook {
            comm,
            stage: self.stage,
            lens: &self.lens,
            shards: self.shards.as_deref_mut().unwrap_or(&mut []),
            pool: &mut self.pool,
        }
    }

    /// Whether the optimizer state is sharded (ZeRO stage 1 or more).
    pub fn is_zero1(&self) -> bool {
        self.shards.is_some()
    }

    /// Optimizer steps taken so far.
    pub fn step(&self) -> u64 {
        self.adam.step
    }

    /// Elements of optimizer state (`m` plus `v`) this rank holds.
    pub fn state_elements(&self, be: &B) -> usize {
        self.adam
            .m
            .iter()
            .chain(&self.adam.v)
            .map(|b| be.len(b))
            .sum()
    }

    /// Sums the ranks' gradients, clips and applies AdamW at `lr`; returns the pre-clip global
    /// gradient norm. Afterwards every rank holds the same parameters.
    pub fn update<C: Communicator<B>>(
        &mut self,
        be: &B,
        comm: &C,
        model: &mut Llama<B>,
        lr: f32,
    ) -> Result<f64> {
        self.pool.clear();
        let Some(shards) = &mut self.shards else {
            if comm.world_size() > 1 {
                for g in &mut model.grads {
                    comm.all_reduce(be, g, ReduceOp::Sum)?;
                }
            }
            return self.adam.update(be, model, lr);
        };
        let a = &mut self.adam;
        let mut ss = 0.0f64;
        for (g, sh) in model.grads.iter().zip(shards.iter_mut()) {
            // ZeRO-2/3 reduce-scattered each group during the backward (`ShardHook`).
            if self.stage < 2 {
                comm.reduce_scatter(be, g, &mut sh.grad, ReduceOp::Sum)?;
            }
            ss += be.sum_squares(&sh.grad)?;
        }
        let norm = comm.all_reduce_scalar(ss, ReduceOp::Sum)?.sqrt();
        // The same clip factor and no-decay rule as `AdamW::update`.
        let grad_scale = a.clip_scale(norm);
        a.step += 1;
        for (i, spec) in model.specs.iter().enumerate() {
            let hp = a.params_for(&spec.shape, lr, grad_scale);
            let sh = &mut shards[i];
            be.adamw_step(&mut sh.param, &sh.grad, &mut a.m[i], &mut a.v[i], &hp)?;
            // ZeRO-3 gathers each group when the next pass needs it.
            if self.stage < 3 {
                comm.all_gather(be, &sh.param, &mut model.params[i])?;
            }
        }
        Ok(norm)
    }

    /// The model's parameters at full precision, as host tensors (HF names), for checkpoints and
    /// the exported model. With `zero1` the fp32 master weights live in the ranks' shards (the
    /// full buffers hold what the forward reads, bf16 on a GPU), so they are gathered from there:
    /// a collective (every rank must call it). The tensors are returned on rank 0 only.
    pub fn params_to_tensors<C: Communicator<B>>(
        &self,
        be: &B,
        comm: &C,
        model: &Llama<B>,
    ) -> Result<Option<Tensors>> {
        let Some(shards) = &self.shards else {
            return if comm.rank() == 0 {
                Ok(Some(model.to_tensors(be)?))
            } else {
                Ok(None)
            };
        };
        let mut out = Tensors::new();
        for (s, sh) in model.specs.iter().zip(shards) {
            let master = be.upload_f32(&be.download_param(&sh.param)?)?;
            gather_into(be, comm, &master, s, s.name.clone(), &mut out)?;
        }
        Ok((comm.rank() == 0).then_some(out))
    }

    /// The full moments as `m.<param>` / `v.<param>` host tensors (the single-worker checkpoint
    /// format). A collective with `zero1` (every rank must call it); the tensors are returned on
    /// rank 0 only.
    pub fn to_tensors<C: Communicator<B>>(
        &self,
        be: &B,
        comm: &C,
        model: &Llama<B>,
    ) -> Result<Option<Tensors>> {
        if self.shards.is_none() {
            return if comm.rank() == 0 {
                Ok(Some(self.adam.to_tensors(be, model)?))
            } else {
                Ok(None)
            };
        }
        let mut out = Tensors::new();
        for (i, s) in model.specs.iter().enumerate() {
            for (prefix, shard) in [("m", &self.adam.m[i]), ("v", &self.adam.v[i])] {
                gather_into(be, comm, shard, s, format!("{prefix}.{}", s.name), &mut out)?;
            }
        }
        Ok((comm.rank() == 0).then_some(out))
    }

    /// Restores moments saved by [`DpAdamW::to_tensors`] or [`AdamW::to_tensors`] (any worker
    /// count), keeping this rank's shard with `zero1`. No communication.
    pub fn load_tensors<C: Communicator<B>>(
        &mut self,
        be: &B,
        comm: &C,
        model: &Llama<B>,
        t: &Tensors,
        step: u64,
    ) -> Result<()> {
        if self.shards.is_none() {
            return self.adam.load_tensors(be, model, t, step);
        }
        let world = comm.world_size();
        for (i, s) in model.specs.iter().enumerate() {
            for (prefix, dst) in [("m", &mut self.adam.m[i]), ("v", &mut self.adam.v[i])] {
                let name = format!("{prefix}.{}", s.name);
                let h = t
                    .get(&name)
                    .ok_or_else(|| Error::Invalid(format!("optimizer state lacks {name}")))?;
                if h.shape != s.shape {
                    return Err(Error::Invalid(format!(
                        "optimizer state {name}: shape {:?}",
                        h.shape
                    )));
                }
                *dst = be.upload_f32(&host_shard(&h.data, world, comm.rank()))?;
            }
        }
        self.adam.step = step;
        Ok(())
    }
}

/// [`DpAdamW::hook`]: ZeRO-2/3's per-group collectives inside the model's passes.
pub struct ShardHook<'a, B: Backend, C> {
    comm: &'a C,
    stage: u8,
    lens: &'a [usize],
    shards: &'a mut [Shard<B>],
    pool: &'a mut Pool<B>,
}

impl<B: Backend, C: Communicator<B>> ParamHook<B> for ShardHook<'_, B, C> {
    /// Zeroes this rank's gradient shards, which ZeRO-2/3 accumulate over a step's
    /// micro-batches.
    fn zero_grads(&mut self, be: &B) -> Result<()> {
        if self.stage >= 2 {
            for sh in self.shards.iter_mut() {
                be.fill_zero(&mut sh.grad)?;
            }
        }
        Ok(())
    }

    /// All-gathers the group's weights from the ranks' shards, as one bucket.
    fn gather(&mut self, be: &B, params: &mut [B::Buf], group: Range<usize>) -> Result<()> {
        if self.stage < 3 {
            return Ok(());
        }
        // Every element is overwritten by the gather: a reused buffer needs no zeroing.
        let mut fulls = Vec::with_capacity(group.len());
        for i in group.clone() {
            fulls.push(self.pool.take(be, Kind::Weight, self.lens[i])?.0);
        }
        let shards: Vec<&B::Buf> = self.shards[group.clone()]
            .iter()
            .map(|s| &s.param)
            .collect();
        let mut outs: Vec<&mut B::Buf> = fulls.iter_mut().collect();
        self.comm.all_gather_many(be, &shards, &mut outs)?;
        for (i, full) in group.zip(fulls) {
            params[i] = full;
        }
        Ok(())
    }

    fn release(&mut self, be: &B, params: &mut [B::Buf], group: Range<usize>) -> Result<()> {
        if self.stage < 3 {
            return Ok(());
        }
        for i in group {
            let full = std::mem::replace(&mut params[i], placeholder(be)?);
            self.pool.give(be, Kind::Weight, full);
        }
        Ok(())
    }

    fn open_grads(&mut self, be: &B, grads: &mut [B::Buf], group: Range<usize>) -> Result<()> {
        if self.stage < 2 {
            return Ok(());
        }
        for i in group {
            let (mut g, reused) = self.pool.take(be, Kind::Grad, self.lens[i])?;
            if reused {
                be.fill_zero(&mut g)?;
            }
            grads[i] = g;
        }
        Ok(())
    }

    /// Reduce-scatters the group's micro-batch gradients, as one bucket, and adds this rank's
    /// shards to the step's sums (`0 + x = x` exactly: with one micro-batch per rank each shard
    /// equals ZeRO-1's), then frees the full buffers.
    fn close_grads(&mut self, be: &B, grads: &mut [B::Buf], group: Range<usize>) -> Result<()> {
        if self.stage < 2 {
            return Ok(());
        }
        let mut parts = self.shards[group.clone()]
            .iter()
            .map(|sh| be.zeros_f32(be.len(&sh.grad)))
            .collect::<koala_kernels::Result<Vec<_>>>()?;
        {
            let fulls: Vec<&B::Buf> = grads[group.clone()].iter().collect();
            let mut outs: Vec<&mut B::Buf> = parts.iter_mut().collect();
            self.comm
                .reduce_scatter_many(be, &fulls, &mut outs, ReduceOp::Sum)?;
        }
        for (i, part) in group.zip(parts) {
            let sh = &mut self.shards[i];
            let len = be.len(&sh.grad);
            be.add_inplace(&mut sh.grad, &part, len)?;
            let full = std::mem::replace(&mut grads[i], placeholder(be)?);
            self.pool.give(be, Kind::Grad, full);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LlamaConfig;
    use crate::weights::init_weights;
    use koala_kernels::CpuBackend;
    use koala_kernels::comm::ThreadComm;

    #[test]
    fn device_strings() {
        for (s, want) in [
            ("", DeviceRequest::Cpu),
            (" CPU ", DeviceRequest::Cpu),
            ("auto", DeviceRequest::Auto),
            ("cuda", DeviceRequest::Cuda(vec![0])),
            ("cuda:3", DeviceRequest::Cuda(vec![3])),
            ("cuda:2,0", DeviceRequest::Cuda(vec![2, 0])),
            ("cuda:0, cuda:1", DeviceRequest::Cuda(vec![0, 1])),
            ("cuda:1..4", DeviceRequest::Cuda(vec![1, 2, 3])),
        ] {
            assert_eq!(DeviceRequest::parse(s).unwrap(), want, "{s:?}");
        }
        for bad in [
            "gpu0",
            "cuda:",
            "cuda:x",
            "cuda:3..1",
            "cuda:1,1",
            "cuda:0..",
            "cuda:99999",
            "tpu",
        ] {
            assert!(DeviceRequest::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_devices("cuda:0,1", 3).unwrap_err().field, "workers");
        assert_eq!(check_devices("cpu", 1000).unwrap_err().field, "workers");
        assert_eq!(check_devices("npu", 0).unwrap_err().field, "device");
        assert!(check_devices("cuda:0,1", 2).is_ok());
        assert_eq!(plan("cpu", 0).unwrap(), Plan::Cpu { workers: 1 });
        assert_eq!(plan("cpu", 3).unwrap().world(), 3);
        assert_eq!(plan("cuda:0..4", 0).unwrap(), Plan::Cuda(vec![0, 1, 2, 3]));
    }

    /// ZeRO-1 keeps `ceil(n / world)` of each moment per rank, and the moments gathered for a
    /// checkpoint (any world) come back unchanged when re-sharded over another world size.
    #[test]
    fn zero1_shards_and_checkpoint_moments_round_trip() {
        let cfg = LlamaConfig::from_json_str(
            r#"{"vocab_size": 13, "hidden_size": 8, "intermediate_size": 12,
                "num_hidden_layers": 1, "num_attention_heads": 2}"#,
        )
        .unwrap();
        let hyper = Hyper::default();
        let host = init_weights(&cfg, 1, 0.1);
        // Moments with distinct values, in the checkpoint format.
        let cpu = CpuBackend::new();
        let model = Llama::from_tensors(&cpu, cfg.clone(), &host).unwrap();
        let mut moments = Tensors::new();
        for s in &model.specs {
            for (k, prefix) in ["m", "v"].iter().enumerate() {
                let data = (0..s.numel())
                    .map(|i| (i * 2 + k) as f32 * 0.25 + s.numel() as f32)
                    .collect();
                moments.insert(
                    format!("{prefix}.{}", s.name),
                    HostTensor {
                        shape: s.shape.clone(),
                        data,
                    },
                );
            }
        }
        let full: usize = model.specs.iter().map(|s| 2 * s.numel()).sum();
        for world in [2usize, 3] {
            let comms = ThreadComm::group(world);
            let outs: Vec<(usize, Option<Tensors>)> = std::thread::scope(|sc| {
                let hs: Vec<_> = comms
                    .into_iter()
                    .map(|c| {
                        let (cfg, host, moments, hyper) = (&cfg, &host, &moments, &hyper);
                        sc.spawn(move || {
                            let be = CpuBackend::with_threads(1).unwrap();
                            let mut model = Llama::from_tensors(&be, cfg.clone(), host).unwrap();
                            let mut opt = DpAdamW::new(&be, &c, &mut model, hyper, 1).unwrap();
                            assert!(opt.is_zero1());
                            opt.load_tensors(&be, &c, &model, moments, 7).unwrap();
                            assert_eq!(opt.step(), 7);
                            let held = opt.state_elements(&be);
                            (held, opt.to_tensors(&be, &c, &model).unwrap())
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let want: usize = model
                .specs
                .iter()
                .map(|s| 2 * shard_len(s.numel(), world))
                .sum();
            for (rank, (held, t)) in outs.iter().enumerate() {
                assert_eq!(*held, want, "world {world} rank {rank}");
                assert!(*held * world < full + 2 * world * model.specs.len());
                assert_eq!(t.is_some(), rank == 0, "only rank 0 gets the tensors");
            }
            assert_eq!(outs[0].1.as_ref().unwrap(), &moments, "world {world}");
        }
    }
}
