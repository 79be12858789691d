//! The rows that flow between the eval commands, one JSON object per line:
//!
//! `eval generate` → [`ResponseRow`]s → `eval rate` / `eval judge` → [`RatingRow`]s → `eval report`.
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Token counts, as the OpenAI API reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// One system's answer to one eval prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseRow {
    pub prompt_id: String,
    /// The eval set: `koala`, `self-instruct`, or the file it came from.
    pub set: String,
    pub prompt: String,
    /// The system's name (`NAME` of `--system NAME=SPEC`).
    pub system: String,
    pub response: String,
    /// `stop`, `length`, `content_filter`, or what the endpoint said.
    pub finish_reason: String,
    pub latency_ms: u64,
    /// `None` where the system did not report it (`file:` systems).
    pub usage: Option<Usage>,
}

/// A pairwise verdict, from side A's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Winner {
    A,
    B,
    Tie,
    BothBad,
}

impl Winner {
    /// A's score in a battle: 1 for a win, 0 for a loss, ½ for a tie or both-bad.
    pub fn score_a(self) -> f64 {
        match self {
            Winner::A => 1.0,
            Winner::B => 0.0,
            Winner::Tie | Winner::BothBad => 0.5,
        }
    }
}

/// Which system was shown on the left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    A,
    B,
}

/// One rating: a person's vote in `eval rate`, or the judge's verdict in `eval judge`
/// (`rater: "judge:MODEL"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RatingRow {
    pub prompt_id: String,
    pub system_a: String,
    pub system_b: String,
    pub winner: Winner,
    pub rater: String,
    /// The system shown on the left: `a` or `b`.
    pub left: Side,
    /// Unix time of the vote, in milliseconds.
    pub ts: i64,
    /// The eval set of the prompt, where known (for the per-set breakdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
}

/// Reads a JSONL file of `T`, skipping blank lines. A bad line is an error naming the file and
/// the line.
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(&line).map_err(|e| Error::Record {
            file: path.display().to_string(),
            line: i as u64 + 1,
            message: e.to_string(),
        })?;
        out.push(row);
    }
    Ok(out)
}

/// Writes one row as a JSON line (no flush: the caller decides).
pub fn write_jsonl_row<T: Serialize>(w: &mut impl Write, row: &T) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, row)?;
    w.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rating_rows_use_the_documented_names() {
        let r = RatingRow {
            prompt_id: "koala_0".into(),
            system_a: "alpaca".into(),
            system_b: "koala".into(),
            winner: Winner::BothBad,
            rater: "ann".into(),
            left: Side::B,
            ts: 1,
            set: None,
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(
            j,
            r#"{"prompt_id":"koala_0","system_a":"alpaca","system_b":"koala","winner":"both_bad","rater":"ann","left":"b","ts":1}"#
        );
        assert_eq!(serde_json::from_str::<RatingRow>(&j).unwrap(), r);
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.jsonl");
        std::fs::write(&p, "\n{\"prompt_id\":1}\n").unwrap();
        let e = read_jsonl::<RatingRow>(&p).unwrap_err().to_string();
        assert!(e.contains("r.jsonl:2:"), "{e}");
    }
}
