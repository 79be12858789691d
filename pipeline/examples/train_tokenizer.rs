//! Trains the pipeline's byte-level BPE on a text file (one document per line) and saves a
//! `tokenizer.json`. Used by `scripts/gen_tokenizer_fixtures.py` to make the "trained tokenizer"
//! fixture that Python `tokenizers` then encodes independently.
//!
//! `cargo run -p koala-pipeline --example train_tokenizer -- CORPUS.txt VOCAB_SIZE OUT.json`
use std::path::Path;

use koala_pipeline::tokenize::{Tok, train::train_byte_level_bpe};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, corpus, vocab, out] = args.as_slice() else {
        return Err("usage: train_tokenizer CORPUS.txt VOCAB_SIZE OUT.json".into());
    };
    let text = std::fs::read_to_string(corpus)?;
    let tok = train_byte_level_bpe(text.lines(), vocab.parse()?)?;
    Tok::new(tok, None)?.save(Path::new(out))?;
    Ok(())
}
