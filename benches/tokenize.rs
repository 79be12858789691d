//! Tokenize-stage throughput and packing efficiency on the Koala-scale curated output.
//!
//! ```sh
//! cargo bench --bench curate      # writes the curated koala-all table to $TMP/koala-bench-curate-out
//! cargo bench --bench tokenize    # reads it (or KOALA_BENCH_CURATED=DIR|kept.parquet)
//! ```
//! Without a curated table it falls back to a generated corpus (`KOALA_BENCH_CONVS`, default
//! 100000 conversations) and says so. `KOALA_BENCH_SEQ_LEN` (default 2048) is the packing length.
//! Prints one JSON object.
//!
//! - baseline: HF `tokenizers`' own parallel `encode_batch_fast` over each conversation rendered
//!   as one string (what a pipeline without loss masks would do);
//! - ours: `encode_all`, rendering into pieces and encoding piece by piece with exact masks, in
//!   parallel with rayon (the stage as `koala tokenize` runs it), and the same on one thread;
//! - packing: best-fit-decreasing packing efficiency at `seq_len`, and padding mode for contrast.
//!
//! The corpus is generated in-bench (seeded): a Zipf-distributed lexicon of pseudo-words, a mix of
//! single-turn instruction data (Alpaca/HC3/OIG-like) and long multi-turn chats (ShareGPT-like),
//! with some negative (human-feedback) answers.
use std::time::Instant;

use koala_pipeline::format::{Format, KoalaFormat, render_text};
use koala_pipeline::schema::{Conversation, Preference, Turn};
use koala_pipeline::tokenize::pack::{Mode, layout};
use koala_pipeline::tokenize::run::{Report, encode_all, render_all};
use koala_pipeline::tokenize::{Encoded, Side, Tok, train::train_byte_level_bpe};

/// The same allocator as the `koala` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Log-normal-ish length with the given median, clamped.
    fn length(&mut self, median: f64, lo: usize, hi: usize) -> usize {
        // Box-Muller normal.
        let (u1, u2) = (self.unit().max(1e-12), self.unit());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        ((median * (0.8 * z).exp()) as usize).clamp(lo, hi)
    }
}

struct Lexicon {
    words: Vec<String>,
    cdf: Vec<f64>,
}

impl Lexicon {
    fn new(rng: &mut Rng, n: usize) -> Self {
        const SYL: &[&str] = &[
            "ka", "lo", "the", "an", "re", "in", "ter", "tion", "com", "pro", "ble", "ment", "ing",
            "ed", "al", "er", "es", "ous", "ly", "con", "de", "mi", "na", "ri", "to", "sa", "po",
            "qu", "ex", "un", "ve", "ra", "li", "ne", "st", "or", "ic", "at", "ar", "is",
        ];
        let mut words = Vec::with_capacity(n);
        for i in 0..n {
            let k = 1 + rng.below(3) + usize::from(i > 2000);
            let w: String = (0..k).map(|_| SYL[rng.below(SYL.len())]).collect();
            words.push(w);
        }
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for r in 1..=n {
            acc += 1.0 / r as f64;
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        Lexicon { words, cdf }
    }
    fn sentence(&self, rng: &mut Rng, words: usize) -> String {
        let mut s = String::with_capacity(words * 6);
        for i in 0..words {
            let u = rng.unit();
            let w = &self.words[self
                .cdf
                .partition_point(|&c| c < u)
                .min(self.words.len() - 1)];
            if i > 0 {
                s.push(match rng.below(40) {
                    0 => '\n',
                    _ => ' ',
                });
            }
            if i == 0 || rng.below(12) == 0 {
                let mut c = w.chars();
                if let Some(f) = c.next() {
                    s.extend(f.to_uppercase());
                    s.push_str(c.as_str());
                }
            } else {
                s.push_str(w);
            }
            match rng.below(14) {
                0 => s.push(','),
                1 => s.push('.'),
                2 if rng.below(4) == 0 => s.push_str(&format!(" {}", rng.below(10000))),
                _ => {}
            }
        }
        s.push('.');
        s
    }
}

fn corpus(n: usize) -> Vec<Conversation> {
    let mut rng = Rng(2023);
    let lex = Lexicon::new(&mut rng, 30000);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let kind = rng.below(100);
        let (source, turns) = if kind < 45 {
            // Alpaca / HC3 / OIG: one short exchange.
            let q = rng.length(18.0, 3, 200);
            let a = rng.length(70.0, 1, 800);
            (
                ["alpaca", "hc3", "oig"][rng.below(3)],
                vec![
                    Turn::user(lex.sentence(&mut rng, q)),
                    Turn::assistant(lex.sentence(&mut rng, a)),
                ],
            )
        } else if kind < 80 {
            // HH / WebGPT / summarisation: human feedback, a third negative.
            let q = rng.length(40.0, 3, 600);
            let a = rng.length(60.0, 1, 400);
            let pref = if rng.below(3) == 0 {
                Preference::Negative
            } else {
                Preference::Positive
            };
            (
                ["hh", "webgpt", "summarize"][rng.below(3)],
                vec![
                    Turn::user(lex.sentence(&mut rng, q)),
                    Turn::assistant_with(lex.sentence(&mut rng, a), pref),
                ],
            )
        } else {
            // ShareGPT: several long rounds.
            let rounds = 1 + rng.below(5);
            let mut t = Vec::new();
            for _ in 0..rounds {
                let q = rng.length(25.0, 2, 400);
                let a = rng.length(180.0, 5, 1500);
                t.push(Turn::user(lex.sentence(&mut rng, q)));
                t.push(Turn::assistant(lex.sentence(&mut rng, a)));
            }
            ("sharegpt", t)
        };
        out.push(Conversation {
            id: format!("{source}/{i}"),
            source: source.into(),
            split: "train".into(),
            turns,
            src_file: "synthetic".into(),
            src_record: i as u64 + 1,
            meta: "{}".into(),
        });
    }
    out
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let n = env("KOALA_BENCH_CONVS", 100_000);
    let seq_len = env("KOALA_BENCH_SEQ_LEN", 2048);
    let threads = rayon::current_num_threads();

    let curated = std::env::var_os("KOALA_BENCH_CURATED")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("koala-bench-curate-out"));
    let t = Instant::now();
    let (input, convs) = if curated.exists() {
        let (path, convs) =
            koala_pipeline::tokenize::run::read_conversations(&curated).expect("curated table");
        (path.display().to_string(), convs)
    } else {
        eprintln!(
            "no curated table at {} (run `cargo bench --bench curate` first, or set \
             KOALA_BENCH_CURATED): using a generated corpus of {n} conversations",
            curated.display()
        );
        (format!("generated ({n} conversations)"), corpus(n))
    };
    // KOALA_BENCH_LIMIT: only the first N conversations (a quicker run; rates are per token).
    let mut convs = convs;
    if let Ok(limit) = std::env::var("KOALA_BENCH_LIMIT")
        && let Ok(limit) = limit.parse::<usize>()
    {
        convs.truncate(limit);
    }
    let n = convs.len();
    let gen_s = t.elapsed().as_secs_f64();

    let format = Format::Koala(KoalaFormat::default());
    let t = Instant::now();
    let (rendered, _skipped) = render_all(&convs, &format);
    let render_s = t.elapsed().as_secs_f64();

    // Tokenizer: a 32k byte-level BPE trained on the first 10k conversations.
    let t = Instant::now();
    let train_texts: Vec<String> = rendered
        .iter()
        .take(10_000)
        .flatten()
        .map(|p| render_text(p, "", ""))
        .collect();
    let tok = Tok::new(
        train_byte_level_bpe(train_texts.iter().map(String::as_str), 32000).expect("train"),
        None,
    )
    .expect("tokenizer");
    let train_s = t.elapsed().as_secs_f64();

    // Baseline: HF's parallel batch encode of whole strings, no masks.
    // HF `Encoding`s carry token strings, offsets and masks: at Koala scale (hundreds of millions
    // of tokens) they do not fit in memory at once, so the baseline encodes blocks of rows and
    // keeps only the counts.
    let mut base_s = 0.0f64;
    let mut base_tokens = 0usize;
    for block in rendered.chunks(16_384) {
        let joined: Vec<String> = block
            .iter()
            .flatten()
            .map(|p| render_text(p, "<s>", "</s>"))
            .collect();
        let inputs: Vec<&str> = joined.iter().map(String::as_str).collect();
        let t = Instant::now();
        let encs = tok
            .inner
            .encode_batch_fast(inputs, false)
            .expect("encode_batch_fast");
        base_s += t.elapsed().as_secs_f64();
        base_tokens += encs.iter().map(|e| e.len()).sum::<usize>();
    }

    // Ours, all threads.
    let mut report = Report::default();
    let t = Instant::now();
    let examples = encode_all(
        &convs,
        &rendered,
        &tok,
        usize::MAX,
        Side::Right,
        None,
        &mut report,
    )
    .expect("encode_all");
    let ours_s = t.elapsed().as_secs_f64();
    let ours_tokens = report.tokens;

    // Ours, one thread, on a tenth of the corpus.
    let m = (n / 10).max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let mut r1 = Report::default();
    let t = Instant::now();
    pool.install(|| {
        encode_all(
            &convs[..m],
            &rendered[..m],
            &tok,
            usize::MAX,
            Side::Right,
            None,
            &mut r1,
        )
    })
    .expect("encode_all 1 thread");
    let one_s = t.elapsed().as_secs_f64();

    // Packing at seq_len (truncating to it first, as the stage does).
    let mut exs: Vec<Encoded> = examples.into_iter().map(|e| e.enc).collect();
    let mut truncated = 0;
    for e in &mut exs {
        if koala_pipeline::tokenize::truncate(e, seq_len, Side::Right) > 0 {
            truncated += 1;
        }
    }
    let t = Instant::now();
    let rows = layout(&exs, seq_len, Mode::Pack, tok.pad_id);
    let pack_s = t.elapsed().as_secs_f64();
    let pack_eff = rows.real_tokens() as f64 / rows.tokens.len() as f64;
    // Padding mode for contrast, counted rather than laid out (one `seq_len` row per example:
    // at Koala scale that layout alone is ~20 GB).
    let pad_rows_n = exs.len();
    let pad_real: usize = exs.iter().map(|e| e.tokens.len().min(seq_len)).sum();
    let pad_eff = pad_real as f64 / (pad_rows_n * seq_len).max(1) as f64;

    let result = serde_json::json!({
        "input": input,
        "conversations": n,
        "examples": exs.len(),
        "threads": threads,
        "seq_len": seq_len,
        "read_or_generate_s": gen_s,
        "render_s": render_s,
        "train_tokenizer_s": train_s,
        "vocab_size": tok.vocab_size,
        "baseline_hf_encode_batch_fast": {"tokens": base_tokens, "seconds": base_s, "tokens_per_s": base_tokens as f64 / base_s},
        "ours_pieces_masked": {"tokens": ours_tokens, "seconds": ours_s, "tokens_per_s": ours_tokens as f64 / ours_s},
        "ours_over_baseline": (ours_tokens as f64 / ours_s) / (base_tokens as f64 / base_s),
        "ours_one_thread": {"tokens": r1.tokens, "seconds": one_s, "tokens_per_s": r1.tokens as f64 / one_s},
        "parallel_speedup": (ours_tokens as f64 / ours_s) / (r1.tokens as f64 / one_s),
        "truncated_examples": truncated,
        "pack": {"rows": rows.len(), "efficiency": pack_eff, "seconds": pack_s},
        "pad": {"rows": pad_rows_n, "efficiency": pad_eff},
    });
    println!("{}", serde_json::to_string_pretty(&result).expect("json"));
}
