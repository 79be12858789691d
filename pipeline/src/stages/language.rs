//! Stage 3, language filter (whatlang).
//!
//! A conversation is judged on *units* of text chosen by the [`Policy`]:
//! - `user-turns` (default): the user turns joined by newlines, one unit;
//! - `all-turns`: every turn is a unit and every unit must pass;
//! - `any-turn`: every turn is a unit and one passing unit is enough.
//!
//! Text shorter than [`LanguageConfig::min_chars`] (whatlang is unreliable on a few words) is
//! never judged alone: a short `user-turns` unit is replaced by the whole conversation, and in the
//! per-turn policies the short turns are judged together, as one unit made of the whole
//! conversation. A unit passes when whatlang's language is in [`LanguageConfig::keep`] (ISO 639-3
//! codes) with confidence ≥ [`LanguageConfig::min_confidence`]. Text in which whatlang finds no
//! language (digits, code) follows [`LanguageConfig::undetected`].
//!
//! Annotates every judged row with `language` and `language_score`; drops with reason
//! `language` (details `{"lang", "confidence", "turn"}`) or `language_undetected`.
//!
//! # Example
//! ```
//! use koala_pipeline::stages::language::detect;
//! let (lang, conf) = detect("Der schnelle braune Fuchs springt über den faulen Hund und läuft dann \
//!                             weiter in den Wald, wo er seine Freunde trifft.").unwrap();
//! assert_eq!(lang, "deu");
//! assert!(conf > 0.0 && conf <= 1.0);
//! ```
use indicatif::ProgressBar;
use polars::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::view::TurnsView;
use super::{Stage, Verdict, add_verdicts, covers, details};
use crate::error::{Error, Result};
use crate::schema::col;

/// How a conversation's turns are judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    UserTurns,
    AllTurns,
    AnyTurn,
}

/// What to do with text in which whatlang detects no language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Undetected {
    Keep,
    Drop,
}

/// Configuration of [`LanguageFilter`] (TOML table `[language]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LanguageConfig {
    pub enabled: bool,
    /// Sources that are filtered (`"*"` = all).
    pub sources: Vec<String>,
    /// Kept languages, ISO 639-3 codes as whatlang spells them (`eng`, `deu`, `cmn`, …).
    pub keep: Vec<String>,
    /// Minimum whatlang confidence for a unit to pass.
    pub min_confidence: f64,
    /// `user-turns`, `all-turns` or `any-turn`.
    pub policy: Policy,
    /// Texts shorter than this many characters are judged with the rest of the conversation.
    pub min_chars: usize,
    /// `keep` or `drop` conversations where no language is detected.
    pub undetected: Undetected,
    /// A unit whose detection whatlang itself calls unreliable is judged again together with
    /// the rest of the conversation (as short text is).
    pub unreliable_in_context: bool,
    /// The conversation context used for short or unreliable units is cut to this many bytes
    /// (at a character boundary): whatlang's verdict settles within a few hundred characters,
    /// and its cost grows with the text (a long ShareGPT chat is tens of KB). 0 = no cut.
    pub context_bytes: usize,
    /// Every unit is judged on at most its first this many bytes (at a character boundary):
    /// whatlang's cost grows with the text and its verdict settles on a sample of it, so a
    /// conversation with pages of pasted user text costs no more than one with a paragraph.
    /// 0 = the whole unit.
    pub sample_bytes: usize,
}

impl Default for LanguageConfig {
    fn default() -> Self {
        LanguageConfig {
            enabled: true,
            sources: vec!["*".into()],
            keep: vec!["eng".into()],
            min_confidence: 0.0,
            policy: Policy::UserTurns,
            min_chars: 25,
            undetected: Undetected::Keep,
            unreliable_in_context: true,
            context_bytes: 4096,
            sample_bytes: 4096,
        }
    }
}

/// whatlang's language (ISO 639-3) and confidence for `text`.
pub fn detect(text: &str) -> Option<(&'static str, f64)> {
    whatlang::detect(text).map(|i| (i.lang().code(), i.confidence()))
}

/// Like [`detect`], plus whatlang's own `is_reliable` verdict.
fn detect_full(text: &str) -> Option<(&'static str, f64, bool)> {
    whatlang::detect(text).map(|i| (i.lang().code(), i.confidence(), i.is_reliable()))
}

/// `text` cut to at most `cap` bytes, at a character boundary.
fn cut_at(text: &str, cap: usize) -> &str {
    if text.len() <= cap {
        return text;
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `parts` joined by newlines, stopping once `cap` bytes are reached and cut to `cap` (at a
/// character boundary): the same text as joining everything and then cutting, without copying
/// the parts past the cut.
fn join_capped<'a>(parts: impl Iterator<Item = &'a str>, cap: usize) -> String {
    let mut s = String::new();
    for (i, p) in parts.enumerate() {
        if i > 0 {
            if s.len() >= cap {
                break;
            }
            s.push('\n');
        }
        let room = cap.saturating_sub(s.len());
        let kept = cut_at(p, room);
        s.push_str(kept);
        if kept.len() < p.len() {
            break;
        }
    }
    s
}

/// The language stage.
pub struct LanguageFilter {
    config: LanguageConfig,
}

/// One judged unit: turn index (`None` = the whole conversation or the joined user turns),
/// detection result.
type Judged = (Option<usize>, Option<(&'static str, f64)>);

impl LanguageFilter {
    /// Checks the language codes.
    pub fn new(config: LanguageConfig) -> Result<Self> {
        for code in &config.keep {
            if whatlang::Lang::from_code(code.as_str()).is_none() {
                return Err(Error::Config(format!(
                    "language.keep: unknown language code {code:?} (use ISO 639-3 as whatlang: \"eng\", \"deu\", …)"
                )));
            }
        }
        Ok(LanguageFilter { config })
    }

    fn passes(&self, det: Option<(&'static str, f64)>) -> bool {
        match det {
            None => self.config.undetected == Undetected::Keep,
            Some((lang, conf)) => {
                conf >= self.config.min_confidence && self.config.keep.iter().any(|k| k == lang)
            }
        }
    }

    /// Judges one conversation given as `(role, text)` turns. Returns the verdict and the
    /// language annotation.
    pub fn judge<'a>(
        &self,
        turns: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> (Verdict, Option<(&'static str, f64)>) {
        let turns: Vec<(&str, &str)> = turns.collect();
        let min = self.config.min_chars;
        let cap = match self.config.context_bytes {
            0 => usize::MAX,
            n => n,
        };
        let sample = match self.config.sample_bytes {
            0 => usize::MAX,
            n => n,
        };
        let whole = || join_capped(turns.iter().map(|t| t.1), cap);
        // A unit that whatlang cannot judge reliably is judged with the whole conversation.
        let in_context = |text: &str| -> Option<(&'static str, f64)> {
            match detect_full(text) {
                Some((_, _, false)) if self.config.unreliable_in_context => detect(&whole()),
                d => d.map(|(l, c, _)| (l, c)),
            }
        };
        let units: Vec<Judged> = match self.config.policy {
            Policy::UserTurns => {
                let users =
                    join_capped(turns.iter().filter(|t| t.0 == "user").map(|t| t.1), sample);
                let det = if users.trim().chars().count() < min {
                    detect(&whole())
                } else {
                    in_context(&users)
                };
                vec![(None, det)]
            }
            Policy::AllTurns | Policy::AnyTurn => {
                let mut units: Vec<Judged> = Vec::new();
                let mut any_short = false;
                for (k, t) in turns.iter().enumerate() {
                    if t.1.trim().chars().count() < min {
                        any_short = true;
                    } else {
                        units.push((Some(k), in_context(cut_at(t.1, sample))));
                    }
                }
                if any_short || units.is_empty() {
                    units.push((None, detect(&whole())));
                }
                units
            }
        };
        let pass: Vec<bool> = units.iter().map(|u| self.passes(u.1)).collect();
        let ok = match self.config.policy {
            Policy::AnyTurn => pass.iter().any(|p| *p),
            _ => pass.iter().all(|p| *p),
        };
        // Annotate with the failing unit when dropping, else with the first unit.
        let shown = if ok {
            0
        } else {
            pass.iter().position(|p| !p).unwrap_or(0)
        };
        let (turn, det) = units[shown];
        if ok {
            return (None, det);
        }
        let turn_v = turn.map_or(serde_json::Value::Null, |t| (t as u64).into());
        let verdict = match det {
            None => ("language_undetected", details(&[("turn", turn_v)])),
            Some((lang, conf)) => (
                "language",
                details(&[
                    ("lang", lang.into()),
                    ("confidence", ((conf * 1e4).round() / 1e4).into()),
                    ("turn", turn_v),
                ]),
            ),
        };
        (Some(verdict), det)
    }
}

impl Stage for LanguageFilter {
    fn name(&self) -> &'static str {
        "language"
    }

    fn annotate_with_progress(
        &self,
        mut df: DataFrame,
        progress: &ProgressBar,
    ) -> Result<DataFrame> {
        let n = df.height();
        let view = TurnsView::new(&df)?;
        let sources = df.column(col::SOURCE)?.str()?.rechunk().into_owned();
        let results: Vec<(Verdict, Option<(&'static str, f64)>)> = (0..n)
            .into_par_iter()
            .with_max_len(super::view::ROW_TASK)
            .map(|i| {
                progress.inc(1);
                if !self.config.enabled
                    || !covers(&self.config.sources, sources.get(i).unwrap_or(""))
                {
                    return (None, None);
                }
                self.judge(view.turns(i).map(|t| (t.role, t.text)))
            })
            .collect();
        let langs: StringChunked = results.iter().map(|r| r.1.map(|d| d.0)).collect();
        let scores: Float64Chunked = results.iter().map(|r| r.1.map(|d| d.1)).collect();
        df.with_column(langs.with_name("language".into()).into_column())?;
        df.with_column(scores.with_name("language_score".into()).into_column())?;
        let verdicts: Vec<Verdict> = results.into_iter().map(|r| r.0).collect();
        add_verdicts(df, &verdicts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EN: &str = "Could you please explain to me how photosynthesis works in green plants, and why it matters so much for all life on our planet?";
    const DE: &str =
        "Kannst du mir bitte erklären, wie die Photosynthese in Pflanzen funktioniert?";
    const FR: &str = "Peux-tu m'expliquer comment fonctionne la photosynthèse chez les plantes ?";

    fn f(policy: Policy) -> LanguageFilter {
        LanguageFilter::new(LanguageConfig {
            policy,
            ..Default::default()
        })
        .unwrap()
    }

    fn reason(v: &Verdict) -> Option<&'static str> {
        v.as_ref().map(|v| v.0)
    }

    #[test]
    fn capped_join_equals_join_then_cut() {
        let parts = ["héllo wörld", "", "ünïcödé ✓ text", "tail"];
        let joined = parts.join("\n");
        for cap in 0..joined.len() + 3 {
            let want = cut_at(&joined, cap);
            assert_eq!(join_capped(parts.iter().copied(), cap), want, "cap {cap}");
        }
        assert_eq!(join_capped(std::iter::empty(), 10), "");
    }

    #[test]
    fn long_user_text_is_judged_on_a_sample() {
        // Pages of German, then far more English: the 4 KiB sample is German, the whole text
        // is English.
        let text = format!("{} {}", DE.repeat(60), EN.repeat(400));
        assert_eq!(detect(&text).map(|d| d.0), Some("eng"));
        assert_eq!(detect(cut_at(&text, 4096)).map(|d| d.0), Some("deu"));
        let lang = |f: &LanguageFilter| {
            let conv = [("user", text.as_str()), ("assistant", "ok")];
            f.judge(conv.into_iter()).1.map(|d| d.0)
        };
        assert_eq!(lang(&f(Policy::UserTurns)), Some("deu"));
        let whole = LanguageFilter::new(LanguageConfig {
            sample_bytes: 0,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(lang(&whole), Some("eng"));
    }

    #[test]
    fn english_kept_german_dropped_with_details() {
        let filt = f(Policy::UserTurns);
        assert_eq!(
            reason(
                &filt
                    .judge([("user", EN), ("assistant", "Sure.")].into_iter())
                    .0
            ),
            None
        );
        let (v, det) = filt.judge([("user", DE), ("assistant", "Gerne.")].into_iter());
        assert_eq!(reason(&v), Some("language"));
        assert_eq!(det.unwrap().0, "deu");
        assert!(v.unwrap().1.starts_with(r#"{"confidence":"#));
    }

    #[test]
    fn short_user_text_is_judged_with_the_conversation() {
        // "ok thanks" alone is not reliably English; with the conversation it is.
        let filt = f(Policy::UserTurns);
        let turns = [
            ("user", "ok thanks"),
            (
                "assistant",
                "You are welcome. Photosynthesis converts light energy into chemical energy stored in sugar.",
            ),
        ];
        assert_eq!(reason(&filt.judge(turns.into_iter()).0), None);
    }

    #[test]
    fn context_is_cut_at_context_bytes() {
        // A short user turn, then English, then a long Russian reply: the first 4 KB of the
        // conversation are English (Latin script); the whole of it is mostly Cyrillic.
        let ru =
            "Объясни мне, пожалуйста, как работает фотосинтез у зелёных растений. ".repeat(200);
        let en = EN.repeat(40);
        let turns = [
            ("user", "ok thanks"),
            ("assistant", en.as_str()),
            ("user", "ok"),
            ("assistant", ru.as_str()),
        ];
        let cut = f(Policy::UserTurns);
        assert_eq!(cut.config.context_bytes, 4096);
        assert_eq!(reason(&cut.judge(turns.into_iter()).0), None);
        let whole = LanguageFilter::new(LanguageConfig {
            context_bytes: 0,
            ..LanguageConfig::default()
        })
        .unwrap();
        assert_eq!(reason(&whole.judge(turns.into_iter()).0), Some("language"));
        // A cut inside a multi-byte character stays on a boundary.
        let umlauts = "ü".repeat(3000);
        let tiny = LanguageFilter::new(LanguageConfig {
            context_bytes: 7,
            ..LanguageConfig::default()
        })
        .unwrap();
        let _ = tiny.judge([("user", "ok"), ("assistant", umlauts.as_str())].into_iter());
    }

    #[test]
    fn unreliable_detection_is_judged_in_context() {
        // whatlang calls this English sentence French, unreliably (seen in the ShareGPT sample).
        let q = "Write a haiku about autumn rain.";
        let (lang, _, reliable) = detect_full(q).unwrap();
        assert!(lang != "eng" && !reliable, "{lang} {reliable}");
        let turns = [
            ("user", q),
            (
                "assistant",
                "Cold rain on the eaves, red maple leaves drift and stick to the garden stones.",
            ),
        ];
        assert_eq!(
            reason(&f(Policy::UserTurns).judge(turns.into_iter()).0),
            None
        );
        let alone = LanguageFilter::new(LanguageConfig {
            unreliable_in_context: false,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(reason(&alone.judge(turns.into_iter()).0), Some("language"));
    }

    #[test]
    fn policies_differ_on_mixed_conversations() {
        let mixed = [("user", EN), ("assistant", FR)];
        assert_eq!(
            reason(&f(Policy::UserTurns).judge(mixed.into_iter()).0),
            None
        );
        assert_eq!(
            reason(&f(Policy::AllTurns).judge(mixed.into_iter()).0),
            Some("language")
        );
        assert_eq!(reason(&f(Policy::AnyTurn).judge(mixed.into_iter()).0), None);
        let all_fr = [("user", DE), ("assistant", FR)];
        assert_eq!(
            reason(&f(Policy::AnyTurn).judge(all_fr.into_iter()).0),
            Some("language")
        );
    }

    #[test]
    fn keep_list_and_confidence_are_configurable() {
        let de = LanguageFilter::new(LanguageConfig {
            keep: vec!["deu".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(reason(&de.judge([("user", DE)].into_iter()).0), None);
        let strict = LanguageFilter::new(LanguageConfig {
            min_confidence: 1.01,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            reason(&strict.judge([("user", EN)].into_iter()).0),
            Some("language")
        );
        assert!(
            LanguageFilter::new(LanguageConfig {
                keep: vec!["english".into()],
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn undetected_follows_config() {
        let t = [("user", "12345 67890 + 42 = ?"), ("assistant", "12387")];
        assert_eq!(reason(&f(Policy::UserTurns).judge(t.into_iter()).0), None);
        let drop = LanguageFilter::new(LanguageConfig {
            undetected: Undetected::Drop,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            reason(&drop.judge(t.into_iter()).0),
            Some("language_undetected")
        );
    }
}
