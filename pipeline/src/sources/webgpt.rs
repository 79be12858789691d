//! OpenAI WebGPT comparisons (`comparisons.jsonl`, or the Hugging Face Parquet conversion): one line
//! per comparison with `question.full_text`, `quotes_0`/`quotes_1` (`{title[], extract[]}`),
//! `answer_0`/`answer_1` and `score_0`/`score_1`.
//!
//! Each answer becomes its own row (`webgpt/{file key}/{line}/{0|1}`): the user turn is the question
//! and, when the answer had quotes, one of Koala's five "use these sources" prefixes (chosen by a
//! hash of the row id, so stable) followed by the quotes as numbered context,
//! `[n] title: {title} content: {extract}`, one per line. The higher score is `positive`, the lower
//! `negative`. Ties are kept with both answers `unrated` ([`TiePolicy::KeepUnrated`], the default)
//! or skipped ([`TiePolicy::Skip`], what Koala's script does).
//! `meta`: `answer_index`, `score`, `other_score`, `tie`, `question_id`, `dataset`, `quotes`.
//!
//! [`TiePolicy::KeepUnrated`]: super::TiePolicy::KeepUnrated
//! [`TiePolicy::Skip`]: super::TiePolicy::Skip
use serde_json::{Map, Value, json};

use super::TiePolicy;
use super::record::*;
use crate::schema::{Preference, Turn};

/// Koala's WebGPT task prefixes (`create_hf_data_v2.py`, `WEBGPT['task']`).
pub const QUOTE_PREFIXES: [&str; 5] = [
    "Quote the following sources in your answer: ",
    "Use the following sources in your answer: ",
    "You may use the following sources in your answer: ",
    "You may quote the following sources in your answer: ",
    "The following sources may be helpful: ",
];

pub(crate) fn parse(ctx: &RecordCtx, v: &Value) -> FieldResult<Parsed> {
    let obj = as_object(v, "")?;
    let question = obj_field(obj, "", "question")?;
    let full_text = str_field(question, "question", "full_text")?;
    let qid = question.get("id").and_then(Value::as_str);
    let dataset = question.get("dataset").and_then(Value::as_str);
    let mut sides = Vec::with_capacity(2);
    for i in 0..2 {
        let quotes = quotes(obj, &format!("quotes_{i}"))?;
        let answer = str_field(obj, "", &format!("answer_{i}"))?;
        let score = num_field(obj, "", &format!("score_{i}"))?;
        sides.push((quotes, answer, score));
    }
    let tie = sides[0].2 == sides[1].2;
    if tie && ctx.opts.webgpt_ties == TiePolicy::Skip {
        return Ok(Parsed::Skipped("webgpt tie"));
    }
    let base = ctx.position_id();
    let rows = sides
        .iter()
        .enumerate()
        .map(|(i, (quotes, answer, score))| {
            let other = sides[1 - i].2;
            let preference = if tie {
                Preference::Unrated
            } else if *score > other {
                Preference::Positive
            } else {
                Preference::Negative
            };
            let id = format!("{base}/{i}");
            let user = render_prompt(full_text, quotes, &id);
            let meta = json!({
                "answer_index": i, "score": score, "other_score": other, "tie": tie,
                "question_id": qid, "dataset": dataset, "quotes": quotes.len(),
            });
            ctx.row(
                id,
                "unsplit",
                vec![Turn::user(user), Turn::assistant_with(*answer, preference)],
                meta,
            )
        })
        .collect();
    Ok(Parsed::Rows(rows))
}

fn quotes<'v>(obj: &'v Map<String, Value>, key: &str) -> FieldResult<Vec<(&'v str, &'v str)>> {
    let q = obj_field(obj, "", key)?;
    let titles = str_list(list_field(q, key, "title")?, &path(key, "title"))?;
    let extracts = str_list(list_field(q, key, "extract")?, &path(key, "extract"))?;
    if titles.len() != extracts.len() {
        return Err(FieldError::new(
            path(key, "extract"),
            format!(
                "{} extracts for {} titles (they must pair up)",
                extracts.len(),
                titles.len()
            ),
        ));
    }
    Ok(titles.into_iter().zip(extracts).collect())
}

/// The user turn: the question, then the quotes as numbered context.
pub fn render_prompt(question: &str, quotes: &[(&str, &str)], id: &str) -> String {
    if quotes.is_empty() {
        return question.to_string();
    }
    let mut s = String::with_capacity(
        question.len()
            + 64
            + quotes
                .iter()
                .map(|(t, c)| t.len() + c.len() + 24)
                .sum::<usize>(),
    );
    s.push_str(question);
    s.push_str("\n\n");
    s.push_str(QUOTE_PREFIXES[pick(id, QUOTE_PREFIXES.len())]);
    for (n, (title, content)) in quotes.iter().enumerate() {
        s.push_str(&format!("\n[{}] title: {title} content: {content}", n + 1));
    }
    s
}
