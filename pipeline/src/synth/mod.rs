//! Synthetic corpora in the real published formats (`koala synth`).
//!
//! [`synth`] writes the seven sources in exactly the layout and formats that
//! [`crate::sources::load_dir`] reads (see `docs/sources.md`), at these scales:
//!
//! | source | `small` | `koala` (the Koala blog's sizes) | `Nx` |
//! |---|---|---|---|
//! | ShareGPT conversations | 600 | 60,000 | N × 60,000 |
//! | HC3 questions | 240 | 24,000 | N × 24,000 |
//! | OIG rows | 300 | 30,000 | N × 30,000 |
//! | Alpaca rows | 520 | 52,000 | N × 52,000 |
//! | HH pairs | 1,600 | 160,000 | N × 160,000 |
//! | WebGPT comparisons | 200 | 20,000 | N × 20,000 |
//! | summarize comparisons | 930 | 93,000 | N × 93,000 |
//!
//! (`tiny` is 1/2000 of `koala`; `Nx` takes N from 1 to [`MAX_MULTIPLIER`], and `1x` is `koala`.)
//!
//! The text is seeded word salad with realistic lengths (log-normal, long right tail) and the
//! features curation has to deal with: about 40% of ShareGPT conversations repeat an earlier
//! user query (a quarter of those with case or spacing changes), about 10% of records are not
//! English (Spanish, French, German, Portuguese, Russian, Chinese, Japanese, Korean), ShareGPT
//! answers are the page's HTML (with "Copy code" buttons on code blocks) and some mention
//! OpenAI/ChatGPT (Koala's keyword filter drops those). The Koala scale is about 1 GB decoded.
//! These shares do not depend on the scale: the pool of ShareGPT queries that duplicates repeat
//! grows with the number of conversations, and every other record is drawn independently.
//!
//! Every record is generated from `(seed, source, index)` alone, so generation is parallel
//! (rayon, in chunks written in order) and the output is byte-identical for a given seed.
//! Files are streamed: at most [`BATCH`] chunks of [`CHUNK`] records are held in memory at once,
//! whatever the scale.
//!
//! # Example
//! ```
//! use koala_pipeline::synth::{synth, Scale, SynthOptions};
//! let dir = tempfile::tempdir().unwrap();
//! let report = synth(dir.path(), &SynthOptions { scale: Scale::Tiny, seed: 7 }).unwrap();
//! assert_eq!(report.files.len(), 27);
//! let loaded = koala_pipeline::sources::load_dir(dir.path(), &Default::default()).unwrap();
//! assert_eq!(loaded.totals().records_quarantined, 0);
//! assert_eq!("10x".parse::<Scale>().unwrap().counts().sharegpt, 600_000);
//! ```
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};

pub mod text;

use text::{Gen, Lang};

/// How big a corpus to write.
///
/// Parsed from and written as `tiny`, `small`, `koala` or `Nx` (`10x`); the report JSON prints
/// the same string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// A few dozen records per source (doc tests).
    Tiny,
    /// 1/100 of the Koala sizes: a few thousand rows, for tests.
    Small,
    /// The Koala blog's sizes.
    Koala,
    /// N times the Koala sizes, N from 2 to [`MAX_MULTIPLIER`] (`"1x"` parses as
    /// [`Scale::Koala`], and `Times(1)` writes exactly what `Koala` writes).
    Times(u32),
}

/// The largest `N` of `--scale Nx`.
pub const MAX_MULTIPLIER: u32 = 1000;

/// The accepted spellings of a scale, for error messages.
const ACCEPTED: &str = concat!(
    "accepted: tiny, small, koala, or Nx for N times the Koala sizes, ",
    "N a whole number from 1 to 1000 (1x = koala; e.g. 10x)"
);

impl FromStr for Scale {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "tiny" => return Ok(Scale::Tiny),
            "small" => return Ok(Scale::Small),
            "koala" => return Ok(Scale::Koala),
            _ => {}
        }
        let Some(n) = s.strip_suffix('x') else {
            return Err(format!("unknown scale {s:?}; {ACCEPTED}"));
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "bad scale {s:?}: the multiplier before `x` must be a whole number; {ACCEPTED}"
            ));
        }
        match n.parse::<u32>() {
            Ok(1) => Ok(Scale::Koala),
            Ok(n) if (2..=MAX_MULTIPLIER).contains(&n) => Ok(Scale::Times(n)),
            _ => Err(format!(
                "bad scale {s:?}: the multiplier must be from 1 to {MAX_MULTIPLIER}; {ACCEPTED}"
            )),
        }
    }
}

impl std::fmt::Display for Scale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scale::Tiny => f.write_str("tiny"),
            Scale::Small => f.write_str("small"),
            Scale::Koala | Scale::Times(1) => f.write_str("koala"),
            Scale::Times(n) => write!(f, "{n}x"),
        }
    }
}

impl Serialize for Scale {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Record counts per source at one scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub sharegpt: u64,
    pub hc3: u64,
    pub oig: u64,
    pub alpaca: u64,
    pub hh: u64,
    pub webgpt: u64,
    pub summarize: u64,
}

impl Counts {
    /// Every count times `k`.
    pub fn times(self, k: u64) -> Counts {
        Counts {
            sharegpt: self.sharegpt * k,
            hc3: self.hc3 * k,
            oig: self.oig * k,
            alpaca: self.alpaca * k,
            hh: self.hh * k,
            webgpt: self.webgpt * k,
            summarize: self.summarize * k,
        }
    }

    /// All records.
    pub fn total(self) -> u64 {
        self.sharegpt + self.hc3 + self.oig + self.alpaca + self.hh + self.webgpt + self.summarize
    }
}

impl Scale {
    /// The number of records of each source.
    pub fn counts(self) -> Counts {
        let koala = Counts {
            sharegpt: 60_000,
            hc3: 24_000,
            oig: 30_000,
            alpaca: 52_000,
            hh: 160_000,
            webgpt: 20_000,
            summarize: 93_000,
        };
        let div = match self {
            Scale::Tiny => 2000,
            Scale::Small => 100,
            Scale::Koala => 1,
            Scale::Times(n) => return koala.times(u64::from(n)),
        };
        Counts {
            sharegpt: koala.sharegpt / div,
            hc3: koala.hc3 / div,
            oig: koala.oig / div,
            alpaca: koala.alpaca / div,
            hh: koala.hh / div,
            webgpt: koala.webgpt / div,
            summarize: koala.summarize / div,
        }
    }

    /// An error for a `Times(n)` outside `1..=MAX_MULTIPLIER` (which [`FromStr`] never gives).
    fn check(self) -> Result<()> {
        match self {
            Scale::Times(n) if !(1..=MAX_MULTIPLIER).contains(&n) => Err(Error::Config(format!(
                "synth scale {n}x: the multiplier must be from 1 to {MAX_MULTIPLIER}"
            ))),
            _ => Ok(()),
        }
    }

    /// How ShareGPT ids are made: `tiny`, `small` and `koala` keep the random ids they always
    /// had (so their files do not change); `Nx` with N ≥ 2 uses ids unique by construction.
    fn sharegpt_ids(self) -> SgIds {
        match self {
            Scale::Times(n) if n > 1 => SgIds::Unique,
            _ => SgIds::Drawn,
        }
    }
}

/// Options of [`synth`].
#[derive(Clone, Copy, Debug)]
pub struct SynthOptions {
    pub scale: Scale,
    pub seed: u64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            scale: Scale::Small,
            seed: 0,
        }
    }
}

/// One written file.
#[derive(Clone, Debug, Serialize)]
pub struct SynthFile {
    pub source: String,
    /// Relative to the output directory.
    pub file: String,
    pub records: u64,
    /// Bytes before compression.
    pub decoded_bytes: u64,
    /// Bytes on disk.
    pub disk_bytes: u64,
}

/// What [`synth`] wrote.
#[derive(Clone, Debug, Serialize)]
pub struct SynthReport {
    pub scale: Scale,
    pub seed: u64,
    pub files: Vec<SynthFile>,
    pub seconds: f64,
}

impl SynthReport {
    pub fn decoded_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.decoded_bytes).sum()
    }
    pub fn disk_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.disk_bytes).sum()
    }
}

/// Share of non-English records.
const NON_ENGLISH: f64 = 0.10;
/// Share of ShareGPT conversations whose first query repeats another conversation's.
const DUPLICATE_QUERIES: f64 = 0.40;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    List,
    Lines,
    GzLines,
}

/// Writes a corpus of the given scale into `out` (created if missing).
pub fn synth(out: &Path, opts: &SynthOptions) -> Result<SynthReport> {
    opts.scale.check()?;
    write_corpus(
        out,
        opts.scale,
        opts.scale.counts(),
        opts.seed,
        opts.scale.sharegpt_ids(),
    )
}

/// [`synth`] with explicit counts and ShareGPT id scheme (`scale` is only reported).
fn write_corpus(out: &Path, scale: Scale, c: Counts, seed: u64, ids: SgIds) -> Result<SynthReport> {
    let start = Instant::now();
    let mut files = Vec::new();

    // ShareGPT: two parts, like sg_90k_part1/part2.
    let half = c.sharegpt / 2;
    for (k, (lo, hi)) in [(0, half), (half, c.sharegpt)].into_iter().enumerate() {
        files.push(write_file(
            out,
            "sharegpt",
            &format!("sharegpt/sg_90k_part{}.json", k + 1),
            Layout::List,
            lo..hi,
            |i, buf| sharegpt(seed, i, c.sharegpt, ids, buf),
        )?);
    }
    files.push(write_file(
        out,
        "hc3",
        "hc3/all.jsonl",
        Layout::Lines,
        0..c.hc3,
        |i, buf| hc3(seed, i, buf),
    )?);
    let oig_parts: [(&str, u64); 4] = [
        ("grade_school_math_instructions", 10),
        ("poetry_2_song", 8),
        ("plot_screenplay_books_dialog", 8),
        ("hc3_human", 4),
    ];
    let mut lo = 0;
    for (k, (subset, share)) in oig_parts.iter().enumerate() {
        let hi = if k + 1 == oig_parts.len() {
            c.oig
        } else {
            lo + c.oig * share / 30
        };
        files.push(write_file(
            out,
            "oig",
            &format!("oig/unified_{subset}.jsonl"),
            Layout::Lines,
            lo..hi,
            |i, buf| oig(seed, i, k, buf),
        )?);
        lo = hi;
    }
    files.push(write_file(
        out,
        "alpaca",
        "alpaca/alpaca_data.json",
        Layout::List,
        0..c.alpaca,
        |i, buf| alpaca(seed, i, buf),
    )?);
    // HH: the four published subsets, ~95% train / 5% test each.
    let hh_parts: [(&str, u64); 4] = [
        ("helpful-base", 27),
        ("harmless-base", 26),
        ("helpful-online", 14),
        ("helpful-rejection-sampled", 33),
    ];
    let mut lo = 0;
    for (k, (subset, share)) in hh_parts.iter().enumerate() {
        let hi = if k + 1 == hh_parts.len() {
            c.hh
        } else {
            lo + c.hh * share / 100
        };
        let cut = lo + (hi - lo) * 95 / 100;
        for (split, range) in [("train", lo..cut), ("test", cut..hi)] {
            files.push(write_file(
                out,
                "hh",
                &format!("hh/{subset}/{split}.jsonl.gz"),
                Layout::GzLines,
                range,
                |i, buf| hh(seed, i, buf),
            )?);
        }
        lo = hi;
    }
    files.push(write_file(
        out,
        "webgpt",
        "webgpt/comparisons.jsonl",
        Layout::Lines,
        0..c.webgpt,
        |i, buf| webgpt(seed, i, buf),
    )?);
    // summarize: batch files like comparisons/batch3.json … batch12.json (JSON lines).
    let batches = 10u64;
    for b in 0..batches {
        let lo = c.summarize * b / batches;
        let hi = c.summarize * (b + 1) / batches;
        files.push(write_file(
            out,
            "summarize",
            &format!("summarize/comparisons/batch{}.json", b + 3),
            Layout::Lines,
            lo..hi,
            |i, buf| summarize(seed, i, buf),
        )?);
    }
    Ok(SynthReport {
        scale,
        seed,
        files,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Records per parallel work item (and per gzip member).
pub const CHUNK: u64 = 512;
/// Work items generated (in parallel) before they are written in order: the most records
/// [`synth`] holds in memory is `BATCH * CHUNK`, at any scale.
pub const BATCH: usize = 32;

fn write_file<F>(
    out: &Path,
    source: &str,
    rel: &str,
    layout: Layout,
    range: std::ops::Range<u64>,
    gen_record: F,
) -> Result<SynthFile>
where
    F: Fn(u64, &mut Vec<u8>) + Sync,
{
    let path = out.join(rel);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let io = |e| Error::io(&path, e);
    let (first, end) = (range.start, range.end);
    let chunks: Vec<(u64, u64)> = (first..end)
        .step_by(CHUNK as usize)
        .map(|lo| (lo, (lo + CHUNK).min(end)))
        .collect();
    let mut decoded = 0u64;
    let mut disk = 0u64;
    if layout == Layout::List {
        w.write_all(b"[\n").map_err(io)?;
        decoded += 2;
    }
    for batch in chunks.chunks(BATCH) {
        let parts: Vec<(u64, Vec<u8>)> = batch
            .par_iter()
            .map(|&(lo, hi)| -> std::io::Result<(u64, Vec<u8>)> {
                let mut buf = Vec::with_capacity(((hi - lo) * 2048) as usize);
                for i in lo..hi {
                    if layout == Layout::List && i != first {
                        buf.extend_from_slice(b",\n");
                    }
                    gen_record(i, &mut buf);
                    if layout != Layout::List {
                        buf.push(b'\n');
                    }
                }
                let n = buf.len() as u64;
                if layout == Layout::GzLines {
                    // One gzip member per chunk: compressed in parallel, and a valid
                    // multi-member gzip file when concatenated.
                    let mut gz = flate2::write::GzEncoder::new(
                        Vec::with_capacity(buf.len() / 3),
                        flate2::Compression::fast(),
                    );
                    gz.write_all(&buf)?;
                    buf = gz.finish()?;
                }
                Ok((n, buf))
            })
            .collect::<std::io::Result<_>>()
            .map_err(io)?;
        for (n, bytes) in parts {
            decoded += n;
            disk += bytes.len() as u64;
            w.write_all(&bytes).map_err(io)?;
        }
    }
    if layout == Layout::List {
        w.write_all(b"\n]\n").map_err(io)?;
        decoded += 3;
    }
    w.flush().map_err(io)?;
    if layout != Layout::GzLines {
        disk = decoded;
    }
    Ok(SynthFile {
        source: source.into(),
        file: rel.into(),
        records: end - first,
        decoded_bytes: decoded,
        disk_bytes: disk,
    })
}

fn push_json<T: Serialize>(buf: &mut Vec<u8>, v: &T) {
    // Serialising plain structs of strings and numbers into a Vec cannot fail.
    if let Err(e) = serde_json::to_writer(&mut *buf, v) {
        tracing::error!("synth: serialising a record failed: {e}");
    }
}

// ------------------------------------------------------------------ ShareGPT

#[derive(Serialize)]
struct SgTurn {
    from: &'static str,
    value: String,
}

#[derive(Serialize)]
struct Sg {
    id: String,
    conversations: Vec<SgTurn>,
}

/// The first user query of "query slot" `q`: a pure function of (seed, q), so duplicates are
/// the same text wherever they appear.
fn sharegpt_query(seed: u64, q: u64) -> (String, Lang) {
    let mut g = Gen::new(seed, "sharegpt-query", q);
    let lang = g.lang(NON_ENGLISH);
    let words = g.length(14.0, 0.8, 3, 400);
    let mut s = g.question(lang, words);
    if g.chance(0.15) {
        // A pasted snippet or text to work on.
        s.push_str("\n\n");
        if g.chance(0.5) {
            let lines = g.range(3, 20);
            s.push_str(&g.code(lines));
        } else {
            let n = g.length(120.0, 0.6, 20, 1500);
            s.push_str(&g.prose(lang, n));
        }
    }
    (s, lang)
}

/// The number of distinct first-query slots among `n` ShareGPT conversations.
fn sharegpt_originals(n: u64) -> u64 {
    ((n as f64) * (1.0 - DUPLICATE_QUERIES)).ceil().max(1.0) as u64
}

/// The query slot of conversation `i` of `n`, and whether it repeats another's.
///
/// A bijection of positions spreads the originals and the duplicates over the file: position
/// i maps to k; the first 60% of k are originals (query slot k), the rest repeat a slot drawn
/// from all the originals. The pool is 60% of `n` at any scale, so the duplicate share is the
/// same at `koala` and at `1000x`.
fn sharegpt_slot(seed: u64, i: u64, n: u64) -> (u64, bool) {
    let originals = sharegpt_originals(n);
    let k = permute(i, n);
    if k < originals {
        (k, false)
    } else {
        (
            xxhash_rust::xxh3::xxh3_64_with_seed(&k.to_le_bytes(), seed) % originals,
            true,
        )
    }
}

/// How ShareGPT conversation ids (`{7 alphanumerics}_{0..12}`) are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SgIds {
    /// Seven random characters (the `tiny`, `small` and `koala` files): unique in practice up
    /// to a few million conversations, but not by construction.
    Drawn,
    /// Seven characters that are a seeded bijection of the conversation's index, so no two
    /// conversations share an id at any scale (`Nx`, N ≥ 2).
    Unique,
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// 62^7: the number of 7-character alphanumeric stems.
const STEMS: u64 = 3_521_614_606_208;

/// The id stem of conversation `i` under [`SgIds::Unique`]: a seeded permutation of `0..STEMS`
/// (a bijective mix of 42-bit words, cycle-walked into range) written in base 62.
fn unique_stem(seed: u64, i: u64) -> String {
    debug_assert!(i < STEMS);
    const MASK: u64 = (1 << 42) - 1;
    let key = xxhash_rust::xxh3::xxh3_64_with_seed(b"sharegpt-id", seed);
    let mix = |mut x: u64| {
        for r in 0..3 {
            // Each step is a bijection of 42-bit words: xor with a constant, multiply by an
            // odd number modulo 2^42, xor with a right shift of itself.
            x ^= (key >> (r * 11)) & MASK;
            x = x.wrapping_mul(0x2545_F491_4F6C_DD1D | 1) & MASK;
            x ^= x >> 21;
        }
        x
    };
    let mut x = mix(i % STEMS);
    while x >= STEMS {
        x = mix(x);
    }
    let mut stem = [0u8; 7];
    for c in stem.iter_mut().rev() {
        *c = ALNUM[(x % 62) as usize];
        x /= 62;
    }
    stem.iter().map(|&b| b as char).collect()
}

fn sharegpt(seed: u64, i: u64, n: u64, ids: SgIds, buf: &mut Vec<u8>) {
    let mut g = Gen::new(seed, "sharegpt", i);
    let (slot, duplicate) = sharegpt_slot(seed, i, n);
    let (mut first, lang) = sharegpt_query(seed, slot);
    if duplicate && g.chance(0.25) {
        first = match g.range(0, 2) {
            0 => first.to_lowercase(),
            1 => format!("  {first} "),
            _ => format!("{first}\n"),
        };
    }
    let rounds = g.length(2.5, 0.7, 1, 24);
    let mut turns = Vec::with_capacity(rounds * 2 + 1);
    if g.chance(0.02) {
        turns.push(SgTurn {
            from: "system",
            value: "You are ChatGPT, a large language model trained by OpenAI.".into(),
        });
    }
    for r in 0..rounds {
        let user = if r == 0 {
            std::mem::take(&mut first)
        } else {
            let w = g.length(12.0, 0.8, 2, 300);
            g.question(lang, w)
        };
        turns.push(SgTurn {
            from: "human",
            value: user,
        });
        turns.push(SgTurn {
            from: "gpt",
            value: sharegpt_answer(&mut g, lang),
        });
    }
    let drawn = g.alnum(7);
    let stem = match ids {
        SgIds::Drawn => drawn,
        SgIds::Unique => unique_stem(seed, i),
    };
    let id = format!("{stem}_{}", g.range(0, 12));
    push_json(
        buf,
        &Sg {
            id,
            conversations: turns,
        },
    );
}

fn sharegpt_answer(g: &mut Gen, lang: Lang) -> String {
    let words = g.length(180.0, 0.7, 5, 3000);
    let html = g.chance(0.8);
    let mut s = String::with_capacity(words * 9);
    if g.chance(0.05) {
        s.push_str("As an AI language model developed by OpenAI, I can help with that. ");
    }
    if !html {
        s.push_str(&g.prose(lang, words));
        return s;
    }
    s.push_str(r#"<div class="markdown prose w-full break-words dark:prose-invert light">"#);
    let mut left = words;
    while left > 0 {
        let n = g.range(20, 80).min(left.max(5));
        match g.range(0, 5) {
            0 => {
                s.push_str("<ol>");
                for _ in 0..g.range(2, 5) {
                    let _ = write!(s, "<li><p>{}</p></li>", g.prose(lang, n / 3 + 2));
                }
                s.push_str("</ol>");
            }
            1 if g.chance(0.5) => {
                let lang_name = *g.pick(&["python", "javascript", "bash", "sql", "rust"]);
                let lines = g.range(3, 25);
                let code = g.code(lines);
                let _ = write!(
                    s,
                    r#"<pre><div class="bg-black mb-4 rounded-md"><div class="flex items-center relative text-gray-200 bg-gray-800 px-4 py-2 text-xs font-sans"><span class="">{lang_name}</span><button class="flex ml-auto gap-2">Copy code</button></div><div class="p-4 overflow-y-auto"><code class="!whitespace-pre hljs language-{lang_name}">{}</code></div></div></pre>"#,
                    code.replace('<', "&lt;").replace('>', "&gt;")
                );
            }
            _ => {
                let _ = write!(s, "<p>{}</p>", g.prose(lang, n));
            }
        }
        left = left.saturating_sub(n);
    }
    s.push_str("</div>");
    s
}

/// A bijection of `0..n` (an affine map with a multiplier coprime to `n`).
fn permute(i: u64, n: u64) -> u64 {
    if n <= 1 {
        return 0;
    }
    let mut a = 0x9E37_79B9_7F4A_7C15u64 % n;
    while gcd(a, n) != 1 {
        a = (a + 1) % n;
    }
    ((i as u128 * a as u128 + 12345) % n as u128) as u64
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

// ------------------------------------------------------------------ HC3

#[derive(Serialize)]
struct Hc3 {
    id: String,
    question: String,
    human_answers: Vec<String>,
    chatgpt_answers: Vec<String>,
    source: &'static str,
}

fn hc3(seed: u64, i: u64, buf: &mut Vec<u8>) {
    let mut g = Gen::new(seed, "hc3", i);
    let lang = g.lang(NON_ENGLISH / 2.0);
    let source = *g.pick(&["reddit_eli5", "open_qa", "wiki_csai", "finance", "medicine"]);
    let qw = g.length(14.0, 0.5, 4, 80);
    let mut question = g.question(lang, qw);
    if source == "reddit_eli5" {
        question = question.replace('?', " ?");
    }
    let nh = g.length(2.2, 0.5, 1, 8);
    let human = (0..nh)
        .map(|_| {
            let w = g.length(90.0, 0.7, 5, 1500);
            let t = g.prose(lang, w);
            if source == "reddit_eli5" {
                t.replace(". ", " . ").replace(", ", " , ")
            } else {
                t
            }
        })
        .collect();
    let nc = if g.chance(0.1) { 0 } else { g.range(1, 1) };
    let chatgpt = (0..nc)
        .map(|_| {
            let w = g.length(140.0, 0.4, 20, 600);
            g.prose(lang, w)
        })
        .collect();
    push_json(
        buf,
        &Hc3 {
            id: i.to_string(),
            question,
            human_answers: human,
            chatgpt_answers: chatgpt,
            source,
        },
    );
}

// ------------------------------------------------------------------ OIG

#[derive(Serialize)]
struct OigMeta {
    source: &'static str,
}

#[derive(Serialize)]
struct Oig {
    text: String,
    metadata: OigMeta,
}

fn oig(seed: u64, i: u64, subset: usize, buf: &mut Vec<u8>) {
    let mut g = Gen::new(seed, "oig", i);
    let lang = g.lang(NON_ENGLISH / 2.0);
    let rounds = g.length(1.3, 0.5, 1, 6);
    let mut text = String::new();
    for r in 0..rounds {
        if r > 0 {
            text.push('\n');
        }
        let _ = write!(text, "<human>: ");
        match subset {
            0 => {
                let (a, b) = (g.range(2, 500), g.range(2, 60));
                let w = g.length(25.0, 0.4, 8, 120);
                let _ = write!(
                    text,
                    "{} {a} {} {b}. {}\n<bot>: ",
                    g.prose(lang, w),
                    g.pick(&["apples and", "dollars and", "hours and", "books and"]),
                    g.question(lang, 6)
                );
                for _ in 0..g.range(2, 6) {
                    let (x, y) = (g.range(1, 200), g.range(1, 50));
                    let _ = writeln!(text, "{} {x} * {y} = {}.", g.prose(lang, 6), x * y);
                }
                let _ = write!(text, "The answer is {}.", a + b);
            }
            1 => {
                let _ = writeln!(text, "Can you turn this poem into song lyrics?");
                for _ in 0..g.range(4, 12) {
                    let w = g.range(4, 9);
                    let _ = writeln!(text, "{}", g.prose(lang, w).trim_end_matches('.'));
                }
                let _ = writeln!(text, "<bot>: Verse 1:");
                for _ in 0..g.range(6, 20) {
                    let w = g.range(4, 9);
                    let _ = writeln!(text, "{}", g.prose(lang, w).trim_end_matches('.'));
                }
            }
            2 => {
                let w = g.length(20.0, 0.4, 6, 60);
                let _ = write!(
                    text,
                    "Write a screenplay scene: {}\n<bot>: ",
                    g.prose(lang, w)
                );
                let _ = write!(
                    text,
                    "INT. {} - NIGHT\n\n",
                    g.pick(&["KITCHEN", "LIGHTHOUSE", "OFFICE", "TRAIN"])
                );
                for _ in 0..g.range(4, 14) {
                    let name = *g.pick(&["MARGARET", "STRANGER", "TOM", "ANNA", "DETECTIVE"]);
                    let w = g.range(5, 30);
                    let _ = write!(text, "{name}\n{}\n\n", g.prose(lang, w));
                }
            }
            _ => {
                let w = g.length(12.0, 0.4, 4, 40);
                let q = g.question(lang, w).replace('?', " ?");
                let w = g.length(90.0, 0.6, 10, 800);
                let _ = write!(
                    text,
                    "{q}\n<bot>: {}",
                    g.prose(lang, w).replace(". ", " . ")
                );
            }
        }
    }
    let source = [
        "grade_school_math_instructions",
        "poetry_2_song",
        "plot_screenplay_books_dialog",
        "hc3_human",
    ][subset];
    push_json(
        buf,
        &Oig {
            text,
            metadata: OigMeta { source },
        },
    );
}

// ------------------------------------------------------------------ Alpaca

#[derive(Serialize)]
struct Alpaca {
    instruction: String,
    input: String,
    output: String,
}

fn alpaca(seed: u64, i: u64, buf: &mut Vec<u8>) {
    let mut g = Gen::new(seed, "alpaca", i);
    let lang = g.lang(NON_ENGLISH / 3.0);
    let verb = *g.pick(&[
        "Explain",
        "Describe",
        "Rewrite",
        "Summarize",
        "Classify",
        "Generate",
        "List",
        "Translate",
        "Identify",
        "Create",
    ]);
    let w = g.length(9.0, 0.4, 3, 40);
    let instruction = format!("{verb} {}", g.prose(lang, w).to_lowercase());
    let input = if g.chance(0.4) {
        let w = g.length(18.0, 0.6, 2, 200);
        g.prose(lang, w)
    } else {
        String::new()
    };
    let w = g.length(45.0, 0.8, 1, 600);
    let output = g.prose(lang, w);
    push_json(
        buf,
        &Alpaca {
            instruction,
            input,
            output,
        },
    );
}

// ------------------------------------------------------------------ HH

#[derive(Serialize)]
struct Hh {
    chosen: String,
    rejected: String,
}

fn hh(seed: u64, i: u64, buf: &mut Vec<u8>) {
    let mut g = Gen::new(seed, "hh", i);
    let lang = g.lang(NON_ENGLISH / 3.0);
    let rounds = g.length(2.0, 0.6, 1, 8);
    let mut shared = String::new();
    for r in 0..rounds {
        let w = g.length(11.0, 0.6, 2, 80);
        let _ = write!(shared, "\n\nHuman: {}", g.question(lang, w));
        if r + 1 < rounds {
            let w = g.length(35.0, 0.8, 1, 200);
            let _ = write!(shared, "\n\nAssistant: {}", g.prose(lang, w));
        }
    }
    let w = g.length(40.0, 0.8, 1, 250);
    let chosen = format!("{shared}\n\nAssistant: {}", g.prose(lang, w));
    let w = g.length(30.0, 0.9, 1, 250);
    let rejected = if g.chance(0.02) {
        format!("{shared}\n\nAssistant:")
    } else {
        format!("{shared}\n\nAssistant: {}", g.prose(lang, w))
    };
    push_json(buf, &Hh { chosen, rejected });
}

// ------------------------------------------------------------------ WebGPT

#[derive(Serialize)]
struct WgQuestion {
    dataset: &'static str,
    id: String,
    full_text: String,
}

#[derive(Serialize)]
struct WgQuotes {
    title: Vec<String>,
    extract: Vec<String>,
}

#[derive(Serialize)]
struct WebGpt {
    question: WgQuestion,
    quotes_0: WgQuotes,
    answer_0: String,
    tokens_0: Vec<u32>,
    score_0: f64,
    quotes_1: WgQuotes,
    answer_1: String,
    tokens_1: Vec<u32>,
    score_1: f64,
}

fn webgpt(seed: u64, i: u64, buf: &mut Vec<u8>) {
    let mut g = Gen::new(seed, "webgpt", i);
    let dataset = *g.pick(&["eli5", "eli5", "eli5", "trivia_qa", "arc_challenge"]);
    let w = g.length(14.0, 0.5, 4, 60);
    let question = WgQuestion {
        dataset,
        id: format!("{dataset}_{}", g.alnum(6).to_lowercase()),
        full_text: g.question(Lang::En, w),
    };
    let side = |g: &mut Gen| {
        let nq = g.range(0, 4);
        let mut quotes = WgQuotes {
            title: Vec::new(),
            extract: Vec::new(),
        };
        for _ in 0..nq {
            let w = g.range(3, 9);
            quotes.title.push(format!(
                "{} - Wikipedia",
                g.prose(Lang::En, w).trim_end_matches('.')
            ));
            let w = g.length(110.0, 0.5, 20, 500);
            quotes.extract.push(g.prose(Lang::En, w));
        }
        let w = g.length(110.0, 0.5, 5, 400);
        let mut answer = g.prose(Lang::En, w);
        for k in 0..nq {
            let _ = write!(answer, " [{}]", k + 1);
        }
        let tokens = (0..(w * 13 / 10))
            .map(|_| g.range(13, 50_000) as u32)
            .collect();
        (quotes, answer, tokens)
    };
    let (q0, a0, t0) = side(&mut g);
    let (q1, a1, t1) = side(&mut g);
    // Scores in {-1, -0.5, 0, 0.5, 1} with opposite signs, ~15% ties at 0.
    let s = if g.chance(0.15) {
        0.0
    } else {
        *g.pick(&[-1.0, -0.5, 0.5, 1.0])
    };
    push_json(
        buf,
        &WebGpt {
            question,
            quotes_0: q0,
            answer_0: a0,
            tokens_0: t0,
            score_0: s,
            quotes_1: q1,
            answer_1: a1,
            tokens_1: t1,
            score_1: -s,
        },
    );
}

// ------------------------------------------------------------------ summarize

#[derive(Serialize)]
struct SumInfo {
    id: String,
    post: String,
    title: String,
    subreddit: &'static str,
    site: Option<String>,
    article: Option<String>,
}

#[derive(Serialize)]
struct SumSummary {
    text: String,
    policy: &'static str,
    note: Option<String>,
}

#[derive(Serialize)]
struct SumExtra {
    confidence: u64,
}

#[derive(Serialize)]
struct Summarize {
    info: SumInfo,
    summaries: Vec<SumSummary>,
    choice: u64,
    worker: String,
    batch: String,
    split: &'static str,
    extra: SumExtra,
}

fn summarize(seed: u64, i: u64, buf: &mut Vec<u8>) {
    let mut g = Gen::new(seed, "summarize", i);
    let lang = g.lang(NON_ENGLISH / 3.0);
    let subreddit = *g.pick(&[
        "relationships",
        "AskReddit",
        "relationship_advice",
        "tifu",
        "personalfinance",
        "dating_advice",
        "legaladvice",
        "Advice",
        "pettyrevenge",
        "running",
    ]);
    let w = g.length(250.0, 0.4, 60, 600);
    let post = g.prose(lang, w);
    let w = g.range(5, 16);
    let title = g.prose(lang, w);
    let policies = ["ref", "sup2", "sup4_ppo_rm4_t.7", "pretrain_12b", "sup4"];
    let summaries = (0..2)
        .map(|_| {
            let w = g.length(28.0, 0.4, 3, 80);
            SumSummary {
                text: format!(" {}", g.prose(lang, w)),
                policy: policies[g.range(0, policies.len() - 1)],
                note: None,
            }
        })
        .collect();
    let split = if g.chance(0.08) { "valid1" } else { "train" };
    push_json(
        buf,
        &Summarize {
            info: SumInfo {
                id: format!("t3_{}", g.alnum(6).to_lowercase()),
                post,
                title,
                subreddit,
                site: None,
                article: None,
            },
            summaries,
            choice: g.range(0, 1) as u64,
            worker: format!("w_{:04}", g.range(0, 999)),
            batch: format!("batch{}", 3 + i % 10),
            split,
            extra: SumExtra {
                confidence: g.range(1, 9) as u64,
            },
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::from_dataframe;
    use crate::sources::{LoadOptions, load_dir};

    #[test]
    fn small_corpus_loads_clean_and_is_deterministic() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let opts = SynthOptions {
            scale: Scale::Small,
            seed: 3,
        };
        let ra = synth(a.path(), &opts).unwrap();
        synth(b.path(), &opts).unwrap();
        for f in &ra.files {
            let x = std::fs::read(a.path().join(&f.file)).unwrap();
            let y = std::fs::read(b.path().join(&f.file)).unwrap();
            assert!(x == y, "{} differs between runs", f.file);
        }
        let c = Scale::Small.counts();
        let out = load_dir(a.path(), &LoadOptions::default()).unwrap();
        out.check_reconciled().unwrap();
        let t = out.totals();
        assert_eq!(t.records_quarantined, 0, "{:?}", out.quarantine.first());
        assert_eq!(
            t.records_read,
            c.sharegpt + c.hc3 + c.oig + c.alpaca + c.hh + c.webgpt + c.summarize
        );
        let rows = from_dataframe(&out.table).unwrap();
        // ~40% of ShareGPT conversations repeat another's first query (after trimming and
        // lowercasing, as a dedup stage would compare them).
        let firsts: Vec<String> = rows
            .iter()
            .filter(|r| r.source == "sharegpt")
            .map(|r| {
                let u = r.turns.iter().find(|t| t.role == crate::schema::Role::User);
                u.map(|t| t.text.trim().to_lowercase()).unwrap_or_default()
            })
            .collect();
        let distinct: std::collections::HashSet<&String> = firsts.iter().collect();
        let dup = 1.0 - distinct.len() as f64 / firsts.len() as f64;
        assert!((0.33..0.45).contains(&dup), "duplicate share {dup}");
        // HTML in ShareGPT answers, and non-ASCII text in about a tenth of conversations.
        let sg: Vec<_> = rows.iter().filter(|r| r.source == "sharegpt").collect();
        assert!(
            sg.iter()
                .filter(|r| r.turns[r.turns.len() - 1].text.contains("<div"))
                .count()
                * 2
                > sg.len()
        );
        assert_non_ascii_share(&sg);
    }

    /// A hash of a written corpus: each file's name, then its bytes (gzip files decoded, so
    /// that the hash does not depend on the compression library's version).
    /// The share of ShareGPT conversations with non-ASCII user text (the non-English ones) is
    /// near `NON_ENGLISH`.
    fn assert_non_ascii_share(sg: &[&crate::schema::Conversation]) {
        let non_ascii = sg
            .iter()
            .filter(|r| {
                r.turns
                    .iter()
                    .any(|t| t.role == crate::schema::Role::User && !t.text.is_ascii())
            })
            .count() as f64
            / sg.len() as f64;
        assert!(
            (0.03..0.2).contains(&non_ascii),
            "non-ASCII share {non_ascii}"
        );
    }

    fn content_hash(dir: &Path, report: &SynthReport) -> u64 {
        use std::io::Read;
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for f in &report.files {
            h.update(f.file.as_bytes());
            h.update(&[0]);
            let raw = std::fs::read(dir.join(&f.file)).unwrap();
            if f.file.ends_with(".gz") {
                let mut d = Vec::new();
                flate2::read::MultiGzDecoder::new(&raw[..])
                    .read_to_end(&mut d)
                    .unwrap();
                h.update(&d);
            } else {
                h.update(&raw);
            }
        }
        h.digest()
    }

    #[test]
    fn tiny_and_small_files_unchanged() {
        // Hashes of the files written by the code before `Nx` scales existed (the same hash
        // function run on that code's output): the tiny/small/koala path must not change.
        for (scale, seed, want) in [
            (Scale::Tiny, 0, 0xeef5_4552_6fb9_7251u64),
            (Scale::Tiny, 3, 0x7099_cf48_cc71_e73f),
            (Scale::Small, 0, 0x6e77_2fec_aa73_9fb8),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let r = synth(dir.path(), &SynthOptions { scale, seed }).unwrap();
            assert_eq!(r.files.len(), 27);
            let got = content_hash(dir.path(), &r);
            assert_eq!(got, want, "{scale} seed {seed}: {got:#018x}");
        }
    }

    #[test]
    fn scale_parses_every_form() {
        let ok = [
            ("tiny", Scale::Tiny),
            ("small", Scale::Small),
            ("koala", Scale::Koala),
            ("1x", Scale::Koala),
            ("2x", Scale::Times(2)),
            ("10x", Scale::Times(10)),
            ("010x", Scale::Times(10)),
            ("1000x", Scale::Times(1000)),
        ];
        for (s, want) in ok {
            assert_eq!(s.parse::<Scale>(), Ok(want), "{s}");
        }
        let accepted = "accepted: tiny, small, koala, or Nx for N times the Koala sizes, N a \
                        whole number from 1 to 1000 (1x = koala; e.g. 10x)";
        let bad = [
            (
                "0x",
                "bad scale \"0x\": the multiplier must be from 1 to 1000",
            ),
            (
                "1001x",
                "bad scale \"1001x\": the multiplier must be from 1 to 1000",
            ),
            (
                "99999999999x",
                "bad scale \"99999999999x\": the multiplier must be from 1 to 1000",
            ),
            (
                "x",
                "bad scale \"x\": the multiplier before `x` must be a whole number",
            ),
            (
                "1.5x",
                "bad scale \"1.5x\": the multiplier before `x` must be a whole number",
            ),
            (
                "abcx",
                "bad scale \"abcx\": the multiplier before `x` must be a whole number",
            ),
            (
                "-2x",
                "bad scale \"-2x\": the multiplier before `x` must be a whole number",
            ),
            (
                "+2x",
                "bad scale \"+2x\": the multiplier before `x` must be a whole number",
            ),
            (
                " 2x",
                "bad scale \" 2x\": the multiplier before `x` must be a whole number",
            ),
            ("10", "unknown scale \"10\""),
            ("10X", "unknown scale \"10X\""),
            ("x10", "unknown scale \"x10\""),
            ("Koala", "unknown scale \"Koala\""),
            ("", "unknown scale \"\""),
        ];
        for (s, reason) in bad {
            let e = s.parse::<Scale>().unwrap_err();
            assert_eq!(e, format!("{reason}; {accepted}"), "{s:?}");
        }
    }

    #[test]
    fn scale_prints_as_it_parses() {
        for s in ["tiny", "small", "koala", "2x", "10x", "1000x"] {
            let scale: Scale = s.parse().unwrap();
            assert_eq!(scale.to_string(), s);
            assert_eq!(serde_json::to_string(&scale).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(Scale::Times(1).to_string(), "koala");
        let report = SynthReport {
            scale: Scale::Times(10),
            seed: 0,
            files: vec![],
            seconds: 0.0,
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["scale"], "10x");
    }

    #[test]
    fn counts_multiply_koala() {
        let koala = Scale::Koala.counts();
        assert_eq!(
            koala,
            Counts {
                sharegpt: 60_000,
                hc3: 24_000,
                oig: 30_000,
                alpaca: 52_000,
                hh: 160_000,
                webgpt: 20_000,
                summarize: 93_000,
            }
        );
        assert_eq!("1x".parse::<Scale>().unwrap().counts(), koala);
        assert_eq!(Scale::Times(1).counts(), koala);
        assert_eq!(Scale::Times(1).sharegpt_ids(), SgIds::Drawn);
        assert_eq!(Scale::Koala.sharegpt_ids(), SgIds::Drawn);
        let three = "3x".parse::<Scale>().unwrap().counts();
        assert_eq!(
            three,
            Counts {
                sharegpt: 180_000,
                hc3: 72_000,
                oig: 90_000,
                alpaca: 156_000,
                hh: 480_000,
                webgpt: 60_000,
                summarize: 279_000,
            }
        );
        assert_eq!(three, koala.times(3));
        assert_eq!(three.total(), 3 * 439_000);
        assert_eq!(Scale::Times(1000).counts().total(), 439_000_000);
        // The small and tiny sizes are as before.
        assert_eq!(Scale::Small.counts().total(), 4_390);
        assert_eq!(
            Scale::Tiny.counts(),
            Counts {
                sharegpt: 30,
                hc3: 12,
                oig: 15,
                alpaca: 26,
                hh: 80,
                webgpt: 10,
                summarize: 46,
            }
        );
    }

    #[test]
    fn synth_rejects_multipliers_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        for n in [0, MAX_MULTIPLIER + 1] {
            let e = synth(
                dir.path(),
                &SynthOptions {
                    scale: Scale::Times(n),
                    seed: 0,
                },
            )
            .unwrap_err();
            assert!(
                e.to_string()
                    .contains("the multiplier must be from 1 to 1000"),
                "{e}"
            );
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn multiplied_run_keeps_shares_and_unique_ids() {
        // Tiny's sizes times 20 (what `Nx` does to Koala's), with the `Nx` id scheme: the
        // corpus loads clean, every row id is distinct, and the shares are those of `small`.
        let dir = tempfile::tempdir().unwrap();
        let c = Scale::Tiny.counts().times(20);
        let r = write_corpus(dir.path(), Scale::Times(20), c, 5, SgIds::Unique).unwrap();
        assert_eq!(r.files.iter().map(|f| f.records).sum::<u64>(), c.total());
        let out = load_dir(dir.path(), &LoadOptions::default()).unwrap();
        out.check_reconciled().unwrap();
        let t = out.totals();
        assert_eq!(t.records_quarantined, 0, "{:?}", out.quarantine.first());
        assert_eq!(t.records_read, c.total());
        let rows = from_dataframe(&out.table).unwrap();
        let ids: std::collections::HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), rows.len(), "row ids repeat");
        let sg: Vec<_> = rows.iter().filter(|r| r.source == "sharegpt").collect();
        assert_eq!(sg.len() as u64, c.sharegpt);
        let firsts: std::collections::HashSet<String> = sg
            .iter()
            .map(|r| {
                let u = r.turns.iter().find(|t| t.role == crate::schema::Role::User);
                u.map(|t| t.text.trim().to_lowercase()).unwrap_or_default()
            })
            .collect();
        let dup = 1.0 - firsts.len() as f64 / sg.len() as f64;
        assert!((0.33..0.45).contains(&dup), "duplicate share {dup}");
        assert_non_ascii_share(&sg);
    }

    #[test]
    fn sharegpt_duplicates_and_languages_hold_beyond_koala_range() {
        // At 10x, over all 600,000 positions: the slots of the originals are exactly
        // 0..originals, and duplicates are 40% of conversations overall and among the positions
        // past the 1x range; their slots come from the whole (10x) pool.
        let seed = 11;
        let n = Scale::Times(10).counts().sharegpt;
        let originals = sharegpt_originals(n);
        assert_eq!(originals, 360_000);
        let mut seen = vec![false; originals as usize];
        let (mut dups, mut dups_late, mut late, mut max_dup_slot) = (0u64, 0u64, 0u64, 0u64);
        for i in 0..n {
            let (slot, duplicate) = sharegpt_slot(seed, i, n);
            assert!(slot < originals);
            if duplicate {
                dups += 1;
                max_dup_slot = max_dup_slot.max(slot);
            } else {
                assert!(!seen[slot as usize], "slot {slot} is an original twice");
                seen[slot as usize] = true;
            }
            if i >= Scale::Koala.counts().sharegpt {
                late += 1;
                dups_late += u64::from(duplicate);
            }
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(dups, n - originals);
        let late_share = dups_late as f64 / late as f64;
        assert!((0.39..0.41).contains(&late_share), "{late_share}");
        assert!(max_dup_slot > originals * 99 / 100, "{max_dup_slot}");
        // Non-English first queries among slots past the 1x pool: still ~10%.
        let other = (300_000..304_000)
            .filter(|&q| sharegpt_query(seed, q).1 != Lang::En)
            .count() as f64
            / 4_000.0;
        assert!((0.085..0.115).contains(&other), "non-English share {other}");
    }

    #[test]
    fn unique_sharegpt_ids_never_repeat() {
        let seed = 2;
        // The stem is a bijection: distinct over the first 300,000 indexes and over the last
        // 100,000 of a 1000x corpus, always 7 alphanumerics.
        let mut stems = std::collections::HashSet::new();
        let top = Scale::Times(MAX_MULTIPLIER).counts().sharegpt;
        for i in (0..300_000).chain(top - 100_000..top) {
            let s = unique_stem(seed, i);
            assert!(
                s.len() == 7 && s.bytes().all(|b| b.is_ascii_alphanumeric()),
                "{s}"
            );
            assert!(stems.insert(s), "stem of {i} repeats");
        }
        // Another seed gives other ids.
        assert_ne!(unique_stem(seed, 0), unique_stem(seed + 1, 0));
        // Whole records past the 1x range carry them (and their first query's slot).
        let n = Scale::Times(10).counts().sharegpt;
        let mut ids = std::collections::HashSet::new();
        for i in n - 300..n {
            let mut buf = Vec::new();
            sharegpt(seed, i, n, SgIds::Unique, &mut buf);
            let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            let id = v["id"].as_str().unwrap().to_string();
            assert_eq!(id.split_once('_').unwrap().0, unique_stem(seed, i));
            assert!(ids.insert(id));
            // The id scheme changes only the id: the rest of the record is the same.
            let mut drawn = Vec::new();
            sharegpt(seed, i, n, SgIds::Drawn, &mut drawn);
            let mut w: serde_json::Value = serde_json::from_slice(&drawn).unwrap();
            w["id"] = v["id"].clone();
            assert_eq!(v, w);
        }
    }
}
