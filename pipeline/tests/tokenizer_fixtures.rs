#![cfg(feature = "tokenize")]
//! Our tokenisation against Python `tokenizers` (fixtures from scripts/gen_tokenizer_fixtures.py):
//! the same ids and decodings for (a) the byte-level BPE our trainer makes and (b) a Llama-style
//! SentencePiece-BPE tokenizer.json with byte fallback.
use std::path::{Path, PathBuf};

use koala_pipeline::format::{Format, KoalaFormat};
use koala_pipeline::schema::Turn;
use koala_pipeline::tokenize::{Tok, train::train_byte_level_bpe};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load() -> Value {
    let text = std::fs::read_to_string(fixtures().join("tok_ids.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn texts(v: &Value) -> Vec<String> {
    v["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn ids(v: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(v["ids"].clone()).unwrap()
}

fn check(tok: &Tok, fx: &Value, name: &str) {
    let want = ids(&fx[name]);
    let decoded: Vec<String> = serde_json::from_value(fx[name]["decoded"].clone()).unwrap();
    for (i, t) in texts(fx).iter().enumerate() {
        let got = tok.encode_text(t).unwrap();
        assert_eq!(got, want[i], "{name}: ids of text {i} {t:?}");
        assert_eq!(
            tok.decode(&got).unwrap(),
            decoded[i],
            "{name}: decoding of text {i}"
        );
    }
    assert_eq!(
        Some(tok.eos_id),
        fx[name]["eos_id"].as_u64().map(|x| x as u32)
    );
    assert_eq!(tok.bos_id, fx[name]["bos_id"].as_u64().map(|x| x as u32));
}

#[test]
fn trained_tokenizer_matches_python() {
    let fx = load();
    let tok = Tok::from_file(&fixtures().join("tok_trained.json"), None).unwrap();
    check(&tok, &fx, "trained");
    // Byte-level BPE decodes every text back exactly.
    for t in texts(&fx) {
        assert_eq!(tok.decode(&tok.encode_text(&t).unwrap()).unwrap(), t);
    }
}

/// Training again from the committed corpus gives a tokenizer that Python's ids still describe.
#[test]
fn retraining_gives_the_same_ids() {
    let fx = load();
    let corpus = std::fs::read_to_string(fixtures().join("tok_corpus.txt")).unwrap();
    let vocab = fx["trained_vocab_size"].as_u64().unwrap() as usize;
    let tok = Tok::new(train_byte_level_bpe(corpus.lines(), vocab).unwrap(), None).unwrap();
    check(&tok, &fx, "trained");
}

#[test]
fn llama_style_tokenizer_matches_python() {
    let fx = load();
    let tok = Tok::from_file(&fixtures().join("tok_llama.json"), None).unwrap();
    check(&tok, &fx, "llama");
    assert_eq!((tok.bos_id, tok.eos_id, tok.pad_id), (Some(1), 2, 2));
    // A Koala example is BOS + the Python ids of each piece + EOS: field-by-field tokenisation,
    // as EasyLM does it (each piece gets SentencePiece's dummy-prefix "▁").
    let pieces = Format::Koala(KoalaFormat::default())
        .render_turns(
            &[
                Turn::user("Hello!"),
                Turn::assistant("Hi! How can I help you?"),
            ],
            "{}",
        )
        .unwrap();
    let ex = tok.encode_pieces(&pieces).unwrap();
    let want = ids(&fx["llama"]);
    let texts = texts(&fx);
    assert_eq!(texts[0], "BEGINNING OF CONVERSATION: USER: Hello! GPT:");
    assert_eq!(texts[1], "Hi! How can I help you?");
    let mut expect = vec![1];
    expect.extend(&want[0]);
    expect.extend(&want[1]);
    expect.push(2);
    assert_eq!(ex.tokens, expect);
    let n0 = 1 + want[0].len();
    assert!(ex.loss[..n0].iter().all(|&l| l == 0));
    assert!(ex.loss[n0..].iter().all(|&l| l == 1));
}
