//! Inference helpers for the CLI: load a HF model directory, compute logits of a batch of ids.
use std::path::Path;

use koala_kernels::Backend;

use crate::config::LlamaConfig;
use crate::model::{Inputs, Llama};
use crate::weights;
use crate::{Error, Result};

/// Loads `dir` (`config.json` + safetensors, single or sharded, any of f32/f16/bf16).
pub fn load_model<B: Backend>(be: &B, dir: &Path) -> Result<Llama<B>> {
    let cfg = LlamaConfig::from_file(&dir.join("config.json"))?;
    let w = weights::load_dir(dir)?;
    weights::check_against(&cfg, &w, dir)?;
    Llama::from_tensors(be, cfg, &w)
}

/// Loads `dir` like [`load_model`] with a LoRA adapter (ours or peft's `save_pretrained`
/// output) applied unmerged, through the adapter path of the training forward (no dropout).
pub fn load_model_with_adapter<B: Backend>(be: &B, dir: &Path, adapter: &Path) -> Result<Llama<B>> {
    let cfg = LlamaConfig::from_file(&dir.join("config.json"))?;
    let w = weights::load_dir(dir)?;
    weights::check_against(&cfg, &w, dir)?;
    let (lc, ad) = crate::lora::load_adapter(adapter, &cfg)?;
    Llama::with_lora(be, cfg, &w, &lc, &ad)
}

/// Parses a JSON list of equal-length lists of token ids.
pub fn parse_ids(text: &str, src: &Path, vocab: usize) -> Result<Vec<Vec<u32>>> {
    let rows: Vec<Vec<u64>> = serde_json::from_str(text)
        .map_err(|e| Error::format(src, format!("expected a list of lists of ids: {e}")))?;
    if rows.is_empty() || rows[0].is_empty() {
        return Err(Error::format(src, "no ids"));
    }
    let t = rows[0].len();
    let mut out = Vec::with_capacity(rows.len());
    for (r, row) in rows.iter().enumerate() {
        if row.len() != t {
            return Err(Error::format(
                src,
                format!(
                    "row {r} has {} ids, row 0 has {t} (rows must be equal length)",
                    row.len()
                ),
            ));
        }
        if let Some((i, &bad)) = row.iter().enumerate().find(|(_, x)| **x as usize >= vocab) {
            return Err(Error::format(
                src,
                format!("row {r}, position {i}: id {bad} >= vocab_size {vocab}"),
            ));
        }
        out.push(row.iter().map(|&x| x as u32).collect());
    }
    Ok(out)
}

/// The fp32 logits `[b, t, vocab]` of unpacked rows (positions `0..t`, causal attention).
pub fn logits<B: Backend>(
    be: &B,
    model: &mut Llama<B>,
    rows: &[Vec<u32>],
) -> Result<(Vec<usize>, Vec<f32>)> {
    let (b, t) = (rows.len(), rows.first().map_or(0, Vec::len));
    let ids: Vec<u32> = rows.concat();
    model.forward(be, &Inputs::plain(be, b, t, &ids)?)?;
    Ok((vec![b, t, model.cfg.vocab_size], model.logits(be)?))
}
