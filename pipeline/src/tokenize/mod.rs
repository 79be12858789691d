//! Tokenisation with exact loss masks, and packed training shards.
//!
//! - [`Tok`] wraps a HF `tokenizers` tokenizer (any `tokenizer.json`) with the ids the pipeline
//!   needs (BOS, EOS, pad) and the file's SHA-256; [`train::train_byte_level_bpe`] makes one when
//!   none is given.
//! - [`Tok::encode_pieces`] encodes a rendered example ([`crate::format::Piece`]) piece by piece,
//!   so every token belongs to exactly one piece and takes that piece's loss flag.
//! - [`pack`] fills fixed-length rows (packing, with per-token segment ids) or pads one example
//!   per row; [`shards`] writes them as Arrow IPC files with a `manifest.json` (the contract with
//!   the trainer, `docs/shards.md`) and reads them back; [`run`] drives the whole stage.
//!
//! # Example
//! ```
//! use koala_pipeline::format::{Format, KoalaFormat};
//! use koala_pipeline::schema::Turn;
//! use koala_pipeline::tokenize::{train::train_byte_level_bpe, Tok};
//! let texts = ["Hello there, how are you?", "Fine, thanks. And you?"];
//! let tok = Tok::new(train_byte_level_bpe(texts.iter().copied(), 300).unwrap(), None).unwrap();
//! let pieces = Format::Koala(KoalaFormat::default())
//!     .render_turns(&[Turn::user("Hi"), Turn::assistant("Hello there")], "{}")
//!     .unwrap();
//! let ex = tok.encode_pieces(&pieces).unwrap();
//! assert_eq!(ex.tokens[0], tok.bos_id.unwrap());
//! let trained: Vec<u32> = ex.tokens.iter().zip(&ex.loss).filter(|(_, l)| **l == 1).map(|(t, _)| *t).collect();
//! assert_eq!(tok.decode(&trained).unwrap(), "Hello there</s>");
//! ```
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::format::{Piece, Special};

pub mod pack;
pub mod run;
pub mod shards;
pub mod train;

/// Special-token strings tried, in order, when the tokenizer has no `tokenizer_config.json` beside it.
const BOS_CANDIDATES: &[&str] = &[
    "<s>",
    "<|begin_of_text|>",
    "<|startoftext|>",
    "<bos>",
    "[BOS]",
];
const EOS_CANDIDATES: &[&str] = &[
    "</s>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<eos>",
    "<|im_end|>",
    "[EOS]",
];
const PAD_CANDIDATES: &[&str] = &["<pad>", "[PAD]", "<|pad|>", "<|finetune_right_pad_id|>"];

/// Special-token strings, for example from `tokenizer_config.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialStrings {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
}

impl SpecialStrings {
    /// Reads `bos_token`, `eos_token`, `pad_token` (strings or `AddedToken` objects).
    pub fn from_tokenizer_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Record {
            file: path.display().to_string(),
            line: e.line() as u64,
            field: "(json)".into(),
            message: e.to_string(),
        })?;
        let get = |k: &str| match v.get(k) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Object(m)) => m
                .get("content")
                .and_then(|c| c.as_str())
                .map(str::to_string),
            _ => None,
        };
        Ok(SpecialStrings {
            bos: get("bos_token"),
            eos: get("eos_token"),
            pad: get("pad_token"),
        })
    }
}

/// A tokenizer with the ids and identity the shards record.
#[derive(Clone, Debug)]
pub struct Tok {
    pub inner: Tokenizer,
    /// `None` when the vocabulary has no BOS token; formats that ask for one then fail.
    pub bos_id: Option<u32>,
    pub eos_id: u32,
    /// The pad token, or EOS when the vocabulary has none (as is common for LLaMA).
    pub pad_id: u32,
    /// One more than the largest id (added tokens included): the embedding rows a model needs.
    pub vocab_size: usize,
    /// SHA-256 (hex) of the `tokenizer.json` text (the file as loaded, or as serialised).
    pub sha256: String,
    /// That text, as saved beside the shards.
    pub json: String,
}

/// The token ids and per-token loss flags of one example.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    pub tokens: Vec<u32>,
    /// 1 where the token is a training target, 0 where it is context.
    pub loss: Vec<u8>,
}

impl Encoded {
    /// The number of tokens with loss.
    pub fn loss_tokens(&self) -> usize {
        self.loss.iter().filter(|&&l| l == 1).count()
    }
}

/// Which end of a too-long example is cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Keep the start (Alpaca's tokenizer truncation).
    #[default]
    Right,
    /// Keep the end (EasyLM's serving prompt truncation).
    Left,
}

impl std::str::FromStr for Side {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "right" => Ok(Side::Right),
            "left" => Ok(Side::Left),
            o => Err(format!(
                "truncation side must be `left` or `right`, not {o:?}"
            )),
        }
    }
}

fn tok_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Invariant(format!("tokenizer {what}: {e}"))
}

impl Tok {
    /// Loads a `tokenizer.json`. Special-token strings come from `special` when given, else from
    /// a `tokenizer_config.json` in the same folder, else from common names (`<s>`, `</s>`, …).
    pub fn from_file(path: &Path, special: Option<SpecialStrings>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let inner: Tokenizer = text.parse().map_err(|e| Error::Record {
            file: path.display().to_string(),
            line: 1,
            field: "(tokenizer.json)".into(),
            message: format!("not a tokenizer the `tokenizers` crate can load: {e}"),
        })?;
        let special = match special {
            Some(s) => Some(s),
            None => {
                let cfg = path.with_file_name("tokenizer_config.json");
                if cfg.exists() {
                    Some(SpecialStrings::from_tokenizer_config(&cfg)?)
                } else {
                    None
                }
            }
        };
        let mut tok = Self::new(inner, special).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            e => e,
        })?;
        // Keep the user's file byte for byte: its hash is what the manifest records.
        tok.sha256 = hex::encode(Sha256::digest(text.as_bytes()));
        tok.json = text;
        Ok(tok)
    }

    /// Wraps a tokenizer.
    pub fn new(inner: Tokenizer, special: Option<SpecialStrings>) -> Result<Self> {
        let special = special.unwrap_or_default();
        let find = |given: &Option<String>, candidates: &[&str]| -> Option<u32> {
            match given {
                Some(s) => inner.token_to_id(s),
                None => candidates.iter().find_map(|c| inner.token_to_id(c)),
            }
        };
        let eos_id = find(&special.eos, EOS_CANDIDATES).ok_or_else(|| {
            Error::Config(format!(
                "the tokenizer has no end-of-sequence token (looked for {})",
                special
                    .eos
                    .as_deref()
                    .map_or_else(|| EOS_CANDIDATES.join(", "), str::to_string)
            ))
        })?;
        let bos_id = find(&special.bos, BOS_CANDIDATES);
        let pad_id = find(&special.pad, PAD_CANDIDATES).unwrap_or(eos_id);
        let vocab_size = inner
            .get_vocab(true)
            .values()
            .copied()
            .max()
            .map_or(0, |m| m as usize + 1);
        let json = inner
            .to_string(false)
            .map_err(|e| tok_err("serialise", e))?;
        let sha256 = hex::encode(Sha256::digest(json.as_bytes()));
        Ok(Tok {
            inner,
            bos_id,
            eos_id,
            pad_id,
            vocab_size,
            sha256,
            json,
        })
    }

    /// Writes the tokenizer as a standard `tokenizer.json` (Python `tokenizers` loads it as is).
    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, &self.json).map_err(|e| Error::io(path, e))
    }

    /// Encodes one text with no special tokens added.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| tok_err("encode", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids, keeping special tokens as text.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| tok_err("decode", e))
    }

    fn special_id(&self, s: Special) -> Result<u32> {
        match s {
            Special::Bos => self.bos_id.ok_or_else(|| {
                Error::Config("the format asks for BOS but the tokenizer has none".into())
            }),
            Special::Eos => Ok(self.eos_id),
            Special::Id(id) if (id as usize) < self.vocab_size => Ok(id),
            Special::Id(id) => Err(Error::Config(format!(
                "token id {id} is outside the vocabulary ({})",
                self.vocab_size
            ))),
        }
    }

    /// Encodes a rendered example piece by piece: a text piece is encoded on its own (never
    /// merged with its neighbours), so the loss flag of every token is exactly its piece's.
    pub fn encode_pieces(&self, pieces: &[Piece]) -> Result<Encoded> {
        let mut out = Encoded::default();
        for p in pieces {
            match p {
                Piece::Text { text, loss } => {
                    let ids = self.encode_text(text)?;
                    out.loss
                        .extend(std::iter::repeat_n(u8::from(*loss), ids.len()));
                    out.tokens.extend(ids);
                }
                Piece::Special { token, loss } => {
                    out.tokens.push(self.special_id(*token)?);
                    out.loss.push(u8::from(*loss));
                }
            }
        }
        Ok(out)
    }
}

/// Cuts an example to `max_len` tokens from the given side; returns how many tokens were removed.
pub fn truncate(ex: &mut Encoded, max_len: usize, side: Side) -> usize {
    let n = ex.tokens.len();
    if n <= max_len {
        return 0;
    }
    let cut = n - max_len;
    match side {
        Side::Right => {
            ex.tokens.truncate(max_len);
            ex.loss.truncate(max_len);
        }
        Side::Left => {
            ex.tokens.drain(..cut);
            ex.loss.drain(..cut);
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{AlpacaFormat, Format, KoalaFormat};
    use crate::schema::{Preference, Turn};

    pub(crate) fn small_tok() -> Tok {
        let corpus = [
            "BEGINNING OF CONVERSATION: USER: Hello! GPT:Hi! How can I help you?",
            "What is the largest animal on earth? The blue whale is the largest animal.",
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
            "Ünïcödé テキスト and emoji 🐨 koala, tab\tand newline\n text.",
        ];
        Tok::new(
            train::train_byte_level_bpe(corpus.iter().copied(), 400).unwrap(),
            None,
        )
        .unwrap()
    }

    fn targets(tok: &Tok, ex: &Encoded) -> String {
        let ids: Vec<u32> = ex
            .tokens
            .iter()
            .zip(&ex.loss)
            .filter(|(_, l)| **l == 1)
            .map(|(t, _)| *t)
            .collect();
        tok.decode(&ids).unwrap()
    }

    /// Decoding the loss-masked tokens gives back exactly the assistant texts, each with EOS.
    #[test]
    fn round_trip_of_the_trained_tokens() {
        let tok = small_tok();
        let turns = [
            Turn::user("Hello!"),
            Turn::assistant(" Hi! How can I help you?\n"),
            Turn::user("Largest animal?"),
            Turn::assistant_with("Ünïcödé 🐨 whale", Preference::Negative),
        ];
        let f = Format::Koala(KoalaFormat::default());
        let ex = tok
            .encode_pieces(&f.render_turns(&turns, "{}").unwrap())
            .unwrap();
        assert_eq!(
            targets(&tok, &ex),
            " Hi! How can I help you?\n</s>Ünïcödé 🐨 whale</s>"
        );
        let f = Format::Alpaca(AlpacaFormat::default());
        let ex = tok
            .encode_pieces(
                &f.render_turns(
                    &[
                        Turn::user("Name a koala fact."),
                        Turn::assistant("They sleep 20h."),
                    ],
                    "{}",
                )
                .unwrap(),
            )
            .unwrap();
        assert_eq!(targets(&tok, &ex), "They sleep 20h.</s>");
        assert_eq!(ex.tokens[0], tok.bos_id.unwrap());
        assert_eq!(*ex.tokens.last().unwrap(), tok.eos_id);
    }

    /// Pieces are never merged: the tokens of each piece decode to the piece, and the token
    /// sequence is the concatenation of the pieces' own encodings, even where encoding the joined
    /// text would merge across the boundary.
    #[test]
    fn pieces_never_merge_across_a_mask_boundary() {
        let tok = small_tok();
        // Boundaries inside words that the corpus (and so the merges) knows whole.
        let pieces = vec![
            Piece::prompt("What is the lar"),
            Piece::target("gest animal"),
            Piece::prompt(" on ea"),
            Piece::target("rth?"),
        ];
        let ex = tok.encode_pieces(&pieces).unwrap();
        let mut expect_tokens = Vec::new();
        let mut expect_loss = Vec::new();
        for p in &pieces {
            if let Piece::Text { text, loss } = p {
                let ids = tok.encode_text(text).unwrap();
                assert_eq!(tok.decode(&ids).unwrap(), *text);
                expect_loss.extend(std::iter::repeat_n(u8::from(*loss), ids.len()));
                expect_tokens.extend(ids);
            }
        }
        assert_eq!(ex.tokens, expect_tokens);
        assert_eq!(ex.loss, expect_loss);
        // And the joined encoding differs, so the test does exercise a boundary.
        let joined = tok
            .encode_text("What is the largest animal on earth?")
            .unwrap();
        assert_ne!(joined, ex.tokens);
    }

    #[test]
    fn truncation_sides() {
        let mut ex = Encoded {
            tokens: vec![1, 2, 3, 4, 5],
            loss: vec![0, 0, 1, 1, 1],
        };
        let mut l = ex.clone();
        assert_eq!(truncate(&mut ex, 3, Side::Right), 2);
        assert_eq!(ex.tokens, vec![1, 2, 3]);
        assert_eq!(ex.loss, vec![0, 0, 1]);
        assert_eq!(truncate(&mut l, 3, Side::Left), 2);
        assert_eq!(l.tokens, vec![3, 4, 5]);
        assert_eq!(truncate(&mut l, 3, Side::Left), 0);
    }

    #[test]
    fn a_tokenizer_without_eos_is_a_config_error() {
        let t = tokenizers::Tokenizer::new(tokenizers::models::bpe::BPE::default());
        let e = Tok::new(t, None).unwrap_err().to_string();
        assert!(e.contains("end-of-sequence"), "{e}");
    }
}
