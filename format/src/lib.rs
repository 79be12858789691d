//! Conversation types and prompt formats: Koala/EasyLM, the EasyLM `fields` interpreter, Alpaca,
//! and Jinja chat templates. No polars: training (`koala-pipeline`, which re-exports this crate as
//! `koala_pipeline::format`), the chat server and the evaluation all render through this one crate.
//!
//! A format turns one [`Conversation`] into a list of [`Piece`]s: spans of text or single special
//! tokens, each with a loss flag. The tokenizer encodes every text piece on its own, so a loss
//! boundary is always a token boundary, exactly as EasyLM tokenises each field separately.
//! [`Format::generation_prompt`] gives the pieces a model continues from to answer (the
//! conversation so far and the format's answer header, with no target and no EOS at the end).
//! Byte layouts are documented in `docs/formats.md`.
//!
//! # Example
//! ```
//! use koala_format::{Format, KoalaFormat, Turn, render_text};
//! let f = Format::Koala(KoalaFormat { add_bos: false, ..KoalaFormat::default() });
//! let pieces = f.render_turns(&[Turn::user("Hello!"), Turn::assistant("Hi! How can I help you?")], "{}").unwrap();
//! assert_eq!(
//!     render_text(&pieces, "<s>", "</s>"),
//!     "BEGINNING OF CONVERSATION: USER: Hello! GPT:Hi! How can I help you?</s>"
//! );
//! let prompt = f.generation_prompt(&[Turn::user("Hello!")]).unwrap();
//! assert_eq!(render_text(&prompt, "<s>", "</s>"), "BEGINNING OF CONVERSATION: USER: Hello! GPT:");
//! ```
use serde::{Deserialize, Serialize};

pub mod alpaca;
pub mod chat_template;
pub mod conversation;
pub mod error;
pub mod fields;
pub mod koala;

pub use alpaca::AlpacaFormat;
pub use chat_template::ChatTemplateFormat;
pub use conversation::{Conversation, Preference, Role, Turn};
pub use error::{Error, Result};
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
    /// Sets whether the piece's tokens carry loss.
    pub fn set_loss(&mut self, value: bool) {
        match self {
            Piece::Text { loss, .. } | Piece::Special { loss, .. } => *loss = value,
        }
    }
    /// The piece's text; empty for a special token.
    pub fn text(&self) -> &str {
        match self {
            Piece::Text { text, .. } => text,
            Piece::Special { .. } => "",
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
    /// An unrenderable verdict with a stable reason key and an explanation.
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
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

    /// The prompt that asks a model for the next answer: the pieces of `turns` (the conversation
    /// so far, its last turn normally a user turn) followed by exactly what the format puts before
    /// an assistant answer, with no target and no EOS at the end. Every piece has `loss: false`.
    /// Pieces split where training splits them, so that tokenising them one by one gives the
    /// tokens the model was trained on.
    ///
    /// - Koala: `BEGINNING OF CONVERSATION: USER: {q} GPT:`, past answers followed by EOS, BOS
    ///   first when `add_bos` (the bytes of [`KoalaFormat::generation_prompt`]).
    /// - Alpaca: the `PROMPT_DICT` prompt of the one user turn, ending with `### Response:`;
    ///   anything but a single user turn is [`Unrenderable`] (`not_single_turn`).
    /// - Chat template: the template rendered with `add_generation_prompt=true`, as
    ///   `apply_chat_template(..., add_generation_prompt=True)`.
    pub fn generation_prompt(&self, turns: &[Turn]) -> Result<Vec<Piece>, Unrenderable> {
        self.generation_prompt_with_meta(turns, "{}")
    }

    /// [`Format::generation_prompt`] with a `meta` JSON object, from which Alpaca reads
    /// `instruction` and `input` (an eval-set row that keeps them apart); the other formats
    /// ignore it.
    pub fn generation_prompt_with_meta(
        &self,
        turns: &[Turn],
        meta: &str,
    ) -> Result<Vec<Piece>, Unrenderable> {
        match self {
            Format::Koala(f) => Ok(f.generation_pieces(turns)),
            Format::Alpaca(f) => f.generation_prompt(turns, meta),
            Format::ChatTemplate(f) => f.generation_prompt(turns),
        }
    }

    /// [`Format::generation_prompt`] as one string, special tokens written as `bos` and `eos`
    /// (a chat template writes its special tokens as text already).
    pub fn render_generation_text(
        &self,
        turns: &[Turn],
        bos: &str,
        eos: &str,
    ) -> Result<String, Unrenderable> {
        Ok(render_text(&self.generation_prompt(turns)?, bos, eos))
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
