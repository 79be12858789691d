//! The exact pair search: an n-gram inverted index over the test prompts, a sound upper bound on
//! sentence BLEU from n-gram overlap counts, and exact BLEU for the pairs the bound cannot rule out.
//!
//! # Tokens
//! Every text goes through the same preprocessing as [`crate::bleu::sentence_bleu`] (optional
//! lowercasing, right-strip, 13a, Python split). Tokens are then mapped to ids of the *test*
//! vocabulary; a training token that no test prompt contains gets [`OOV`]. An n-gram that holds an
//! `OOV` token cannot match any test n-gram, so dropping such n-grams leaves every clipped match
//! count unchanged, and the totals depend only on the lengths, which are kept. Scores computed
//! from ids are therefore exactly the scores of the strings (the property test checks it against
//! the string-level [`crate::bleu::sentence_bleu`]).
//!
//! # The bound
//! For a hypothesis `H` of `h` tokens and one reference `R` of `r` tokens, sacrebleu's sentence
//! BLEU is a function `S(c; h, r)` of the clipped match counts `c = (c1, c2, c3, c4)`, where
//! `c_n = Σ_g min(count_H(g), count_R(g))` over n-grams `g`, and `t_n = max(h - n + 1, 0)`.
//!
//! **Lemma 1 (monotonicity).** If `c ≤ c'` componentwise (both `≤ t`), then
//! `S(c) ≤ S(c')`.
//! *Proof.* If every `c_n = 0`, `S(c) = 0 ≤ S(c')`. Otherwise both use the same brevity penalty
//! and effective order `E` (both depend on `h, r` only), and `S = bp · exp(Σ_{n≤E} ln p_n / E)`,
//! so it suffices that every `p_n(c) ≤ p_n(c')`. With `k_n(c) = #{m ≤ n : c_m = 0}`, smoothing
//! `exp` sets `p_n = 100 c_n / t_n` when `c_n > 0` and `100 / (2^{k_n} t_n)` when `c_n = 0`.
//! (a) `c_n > 0`: then `c'_n ≥ c_n > 0` and `p_n(c') = 100 c'_n/t_n ≥ p_n(c)`. (b) `c_n = 0 < c'_n`:
//! `p_n(c') ≥ 100/t_n ≥ 100/(2^{k_n} t_n) = p_n(c)` since `k_n ≥ 1`. (c) `c_n = c'_n = 0`: every
//! zero of `c'` is a zero of `c`, so `k_n(c') ≤ k_n(c)` and `p_n(c') ≥ p_n(c)`. ∎
//!
//! **Lemma 2.** `c_n ≤ c_{n-1}` for `n ≥ 2`, and `c_n ≤ t_n`.
//! *Proof.* Group the n-grams `g` by their (n-1)-prefix `q`. The occurrences of the different `g`
//! with prefix `q` are distinct occurrences of `q` in `H` (and in `R`), so
//! `Σ_{g∈q} min(cH(g), cR(g)) ≤ min(Σ_{g∈q} cH(g), Σ_{g∈q} cR(g)) ≤ min(cH(q), cR(q))`; sum
//! over `q`. `c_n ≤ t_n` since matches are clipped by the hypothesis count. ∎
//!
//! **Theorem (the bound).** With `c2` known exactly (from the bigram index),
//! `S(c) ≤ S(u)` for `u = (t1, c2, min(c2, t3), min(c2, t4))`: `u ≥ c` by Lemma 2, then Lemma 1.
//! When a pair shares no bigram (`c2 = 0`), the bound `S(t1, 0, 0, 0)` depends on the lengths
//! only; pairs whose length bound reaches the threshold are scored exactly whatever their overlap.
//! The symmetric-max score is bounded by the max of the two directions' bounds (`c` is symmetric
//! in `H` and `R`; only `t`, `bp` and `E` change). Floating-point: the bound is computed by the
//! very code that computes the score, whose steps are monotone; a pair is pruned only when its
//! bound is below the threshold by more than [`SLACK`].
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::bleu::{
    BleuOptions, MAX_ORDER, Stats, compute_bleu, for_each_13a_token, preprocess, py_lower,
    py_rstrip, py_split,
};

/// The id of a training token that no test prompt contains.
pub const OOV: u32 = u32::MAX;

/// A pair is pruned only when its bound is below the threshold by more than this.
pub const SLACK: f64 = 1e-7;

/// Which side of a pair is the BLEU hypothesis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hypothesis {
    /// `sentence_bleu(test_prompt, [training_prompt])`.
    #[default]
    Test,
    /// `sentence_bleu(training_prompt, [test_prompt])`.
    Train,
    /// The larger of the two.
    Max,
}

/// A fast hasher for u128 n-gram keys (a multiply-xorshift; keys are not adversarial here).
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ *b as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u128(&mut self, k: u128) {
        let x = (k as u64) ^ ((k >> 64) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let x = (x ^ (x >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        self.0 = x ^ (x >> 29);
    }
    fn write_u32(&mut self, k: u32) {
        self.write_u128(k as u128)
    }
}

type KeyMap<V> = HashMap<u128, V, BuildHasherDefault<KeyHasher>>;

/// xxh3 for the token strings of the vocabulary (looked up once per training token).
#[derive(Default, Clone, Copy)]
pub struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    fn write_u8(&mut self, b: u8) {
        self.0 = (self.0 ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type Vocab = HashMap<String, u32, BuildHasherDefault<TokenHasher>>;

/// The key of an n-gram of ids (order 1..=4): `id + 1` in 32-bit lanes, so orders never collide;
/// `None` when it holds an [`OOV`] token.
#[inline]
fn gram_key(ids: &[u32]) -> Option<u128> {
    let mut k = 0u128;
    for &i in ids {
        if i == OOV {
            return None;
        }
        k = (k << 32) | (i as u128 + 1);
    }
    Some(k)
}

#[inline]
fn key_order(k: u128) -> usize {
    (128 - k.leading_zeros() as usize).div_ceil(32)
}

/// All n-grams (orders 1..=4, no `OOV`) of a token sequence with their counts, sorted by key.
pub fn gram_table(ids: &[u32]) -> Vec<(u128, u32)> {
    let mut keys = Vec::with_capacity(ids.len() * MAX_ORDER);
    for n in 1..=MAX_ORDER.min(ids.len()) {
        keys.extend(ids.windows(n).filter_map(gram_key));
    }
    run_lengths(keys)
}

fn run_lengths(mut keys: Vec<u128>) -> Vec<(u128, u32)> {
    keys.sort_unstable();
    let mut out: Vec<(u128, u32)> = Vec::with_capacity(keys.len());
    for k in keys {
        match out.last_mut() {
            Some((last, c)) if *last == k => *c += 1,
            _ => out.push((k, 1)),
        }
    }
    out
}

fn stats_for(c: [u64; MAX_ORDER], hyp_len: u64, ref_len: u64) -> Stats {
    let mut total = [0u64; MAX_ORDER];
    let mut correct = [0u64; MAX_ORDER];
    for n in 0..MAX_ORDER {
        total[n] = hyp_len.saturating_sub(n as u64);
        correct[n] = c[n].min(total[n]);
    }
    Stats {
        sys_len: hyp_len,
        ref_len,
        correct,
        total,
    }
}

/// Sentence BLEU of a hypothesis of `hyp_len` tokens against one reference of `ref_len` tokens
/// with clipped match counts `c` (sacrebleu's arithmetic, effective order on). Given upper bounds
/// on the counts instead, it is an upper bound on the score (Lemma 1 of the module docs).
pub fn bleu_from_counts(c: [u64; MAX_ORDER], hyp_len: u64, ref_len: u64) -> f64 {
    compute_bleu(&stats_for(c, hyp_len, ref_len), true).score
}

/// The pair score in the configured direction, from match counts and the two lengths.
pub fn directed_score(hyp: Hypothesis, c: [u64; MAX_ORDER], test_len: u64, train_len: u64) -> f64 {
    match hyp {
        Hypothesis::Test => bleu_from_counts(c, test_len, train_len),
        Hypothesis::Train => bleu_from_counts(c, train_len, test_len),
        Hypothesis::Max => {
            bleu_from_counts(c, test_len, train_len).max(bleu_from_counts(c, train_len, test_len))
        }
    }
}

/// The upper bound on a pair's score from its exact bigram overlap `c2` (the Theorem).
pub fn bigram_bound(hyp: Hypothesis, c2: u64, test_len: u64, train_len: u64) -> f64 {
    let one = |h: u64, r: u64| bleu_from_counts([h, c2, c2, c2], h, r);
    match hyp {
        Hypothesis::Test => one(test_len, train_len),
        Hypothesis::Train => one(train_len, test_len),
        Hypothesis::Max => one(test_len, train_len).max(one(train_len, test_len)),
    }
}

/// Whether `text` surely has more than `max` 13a tokens, by a lower bound on its token count: its
/// words (split on Python's whitespace, as the tokens are), less one for each `-\n` that 13a
/// joins and two for each `<skipped>` it removes (which may also make a `-\n`). Lowercasing and
/// the other 13a steps only split words.
fn more_tokens_than(text: &str, max: u64) -> bool {
    let mut words = 0u64;
    let mut in_word = false;
    for c in text.chars() {
        let ws = crate::bleu::is_py_whitespace(c);
        words += u64::from(!ws && !in_word);
        in_word = !ws;
    }
    if words <= max {
        return false;
    }
    let joins = text.matches("-\n").count() as u64 + 2 * text.matches("<skipped>").count() as u64;
    words.saturating_sub(joins) > max
}

/// A pair whose score is above the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairHit {
    /// Index into the test prompts given to [`LeakIndex::new`].
    pub test: u32,
    /// Index into the training documents given to [`LeakIndex::search`].
    pub doc: u32,
    pub score: f64,
}

/// Work counters of one search.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchStats {
    /// Test prompts × training documents.
    pub pairs: u64,
    /// Pairs ruled out without exact scoring (no shared bigram and a length bound below the
    /// threshold, or a bigram bound below it).
    pub pruned: u64,
    /// Pairs sharing a bigram whose bound still ruled them out (a subset of `pruned`).
    pub pruned_by_bigram_bound: u64,
    /// Pairs scored with exact BLEU.
    pub exact_scored: u64,
    /// Pairs above the threshold.
    pub leaking: u64,
}

impl std::ops::Add for SearchStats {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        SearchStats {
            pairs: self.pairs + o.pairs,
            pruned: self.pruned + o.pruned,
            pruned_by_bigram_bound: self.pruned_by_bigram_bound + o.pruned_by_bigram_bound,
            exact_scored: self.exact_scored + o.exact_scored,
            leaking: self.leaking + o.leaking,
        }
    }
}

struct TestEntry {
    len: u64,
    grams: KeyMap<u32>,
}

/// The test prompts, indexed for the search against many training prompts.
///
/// ```
/// use koala_pipeline::bleu::BleuOptions;
/// use koala_pipeline::leakage::index::{Hypothesis, LeakIndex};
/// let idx = LeakIndex::new(&["What is the capital of France?"], BleuOptions::default(), Hypothesis::Test, 20.0);
/// let docs: Vec<Vec<u32>> = ["what is the capital of France?", "Bake a cake."]
///     .iter().map(|d| idx.tokenize(d)).collect();
/// let (hits, stats) = idx.search(&docs);
/// assert_eq!(hits.len(), 1);
/// assert_eq!(hits[0].doc, 0);
/// assert_eq!(stats.pairs, 2);
/// ```
pub struct LeakIndex {
    opts: BleuOptions,
    hypothesis: Hypothesis,
    threshold: f64,
    vocab: Vocab,
    tests: Vec<TestEntry>,
    /// bigram → (test, count in that test)
    bigrams: KeyMap<Vec<(u32, u32)>>,
    /// The longest document that can still reach the threshold against some test, whatever its
    /// tokens ([`LeakIndex::max_leaking_len`]).
    max_leaking_len: Option<u64>,
}

struct Scratch {
    acc: Vec<u32>,
    touched: Vec<u32>,
    exact: Vec<u32>,
    keys: Vec<u128>,
}

impl LeakIndex {
    /// Indexes the test prompts. A pair leaks when its score is above `threshold`.
    pub fn new<S: AsRef<str>>(
        tests: &[S],
        opts: BleuOptions,
        hypothesis: Hypothesis,
        threshold: f64,
    ) -> Self {
        let mut vocab = Vocab::default();
        let mut entries = Vec::with_capacity(tests.len());
        let mut bigrams: KeyMap<Vec<(u32, u32)>> = KeyMap::default();
        for (t, text) in tests.iter().enumerate() {
            let pre = preprocess(text.as_ref(), opts);
            let ids: Vec<u32> = py_split(&pre)
                .map(|tok| {
                    let next = vocab.len() as u32;
                    *vocab.entry(tok.to_string()).or_insert(next)
                })
                .collect();
            let table = gram_table(&ids);
            for &(k, c) in &table {
                if key_order(k) == 2 {
                    bigrams.entry(k).or_default().push((t as u32, c));
                }
            }
            entries.push(TestEntry {
                len: ids.len() as u64,
                grams: table.into_iter().collect(),
            });
        }
        let mut index = LeakIndex {
            opts,
            hypothesis,
            threshold,
            vocab,
            tests: entries,
            bigrams,
            max_leaking_len: None,
        };
        index.max_leaking_len = index.compute_max_leaking_len();
        index
    }

    /// The longest document length (in tokens) at which some test can still reach the threshold,
    /// whatever the document's tokens; `None` when no bound was found (no test, or a bound that
    /// never falls below the threshold).
    ///
    /// For a document of `l` tokens and a test of `r`, the bigram bound with every possible
    /// bigram matching (`c2 = min(l, r) - 1`) bounds the score of any document of that length
    /// (Lemma 2 and Lemma 1 above). Beyond `l = r` that bound never grows with `l`: with the test
    /// as hypothesis only the brevity penalty `exp(1 - l/r)` moves, and it falls; with the
    /// document as hypothesis `c2 = r - 1` stays and every `t_n` grows. So a binary search per
    /// test finds where its bound falls below the threshold for good.
    pub fn max_leaking_len(&self) -> Option<u64> {
        self.max_leaking_len
    }

    fn compute_max_leaking_len(&self) -> Option<u64> {
        let below = |r: u64, l: u64| {
            bigram_bound(self.hypothesis, l.min(r).saturating_sub(1), r, l) < self.threshold - SLACK
        };
        let mut longest = 0u64;
        for t in &self.tests {
            let r = t.len.max(1);
            // The first length above `r` whose bound is below the threshold (doubling, then
            // bisection on the non-increasing part).
            let mut hi = r + 1;
            while !below(r, hi) {
                hi = hi.checked_mul(2)?;
                if hi > 1 << 40 {
                    return None;
                }
            }
            let mut lo = r; // `lo` may still reach the threshold; `hi` cannot
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if below(r, mid) {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            longest = longest.max(lo);
        }
        (!self.tests.is_empty()).then_some(longest)
    }

    /// The ids [`LeakIndex::search`] needs for a training text: its [`LeakIndex::tokenize`]d
    /// ids, or none when the text is longer than [`LeakIndex::max_leaking_len`] tokens, which a
    /// lower bound on its token count (its words, less what 13a may join) shows without
    /// tokenizing it. An empty document matches no test.
    pub fn search_tokens(&self, text: &str) -> Vec<u32> {
        match self.max_leaking_len {
            Some(max) if more_tokens_than(text, max) => Vec::new(),
            _ => self.tokenize(text),
        }
    }

    /// Number of indexed test prompts.
    pub fn n_tests(&self) -> usize {
        self.tests.len()
    }

    /// Token length of test prompt `t`.
    pub fn test_len(&self, t: usize) -> u64 {
        self.tests[t].len
    }

    /// A training text as ids of the test vocabulary ([`OOV`] for the other tokens).
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        // `preprocess`, token by token, without building the token string.
        let lowered;
        let text = if self.opts.lowercase {
            lowered = py_lower(text);
            &lowered
        } else {
            text
        };
        let mut ids = Vec::with_capacity(text.len() / 4);
        for_each_13a_token(py_rstrip(text), |tok| {
            ids.push(self.vocab.get(tok).copied().unwrap_or(OOV))
        });
        ids
    }

    /// Exact match counts of test `t` against a document, given the document's [`gram_table`].
    pub fn match_counts(&self, t: usize, doc_table: &[(u128, u32)]) -> [u64; MAX_ORDER] {
        let grams = &self.tests[t].grams;
        let mut c = [0u64; MAX_ORDER];
        for &(k, cd) in doc_table {
            if let Some(&ct) = grams.get(&k) {
                c[key_order(k) - 1] += cd.min(ct) as u64;
            }
        }
        c
    }

    /// The exact score of test `t` against a tokenized document.
    pub fn exact_score(&self, t: usize, doc: &[u32]) -> f64 {
        let table = gram_table(doc);
        directed_score(
            self.hypothesis,
            self.match_counts(t, &table),
            self.tests[t].len,
            doc.len() as u64,
        )
    }

    /// For each document length `r` up to `max_len`, the tests whose zero-bigram bound reaches
    /// the threshold (these pairs cannot be pruned without their unigram overlap).
    fn length_danger(&self, max_len: usize) -> Vec<Vec<u32>> {
        (0..=max_len)
            .map(|r| {
                (0..self.tests.len() as u32)
                    .filter(|&t| {
                        bigram_bound(self.hypothesis, 0, self.tests[t as usize].len, r as u64)
                            >= self.threshold - SLACK
                    })
                    .collect()
            })
            .collect()
    }

    fn search_doc(
        &self,
        d: usize,
        doc: &[u32],
        danger: &[Vec<u32>],
        s: &mut Scratch,
        hits: &mut Vec<PairHit>,
        st: &mut SearchStats,
    ) {
        let r = doc.len() as u64;
        st.pairs += self.tests.len() as u64;
        s.keys.clear();
        s.keys.extend(
            doc.windows(2)
                .filter_map(gram_key)
                .filter(|k| self.bigrams.contains_key(k)),
        );
        s.keys.sort_unstable();
        let mut i = 0;
        while i < s.keys.len() {
            let k = s.keys[i];
            let mut j = i + 1;
            while j < s.keys.len() && s.keys[j] == k {
                j += 1;
            }
            let cd = (j - i) as u32;
            if let Some(post) = self.bigrams.get(&k) {
                for &(t, ct) in post {
                    if s.acc[t as usize] == 0 {
                        s.touched.push(t);
                    }
                    s.acc[t as usize] += cd.min(ct);
                }
            }
            i = j;
        }
        s.exact.clear();
        for &t in &s.touched {
            let c2 = s.acc[t as usize] as u64;
            if bigram_bound(self.hypothesis, c2, self.tests[t as usize].len, r)
                >= self.threshold - SLACK
            {
                s.exact.push(t);
            } else {
                st.pruned_by_bigram_bound += 1;
            }
        }
        for &t in &danger[doc.len()] {
            if s.acc[t as usize] == 0 {
                s.exact.push(t);
            }
        }
        for &t in &s.touched {
            s.acc[t as usize] = 0;
        }
        s.touched.clear();
        st.exact_scored += s.exact.len() as u64;
        st.pruned += self.tests.len() as u64 - s.exact.len() as u64;
        if s.exact.is_empty() {
            return;
        }
        let table = gram_table(doc);
        for &t in &s.exact {
            let score = directed_score(
                self.hypothesis,
                self.match_counts(t as usize, &table),
                self.tests[t as usize].len,
                r,
            );
            if score > self.threshold {
                st.leaking += 1;
                hits.push(PairHit {
                    test: t,
                    doc: d as u32,
                    score,
                });
            }
        }
    }

    /// Every (test, document) pair whose score is above the threshold, in document order then
    /// test order, with the work counters. Exactly the pairs brute force finds (module docs).
    pub fn search(&self, docs: &[Vec<u32>]) -> (Vec<PairHit>, SearchStats) {
        self.search_with_progress(docs, &|_| {})
    }

    /// [`LeakIndex::search`], calling `progress(n)` after each chunk of `n` documents.
    pub fn search_with_progress(
        &self,
        docs: &[Vec<u32>],
        progress: &(dyn Fn(u64) + Sync),
    ) -> (Vec<PairHit>, SearchStats) {
        let max_len = docs.iter().map(|d| d.len()).max().unwrap_or(0);
        let danger = self.length_danger(max_len);
        const CHUNK: usize = 2048;
        let parts: Vec<(Vec<PairHit>, SearchStats)> = docs
            .par_chunks(CHUNK)
            .enumerate()
            .map(|(ci, chunk)| {
                let mut s = Scratch {
                    acc: vec![0; self.tests.len()],
                    touched: Vec::new(),
                    exact: Vec::new(),
                    keys: Vec::new(),
                };
                let mut hits = Vec::new();
                let mut st = SearchStats::default();
                for (k, doc) in chunk.iter().enumerate() {
                    self.search_doc(ci * CHUNK + k, doc, &danger, &mut s, &mut hits, &mut st);
                }
                progress(chunk.len() as u64);
                (hits, st)
            })
            .collect();
        let mut hits = Vec::new();
        let mut total = SearchStats::default();
        for (h, st) in parts {
            hits.extend(h);
            total = total + st;
        }
        (hits, total)
    }

    /// The brute-force baseline on token ids: every pair scored exactly, no index, no bound.
    /// Same decisions as [`LeakIndex::search`], by construction of the bound; the tests and the
    /// bench check it.
    pub fn brute_force(&self, docs: &[Vec<u32>]) -> Vec<PairHit> {
        let parts: Vec<Vec<PairHit>> = docs
            .par_iter()
            .enumerate()
            .map(|(d, doc)| {
                let table = gram_table(doc);
                (0..self.tests.len())
                    .filter_map(|t| {
                        let score = directed_score(
                            self.hypothesis,
                            self.match_counts(t, &table),
                            self.tests[t].len,
                            doc.len() as u64,
                        );
                        (score > self.threshold).then_some(PairHit {
                            test: t as u32,
                            doc: d as u32,
                            score,
                        })
                    })
                    .collect()
            })
            .collect();
        parts.into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bleu::{BleuOptions, sentence_bleu, sentence_stats};
    use proptest::prelude::*;

    const WORDS: &[&str] = &[
        "the", "a", "cat", "dog", "sat", "on", "mat", "is", "of", "to", "and", ",", ".", "?",
        "what", "how", "write", "poem", "about", "The", "3.5", "I", "you",
    ];

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(WORDS), 0..14).prop_map(|w| w.join(" "))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// The bound is never below the real score, for counts from real text pairs.
        #[test]
        fn bound_is_never_below_the_score(h in text(), r in text()) {
            let o = BleuOptions::default();
            let st = sentence_stats(&h, &[&r], o).unwrap();
            let real = sentence_bleu(&h, &[&r], o).unwrap().score;
            let (hl, rl) = (st.sys_len, st.ref_len);
            let c2 = st.correct[1];
            // hyp = h: bigram bound with the test as hypothesis.
            let b = bigram_bound(Hypothesis::Test, c2, hl, rl);
            prop_assert!(b + 1e-12 >= real, "bound {b} < score {real}");
            // Lemma 2 on real text.
            for n in 1..MAX_ORDER {
                prop_assert!(st.correct[n] <= st.correct[n - 1]);
            }
            // ids give the same score as strings.
            let idx = LeakIndex::new(&[&h], o, Hypothesis::Test, 20.0);
            let ex = idx.exact_score(0, &idx.tokenize(&r));
            prop_assert!((ex - real).abs() < 1e-9, "ids {ex} vs strings {real}");
        }

        /// Lemma 1 on arbitrary counts: raising any count never lowers the score.
        #[test]
        fn score_is_monotone_in_counts(h in 0u64..12, r in 0u64..12, c in prop::array::uniform4(0u64..12), n in 0usize..4) {
            let mut c2 = c;
            c2[n] += 1;
            prop_assert!(bleu_from_counts(c2, h, r) >= bleu_from_counts(c, h, r));
        }

        /// The indexed search finds exactly the pairs brute force (string-level sacrebleu-equal
        /// BLEU on every pair) finds, in every direction.
        #[test]
        fn search_equals_brute_force(tests in prop::collection::vec(text(), 1..6),
                                     docs in prop::collection::vec(text(), 0..30),
                                     thr in prop::sample::select(vec![0.0, 5.0, 20.0, 40.0]),
                                     dir in prop::sample::select(vec![Hypothesis::Test, Hypothesis::Train, Hypothesis::Max])) {
            let o = BleuOptions::default();
            let idx = LeakIndex::new(&tests, o, dir, thr);
            let ids: Vec<Vec<u32>> = docs.iter().map(|d| idx.tokenize(d)).collect();
            let (hits, st) = idx.search(&ids);
            let mut want = Vec::new();
            for (d, doc) in docs.iter().enumerate() {
                for (t, test) in tests.iter().enumerate() {
                    let a = sentence_bleu(test, &[doc], o).unwrap().score;
                    let b = sentence_bleu(doc, &[test], o).unwrap().score;
                    let s = match dir { Hypothesis::Test => a, Hypothesis::Train => b, Hypothesis::Max => a.max(b) };
                    if s > thr { want.push((t as u32, d as u32)); }
                }
            }
            let got: Vec<(u32, u32)> = hits.iter().map(|h| (h.test, h.doc)).collect();
            let mut got_sorted = got.clone();
            got_sorted.sort_by_key(|&(t, d)| (d, t));
            want.sort_by_key(|&(t, d)| (d, t));
            prop_assert_eq!(got_sorted, want);
            prop_assert_eq!(st.pairs, (tests.len() * docs.len()) as u64);
            prop_assert_eq!(st.pruned + st.exact_scored, st.pairs);
            let bf: Vec<(u32, u32)> = idx.brute_force(&ids).iter().map(|h| (h.test, h.doc)).collect();
            let mut bf = bf; bf.sort_by_key(|&(t, d)| (d, t));
            let mut g = got; g.sort_by_key(|&(t, d)| (d, t));
            prop_assert_eq!(bf, g);
        }
    }

    #[test]
    fn near_copies_are_found_and_unrelated_pruned() {
        let o = BleuOptions::default();
        let idx = LeakIndex::new(
            &["Write a short poem about the sea and the wind at night."],
            o,
            Hypothesis::Test,
            20.0,
        );
        let docs: Vec<Vec<u32>> = [
            "Write a short poem about the sea and the wind at night!",
            "What are the best ways to cook rice on a stove without burning it at the bottom?",
        ]
        .iter()
        .map(|d| idx.tokenize(d))
        .collect();
        let (hits, st) = idx.search(&docs);
        assert_eq!(hits.len(), 1);
        assert!(hits[0].score > 80.0);
        assert_eq!(st.exact_scored, 1);
    }

    /// The word count less 13a's joins never exceeds the token count.
    #[test]
    fn the_token_count_bound_is_sound() {
        let pieces = [
            "a",
            "Bé",
            "1",
            "-",
            "\n",
            " ",
            ".",
            ",",
            "<skipped>",
            "\u{a0}",
            "\u{2003}",
            "&amp;",
            "x-\ny",
            "\t",
            "İ",
        ];
        proptest!(|(idx in prop::collection::vec(0..pieces.len(), 0..30), lower in any::<bool>())| {
            let text: String = idx.iter().map(|&i| pieces[i]).collect();
            let opts = BleuOptions { lowercase: lower };
            let tokens = py_split(&preprocess(&text, opts)).count() as u64;
            for max in 0..tokens + 2 {
                // Never "more" when there are not more.
                prop_assert!(!more_tokens_than(&text, max) || tokens > max, "{:?} has {} tokens, said more than {}", text, tokens, max);
            }
            // And it does say so for plain words.
            let words = text.split(crate::bleu::is_py_whitespace).filter(|w| !w.is_empty()).count() as u64;
            if !text.contains('-') && !text.contains('<') && words > 0 {
                prop_assert!(more_tokens_than(&text, words - 1));
            }
        });
    }

    /// A document longer than `max_leaking_len` cannot reach the threshold, however much of a test
    /// it copies: the test itself padded with filler, or its words repeated.
    #[test]
    fn documents_past_the_length_bound_cannot_leak() {
        let tests = [
            "Write a short poem about the sea and the wind at night.",
            "Explain recursion to a child",
            "hi",
            "List five fruits that are red , and one that is blue , in a table .",
        ];
        for hyp in [Hypothesis::Test, Hypothesis::Train, Hypothesis::Max] {
            for thr in [10.0, 20.0, 45.0] {
                let idx = LeakIndex::new(&tests, BleuOptions::default(), hyp, thr);
                let max = idx.max_leaking_len().expect("a bound exists");
                let mut leaked_at = 0u64;
                for (t, text) in tests.iter().enumerate() {
                    let words: Vec<&str> = text.split(' ').collect();
                    for extra in 0..(max as usize + 30) {
                        let padded = format!("{text}{}", " filler".repeat(extra));
                        let repeated: Vec<&str> = words
                            .iter()
                            .cycle()
                            .take(words.len() + extra)
                            .copied()
                            .collect();
                        for doc in [padded, repeated.join(" ")] {
                            let ids = idx.tokenize(&doc);
                            if idx.exact_score(t, &ids) > thr {
                                leaked_at = leaked_at.max(ids.len() as u64);
                                assert!(
                                    ids.len() as u64 <= max,
                                    "{hyp:?} {thr}: {} tokens leak, bound {max}",
                                    ids.len()
                                );
                            }
                            // Past the bound in words alone, it is not even tokenized.
                            let words = doc.split(' ').count() as u64;
                            assert_eq!(idx.search_tokens(&doc).is_empty(), words > max);
                        }
                    }
                }
                // The bound is not vacuous: copies of the tests do leak.
                assert!(leaked_at > 0, "{hyp:?} {thr}");
            }
        }
    }
}
