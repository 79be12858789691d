//! Stanford Alpaca's prompt templates (`PROMPT_DICT` in tatsu-lab/stanford_alpaca `train.py`),
//! character for character. The target is `output + EOS`; the prompt is masked; a BOS (masked)
//! comes first, as the LLaMA tokenizer adds one in Alpaca's `preprocess`.
//!
//! Instruction and input come from the row's `meta` JSON (`instruction`, `input`) when the loader
//! kept them apart; otherwise the single user turn is the instruction and the no-input template is
//! used. Alpaca is single-turn: other conversations are skipped (`not_single_turn`), and so are
//! negative answers (`negative_preference`), since the template has no way to mark them.
use serde::{Deserialize, Serialize};

use super::{Piece, Special, Unrenderable};
use crate::schema::{Preference, Role, Turn};

/// `PROMPT_DICT["prompt_input"]`.
pub const PROMPT_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:";
/// `PROMPT_DICT["prompt_no_input"]`.
pub const PROMPT_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:";

/// Options of the Alpaca format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlpacaFormat {
    /// Start with BOS (no loss), as the LLaMA tokenizer does in Alpaca's training script.
    pub add_bos: bool,
}

impl Default for AlpacaFormat {
    fn default() -> Self {
        AlpacaFormat { add_bos: true }
    }
}

/// Fills a template (Python `str.format_map` with the two keys Alpaca uses).
pub fn fill(instruction: &str, input: &str) -> String {
    if input.is_empty() {
        PROMPT_NO_INPUT.replacen("{instruction}", instruction, 1)
    } else {
        // Replace `{input}` first so that an instruction containing "{input}" stays literal.
        let (head, tail) = PROMPT_INPUT
            .split_once("{input}")
            .unwrap_or((PROMPT_INPUT, ""));
        format!(
            "{}{input}{tail}",
            head.replacen("{instruction}", instruction, 1)
        )
    }
}

impl AlpacaFormat {
    /// Renders a single-turn conversation.
    pub fn render(&self, turns: &[Turn], meta: &str) -> Result<Vec<Piece>, Unrenderable> {
        let (user, answer) = match turns {
            [u, a] if u.role == Role::User && a.role == Role::Assistant => (u, a),
            _ => {
                return Err(Unrenderable::new(
                    "not_single_turn",
                    format!(
                        "Alpaca needs one user and one assistant turn, got {}",
                        turns.len()
                    ),
                ));
            }
        };
        if answer.preference == Preference::Negative {
            return Err(Unrenderable::new(
                "negative_preference",
                "the Alpaca template cannot mark a negative answer",
            ));
        }
        let meta: serde_json::Value = serde_json::from_str(meta).unwrap_or_default();
        let prompt = match (
            meta.get("instruction").and_then(|v| v.as_str()),
            meta.get("input").and_then(|v| v.as_str()),
        ) {
            (Some(instruction), input) => fill(instruction, input.unwrap_or("")),
            (None, _) => fill(&user.text, ""),
        };
        let mut out = Vec::with_capacity(4);
        if self.add_bos {
            out.push(Piece::Special {
                token: Special::Bos,
                loss: false,
            });
        }
        out.push(Piece::prompt(prompt));
        if !answer.text.is_empty() {
            out.push(Piece::target(answer.text.clone()));
        }
        out.push(Piece::Special {
            token: Special::Eos,
            loss: true,
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::render_text;

    #[test]
    fn without_input() {
        let p = AlpacaFormat::default()
            .render(
                &[
                    Turn::user("Give three tips for staying healthy."),
                    Turn::assistant("1. Eat well."),
                ],
                "{}",
            )
            .unwrap();
        assert_eq!(
            render_text(&p, "<s>", "</s>"),
            "<s>Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nGive three tips for staying healthy.\n\n### Response:1. Eat well.</s>"
        );
        assert_eq!(p[2], Piece::target("1. Eat well."));
        assert!(!p[1].loss());
    }

    #[test]
    fn with_input_from_meta() {
        let meta = r#"{"instruction":"Translate to French.","input":"Good {input} morning"}"#;
        let p = AlpacaFormat { add_bos: false }
            .render(
                &[
                    Turn::user("Translate to French. Good {input} morning"),
                    Turn::assistant("Bonjour"),
                ],
                meta,
            )
            .unwrap();
        assert_eq!(
            render_text(&p, "<s>", "</s>"),
            "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\nTranslate to French.\n\n### Input:\nGood {input} morning\n\n### Response:Bonjour</s>"
        );
    }

    #[test]
    fn empty_input_in_meta_uses_the_no_input_template() {
        let meta = r#"{"instruction":"Say hi.","input":""}"#;
        let p = AlpacaFormat { add_bos: false }
            .render(&[Turn::user("Say hi."), Turn::assistant("Hi")], meta)
            .unwrap();
        assert!(
            render_text(&p, "", "")
                .starts_with("Below is an instruction that describes a task. Write")
        );
    }

    #[test]
    fn multi_turn_and_negative_are_skipped() {
        let f = AlpacaFormat::default();
        let e = f
            .render(
                &[
                    Turn::user("a"),
                    Turn::assistant("b"),
                    Turn::user("c"),
                    Turn::assistant("d"),
                ],
                "{}",
            )
            .unwrap_err();
        assert_eq!(e.reason, "not_single_turn");
        let e = f
            .render(
                &[
                    Turn::user("a"),
                    Turn::assistant_with("b", Preference::Negative),
                ],
                "{}",
            )
            .unwrap_err();
        assert_eq!(e.reason, "negative_preference");
    }
}
