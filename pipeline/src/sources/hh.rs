//! Anthropic HH-RLHF (`{helpful-base,harmless-base,…}/{train,test}.jsonl.gz`): one line per
//! comparison, `{"chosen": "\n\nHuman: … \n\nAssistant: …", "rejected": …}`.
//!
//! Each transcript is split on `"\n\nHuman:"` / `"\n\nAssistant:"` (multi-turn is kept, each
//! message trimmed) and becomes its own row: `hh/{file key}/{line}/chosen` and `…/rejected`. The
//! chosen transcript's final assistant turn is `positive`, the rejected one's `negative`. Earlier
//! assistant turns are `unrated`: they are the shared context of the comparison, identical in both
//! transcripts, and the label says nothing about them. (Koala's script marks every assistant turn
//! of a transcript with its side; the markers stage can do that from `meta.side`.)
//! The split is the file name (`train`/`test`), the subset its directory.
//! A transcript that does not start with `\n\nHuman:` or does not end with an assistant turn is an
//! error on that field, and the whole comparison is quarantined.
use serde_json::{Value, json};

use super::record::*;
use crate::schema::{Preference, Turn};

const HUMAN: &str = "\n\nHuman:";
const ASSISTANT: &str = "\n\nAssistant:";

pub(crate) fn parse(ctx: &RecordCtx, v: &Value) -> FieldResult<Parsed> {
    let obj = as_object(v, "")?;
    let chosen = str_field(obj, "", "chosen")?;
    let rejected = str_field(obj, "", "rejected")?;
    let chosen =
        split_transcript(chosen, Preference::Positive).map_err(|m| FieldError::new("chosen", m))?;
    let rejected = split_transcript(rejected, Preference::Negative)
        .map_err(|m| FieldError::new("rejected", m))?;
    let mut parts = ctx.key.rsplit('/');
    let split = parts
        .next()
        .filter(|s| matches!(*s, "train" | "test"))
        .unwrap_or("unsplit");
    let subset = parts.next();
    let base = ctx.position_id();
    let rows = [("chosen", chosen), ("rejected", rejected)]
        .into_iter()
        .map(|(side, turns)| {
            let meta = json!({"side": side, "subset": subset});
            ctx.row(format!("{base}/{side}"), split, turns, meta)
        })
        .collect();
    Ok(Parsed::Rows(rows))
}

/// Splits one transcript; the final assistant turn gets `last`, earlier ones `unrated`.
pub fn split_transcript(text: &str, last: Preference) -> Result<Vec<Turn>, String> {
    if !text.starts_with(HUMAN) {
        return Err(r#"the transcript does not start with "\n\nHuman:""#.into());
    }
    let mut marks: Vec<(usize, bool, usize)> = Vec::new();
    for (pos, _) in text.match_indices("\n\n") {
        let rest = &text[pos..];
        if rest.starts_with(HUMAN) {
            marks.push((pos, false, HUMAN.len()));
        } else if rest.starts_with(ASSISTANT) {
            marks.push((pos, true, ASSISTANT.len()));
        }
    }
    let mut turns: Vec<Turn> = Vec::with_capacity(marks.len());
    for (k, &(pos, assistant, len)) in marks.iter().enumerate() {
        let end = marks.get(k + 1).map_or(text.len(), |m| m.0);
        let msg = text[pos + len..end].trim();
        turns.push(if assistant {
            Turn::assistant_with(msg, Preference::Unrated)
        } else {
            Turn::user(msg)
        });
    }
    match marks.last() {
        Some(&(_, true, _)) => {}
        _ => return Err("the transcript ends with a Human turn, not an Assistant one".into()),
    }
    if let Some(t) = turns.last_mut() {
        t.preference = last;
    }
    Ok(turns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Role;

    #[test]
    fn multi_turn_marks_only_the_last_answer() {
        let t = split_transcript(
            "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: more\n\nAssistant: sure",
            Preference::Negative,
        )
        .unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(t[1].role, Role::Assistant);
        assert_eq!(t[1].preference, Preference::Unrated);
        assert_eq!(t[3].text, "sure");
        assert_eq!(t[3].preference, Preference::Negative);
    }

    #[test]
    fn empty_final_answer_is_kept() {
        let t = split_transcript("\n\nHuman: q\n\nAssistant:", Preference::Positive).unwrap();
        assert_eq!(t[1].text, "");
    }

    #[test]
    fn bad_transcripts() {
        assert!(split_transcript("Human: q\n\nAssistant: a", Preference::Positive).is_err());
        assert!(split_transcript("\n\nHuman: q", Preference::Positive).is_err());
    }
}
