//! The ROUGE-L similarity filter of Alpaca's self-instruct, exact and fast.
//!
//! Alpaca keeps a new instruction unless its ROUGE-L F against some instruction kept so far (the
//! seeds included) is above 0.7. Brute force is one LCS per (new, kept) pair: Θ(N²). This module
//! makes the same decisions, item for item, and only computes LCS where a proof cannot rule a pair
//! out:
//!
//! - **Length.** F = 2·LCS/(m+n) (the F-measure of p = L/n, r = L/m), and LCS ≤ min(m, n), so
//!   F ≤ 2·min(m,n)/(m+n). For lengths m, n we find `α(m, n)`, the least LCS whose F (as
//!   `rouge_score` computes it, in floats) exceeds the threshold; a pair with α > min(m, n) is out.
//! - **Multiset overlap.** Every LCS is a common sub-multiset, so LCS ≤ |A ∩ B| as multisets. We
//!   write the multiset as a set of elements (token, k-th occurrence), so |A ∩ B| is a plain set
//!   intersection, and a pair with |A ∩ B| < α(m, n) is out.
//! - **Inverted index with prefix filtering.** Order all elements by document frequency (rarest
//!   first). If |A ∩ B| ≥ α then the first |A| − α + 1 elements of A and the first |B| − α + 1 of B
//!   share an element (otherwise more than |A| − α… elements of one set miss the other). With
//!   α_min(n) = min over m of α(m, n) ≤ α(m, n), indexing each kept item under its first
//!   n − α_min(n) + 1 elements and probing with the new item's own prefix finds every pair that
//!   can pass, and few others.
//! - Survivors get the exact LCS, bit-parallel ([`crate::rouge::LcsPattern`]).
//!
//! **Both cores, same decisions.** Items go in blocks. In parallel, each item of a block is
//! compared with the items kept before the block (a fixed set) and with the earlier items of its
//! own block (not yet known to be kept). A sequential pass then decides the block in input order,
//! counting only the in-block matches that were kept. The decision and the reported best match
//! (highest F, ties to the earliest kept item) equal brute force's.
use crate::rouge::{LcsPattern, Vocab, fmeasure};
use crate::{Error, Result};
use indicatif::ProgressBar;
use rayon::prelude::*;
use std::collections::HashMap;

/// Alpaca's threshold: drop an instruction whose ROUGE-L F with a kept one is above 0.7.
pub const ALPACA_THRESHOLD: f64 = 0.7;

/// What an item was found similar to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Similar {
    /// The `i`-th of the `against` texts (for example a seed task).
    Against(usize),
    /// The `i`-th of the input items (kept earlier).
    Input(usize),
}

/// The decision for one input item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub kept: bool,
    /// For a dropped item: the kept text with the highest F (the earliest on ties) and that F.
    /// `None` for a kept item.
    pub best: Option<(Similar, f64)>,
}

fn check_threshold(threshold: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&threshold) {
        return Err(Error::Config(format!(
            "ROUGE-L threshold must be in [0, 1], got {threshold}"
        )));
    }
    Ok(())
}

/// The least LCS length `L ≤ min(m, n)` whose F-measure (in `rouge_score`'s float arithmetic) is
/// above `t`, or `None` when no LCS of these lengths can exceed `t`. Every L below the returned
/// value gives `fmeasure ≤ t`, so it is a sound lower bound for a match.
pub fn alpha(t: f64, m: usize, n: usize) -> Option<usize> {
    let lim = m.min(n);
    if lim == 0 {
        return None;
    }
    // F ≈ 2L/(m+n): start a little below the real-number boundary (floats differ by ~1e-16).
    let start = ((t * (m + n) as f64 / 2.0).floor() as usize).saturating_sub(2);
    (start..=lim).find(|&l| fmeasure(l, n, m) > t)
}

/// Lower bound of α(m, n) over every partner length m (minus one, for float slack), or `None`
/// when an item of `n` tokens can match nothing.
fn alpha_min(t: f64, n: usize) -> Option<usize> {
    let best = (1..=n).filter_map(|m| alpha(t, m, n)).min()?;
    Some(best.saturating_sub(1).max(1))
}

/// One text prepared for comparison.
#[derive(Debug, Clone)]
struct Doc {
    toks: Vec<u32>,
    /// Its multiset elements (token, occurrence) as global ranks, ascending (rarest first).
    elems: Vec<u32>,
    /// How many leading `elems` it is indexed and probed under.
    prefix: usize,
}

fn overlap(a: &[u32], b: &[u32]) -> usize {
    let (mut i, mut j, mut c) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                c += 1;
                i += 1;
                j += 1;
            }
        }
    }
    c
}

/// Best match of `q` (global index `qi` irrelevant) among `cands` (global indices, ascending and
/// distinct), counting only F > t; ties to the earliest.
fn best_among(t: f64, docs: &[Doc], q: &Doc, cands: &[u32]) -> Option<(u32, f64)> {
    let n = q.toks.len();
    let mut pattern: Option<LcsPattern> = None;
    let mut best: Option<(u32, f64)> = None;
    for &c in cands {
        let d = &docs[c as usize];
        let m = d.toks.len();
        let Some(a) = alpha(t, m, n) else { continue };
        if overlap(&q.elems, &d.elems) < a {
            continue;
        }
        let p = pattern.get_or_insert_with(|| LcsPattern::new(&q.toks));
        let l = p.lcs(&d.toks);
        if l < a {
            continue;
        }
        // target = the new instruction, prediction = the kept one, as Alpaca calls it.
        let f = fmeasure(l, n, m);
        if f > t && best.is_none_or(|(_, bf)| f > bf) {
            best = Some((c, f));
        }
    }
    best
}

/// Per-candidate state of one probe (see [`probe`]).
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    stamp: u32,
    dead: bool,
    hits: u32,
    i: u32,
    j: u32,
    alpha: u32,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<(u32, Vec<Seen>)> = const { std::cell::RefCell::new((0, Vec::new())) };
}

/// A posting: a doc (global index) and the position of the element in its `elems`.
type Posting = (u32, u32);

/// Candidates of `q` among indexed docs, by prefix filtering with ppjoin's positional bound,
/// ascending. `list(e)` gives the postings of element `e`; `keep(d)` restricts the docs.
///
/// Soundness: both `elems` are sorted by the same global order. When `d` is first met at query
/// position `i` and doc position `j`, no common element precedes `i` in `q` or `j` in `d` (an
/// earlier one would be in both prefixes, hence met earlier), so |q ∩ d| ≤ 1 + min(n−1−i, m−1−j);
/// after the prefix, |q ∩ d| ≤ hits + min(n−1−i', m−1−j') at the last hit (i', j'). A doc whose
/// bound is below α(m, n) cannot reach F > t.
fn probe<'a>(
    t: f64,
    docs: &[Doc],
    q: &Doc,
    list: impl Fn(u32) -> &'a [Posting],
    keep: impl Fn(u32) -> bool,
) -> Vec<u32> {
    let n = q.toks.len();
    SCRATCH.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (stamp, seen) = &mut *guard;
        if seen.len() < docs.len() {
            seen.resize(docs.len(), Seen::default());
        }
        *stamp = stamp.wrapping_add(1);
        if *stamp == 0 {
            seen.iter_mut().for_each(|s| s.stamp = 0);
            *stamp = 1;
        }
        let st = *stamp;
        let mut touched: Vec<u32> = Vec::new();
        for (i, &e) in q.elems[..q.prefix].iter().enumerate() {
            for &(d, j) in list(e) {
                if !keep(d) {
                    continue;
                }
                let s = &mut seen[d as usize];
                let m = docs[d as usize].toks.len();
                if s.stamp != st {
                    *s = Seen {
                        stamp: st,
                        dead: true,
                        ..Seen::default()
                    };
                    touched.push(d);
                    let Some(a) = alpha(t, m, n) else { continue };
                    let ub = 1 + (n - 1 - i).min(m - 1 - j as usize);
                    if ub < a {
                        continue;
                    }
                    *s = Seen {
                        stamp: st,
                        dead: false,
                        hits: 1,
                        i: i as u32,
                        j,
                        alpha: a as u32,
                    };
                } else if !s.dead {
                    s.hits += 1;
                    s.i = i as u32;
                    s.j = j;
                }
            }
        }
        let mut out: Vec<u32> = touched
            .into_iter()
            .filter(|&d| {
                let s = &seen[d as usize];
                let m = docs[d as usize].toks.len();
                !s.dead
                    && s.hits as usize + (n - 1 - s.i as usize).min(m - 1 - s.j as usize)
                        >= s.alpha as usize
            })
            .collect();
        out.sort_unstable();
        out
    })
}

/// Encodes texts into docs with globally ranked multiset elements.
fn prepare(texts: &[&str], t: f64) -> Vec<Doc> {
    let mut vocab = Vocab::new();
    let toks: Vec<Vec<u32>> = texts.iter().map(|s| vocab.encode(s)).collect();
    let mut elem_id: HashMap<(u32, u32), u32> = HashMap::new();
    let mut occ: HashMap<u32, u32> = HashMap::new();
    let mut df: Vec<u32> = Vec::new();
    let elems: Vec<Vec<u32>> = toks
        .iter()
        .map(|ts| {
            occ.clear();
            ts.iter()
                .map(|&tok| {
                    let k = occ.entry(tok).or_insert(0);
                    *k += 1;
                    let next = elem_id.len() as u32;
                    let e = *elem_id.entry((tok, *k)).or_insert(next);
                    if e as usize == df.len() {
                        df.push(0);
                    }
                    df[e as usize] += 1;
                    e
                })
                .collect()
        })
        .collect();
    let mut order: Vec<u32> = (0..df.len() as u32).collect();
    order.sort_unstable_by_key(|&e| (df[e as usize], e));
    let mut rank = vec![0u32; df.len()];
    for (r, &e) in order.iter().enumerate() {
        rank[e as usize] = r as u32;
    }
    let max_len = toks.iter().map(Vec::len).max().unwrap_or(0);
    let amin: Vec<Option<usize>> = (0..=max_len).map(|n| alpha_min(t, n)).collect();
    toks.into_iter()
        .zip(elems)
        .map(|(toks, es)| {
            let mut elems: Vec<u32> = es.iter().map(|&e| rank[e as usize]).collect();
            elems.sort_unstable();
            let n = toks.len();
            let prefix = amin[n].map_or(0, |a| n + 1 - a.min(n));
            Doc {
                toks,
                elems,
                prefix,
            }
        })
        .collect()
}

/// One item's matches in the parallel pass: the best among the docs kept before its block, and
/// every match (doc, F) above the threshold among the earlier items of its block.
type BlockMatches = (Option<(u32, f64)>, Vec<(u32, f64)>);

/// Block size of the parallel pass: small enough that in-block work wasted on items that turn
/// out dropped stays small, large enough to feed both cores.
const BLOCK: usize = 256;

/// Alpaca's similarity filter over `items`, in order, seeded with `against` (always kept).
/// `progress`, when given, advances by one per input item.
pub fn dedup(
    against: &[&str],
    items: &[&str],
    threshold: f64,
    progress: Option<&ProgressBar>,
) -> Result<Vec<Decision>> {
    check_threshold(threshold)?;
    let t = threshold;
    let all: Vec<&str> = against.iter().chain(items).copied().collect();
    let docs = prepare(&all, t);
    let na = against.len();
    let to_similar = |g: u32| {
        let g = g as usize;
        if g < na {
            Similar::Against(g)
        } else {
            Similar::Input(g - na)
        }
    };
    // Posting lists of kept docs by element rank, in increasing doc order.
    let n_ranks = docs
        .iter()
        .flat_map(|d| d.elems.iter())
        .max()
        .map_or(0, |&r| r as usize + 1);
    let mut postings: Vec<Vec<Posting>> = vec![Vec::new(); n_ranks];
    let index = |postings: &mut Vec<Vec<Posting>>, g: usize| {
        let d = &docs[g];
        for (j, &e) in d.elems[..d.prefix].iter().enumerate() {
            postings[e as usize].push((g as u32, j as u32));
        }
    };
    for g in 0..na {
        index(&mut postings, g);
    }
    let mut out = Vec::with_capacity(items.len());
    let mut start = na;
    while start < all.len() {
        let end = (start + BLOCK).min(all.len());
        // In-block index over every item of the block (kept or not yet decided).
        let mut local: HashMap<u32, Vec<Posting>> = HashMap::new();
        for (g, d) in docs.iter().enumerate().take(end).skip(start) {
            for (j, &e) in d.elems[..d.prefix].iter().enumerate() {
                local.entry(e).or_default().push((g as u32, j as u32));
            }
        }
        let postings_ref = &postings;
        let docs_ref = &docs;
        let local_ref = &local;
        let found: Vec<BlockMatches> = (start..end)
            .into_par_iter()
            .map(|g| {
                let q = &docs_ref[g];
                let cands = probe(t, docs_ref, q, |e| &postings_ref[e as usize], |_| true);
                let before = best_among(t, docs_ref, q, &cands);
                let cands = probe(
                    t,
                    docs_ref,
                    q,
                    |e| local_ref.get(&e).map_or(&[][..], Vec::as_slice),
                    |h| (h as usize) < g,
                );
                // every in-block match above t (which of them are kept is decided below)
                let within = cands
                    .iter()
                    .filter_map(|&c| best_among(t, docs_ref, q, &[c]))
                    .collect();
                (before, within)
            })
            .collect();
        let mut kept_in_block: Vec<bool> = vec![false; end - start];
        for (off, (before, within)) in found.into_iter().enumerate() {
            let mut best = before;
            for (c, f) in within {
                if kept_in_block[c as usize - start] && best.is_none_or(|(_, bf)| f > bf) {
                    best = Some((c, f));
                }
            }
            let kept = best.is_none();
            if kept {
                kept_in_block[off] = true;
                index(&mut postings, start + off);
            }
            out.push(Decision {
                kept,
                best: best.map(|(c, f)| (to_similar(c), f)),
            });
        }
        if let Some(p) = progress {
            p.inc((end - start) as u64);
        }
        start = end;
    }
    Ok(out)
}

/// The same filter by brute force: every new item against every kept one, full LCS each time.
/// The reference for tests and the bench.
pub fn dedup_brute_force(
    against: &[&str],
    items: &[&str],
    threshold: f64,
) -> Result<Vec<Decision>> {
    check_threshold(threshold)?;
    let mut vocab = Vocab::new();
    let mut kept: Vec<(Similar, Vec<u32>)> = against
        .iter()
        .enumerate()
        .map(|(i, s)| (Similar::Against(i), vocab.encode(s)))
        .collect();
    let mut out = Vec::with_capacity(items.len());
    for (i, s) in items.iter().enumerate() {
        let q = vocab.encode(s);
        let p = LcsPattern::new(&q);
        let mut best: Option<(Similar, f64)> = None;
        for (who, k) in &kept {
            let f = fmeasure(p.lcs(k), q.len(), k.len());
            if f > threshold && best.is_none_or(|(_, bf)| f > bf) {
                best = Some((*who, f));
            }
        }
        if best.is_none() {
            kept.push((Similar::Input(i), q));
        }
        out.push(Decision {
            kept: best.is_none(),
            best,
        });
    }
    Ok(out)
}

/// Alpaca's filter one instruction at a time, for the generator: the kept set grows as
/// instructions arrive, so elements are ordered by first sight (any fixed order is sound).
#[derive(Debug)]
pub struct SimilarityFilter {
    threshold: f64,
    vocab: Vocab,
    elem_id: HashMap<(u32, u32), u32>,
    docs: Vec<Doc>,
    postings: HashMap<u32, Vec<Posting>>,
    amin: Vec<Option<usize>>,
}

impl SimilarityFilter {
    pub fn new(threshold: f64) -> Result<Self> {
        check_threshold(threshold)?;
        Ok(Self {
            threshold,
            vocab: Vocab::new(),
            elem_id: HashMap::new(),
            docs: Vec::new(),
            postings: HashMap::new(),
            amin: Vec::new(),
        })
    }

    /// Number of kept texts.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    fn doc(&mut self, text: &str) -> Doc {
        let toks = self.vocab.encode(text);
        let mut occ: HashMap<u32, u32> = HashMap::new();
        let mut elems: Vec<u32> = toks
            .iter()
            .map(|&tok| {
                let k = occ.entry(tok).or_insert(0);
                *k += 1;
                let next = self.elem_id.len() as u32;
                *self.elem_id.entry((tok, *k)).or_insert(next)
            })
            .collect();
        elems.sort_unstable();
        let n = toks.len();
        while self.amin.len() <= n {
            let len = self.amin.len();
            self.amin.push(alpha_min(self.threshold, len));
        }
        let prefix = self.amin[n].map_or(0, |a| n + 1 - a.min(n));
        Doc {
            toks,
            elems,
            prefix,
        }
    }

    /// The kept text most similar to `text` with F above the threshold (index in insertion order,
    /// F), ties to the earliest; `None` when `text` would be kept.
    pub fn best_match(&mut self, text: &str) -> Option<(usize, f64)> {
        let q = self.doc(text);
        let postings = &self.postings;
        let cands = probe(
            self.threshold,
            &self.docs,
            &q,
            |e| postings.get(&e).map_or(&[][..], Vec::as_slice),
            |_| true,
        );
        best_among(self.threshold, &self.docs, &q, &cands).map(|(c, f)| (c as usize, f))
    }

    /// Adds `text` to the kept set; returns its index.
    pub fn insert(&mut self, text: &str) -> usize {
        let d = self.doc(text);
        let g = self.docs.len() as u32;
        for (j, &e) in d.elems[..d.prefix].iter().enumerate() {
            self.postings.entry(e).or_default().push((g, j as u32));
        }
        self.docs.push(d);
        g as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rouge::rouge_l;
    use rand::{Rng, SeedableRng, seq::IndexedRandom};
    use rand_chacha::ChaCha8Rng;

    /// Random instructions from a small vocabulary, many of them edits of earlier ones.
    fn corpus(rng: &mut ChaCha8Rng, n: usize) -> Vec<String> {
        let words: Vec<&str> = "give write list explain the a of to and in story poem three tips \
            for staying healthy describe summary email Classify, sentence! 2 numbers sort"
            .split(' ')
            .collect();
        let mut out: Vec<String> = Vec::new();
        for _ in 0..n {
            if !out.is_empty() && rng.random_bool(0.5) {
                let base = out.choose(rng).expect("non-empty");
                let mut toks: Vec<String> = base.split(' ').map(str::to_owned).collect();
                for _ in 0..rng.random_range(0..3) {
                    let w = (*words.choose(rng).expect("words")).to_owned();
                    match rng.random_range(0..3) {
                        0 if toks.len() > 1 => {
                            let i = rng.random_range(0..toks.len());
                            toks.remove(i);
                        }
                        1 => {
                            let i = rng.random_range(0..=toks.len());
                            toks.insert(i, w);
                        }
                        _ => {
                            let i = rng.random_range(0..toks.len());
                            toks[i] = w;
                        }
                    }
                }
                out.push(toks.join(" "));
            } else {
                let len = rng.random_range(0..25);
                let s: Vec<&str> = (0..len).map(|_| *words.choose(rng).expect("w")).collect();
                out.push(s.join(" "));
            }
        }
        out
    }

    /// Brute force on the text-level `rouge_l` (its own tokenisation, LCS per pair).
    fn reference(against: &[&str], items: &[&str], t: f64) -> Vec<Decision> {
        let mut kept: Vec<(Similar, &str)> = against
            .iter()
            .enumerate()
            .map(|(i, s)| (Similar::Against(i), *s))
            .collect();
        items
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut best: Option<(Similar, f64)> = None;
                for (w, k) in &kept {
                    let f = rouge_l(s, k);
                    if f > t && best.is_none_or(|(_, bf)| f > bf) {
                        best = Some((*w, f));
                    }
                }
                if best.is_none() {
                    kept.push((Similar::Input(i), s));
                }
                Decision {
                    kept: best.is_none(),
                    best,
                }
            })
            .collect()
    }

    #[test]
    fn decisions_equal_brute_force() {
        for seed in 0..3u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let texts = corpus(&mut rng, 450);
            let (against, items) = texts.split_at(60);
            let against: Vec<&str> = against.iter().map(String::as_str).collect();
            let items: Vec<&str> = items.iter().map(String::as_str).collect();
            for t in [0.7, 0.5, 0.9, 0.0, 1.0] {
                let want = reference(&against, &items, t);
                let dropped = want.iter().filter(|d| !d.kept).count();
                if t == 0.7 {
                    assert!(dropped > 60 && dropped < 390, "{dropped}");
                }
                assert_eq!(
                    dedup(&against, &items, t, None).expect("dedup"),
                    want,
                    "t={t}"
                );
                assert_eq!(dedup_brute_force(&against, &items, t).expect("bf"), want);
                let mut f = SimilarityFilter::new(t).expect("filter");
                for s in &against {
                    f.insert(s);
                }
                let mut kept_ix: Vec<Similar> = (0..against.len()).map(Similar::Against).collect();
                for (i, s) in items.iter().enumerate() {
                    let got = f.best_match(s).map(|(k, sc)| (kept_ix[k], sc));
                    assert_eq!(got, want[i].best, "incremental, item {i}, t={t}");
                    if got.is_none() {
                        f.insert(s);
                        kept_ix.push(Similar::Input(i));
                    }
                }
            }
        }
    }

    #[test]
    fn alpha_is_the_least_lcs_above_threshold() {
        for t in [0.0, 0.3, 0.5, 0.7, 0.75, 0.9, 1.0] {
            for m in 0..40 {
                for n in 0..40 {
                    let want = (0..=m.min(n)).find(|&l| m > 0 && n > 0 && fmeasure(l, n, m) > t);
                    assert_eq!(alpha(t, m, n), want, "t={t} m={m} n={n}");
                }
            }
        }
    }

    #[test]
    fn bad_threshold_is_an_error() {
        assert!(dedup(&[], &["a"], 1.5, None).is_err());
        assert!(dedup(&[], &["a"], f64::NAN, None).is_err());
        assert!(SimilarityFilter::new(-0.1).is_err());
    }
}
