//! ROUGE-L exactly as Google's `rouge_score` 0.1.2 computes it with `use_stemmer=False`
//! (the similarity filter of Stanford Alpaca's self-instruct generator).
//!
//! - Tokens: [`tokenize`] (lowercase, maximal runs of ASCII `[a-z0-9]`).
//! - Score: `rouge_scorer._score_lcs` — 0 when either token list is empty; otherwise
//!   `p = lcs / len(prediction)`, `r = lcs / len(target)`, `f = 2 * p * r / (p + r)` (0 when
//!   `p + r == 0`), evaluated in the same order in `f64`, so the value is bit-for-bit Python's.
//! - LCS: bit-parallel over token ids (Allison–Dix / Hyyrö: one machine word holds 64 positions
//!   of the shorter sequence; each token of the other sequence updates the word vector with one
//!   add, one and, one or), O(⌈m/64⌉·n) instead of Python's O(m·n) table.
//!
//! F is symmetric in its two arguments (the products and the sum commute exactly in IEEE).
mod tokenize;

pub use tokenize::{for_each_token, tokenize};

use std::collections::HashMap;

/// Interns tokens as dense `u32` ids, so that sequences compare as integers.
#[derive(Debug, Default, Clone)]
pub struct Vocab {
    ids: HashMap<String, u32>,
}

impl Vocab {
    pub fn new() -> Self {
        Self::default()
    }

    /// The token ids of `text` (new tokens get fresh ids).
    pub fn encode(&mut self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        for_each_token(text, |t| {
            let next = self.ids.len() as u32;
            let id = match self.ids.get(t) {
                Some(&id) => id,
                None => {
                    self.ids.insert(t.to_owned(), next);
                    next
                }
            };
            out.push(id);
        });
        out
    }

    /// Number of distinct tokens seen.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// `rouge_score`'s F-measure from an LCS length and the two token counts (`target_len` for
/// recall, `prediction_len` for precision), in Python's evaluation order.
#[inline]
pub fn fmeasure(lcs: usize, target_len: usize, prediction_len: usize) -> f64 {
    if target_len == 0 || prediction_len == 0 {
        return 0.0;
    }
    let precision = lcs as f64 / prediction_len as f64;
    let recall = lcs as f64 / target_len as f64;
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

/// Precomputed match masks of one sequence (the "pattern"), for many LCS computations against it.
#[derive(Debug, Clone)]
pub struct LcsPattern {
    len: usize,
    words: usize,
    /// Distinct token ids, sorted; `masks[k*words..(k+1)*words]` is the position mask of `tokens[k]`.
    tokens: Vec<u32>,
    masks: Vec<u64>,
}

impl LcsPattern {
    pub fn new(seq: &[u32]) -> Self {
        let words = seq.len().div_ceil(64).max(1);
        let mut tokens: Vec<u32> = seq.to_vec();
        tokens.sort_unstable();
        tokens.dedup();
        let mut masks = vec![0u64; tokens.len() * words];
        for (i, t) in seq.iter().enumerate() {
            // `t` is in `tokens` by construction.
            let k = tokens.binary_search(t).unwrap_or(0);
            masks[k * words + i / 64] |= 1u64 << (i % 64);
        }
        Self {
            len: seq.len(),
            words,
            tokens,
            masks,
        }
    }

    /// Length of the pattern sequence.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn mask(&self, t: u32) -> Option<&[u64]> {
        self.tokens
            .binary_search(&t)
            .ok()
            .map(|k| &self.masks[k * self.words..(k + 1) * self.words])
    }

    /// Length of the longest common subsequence of the pattern and `other`.
    pub fn lcs(&self, other: &[u32]) -> usize {
        if self.len == 0 || other.is_empty() {
            return 0;
        }
        if self.words == 1 {
            let mut v: u64 = !0;
            for &t in other {
                if let Some(m) = self.mask(t) {
                    let u = v & m[0];
                    v = v.wrapping_add(u) | (v & !m[0]);
                }
            }
            return v.count_zeros() as usize;
        }
        let mut v = vec![!0u64; self.words];
        for &t in other {
            if let Some(m) = self.mask(t) {
                let mut carry = 0u64;
                for (vw, &mw) in v.iter_mut().zip(m) {
                    let u = *vw & mw;
                    let (s1, c1) = vw.overflowing_add(u);
                    let (s2, c2) = s1.overflowing_add(carry);
                    carry = (c1 | c2) as u64;
                    *vw = s2 | (*vw & !mw);
                }
            }
        }
        v.iter().map(|w| w.count_zeros() as usize).sum()
    }
}

/// LCS length of two token-id sequences (bit-parallel over the shorter one).
pub fn lcs_len(a: &[u32], b: &[u32]) -> usize {
    let (p, o) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    LcsPattern::new(p).lcs(o)
}

/// ROUGE-L F-measure of two token-id sequences (`target`, `prediction` as in `score(target, prediction)`).
pub fn rouge_l_ids(target: &[u32], prediction: &[u32]) -> f64 {
    if target.is_empty() || prediction.is_empty() {
        return 0.0;
    }
    fmeasure(lcs_len(target, prediction), target.len(), prediction.len())
}

/// `RougeScorer(["rougeL"], use_stemmer=False).score(target, prediction)["rougeL"].fmeasure`.
pub fn rouge_l(target: &str, prediction: &str) -> f64 {
    let mut vocab = Vocab::new();
    let t = vocab.encode(target);
    let p = vocab.encode(prediction);
    rouge_l_ids(&t, &p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Python's `_lcs_table`, the brute-force reference.
    fn lcs_dp(a: &[u32], b: &[u32]) -> usize {
        let mut t = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                t[i][j] = if a[i - 1] == b[j - 1] {
                    t[i - 1][j - 1] + 1
                } else {
                    t[i - 1][j].max(t[i][j - 1])
                };
            }
        }
        t[a.len()][b.len()]
    }

    #[test]
    fn bit_parallel_lcs_equals_dp() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for case in 0..4000 {
            let alpha = 1 + case % 12;
            let la = rng.random_range(0..if case % 10 == 0 { 300 } else { 70 });
            let lb = rng.random_range(0..if case % 7 == 0 { 300 } else { 70 });
            let a: Vec<u32> = (0..la).map(|_| rng.random_range(0..alpha as u32)).collect();
            let b: Vec<u32> = (0..lb).map(|_| rng.random_range(0..alpha as u32)).collect();
            let want = lcs_dp(&a, &b);
            assert_eq!(lcs_len(&a, &b), want, "{a:?} {b:?}");
            assert_eq!(LcsPattern::new(&b).lcs(&a), want);
        }
    }

    #[test]
    fn word_boundaries() {
        for n in [63usize, 64, 65, 127, 128, 129, 200] {
            let a: Vec<u32> = (0..n as u32).collect();
            assert_eq!(lcs_len(&a, &a), n);
            let b: Vec<u32> = a.iter().rev().copied().collect();
            assert_eq!(lcs_len(&a, &b), 1);
            let c: Vec<u32> = a.iter().step_by(2).copied().collect();
            assert_eq!(LcsPattern::new(&a).lcs(&c), c.len());
        }
    }

    #[test]
    fn scores() {
        assert_eq!(rouge_l("", "a"), 0.0);
        assert_eq!(rouge_l("!!!", "!!!"), 0.0);
        assert_eq!(rouge_l("The cat sat", "the cat sat"), 1.0);
        // lcs 2 of 3 and 4: p = 2/4, r = 2/3, f = 2pr/(p+r)
        let (p, r) = (2.0 / 4.0, 2.0 / 3.0);
        assert_eq!(rouge_l("a b c", "a x c y"), 2.0 * p * r / (p + r));
        assert_eq!(rouge_l("a b c", "a x c y"), rouge_l("a x c y", "a b c"));
    }
}
