//! Prompt formats: Koala/EasyLM, the EasyLM `fields` interpreter, Alpaca, and Jinja chat templates.
//!
//! A format turns one [`Conversation`] into a list of [`Piece`]s: spans of text or single special
//! tokens, each with a loss flag. The tokenizer ([`crate::tokenize`]) encodes every text piece on its
//! own, so a loss boundary is always a token boundary, exactly as EasyLM tokenises each field
//! separately. Byte layouts are documented in `docs/formats.md`.
//!
//! # Example
//! ```
//! use koala_pipeline::format::{Format, KoalaFormat, render_text};
//! use koala_pipeline::schema::Turn;
//! let f = Format::Koala(KoalaFormat { add_bos: false, ..KoalaFormat::default() });
//! let pieces = f.render_turns(&[Turn::user("Hello!"), Turn::assistant("Hi! How can I help you?")], "{}").unwrap();
//! assert_eq!(
//!     render_text(&pieces, "<s>", "</s>"),
//!     "BEGINNING OF CONVERSATION: USER: Hello! GPT:Hi! How can I help you?</s>"
//! );
//! ```
use serde::{Deserialize, Serialize};

use crate::schema::{Conversation, Turn};

pub mod alpaca;
pub mod chat_template;
pub mod fields;
pub mod koala;

pub use alpaca::AlpacaFormat;
pub use chat_template::ChatTemplateFormat;
pub use fields::FieldsSpec;
pub use koala::KoalaFormat;

/// A special token named by role rather than by text; the tokenizer resolves it to an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Special {
    /// The tokenizer's beginning-of-sequence token.
    Bos,
    /// The tokenizer's end-of-sequence token.
    Eos,
    /// A literal token id (EasyLM's `<|123|>` field).
    Id(u32),
}

/// One span of a rendered example.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Piece {
    /// Text, tokenised on its own (no automatic BOS/EOS).
    Text { text: String, loss: bool },
    /// Exactly one special token.
    Special { token: Special, loss: bool },
}

impl Piece {
    /// A text piece that is trained on.
    pub fn target(text: impl Into<String>) -> Self {
        Piece::Text {
            text: text.into(),
            loss: true,
        }
    }
    /// A text piece that is only context (loss mask 0).
    pub fn prompt(text: impl Into<String>) -> Self {
        Piece::Text {
            text: text.into(),
            loss: false,
        }
    }
    /// Whether the piece's tokens carry loss.
    pub fn loss(&self) -> bool {
        match self {
            Piece::Text { loss, .. } | Piece::Special { loss, .. } => *loss,
        }
    }
}

/// Why a conversation has no rendering in a format (it is skipped and counted, not an error).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Unrenderable {
    /// A short stable key used in reports (`not_single_turn`, `negative_preference`, …).
    pub reason: &'static str,
    /// A human explanation.
    pub detail: String,
}

impl Unrenderable {
    pub(crate) fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Unrenderable {
            reason,
            detail: detail.into(),
        }
    }
}

/// A prompt format with its options.
#[derive(Clone, Debug)]
pub enum Format {
    /// Koala as trained with EasyLM: `BEGINNING OF CONVERSATION: USER: … GPT:…</s>`.
    Koala(KoalaFormat),
    /// Stanford Alpaca's `PROMPT_DICT` templates.
    Alpaca(AlpacaFormat),
    /// A Hugging Face `chat_template` (Jinja), rendered with minijinja.
    ChatTemplate(Box<ChatTemplateFormat>),
}

impl Format {
    /// The short name written to the shard manifest.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Koala(_) => "koala",
            Format::Alpaca(_) => "alpaca",
            Format::ChatTemplate(_) => "chat-template",
        }
    }

    /// Renders one conversation.
    pub fn render(&self, conv: &Conversation) -> Result<Vec<Piece>, Unrenderable> {
        self.render_turns(&conv.turns, &conv.meta)
    }

    /// Renders turns (with the row's `meta` JSON, which Alpaca reads `instruction`/`input` from).
    pub fn render_turns(&self, turns: &[Turn], meta: &str) -> Result<Vec<Piece>, Unrenderable> {
        let pieces = match self {
            Format::Koala(f) => f.render(turns),
            Format::Alpaca(f) => f.render(turns, meta),
            Format::ChatTemplate(f) => f.render(turns),
        }?;
        if !pieces.iter().any(Piece::loss) {
            return Err(Unrenderable::new(
                "no_target",
                "the conversation has no assistant turn to train on",
            ));
        }
        Ok(pieces)
    }
}

/// Joins pieces into one string, writing special tokens as the given strings (a debugging and
/// test view: the tokenizer never sees this string, it encodes the pieces one by one).
pub fn render_text(pieces: &[Piece], bos: &str, eos: &str) -> String {
    let mut s = String::new();
    for p in pieces {
        match p {
            Piece::Text { text, .. } => s.push_str(text),
            Piece::Special { token, .. } => match token {
                Special::Bos => s.push_str(bos),
                Special::Eos => s.push_str(eos),
                Special::Id(id) => s.push_str(&format!("<|{id}|>")),
            },
        }
    }
    s
}
