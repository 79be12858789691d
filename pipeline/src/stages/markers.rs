//! Stage 4, preference-marker conditioning (Keskar et al. / Koala).
//!
//! Every assistant turn is conditioned on the marker of its preference: `positive` (and
//! `unrated`: data without human feedback counts as positive) gets [`MarkersConfig::positive`]
//! (Koala: `"GPT:"`), `negative` gets [`MarkersConfig::negative`] (Koala: `"An Unhelpful
//! Answer:"`). The loaders emit a rejected reply as its own row, so a negative example is always
//! rendered as a separate training example ([`super::export`]). Evaluation prompts always use the
//! positive marker ([`Markers::prompt`]).
//!
//! Mode `po` (positive-only) drops every conversation with a negative assistant turn (reason
//! `negative_preference`, details `{"turn"}`); mode `pn` keeps them.
//!
//! # Example
//! ```
//! use koala_pipeline::schema::Preference;
//! use koala_pipeline::stages::markers::{Markers, MarkersConfig};
//! let m = Markers::new(MarkersConfig::default());
//! assert_eq!(m.marker_for(Preference::Negative), "An Unhelpful Answer:");
//! assert_eq!(m.marker_for(Preference::Unrated), "GPT:");
//! assert_eq!(m.prompt(&["Hello!"]), "BEGINNING OF CONVERSATION: USER: Hello! GPT:");
//! ```
use indicatif::ProgressBar;
use polars::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::view::TurnsView;
use super::{Stage, Verdict, add_verdicts, details};
use crate::error::Result;
use crate::schema::Preference;

/// Positive-only or positive+negative.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Po,
    Pn,
}

/// Configuration of [`Markers`] (TOML table `[markers]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MarkersConfig {
    /// `po` (drop negatives) or `pn` (keep them, with the negative marker).
    pub mode: Mode,
    /// The user marker.
    pub user: String,
    /// The marker of positive (and unrated) assistant turns.
    pub positive: String,
    /// The marker of negative assistant turns.
    pub negative: String,
    /// Prepended to evaluation prompts.
    pub beginning: String,
}

impl Default for MarkersConfig {
    fn default() -> Self {
        MarkersConfig {
            mode: Mode::Pn,
            user: "USER:".into(),
            positive: "GPT:".into(),
            negative: "An Unhelpful Answer:".into(),
            beginning: "BEGINNING OF CONVERSATION:".into(),
        }
    }
}

/// The marker stage.
pub struct Markers {
    pub config: MarkersConfig,
}

impl Markers {
    pub fn new(config: MarkersConfig) -> Self {
        Markers { config }
    }

    /// The assistant marker for a preference.
    pub fn marker_for(&self, p: Preference) -> &str {
        match p {
            Preference::Negative => &self.config.negative,
            Preference::Positive | Preference::Unrated => &self.config.positive,
        }
    }

    /// An evaluation prompt (EasyLM serving layout), always with the positive marker:
    /// `BEGINNING OF CONVERSATION: USER: q1 GPT: a1</s> USER: q2 GPT:` for `[q1, a1, q2]`
    /// (user and assistant texts alternate, starting with the user).
    pub fn prompt(&self, turns: &[&str]) -> String {
        let c = &self.config;
        let mut s = c.beginning.clone();
        for (k, t) in turns.iter().enumerate() {
            if k % 2 == 0 {
                s.push_str(&format!(" {} {} {}", c.user, t, c.positive));
            } else {
                s.push_str(&format!(" {t}</s>"));
            }
        }
        s
    }
}

impl Stage for Markers {
    fn name(&self) -> &'static str {
        "markers"
    }

    fn annotate_with_progress(&self, df: DataFrame, progress: &ProgressBar) -> Result<DataFrame> {
        let n = df.height();
        if self.config.mode == Mode::Pn {
            progress.inc(n as u64);
            return add_verdicts(df, &vec![None; n]);
        }
        let view = TurnsView::new(&df)?;
        let verdicts: Vec<Verdict> = (0..n)
            .into_par_iter()
            .with_max_len(super::view::ROW_TASK)
            .map(|i| {
                progress.inc(1);
                view.turns(i)
                    .position(|t| t.role == "assistant" && t.preference == "negative")
                    .map(|k| {
                        (
                            "negative_preference",
                            details(&[("turn", (k as u64).into())]),
                        )
                    })
            })
            .collect();
        add_verdicts(df, &verdicts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Conversation, Turn, to_dataframe};

    fn conv(id: &str, pref: Preference) -> Conversation {
        Conversation {
            id: id.into(),
            source: "hh".into(),
            split: "train".into(),
            turns: vec![Turn::user("q"), Turn::assistant_with("a", pref)],
            src_file: "f".into(),
            src_record: 1,
            meta: "{}".into(),
        }
    }

    #[test]
    fn po_drops_negative_rows_pn_keeps_them() {
        let rows = [
            conv("hh/1/chosen", Preference::Positive),
            conv("hh/1/rejected", Preference::Negative),
        ];
        let po = Markers::new(MarkersConfig {
            mode: Mode::Po,
            ..Default::default()
        })
        .run(to_dataframe(&rows).unwrap())
        .unwrap();
        assert_eq!(po.stats.kept, 1);
        assert_eq!(po.stats.dropped["negative_preference"], 1);
        let pn = Markers::new(MarkersConfig::default())
            .run(to_dataframe(&rows).unwrap())
            .unwrap();
        assert_eq!(pn.stats.kept, 2);
    }

    #[test]
    fn keskar_style_markers_are_configurable() {
        let m = Markers::new(MarkersConfig {
            positive: "a helpful answer:".into(),
            negative: "an unhelpful answer:".into(),
            ..Default::default()
        });
        assert_eq!(m.marker_for(Preference::Positive), "a helpful answer:");
        assert_eq!(m.marker_for(Preference::Negative), "an unhelpful answer:");
        assert_eq!(
            m.prompt(&["Hi", "Hello!", "Bye"]),
            "BEGINNING OF CONVERSATION: USER: Hi a helpful answer: Hello!</s> USER: Bye a helpful answer:"
        );
    }
}
