//! A model directory's tokenizer as GGUF `tokenizer.ggml.*` metadata, as llama.cpp's
//! `convert_hf_to_gguf.py` writes it:
//!
//! * a SentencePiece `tokenizer.model` (LLaMA's) becomes the `llama` vocabulary: pieces, scores
//!   and token types straight from the model;
//! * an HF `tokenizer.json` with a byte-level BPE becomes the `gpt2` vocabulary with the `gpt-2`
//!   pre-tokenizer: tokens in their byte-to-unicode spelling, the merges, and added tokens as
//!   control (special) or user-defined tokens.
//!
//! Ids the tokenizer does not cover, up to the model's `vocab_size`, become unused `[PAD{id}]`
//! tokens, as the converter pads them.
use std::path::Path;

use serde_json::Value as Json;

use super::sentencepiece::SentencePiece;
use super::writer::Value;
use crate::config::LlamaConfig;
use crate::{Error, Result};

// GGUF token types (llama.cpp's `llama_token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// A tokenizer, ready to write.
#[derive(Debug)]
pub struct Vocab {
    /// `llama` (SentencePiece) or `gpt2` (byte-level BPE).
    pub model: &'static str,
    /// The file it was read from.
    pub source: String,
    pub metadata: Vec<(String, Value)>,
    /// Number of tokens (the model's `vocab_size`).
    pub len: usize,
}

/// Reads `dir/tokenizer.model` if it exists, else `dir/tokenizer.json`.
pub fn read(dir: &Path, cfg: &LlamaConfig) -> Result<Vocab> {
    let sp = dir.join("tokenizer.model");
    let json = dir.join("tokenizer.json");
    let config = read_tokenizer_config(dir)?;
    let mut v = if sp.exists() {
        from_sentencepiece(&sp, cfg)?
    } else if json.exists() {
        from_tokenizer_json(&json, cfg)?
    } else {
        return Err(Error::format(
            dir,
            "no tokenizer.model or tokenizer.json: GGUF files carry their tokenizer",
        ));
    };
    // The prompt starts with BOS unless the tokenizer config says otherwise (LLaMA's default,
    // and what our training data does).
    let add_bos = config
        .as_ref()
        .and_then(|c| c.get("add_bos_token"))
        .and_then(Json::as_bool)
        .unwrap_or(true);
    let add_eos = config
        .as_ref()
        .and_then(|c| c.get("add_eos_token"))
        .and_then(Json::as_bool)
        .unwrap_or(false);
    v.metadata
        .push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)));
    v.metadata
        .push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(add_eos)));
    if let Some(t) = config
        .as_ref()
        .and_then(|c| c.get("chat_template"))
        .and_then(Json::as_str)
    {
        v.metadata
            .push(("tokenizer.chat_template".into(), Value::Str(t.to_string())));
    }
    Ok(v)
}

fn read_tokenizer_config(dir: &Path) -> Result<Option<Json>> {
    let path = dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::format(&path, e))
}

/// The BOS/EOS ids: the model config's when it has them (they are what generation uses), else
/// the tokenizer's.
fn special_ids(
    cfg: &LlamaConfig,
    bos: Option<u32>,
    eos: Option<u32>,
) -> (Option<u32>, Option<u32>) {
    (
        cfg.bos_token_id.or(bos),
        cfg.eos_ids().first().copied().or(eos),
    )
}

fn check_len(path: &Path, n: usize, cfg: &LlamaConfig) -> Result<()> {
    if n > cfg.vocab_size {
        return Err(Error::format(
            path,
            format!(
                "the tokenizer has {n} tokens, more than the model's vocab_size {}",
                cfg.vocab_size
            ),
        ));
    }
    Ok(())
}

fn from_sentencepiece(path: &Path, cfg: &LlamaConfig) -> Result<Vocab> {
    let sp = SentencePiece::from_file(path)?;
    if !sp.is_bpe {
        return Err(Error::format(
            path,
            "a unigram SentencePiece model: llama.cpp's `llama` vocabulary is SentencePiece BPE",
        ));
    }
    check_len(path, sp.pieces.len(), cfg)?;
    let (mut tokens, mut scores, mut types) = (sp.pieces, sp.scores, sp.types);
    for i in tokens.len()..cfg.vocab_size {
        tokens.push(format!("[PAD{i}]"));
        scores.push(-1000.0);
        types.push(UNUSED);
    }
    let (bos, eos) = special_ids(cfg, sp.bos_id, sp.eos_id);
    let len = tokens.len();
    let mut metadata = vec![
        ("tokenizer.ggml.model".into(), Value::Str("llama".into())),
        ("tokenizer.ggml.tokens".into(), Value::StrArray(tokens)),
        ("tokenizer.ggml.scores".into(), Value::F32Array(scores)),
        ("tokenizer.ggml.token_type".into(), Value::I32Array(types)),
        (
            "tokenizer.ggml.add_space_prefix".into(),
            Value::Bool(sp.add_dummy_prefix),
        ),
    ];
    push_ids(&mut metadata, bos, eos, sp.unk_id, sp.pad_id);
    Ok(Vocab {
        model: "llama",
        source: path.display().to_string(),
        metadata,
        len,
    })
}

fn push_ids(
    metadata: &mut Vec<(String, Value)>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
) {
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", bos),
        ("tokenizer.ggml.eos_token_id", eos),
        ("tokenizer.ggml.unknown_token_id", unk),
        ("tokenizer.ggml.padding_token_id", pad),
    ] {
        if let Some(id) = id {
            metadata.push((key.into(), Value::U32(id)));
        }
    }
}

fn from_tokenizer_json(path: &Path, cfg: &LlamaConfig) -> Result<Vocab> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let tj: Json = serde_json::from_str(&text).map_err(|e| Error::format(path, e))?;
    let bad = |msg: String| Error::format(path, msg);
    let model = tj
        .get("model")
        .ok_or_else(|| bad("missing field `model`".into()))?;
    let kind = model.get("type").and_then(Json::as_str).unwrap_or("");
    if kind != "BPE" {
        return Err(bad(format!(
            "model.type {kind:?}: only byte-level BPE tokenizer.json files export (a \
             SentencePiece model exports from its tokenizer.model)"
        )));
    }
    if !is_byte_level_gpt2(tj.get("pre_tokenizer")) {
        return Err(bad(format!(
            "pre_tokenizer {}: only the byte-level GPT-2 pre-tokenizer (ByteLevel with \
             use_regex) maps onto a llama.cpp vocabulary",
            tj.get("pre_tokenizer").unwrap_or(&Json::Null)
        )));
    }
    if tj.get("normalizer").is_some_and(|n| !n.is_null()) {
        return Err(bad(
            "a byte-level BPE with a normalizer: llama.cpp's gpt2 vocabulary has none".into(),
        ));
    }
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| bad("missing object field `model.vocab`".into()))?;
    let mut tokens: Vec<Option<String>> = Vec::new();
    let mut types: Vec<i32> = Vec::new();
    let mut place = |id: u64, tok: &str, ty: i32, field: &str| -> Result<()> {
        let id = usize::try_from(id).map_err(|_| bad(format!("{field}: id {id} is too large")))?;
        if id >= cfg.vocab_size {
            return Err(bad(format!(
                "{field}: token {tok:?} has id {id}, outside the model's vocab_size {}",
                cfg.vocab_size
            )));
        }
        if tokens.len() <= id {
            tokens.resize(id + 1, None);
            types.resize(id + 1, UNUSED);
        }
        tokens[id] = Some(tok.to_string());
        types[id] = ty;
        Ok(())
    };
    for (tok, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| bad(format!("model.vocab.{tok}: the id is not a number")))?;
        place(id, tok, NORMAL, "model.vocab")?;
    }
    if let Some(added) = tj.get("added_tokens").and_then(Json::as_array) {
        for (i, a) in added.iter().enumerate() {
            let field = format!("added_tokens[{i}]");
            let id = a
                .get("id")
                .and_then(Json::as_u64)
                .ok_or_else(|| bad(format!("{field}: no numeric `id`")))?;
            let content = a
                .get("content")
                .and_then(Json::as_str)
                .ok_or_else(|| bad(format!("{field}: no string `content`")))?;
            let special = a.get("special").and_then(Json::as_bool).unwrap_or(false);
            place(
                id,
                content,
                if special { CONTROL } else { USER_DEFINED },
                &field,
            )?;
        }
    }
    check_len(path, tokens.len(), cfg)?;
    tokens.resize(cfg.vocab_size, None);
    types.resize(cfg.vocab_size, UNUSED);
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
        .collect();
    let merges = model
        .get("merges")
        .and_then(Json::as_array)
        .ok_or_else(|| bad("missing array field `model.merges`".into()))?
        .iter()
        .enumerate()
        .map(|(i, m)| match m {
            // Older files spell a merge "a b", newer ones ["a", "b"].
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                _ => Err(bad(format!("model.merges[{i}]: not a pair of strings"))),
            },
            _ => Err(bad(format!("model.merges[{i}]: not a merge"))),
        })
        .collect::<Result<Vec<_>>>()?;
    let find = |name: &str| tokens.iter().position(|t| t == name).map(|i| i as u32);
    let (bos, eos) = special_ids(cfg, find("<s>"), find("</s>"));
    let unk = model.get("unk_token").and_then(Json::as_str).and_then(find);
    let len = tokens.len();
    let mut metadata = vec![
        ("tokenizer.ggml.model".into(), Value::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::Str("gpt-2".into())),
        ("tokenizer.ggml.tokens".into(), Value::StrArray(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::I32Array(types)),
        ("tokenizer.ggml.merges".into(), Value::StrArray(merges)),
    ];
    push_ids(&mut metadata, bos, eos, unk, None);
    Ok(Vocab {
        model: "gpt2",
        source: path.display().to_string(),
        metadata,
        len,
    })
}

/// Whether a `pre_tokenizer` is `ByteLevel` with GPT-2's split regex, alone or as the only step of
/// a `Sequence`.
fn is_byte_level_gpt2(pre: Option<&Json>) -> bool {
    let Some(pre) = pre else { return false };
    match pre.get("type").and_then(Json::as_str) {
        Some("ByteLevel") => pre.get("use_regex").and_then(Json::as_bool).unwrap_or(true),
        Some("Sequence") => match pre.get("pretokenizers").and_then(Json::as_array) {
            Some(steps) if steps.len() == 1 => is_byte_level_gpt2(steps.first()),
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vocab: usize) -> LlamaConfig {
        LlamaConfig::from_json_str(&format!(
            r#"{{"vocab_size": {vocab}, "hidden_size": 8, "intermediate_size": 16,
                "num_hidden_layers": 1, "num_attention_heads": 2, "bos_token_id": 1,
                "eos_token_id": 2}}"#
        ))
        .unwrap()
    }

    fn get<'a>(v: &'a Vocab, key: &str) -> &'a Value {
        &v.metadata.iter().find(|(k, _)| k == key).unwrap().1
    }

    #[test]
    fn byte_level_bpe_maps_to_gpt2_with_padding_and_control_tokens() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer.json"),
            r#"{"model": {"type": "BPE", "vocab": {"a": 3, "b": 4, "ab": 5},
                "merges": [["a", "b"]]},
                "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false},
                "normalizer": null,
                "added_tokens": [{"id": 0, "content": "<unk>", "special": true},
                                 {"id": 1, "content": "<s>", "special": true},
                                 {"id": 2, "content": "</s>", "special": true},
                                 {"id": 6, "content": "Koala", "special": false}]}"#,
        )
        .unwrap();
        let v = read(dir.path(), &cfg(8)).unwrap();
        assert_eq!(v.model, "gpt2");
        assert_eq!(v.len, 8);
        let Value::StrArray(tokens) = get(&v, "tokenizer.ggml.tokens") else {
            panic!()
        };
        assert_eq!(
            tokens,
            &["<unk>", "<s>", "</s>", "a", "b", "ab", "Koala", "[PAD7]"]
        );
        assert_eq!(
            get(&v, "tokenizer.ggml.token_type"),
            &Value::I32Array(vec![3, 3, 3, 1, 1, 1, 4, 5])
        );
        assert_eq!(
            get(&v, "tokenizer.ggml.merges"),
            &Value::StrArray(vec!["a b".into()])
        );
        assert_eq!(get(&v, "tokenizer.ggml.bos_token_id"), &Value::U32(1));
        assert_eq!(get(&v, "tokenizer.ggml.add_bos_token"), &Value::Bool(true));

        // More tokens than the model has rows: a clear error naming the file.
        let err = read(dir.path(), &cfg(6)).unwrap_err().to_string();
        assert!(
            err.contains("tokenizer.json") && err.contains("vocab_size 6"),
            "{err}"
        );
    }

    #[test]
    fn other_pre_tokenizers_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer.json"),
            r#"{"model": {"type": "BPE", "vocab": {}, "merges": []},
                "pre_tokenizer": {"type": "Metaspace"}}"#,
        )
        .unwrap();
        let err = read(dir.path(), &cfg(8)).unwrap_err().to_string();
        assert!(err.contains("Metaspace"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = read(empty.path(), &cfg(8)).unwrap_err().to_string();
        assert!(
            err.contains("no tokenizer.model or tokenizer.json"),
            "{err}"
        );
    }
}
