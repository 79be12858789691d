//! Our own BLEU, equal to sacrebleu 2.x with its defaults.
//!
//! - tokenizer `13a` ([`tokenize_13a`]), optional lowercasing (Python `str.lower`);
//! - n-grams of order 1..=4 over Python `str.split()` tokens;
//! - clipped counts against the per-n-gram maximum over the references, and the reference length
//!   closest to the hypothesis length (ties go to the shorter reference);
//! - smoothing `exp` (mteval's: each zero-count order gets `1/(2^k · total)`), and for sentence
//!   BLEU the effective order (orders past the hypothesis length are left out).
//!
//! [`sentence_bleu`] is `sacrebleu.sentence_bleu(hyp, refs)` and [`corpus_bleu`] is
//! `sacrebleu.corpus_bleu(hyps, ref_streams)`; both return the same statistics as sacrebleu's
//! `BLEUScore`. Agreement is tested against a committed fixture made by
//! `scripts/gen_bleu_fixtures.py` with the real sacrebleu (see `docs/bleu.md`).
//!
//! # Example
//! ```
//! use koala_pipeline::bleu::{sentence_bleu, corpus_bleu, BleuOptions};
//! let s = sentence_bleu("The cat sat on the mat.", &["The cat is on the mat."], BleuOptions::default()).unwrap();
//! assert!((s.score - 48.892302243490086).abs() < 1e-9);
//! let c = corpus_bleu(&["a b c d"], &[vec!["a b c d"]], BleuOptions::default()).unwrap();
//! assert!((c.score - 100.0).abs() < 1e-12);
//! ```
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

mod tokenizer;

pub use tokenizer::{
    for_each_13a_token, is_py_whitespace, py_lower, py_rstrip, py_split, tokenize_13a,
};

use crate::error::{Error, Result};

/// The maximum n-gram order (sacrebleu's default).
pub const MAX_ORDER: usize = 4;

/// Options that change the score (the rest of sacrebleu's options are fixed at their defaults).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BleuOptions {
    /// Lowercase hypotheses and references first (`sacrebleu -lc`).
    pub lowercase: bool,
}

/// Sufficient statistics of one segment, or of a corpus (they add up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Hypothesis length in tokens.
    pub sys_len: u64,
    /// The chosen reference length.
    pub ref_len: u64,
    /// Clipped n-gram matches, order 1..=4.
    pub correct: [u64; MAX_ORDER],
    /// Hypothesis n-grams, order 1..=4.
    pub total: [u64; MAX_ORDER],
}

impl std::ops::Add for Stats {
    type Output = Stats;
    fn add(mut self, o: Stats) -> Stats {
        self += o;
        self
    }
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.sys_len += o.sys_len;
        self.ref_len += o.ref_len;
        for n in 0..MAX_ORDER {
            self.correct[n] += o.correct[n];
            self.total[n] += o.total[n];
        }
    }
}

/// A BLEU score with the statistics behind it (sacrebleu's `BLEUScore`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BleuScore {
    /// BLEU in 0..=100.
    pub score: f64,
    pub counts: [u64; MAX_ORDER],
    pub totals: [u64; MAX_ORDER],
    /// Smoothed precisions in percent (0 for orders that were not used).
    pub precisions: [f64; MAX_ORDER],
    /// Brevity penalty.
    pub bp: f64,
    pub sys_len: u64,
    pub ref_len: u64,
}

/// sacrebleu's `my_log`: `log`, with `log(0)` floored at -9999999999.
fn floored_log(x: f64) -> f64 {
    if x == 0.0 { -9_999_999_999.0 } else { x.ln() }
}

/// The brevity penalty for a hypothesis of `sys_len` tokens against a reference of `ref_len`.
pub fn brevity_penalty(sys_len: u64, ref_len: u64) -> f64 {
    if sys_len < ref_len {
        if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        }
    } else {
        1.0
    }
}

/// BLEU from sufficient statistics with `exp` smoothing, as sacrebleu's `BLEU.compute_bleu`.
/// `effective_order` is true for sentence BLEU and false for corpus BLEU.
#[allow(clippy::needless_range_loop)] // indexes three arrays in step, as sacrebleu does
pub fn compute_bleu(stats: &Stats, effective_order: bool) -> BleuScore {
    let bp = brevity_penalty(stats.sys_len, stats.ref_len);
    let mut precisions = [0.0f64; MAX_ORDER];
    let mut out = BleuScore {
        score: 0.0,
        counts: stats.correct,
        totals: stats.total,
        precisions,
        bp,
        sys_len: stats.sys_len,
        ref_len: stats.ref_len,
    };
    if stats.correct.iter().all(|&c| c == 0) {
        return out;
    }
    let mut smooth = 1.0f64;
    let mut eff_order = MAX_ORDER;
    for n in 0..MAX_ORDER {
        if stats.total[n] == 0 {
            break;
        }
        if effective_order {
            eff_order = n + 1;
        }
        if stats.correct[n] == 0 {
            smooth *= 2.0;
            precisions[n] = 100.0 / (smooth * stats.total[n] as f64);
        } else {
            precisions[n] = 100.0 * stats.correct[n] as f64 / stats.total[n] as f64;
        }
    }
    // Python's sum() of the logs, left to right, then one division.
    let mut sum = 0.0f64;
    for p in &precisions[..eff_order] {
        sum += floored_log(*p);
    }
    out.score = bp * (sum / eff_order as f64).exp();
    out.precisions = precisions;
    out
}

/// Lowercases (optionally), right-strips and tokenizes one segment, as sacrebleu's
/// `_preprocess_segment`; the result is the 13a token string.
pub fn preprocess(segment: &str, opts: BleuOptions) -> String {
    if opts.lowercase {
        tokenize_13a(py_rstrip(&py_lower(segment)))
    } else {
        tokenize_13a(py_rstrip(segment))
    }
}

/// N-gram counts (orders 1..=4) of a token sequence.
fn ngram_counts<'a>(tokens: &'a [&'a str]) -> HashMap<&'a [&'a str], u64> {
    let mut m = HashMap::new();
    for n in 1..=MAX_ORDER {
        if tokens.len() < n {
            break;
        }
        for w in tokens.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

/// The reference length closest to `hyp_len`; ties go to the shorter reference.
pub fn closest_ref_len(hyp_len: u64, ref_lens: impl IntoIterator<Item = u64>) -> Option<u64> {
    let mut best: Option<(u64, u64)> = None; // (diff, len)
    for r in ref_lens {
        let diff = hyp_len.abs_diff(r);
        best = match best {
            None => Some((diff, r)),
            Some((d, l)) if diff < d || (diff == d && r < l) => Some((diff, r)),
            keep => keep,
        };
    }
    best.map(|(_, l)| l)
}

/// Statistics of one hypothesis against its references, all already preprocessed.
fn segment_stats(hyp: &str, refs: &[String]) -> Result<Stats> {
    if refs.is_empty() {
        return Err(Error::Config(
            "BLEU needs at least one reference per segment".into(),
        ));
    }
    let ref_tokens: Vec<Vec<&str>> = refs.iter().map(|r| py_split(r).collect()).collect();
    let mut ref_max: HashMap<&[&str], u64> = HashMap::new();
    for toks in &ref_tokens {
        for (g, c) in ngram_counts(toks) {
            let e = ref_max.entry(g).or_insert(0);
            *e = (*e).max(c);
        }
    }
    let hyp_tokens: Vec<&str> = py_split(hyp).collect();
    let sys_len = hyp_tokens.len() as u64;
    let ref_len =
        closest_ref_len(sys_len, ref_tokens.iter().map(|t| t.len() as u64)).unwrap_or_default();
    let mut stats = Stats {
        sys_len,
        ref_len,
        ..Stats::default()
    };
    for (g, c) in ngram_counts(&hyp_tokens) {
        let n = g.len() - 1;
        stats.total[n] += c;
        if let Some(&r) = ref_max.get(g) {
            stats.correct[n] += c.min(r);
        }
    }
    Ok(stats)
}

/// Statistics of one raw (unprocessed) hypothesis against its raw references.
pub fn sentence_stats<S: AsRef<str>>(hyp: &str, refs: &[S], opts: BleuOptions) -> Result<Stats> {
    let refs: Vec<String> = refs.iter().map(|r| preprocess(r.as_ref(), opts)).collect();
    segment_stats(&preprocess(hyp, opts), &refs)
}

/// `sacrebleu.sentence_bleu(hyp, refs)` (effective order on). Errors when `refs` is empty.
pub fn sentence_bleu<S: AsRef<str>>(hyp: &str, refs: &[S], opts: BleuOptions) -> Result<BleuScore> {
    Ok(compute_bleu(&sentence_stats(hyp, refs, opts)?, true))
}

/// `sacrebleu.corpus_bleu(hyps, refs)`, with the references given per segment: `refs[i]` holds
/// the references of `hyps[i]` (sacrebleu takes reference *streams*; a missing reference of a
/// segment, `None` in sacrebleu, is simply absent here).
pub fn corpus_bleu<H: AsRef<str>, R: AsRef<str>>(
    hyps: &[H],
    refs: &[Vec<R>],
    opts: BleuOptions,
) -> Result<BleuScore> {
    if hyps.len() != refs.len() {
        return Err(Error::Config(format!(
            "corpus BLEU: {} hypotheses but {} reference sets",
            hyps.len(),
            refs.len()
        )));
    }
    if hyps.is_empty() {
        return Err(Error::Config("corpus BLEU of an empty corpus".into()));
    }
    let mut total = Stats::default();
    for (h, r) in hyps.iter().zip(refs) {
        total += sentence_stats(h.as_ref(), r, opts)?;
    }
    Ok(compute_bleu(&total, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_ref_len_ties_go_shorter() {
        assert_eq!(closest_ref_len(5, [7, 3]), Some(3));
        assert_eq!(closest_ref_len(5, [3, 7]), Some(3));
        assert_eq!(closest_ref_len(5, [6, 3]), Some(6));
        assert_eq!(closest_ref_len(5, []), None);
    }

    #[test]
    fn empty_refs_is_an_error_not_a_panic() {
        let e = sentence_bleu::<&str>("x", &[], BleuOptions::default()).unwrap_err();
        assert!(e.to_string().contains("reference"), "{e}");
    }

    #[test]
    fn identical_is_100_and_disjoint_is_0() {
        let o = BleuOptions::default();
        assert!(
            (sentence_bleu("a b c d e", &["a b c d e"], o).unwrap().score - 100.0).abs() < 1e-9
        );
        assert_eq!(sentence_bleu("a b", &["c d"], o).unwrap().score, 0.0);
    }
}

#[cfg(test)]
mod sacrebleu_fixture;
