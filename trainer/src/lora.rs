//! LoRA fine-tuning in peft's format: the `[lora]` table of a training TOML, the adapter's
//! tensors (names, shapes, initialisation), and `adapter_model.safetensors` +
//! `adapter_config.json` as `peft.PeftModel.from_pretrained` reads them.
//!
//! An adapted linear layer `W: [out, in]` gets `A: [r, in]` (`lora_A`, Kaiming-uniform as
//! `nn.Linear`'s default init: `U(−1/√in, 1/√in)`) and `B: [out, r]` (`lora_B`, zeros), and
//! computes `x·Wᵀ + (α/r)·dropout(x)·Aᵀ·Bᵀ`. The base weights are frozen: they get no gradient and
//! no optimizer state. See `docs/training.md` (LoRA).
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::LlamaConfig;
use crate::weights::{self, HostTensor, ParamSpec, Tensors};
use crate::{Error, Result};

/// The linear layers of a LLaMA block that LoRA can adapt, with their slot in
/// [`crate::weights::param_specs`]'s per-layer order.
pub const MODULES: [(&str, usize); 7] = [
    ("q_proj", 1),
    ("k_proj", 2),
    ("v_proj", 3),
    ("o_proj", 4),
    ("gate_proj", 6),
    ("up_proj", 7),
    ("down_proj", 8),
];

/// The `[lora]` table of a training TOML. Defaults: peft's `LoraConfig` with alpaca-lora's
/// `lora_alpha = 16` and `lora_dropout = 0.05`, on `q_proj` and `v_proj`.
///
/// ```
/// let c: koala_trainer::lora::LoraConfig = toml::from_str("r = 16\ntarget_modules = [\"q_proj\", \"o_proj\"]").unwrap();
/// assert_eq!((c.r, c.alpha, c.dropout), (16, 16.0, 0.05));
/// assert_eq!(c.slots().unwrap(), vec![1, 4]);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// Rank of every adapter.
    pub r: usize,
    /// `lora_alpha`: the update is scaled by `alpha / r`.
    pub alpha: f32,
    /// Dropout on the adapter's input during training (none at evaluation).
    pub dropout: f32,
    /// Which linear layers of every block get an adapter (peft's module names).
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
        }
    }
}

impl LoraConfig {
    /// `alpha / r`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.r as f32
    }

    /// The per-layer slots of the targets, in block order; errors name a bad setting.
    pub fn slots(&self) -> Result<Vec<usize>> {
        if self.r == 0 {
            return Err(Error::Config("[lora] r must be at least 1".into()));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(Error::Config(format!(
                "[lora] alpha = {} must be a positive number",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "[lora] dropout = {} must be in [0, 1)",
                self.dropout
            )));
        }
        if self.target_modules.is_empty() {
            return Err(Error::Config("[lora] target_modules is empty".into()));
        }
        for t in &self.target_modules {
            if !MODULES.iter().any(|(m, _)| m == t) {
                let known: Vec<&str> = MODULES.iter().map(|m| m.0).collect();
                return Err(Error::Config(format!(
                    "[lora] target_modules: unknown module {t:?} (known: {})",
                    known.join(", ")
                )));
            }
        }
        Ok(MODULES
            .iter()
            .filter(|(m, _)| self.target_modules.iter().any(|t| t == m))
            .map(|&(_, s)| s)
            .collect())
    }
}

/// One adapted linear layer: where it sits and the names of its two tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub layer: usize,
    /// Slot in the layer's parameters (1 = q_proj … 8 = down_proj).
    pub slot: usize,
    /// `in` and `out` features of the base weight.
    pub ic: usize,
    pub oc: usize,
    /// `lora_A` (`[r, in]`) then `lora_B` (`[out, r]`), with peft's saved names.
    pub a: ParamSpec,
    pub b: ParamSpec,
}

/// The HF name of the base weight in `slot` of `layer`.
fn module_path(layer: usize, slot: usize) -> String {
    let (group, name) = match slot {
        1 => ("self_attn", "q_proj"),
        2 => ("self_attn", "k_proj"),
        3 => ("self_attn", "v_proj"),
        4 => ("self_attn", "o_proj"),
        6 => ("mlp", "gate_proj"),
        7 => ("mlp", "up_proj"),
        _ => ("mlp", "down_proj"),
    };
    format!("model.layers.{layer}.{group}.{name}")
}

/// Every adapted layer of `cfg` under `lc`, layer by layer in block order.
pub fn targets(cfg: &LlamaConfig, lc: &LoraConfig) -> Result<Vec<Target>> {
    let slots = lc.slots()?;
    let (c, i, q, kv) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.q_dim(),
        cfg.kv_dim(),
    );
    let mut out = Vec::new();
    for layer in 0..cfg.num_hidden_layers {
        for &slot in &slots {
            let (ic, oc) = match slot {
                1 => (c, q),
                2 | 3 => (c, kv),
                4 => (q, c),
                6 | 7 => (c, i),
                _ => (i, c),
            };
            let pre = format!("base_model.model.{}", module_path(layer, slot));
            out.push(Target {
                layer,
                slot,
                ic,
                oc,
                a: ParamSpec {
                    name: format!("{pre}.lora_A.weight"),
                    shape: vec![lc.r, ic],
                },
                b: ParamSpec {
                    name: format!("{pre}.lora_B.weight"),
                    shape: vec![oc, lc.r],
                },
            });
        }
    }
    Ok(out)
}

/// A fresh adapter, as peft initialises one: `A ~ U(−1/√in, 1/√in)` (`kaiming_uniform_` with
/// `a = √5`), `B = 0`, so the adapted model starts equal to the base.
pub fn init_adapter(cfg: &LlamaConfig, lc: &LoraConfig, seed: u64) -> Result<Tensors> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4c6f_5241);
    let mut out = Tensors::new();
    for t in targets(cfg, lc)? {
        let bound = 1.0 / (t.ic as f32).sqrt();
        let a = (0..t.a.numel())
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        out.insert(
            t.a.name.clone(),
            HostTensor {
                shape: t.a.shape.clone(),
                data: a,
            },
        );
        out.insert(t.b.name.clone(), HostTensor::full(t.b.shape.clone(), 0.0));
    }
    Ok(out)
}

/// peft's `adapter_config.json` for `lc` (a LLaMA causal LM, no bias, plain LoRA).
pub fn adapter_config_json(lc: &LoraConfig, base_model: &str) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": lc.r,
        "lora_alpha": lc.alpha,
        "lora_dropout": lc.dropout,
        "target_modules": lc.target_modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    })
}

/// Writes `dir/adapter_model.safetensors` and `dir/adapter_config.json` (each atomically).
pub fn save_adapter(
    dir: &Path,
    lc: &LoraConfig,
    tensors: &Tensors,
    base_model: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    weights::atomic_write(
        &dir.join("adapter_model.safetensors"),
        &weights::serialize(tensors)?,
    )?;
    let cfg = serde_json::to_string_pretty(&adapter_config_json(lc, base_model))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    weights::atomic_write(&dir.join("adapter_config.json"), cfg.as_bytes())
}

/// Whether `dir` holds an adapter (an `adapter_config.json`).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join("adapter_config.json").is_file()
}

/// Reads an adapter written by [`save_adapter`] or by peft's `save_pretrained`, checked
/// against `cfg`: every target's `lora_A` and `lora_B` present with the right shapes, and no
/// tensor this trainer would ignore.
pub fn load_adapter(dir: &Path, cfg: &LlamaConfig) -> Result<(LoraConfig, Tensors)> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let j: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&path, e))?;
    let field = |k: &str| j.get(k).filter(|v| !v.is_null());
    if let Some(t) = field("peft_type").and_then(|v| v.as_str())
        && t != "LORA"
    {
        return Err(Error::format(&path, format!("peft_type {t:?} is not LORA")));
    }
    for (k, why) in [
        ("use_dora", "DoRA adapters"),
        ("use_rslora", "rank-stabilised LoRA (use_rslora)"),
        ("fan_in_fan_out", "fan_in_fan_out adapters"),
    ] {
        if field(k).and_then(|v| v.as_bool()) == Some(true) {
            return Err(Error::format(&path, format!("{why} are not supported")));
        }
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if field(k)
            .and_then(|v| v.as_object())
            .is_some_and(|m| !m.is_empty())
        {
            return Err(Error::format(
                &path,
                format!("per-module `{k}` is not supported: one r and lora_alpha for all"),
            ));
        }
    }
    if field("modules_to_save").is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
        return Err(Error::format(
            &path,
            "modules_to_save (fully trained extra modules) is not supported",
        ));
    }
    let r = field("r")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| Error::format(&path, "`r` must be a positive integer"))?
        as usize;
    let alpha = field("lora_alpha")
        .and_then(|v| v.as_f64())
        .ok_or_else(|| Error::format(&path, "missing number field `lora_alpha`"))?
        as f32;
    let dropout = field("lora_dropout")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0) as f32;
    let target_modules: Vec<String> = match field("target_modules") {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::format(&path, "target_modules: expected strings"))
            })
            .collect::<Result<_>>()?,
        Some(serde_json::Value::String(s)) => {
            return Err(Error::format(
                &path,
                format!("target_modules is a pattern ({s:?}); a list of module names is needed"),
            ));
        }
        _ => return Err(Error::format(&path, "missing list field `target_modules`")),
    };
    let lc = LoraConfig {
        r,
        alpha,
        dropout,
        target_modules,
    };
    lc.slots().map_err(|e| Error::format(&path, e))?;
    let file = dir.join("adapter_model.safetensors");
    let mut t = weights::load_file(&file)?;
    // peft names tensors `….lora_A.weight`; older versions kept the adapter name
    // (`….lora_A.default.weight`).
    let keys: Vec<String> = t.keys().cloned().collect();
    for k in keys {
        if let Some(short) = k.strip_suffix(".default.weight")
            && let Some(v) = t.remove(&k)
        {
            t.insert(format!("{short}.weight"), v);
        }
    }
    let mut out = Tensors::new();
    for tg in targets(cfg, &lc)? {
        for spec in [&tg.a, &tg.b] {
            let h = t
                .remove(&spec.name)
                .ok_or_else(|| Error::format(&file, format!("missing tensor {}", spec.name)))?;
            if h.shape != spec.shape {
                return Err(Error::format(
                    &file,
                    format!(
                        "tensor {}: shape {:?}, expected {:?} for this model",
                        spec.name, h.shape, spec.shape
                    ),
                ));
            }
            out.insert(spec.name.clone(), h);
        }
    }
    if let Some(extra) = t.keys().next() {
        return Err(Error::format(
            &file,
            format!(
                "tensor {extra} is not an adapter of target_modules {:?} in this model",
                lc.target_modules
            ),
        ));
    }
    Ok((lc, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LlamaConfig {
        LlamaConfig::from_json_str(r#"{"vocab_size": 8, "hidden_size": 4, "intermediate_size": 6, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1}"#).unwrap()
    }

    #[test]
    fn names_shapes_and_round_trip() {
        let lc = LoraConfig::default();
        let t = targets(&cfg(), &lc).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(
            t[1].b.name,
            "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"
        );
        assert_eq!(
            (t[1].a.shape.clone(), t[1].b.shape.clone()),
            (vec![8, 4], vec![2, 8])
        );
        let w = init_adapter(&cfg(), &lc, 3).unwrap();
        assert!(w.values().any(|h| h.data.iter().any(|&x| x != 0.0)));
        let d = tempfile::tempdir().unwrap();
        save_adapter(d.path(), &lc, &w, "base").unwrap();
        let (lc2, w2) = load_adapter(d.path(), &cfg()).unwrap();
        assert_eq!((lc2, w2), (lc, w));
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = |lc: LoraConfig| lc.slots().unwrap_err().to_string();
        assert!(
            bad(LoraConfig {
                r: 0,
                ..Default::default()
            })
            .contains("r must")
        );
        assert!(
            bad(LoraConfig {
                target_modules: vec!["qkv".into()],
                ..Default::default()
            })
            .contains("unknown module \"qkv\"")
        );
        assert!(
            bad(LoraConfig {
                dropout: 1.0,
                ..Default::default()
            })
            .contains("dropout")
        );
    }
}
