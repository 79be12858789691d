//! The training loop and the API the daemon and `koala train` call.
//!
//! [`run`] trains (or resumes from the newest checkpoint in `out_dir`) and reports progress to an
//! [`Observer`], which can also cancel the run at the next step boundary.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use std::time::Instant;

use koala_kernels::Backend;

use crate::checkpoint::{self, TrainState};
use crate::config::LlamaConfig;
use crate::data::{Batch, Dataset, Loader, LoaderPosition, Row};
use crate::hparams::{Hyper, LossMode};
use crate::model::{Inputs, Llama};
use crate::optim::AdamW;
use crate::plot;
use crate::weights::{self, Tensors};
use crate::{Error, Result};

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
    /// `cpu` (the only backend in this build).
    #[serde(default = "default_device")]
    pub device: String,
    /// Stop after this many optimizer steps (the schedule still spans the full run).
    #[serde(default)]
    pub max_steps: Option<u64>,
}

fn default_checkpoint_every() -> u64 {
    100
}
fn default_keep() -> usize {
    3
}
fn default_device() -> String {
    "cpu".into()
}

impl TrainConfig {
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
pub fn run(cfg: &TrainConfig, obs: &mut dyn Observer) -> Result<RunOutcome> {
    match cfg.device.as_str() {
        "cpu" => run_with(&koala_kernels::cpu::CpuBackend::new(), cfg, obs),
        other => Err(Error::Config(format!(
            "device {other:?} is not available in this build (use \"cpu\")"
        ))),
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

/// One optimizer step over `rows` (a global batch): zero grads, forward+backward per
/// micro-batch of `hyper.micro_batch_size` rows, AdamW at `lr`. Returns `(loss, grad_norm,
/// tokens)`.
pub fn train_step<B: Backend>(
    be: &B,
    model: &mut Llama<B>,
    opt: &mut AdamW<B>,
    rows: &[&Row],
    hyper: &Hyper,
    lr: f32,
) -> Result<(f32, f64, usize)> {
    let batches: Vec<Batch> = rows
        .chunks(hyper.micro_batch_size.max(1))
        .map(|c| Batch::from_rows(c, hyper.max_len))
        .collect();
    let weights = loss_weights(&batches, hyper.loss);
    model.zero_grads(be)?;
    let mut loss = 0.0f64;
    let mut tokens = 0usize;
    for (b, w) in batches.iter().zip(&weights) {
        let inp = Inputs::upload(be, b.b, b.t, &b.inputs, &b.positions, &b.segment_ids)?;
        let targets = be.upload_ids(&b.targets)?;
        loss += model.forward_backward(be, &inp, &targets, w)?;
        tokens += b.b * b.t;
    }
    let norm = opt.update(be, model, lr)?;
    Ok((loss as f32, norm, tokens))
}

fn hyper_hash(h: &Hyper) -> String {
    use sha2::Digest;
    let text = toml::to_string(h).unwrap_or_default();
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
    let has_weights = dir.is_some_and(|d| {
        d.join("model.safetensors").exists() || d.join("model.safetensors.index.json").exists()
    });
    if let (Some(d), true) = (dir, has_weights) {
        let w = weights::load_dir(d)?;
        weights::check_against(&cfg, &w, d)?;
        Ok((cfg, w))
    } else {
        let w = weights::init_weights(&cfg, seed, 0.02);
        Ok((cfg, w))
    }
}

/// [`run`] on a given backend.
pub fn run_with<B: Backend>(
    be: &B,
    cfg: &TrainConfig,
    obs: &mut dyn Observer,
) -> Result<RunOutcome> {
    let hyper = cfg.hyper()?;
    let out = &cfg.out_dir;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let ds = Dataset::open(&cfg.shards)?;
    let ckpt_root = out.join("checkpoints");
    let n_rows = ds.rows.len();
    let steps_per_epoch = n_rows.div_ceil(hyper.batch_size) as u64;
    let total_steps = steps_per_epoch * hyper.epochs as u64;
    let stop_at = cfg.max_steps.map_or(total_steps, |m| m.min(total_steps));
    let schedule = hyper.schedule(total_steps);
    let hash = hyper_hash(&hyper);

    let (mcfg, mut model, mut opt, mut loader, resumed_from, mut last_loss) =
        match checkpoint::latest(&ckpt_root)? {
            Some(dir) => {
                let ck = checkpoint::load(&dir)?;
                if ck.state.hyper_sha256 != hash || ck.state.seed != cfg.seed {
                    return Err(Error::Config(format!(
                        "{}: was written with other hyperparameters or seed; use a fresh out_dir",
                        dir.display()
                    )));
                }
                let model = Llama::from_tensors(be, ck.config.clone(), &ck.model)?;
                let mut opt = AdamW::new(
                    be,
                    &model,
                    hyper.beta1,
                    hyper.beta2,
                    hyper.eps,
                    hyper.weight_decay,
                    hyper.grad_clip,
                )?;
                opt.load_tensors(be, &model, &ck.optim, ck.state.step)?;
                let loader = Loader::new(n_rows, cfg.seed, ck.state.loader);
                tracing::info!(checkpoint = %dir.display(), step = ck.state.step, "resuming");
                (
                    ck.config,
                    model,
                    opt,
                    loader,
                    Some(ck.state.step),
                    ck.state.last_loss,
                )
            }
            None => {
                let (mcfg, w) = load_model_source(&cfg.model, cfg.seed)?;
                let model = Llama::from_tensors(be, mcfg.clone(), &w)?;
                let opt = AdamW::new(
                    be,
                    &model,
                    hyper.beta1,
                    hyper.beta2,
                    hyper.eps,
                    hyper.weight_decay,
                    hyper.grad_clip,
                )?;
                (
                    mcfg,
                    model,
                    opt,
                    Loader::new(n_rows, cfg.seed, LoaderPosition::default()),
                    None,
                    f32::NAN,
                )
            }
        };
    let vocab = mcfg.vocab_size;
    if let Some((i, r)) = ds
        .rows
        .iter()
        .enumerate()
        .find(|(_, r)| r.tokens.iter().any(|&t| t as usize >= vocab))
    {
        let bad = r
            .tokens
            .iter()
            .find(|&&t| t as usize >= vocab)
            .copied()
            .unwrap_or_default();
        return Err(Error::format(
            &cfg.shards,
            format!("row {i}: token id {bad} >= vocab_size {vocab}"),
        ));
    }
    tracing::info!(
        params = model.n_params(),
        rows = n_rows,
        tokens = ds.n_tokens(),
        total_steps,
        backend = %be.name(),
        "training"
    );
    obs.event(&TrainEvent::Started {
        total_steps,
        resumed_from,
    });

    let metrics_path = out.join("metrics.jsonl");
    let mut history = read_metrics(&metrics_path, resumed_from.unwrap_or(0))?;
    let mut step = opt.step;
    let t0 = Instant::now();
    let mut tokens_done = 0usize;
    let save_ckpt = |model: &Llama<B>,
                     opt: &AdamW<B>,
                     loader: &Loader,
                     step: u64,
                     last_loss: f32|
     -> Result<PathBuf> {
        let state = TrainState {
            step,
            total_steps,
            loader: loader.position(),
            seed: cfg.seed,
            hyper_sha256: hash.clone(),
            last_loss,
        };
        let p = checkpoint::save(
            &ckpt_root,
            &mcfg,
            &model.to_tensors(be)?,
            &opt.to_tensors(be, model)?,
            &state,
        )?;
        checkpoint::prune(&ckpt_root, cfg.keep_checkpoints)?;
        Ok(p)
    };
    let mut last_saved = resumed_from;
    while step < stop_at {
        if obs.cancelled() {
            if last_saved != Some(step) {
                let p = save_ckpt(&model, &opt, &loader, step, last_loss)?;
                obs.event(&TrainEvent::Checkpoint { step, path: p });
            }
            return Ok(RunOutcome::Cancelled { step });
        }
        let idx = loader.next_batch(hyper.batch_size);
        let rows: Vec<&Row> = idx.iter().map(|&i| &ds.rows[i]).collect();
        let lr = schedule.lr(step);
        let (loss, norm, tokens) = train_step(be, &mut model, &mut opt, &rows, &hyper, lr)?;
        step += 1;
        last_loss = loss;
        tokens_done += tokens;
        let elapsed = t0.elapsed().as_secs_f64();
        let done_here = step - resumed_from.unwrap_or(0);
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
        };
        append_metric(&metrics_path, &rec)?;
        history.push(rec);
        obs.event(&TrainEvent::Step {
            step,
            total_steps,
            loss,
            lr,
            tokens_per_s,
            eta_s,
        });
        if cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0 && step < stop_at {
            let p = save_ckpt(&model, &opt, &loader, step, loss)?;
            last_saved = Some(step);
            obs.event(&TrainEvent::Checkpoint { step, path: p });
        }
    }
    if last_saved != Some(step) {
        let p = save_ckpt(&model, &opt, &loader, step, last_loss)?;
        obs.event(&TrainEvent::Checkpoint { step, path: p });
    }
    let final_dir = out.join("final");
    weights::save_dir(&final_dir, &mcfg, &model.to_tensors(be)?, 5 << 30)?;
    let curve = plot::loss_curve(&out.join("loss_curve.png"), &history)?;
    let report = serde_json::json!({
        "steps": step,
        "total_steps": total_steps,
        "final_loss": last_loss,
        "final_model": final_dir,
        "metrics": metrics_path,
        "loss_curve": curve,
        "hyper": hyper,
        "params": model.n_params(),
        "backend": be.name(),
    });
    weights::atomic_write(
        &out.join("report.json"),
        serde_json::to_string_pretty(&report)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    obs.event(&TrainEvent::Finished {
        step,
        final_loss: last_loss,
    });
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
}

/// Reads `metrics.jsonl`, keeping records up to `upto` and rewriting the file without later ones
/// (a resume replays the steps after its checkpoint).
fn read_metrics(path: &Path, upto: u64) -> Result<Vec<MetricRecord>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: MetricRecord = serde_json::from_str(line)
            .map_err(|e| Error::format(path, format!("line {}: {e}", i + 1)))?;
        if r.step <= upto {
            out.push(r);
        }
    }
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
