//! Alpaca's ROUGE-L similarity filter at Alpaca scale: our exact dedup against brute force and
//! against Python `rouge_score` running Alpaca's own loop, in the same run.
//!
//! `cargo bench --bench selfinstruct_dedup` (release). A seeded generator of our own writes 52,000
//! synthetic instructions: word counts log-normal like Alpaca's instructions (median ≈ 12 words,
//! clamped to Alpaca's 4..150), a Zipfian vocabulary plus function words, and ≈40% near-duplicates
//! (1–3 word edits of an earlier instruction, some within and some beyond the 0.7 threshold).
//!
//! - `ours`: `koala_pipeline::selfinstruct::dedup::dedup` on all items, both cores.
//! - `brute force`: every new item against every kept one with the bit-parallel LCS, on the first
//!   `KOALA_BENCH_SAMPLE` (5,000) items; decisions asserted equal to ours on that prefix, then
//!   its time extrapolated by pairs to the full run.
//! - `python`: scripts/bench_rouge_alpaca.py (Alpaca's loop on `rouge_score`) on the first
//!   `KOALA_BENCH_PY_ITEMS` (800) items, with the Python of `$KOALA_PYTHON` or
//!   /tmp/rsvenv/bin/python if it imports `rouge_score`; its decisions are asserted equal to
//!   ours, its time per scored pair is extrapolated to the pairs Alpaca's loop scores on all
//!   items (Σ kept-before-i, from our decisions), and divided by 2 for a perfectly scaling
//!   2-process pool. Skipped with a message when no such Python is found.
//!
//! Environment: `KOALA_BENCH_ITEMS` (52000), `KOALA_BENCH_SAMPLE` (5000), `KOALA_BENCH_PY_ITEMS` (800).
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use koala_pipeline::selfinstruct::dedup::{Decision, dedup, dedup_brute_force};

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
    "the", "a", "of", "to", "and", "in", "is", "it", "that", "for", "you", "on", "with", "as",
    "be", "at", "this", "from", "or", "by", "what", "how", "an", "are", "your", "about", "which",
    "write", "explain", "give", "make", "list", "describe", "generate", "create", "find", "given",
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
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let vocab: Vec<String> = (0..20_000)
            .map(|_| {
                let k = 1 + rng.below(3);
                (0..k)
                    .map(|_| SYLLABLES[rng.below(SYLLABLES.len())])
                    .collect()
            })
            .collect();
        let mut cum = Vec::with_capacity(vocab.len());
        let mut s = 0.0;
        for r in 0..vocab.len() {
            s += 1.0 / (r as f64 + 2.7);
            cum.push(s);
        }
        Self { rng, vocab, cum }
    }
    fn word(&mut self) -> String {
        if self.rng.f64() < 0.4 {
            return FUNCTION_WORDS[self.rng.below(FUNCTION_WORDS.len())].to_owned();
        }
        let x = self.rng.f64() * self.cum[self.cum.len() - 1];
        let i = self.cum.partition_point(|&c| c < x);
        self.vocab[i.min(self.vocab.len() - 1)].clone()
    }
    fn fresh(&mut self) -> String {
        let n = (12.0 * (0.45 * self.rng.normal()).exp())
            .round()
            .clamp(4.0, 150.0) as usize;
        let mut ws: Vec<String> = (0..n).map(|_| self.word()).collect();
        ws[0] = capitalize(&ws[0]);
        format!(
            "{}{}",
            ws.join(" "),
            if self.rng.f64() < 0.8 { "." } else { "?" }
        )
    }
    fn edit(&mut self, base: &str) -> String {
        let mut ws: Vec<String> = base.split(' ').map(str::to_owned).collect();
        for _ in 0..1 + self.rng.below(3) {
            let i = self.rng.below(ws.len());
            match self.rng.below(3) {
                0 if ws.len() > 4 => {
                    ws.remove(i);
                }
                1 => {
                    let w = self.word();
                    ws.insert(i, w);
                }
                _ => ws[i] = self.word(),
            }
        }
        ws.join(" ")
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Pairs Alpaca's loop scores: each item against every instruction kept before it.
fn pairs(ds: &[Decision]) -> u64 {
    let (mut kept, mut p) = (0u64, 0u64);
    for d in ds {
        p += kept;
        kept += u64::from(d.kept);
    }
    p
}

fn python() -> Option<String> {
    let cands = [
        std::env::var("KOALA_PYTHON").ok(),
        Some("/tmp/rsvenv/bin/python".to_owned()),
    ];
    cands.into_iter().flatten().find(|py| {
        Command::new(py)
            .args(["-c", "import rouge_score"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn main() {
    let n = env_usize("KOALA_BENCH_ITEMS", 52_000);
    let sample = env_usize("KOALA_BENCH_SAMPLE", 5_000).min(n);
    let py_items = env_usize("KOALA_BENCH_PY_ITEMS", 800).min(n);
    let mut g = Gen::new(0x5e1f_1257);
    let mut items: Vec<String> = Vec::with_capacity(n);
    while items.len() < n {
        let s = if !items.is_empty() && g.rng.f64() < 0.4 {
            let base = items[g.rng.below(items.len())].clone();
            g.edit(&base)
        } else {
            g.fresh()
        };
        items.push(s);
    }
    let refs: Vec<&str> = items.iter().map(String::as_str).collect();
    let words: usize = items.iter().map(|s| s.split(' ').count()).sum();
    println!(
        "selfinstruct_dedup: {n} instructions, mean {:.1} words, {} threads",
        words as f64 / n as f64,
        rayon::current_num_threads()
    );

    let t = Instant::now();
    let ours = dedup(&[], &refs, 0.7, None).expect("dedup");
    let ours_s = t.elapsed().as_secs_f64();
    let kept = ours.iter().filter(|d| d.kept).count();
    let total_pairs = pairs(&ours);
    println!(
        "ours:        {ours_s:8.2} s  kept {kept}, dropped {} ({:.1}%), {total_pairs} pairs in Alpaca's loop",
        n - kept,
        100.0 * (n - kept) as f64 / n as f64
    );

    let t = Instant::now();
    let brute = dedup_brute_force(&[], &refs[..sample], 0.7).expect("brute force");
    let brute_s = t.elapsed().as_secs_f64();
    let ours_sample = dedup(&[], &refs[..sample], 0.7, None).expect("dedup");
    assert_eq!(brute, ours_sample, "decisions differ from brute force");
    assert_eq!(brute, ours[..sample], "prefix decisions differ");
    let brute_full = brute_s * total_pairs as f64 / pairs(&brute).max(1) as f64;
    println!(
        "brute force: {brute_s:8.2} s  on the first {sample} ({} pairs): decisions identical; \
         extrapolated to all: {brute_full:.1} s (1 core) = {:.0}x ours",
        pairs(&brute),
        brute_full / ours_s
    );

    let Some(py) = python() else {
        println!("python:      skipped (no Python with rouge_score: set KOALA_PYTHON)");
        return;
    };
    let dir = tempdir();
    let path = dir.join("instructions.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("temp file"));
        for s in &items[..py_items] {
            writeln!(f, "{}", serde_json::json!({ "instruction": s })).expect("write");
        }
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench_rouge_alpaca.py");
    let out = Command::new(&py)
        .arg(script)
        .arg(&path)
        .arg(py_items.to_string())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("python json");
    let py_s = v["seconds"].as_f64().expect("seconds");
    let py_pairs = v["pairs"].as_u64().expect("pairs");
    let py_kept: Vec<bool> = v["kept"]
        .as_array()
        .expect("kept")
        .iter()
        .map(|k| k.as_u64() == Some(1))
        .collect();
    let our_kept: Vec<bool> = ours[..py_items].iter().map(|d| d.kept).collect();
    assert_eq!(
        py_kept, our_kept,
        "decisions differ from rouge_score's Alpaca loop"
    );
    let py_full = py_s * total_pairs as f64 / py_pairs.max(1) as f64;
    println!(
        "python:      {py_s:8.2} s  Alpaca's loop on the first {py_items} ({py_pairs} pairs, \
         {:.1} µs/pair): decisions identical; extrapolated to all: {:.0} s on 1 process, \
         {:.0} s on 2 (ideal pool)",
        py_s * 1e6 / py_pairs.max(1) as f64,
        py_full,
        py_full / 2.0
    );
    println!(
        "ratio:       python (2 ideal processes) / ours = {:.0}x; 1 process / ours = {:.0}x",
        py_full / 2.0 / ours_s,
        py_full / ours_s
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("koala-selfinstruct-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}
