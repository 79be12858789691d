//! MinHash-LSH near-duplicate detection over word n-grams, as datatrove and NeMo Curator do it.
//!
//! Each document's word `ngram`-shingles are hashed (xxh3-64); `bands × rows_per_band`
//! multiply-shift permutations give the signature; documents sharing a band bucket are
//! candidates, and a candidate counts as a duplicate when the *exact* Jaccard similarity of the
//! two shingle sets is at least `threshold`. The earliest document of a group is kept.
//!
//! # Example
//! ```
//! use koala_pipeline::stages::minhash::{shingles, jaccard};
//! let a = shingles("a b c d e f", 5);
//! let b = shingles("a b c d e g", 5);
//! assert_eq!(a.len(), 2);
//! assert!((jaccard(&a, &b) - 1.0 / 3.0).abs() < 1e-12);
//! ```
use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};

/// Configuration of near-dup detection (TOML table `[dedup.near]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MinHashConfig {
    /// Off by default (the Koala recipe is exact dedup only).
    pub enabled: bool,
    /// Minimum Jaccard similarity of the shingle sets.
    pub threshold: f64,
    /// Words per shingle.
    pub ngram: usize,
    /// LSH bands.
    pub bands: usize,
    /// Signature rows per band.
    pub rows_per_band: usize,
    /// Seed of the hash permutations.
    pub seed: u64,
}

impl Default for MinHashConfig {
    fn default() -> Self {
        MinHashConfig {
            enabled: false,
            threshold: 0.8,
            ngram: 5,
            bands: 16,
            rows_per_band: 8,
            seed: 1,
        }
    }
}

/// Sorted, deduplicated hashes of the word `n`-grams of `text` (one shingle of all words when
/// the text has fewer than `n`).
pub fn shingles(text: &str, n: usize) -> Vec<u64> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out: Vec<u64> = if words.is_empty() {
        Vec::new()
    } else if words.len() < n.max(1) {
        vec![xxh3_64(words.join(" ").as_bytes())]
    } else {
        words
            .windows(n.max(1))
            .map(|w| xxh3_64(w.join(" ").as_bytes()))
            .collect()
    };
    out.sort_unstable();
    out.dedup();
    out
}

/// Jaccard similarity of two sorted, deduplicated sets.
pub fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let (mut i, mut j, mut inter) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                inter += 1;
                i += 1;
                j += 1;
            }
        }
    }
    inter as f64 / (a.len() + b.len() - inter) as f64
}

/// A MinHash-LSH index builder.
pub struct MinHashLsh {
    config: MinHashConfig,
    a: Vec<u64>,
    b: Vec<u64>,
}

impl MinHashLsh {
    /// Checks the configuration and draws the permutations.
    pub fn new(config: MinHashConfig) -> Result<Self> {
        if !(0.0..=1.0).contains(&config.threshold) {
            return Err(Error::Config(format!(
                "dedup.near.threshold = {} is not in [0, 1]",
                config.threshold
            )));
        }
        if config.ngram == 0 || config.bands == 0 || config.rows_per_band == 0 {
            return Err(Error::Config(
                "dedup.near: ngram, bands and rows_per_band must be at least 1".into(),
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let k = config.bands * config.rows_per_band;
        let a = (0..k).map(|_| rng.random::<u64>() | 1).collect();
        let b = (0..k).map(|_| rng.random::<u64>()).collect();
        Ok(MinHashLsh { config, a, b })
    }

    /// The MinHash signature of a shingle set.
    pub fn signature(&self, sh: &[u64]) -> Vec<u64> {
        self.a
            .iter()
            .zip(&self.b)
            .map(|(&a, &b)| {
                sh.iter()
                    .map(|&h| a.wrapping_mul(h).wrapping_add(b))
                    .min()
                    .unwrap_or(u64::MAX)
            })
            .collect()
    }

    /// Near duplicates among `docs = (row, scope, text)`, given in table order. Returns
    /// `(duplicate row, kept row, jaccard)`; the kept row is the earliest similar kept document
    /// of the same scope.
    pub fn duplicates(&self, docs: &[(usize, &str, &str)]) -> Vec<(usize, usize, f64)> {
        let sh: Vec<Vec<u64>> = docs
            .par_iter()
            .map(|d| shingles(d.2, self.config.ngram))
            .collect();
        let sigs: Vec<Vec<u64>> = sh.par_iter().map(|s| self.signature(s)).collect();
        let r = self.config.rows_per_band;
        let mut buckets: HashMap<(&str, usize, u64), Vec<usize>> = HashMap::new();
        for (d, sig) in sigs.iter().enumerate() {
            if sh[d].is_empty() {
                continue;
            }
            for band in 0..self.config.bands {
                let slice = &sig[band * r..(band + 1) * r];
                let bytes: Vec<u8> = slice.iter().flat_map(|v| v.to_le_bytes()).collect();
                buckets
                    .entry((docs[d].1, band, xxh3_64(&bytes)))
                    .or_default()
                    .push(d);
            }
        }
        let mut candidates: Vec<Vec<usize>> = vec![Vec::new(); docs.len()];
        for members in buckets.values() {
            for (x, &later) in members.iter().enumerate() {
                candidates[later].extend_from_slice(&members[..x]);
            }
        }
        let mut is_dup = vec![false; docs.len()];
        let mut out = Vec::new();
        for d in 0..docs.len() {
            let mut c = std::mem::take(&mut candidates[d]);
            c.sort_unstable();
            c.dedup();
            for e in c {
                if is_dup[e] {
                    continue;
                }
                let j = jaccard(&sh[d], &sh[e]);
                if j >= self.config.threshold {
                    is_dup[d] = true;
                    out.push((docs[d].0, docs[e].0, j));
                    break;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shingles_of_short_text_is_one_gram() {
        assert_eq!(shingles("two words", 5), vec![xxh3_64(b"two words")]);
        assert!(shingles("   ", 5).is_empty());
    }

    #[test]
    fn signature_agreement_estimates_jaccard() {
        let lsh = MinHashLsh::new(MinHashConfig {
            bands: 32,
            rows_per_band: 16,
            ..Default::default()
        })
        .unwrap();
        let a: Vec<u64> = (0..200).collect();
        let b: Vec<u64> = (50..250).collect(); // J = 150 / 250 = 0.6
        let (sa, sb) = (lsh.signature(&a), lsh.signature(&b));
        let agree = sa.iter().zip(&sb).filter(|(x, y)| x == y).count() as f64 / sa.len() as f64;
        assert!((agree - 0.6).abs() < 0.08, "{agree}");
    }

    #[test]
    fn exact_jaccard_gates_candidates() {
        let lsh = MinHashLsh::new(MinHashConfig::default()).unwrap();
        let docs = [
            (10, "", "a b c d e f g h i j k l m n o p"),
            (11, "", "a b c d e f g h i j k l m n o p"),
            (12, "", "z y x w v u t s r q"),
            (13, "other", "a b c d e f g h i j k l m n o p"),
        ];
        assert_eq!(lsh.duplicates(&docs), vec![(11, 10, 1.0)]);
    }
}
