//! HC3 English (`all.jsonl`, `reddit_eli5.jsonl`, …): one line per question with
//! `question`, `human_answers[]`, `chatgpt_answers[]` and, in `all.jsonl`, `source`.
//!
//! One row per answer: `[user: question, assistant: answer]`, the answer positive (no feedback).
//! Id: `hc3/{file key}/{id or line}/{human|chatgpt}/{answer index}`; `meta` records
//! `answer_kind`, `answer_index`, `hc3_source`. A question with no answer at all is an error.
use serde_json::{Value, json};

use super::record::*;
use crate::schema::Turn;

pub(crate) fn parse(ctx: &RecordCtx, v: &Value) -> FieldResult<Parsed> {
    let obj = as_object(v, "")?;
    let native = opt_id(obj, "", "id")?;
    let question = str_field(obj, "", "question")?;
    let human = str_list(list_field(obj, "", "human_answers")?, "human_answers")?;
    let chatgpt = str_list(list_field(obj, "", "chatgpt_answers")?, "chatgpt_answers")?;
    let hc3_source = match obj.get("source") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(v) => {
            return Err(FieldError::new(
                "source",
                format!("expected a string, found {}", kind(v)),
            ));
        }
    };
    if human.is_empty() && chatgpt.is_empty() {
        return Err(FieldError::new(
            "human_answers",
            "the question has no answers (human_answers and chatgpt_answers are both empty)",
        ));
    }
    let base = format!(
        "hc3/{}/{}",
        ctx.key,
        native.clone().unwrap_or_else(|| ctx.record.to_string())
    );
    let mut rows = Vec::with_capacity(human.len() + chatgpt.len());
    for (kind, answers) in [("human", &human), ("chatgpt", &chatgpt)] {
        for (i, answer) in answers.iter().enumerate() {
            let meta = json!({
                "answer_kind": kind,
                "answer_index": i,
                "hc3_source": hc3_source,
                "native_id": native,
            });
            rows.push(ctx.row(
                format!("{base}/{kind}/{i}"),
                "unsplit",
                vec![Turn::user(question), Turn::assistant(*answer)],
                meta,
            ));
        }
    }
    Ok(Parsed::Rows(rows))
}
