//! Learning-rate schedule: linear warmup, then cosine or linear decay (as HF
//! `get_cosine_schedule_with_warmup` / `get_linear_schedule_with_warmup`).
use serde::{Deserialize, Serialize};

/// The shape of the decay after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    Cosine,
    Linear,
    Constant,
}

/// A schedule over `total_steps` optimizer steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub peak_lr: f32,
    pub min_lr: f32,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub decay: Decay,
}

impl Schedule {
    /// The learning rate of optimizer step `step` (0-based, the HF convention: step 0 of a
    /// warmup of `w` steps has lr 0).
    ///
    /// ```
    /// use koala_trainer::schedule::{Decay, Schedule};
    /// let s = Schedule { peak_lr: 1.0, min_lr: 0.0, warmup_steps: 10, total_steps: 110, decay: Decay::Cosine };
    /// assert_eq!(s.lr(5), 0.5);
    /// assert_eq!(s.lr(10), 1.0);
    /// assert!((s.lr(60) - 0.5).abs() < 1e-6);
    /// ```
    pub fn lr(&self, step: u64) -> f32 {
        if step < self.warmup_steps {
            return self.peak_lr * step as f32 / self.warmup_steps.max(1) as f32;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let frac = match self.decay {
            Decay::Constant => 1.0,
            Decay::Linear => 1.0 - progress,
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        (self.min_lr as f64 + (self.peak_lr - self.min_lr) as f64 * frac) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_endpoints() {
        let s = Schedule {
            peak_lr: 2e-5,
            min_lr: 0.0,
            warmup_steps: 3,
            total_steps: 100,
            decay: Decay::Linear,
        };
        assert_eq!(s.lr(0), 0.0);
        assert_eq!(s.lr(3), 2e-5);
        assert!(s.lr(100).abs() < 1e-12);
        assert!(s.lr(50) < s.lr(20));
        let c = Schedule {
            decay: Decay::Cosine,
            ..s
        };
        assert!(c.lr(100).abs() < 1e-12);
        let k = Schedule {
            decay: Decay::Constant,
            ..s
        };
        assert_eq!(k.lr(90), 2e-5);
    }
}
