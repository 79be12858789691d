//! The training loop and the API the daemon and `koala train` call.
//!
//! [`run`] trains (or resumes from the newest checkpoint in `out_dir`) and reports progress to an
//! [`Observer`], which can also cancel the run at the next step boundary.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use koala_kernels::Backend;
use koala_kernels::comm::{Communicator, ReduceOp, shard_range};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, TrainState};
use crate::config::LlamaConfig;
use crate::data::{Batch, Dataset, Loader, LoaderPosition, Row};
use crate::dp::{self, DpAdamW, Plan, Solo};
use crate::hparams::{Hyper, LossMode};
use crate::lora::{self, LoraConfig};
use crate::model::{Inputs, Llama, NoHook, ParamHook};
use crate::optim::AdamW;
use crate::weights::{self, Tensors};
use crate::{Error, Result};
use crate::{plot, tensorboard};

/// A training run, as read from `train.toml`. Relative paths are relative to the working
/// directory. Unknown keys are errors.
///
/// ```
/// let cfg: koala_trainer::TrainConfig = toml::from_str(r#"
///     model = "models/tiny/config.json"
///     shards = "data/shards"
///     out_dir = "runs/tiny"
///     preset = "tiny-cpu"
///     [hyper]
///     lr = 3e-4
/// "#).unwrap();
/// assert_eq!(cfg.hyper().unwrap().lr, 3e-4);
/// assert_eq!(cfg.device, "cpu");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// A HF model directory (`config.json` + safetensors) to fine-tune, or a `config.json` file
    /// (or a directory holding only one) to initialise from scratch with `seed`.
    pub model: PathBuf,
    /// Directory of token shards (`manifest.json` + Arrow IPC files; see docs/shards.md).
    pub shards: PathBuf,
    /// Where checkpoints, `metrics.jsonl`, the loss curve and the final model go.
    pub out_dir: PathBuf,
    /// A built-in preset (`alpaca-7b`, `koala-13b`, `tiny-cpu`); defaults are used without one.
    #[serde(default)]
    pub preset: Option<String>,
    /// Hyperparameter overrides on top of the preset (keys as in `trainer/presets/*.toml`).
    #[serde(default)]
    pub hyper: toml::Table,
    /// Seeds the initialisation (when training from scratch) and the data order.
    #[serde(default)]
    pub seed: u64,
    /// Write a checkpoint every this many optimizer steps (0: only at the end).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Keep only the newest this many checkpoints (0 keeps all).
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// `cpu` (default), `auto`, `cuda` / `cuda:N` (one GPU), or several GPUs for data
    /// parallelism: `cuda:0,1`, `cuda:0,cuda:1`, `cuda:A..B` (half-open). See [`crate::dp`].
    #[serde(default = "default_device")]
    pub device: String,
    /// CPU data-parallel workers (threads, each on its share of the cores) when `device` is
    /// `cpu` (or `auto` falls back to it); 0 or 1 is one worker. With GPUs there is one worker
    /// per device, and this must be 0 or the number of devices.
    #[serde(default)]
    pub workers: usize,
    /// ZeRO-1: shard the AdamW moments across the workers (no effect with one worker).
    /// Checkpoints keep the single-worker format either way.
    #[serde(default)]
    pub zero1: bool,
    /// ZeRO stage 0 to 3 across the workers ([`crate::dp::DpAdamW`]): 1 shards the optimizer
    /// state, 2 the gradients too, 3 the parameters too (FSDP's full sharding; full
    /// fine-tuning only). `zero1 = true` means at least 1. No effect with one worker. Unset:
    /// the preset's `[parallel]` choice ([`crate::hparams::Parallel`]), else 0.
    #[serde(default)]
    pub zero: Option<u8>,
    /// Activation checkpointing: keep each layer's input only and recompute the layer's
    /// forward in the backward (one layer's activations instead of all of them; the gradients
    /// are bit-identical). Unset: the preset's `[parallel]` choice, else off.
    #[serde(default)]
    pub checkpointing: Option<bool>,
    /// Train a LoRA adapter instead of the whole model (a `[lora]` table; see
    /// [`crate::lora::LoraConfig`] for its keys and defaults). `model` must then hold weights.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// Stop after this many optimizer steps (the schedule still spans the full run).
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// The shard split whose held-out loss is measured: `auto` (default: `eval`, else
    /// `validation`, else `val`, when the shards have one), a split name, or `none`.
    #[serde(default = "default_val_split")]
    pub val_split: String,
    /// Measure the validation loss every this many optimizer steps, and always at the end
    /// (0: only at the end).
    #[serde(default = "default_val_every")]
    pub val_every: u64,
    /// Validation rows at most: the split's first rows (`koala tokenize` shuffled them).
    #[serde(default = "default_val_max_rows")]
    pub val_max_rows: usize,
}

fn default_checkpoint_every() -> u64 {
    100
}
fn default_keep() -> usize {
    3
}
/// The default of [`TrainConfig::val_split`].
pub fn default_val_split() -> String {
    "auto".into()
}
/// The default of [`TrainConfig::val_every`].
pub fn default_val_every() -> u64 {
    100
}
/// The default of [`TrainConfig::val_max_rows`].
pub fn default_val_max_rows() -> usize {
    64
}
fn default_device() -> String {
    "cpu".into()
}

impl TrainConfig {
    /// The ZeRO stage: `zero`, else the preset's (at most 1 with `[lora]`), at least 1 with
    /// `zero1 = true`. Stages above 3, and 2 or 3 asked for with `[lora]`, are errors naming
    /// `zero`.
    pub fn zero_stage(&self) -> Result<u8> {
        let preset = match self.zero {
            Some(_) => 0,
            None => self.parallel()?.zero,
        };
        dp::zero_stage(self.zero, preset, self.zero1, self.lora.is_some())
            .map_err(|r| Error::Config(format!("zero: {r}")))
    }

    /// Whether activation checkpointing is on: `checkpointing`, else the preset's choice.
    pub fn checkpointing(&self) -> Result<bool> {
        match self.checkpointing {
            Some(on) => Ok(on),
            None => Ok(self.parallel()?.checkpointing),
        }
    }

    /// The preset's `[parallel]` table (defaults without a preset).
    fn parallel(&self) -> Result<crate::hparams::Parallel> {
        match &self.preset {
            Some(p) => crate::hparams::Parallel::preset(p),
            None => Ok(Default::default()),
        }
    }

    /// Reads a `train.toml`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::format(path, e))
    }

    /// The effective hyperparameters: the preset (or defaults) with `[hyper]` applied.
    pub fn hyper(&self) -> Result<Hyper> {
        let base = match &self.preset {
            Some(p) => Hyper::preset(p)?,
            None => Hyper::default(),
        };
        base.with_overrides(&self.hyper)
    }
}

/// Progress of a run, in the order they happen.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum TrainEvent {
    Started {
        total_steps: u64,
        resumed_from: Option<u64>,
    },
    Step {
        step: u64,
        total_steps: u64,
        loss: f32,
        lr: f32,
        tokens_per_s: f64,
        eta_s: f64,
        /// The validation loss measured after this step, when one was due.
        val_loss: Option<f32>,
    },
    Checkpoint {
        step: u64,
        path: PathBuf,
    },
    Finished {
        step: u64,
        final_loss: f32,
    },
}

/// Receives [`TrainEvent`]s and may cancel the run.
pub trait Observer {
    fn event(&mut self, ev: &TrainEvent);
    /// Polled at every step boundary; `true` makes [`run`] checkpoint and return.
    fn cancelled(&self) -> bool {
        false
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    Finished,
    Cancelled { step: u64 },
}

/// Runs (or resumes from the newest checkpoint in cfg.out_dir) and returns at completion or at
/// the first step boundary after `obs.cancelled()` is true.
///
/// `cfg.device`, `cfg.workers` and `cfg.zero1` pick the backend and the data-parallel group
/// (see [`crate::dp`]): one CPU worker (the default), `workers` CPU threads over `ThreadComm`,
/// one GPU, or one thread per GPU over NCCL. A `cuda` device that cannot be opened is an error
/// naming what is missing; `auto` falls back to the CPU, logging why.
pub fn run(cfg: &TrainConfig, obs: &mut dyn Observer) -> Result<RunOutcome> {
    let plan = dp::plan(&cfg.device, cfg.workers)?;
    if cfg.zero_stage()? > 0 && plan.world() == 1 {
        tracing::info!("ZeRO has no effect with a single worker");
    }
    match plan {
        Plan::Cpu { workers: 1 } => run_with(&koala_kernels::cpu::CpuBackend::new(), cfg, obs),
        Plan::Cpu { workers } => run_cpu_group(workers, cfg, obs),
        #[cfg(feature = "cuda")]
        Plan::Cuda(ordinals) => match ordinals.as_slice() {
            [one] => run_with(&open_cuda(*one)?, cfg, obs),
            many => run_cuda_group(many, cfg, obs),
        },
        // `select::open_cuda` of a build without CUDA: the error says which feature is missing.
        #[cfg(not(feature = "cuda"))]
        Plan::Cuda(ordinals) => {
            koala_kernels::select::open_cuda(ordinals.first().copied().unwrap_or(0))?;
            Err(Error::Config("no CUDA backend in this build".into()))
        }
    }
}

/// Opens one GPU (bf16 mixed precision) or says why it cannot.
#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<koala_kernels::cuda::CudaBackend> {
    match koala_kernels::select::open_cuda(ordinal)? {
        koala_kernels::select::Selected::Cuda(be) => Ok(be),
        koala_kernels::select::Selected::Cpu { .. } => Err(Error::Config(format!(
            "device cuda:{ordinal}: selection returned the CPU"
        ))),
    }
}

/// `workers` CPU workers: threads with a `ThreadComm` each and a CPU backend on their share of
/// the cores; rank 0 runs on the calling thread and is the one that talks to `obs`.
fn run_cpu_group(workers: usize, cfg: &TrainConfig, obs: &mut dyn Observer) -> Result<RunOutcome> {
    use koala_kernels::CpuBackend;
    use koala_kernels::comm::ThreadComm;
    let prep = prepare(cfg)?;
    let prep = &prep;
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    let per = (cores / workers).max(1);
    let mut comms = ThreadComm::group(workers).into_iter();
    let comm0 = comms
        .next()
        .ok_or_else(|| Error::Config("workers: a group needs at least one worker".into()))?;
    tracing::info!(
        workers,
        threads_per_worker = per,
        zero = cfg.zero_stage().unwrap_or_default(),
        "CPU data parallel"
    );
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .map(|comm| {
                s.spawn(move || {
                    let be = CpuBackend::with_threads(per).map_err(Error::from);
                    let be = dp::agree::<CpuBackend, _, _>(&comm, be)?;
                    train_rank(&be, &comm, prep, cfg, None)
                })
            })
            .collect();
        let be0 = CpuBackend::with_threads(per).map_err(Error::from);
        let r0 = dp::agree::<CpuBackend, _, _>(&comm0, be0)
            .and_then(|be| train_rank(&be, &comm0, prep, cfg, Some(obs)));
        group_outcome(r0, handles.into_iter().map(|h| h.join()).collect())
    })
}

/// One worker thread per GPU with NCCL; rank 0 runs on the calling thread.
#[cfg(feature = "cuda")]
fn run_cuda_group(
    ordinals: &[usize],
    cfg: &TrainConfig,
    obs: &mut dyn Observer,
) -> Result<RunOutcome> {
    use koala_kernels::comm::NcclComm;
    // Open every device first, so a missing GPU is a clear error before NCCL is involved.
    let backends = ordinals
        .iter()
        .map(|&o| open_cuda(o))
        .collect::<Result<Vec<_>>>()?;
    let prep = prepare(cfg)?;
    let prep = &prep;
    let world = backends.len();
    let id = NcclComm::new_id()?;
    let bind = |be: &koala_kernels::cuda::CudaBackend| -> Result<()> {
        be.context()
            .bind_to_thread()
            .map_err(|e| Error::Invalid(format!("{}: bind context: {e:?}", be.name())))
    };
    tracing::info!(
        devices = ?ordinals,
        zero = cfg.zero_stage().unwrap_or_default(),
        "CUDA data parallel (NCCL)"
    );
    std::thread::scope(|s| {
        let mut it = backends.iter().enumerate();
        let Some((_, be0)) = it.next() else {
            return Err(Error::Config("device: no CUDA devices".into()));
        };
        let handles: Vec<_> = it
            .map(|(rank, be)| {
                s.spawn(move || {
                    bind(be)?;
                    let comm = NcclComm::new(be, rank, world, id)?;
                    train_rank(be, &comm, prep, cfg, None)
                })
            })
            .collect();
        let r0 = bind(be0).and_then(|()| {
            let comm = NcclComm::new(be0, 0, world, id)?;
            train_rank(be0, &comm, prep, cfg, Some(obs))
        });
        group_outcome(r0, handles.into_iter().map(|h| h.join()).collect())
    })
}

/// The outcome of a group: rank 0's, or the first real error (a rank's own, not the
/// [`dp::PEER_FAILED`] that the other ranks return).
fn group_outcome(
    r0: Result<RunOutcome>,
    rest: Vec<std::thread::Result<Result<RunOutcome>>>,
) -> Result<RunOutcome> {
    let mut results = vec![r0];
    for (i, r) in rest.into_iter().enumerate() {
        results.push(r.unwrap_or_else(|_| {
            Err(Error::Invalid(format!(
                "data-parallel worker {} panicked",
                i + 1
            )))
        }));
    }
    let mut peer = None;
    let mut first = None;
    for r in results {
        match r {
            Ok(o) => {
                first.get_or_insert(o);
            }
            Err(e) if e.to_string() == dp::PEER_FAILED => {
                peer.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    match (peer, first) {
        (Some(e), _) => Err(e),
        (None, Some(o)) => Ok(o),
        (None, None) => Err(Error::Invalid("no data-parallel worker ran".into())),
    }
}

/// Loss weights for the micro-batches of one global batch: masked token mean over the whole
/// global batch, or EasyLM's per-row mean then mean over rows (rows without any target count
/// for nothing and are left out of the row mean).
pub fn loss_weights(batches: &[Batch], mode: LossMode) -> Vec<Vec<f32>> {
    match mode {
        LossMode::TokenMean => {
            let total: usize = batches.iter().map(Batch::n_targets).sum();
            let w = if total > 0 { 1.0 / total as f64 } else { 0.0 };
            batches
                .iter()
                .map(|b| {
                    b.target_mask
                        .iter()
                        .map(|&m| (m as f64 * w) as f32)
                        .collect()
                })
                .collect()
        }
        LossMode::RowMean => {
            let rows_with: usize = batches
                .iter()
                .map(|b| {
                    (0..b.b)
                        .filter(|r| {
                            b.target_mask[r * b.t..(r + 1) * b.t]
                                .iter()
                                .any(|&m| m != 0)
                        })
                        .count()
                })
                .sum();
            batches
                .iter()
                .map(|b| {
                    let mut out = vec![0.0f32; b.b * b.t];
                    for r in 0..b.b {
                        let row = &b.target_mask[r * b.t..(r + 1) * b.t];
                        let cnt: usize = row.iter().map(|&m| m as usize).sum();
                        if cnt == 0 {
                            continue;
                        }
                        let w = 1.0 / (cnt as f64 * rows_with as f64);
                        for (i, &m) in row.iter().enumerate() {
                            out[r * b.t + i] = (m as f64 * w) as f32;
                        }
                    }
                    out
                })
                .collect()
        }
    }
}

/// Forward and backward of rank `rank` of `world` over its part of the global batch `rows`:
/// the rows are split by rank ([`shard_range`]) and each rank's rows into micro-batches of
/// `hyper.micro_batch_size`; the loss weights are computed over the whole global batch, so the
/// ranks' gradients (and returned losses) **sum** to the global ones. Zeroes the gradients first.
/// Returns `(loss, tokens)` of this rank; with `world = 1` it is the whole step's.
pub fn local_grads<B: Backend>(
    be: &B,
    model: &mut Llama<B>,
    rows: &[&Row],
    hyper: &Hyper,
    rank: usize,
    world: usize,
) -> Result<(f64, usize)> {
    local_grads_with(be, model, rows, hyper, rank, world, &mut NoHook)
}

/// [`local_grads`] with the passes given `hook` (ZeRO-2/3: [`DpAdamW::hook`]). Every rank makes
/// as many passes as the rank with the most micro-batches, a rank out of rows making idle ones
/// ([`Llama::idle_with`]), so the hook's collectives line up across ranks.
pub fn local_grads_with<B: Backend>(
    be: &B,
    model: &mut Llama<B>,
    rows: &[&Row],
    hyper: &Hyper,
    rank: usize,
    world: usize,
    hook: &mut dyn ParamHook<B>,
) -> Result<(f64, usize)> {
    let micro = hyper.micro_batch_size.max(1);
    let mut batches = Vec::new();
    let mut mine = Vec::new();
    let mut rounds = 0;
    for r in 0..world.max(1) {
        let chunks = rows[shard_range(rows.len(), world.max(1), r)].chunks(micro);
        rounds = rounds.max(chunks.len());
        for c in chunks {
            if r == rank {
                mine.push(batches.len());
            }
            batches.push(Batch::from_rows(c, hyper.max_len));
        }
    }
    let weights = loss_weights(&batches, hyper.loss);
    model.zero_grads(be)?;
    hook.zero_grads(be)?;
    let mut loss = 0.0f64;
    let mut tokens = 0usize;
    for round in 0..rounds {
        let Some(&i) = mine.get(round) else {
            model.idle_with(be, hook)?;
            continue;
        };
        let (b, w) = (&batches[i], &weights[i]);
        let inp = Inputs::upload(be, b.b, b.t, &b.inputs, &b.positions, &b.segment_ids)?;
        let targets = be.upload_ids(&b.targets)?;
        // LoRA dropout: masks by global micro-batch, the same whatever the number of ranks.
        model.set_dropout_call(i as u64);
        loss += model.forward_backward_with(be, &inp, &targets, w, hook)?;
        tokens += b.b * b.t;
    }
    Ok((loss, tokens))
}

/// One optimizer step over `rows` (a global batch) on one worker: zero grads, forward+backward
/// per micro-batch of `hyper.micro_batch_size` rows, AdamW at `lr`. Returns `(loss, grad_norm,
/// tokens)`.
pub fn train_step<B: Backend>(
    be: &B,
    model: &mut Llama<B>,
    opt: &mut AdamW<B>,
    rows: &[&Row],
    hyper: &Hyper,
    lr: f32,
) -> Result<(f32, f64, usize)> {
    let (loss, tokens) = local_grads(be, model, rows, hyper, 0, 1)?;
    let norm = opt.update(be, model, lr)?;
    Ok((loss as f32, norm, tokens))
}

/// sha256 of the hyperparameters and the LoRA settings (a resume with other ones is refused).
fn hyper_hash(h: &Hyper, lc: Option<&LoraConfig>) -> String {
    use sha2::Digest;
    let mut text = toml::to_string(h).unwrap_or_default();
    if let Some(lc) = lc {
        text.push_str("\n[lora]\n");
        text.push_str(&toml::to_string(lc).unwrap_or_default());
    }
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Loads the starting model: a HF directory with weights, or a `config.json` (file, or a
/// directory without weights) initialised from `seed`.
pub fn load_model_source(path: &Path, seed: u64) -> Result<(LlamaConfig, Tensors)> {
    let (cfg_path, dir) = if path.is_dir() {
        (path.join("config.json"), Some(path))
    } else {
        (path.to_path_buf(), None)
    };
    let cfg = LlamaConfig::from_file(&cfg_path)?;
    if let (Some(d), true) = (dir, has_weights(path)) {
        let w = weights::load_dir(d)?;
        weights::check_against(&cfg, &w, d)?;
        Ok((cfg, w))
    } else {
        let w = weights::init_weights(&cfg, seed, 0.02);
        Ok((cfg, w))
    }
}

/// Whether `path` is a HF model directory with weights (not only a `config.json`).
fn has_weights(path: &Path) -> bool {
    path.is_dir()
        && (path.join("model.safetensors").exists()
            || path.join("model.safetensors.index.json").exists())
}

/// What every rank starts from: the starting weights and (on resume) the optimizer moments.
/// Released once every rank has uploaded them.
struct Init {
    /// The model's weights (frozen under LoRA).
    model: Tensors,
    /// The adapter being trained, under LoRA.
    adapter: Option<(LoraConfig, Tensors)>,
    optim: Option<(Tensors, u64)>,
}

/// The host-side state of a run, read once and shared by every rank.
struct Prepared {
    hyper: Hyper,
    hash: String,
    ds: Dataset,
    /// The validation rows and the split they came from.
    val: Option<(String, Dataset)>,
    total_steps: u64,
    stop_at: u64,
    mcfg: LlamaConfig,
    init: Mutex<Option<Arc<Init>>>,
    loader: LoaderPosition,
    resumed_from: Option<u64>,
    last_loss: f32,
    history: Vec<MetricRecord>,
    ckpt_root: PathBuf,
    metrics_path: PathBuf,
}

/// Reads the config, the data and the newest checkpoint (or the starting model), and checks
/// them; creates `out_dir` and trims `metrics.jsonl` to the resumed step.
fn prepare(cfg: &TrainConfig) -> Result<Prepared> {
    let hyper = cfg.hyper()?;
    let out = &cfg.out_dir;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let ds = Dataset::open(&cfg.shards)?;
    let ckpt_root = out.join("checkpoints");
    let n_rows = ds.rows.len();
    let steps_per_epoch = n_rows.div_ceil(hyper.batch_size) as u64;
    let total_steps = steps_per_epoch * hyper.epochs as u64;
    let stop_at = cfg.max_steps.map_or(total_steps, |m| m.min(total_steps));
    let hash = hyper_hash(&hyper, cfg.lora.as_ref());

    let (mcfg, init, loader, resumed_from, last_loss) = match checkpoint::latest(&ckpt_root)? {
        Some(dir) => {
            let ck = checkpoint::load(&dir)?;
            if ck.state.hyper_sha256 != hash || ck.state.seed != cfg.seed {
                return Err(Error::Config(format!(
                    "{}: was written with other hyperparameters or seed; use a fresh out_dir",
                    dir.display()
                )));
            }
            tracing::info!(checkpoint = %dir.display(), step = ck.state.step, "resuming");
            let (model, adapter) = match (&cfg.lora, ck.lora) {
                (None, None) => (ck.model, None),
                (Some(_), Some(lc)) => {
                    let (mcfg, base) = load_model_source(&cfg.model, cfg.seed)?;
                    if mcfg != ck.config {
                        return Err(Error::Config(format!(
                            "{}: the adapter was trained on another model than {}",
                            dir.display(),
                            cfg.model.display()
                        )));
                    }
                    (base, Some((lc, ck.model)))
                }
                _ => {
                    return Err(Error::Config(format!(
                        "{}: LoRA and full fine-tuning checkpoints do not mix; use a fresh out_dir",
                        dir.display()
                    )));
                }
            };
            (
                ck.config,
                Init {
                    model,
                    adapter,
                    optim: Some((ck.optim, ck.state.step)),
                },
                ck.state.loader,
                Some(ck.state.step),
                ck.state.last_loss,
            )
        }
        None => {
            let (mcfg, w) = load_model_source(&cfg.model, cfg.seed)?;
            let adapter = match &cfg.lora {
                Some(lc) => {
                    if !has_weights(&cfg.model) {
                        return Err(Error::Config(format!(
                            "[lora] needs a model with weights to adapt; {} has none",
                            cfg.model.display()
                        )));
                    }
                    Some((lc.clone(), lora::init_adapter(&mcfg, lc, cfg.seed)?))
                }
                None => None,
            };
            (
                mcfg,
                Init {
                    model: w,
                    adapter,
                    optim: None,
                },
                LoaderPosition::default(),
                None,
                f32::NAN,
            )
        }
    };
    let vocab = mcfg.vocab_size;
    if let Some((i, bad)) = out_of_vocab(&ds.rows, vocab) {
        return Err(Error::format(
            &cfg.shards,
            format!("row {i}: token id {bad} >= vocab_size {vocab}"),
        ));
    }
    let metrics_path = out.join("metrics.jsonl");
    let history = read_metrics(&metrics_path, resumed_from.unwrap_or(0))?;
    let val = validation_rows(cfg, vocab)?;
    Ok(Prepared {
        hyper,
        hash,
        ds,
        val,
        total_steps,
        stop_at,
        mcfg,
        init: Mutex::new(Some(Arc::new(init))),
        loader,
        resumed_from,
        last_loss,
        history,
        ckpt_root,
        metrics_path,
    })
}

/// The scalars of a step in TensorBoard: training loss, learning rate, gradient norm,
/// throughput, and the validation loss and perplexity when measured.
fn tb_values(r: &MetricRecord) -> Vec<(&'static str, f32)> {
    let mut v = vec![
        ("loss/train", r.loss),
        ("lr", r.lr),
        ("grad_norm", r.grad_norm as f32),
        ("tokens_per_s", r.tokens_per_s as f32),
    ];
    if let Some(l) = r.val_loss {
        v.push(("loss/validation", l));
        v.push(("perplexity/validation", l.exp()));
    }
    v
}

/// The first row holding a token id outside the vocabulary, and that id.
fn out_of_vocab(rows: &[Row], vocab: usize) -> Option<(usize, u32)> {
    rows.iter().enumerate().find_map(|(i, r)| {
        r.tokens
            .iter()
            .find(|&&t| t as usize >= vocab)
            .map(|&t| (i, t))
    })
}

/// The validation split's first `val_max_rows` rows, per [`TrainConfig::val_split`].
fn validation_rows(cfg: &TrainConfig, vocab: usize) -> Result<Option<(String, Dataset)>> {
    let names: Vec<&str> = match cfg.val_split.as_str() {
        "none" | "" => return Ok(None),
        "auto" => vec!["eval", "validation", "val"],
        name => vec![name],
    };
    for name in &names {
        if let Some(mut ds) = Dataset::open_split(&cfg.shards, name)? {
            ds.rows.truncate(cfg.val_max_rows.max(1));
            if let Some((i, bad)) = out_of_vocab(&ds.rows, vocab) {
                return Err(Error::format(
                    &cfg.shards,
                    format!("split {name}, row {i}: token id {bad} >= vocab_size {vocab}"),
                ));
            }
            return Ok(Some((name.to_string(), ds)));
        }
    }
    if cfg.val_split != "auto" {
        return Err(Error::format(
            &cfg.shards,
            format!(
                "val_split = {:?}: the manifest has no such split",
                cfg.val_split
            ),
        ));
    }
    Ok(None)
}

/// [`run`] on a given backend, with one worker.
pub fn run_with<B: Backend>(
    be: &B,
    cfg: &TrainConfig,
    obs: &mut dyn Observer,
) -> Result<RunOutcome> {
    let prep = prepare(cfg)?;
    train_rank(be, &Solo, &prep, cfg, Some(obs))
}

/// The training loop of one rank of a data-parallel group (every rank runs it; a group of one
/// uses [`Solo`]). Rank 0 gets the observer and writes metrics, checkpoints and the final model;
/// every rank takes part in the collectives, and a failure on any rank stops all of them.
fn train_rank<B: Backend, C: Communicator<B>>(
    be: &B,
    comm: &C,
    prep: &Prepared,
    cfg: &TrainConfig,
    mut obs: Option<&mut dyn Observer>,
) -> Result<RunOutcome> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let lead = rank == 0;
    let hyper = &prep.hyper;
    let setup = (|| -> Result<(Llama<B>, DpAdamW<B>)> {
        let init = prep
            .init
            .lock()
            .map_err(|_| Error::Invalid("initial state: lock poisoned".into()))?
            .clone()
            .ok_or_else(|| Error::Invalid("initial state already released".into()))?;
        let mut model = match &init.adapter {
            Some((lc, ad)) => Llama::with_lora(be, prep.mcfg.clone(), &init.model, lc, ad)?,
            None => Llama::from_tensors(be, prep.mcfg.clone(), &init.model)?,
        };
        model.set_checkpointing(cfg.checkpointing()?);
        let mut opt = DpAdamW::new(be, comm, &mut model, hyper, cfg.zero_stage()?)?;
        if let Some((t, step)) = &init.optim {
            opt.load_tensors(be, comm, &model, t, *step)?;
        }
        Ok((model, opt))
    })();
    let (mut model, mut opt) = dp::agree(comm, setup)?;
    if lead && let Ok(mut g) = prep.init.lock() {
        // Every rank has dropped its reference by now (they all passed `agree`).
        *g = None;
    }
    let stop_at = prep.stop_at;
    let total_steps = prep.total_steps;
    if lead {
        tracing::info!(
            params = model.n_params(),
            trainable = model.n_trainable(),
            lora = model.lora().is_some(),
            rows = prep.ds.rows.len(),
            tokens = prep.ds.n_tokens(),
            total_steps,
            backend = %be.name(),
            workers = world,
            zero = opt.zero_stage(),
            checkpointing = model.checkpointing(),
            "training"
        );
    }
    if let Some(o) = obs.as_deref_mut() {
        o.event(&TrainEvent::Started {
            total_steps,
            resumed_from: prep.resumed_from,
        });
    }
    let schedule = hyper.schedule(total_steps);
    let mut loader = Loader::new(prep.ds.rows.len(), cfg.seed, prep.loader);
    let mut history = if lead {
        prep.history.clone()
    } else {
        Vec::new()
    };
    // TensorBoard mirrors metrics.jsonl: rewritten from the history, then a record per step.
    // (Only rank 0 writes; `agree` keeps a failure there from leaving the others waiting.)
    let tb = if lead {
        (|| {
            let mut w = tensorboard::EventWriter::create(&cfg.out_dir.join("tensorboard"))?;
            let now = tensorboard::wall_time();
            for r in &history {
                w.scalars(r.step, now, &tb_values(r))?;
            }
            w.flush()?;
            Ok(Some(w))
        })()
    } else {
        Ok(None)
    };
    let mut tb = dp::agree(comm, tb)?;
    let mut step = opt.step();
    let mut last_loss = prep.last_loss;
    let mut last_val_loss: Option<f32> = prep.history.iter().rev().find_map(|r| r.val_loss);
    let t0 = Instant::now();
    let mut tokens_done = 0usize;
    // `base_model_name_or_path` of saved adapters.
    let base_name = cfg.model.display().to_string();
    // A collective: every rank calls it; rank 0 writes and gets the path.
    let save_ckpt = |model: &Llama<B>,
                     opt: &DpAdamW<B>,
                     loader: &Loader,
                     step: u64,
                     last_loss: f32|
     -> Result<Option<PathBuf>> {
        let moments = dp::agree(comm, opt.to_tensors(be, comm, model))?;
        let params = dp::agree(comm, opt.params_to_tensors(be, comm, model))?;
        let written = match moments.zip(params) {
            Some((moments, params)) => (|| {
                let state = TrainState {
                    step,
                    total_steps,
                    loader: loader.position(),
                    seed: cfg.seed,
                    hyper_sha256: prep.hash.clone(),
                    last_loss,
                };
                let p = checkpoint::save(
                    &prep.ckpt_root,
                    &prep.mcfg,
                    &params,
                    &moments,
                    &state,
                    model.lora().map(|lora| checkpoint::AdapterMeta {
                        lora,
                        base_model: &base_name,
                    }),
                )?;
                checkpoint::prune(&prep.ckpt_root, cfg.keep_checkpoints)?;
                Ok(Some(p))
            })(),
            None => Ok(None),
        };
        dp::agree(comm, written)
    };
    let mut last_saved = prep.resumed_from;
    while step < stop_at {
        let cancel_here = obs.as_deref().is_some_and(|o| o.cancelled());
        let cancel = if world > 1 {
            comm.all_reduce_scalar(f64::from(u8::from(cancel_here)), ReduceOp::Sum)? > 0.0
        } else {
            cancel_here
        };
        if cancel {
            if last_saved != Some(step)
                && let Some(p) = save_ckpt(&model, &opt, &loader, step, last_loss)?
                && let Some(o) = obs.as_deref_mut()
            {
                o.event(&TrainEvent::Checkpoint { step, path: p });
            }
            return Ok(RunOutcome::Cancelled { step });
        }
        let idx = loader.next_batch(hyper.batch_size);
        let rows: Vec<&Row> = idx.iter().map(|&i| &prep.ds.rows[i]).collect();
        let lr = schedule.lr(step);
        model.set_train_mode(true);
        model.start_step(cfg.seed, step);
        let local = local_grads_with(
            be,
            &mut model,
            &rows,
            hyper,
            rank,
            world,
            &mut opt.hook(comm),
        );
        model.set_train_mode(false);
        let (mut loss, mut tokens) = dp::agree(comm, local)?;
        if world > 1 {
            loss = comm.all_reduce_scalar(loss, ReduceOp::Sum)?;
            tokens = comm.all_reduce_scalar(tokens as f64, ReduceOp::Sum)? as usize;
        }
        let norm = opt.update(be, comm, &mut model, lr)?;
        let loss = loss as f32;
        step += 1;
        last_loss = loss;
        tokens_done += tokens;
        let val_due = step == stop_at || (cfg.val_every > 0 && step % cfg.val_every == 0);
        let val_loss = match &prep.val {
            Some((_, vds)) if val_due => {
                // The training loss function on the held-out rows, split across the workers
                // like a batch. It runs the backward too; the gradients are discarded (the next
                // step zeroes them first).
                let rows: Vec<&Row> = vds.rows.iter().collect();
                let local = local_grads_with(
                    be,
                    &mut model,
                    &rows,
                    hyper,
                    rank,
                    world,
                    &mut opt.hook(comm),
                );
                let (mut l, _) = dp::agree(comm, local)?;
                if world > 1 {
                    l = comm.all_reduce_scalar(l, ReduceOp::Sum)?;
                }
                Some(l as f32)
            }
            _ => None,
        };
        if val_loss.is_some() {
            last_val_loss = val_loss;
        }
        let written = match obs.as_deref_mut() {
            Some(o) => (|| {
                let elapsed = t0.elapsed().as_secs_f64();
                let done_here = step - prep.resumed_from.unwrap_or(0);
                let tokens_per_s = tokens_done as f64 / elapsed.max(1e-9);
                let eta_s = elapsed / done_here as f64 * (stop_at - step) as f64;
                let rec = MetricRecord {
                    step,
                    loss,
                    lr,
                    grad_norm: norm,
                    tokens,
                    tokens_per_s,
                    elapsed_s: elapsed,
                    val_loss,
                };
                append_metric(&prep.metrics_path, &rec)?;
                if let Some(w) = tb.as_mut() {
                    w.scalars(step, tensorboard::wall_time(), &tb_values(&rec))?;
                    w.flush()?;
                }
                history.push(rec);
                o.event(&TrainEvent::Step {
                    step,
                    total_steps,
                    loss,
                    lr,
                    tokens_per_s,
                    eta_s,
                    val_loss,
                });
                Ok(())
            })(),
            None => Ok(()),
        };
        dp::agree(comm, written)?;
        if cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0 && step < stop_at {
            let p = save_ckpt(&model, &opt, &loader, step, loss)?;
            last_saved = Some(step);
            if let (Some(p), Some(o)) = (p, obs.as_deref_mut()) {
                o.event(&TrainEvent::Checkpoint { step, path: p });
            }
        }
    }
    if last_saved != Some(step)
        && let Some(p) = save_ckpt(&model, &opt, &loader, step, last_loss)?
        && let Some(o) = obs.as_deref_mut()
    {
        o.event(&TrainEvent::Checkpoint { step, path: p });
    }
    let final_params = dp::agree(comm, opt.params_to_tensors(be, comm, &model))?;
    let finished = match obs.zip(final_params) {
        Some((o, params)) => (|| {
            let out = &cfg.out_dir;
            let final_dir = out.join("final");
            match model.lora() {
                // The adapter alone, as peft's `save_pretrained` writes it; `koala lora merge`
                // folds it into the base.
                Some(lc) => lora::save_adapter(&final_dir, lc, &params, &base_name)?,
                None => {
                    weights::save_dir(&final_dir, &prep.mcfg, &params, 5 << 30)?;
                }
            }
            // The tokenizer travels with the model, so `generate`, `serve-model` and `eval`
            // need no `--tokenizer` (`koala tokenize` writes it beside the shards).
            for name in ["tokenizer.json", "tokenizer_config.json"] {
                let src = cfg.shards.join(name);
                if src.is_file() {
                    let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
                    weights::atomic_write(&final_dir.join(name), &bytes)?;
                }
            }
            let curve = plot::loss_curve(&out.join("loss_curve.png"), &history)?;
            let report = serde_json::json!({
                "steps": step,
                "total_steps": total_steps,
                "final_loss": last_loss,
                "final_val_loss": last_val_loss,
                "final_val_perplexity": last_val_loss.map(|l| (l as f64).exp()),
                "val_split": prep.val.as_ref().map(|(name, ds)| {
                    serde_json::json!({"split": name, "rows": ds.rows.len()})
                }),
                "final_model": final_dir,
                "metrics": prep.metrics_path,
                "loss_curve": curve,
                "hyper": hyper,
                "params": model.n_params(),
                "backend": be.name(),
                "device": cfg.device,
                "workers": world,
                "zero1": opt.is_zero1(),
                "zero": opt.zero_stage(),
                "checkpointing": model.checkpointing(),
                "lora": model.lora(),
                "trainable_params": model.n_trainable(),
            });
            weights::atomic_write(
                &out.join("report.json"),
                serde_json::to_string_pretty(&report)
                    .unwrap_or_default()
                    .as_bytes(),
            )?;
            o.event(&TrainEvent::Finished {
                step,
                final_loss: last_loss,
            });
            Ok(())
        })(),
        None => Ok(()),
    };
    dp::agree(comm, finished)?;
    Ok(RunOutcome::Finished)
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    pub step: u64,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    /// The validation loss measured after this step (only on steps where one was due).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f32>,
}

/// Every record of a `metrics.jsonl`; a bad line is an error naming the file and the line.
pub(crate) fn parse_metrics(path: &Path) -> Result<Vec<MetricRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: MetricRecord = serde_json::from_str(line)
            .map_err(|e| Error::format(path, format!("line {}: {e}", i + 1)))?;
        out.push(r);
    }
    Ok(out)
}

/// Reads `metrics.jsonl`, keeping records up to `upto` and rewriting the file without later ones
/// (a resume replays the steps after its checkpoint).
fn read_metrics(path: &Path, upto: u64) -> Result<Vec<MetricRecord>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut out = parse_metrics(path)?;
    out.retain(|r| r.step <= upto);
    let mut body = String::new();
    for r in &out {
        body.push_str(&serde_json::to_string(r).unwrap_or_default());
        body.push('\n');
    }
    weights::atomic_write(path, body.as_bytes())?;
    Ok(out)
}

fn append_metric(path: &Path, r: &MetricRecord) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let line = serde_json::to_string(r).unwrap_or_default();
    writeln!(f, "{line}").map_err(|e| Error::io(path, e))
}
