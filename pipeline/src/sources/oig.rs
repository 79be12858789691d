//! OIG (LAION Open Instruction Generalist) `unified_*.jsonl`: `{"text": "<human>: … <bot>: …",
//! "metadata": {…}}`. The subset is the file name without `unified_` (Koala uses
//! grade_school_math_instructions, poetry_2_song, plot_screenplay_books_dialog and hc3_human).
//!
//! The text is split on the `<human>:` / `<bot>:` tags and each message trimmed, as Koala's
//! `split_human_gpt` does. The turns must start with `<human>:`, alternate, and end with `<bot>:`;
//! anything else is an error on field `text` for that row.
//! Id: `oig/{file key}/{line}`; `meta` holds `subset` and the row's `metadata`.
use serde_json::{Value, json};

use super::record::*;
use crate::schema::Turn;

const HUMAN: &str = "<human>:";
const BOT: &str = "<bot>:";

pub(crate) fn parse(ctx: &RecordCtx, v: &Value) -> FieldResult<Parsed> {
    let obj = as_object(v, "")?;
    let text = str_field(obj, "", "text")?;
    let turns = split_turns(text).map_err(|m| FieldError::new("text", m))?;
    let file = ctx.key.rsplit('/').next().unwrap_or(ctx.key);
    let subset = file.strip_prefix("unified_").unwrap_or(file);
    let meta = json!({"subset": subset, "metadata": obj.get("metadata")});
    Ok(Parsed::Rows(vec![ctx.row(
        ctx.position_id(),
        "unsplit",
        turns,
        meta,
    )]))
}

/// Splits `<human>: … <bot>: …` text into turns.
pub fn split_turns(text: &str) -> Result<Vec<Turn>, String> {
    // (position, is_bot, tag length)
    let mut tags: Vec<(usize, bool, usize)> = Vec::new();
    for (pos, _) in text.match_indices('<') {
        let rest = &text[pos..];
        if rest.starts_with(HUMAN) {
            tags.push((pos, false, HUMAN.len()));
        } else if rest.starts_with(BOT) {
            tags.push((pos, true, BOT.len()));
        }
    }
    let Some(&(first, first_bot, _)) = tags.first() else {
        return Err("no <human>: or <bot>: tag".into());
    };
    if !text[..first].trim().is_empty() {
        return Err("text before the first <human>: tag".into());
    }
    if first_bot {
        return Err("the first turn is <bot>:, not <human>:".into());
    }
    let mut turns = Vec::with_capacity(tags.len());
    for (k, &(pos, bot, len)) in tags.iter().enumerate() {
        if k > 0 && tags[k - 1].1 == bot {
            let tag = if bot { BOT } else { HUMAN };
            return Err(format!(
                "turn {} repeats {tag} (turns must alternate)",
                k + 1
            ));
        }
        let end = tags.get(k + 1).map_or(text.len(), |t| t.0);
        let msg = text[pos + len..end].trim();
        turns.push(if bot {
            Turn::assistant(msg)
        } else {
            Turn::user(msg)
        });
    }
    if tags.last().is_some_and(|t| !t.1) {
        return Err("the last <human>: turn has no <bot>: answer".into());
    }
    Ok(turns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_trims() {
        let t = split_turns("<human>: a <b>\n<bot>: b\n<human>:c<bot>: d ").unwrap();
        let texts: Vec<_> = t.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, ["a <b>", "b", "c", "d"]);
    }

    #[test]
    fn rejects_bad_structure() {
        assert!(split_turns("hello").unwrap_err().contains("no <human>"));
        assert!(
            split_turns("x <human>: a <bot>: b")
                .unwrap_err()
                .contains("before")
        );
        assert!(
            split_turns("<bot>: a <human>: b")
                .unwrap_err()
                .contains("first")
        );
        assert!(
            split_turns("<human>: a <human>: b <bot>: c")
                .unwrap_err()
                .contains("alternate")
        );
        assert!(
            split_turns("<human>: a <bot>: b <human>: c")
                .unwrap_err()
                .contains("no <bot>")
        );
    }
}
