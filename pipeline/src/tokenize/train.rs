//! Training a byte-level BPE tokenizer with `tokenizers`' own trainer, for when the user brings
//! none (the demo, tests). The result is a standard `tokenizer.json`: byte-level pre-tokenizer
//! (GPT-2 regex, no prefix space) and decoder, no normalizer (text is kept byte for byte), all
//! 256 byte symbols in the alphabet (no unknown token is ever needed), and the special tokens
//! `<s>`, `</s>`, `<pad>` at ids 0, 1, 2.
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};

/// The special tokens of a trained tokenizer, in id order.
pub const SPECIAL_TOKENS: [&str; 3] = ["<s>", "</s>", "<pad>"];

/// Trains a byte-level BPE tokenizer of (at most) `vocab_size` entries on the given texts.
pub fn train_byte_level_bpe<'a, I>(texts: I, vocab_size: usize) -> Result<Tokenizer>
where
    I: Iterator<Item = &'a str> + Send,
{
    let min = 256 + SPECIAL_TOKENS.len();
    if vocab_size < min {
        return Err(Error::Config(format!(
            "vocab_size {vocab_size} is too small for a byte-level BPE (at least {min})"
        )));
    }
    let trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .special_tokens(
            SPECIAL_TOKENS
                .iter()
                .map(|t| AddedToken::from(t.to_string(), true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer = TrainerWrapper::from(trainer);
    let mut tok = Tokenizer::new(ModelWrapper::from(BPE::default()));
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, false, true)));
    tok.with_decoder(Some(ByteLevel::new(false, false, true)));
    tok.train(&mut trainer, texts)
        .map_err(|e| Error::Invariant(format!("tokenizer training failed: {e}")))?;
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specials_first_and_every_byte_encodable() {
        let corpus = ["the cat sat on the mat", "the dog sat on the log"];
        let tok = train_byte_level_bpe(corpus.iter().copied(), 300).unwrap();
        for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
            assert_eq!(tok.token_to_id(s), Some(i as u32));
        }
        let text = "never seen: Ωμέγα \u{0} 🐨";
        let enc = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
        assert!(tok.get_vocab_size(true) <= 300);
        assert!(train_byte_level_bpe(corpus.iter().copied(), 100).is_err());
    }

    #[test]
    fn training_is_deterministic() {
        let corpus: Vec<String> = (0..200)
            .map(|i| {
                format!(
                    "sample {i} of the koala corpus, with words {} {}",
                    i * 7,
                    i % 13
                )
            })
            .collect();
        let a = train_byte_level_bpe(corpus.iter().map(String::as_str), 400).unwrap();
        let b = train_byte_level_bpe(corpus.iter().map(String::as_str), 400).unwrap();
        assert_eq!(a.to_string(false).unwrap(), b.to_string(false).unwrap());
    }
}
