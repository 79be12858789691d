//! Training checkpoints: `out_dir/checkpoints/step-NNNNNNNN/` holds the model in the HF layout
//! (`config.json` + `model.safetensors`, loadable by `transformers` as-is) — or, when training a
//! LoRA adapter, the base's `config.json` and the adapter in peft's layout
//! (`adapter_config.json` + `adapter_model.safetensors`, loadable by `peft` as-is) — the AdamW moments
//! (`optimizer.safetensors`) and `state.json` (step, data-loader position, RNG seed, a hash of the
//! hyperparameters).
//!
//! Writes are atomic twice over: each file goes through temp file → `fsync` → `rename`, and the
//! whole directory is built as `.step-N.tmp` and renamed into place, so a crash never leaves a
//! half-written checkpoint that [`latest`] would pick.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::LlamaConfig;
use crate::data::LoaderPosition;
use crate::lora::{self, LoraConfig};
use crate::weights::{self, Tensors};
use crate::{Error, Result};

/// Everything besides tensors that a resume needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    pub total_steps: u64,
    /// Where the data loader continues.
    pub loader: LoaderPosition,
    /// The data-order RNG: a ChaCha8 stream re-seeded per epoch from `(seed, epoch)`, so the seed
    /// and the loader's epoch are its whole state.
    pub seed: u64,
    /// sha256 of the effective hyperparameters (a resume with other ones is refused).
    pub hyper_sha256: String,
    /// Loss of the last step.
    pub last_loss: f32,
}

/// The directory name of the checkpoint of `step`.
pub fn dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The LoRA side of a checkpoint: the adapter's settings and the base model it adapts (the
/// `base_model_name_or_path` of `adapter_config.json`).
pub struct AdapterMeta<'a> {
    pub lora: &'a LoraConfig,
    pub base_model: &'a str,
}

/// Writes a checkpoint under `root` (usually `out_dir/checkpoints`); returns its directory.
/// `model` holds the model's weights, or with `adapter` the adapter's tensors.
pub fn save(
    root: &Path,
    cfg: &LlamaConfig,
    model: &Tensors,
    optim: &Tensors,
    state: &TrainState,
    adapter: Option<AdapterMeta<'_>>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    let name = dir_name(state.step);
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    match adapter {
        Some(m) => {
            weights::save_config(&tmp, cfg)?;
            lora::save_adapter(&tmp, m.lora, model, m.base_model)?;
        }
        None => {
            weights::save_dir(&tmp, cfg, model, 5 << 30)?;
        }
    }
    weights::atomic_write(
        &tmp.join("optimizer.safetensors"),
        &weights::serialize(optim)?,
    )?;
    // Crash tests stop here (KOALA_TRAINERD_PAUSE_AT=checkpoint-write-N): half a checkpoint.
    crate::daemon::hooks::pause_point(&format!("checkpoint-write-{}", state.step));
    let st = serde_json::to_string_pretty(state).map_err(|e| Error::Invalid(e.to_string()))?;
    weights::atomic_write(&tmp.join("state.json"), st.as_bytes())?;
    let dst = root.join(&name);
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(|e| Error::io(&dst, e))?;
    }
    std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
    weights::sync_dir(root)?;
    Ok(dst)
}

/// Complete checkpoints under `root`, oldest first.
pub fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let rd = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<u64>().ok())
            && e.path().join("state.json").exists()
        {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint under `root`.
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    Ok(list(root)?.pop().map(|(_, p)| p))
}

/// Removes all but the newest `keep` checkpoints (`keep = 0` keeps all).
pub fn prune(root: &Path, keep: usize) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let all = list(root)?;
    for (_, p) in all.iter().take(all.len().saturating_sub(keep)) {
        std::fs::remove_dir_all(p).map_err(|e| Error::io(p, e))?;
    }
    Ok(())
}

/// A loaded checkpoint.
pub struct Loaded {
    pub config: LlamaConfig,
    /// The model's weights, or the adapter's tensors when `lora` is set.
    pub model: Tensors,
    pub lora: Option<LoraConfig>,
    pub optim: Tensors,
    pub state: TrainState,
}

/// Reads a checkpoint directory written by [`save`].
pub fn load(dir: &Path) -> Result<Loaded> {
    let config = LlamaConfig::from_file(&dir.join("config.json"))?;
    let (model, lora) = if lora::is_adapter_dir(dir) {
        let (lc, t) = lora::load_adapter(dir, &config)?;
        (t, Some(lc))
    } else {
        (weights::load_dir(dir)?, None)
    };
    let optim = weights::load_file(&dir.join("optimizer.safetensors"))?;
    let sp = dir.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
    let state = serde_json::from_str(&text).map_err(|e| Error::format(&sp, e))?;
    Ok(Loaded {
        config,
        model,
        lora,
        optim,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::init_weights;

    #[test]
    fn save_list_prune_load() {
        let cfg: LlamaConfig = LlamaConfig::from_json_str(r#"{"vocab_size": 8, "hidden_size": 4, "intermediate_size": 6, "num_hidden_layers": 1, "num_attention_heads": 2}"#).unwrap();
        let w = init_weights(&cfg, 0, 0.02);
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("checkpoints");
        for step in [5u64, 10, 15] {
            let st = TrainState {
                step,
                total_steps: 20,
                loader: LoaderPosition {
                    epoch: 0,
                    cursor: step as usize,
                },
                seed: 1,
                hyper_sha256: "x".into(),
                last_loss: 1.5,
            };
            save(&root, &cfg, &w, &w, &st, None).unwrap();
        }
        // A leftover temp dir from a crash is not a checkpoint.
        std::fs::create_dir_all(root.join(".step-00000020.tmp")).unwrap();
        assert_eq!(
            list(&root).unwrap().iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![5, 10, 15]
        );
        prune(&root, 2).unwrap();
        assert_eq!(list(&root).unwrap().len(), 2);
        let l = load(&latest(&root).unwrap().unwrap()).unwrap();
        assert_eq!(l.state.step, 15);
        assert_eq!(l.model, w);
        assert_eq!(l.config, cfg);
    }
}
