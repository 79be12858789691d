//! Token ids to text, incrementally, with stop strings.
//!
//! Each [`TextStream::push`] decodes all ids so far (so the tokenizer's decoder sees the whole
//! text, as a final decode would: leading-space rules, byte fallback, merges) and returns only
//! the new, settled part:
//! * text that ends in an incomplete UTF-8 sequence (the decoder's U+FFFD from a byte-fallback
//!   token still waiting for its other bytes) is held back until the character is complete;
//! * a suffix that could be the start of a stop string is held back until it is known not to be;
//! * when a stop string appears, even across token boundaries, the text before it is returned and
//!   the stream is finished: the stop string itself is never returned.
//!
//! So the deltas concatenate to exactly the final text, and no delta splits a character.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use koala_model::text::{TextStream, Tokenizer};
//! # let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_hf");
//! let tk = Tokenizer::from_file(dir.join("tokenizer.json"))?;
//! let ids = tk.encode("Hello world. USER: more", false)?.get_ids().to_vec();
//! let mut ts = TextStream::new(&tk, vec!["USER:".into()]);
//! let mut text = String::new();
//! for id in ids {
//!     let d = ts.push(id)?;
//!     text.push_str(&d.text);
//!     if d.stopped { break; }
//! }
//! assert_eq!(text, "Hello world. ");
//! # Ok(()) }
//! ```
pub use tokenizers::Tokenizer;

use crate::{Error, Result};

/// New text from one token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// The settled text this token added (may be empty).
    pub text: String,
    /// A stop string was found: generation should end; `text` ends right before it.
    pub stopped: bool,
}

/// Incremental detokeniser with stop strings.
pub struct TextStream<'a> {
    tk: &'a Tokenizer,
    ids: Vec<u32>,
    /// Bytes of the decoded text already returned.
    sent: usize,
    stops: Vec<String>,
    stopped: bool,
    last: String,
}

impl<'a> TextStream<'a> {
    /// A stream over `tk`; empty stop strings are ignored.
    pub fn new(tk: &'a Tokenizer, stops: Vec<String>) -> Self {
        TextStream {
            tk,
            ids: Vec::new(),
            sent: 0,
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            stopped: false,
            last: String::new(),
        }
    }

    /// Adds one token; returns the text it settled.
    pub fn push(&mut self, id: u32) -> Result<Delta> {
        if self.stopped {
            return Ok(Delta {
                text: String::new(),
                stopped: true,
            });
        }
        self.ids.push(id);
        let full = self
            .tk
            .decode(&self.ids, true)
            .map_err(|e| Error::Invalid(format!("decoding token {id}: {e}")))?;
        // A stop string may start up to (longest stop − 1) bytes before the settled end.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.sent.saturating_sub(longest);
        while from > 0 && !full.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| {
                full.get(from..)
                    .and_then(|t| t.find(s.as_str()))
                    .map(|i| from + i)
            })
            .min();
        let out = if let Some(at) = hit {
            self.stopped = true;
            full.get(self.sent..at.max(self.sent))
                .unwrap_or("")
                .to_string()
        } else {
            let mut end = full.len();
            if full.ends_with('\u{FFFD}') {
                end -= '\u{FFFD}'.len_utf8();
            }
            end = self.hold_back(&full, end);
            let t = full
                .get(self.sent..end.max(self.sent))
                .unwrap_or("")
                .to_string();
            if end > self.sent && full.is_char_boundary(end) {
                self.sent = end;
            }
            t
        };
        if self.stopped {
            self.sent = full.len();
        }
        self.last = full;
        Ok(Delta {
            text: out,
            stopped: self.stopped,
        })
    }

    /// The end of `full[..end]` after holding back a suffix that is a proper prefix of a stop.
    fn hold_back(&self, full: &str, end: usize) -> usize {
        let mut keep = end;
        for s in &self.stops {
            // Longest k < len(s) with full[end-k..end] == s[..k].
            for k in (1..s.len().min(end + 1)).rev() {
                if s.is_char_boundary(k)
                    && full.is_char_boundary(end - k)
                    && full[end - k..end] == s[..k]
                {
                    keep = keep.min(end - k);
                    break;
                }
            }
        }
        keep
    }

    /// Ends the stream: returns the text still held back (nothing after a stop string).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        self.stopped = true;
        let rest = self.last.get(self.sent..).unwrap_or("").to_string();
        self.sent = self.last.len();
        rest
    }

    /// Tokens pushed so far.
    pub fn token_count(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_hf");
        Tokenizer::from_file(dir.join("tokenizer.json")).unwrap()
    }

    /// Pushes `text`'s tokens one by one; returns the deltas and whether a stop string ended it.
    fn run(tk: &Tokenizer, text: &str, stops: &[&str]) -> (Vec<String>, bool) {
        let ids = tk.encode(text, false).unwrap().get_ids().to_vec();
        let mut ts = TextStream::new(tk, stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for id in ids {
            let d = ts.push(id).unwrap();
            out.push(d.text);
            if d.stopped {
                return (out, true);
            }
        }
        out.push(ts.finish());
        (out, false)
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        let tk = tokenizer();
        let text = "Koala 🐨 says héllo to 世界, naïve café ☕!";
        let ids = tk.encode(text, false).unwrap().get_ids().to_vec();
        // The byte-level vocabulary has no token for these characters: they span several tokens.
        assert!(ids.len() > text.split_whitespace().count() + 6, "{ids:?}");
        let (deltas, stopped) = run(&tk, text, &[]);
        assert!(!stopped);
        for d in &deltas {
            assert!(
                !d.contains('\u{FFFD}'),
                "a delta split a character: {deltas:?}"
            );
        }
        assert_eq!(deltas.concat(), text);
    }

    #[test]
    fn stop_strings_match_across_tokens_and_are_dropped() {
        let tk = tokenizer();
        let text = "Hello there. USER: what now? GPT: nothing";
        for stop in ["USER:", "R: wh", "."] {
            let (deltas, stopped) = run(&tk, text, &[stop, "never"]);
            assert!(stopped, "{stop}");
            assert_eq!(deltas.concat(), text[..text.find(stop).unwrap()], "{stop}");
        }
        // A held-back prefix of a stop string that never completes is returned at the end.
        let (deltas, stopped) = run(&tk, "ends with US", &["USER:"]);
        assert!(!stopped);
        assert_eq!(deltas.concat(), "ends with US");
        // A stop string that spans a multibyte character.
        let (deltas, stopped) = run(&tk, "tea ☕ time", &["☕ t"]);
        assert!(stopped);
        assert_eq!(deltas.concat(), "tea ");
    }
}
