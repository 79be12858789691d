//! Export in the Koala/EasyLM JSONL format (`docs/curation.md`, "Export").
//!
//! One JSON object per example, with the text keys of Koala's public scripts: `human_K`,
//! `gpt_K` (positive or unrated assistant turn K), `gpt_bad_K` (negative assistant turn K) and
//! `system_K`, the markers `marker_user`, `marker_gpt`, `marker_gpt_bad`, and `fields`, EasyLM's
//! comma-separated field spec in which `[...]` parts carry no loss:
//!
//! ```text
//! [marker_user+human_0+marker_gpt],gpt_1,<|eos|>,[marker_user+human_2+marker_gpt],gpt_3,<|eos|>
//! ```
//!
//! A user turn is followed by the marker of the assistant turn that answers it (so a rejected
//! reply is conditioned on `marker_gpt_bad`); each assistant turn is a loss field followed by
//! `<|eos|>`. `id` and `source` ride along for lineage (EasyLM ignores keys that `fields` does not
//! name).
//!
//! # Example
//! ```
//! use koala_pipeline::stages::export::koala_example;
//! use koala_pipeline::stages::markers::MarkersConfig;
//! use koala_pipeline::stages::view::TurnRef;
//! let t = |role, text, preference| TurnRef { role, text, preference };
//! let ex = koala_example("hh/1", "hh", &[t("user", "Hi", "unrated"), t("assistant", "Go away", "negative")],
//!                        &MarkersConfig::default());
//! assert_eq!(ex["fields"], "[marker_user+human_0+marker_gpt_bad],gpt_bad_1,<|eos|>");
//! assert_eq!(ex["gpt_bad_1"], "Go away");
//! ```
use std::io::Write;
use std::path::Path;

use polars::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};

use super::markers::MarkersConfig;
use super::mixture::MIX_SPLIT;
use rayon::prelude::*;

use super::view::{TurnRef, TurnsView};
use crate::error::{Error, Result};
use crate::schema::col;

/// Renders one conversation as a Koala/EasyLM example.
pub fn koala_example(
    id: &str,
    source: &str,
    turns: &[TurnRef<'_>],
    m: &MarkersConfig,
) -> Map<String, Value> {
    let mut ex = Map::new();
    ex.insert("id".into(), id.into());
    ex.insert("source".into(), source.into());
    ex.insert("marker_user".into(), m.user.as_str().into());
    ex.insert("marker_gpt".into(), m.positive.as_str().into());
    ex.insert("marker_gpt_bad".into(), m.negative.as_str().into());
    let marker_key = |t: &TurnRef| {
        if t.preference == "negative" {
            "marker_gpt_bad"
        } else {
            "marker_gpt"
        }
    };
    let mut fields: Vec<String> = Vec::new();
    for (k, t) in turns.iter().enumerate() {
        match t.role {
            "user" => {
                let key = format!("human_{k}");
                ex.insert(key.clone(), t.text.into());
                match turns.get(k + 1) {
                    Some(next) if next.role == "assistant" => {
                        fields.push(format!("[marker_user+{key}+{}]", marker_key(next)))
                    }
                    _ => fields.push(format!("[marker_user+{key}]")),
                }
            }
            "assistant" => {
                let key = if t.preference == "negative" {
                    format!("gpt_bad_{k}")
                } else {
                    format!("gpt_{k}")
                };
                ex.insert(key.clone(), t.text.into());
                if k == 0 || turns[k - 1].role != "user" {
                    fields.push(format!("[{}]", marker_key(t)));
                }
                fields.push(key);
                fields.push("<|eos|>".into());
            }
            _ => {
                let key = format!("system_{k}");
                ex.insert(key.clone(), t.text.into());
                fields.push(format!("[{key}]"));
            }
        }
    }
    ex.insert("fields".into(), fields.join(",").into());
    ex
}

/// Koala's evaluation layout for one conversation (`process_eval_data`): for each assistant
/// turn, the prompt so far (always with the positive marker) and the target text + `</s>`.
pub fn eval_pairs(turns: &[TurnRef<'_>], m: &MarkersConfig) -> Vec<(String, String)> {
    let mut prefix = m.beginning.clone();
    let mut out = Vec::new();
    for t in turns {
        match t.role {
            "user" => prefix.push_str(&format!(" {} {} {}", m.user, t.text, m.positive)),
            "assistant" => {
                let target = format!("{}</s>", t.text);
                out.push((prefix.clone(), target.clone()));
                prefix.push(' ');
                prefix.push_str(&target);
            }
            _ => {}
        }
    }
    out
}

/// Counts written by [`write_jsonl`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExportCounts {
    pub train: u64,
    pub eval: u64,
    pub eval_prompts: u64,
}

/// One JSONL line and the eval prompts its example contributes.
type RenderedLine = (Vec<u8>, Vec<(String, String)>);

fn create(path: &Path) -> Result<std::io::BufWriter<std::fs::File>> {
    Ok(std::io::BufWriter::new(
        std::fs::File::create(path).map_err(|e| Error::io(path, e))?,
    ))
}

/// Writes `train.jsonl` and `eval.jsonl` (and `eval_prompts.json`) from the kept table, which
/// must carry the [`MIX_SPLIT`] column. The order is a seeded shuffle when `shuffle`.
pub fn write_jsonl(
    kept: &DataFrame,
    m: &MarkersConfig,
    seed: u64,
    shuffle: bool,
    eval_prompts: bool,
    dir: &Path,
) -> Result<ExportCounts> {
    let view = TurnsView::new(kept)?;
    let ids = kept.column(col::ID)?.str()?.rechunk().into_owned();
    let sources = kept.column(col::SOURCE)?.str()?.rechunk().into_owned();
    let split = kept.column(MIX_SPLIT)?.str()?.rechunk().into_owned();
    let mut counts = ExportCounts::default();
    let mut prompts_prefix = Vec::new();
    let mut prompts_text = Vec::new();
    for (which, salt) in [("train", 11u64), ("eval", 12u64)] {
        let mut rows: Vec<usize> = (0..view.len())
            .filter(|&i| split.get(i) == Some(which))
            .collect();
        if shuffle {
            rows.shuffle(&mut ChaCha8Rng::seed_from_u64(
                seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ));
        }
        let path = dir.join(format!("{which}.jsonl"));
        let mut w = create(&path)?;
        // Lines are rendered in parallel, a block of rows at a time, and written in order.
        for block in rows.chunks(8192) {
            let rendered: Vec<Result<RenderedLine>> = block
                .par_iter()
                .map(|&i| {
                    let turns: Vec<TurnRef> = view.turns(i).collect();
                    let ex = koala_example(
                        ids.get(i).unwrap_or(""),
                        sources.get(i).unwrap_or(""),
                        &turns,
                        m,
                    );
                    let mut line = serde_json::to_vec(&Value::Object(ex))?;
                    line.push(b'\n');
                    let prompts = if which == "eval"
                        && eval_prompts
                        && !turns.iter().any(|t| t.preference == "negative")
                    {
                        eval_pairs(&turns, m)
                    } else {
                        Vec::new()
                    };
                    Ok((line, prompts))
                })
                .collect();
            for r in rendered {
                let (line, prompts) = r?;
                w.write_all(&line).map_err(|e| Error::io(&path, e))?;
                for (p, t) in prompts {
                    prompts_prefix.push(p);
                    prompts_text.push(t);
                }
            }
        }
        w.flush().map_err(|e| Error::io(&path, e))?;
        match which {
            "train" => counts.train = rows.len() as u64,
            _ => counts.eval = rows.len() as u64,
        }
    }
    if eval_prompts {
        let path = dir.join("eval_prompts.json");
        let mut w = create(&path)?;
        counts.eval_prompts = prompts_prefix.len() as u64;
        serde_json::to_writer(
            &mut w,
            &serde_json::json!({"prefix": prompts_prefix, "text": prompts_text}),
        )?;
        w.flush().map_err(|e| Error::io(&path, e))?;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t<'a>(role: &'a str, text: &'a str, preference: &'a str) -> TurnRef<'a> {
        TurnRef {
            role,
            text,
            preference,
        }
    }

    #[test]
    fn multi_turn_positive_matches_koala_chat_layout() {
        let turns = [
            t("user", "Hello!", "unrated"),
            t("assistant", "Hi.", "positive"),
            t("user", "Bye", "unrated"),
            t("assistant", "Bye!", "positive"),
        ];
        let ex = koala_example("sharegpt/1", "sharegpt", &turns, &MarkersConfig::default());
        assert_eq!(
            ex["fields"],
            "[marker_user+human_0+marker_gpt],gpt_1,<|eos|>,[marker_user+human_2+marker_gpt],gpt_3,<|eos|>"
        );
        assert_eq!(ex["marker_user"], "USER:");
        assert_eq!(ex["marker_gpt"], "GPT:");
        assert_eq!(ex["human_2"], "Bye");
        assert_eq!(ex["gpt_3"], "Bye!");
    }

    #[test]
    fn negative_reply_is_its_own_example_with_the_bad_marker() {
        // The loaders emit chosen and rejected as two rows: each renders as one example.
        let chosen = [
            t("user", "q", "unrated"),
            t("assistant", "good", "positive"),
        ];
        let rejected = [t("user", "q", "unrated"), t("assistant", "bad", "negative")];
        let m = MarkersConfig::default();
        let a = koala_example("hh/1/chosen", "hh", &chosen, &m);
        let b = koala_example("hh/1/rejected", "hh", &rejected, &m);
        assert_eq!(
            a["fields"],
            "[marker_user+human_0+marker_gpt],gpt_1,<|eos|>"
        );
        assert_eq!(
            b["fields"],
            "[marker_user+human_0+marker_gpt_bad],gpt_bad_1,<|eos|>"
        );
        assert_eq!(b["marker_gpt_bad"], "An Unhelpful Answer:");
        assert!(b.get("gpt_1").is_none());
    }

    #[test]
    fn system_and_unanswered_turns() {
        let turns = [
            t("system", "Be brief.", "unrated"),
            t("user", "a", "unrated"),
            t("user", "b", "unrated"),
            t("assistant", "c", "positive"),
            t("assistant", "d", "negative"),
        ];
        let ex = koala_example("x", "x", &turns, &MarkersConfig::default());
        assert_eq!(
            ex["fields"],
            "[system_0],[marker_user+human_1],[marker_user+human_2+marker_gpt],gpt_3,<|eos|>,[marker_gpt_bad],gpt_bad_4,<|eos|>"
        );
    }

    #[test]
    fn eval_pairs_use_the_positive_marker() {
        let turns = [
            t("user", "Hello!", "unrated"),
            t("assistant", "Hi.", "positive"),
            t("user", "Bye", "unrated"),
            t("assistant", "Bye!", "positive"),
        ];
        let p = eval_pairs(&turns, &MarkersConfig::default());
        assert_eq!(p[0].0, "BEGINNING OF CONVERSATION: USER: Hello! GPT:");
        assert_eq!(p[0].1, "Hi.</s>");
        assert_eq!(
            p[1].0,
            "BEGINNING OF CONVERSATION: USER: Hello! GPT: Hi.</s> USER: Bye GPT:"
        );
    }
}
