//! The LLaMA architecture, read from a Hugging Face `config.json`.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The fields of a Hugging Face `LlamaConfig` that define the architecture.
///
/// Unknown keys of `config.json` are ignored (HF writes many that do not affect the math).
///
/// ```
/// let cfg: koala_model::LlamaConfig = serde_json::from_str(
///     r#"{"vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
///         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}"#,
/// ).unwrap();
/// assert_eq!(cfg.head_dim(), 16);
/// assert_eq!(cfg.rope_theta, 10000.0);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` (no grouped-query attention), as in HF.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Longest sequence the model was trained for (informational; HF default 2048).
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// Optional explicit head dimension (HF allows `head_dim != hidden / heads`).
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

fn default_rope_theta() -> f32 {
    10000.0
}
fn default_eps() -> f32 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}

impl LlamaConfig {
    /// Reads and validates a `config.json`. Both the transformers 4 layout (`rope_theta`,
    /// `rope_scaling`) and the transformers 5 one (`rope_parameters`) are read; RoPE scaling
    /// variants other than the default are refused.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text).map_err(|m| Error::format(path, m))
    }

    /// Parses and validates the text of a `config.json`.
    pub fn from_json_str(text: &str) -> std::result::Result<Self, String> {
        let raw: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut cfg: LlamaConfig =
            serde_json::from_value(raw.clone()).map_err(|e| e.to_string())?;
        if let Some(rs) = raw.get("rope_scaling").filter(|v| !v.is_null()) {
            return Err(format!("rope_scaling {rs} is not supported"));
        }
        if let Some(rp) = raw.get("rope_parameters").filter(|v| !v.is_null()) {
            let kind = rp
                .get("rope_type")
                .and_then(|v| v.as_str())
                .unwrap_or("default");
            if kind != "default" {
                return Err(format!(
                    "rope_parameters.rope_type {kind:?} is not supported (only \"default\")"
                ));
            }
            if raw.get("rope_theta").is_none()
                && let Some(t) = rp.get("rope_theta").and_then(|v| v.as_f64())
            {
                cfg.rope_theta = t as f32;
            }
        }
        cfg.num_key_value_heads = Some(cfg.n_kv_heads());
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the shape invariants; returns a message naming the offending field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
        ] {
            if v == 0 {
                return Err(format!("{name} must be > 0"));
            }
        }
        let kv = self.n_kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return Err(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({kv})",
                self.num_attention_heads
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size ({}) must be a multiple of num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim()
            ));
        }
        if self.vocab_size > u32::MAX as usize {
            return Err("vocab_size does not fit u32".into());
        }
        Ok(())
    }

    /// The EOS ids of `eos_token_id` (a number or a list; ids that do not fit `u32` are left
    /// out): the tokens that end generation.
    pub fn eos_ids(&self) -> Vec<u32> {
        let id = |v: &serde_json::Value| v.as_u64().and_then(|x| u32::try_from(x).ok());
        match &self.eos_token_id {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(id).collect(),
            Some(v) => id(v).into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// Key/value heads (GQA); equals the query heads when the config leaves it out.
    pub fn n_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head dimension.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Width of the query projection output (`heads * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim()
    }

    /// Width of the key/value projection outputs.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads() * self.head_dim()
    }

    /// The `config.json` that HF `transformers` loads as a `LlamaForCausalLM`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.retain(|_, x| !x.is_null());
            o.insert("num_key_value_heads".into(), self.n_kv_heads().into());
            o.insert(
                "architectures".into(),
                serde_json::json!(["LlamaForCausalLM"]),
            );
            o.insert("model_type".into(), "llama".into());
            o.insert("hidden_act".into(), "silu".into());
            o.insert("torch_dtype".into(), "float32".into());
            o.insert("attention_bias".into(), false.into());
            o.insert("mlp_bias".into(), false.into());
            o.insert(
                "rope_parameters".into(),
                serde_json::json!({"rope_theta": self.rope_theta, "rope_type": "default"}),
            );
        }
        v
    }
}
