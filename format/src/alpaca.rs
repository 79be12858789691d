//! Stanford Alpaca's prompt templates (`PROMPT_DICT` in tatsu-lab/stanford_alpaca `train.py`),
//! character for character. The target is `output + EOS`; the prompt is masked; a BOS (masked)
//! comes first, as the LLaMA tokenizer adds one in Alpaca's `preprocess`.
//!
//! Instruction and input come from the row's `meta` JSON (`instruction`, `input`) when the loader
//! kept them apart; otherwise the single user turn is the instruction and the no-input template is
//! used. Alpaca is single-turn: other conversations are skipped (`not_single_turn`), and so are
//! negative answers (`negative_preference`), since the template has no way to mark them.
//!
//! The generation prompt ([`AlpacaFormat::generation_prompt`]) is the same prompt for one user
//! turn, ending with `### Response:` exactly as `PROMPT_DICT` does (Alpaca trains on
//! `prompt + output`, so the answer follows the colon directly). Anything but one user turn is
//! unrenderable (`not_single_turn`): earlier turns are not folded into the instruction, since
//! Alpaca was never trained on such prompts.
use serde::{Deserialize, Serialize};

use crate::conversation::{Preference, Role, Turn};
use crate::{Piece, Special, Unrenderable};

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

/// The prompt of one example: `instruction`/`input` from `meta` when it has an `instruction`,
/// otherwise the user turn as the instruction with no input.
fn prompt(user: &Turn, meta: &str) -> String {
    let meta: serde_json::Value = serde_json::from_str(meta).unwrap_or_default();
    match (
        meta.get("instruction").and_then(|v| v.as_str()),
        meta.get("input").and_then(|v| v.as_str()),
    ) {
        (Some(instruction), input) => fill(instruction, input.unwrap_or("")),
        (None, _) => fill(&user.text, ""),
    }
}

impl AlpacaFormat {
    /// The prompt that asks the model for the answer to one user turn: BOS (when `add_bos`) and
    /// the `PROMPT_DICT` prompt, ending with `### Response:`, all masked. `meta` is read as in
    /// [`Self::render`]. Anything but exactly one user turn is `not_single_turn`.
    pub fn generation_prompt(
        &self,
        turns: &[Turn],
        meta: &str,
    ) -> Result<Vec<Piece>, Unrenderable> {
        let user = match turns {
            [u] if u.role == Role::User => u,
            _ => {
                return Err(Unrenderable::new(
                    "not_single_turn",
                    format!(
                        "an Alpaca prompt is one user turn (the instruction), got {} turns: {}",
                        turns.len(),
                        turns
                            .iter()
                            .map(|t| t.role.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        };
        let mut out = Vec::with_capacity(2);
        if self.add_bos {
            out.push(Piece::Special {
                token: Special::Bos,
                loss: false,
            });
        }
        out.push(Piece::prompt(prompt(user, meta)));
        Ok(out)
    }

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
        let prompt = prompt(user, meta);
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
    use crate::render_text;

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

    /// `PROMPT_DICT` of tatsu-lab/stanford_alpaca `train.py`, written out here as it is there
    /// (string pieces and all), not taken from the constants under test.
    const STANFORD_NO_INPUT: &str = concat!(
        "Below is an instruction that describes a task. ",
        "Write a response that appropriately completes the request.\n\n",
        "### Instruction:\n{instruction}\n\n### Response:"
    );
    const STANFORD_INPUT: &str = concat!(
        "Below is an instruction that describes a task, paired with an input that provides further context. ",
        "Write a response that appropriately completes the request.\n\n",
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    );

    #[test]
    fn generation_prompt_is_the_stanford_prompt() {
        let f = crate::Format::Alpaca(AlpacaFormat::default());
        let turns = [Turn::user("Give three tips for staying healthy.")];
        let p = f.generation_prompt(&turns).unwrap();
        let want =
            STANFORD_NO_INPUT.replace("{instruction}", "Give three tips for staying healthy.");
        assert_eq!(
            p,
            vec![
                Piece::Special {
                    token: Special::Bos,
                    loss: false
                },
                Piece::prompt(want.as_str()),
            ]
        );
        assert!(want.ends_with("### Response:"));
        assert_eq!(
            f.render_generation_text(&turns, "<s>", "</s>").unwrap(),
            format!("<s>{want}")
        );
        // Training puts the answer right after the generation prompt.
        let trained = AlpacaFormat::default()
            .render(&[turns[0].clone(), Turn::assistant("1. Eat well.")], "{}")
            .unwrap();
        assert_eq!(trained[1], p[1]);

        // With instruction and input kept apart in meta.
        let meta = r#"{"instruction":"Translate to French.","input":"Good morning"}"#;
        let p = AlpacaFormat { add_bos: false }
            .generation_prompt(&[Turn::user("Translate to French. Good morning")], meta)
            .unwrap();
        let want = STANFORD_INPUT
            .replace("{instruction}", "Translate to French.")
            .replace("{input}", "Good morning");
        assert_eq!(p, vec![Piece::prompt(want)]);
    }

    #[test]
    fn generation_prompt_is_one_user_turn_only() {
        let f = AlpacaFormat::default();
        for turns in [
            vec![],
            vec![Turn::user("a"), Turn::assistant("b"), Turn::user("c")],
            vec![Turn::system("s"), Turn::user("c")],
            vec![Turn::assistant("b")],
        ] {
            let e = f.generation_prompt(&turns, "{}").unwrap_err();
            assert_eq!(e.reason, "not_single_turn", "{turns:?}");
        }
        let e = f
            .generation_prompt(
                &[Turn::user("a"), Turn::assistant("b"), Turn::user("c")],
                "{}",
            )
            .unwrap_err();
        assert!(e.detail.contains("user, assistant, user"), "{}", e.detail);
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
