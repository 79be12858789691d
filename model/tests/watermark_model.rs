//! The watermark on a small trained model (`tests/fixtures/wm_small`, trained by
//! `scripts/gen_watermark_model.sh` on synthetic Koala-format dialogue): watermarked samples of
//! 200 tokens are detected from their text alone (decoded, then re-tokenised, as
//! `koala watermark detect` does), and unwatermarked texts, model samples and the shipped
//! sample data, are never flagged.
use std::path::PathBuf;
use std::sync::Arc;

use koala_model::text::Tokenizer;
use koala_model::{Engine, EngineConfig, Event, Request, SampleParams, Watermark, Weights};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wm_small")
}

const PROMPTS: [&str; 10] = [
    "Give three tips for staying healthy.",
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain how a bicycle works.",
    "How do I make a cup of tea?",
    "Describe your favourite book.",
    "What should I pack for a trip to the mountains?",
    "Summarize the plot of a detective story.",
    "Why is the sky blue?",
    "Suggest a name for a bakery.",
];

/// `n` samples of exactly `len` tokens (no stop token), `with` or without the watermark.
fn samples(
    engine: &Engine,
    tk: &Tokenizer,
    wm: Option<&Watermark>,
    n: usize,
    len: usize,
) -> Vec<String> {
    let mut streams = Vec::new();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let text = format!(
            "BEGINNING OF CONVERSATION: USER: {} GPT:",
            PROMPTS[i % PROMPTS.len()]
        );
        let mut prompt = vec![1u32]; // <s>
        prompt.extend(tk.encode(text, false).unwrap().get_ids());
        let req = Request {
            prompt,
            max_tokens: len,
            // Koala's serving defaults: temperature 1.0, top_k 50, top_p 1.0.
            params: SampleParams {
                seed: Some(i as u64),
                ..SampleParams::default()
            },
            stop_tokens: Vec::new(),
            watermark: wm.cloned(),
        };
        // The engine's queue holds 64: submit in waves.
        streams.push(engine.submit(req).unwrap());
        if streams.len() == 48 || i + 1 == n {
            for mut s in streams.drain(..) {
                let mut toks = Vec::new();
                while let Some(Event::Token(t)) = s.blocking_next() {
                    toks.push(t);
                }
                assert_eq!(toks.len(), len);
                out.push(tk.decode(&toks, true).unwrap());
            }
        }
    }
    out
}

/// Every string of at least 20 words in the shipped sample data (`examples/data`, its `.json`
/// and `.jsonl` files): ShareGPT, HC3, OIG, Alpaca, WebGPT and summarisation texts.
fn shipped_texts() -> Vec<String> {
    fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) if s.split_whitespace().count() >= 20 => {
                out.push(s.clone())
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.to_string_lossy().to_string();
            if p.is_dir() {
                walk(&p, out);
            } else if name.ends_with(".json") {
                if let Ok(v) = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()) {
                    strings(&v, out);
                }
            } else if name.ends_with(".jsonl") {
                // The samples keep a few malformed lines on purpose (the loaders' error tests).
                for line in std::fs::read_to_string(&p).unwrap().lines() {
                    if let Ok(v) = serde_json::from_str(line) {
                        strings(&v, out);
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/data"),
        &mut out,
    );
    out.sort();
    out.dedup();
    out
}

#[test]
fn watermarked_samples_are_detected_and_plain_text_is_not_flagged() {
    let dir = fixture();
    let tk = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let engine = Engine::cpu(
        Arc::new(Weights::load(&dir).unwrap()),
        EngineConfig::default(),
    );
    let wm = Watermark::new("koala-test-key", 0.25, 2.0).unwrap();
    // Detection works from text: re-tokenise, then score each token against its predecessor.
    let detect = |text: &str| wm.score(tk.encode(text, false).unwrap().get_ids());

    let marked = samples(&engine, &tk, Some(&wm), 100, 200);
    let zs: Vec<f64> = marked.iter().map(|t| detect(t).z).collect();
    let hits = zs
        .iter()
        .filter(|&&z| z > koala_model::watermark::Z_THRESHOLD)
        .count();
    let mut sorted = zs.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "watermarked: {hits}/100 detected; z min {:.2}, median {:.2}",
        sorted[0], sorted[50]
    );
    assert!(
        hits >= 95,
        "only {hits} of 100 watermarked samples detected: {sorted:?}"
    );

    let shipped = shipped_texts();
    let mut plain = samples(
        &engine,
        &tk,
        None,
        1000usize.saturating_sub(shipped.len()).max(200),
        200,
    );
    plain.extend(shipped.iter().cloned());
    assert!(plain.len() >= 1000, "{} unwatermarked texts", plain.len());
    let flagged: Vec<(usize, f64)> = plain
        .iter()
        .enumerate()
        .map(|(i, t)| (i, detect(t).z))
        .filter(|(_, z)| *z > koala_model::watermark::Z_THRESHOLD)
        .collect();
    let max = plain.iter().map(|t| detect(t).z).fold(f64::MIN, f64::max);
    println!(
        "unwatermarked: {} texts ({} shipped), none may be flagged; max z {max:.2}",
        plain.len(),
        shipped.len()
    );
    assert!(flagged.is_empty(), "flagged: {flagged:?}");
}
