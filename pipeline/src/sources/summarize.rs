//! OpenAI summarize-from-feedback comparisons (`comparisons/batch*.json`, JSON lines despite the
//! name): `info` (`post` or, for CNN/DM batches, `article`; `title`, `subreddit`), `summaries[2]`
//! (`text`, `policy`), `choice`, `split`.
//!
//! Each summary becomes its own row (`summarize/{file key}/{line}/{0|1}`): the user turn is one of
//! Koala's eight summary task prefixes followed by the post, the prefix chosen by a hash of the
//! record's position id (`summarize/{file key}/{line}`), so both rows of a comparison share the
//! same prompt and the choice is identical on every run. The assistant turn is the summary with
//! its leading blank removed (Koala's `lstrip`); the chosen one is `positive`, the other
//! `negative`. Split: `train` → `train`, `valid1`/`valid2`/`validation` → `validation`, `test` →
//! `test`, absent → `unsplit` (the native value stays in `meta.native_split`).
use serde_json::{Value, json};

use super::record::*;
use crate::schema::{Preference, Turn};

/// Koala's summary task prefixes (`create_hf_data_v2.py`, `SUMMARY['task']`).
pub const TASK_PREFIXES: [&str; 8] = [
    "Write a summary of the following article: ",
    "Generate a summary of the following text: ",
    "Summarize the following article: ",
    "Summarize the following text: ",
    "Write a summary of the following text: ",
    "Here is a news article, please summarize it: ",
    "Please write a summary of the following paragraph: ",
    "Please summarize the following paragraph: ",
];

pub(crate) fn parse(ctx: &RecordCtx, v: &Value) -> FieldResult<Parsed> {
    let obj = as_object(v, "")?;
    let info = obj_field(obj, "", "info")?;
    let post = match (info.get("post"), info.get("article")) {
        (Some(Value::String(p)), _) => p.as_str(),
        (_, Some(Value::String(a))) => a.as_str(),
        _ => str_field(info, "info", "post")?,
    };
    let opt_str = |k: &str| info.get(k).and_then(Value::as_str);
    let summaries = list_field(obj, "", "summaries")?;
    if summaries.len() != 2 {
        return Err(FieldError::new(
            "summaries",
            format!("expected 2 summaries, found {}", summaries.len()),
        ));
    }
    let choice = num_field(obj, "", "choice")?;
    if choice != 0.0 && choice != 1.0 {
        return Err(FieldError::new(
            "choice",
            format!("expected 0 or 1, found {choice}"),
        ));
    }
    let choice = choice as usize;
    let native_split = match obj.get("split") {
        None | Some(Value::Null) => None,
        Some(_) => Some(str_field(obj, "", "split")?),
    };
    let split = match native_split {
        None => "unsplit",
        Some("train") => "train",
        Some("test") => "test",
        Some(s) if s.starts_with("valid") => "validation",
        Some(other) => {
            return Err(FieldError::new("split", format!("unknown split {other:?}")));
        }
    };
    let base = ctx.position_id();
    let prompt = format!("{}{post}", TASK_PREFIXES[pick(&base, TASK_PREFIXES.len())]);
    let mut rows = Vec::with_capacity(2);
    for (i, s) in summaries.iter().enumerate() {
        let at = format!("summaries[{i}]");
        let s = as_object(s, &at)?;
        let text = str_field(s, &at, "text")?.trim_start();
        let policy = s.get("policy").and_then(Value::as_str);
        let preference = if i == choice {
            Preference::Positive
        } else {
            Preference::Negative
        };
        let meta = json!({
            "summary_index": i, "chosen": i == choice, "policy": policy,
            "post_id": opt_str("id"), "title": opt_str("title"), "subreddit": opt_str("subreddit"),
            "native_split": native_split,
        });
        rows.push(ctx.row(
            format!("{base}/{i}"),
            split,
            vec![
                Turn::user(prompt.clone()),
                Turn::assistant_with(text, preference),
            ],
            meta,
        ));
    }
    Ok(Parsed::Rows(rows))
}
