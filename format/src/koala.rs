//! The Koala chat format, byte for byte as EasyLM trains and serves it.
//!
//! The Koala data pipeline writes, per exchange, the fields
//! `[marker_user+human_K+marker_gpt],gpt_K,<|eos|>`; EasyLM's `TextProcessor` joins subfields with
//! `' '`, puts `prepend_text` (`BEGINNING OF CONVERSATION: `) before field 0, tokenises each field
//! separately and adds a leading BOS (no loss). EasyLM's chat server builds the same bytes:
//! `prepend + ("USER: " + prompt + " " + "GPT:") + response + "</s>"` per round. So one exchange is
//!
//! ```text
//! <s>│BEGINNING OF CONVERSATION: USER: Hello! GPT:│Hi! How can I help you?│</s>│USER: … GPT:│…│</s>
//!  0 │ 0 (masked)                                │ 1 (loss)              │ 1  │ 0          │1│ 1
//! ```
//!
//! A negative assistant turn (human feedback) uses `An Unhelpful Answer:` in place of `GPT:`.
//! A system turn has no place in the original format; like the curation stage's Koala JSONL
//! export (`[system_K]`), it is its own masked field.
use serde::{Deserialize, Serialize};

use crate::conversation::{Preference, Role, Turn};
use crate::{Piece, Special, Unrenderable};

/// Options of the Koala format; the defaults are the published ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KoalaFormat {
    /// Put before the first field (EasyLM `prepend_text` / `chat_prepend_text`).
    pub prepend_text: String,
    /// `USER:` (Koala's `marker_user`).
    pub user_marker: String,
    /// `GPT:` (Koala's `marker_gpt`).
    pub gpt_marker: String,
    /// `An Unhelpful Answer:` (Koala's `marker_gpt_bad`), used for negative turns.
    pub gpt_bad_marker: String,
    /// EasyLM's `subfield_separator`.
    pub separator: String,
    /// Start with BOS (no loss), as EasyLM's `add_bos_token` (default true) does.
    pub add_bos: bool,
}

impl Default for KoalaFormat {
    fn default() -> Self {
        KoalaFormat {
            prepend_text: "BEGINNING OF CONVERSATION: ".into(),
            user_marker: "USER:".into(),
            gpt_marker: "GPT:".into(),
            gpt_bad_marker: "An Unhelpful Answer:".into(),
            separator: " ".into(),
            add_bos: true,
        }
    }
}

impl KoalaFormat {
    fn marker(&self, t: &Turn) -> &str {
        match t.preference {
            Preference::Negative => &self.gpt_bad_marker,
            Preference::Positive | Preference::Unrated => &self.gpt_marker,
        }
    }

    /// Renders turns into pieces, one per EasyLM field of the Koala record that
    /// [`crate::fields::koala_example`] (and the curation stage's JSONL export) writes:
    /// `[marker_user+human_K+marker_gpt]` for a user turn answered by the next turn,
    /// `[marker_user+human_K]` for one that is not, `[marker_gpt]` before an assistant turn with
    /// no user turn before it, `[system_K]` for a system turn, then `gpt_K`, `<|eos|>`.
    /// `prepend_text` goes before the first field only.
    pub fn render(&self, turns: &[Turn]) -> Result<Vec<Piece>, Unrenderable> {
        let mut out = Vec::with_capacity(2 + 3 * turns.len());
        if self.add_bos {
            out.push(Piece::Special {
                token: Special::Bos,
                loss: false,
            });
        }
        let mut first = true;
        let mut field = |out: &mut Vec<Piece>, text: String, loss: bool| {
            let text = if std::mem::take(&mut first) {
                format!("{}{text}", self.prepend_text)
            } else {
                text
            };
            out.push(Piece::Text { text, loss });
        };
        for (k, t) in turns.iter().enumerate() {
            match t.role {
                Role::System => field(&mut out, t.text.clone(), false),
                Role::User => {
                    let mut text = format!("{}{}{}", self.user_marker, self.separator, t.text);
                    if let Some(next) = turns.get(k + 1).filter(|n| n.role == Role::Assistant) {
                        text.push_str(&self.separator);
                        text.push_str(self.marker(next));
                    }
                    field(&mut out, text, false);
                }
                Role::Assistant => {
                    if k == 0 || turns[k - 1].role != Role::User {
                        field(&mut out, self.marker(t).to_string(), false);
                    }
                    // An empty answer encodes to no tokens, as in EasyLM; keep only its EOS.
                    if !t.text.is_empty() {
                        field(&mut out, t.text.clone(), true);
                    }
                    out.push(Piece::Special {
                        token: Special::Eos,
                        loss: true,
                    });
                }
            }
        }
        Ok(out)
    }

    /// The pieces that ask the model for the next answer: the training layout of [`Self::render`]
    /// for `turns` followed by an empty positive answer, less that answer's EOS, with every piece
    /// masked. After a user turn this ends with `USER: {q} GPT:`, as EasyLM's chat server sends
    /// it (`chat_prepend_text + context + "USER: " + prompt + " " + "GPT:"`); past answers are
    /// followed by EOS; BOS comes first when `add_bos`. System turns, unanswered user turns and
    /// negative past answers are written as training writes them.
    pub fn generation_pieces(&self, turns: &[Turn]) -> Vec<Piece> {
        let mut all = Vec::with_capacity(turns.len() + 1);
        all.extend_from_slice(turns);
        all.push(Turn::assistant(""));
        // render() has no failure case for Koala.
        let mut out = self.render(&all).unwrap_or_default();
        debug_assert!(matches!(
            out.last(),
            Some(Piece::Special {
                token: Special::Eos,
                ..
            })
        ));
        out.pop();
        for p in &mut out {
            p.set_loss(false);
        }
        out
    }

    /// [`Self::generation_pieces`] as text, EOS written as `</s>` and no BOS:
    /// `BEGINNING OF CONVERSATION: USER: Hello! GPT:Hi! How can I help you?</s>USER: … GPT:`.
    pub fn generation_prompt(&self, turns: &[Turn]) -> String {
        crate::render_text(&self.generation_pieces(turns), "", "</s>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render_text;

    fn no_bos() -> KoalaFormat {
        KoalaFormat {
            add_bos: false,
            ..KoalaFormat::default()
        }
    }

    /// The two-round example of EasyLM's docs/koala.md, written out by hand.
    #[test]
    fn matches_the_easylm_docs_example() {
        let turns = [
            Turn::user("Hello!"),
            Turn::assistant("Hi! How can I help you?"),
            Turn::user("What is the largest animal on earth?"),
        ];
        let prompt = no_bos().generation_prompt(&turns[..1]);
        assert_eq!(prompt, "BEGINNING OF CONVERSATION: USER: Hello! GPT:");
        let prompt = no_bos().generation_prompt(&turns);
        assert_eq!(
            prompt,
            "BEGINNING OF CONVERSATION: USER: Hello! GPT:Hi! How can I help you?</s>USER: What is the largest animal on earth? GPT:"
        );
    }

    /// The same example through `Format::generation_prompt`: BOS first, the past answer's EOS as
    /// the special token, everything masked, no EOS at the end, and the bytes of the string form.
    #[test]
    fn generation_pieces_match_the_easylm_docs_example() {
        let turns = [
            Turn::user("Hello!"),
            Turn::assistant("Hi! How can I help you?"),
            Turn::user("What is the largest animal on earth?"),
        ];
        let f = crate::Format::Koala(KoalaFormat::default());
        let p = f.generation_prompt(&turns).unwrap();
        assert_eq!(
            p,
            vec![
                Piece::Special {
                    token: Special::Bos,
                    loss: false
                },
                Piece::prompt("BEGINNING OF CONVERSATION: USER: Hello! GPT:"),
                Piece::prompt("Hi! How can I help you?"),
                Piece::Special {
                    token: Special::Eos,
                    loss: false
                },
                Piece::prompt("USER: What is the largest animal on earth? GPT:"),
            ]
        );
        assert_eq!(
            f.render_generation_text(&turns, "<s>", "</s>").unwrap(),
            "<s>BEGINNING OF CONVERSATION: USER: Hello! GPT:Hi! How can I help you?</s>USER: What is the largest animal on earth? GPT:"
        );
        assert_eq!(
            render_text(&p, "", "</s>"),
            KoalaFormat::default().generation_prompt(&turns)
        );
        // The generation prompt is the training rendering up to the answer, piece for piece.
        let mut answered = turns.to_vec();
        answered.push(Turn::assistant("The blue whale."));
        let mut trained = KoalaFormat::default().render(&answered).unwrap();
        trained.truncate(p.len());
        trained.iter_mut().for_each(|x| x.set_loss(false));
        assert_eq!(trained, p);
        // With nothing said yet, the model answers from the bare prepend text.
        assert_eq!(
            no_bos().generation_prompt(&[]),
            "BEGINNING OF CONVERSATION: GPT:"
        );
        // A system turn is written as training writes it (its own field, no separator).
        assert_eq!(
            no_bos().generation_prompt(&[Turn::system("Be brief."), Turn::user("Hi")]),
            "BEGINNING OF CONVERSATION: Be brief.USER: Hi GPT:"
        );
    }

    #[test]
    fn pieces_and_masks_follow_the_koala_fields() {
        let turns = [
            Turn::user("Hello!"),
            Turn::assistant("Hi! How can I help you?"),
            Turn::user("What is the largest animal on earth?"),
            Turn::assistant("The blue whale."),
        ];
        let p = KoalaFormat::default().render(&turns).unwrap();
        let eos = Piece::Special {
            token: Special::Eos,
            loss: true,
        };
        assert_eq!(
            p,
            vec![
                Piece::Special {
                    token: Special::Bos,
                    loss: false
                },
                Piece::prompt("BEGINNING OF CONVERSATION: USER: Hello! GPT:"),
                Piece::target("Hi! How can I help you?"),
                eos.clone(),
                Piece::prompt("USER: What is the largest animal on earth? GPT:"),
                Piece::target("The blue whale."),
                eos,
            ]
        );
        assert_eq!(
            render_text(&p, "<s>", "</s>"),
            "<s>BEGINNING OF CONVERSATION: USER: Hello! GPT:Hi! How can I help you?</s>USER: What is the largest animal on earth? GPT:The blue whale.</s>"
        );
    }

    #[test]
    fn negative_turn_uses_the_unhelpful_marker() {
        let turns = [
            Turn::user("How do I boil an egg?"),
            Turn::assistant_with("No idea.", Preference::Negative),
        ];
        let p = no_bos().render(&turns).unwrap();
        assert_eq!(
            render_text(&p, "<s>", "</s>"),
            "BEGINNING OF CONVERSATION: USER: How do I boil an egg? An Unhelpful Answer:No idea.</s>"
        );
        assert_eq!(p[1], Piece::target("No idea."));
    }

    #[test]
    fn assistant_first_and_system_turns() {
        // Summarisation without user input: the field is `[marker_gpt]` alone.
        let p = no_bos().render(&[Turn::assistant("A summary.")]).unwrap();
        assert_eq!(
            render_text(&p, "<s>", "</s>"),
            "BEGINNING OF CONVERSATION: GPT:A summary.</s>"
        );
        let p = no_bos()
            .render(&[
                Turn::system("Be brief."),
                Turn::user("Hi"),
                Turn::assistant("Hello"),
            ])
            .unwrap();
        assert_eq!(
            render_text(&p, "<s>", "</s>"),
            "BEGINNING OF CONVERSATION: Be brief.USER: Hi GPT:Hello</s>"
        );
        // A user turn nobody answered is its own field, without the trailing separator.
        let p = no_bos()
            .render(&[Turn::user("a"), Turn::user("b"), Turn::assistant("c")])
            .unwrap();
        assert_eq!(
            p,
            vec![
                Piece::prompt("BEGINNING OF CONVERSATION: USER: a"),
                Piece::prompt("USER: b GPT:"),
                Piece::target("c"),
                Piece::Special {
                    token: Special::Eos,
                    loss: true
                },
            ]
        );
    }
}
