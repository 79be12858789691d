//! Picking the next token: greedy, or temperature with top-k and top-p (nucleus) filtering.
//!
//! The order of operations is Hugging Face's logits-warper order (temperature, top-k, top-p):
//! greedy (`temperature == 0`) is a plain argmax, lowest id first on ties, as `torch.argmax`.
use rand::Rng;

/// Sampling settings of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleParams {
    /// 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1.0 = all).
    pub top_p: f32,
    /// Seed of the request's random stream; `None` draws one.
    pub seed: Option<u64>,
}

impl Default for SampleParams {
    /// EasyLM's Koala serving defaults: temperature 1.0, top_k 50, top_p 1.0.
    fn default() -> Self {
        SampleParams {
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            seed: None,
        }
    }
}

impl SampleParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        SampleParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: Some(0),
        }
    }

    /// Checks the ranges, naming the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &x) in logits.iter().enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0 as u32
}

/// Picks a token from `logits` with temperature, top-k and top-p filtering.
///
/// ```
/// use koala_model::sampling::{sample, SampleParams};
/// use rand::SeedableRng;
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
/// assert_eq!(sample(&[0.0, 3.0, 1.0], &SampleParams::greedy(), &mut rng), 1);
/// ```
pub fn sample(logits: &[f32], sp: &SampleParams, rng: &mut impl Rng) -> u32 {
    if sp.temperature <= 0.0 || sp.top_k == 1 {
        return argmax(logits);
    }
    let by_logit = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    if sp.top_k > 0 && sp.top_k < idx.len() {
        // Partial selection, then sort only the kept ones: O(V + k log k), not O(V log V).
        idx.select_nth_unstable_by(sp.top_k - 1, by_logit);
        idx.truncate(sp.top_k);
        idx.sort_unstable_by(by_logit);
    } else if sp.top_p < 1.0 {
        idx.sort_unstable_by(by_logit);
    }
    let mx = idx
        .iter()
        .map(|&i| logits[i])
        .fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<f64> = idx
        .iter()
        .map(|&i| (((logits[i] - mx) / sp.temperature) as f64).exp())
        .collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    if sp.top_p < 1.0 {
        // `idx` is sorted here (top-p sorted it, or top-k did).
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= sp.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        idx.truncate(keep);
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= z);
    }
    let r: f64 = rng.random::<f64>();
    let mut acc = 0.0;
    for (p, &i) in probs.iter().zip(&idx) {
        acc += p;
        if r < acc {
            return i as u32;
        }
    }
    idx[idx.len() - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn sampling_filters() {
        let logits = [0.0f32, 5.0, 4.9, -3.0];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(sample(&logits, &SampleParams::greedy(), &mut rng), 1);
        let k1 = SampleParams {
            top_k: 1,
            ..Default::default()
        };
        for _ in 0..20 {
            assert_eq!(sample(&logits, &k1, &mut rng), 1);
        }
        let top_p = SampleParams {
            top_k: 0,
            top_p: 0.9,
            ..Default::default()
        };
        let mut seen = [0; 4];
        for _ in 0..400 {
            seen[sample(&logits, &top_p, &mut rng) as usize] += 1;
        }
        assert_eq!((seen[0], seen[3]), (0, 0), "{seen:?}");
        assert!(seen[1] > 100 && seen[2] > 100, "{seen:?}");
        // No filter: every token is possible, in proportion to its probability.
        let all = SampleParams {
            top_k: 0,
            ..Default::default()
        };
        let mut seen = [0; 4];
        for _ in 0..4000 {
            seen[sample(&[0.0, 0.0, 0.0, 1.0], &all, &mut rng) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 400), "{seen:?}");
        assert!(seen[3] > 1200, "{seen:?}");
    }

    #[test]
    fn top_k_keeps_the_k_largest() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 100) as f32).collect();
        let sp = SampleParams {
            top_k: 3,
            temperature: 5.0,
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..300 {
            let t = sample(&logits, &sp, &mut rng) as usize;
            assert!(logits[t] >= 97.0, "{t}");
        }
    }
}
