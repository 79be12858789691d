//! Measures the curation flags against hand labels (`koala testset check`).
//!
//! A labels file is JSONL, one record per prompt (see `testsets/data/labels/LABELLING.md`):
//! `{"id", "coding": bool, "non_english": bool, "borderline"?: bool,
//! "non_english_borderline"?: bool, "set"?, "lang"?, "note"?}`. `borderline` marks prompts where
//! reasonable people differ on `coding`, `non_english_borderline` the same for the language flag:
//! they are counted apart and left out of precision, recall and the false-flag rate.
//!
//! ```
//! use koala_testsets::check::{check, Label};
//! use koala_testsets::curation::FlagConfig;
//! use koala_testsets::TestPrompt;
//! let t = |id: &str, p: &str| TestPrompt { id: id.into(), prompt: p.into(), file: "f".into(), record: 1 };
//! let prompts = [t("a", "Write a Python function that sorts a list."), t("b", "Tell me a joke.")];
//! let labels = [Label::new("a", true, false), Label::new("b", false, false)];
//! let r = check(&prompts, &labels, &FlagConfig::default()).unwrap();
//! assert_eq!((r.coding.tp, r.coding.fp, r.coding.fn_, r.coding.tn), (1, 0, 0, 1));
//! assert_eq!(r.coding.recall, Some(1.0));
//! ```
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::curation::{FlagConfig, PromptFlags, flag_prompt_with};
use crate::error::{Error, Result};
use crate::load::TestPrompt;

/// One hand label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Label {
    /// The prompt id, as the loader assigns it.
    pub id: String,
    /// The set it belongs to (information only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
    /// The prompt asks to write, read, fix, convert or explain code, a command, a query, markup
    /// or a regex.
    pub coding: bool,
    /// The prompt's main text is not English.
    pub non_english: bool,
    /// Reasonable people could differ on `coding`.
    #[serde(default)]
    pub borderline: bool,
    /// Reasonable people could differ on `non_english`.
    #[serde(default)]
    pub non_english_borderline: bool,
    /// The prompt's language (ISO 639-3), when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    /// Why, for prompts that needed a decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Label {
    /// A label that is not borderline, with no set, language or note.
    pub fn new(id: &str, coding: bool, non_english: bool) -> Self {
        Label {
            id: id.to_string(),
            set: None,
            coding,
            non_english,
            borderline: false,
            non_english_borderline: false,
            lang: None,
            note: None,
        }
    }
}

/// Reads a labels JSONL file; errors name the line. Duplicate ids are an error.
pub fn load_labels(path: &Path) -> Result<Vec<Label>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_labels(&text, &path.display().to_string())
}

/// Parses labels held in memory; `file` names them in errors.
pub fn parse_labels(text: &str, file: &str) -> Result<Vec<Label>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let ln = i as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let label: Label = serde_json::from_str(line).map_err(|e| Error::Labels {
            file: file.to_string(),
            line: ln,
            message: format!(
                "expected {{\"id\", \"coding\": bool, \"non_english\": bool, \"borderline\"?: bool}}: {e}"
            ),
        })?;
        if !seen.insert(label.id.clone()) {
            return Err(Error::Labels {
                file: file.to_string(),
                line: ln,
                message: format!("duplicate id `{}`", label.id),
            });
        }
        out.push(label);
    }
    Ok(out)
}

/// Confusion counts and rates of one flag, borderline prompts apart.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlagMetrics {
    /// Labelled positive and flagged.
    pub tp: usize,
    /// Labelled negative but flagged (false flags).
    pub fp: usize,
    /// Labelled positive but not flagged (misses).
    pub fn_: usize,
    /// Labelled negative and not flagged.
    pub tn: usize,
    /// Borderline prompts (not in the counts above).
    pub borderline: usize,
    /// Borderline prompts that were flagged.
    pub borderline_flagged: usize,
    /// tp / (tp + fp); `None` when nothing was flagged.
    pub precision: Option<f64>,
    /// tp / (tp + fn); `None` when there are no positives.
    pub recall: Option<f64>,
    /// fp / (fp + tn): false flags as a share of the negatives; `None` when there are none.
    pub fp_rate: Option<f64>,
}

impl FlagMetrics {
    fn add(&mut self, label: bool, flagged: bool, borderline: bool) {
        if borderline {
            self.borderline += 1;
            self.borderline_flagged += usize::from(flagged);
            return;
        }
        match (label, flagged) {
            (true, true) => self.tp += 1,
            (false, true) => self.fp += 1,
            (true, false) => self.fn_ += 1,
            (false, false) => self.tn += 1,
        }
    }

    fn finish(&mut self) {
        let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
        self.precision = ratio(self.tp, self.tp + self.fp);
        self.recall = ratio(self.tp, self.tp + self.fn_);
        self.fp_rate = ratio(self.fp, self.fp + self.tn);
    }
}

/// A prompt where a flag and its label disagree (borderline ones included, marked).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mismatch {
    /// The prompt id.
    pub id: String,
    /// `coding` or `non_english`.
    pub flag: String,
    /// The label.
    pub label: bool,
    /// The detector's verdict.
    pub flagged: bool,
    /// The label is borderline (not counted in the metrics).
    pub borderline: bool,
    /// The coding score.
    pub coding_score: f64,
    /// The detector's reasons.
    pub reasons: String,
    /// The label's note, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The prompt's first 100 characters, on one line.
    pub excerpt: String,
}

/// The result of [`check`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// The coding threshold used.
    pub coding_threshold: f64,
    /// Prompts that had a label.
    pub labelled: usize,
    /// Test prompts without a label (skipped), by id.
    pub unlabelled: Vec<String>,
    /// Labels whose id is not among the test prompts.
    pub labels_unmatched: usize,
    /// The coding flag.
    pub coding: FlagMetrics,
    /// The non-English flag.
    pub non_english: FlagMetrics,
    /// Every disagreement, coding first, in test order.
    pub mismatches: Vec<Mismatch>,
}

/// Flags every labelled prompt and compares the flags with the labels. Test prompts must have
/// unique ids; at least one label must match a prompt.
pub fn check(prompts: &[TestPrompt], labels: &[Label], cfg: &FlagConfig) -> Result<CheckReport> {
    let by_id: HashMap<&str, &Label> = labels.iter().map(|l| (l.id.as_str(), l)).collect();
    let mut ids = HashSet::new();
    for p in prompts {
        if !ids.insert(p.id.as_str()) {
            return Err(Error::Check(format!(
                "test prompt id `{}` occurs twice ({}:{}); labels are matched by id",
                p.id, p.file, p.record
            )));
        }
    }
    let mut report = CheckReport {
        coding_threshold: cfg.coding_threshold,
        labelled: 0,
        unlabelled: Vec::new(),
        labels_unmatched: labels
            .iter()
            .filter(|l| !ids.contains(l.id.as_str()))
            .count(),
        coding: FlagMetrics::default(),
        non_english: FlagMetrics::default(),
        mismatches: Vec::new(),
    };
    let mut lang_mismatches = Vec::new();
    for p in prompts {
        let Some(label) = by_id.get(p.id.as_str()) else {
            report.unlabelled.push(p.id.clone());
            continue;
        };
        report.labelled += 1;
        let f = flag_prompt_with(&p.prompt, cfg);
        report.coding.add(label.coding, f.coding, label.borderline);
        report.non_english.add(
            label.non_english,
            f.non_english,
            label.non_english_borderline,
        );
        if label.coding != f.coding {
            report.mismatches.push(mismatch(
                p,
                label,
                &f,
                "coding",
                label.coding,
                f.coding,
                label.borderline,
            ));
        }
        if label.non_english != f.non_english {
            lang_mismatches.push(mismatch(
                p,
                label,
                &f,
                "non_english",
                label.non_english,
                f.non_english,
                label.non_english_borderline,
            ));
        }
    }
    if report.labelled == 0 {
        return Err(Error::Check(format!(
            "none of the {} labels matches a test prompt id (first test id: `{}`)",
            labels.len(),
            prompts.first().map_or("", |p| p.id.as_str())
        )));
    }
    report.mismatches.extend(lang_mismatches);
    report.coding.finish();
    report.non_english.finish();
    Ok(report)
}

fn mismatch(
    p: &TestPrompt,
    label: &Label,
    f: &PromptFlags,
    flag: &str,
    expected: bool,
    got: bool,
    borderline: bool,
) -> Mismatch {
    let one_line = p.prompt.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut excerpt: String = one_line.chars().take(100).collect();
    if one_line.chars().count() > 100 {
        excerpt.push('…');
    }
    Mismatch {
        id: p.id.clone(),
        flag: flag.to_string(),
        label: expected,
        flagged: got,
        borderline,
        coding_score: f.coding_score,
        reasons: f.reasons.clone(),
        note: label.note.clone(),
        excerpt,
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".to_string(), |v| format!("{:.1}%", v * 100.0))
}

impl CheckReport {
    /// The report as a plain-text table with the misclassified prompts.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} labelled prompts ({} test prompts unlabelled, {} labels unmatched); coding threshold {}",
            self.labelled,
            self.unlabelled.len(),
            self.labels_unmatched,
            self.coding_threshold
        );
        let _ = writeln!(
            s,
            "\n{:<12} {:>5} {:>5} {:>5} {:>5} {:>10} {:>8} {:>8} {:>12}",
            "flag", "tp", "fp", "fn", "tn", "precision", "recall", "fp_rate", "borderline"
        );
        for (name, m) in [("coding", &self.coding), ("non_english", &self.non_english)] {
            let _ = writeln!(
                s,
                "{:<12} {:>5} {:>5} {:>5} {:>5} {:>10} {:>8} {:>8} {:>12}",
                name,
                m.tp,
                m.fp,
                m.fn_,
                m.tn,
                pct(m.precision),
                pct(m.recall),
                pct(m.fp_rate),
                format!("{}/{} flagged", m.borderline_flagged, m.borderline)
            );
        }
        for (title, borderline) in [("Misclassified", false), ("Borderline (not counted)", true)] {
            let rows: Vec<&Mismatch> = self
                .mismatches
                .iter()
                .filter(|m| m.borderline == borderline)
                .collect();
            let _ = writeln!(s, "\n{title}: {}", rows.len());
            for m in rows {
                let kind = if m.flagged { "false flag" } else { "missed" };
                let _ = writeln!(
                    s,
                    "  {} {} {} (score {}): {}\n      reasons: {}",
                    m.flag,
                    kind,
                    m.id,
                    m.coding_score,
                    m.excerpt,
                    if m.reasons.is_empty() {
                        "-"
                    } else {
                        &m.reasons
                    }
                );
                if let Some(n) = &m.note {
                    let _ = writeln!(s, "      label note: {n}");
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, p: &str) -> TestPrompt {
        TestPrompt {
            id: id.into(),
            prompt: p.into(),
            file: "f".into(),
            record: 1,
        }
    }

    #[test]
    fn counts_borderline_apart_and_lists_mismatches() {
        let prompts = [
            t("code", "Write a Python function that sorts a list."),
            t("plain", "Tell me a joke."),
            t("border", "Explain TypeScript and duck typing."),
            t("fr", "Bonjour, comment ça va ?"),
            t("missed", "Quelle heure est-il ? Je voudrais le savoir."),
        ];
        let mut border = Label::new("border", true, false);
        border.borderline = true;
        let labels = vec![
            Label::new("code", true, false),
            Label::new("plain", false, false),
            border,
            Label::new("fr", false, true),
            Label::new("missed", true, true),
            Label::new("not-in-test", false, false),
        ];
        let r = check(&prompts, &labels, &FlagConfig::default()).unwrap();
        assert_eq!(r.labelled, 5);
        assert_eq!(r.labels_unmatched, 1);
        assert_eq!(r.coding.borderline, 1);
        assert_eq!(r.coding.tp + r.coding.fn_, 2);
        assert!(
            r.mismatches
                .iter()
                .any(|m| m.id == "missed" && m.flag == "coding" && !m.flagged)
        );
        assert!(r.to_text().contains("Misclassified"));
    }

    #[test]
    fn rejects_bad_labels_and_clashing_ids() {
        assert!(matches!(
            parse_labels("{\"id\":\"a\",\"coding\":true}\n", "x"),
            Err(Error::Labels { line: 1, .. })
        ));
        let dup = "{\"id\":\"a\",\"coding\":true,\"non_english\":false}\n".repeat(2);
        assert!(matches!(
            parse_labels(&dup, "x"),
            Err(Error::Labels { line: 2, .. })
        ));
        let prompts = [t("a", "x"), t("a", "y")];
        assert!(matches!(
            check(
                &prompts,
                &[Label::new("a", false, false)],
                &FlagConfig::default()
            ),
            Err(Error::Check(_))
        ));
        assert!(matches!(
            check(
                &prompts[..1],
                &[Label::new("b", false, false)],
                &FlagConfig::default()
            ),
            Err(Error::Check(_))
        ));
    }
}
