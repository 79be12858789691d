//! Training hyperparameters: built-in presets (`trainer/presets/*.toml`) plus overrides.
use serde::{Deserialize, Serialize};

use crate::schedule::{Decay, Schedule};
use crate::{Error, Result};

/// How the per-token losses are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LossMode {
    /// Sum of masked token losses ÷ number of masked tokens in the global batch (HF / Alpaca).
    #[default]
    TokenMean,
    /// Per row: sum ÷ that row's mask count; then the mean over rows (EasyLM / Koala).
    RowMean,
}

/// Every training hyperparameter, with the defaults of `torch.optim.AdamW` where it applies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hyper {
    /// Rows per optimizer step (the global batch).
    pub batch_size: usize,
    /// Rows per forward/backward; `batch_size / micro_batch_size` micro-batches are accumulated.
    pub micro_batch_size: usize,
    pub epochs: u32,
    /// Peak learning rate.
    pub lr: f32,
    /// Final learning rate as a fraction of `lr` (0 = decay to zero, as HF's cosine).
    pub min_lr_ratio: f32,
    /// Warmup steps; when set it wins over `warmup_ratio`.
    pub warmup_steps: Option<u64>,
    /// Warmup as a fraction of the total steps (Alpaca: 0.03).
    pub warmup_ratio: f32,
    pub schedule: Decay,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Clip the global gradient norm to this (`0` disables clipping).
    pub grad_clip: f32,
    /// Rows are cut to this many tokens.
    pub max_len: usize,
    pub loss: LossMode,
}

impl Default for Hyper {
    fn default() -> Self {
        Hyper {
            batch_size: 8,
            micro_batch_size: 8,
            epochs: 1,
            lr: 1e-4,
            min_lr_ratio: 0.0,
            warmup_steps: None,
            warmup_ratio: 0.0,
            schedule: Decay::Cosine,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            grad_clip: 1.0,
            max_len: 512,
            loss: LossMode::TokenMean,
        }
    }
}

/// Names of the built-in presets.
pub const PRESETS: &[&str] = &["alpaca-7b", "koala-13b", "tiny-cpu"];

/// The TOML text of a built-in preset.
pub fn preset_text(name: &str) -> Option<&'static str> {
    match name {
        "alpaca-7b" => Some(include_str!("../presets/alpaca-7b.toml")),
        "koala-13b" => Some(include_str!("../presets/koala-13b.toml")),
        "tiny-cpu" => Some(include_str!("../presets/tiny-cpu.toml")),
        _ => None,
    }
}

/// How a preset's job is laid out across its GPUs so that it fits: the preset's `[parallel]`
/// table (checked against `koala plan`; docs/scale.md). A `train.toml`'s own `zero` and
/// `checkpointing` take precedence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Parallel {
    /// ZeRO stage 0 to 3 (no effect with one worker).
    pub zero: u8,
    /// Activation checkpointing.
    pub checkpointing: bool,
}

impl Parallel {
    /// The `[parallel]` table of a built-in preset (all defaults when it has none).
    ///
    /// ```
    /// let p = koala_trainer::hparams::Parallel::preset("koala-13b").unwrap();
    /// assert_eq!(p.zero, 3);
    /// ```
    pub fn preset(name: &str) -> Result<Self> {
        let mut table = preset_table(name)?;
        match table.remove("parallel") {
            Some(v) => v
                .try_into()
                .map_err(|e| Error::Config(format!("preset {name}: [parallel]: {e}"))),
            None => Ok(Self::default()),
        }
    }
}

/// A built-in preset's TOML table.
fn preset_table(name: &str) -> Result<toml::Table> {
    let text = preset_text(name).ok_or_else(|| {
        Error::Config(format!(
            "unknown preset {name:?} (known: {})",
            PRESETS.join(", ")
        ))
    })?;
    toml::from_str(text).map_err(|e| Error::Config(format!("preset {name}: {e}")))
}

impl Hyper {
    /// A built-in preset.
    ///
    /// ```
    /// let h = koala_trainer::Hyper::preset("alpaca-7b").unwrap();
    /// assert_eq!((h.batch_size, h.lr, h.epochs, h.max_len), (128, 2e-5, 3, 512));
    /// ```
    pub fn preset(name: &str) -> Result<Self> {
        let mut table = preset_table(name)?;
        // The job's layout, not a hyperparameter (see [`Parallel`]).
        table.remove("parallel");
        toml::Value::Table(table)
            .try_into()
            .map_err(|e| Error::Config(format!("preset {name}: {e}")))
    }

    /// Applies overrides given as a TOML table (same keys as the presets); unknown keys are errors.
    pub fn with_overrides(&self, table: &toml::Table) -> Result<Self> {
        let mut merged = toml::Table::try_from(self).map_err(|e| Error::Config(e.to_string()))?;
        for (k, v) in table {
            merged.insert(k.clone(), v.clone());
        }
        let h: Hyper = toml::Value::Table(merged)
            .try_into()
            .map_err(|e| Error::Config(format!("[hyper]: {e}")))?;
        h.validate()?;
        Ok(h)
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.batch_size == 0 || self.micro_batch_size == 0 {
            return bad("batch_size and micro_batch_size must be > 0".into());
        }
        if !self.batch_size.is_multiple_of(self.micro_batch_size) {
            return bad(format!(
                "batch_size ({}) must be a multiple of micro_batch_size ({})",
                self.batch_size, self.micro_batch_size
            ));
        }
        if self.lr.is_nan()
            || self.lr < 0.0
            || !(0.0..=1.0).contains(&self.warmup_ratio)
            || !(0.0..=1.0).contains(&self.min_lr_ratio)
        {
            return bad("lr must be >= 0, warmup_ratio and min_lr_ratio in [0, 1]".into());
        }
        if self.max_len < 2 {
            return bad("max_len must be >= 2".into());
        }
        Ok(())
    }

    /// The learning-rate schedule for a run of `total_steps`.
    pub fn schedule(&self, total_steps: u64) -> Schedule {
        let warmup = self
            .warmup_steps
            .unwrap_or_else(|| (self.warmup_ratio as f64 * total_steps as f64).ceil() as u64);
        Schedule {
            peak_lr: self.lr,
            min_lr: self.lr * self.min_lr_ratio,
            warmup_steps: warmup,
            total_steps,
            decay: self.schedule,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_match_the_recipes() {
        for p in PRESETS {
            Hyper::preset(p).unwrap().validate().unwrap();
        }
        let a = Hyper::preset("alpaca-7b").unwrap();
        assert_eq!(a.warmup_ratio, 0.03);
        assert_eq!(a.weight_decay, 0.0);
        assert_eq!(a.schedule, Decay::Cosine);
        assert_eq!(Hyper::preset("koala-13b").unwrap().epochs, 2);
        assert!(Hyper::preset("nope").is_err());
        // The layouts that fit (docs/scale.md): ZeRO-3 for 7B on 4 and 13B on 8 A100-80GB.
        for (p, zero) in [("alpaca-7b", 3), ("koala-13b", 3), ("tiny-cpu", 0)] {
            let par = Parallel::preset(p).unwrap();
            assert_eq!((par.zero, par.checkpointing), (zero, false), "{p}");
        }
        assert!(Parallel::preset("nope").is_err());
    }

    #[test]
    fn overrides_apply_and_typos_are_errors() {
        let a = Hyper::preset("tiny-cpu").unwrap();
        let t: toml::Table = toml::from_str("lr = 0.5\nepochs = 7").unwrap();
        let b = a.with_overrides(&t).unwrap();
        assert_eq!((b.lr, b.epochs, b.batch_size), (0.5, 7, a.batch_size));
        let t: toml::Table = toml::from_str("lrr = 0.5").unwrap();
        let e = a.with_overrides(&t).unwrap_err().to_string();
        assert!(e.contains("lrr"), "{e}");
    }
}
