//! Leakage filter at Koala scale: the indexed search against brute force, in the same run.
//!
//! `cargo bench --bench leakage` (release). A seeded generator of our own writes a synthetic
//! training set of ~500K user prompts (heavy-tailed lengths, Zipfian vocabulary, function words)
//! and 180 test prompts, and plants near-copies of some test prompts in the training set.
//!
//! Brute force scores every (test, training) pair exactly. At full scale it would take many
//! minutes, so it is run on a uniform sample of training prompts (all 180 tests each, plus every
//! planted copy), timed, and extrapolated to all pairs; the output says so. Its decisions on the
//! sample are asserted identical to the indexed search's. Two baselines are timed:
//! - `brute force (token ids)`: the fastest brute force we have, every pair scored from
//!   pre-tokenized n-gram tables (tokenization excluded);
//! - `naive loop (strings)`: `sentence_bleu(test, [train])` on every pair, the literal definition.
//!
//! Environment: `KOALA_BENCH_TRAIN` (default 500000), `KOALA_BENCH_TESTS` (180),
//! `KOALA_BENCH_SAMPLE` (training prompts brute-forced, default 20000),
//! `KOALA_BENCH_NAIVE_PAIRS` (pairs for the string loop, default 200000).
use std::time::Instant;

use koala_pipeline::bleu::{BleuOptions, sentence_bleu};
use koala_pipeline::leakage::index::{Hypothesis, LeakIndex, PairHit};
use rayon::prelude::*;

/// SplitMix64: small, seeded, good enough for synthetic text.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn f64(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.f64().max(1e-300), self.f64());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

const FUNCTION_WORDS: &[&str] = &[
    "the", "a", "of", "to", "and", "in", "is", "it", "that", "for", "you", "on", "with", "as", "I",
    "be", "at", "this", "have", "from", "or", "by", "what", "how", "can", "my", "an", "do", "are",
    "your", "me", "about", "if", "will", "would", "should", "some", "there", "which", "please",
    "write", "explain", "give", "make", "list", "tell", "why", "when", "where", "who",
];
const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ra", "ten", "vo", "sel", "dar", "qui", "ne", "po", "tra", "gen", "cor",
    "li", "ment", "sta", "ber", "mon", "tic", "al", "ex", "pre", "con", "ing", "er", "ly", "tion",
];

struct Gen {
    rng: Rng,
    vocab: Vec<String>,
    cum: Vec<f64>,
}

impl Gen {
    fn new(seed: u64, n_vocab: usize) -> Self {
        let mut rng = Rng(seed);
        let mut vocab = Vec::with_capacity(n_vocab);
        for _ in 0..n_vocab {
            let k = 1 + rng.below(3);
            let w: String = (0..k)
                .map(|_| SYLLABLES[rng.below(SYLLABLES.len())])
                .collect();
            vocab.push(w);
        }
        let mut cum = Vec::with_capacity(n_vocab);
        let mut s = 0.0;
        for r in 0..n_vocab {
            s += 1.0 / ((r + 1) as f64).powf(1.07);
            cum.push(s);
        }
        Gen { rng, vocab, cum }
    }
    fn word(&mut self) -> String {
        if self.rng.f64() < 0.42 {
            return FUNCTION_WORDS[self.rng.below(FUNCTION_WORDS.len())].to_string();
        }
        let x = self.rng.f64() * self.cum[self.cum.len() - 1];
        let i = self
            .cum
            .partition_point(|&c| c < x)
            .min(self.vocab.len() - 1);
        self.vocab[i].clone()
    }
    /// A prompt of `n` words in sentences, with capitals, commas, numbers and end marks.
    fn prompt_words(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        let mut in_sentence = 0;
        for _ in 0..n {
            let mut w = if self.rng.f64() < 0.02 {
                format!("{}", self.rng.below(2000))
            } else {
                self.word()
            };
            if in_sentence == 0 {
                let mut c = w.chars();
                if let Some(f) = c.next() {
                    w = f.to_uppercase().collect::<String>() + c.as_str();
                }
            }
            in_sentence += 1;
            let r = self.rng.f64();
            if in_sentence > 4 && r < 0.08 {
                w.push(if self.rng.f64() < 0.3 { '?' } else { '.' });
                in_sentence = 0;
            } else if r < 0.12 {
                w.push(',');
            }
            out.push(w);
        }
        out
    }
    fn length(&mut self, mu: f64, sigma: f64, lo: usize, hi: usize) -> usize {
        ((mu + sigma * self.rng.normal()).exp() as usize).clamp(lo, hi)
    }
    fn perturb(&mut self, words: &[String], p: f64) -> Vec<String> {
        let mut out = Vec::with_capacity(words.len() + 4);
        for w in words {
            let r = self.rng.f64();
            if r < p / 3.0 {
                continue; // delete
            } else if r < 2.0 * p / 3.0 {
                out.push(self.word()); // substitute
            } else if r < p {
                out.push(w.clone());
                out.push(self.word()); // insert
            } else {
                out.push(w.clone());
            }
        }
        out
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let n_train = env("KOALA_BENCH_TRAIN", 500_000);
    let n_tests = env("KOALA_BENCH_TESTS", 180);
    let n_sample = env("KOALA_BENCH_SAMPLE", 20_000).min(n_train);
    let n_naive = env("KOALA_BENCH_NAIVE_PAIRS", 200_000);
    let threshold = 20.0;
    let opts = BleuOptions::default();
    let threads = rayon::current_num_threads();

    // --- data -------------------------------------------------------------------------------
    let t0 = Instant::now();
    let mut g = Gen::new(0x006b_6f61_6c61, 30_000);
    let tests: Vec<String> = (0..n_tests)
        .map(|_| {
            let n = g.length(3.0, 0.6, 4, 120);
            g.prompt_words(n).join(" ")
        })
        .collect();
    let mut train: Vec<String> = (0..n_train)
        .map(|_| {
            let n = g.length(3.4, 0.9, 2, 800);
            g.prompt_words(n).join(" ")
        })
        .collect();
    // Plant near-copies: a quarter of the tests get 1-3 copies each at a few edit rates.
    let mut planted: Vec<(usize, usize)> = Vec::new(); // (test, doc)
    for t in 0..n_tests {
        if t % 4 != 0 || n_train == 0 {
            continue;
        }
        let words: Vec<String> = tests[t].split(' ').map(String::from).collect();
        for k in 0..1 + g.rng.below(3) {
            let p = [0.0, 0.05, 0.15, 0.3, 0.5][(t / 4 + k) % 5];
            let d = g.rng.below(n_train);
            train[d] = g.perturb(&words, p).join(" ");
            planted.push((t, d));
        }
    }
    // A later copy may have overwritten an earlier one's slot: keep the last per slot.
    let mut seen = std::collections::HashSet::new();
    planted.reverse();
    planted.retain(|&(_, d)| seen.insert(d));
    planted.reverse();
    let mean_words =
        train.iter().map(|s| s.split(' ').count()).sum::<usize>() as f64 / n_train.max(1) as f64;
    println!(
        "leakage bench: {n_train} training prompts (mean {mean_words:.1} words), {n_tests} test prompts, {} planted near-copies, threshold {threshold}, {threads} threads; data generated in {:.2}s",
        planted.len(),
        t0.elapsed().as_secs_f64()
    );

    // --- indexed filter (what `leakage::filter` runs) ----------------------------------------
    let t_all = Instant::now();
    let t = Instant::now();
    let index = LeakIndex::new(&tests, opts, Hypothesis::Test, threshold);
    let t_index = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let docs: Vec<Vec<u32>> = train.par_iter().map(|d| index.tokenize(d)).collect();
    let t_tok = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (hits, st) = index.search(&docs);
    let t_search = t.elapsed().as_secs_f64();
    let t_filter = t_all.elapsed().as_secs_f64();
    println!(
        "indexed: index {t_index:.3}s, tokenize {t_tok:.2}s, search {t_search:.3}s; full filter {t_filter:.2}s"
    );
    println!(
        "pairs {}: pruned {} ({:.4}%; {} of them by the bigram bound), exactly scored {}, leaking {}",
        st.pairs,
        st.pruned,
        100.0 * st.pruned as f64 / st.pairs.max(1) as f64,
        st.pruned_by_bigram_bound,
        st.exact_scored,
        st.leaking
    );

    // --- brute force on a uniform sample of training prompts ---------------------------------
    let mut sample: Vec<usize> = planted.iter().map(|&(_, d)| d).collect();
    let mut rng = Rng(7);
    while sample.len() < n_sample {
        sample.push(rng.below(n_train));
    }
    sample.sort_unstable();
    sample.dedup();
    let sample_docs: Vec<Vec<u32>> = sample.iter().map(|&d| docs[d].clone()).collect();
    let t = Instant::now();
    let bf = index.brute_force(&sample_docs);
    let t_bf = t.elapsed().as_secs_f64();
    let bf_pairs = (sample.len() * n_tests) as f64;
    let bf_full = t_bf / bf_pairs * st.pairs as f64;
    // Decisions on the sample must be identical.
    let mut want: Vec<(u32, u32, u64)> = bf
        .iter()
        .map(|h| (sample[h.doc as usize] as u32, h.test, h.score.to_bits()))
        .collect();
    let in_sample: std::collections::HashSet<u32> = sample.iter().map(|&d| d as u32).collect();
    let mut got: Vec<(u32, u32, u64)> = hits
        .iter()
        .filter(|h: &&PairHit| in_sample.contains(&h.doc))
        .map(|h| (h.doc, h.test, h.score.to_bits()))
        .collect();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(
        got, want,
        "indexed search and brute force disagree on the sample"
    );
    println!(
        "brute force (token ids): {} sampled prompts x {n_tests} = {bf_pairs:.0} pairs in {t_bf:.2}s; EXTRAPOLATED to all {} pairs: {bf_full:.1}s; decisions identical on the sample ({} leaking pairs)",
        sample.len(),
        st.pairs,
        want.len()
    );

    // --- the naive string loop: sentence_bleu on every pair ----------------------------------
    let naive_docs = (n_naive / n_tests.max(1)).clamp(1, n_train.max(1));
    let t = Instant::now();
    let naive_hits: usize = (0..naive_docs)
        .into_par_iter()
        .map(|i| {
            let d = &train[sample[i % sample.len()]];
            tests
                .iter()
                .filter(|tp| {
                    sentence_bleu(tp, &[d], opts)
                        .map(|s| s.score > threshold)
                        .unwrap_or(false)
                })
                .count()
        })
        .sum();
    let t_naive = t.elapsed().as_secs_f64();
    let naive_pairs = (naive_docs * n_tests) as f64;
    let naive_full = t_naive / naive_pairs * st.pairs as f64;
    println!(
        "naive loop (strings, sentence_bleu per pair): {naive_pairs:.0} pairs in {t_naive:.2}s ({naive_hits} leaking); EXTRAPOLATED to all pairs: {naive_full:.0}s"
    );

    let found = planted
        .iter()
        .filter(|&&(t, d)| {
            hits.iter()
                .any(|h| h.test as usize == t && h.doc as usize == d)
        })
        .count();
    println!(
        "planted near-copies above the threshold: {found} of {}",
        planted.len()
    );
    println!(
        "RATIO search vs brute force (token ids, both without tokenization): {:.0}x",
        bf_full / t_search
    );
    println!(
        "RATIO full filter (tokenize+index+search) vs brute force (token ids + the same tokenization): {:.0}x",
        (bf_full + t_tok) / t_filter
    );
    println!(
        "RATIO full filter vs naive string loop: {:.0}x",
        naive_full / t_filter
    );
    println!("full filter {t_filter:.2}s on {threads} threads (goal < 20 s on 2 cores)");
}
