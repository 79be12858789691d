//! BLEU-based test-set leakage filtering, in both directions, with decisions exactly those of
//! brute force (see [`index`] for the index, the bound and its proof).
//!
//! - **decontaminate**: drop the training conversations whose prompt (first user turn) leaks a
//!   test prompt;
//! - **audit**: drop the test prompts that overlap the training data, as Koala did with its test
//!   set.
//!
//! A pair leaks when its sentence BLEU (sacrebleu-equal, [`crate::bleu`]) is above
//! [`LeakageConfig::threshold`] (Koala: 20). Which side is the hypothesis is
//! [`LeakageConfig::hypothesis`]. Every dropped row records the best-scoring match and its score.
//! Test prompts are also curated ([`curation`]): non-English and coding prompts are flagged with
//! their reasons, and dropped before the comparison with `drop_flagged_tests = true`.
//!
//! # Example
//! ```
//! use koala_pipeline::leakage::{filter, LeakageConfig, Direction, testset::TestPrompt};
//! use koala_pipeline::schema::{to_dataframe, Conversation, Turn};
//! let conv = |id: &str, q: &str| Conversation {
//!     id: id.into(), source: "sharegpt".into(), split: "train".into(),
//!     turns: vec![Turn::user(q), Turn::assistant("...")],
//!     src_file: "f".into(), src_record: 1, meta: "{}".into(),
//! };
//! let df = to_dataframe(&[
//!     conv("a", "Write a haiku about autumn leaves falling in the park."),
//!     conv("b", "How do I bake sourdough bread at home?"),
//! ]).unwrap();
//! let tests = vec![TestPrompt { id: "t1".into(), prompt: "Write a haiku about autumn leaves falling in a park.".into(),
//!                               file: "koala_test.jsonl".into(), record: 1 }];
//! let out = filter(&df, &tests, &LeakageConfig::default()).unwrap();
//! assert_eq!(out.kept.height(), 1);
//! assert_eq!(out.dropped.column("leak_test_id").unwrap().str().unwrap().get(0), Some("t1"));
//! ```
pub use koala_testsets::curation;
pub mod index;
pub use koala_testsets::load as testset;

use std::path::PathBuf;
use std::time::Instant;

use polars::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::bleu::BleuOptions;
use crate::error::{Error, Result};
use crate::schema::{self, col};
pub use curation::{FlagConfig, PromptFlags, flag_prompt, flag_prompt_with};
pub use index::{Hypothesis, LeakIndex, PairHit, SearchStats};
pub use testset::{TestFormat, TestPrompt, load_test_set, load_test_sets};

/// Columns added to dropped rows.
pub mod out_col {
    /// Why the row was dropped: `leakage`, or for test prompts also `non_english` / `coding`.
    pub const FILTER_REASON: &str = "filter_reason";
    /// Decontaminate: the id of the best-matching test prompt.
    pub const LEAK_TEST_ID: &str = "leak_test_id";
    /// Decontaminate: the test-set file of that prompt.
    pub const LEAK_TEST_FILE: &str = "leak_test_file";
    /// Audit: the id of the best-matching training conversation.
    pub const LEAK_TRAIN_ID: &str = "leak_train_id";
    /// The score of the best match (sentence BLEU, 0..=100).
    pub const BLEU_MAX: &str = "bleu_max";
}

/// Which side the filter drops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Drop training conversations that leak a test prompt.
    #[default]
    Decontaminate,
    /// Drop test prompts that overlap the training data.
    Audit,
}

/// The `[leakage]` section of the curation config (every field has a default; unknown keys are
/// an error).
///
/// ```
/// use koala_pipeline::leakage::{LeakageConfig, Direction, Hypothesis};
/// let c: LeakageConfig = toml::from_str("threshold = 25.0\ndirection = \"audit\"\nhypothesis = \"max\"").unwrap();
/// assert_eq!((c.threshold, c.direction, c.hypothesis), (25.0, Direction::Audit, Hypothesis::Max));
/// assert!(toml::from_str::<LeakageConfig>("treshold = 1").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeakageConfig {
    /// Whether `curate` runs the leakage stage (default true).
    pub enabled: bool,
    /// Test sets: the shipped `builtin:koala` and `builtin:self-instruct` (the default, both), or
    /// files (Koala JSONL, self-instruct JSONL, instruction JSONL or Alpaca JSON list; detected
    /// per file). The curation stage loads them; [`filter`] takes the loaded prompts.
    pub test_sets: Vec<PathBuf>,
    /// `decontaminate` (default) or `audit`.
    pub direction: Direction,
    /// The BLEU hypothesis: `test` (default: `sentence_bleu(test, [train])`), `train`, or `max`
    /// of both.
    pub hypothesis: Hypothesis,
    /// A pair leaks when its score is above this (default 20, Koala's).
    pub threshold: f64,
    /// Lowercased BLEU (default false, sacrebleu's default).
    pub lowercase: bool,
    /// Leave flagged test prompts (non-English, coding) out of the comparison; in `audit` they
    /// are dropped with their reason (default false: flag only).
    pub drop_flagged_tests: bool,
    /// The coding-score threshold of the test-prompt curation flags (default
    /// [`curation::DEFAULT_CODING_THRESHOLD`]; lower flags more). Measure a choice with
    /// `koala testset check --threshold`.
    pub coding_threshold: f64,
}

impl Default for LeakageConfig {
    fn default() -> Self {
        LeakageConfig {
            enabled: true,
            test_sets: vec![
                PathBuf::from("builtin:koala"),
                PathBuf::from("builtin:self-instruct"),
            ],
            direction: Direction::Decontaminate,
            hypothesis: Hypothesis::Test,
            threshold: 20.0,
            lowercase: false,
            drop_flagged_tests: false,
            coding_threshold: curation::DEFAULT_CODING_THRESHOLD,
        }
    }
}

impl LeakageConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if !self.threshold.is_finite() || self.threshold < 0.0 {
            return Err(Error::Config(format!(
                "leakage.threshold must be a finite number >= 0, got {}",
                self.threshold
            )));
        }
        if !self.coding_threshold.is_finite() {
            return Err(Error::Config(format!(
                "leakage.coding_threshold must be a finite number, got {}",
                self.coding_threshold
            )));
        }
        Ok(())
    }
}

/// One leaking pair, by ids.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Leak {
    pub test_id: String,
    pub test_file: String,
    pub train_id: String,
    pub score: f64,
}

/// What the filter did, for `report.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeakageReport {
    pub direction: Direction,
    pub hypothesis: Hypothesis,
    pub threshold: f64,
    pub lowercase: bool,
    pub training_rows: u64,
    pub training_rows_without_user_turn: u64,
    pub test_prompts: u64,
    pub test_prompts_flagged_non_english: u64,
    pub test_prompts_flagged_coding: u64,
    /// Test prompts compared against the training data.
    pub test_prompts_compared: u64,
    /// Rows in (of the filtered side), kept, dropped.
    pub rows_in: u64,
    pub kept: u64,
    pub dropped: u64,
    pub search: SearchStats,
    pub seconds: f64,
}

/// The filter's output.
pub struct Filtered {
    /// Decontaminate: the kept conversations. Audit: the kept test prompts ([`test_table`]).
    pub kept: DataFrame,
    /// The dropped rows, with [`out_col`] columns.
    pub dropped: DataFrame,
    /// Every test prompt with its curation flags ([`test_table`]).
    pub tests: DataFrame,
    /// Every leaking pair.
    pub leaks: Vec<Leak>,
    pub report: LeakageReport,
}

/// The first user turn of every conversation (`None` when it has none).
pub fn first_user_turns(df: &DataFrame) -> Result<Vec<Option<String>>> {
    schema::validate(df)?;
    let turns = df.column(col::TURNS)?.list()?;
    let mut out = Vec::with_capacity(df.height());
    for (i, list) in turns.amortized_iter().enumerate() {
        let mut found = None;
        if let Some(s) = list {
            let st = s.as_ref().struct_()?;
            let roles = st.field_by_name(col::ROLE)?;
            let texts = st.field_by_name(col::TEXT)?;
            let (roles, texts) = (roles.str()?, texts.str()?);
            for k in 0..st.len() {
                if roles.get(k) == Some("user") {
                    found = Some(
                        texts
                            .get(k)
                            .ok_or_else(|| {
                                Error::Invariant(format!("row {i}, turn {k}: null `text`"))
                            })?
                            .to_string(),
                    );
                    break;
                }
            }
        }
        out.push(found);
    }
    Ok(out)
}

/// The test prompts with their curation flags: `id, prompt, test_file, test_record, lang,
/// lang_confidence, non_english, coding, flag_reasons`.
pub fn test_table(tests: &[TestPrompt], flags: &[PromptFlags]) -> Result<DataFrame> {
    Ok(DataFrame::new_infer_height(vec![
        Column::new(
            "id".into(),
            tests.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "prompt".into(),
            tests.iter().map(|t| t.prompt.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "test_file".into(),
            tests.iter().map(|t| t.file.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "test_record".into(),
            tests.iter().map(|t| t.record).collect::<Vec<_>>(),
        ),
        Column::new(
            "lang".into(),
            flags.iter().map(|f| f.lang.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "lang_confidence".into(),
            flags.iter().map(|f| f.lang_confidence).collect::<Vec<_>>(),
        ),
        Column::new(
            "non_english".into(),
            flags.iter().map(|f| f.non_english).collect::<Vec<_>>(),
        ),
        Column::new(
            "coding".into(),
            flags.iter().map(|f| f.coding).collect::<Vec<_>>(),
        ),
        Column::new(
            "flag_reasons".into(),
            flags.iter().map(|f| f.reasons.as_str()).collect::<Vec<_>>(),
        ),
    ])?)
}

fn take_rows(df: &DataFrame, rows: &[u32]) -> Result<DataFrame> {
    let idx = IdxCa::from_vec("idx".into(), rows.iter().map(|&r| r as IdxSize).collect());
    Ok(df.take(&idx)?)
}

/// The search behind [`filter`]: which test prompts were compared, and every (training row,
/// test) pair that reaches the threshold.
pub struct Matches {
    /// Curation flags of every test prompt.
    pub flags: Vec<PromptFlags>,
    /// Indices (into the tests) of the prompts compared; [`PairHit::test`] indexes this.
    pub compared: Vec<usize>,
    pub hits: Vec<PairHit>,
    pub stats: SearchStats,
    pub rows_without_user_turn: u64,
}

/// Finds the leaking pairs of `df` and `tests` without building any table: the part of
/// [`filter`] the curation stage needs.
pub fn find_matches(df: &DataFrame, tests: &[TestPrompt], cfg: &LeakageConfig) -> Result<Matches> {
    cfg.validate()?;
    let prompts = first_user_turns(df)?;
    let flag_cfg = FlagConfig {
        coding_threshold: cfg.coding_threshold,
    };
    let flags: Vec<PromptFlags> = tests
        .par_iter()
        .map(|t| flag_prompt_with(&t.prompt, &flag_cfg))
        .collect();
    let compared: Vec<usize> = (0..tests.len())
        .filter(|&i| !(cfg.drop_flagged_tests && (flags[i].non_english || flags[i].coding)))
        .collect();
    let opts = BleuOptions {
        lowercase: cfg.lowercase,
    };
    let index = LeakIndex::new(
        &compared
            .iter()
            .map(|&i| tests[i].prompt.as_str())
            .collect::<Vec<_>>(),
        opts,
        cfg.hypothesis,
        cfg.threshold,
    );
    let docs: Vec<Vec<u32>> = prompts
        .par_iter()
        .map(|p| {
            p.as_deref()
                .map(|p| index.search_tokens(p))
                .unwrap_or_default()
        })
        .collect();
    let rows_without_user_turn = prompts.iter().filter(|p| p.is_none()).count() as u64;
    drop(prompts);
    let bar = indicatif::ProgressBar::new(docs.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "leakage {bar:40} {pos}/{len} training prompts ({eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (hits, stats) = index.search_with_progress(&docs, &|n| bar.inc(n));
    bar.finish_and_clear();
    Ok(Matches {
        flags,
        compared,
        hits,
        stats,
        rows_without_user_turn,
    })
}

/// The best match per training row (decontaminate): highest score, then earliest test, as
/// `(score, index into Matches::compared)`.
pub fn best_per_row(hits: &[PairHit], rows: usize) -> Vec<Option<(f64, u32)>> {
    let mut best: Vec<Option<(f64, u32)>> = vec![None; rows];
    for h in hits {
        let b = &mut best[h.doc as usize];
        if b.is_none_or(|(s, t)| h.score > s || (h.score == s && h.test < t)) {
            *b = Some((h.score, h.test));
        }
    }
    best
}

/// Runs the leakage filter on a conversation table against loaded test prompts.
///
/// The training prompt of a conversation is its first user turn; conversations without one are
/// kept and never match. Ties between equally-scoring matches go to the earlier test prompt
/// (decontaminate) or the earlier training row (audit).
pub fn filter(df: &DataFrame, tests: &[TestPrompt], cfg: &LeakageConfig) -> Result<Filtered> {
    let start = Instant::now();
    let Matches {
        flags,
        compared,
        hits,
        stats,
        rows_without_user_turn,
    } = find_matches(df, tests, cfg)?;
    let ids = df.column(col::ID)?.str()?;
    let train_id = |d: u32| -> Result<String> {
        ids.get(d as usize)
            .map(str::to_string)
            .ok_or_else(|| Error::Invariant(format!("null `id` at row {d}")))
    };
    let mut leaks = Vec::with_capacity(hits.len());
    for h in &hits {
        let t = &tests[compared[h.test as usize]];
        leaks.push(Leak {
            test_id: t.id.clone(),
            test_file: t.file.clone(),
            train_id: train_id(h.doc)?,
            score: h.score,
        });
    }
    let mut report = LeakageReport {
        direction: cfg.direction,
        hypothesis: cfg.hypothesis,
        threshold: cfg.threshold,
        lowercase: cfg.lowercase,
        training_rows: df.height() as u64,
        training_rows_without_user_turn: rows_without_user_turn,
        test_prompts: tests.len() as u64,
        test_prompts_flagged_non_english: flags.iter().filter(|f| f.non_english).count() as u64,
        test_prompts_flagged_coding: flags.iter().filter(|f| f.coding).count() as u64,
        test_prompts_compared: compared.len() as u64,
        search: stats,
        ..LeakageReport::default()
    };
    let tests_df = test_table(tests, &flags)?;
    let (kept, dropped) = match cfg.direction {
        Direction::Decontaminate => {
            let best = best_per_row(&hits, df.height());
            let kept_rows: Vec<u32> = (0..df.height() as u32)
                .filter(|&d| best[d as usize].is_none())
                .collect();
            let dropped_rows: Vec<u32> = (0..df.height() as u32)
                .filter(|&d| best[d as usize].is_some())
                .collect();
            let mut dropped = take_rows(df, &dropped_rows)?;
            let matched: Vec<(f64, &TestPrompt)> = dropped_rows
                .iter()
                .filter_map(|&d| best[d as usize])
                .map(|(s, t)| (s, &tests[compared[t as usize]]))
                .collect();
            let n = matched.len();
            dropped.with_column(Column::new(
                out_col::FILTER_REASON.into(),
                vec!["leakage"; n],
            ))?;
            dropped.with_column(Column::new(
                out_col::LEAK_TEST_ID.into(),
                matched
                    .iter()
                    .map(|(_, t)| t.id.as_str())
                    .collect::<Vec<_>>(),
            ))?;
            dropped.with_column(Column::new(
                out_col::LEAK_TEST_FILE.into(),
                matched
                    .iter()
                    .map(|(_, t)| t.file.as_str())
                    .collect::<Vec<_>>(),
            ))?;
            dropped.with_column(Column::new(
                out_col::BLEU_MAX.into(),
                matched.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            ))?;
            report.rows_in = df.height() as u64;
            (take_rows(df, &kept_rows)?, dropped)
        }
        Direction::Audit => {
            let mut best: Vec<Option<(f64, u32)>> = vec![None; tests.len()];
            for h in &hits {
                let b = &mut best[compared[h.test as usize]];
                if b.is_none_or(|(s, d)| h.score > s || (h.score == s && h.doc < d)) {
                    *b = Some((h.score, h.doc));
                }
            }
            let mut kept_rows = Vec::new();
            let mut dropped_rows = Vec::new();
            let mut reasons = Vec::new();
            let mut match_ids = Vec::new();
            let mut scores = Vec::new();
            for (i, f) in flags.iter().enumerate() {
                let flagged = cfg.drop_flagged_tests && (f.non_english || f.coding);
                if let Some((s, d)) = best[i] {
                    dropped_rows.push(i as u32);
                    reasons.push("leakage");
                    match_ids.push(Some(train_id(d)?));
                    scores.push(Some(s));
                } else if flagged {
                    dropped_rows.push(i as u32);
                    reasons.push(if f.non_english {
                        "non_english"
                    } else {
                        "coding"
                    });
                    match_ids.push(None);
                    scores.push(None);
                } else {
                    kept_rows.push(i as u32);
                }
            }
            let mut dropped = take_rows(&tests_df, &dropped_rows)?;
            dropped.with_column(Column::new(out_col::FILTER_REASON.into(), reasons))?;
            dropped.with_column(Column::new(out_col::LEAK_TRAIN_ID.into(), match_ids))?;
            dropped.with_column(Column::new(out_col::BLEU_MAX.into(), scores))?;
            report.rows_in = tests.len() as u64;
            (take_rows(&tests_df, &kept_rows)?, dropped)
        }
    };
    report.kept = kept.height() as u64;
    report.dropped = dropped.height() as u64;
    if report.kept + report.dropped != report.rows_in {
        return Err(Error::Invariant(format!(
            "leakage: {} in, {} kept + {} dropped",
            report.rows_in, report.kept, report.dropped
        )));
    }
    report.seconds = start.elapsed().as_secs_f64();
    tracing::info!(
        kept = report.kept,
        dropped = report.dropped,
        exact_scored = stats.exact_scored,
        pruned = stats.pruned,
        "leakage filter done"
    );
    Ok(Filtered {
        kept,
        dropped,
        tests: tests_df,
        leaks,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bleu::sentence_bleu;
    use crate::schema::{Conversation, Turn, to_dataframe};

    fn conv(id: &str, turns: Vec<Turn>) -> Conversation {
        Conversation {
            id: id.into(),
            source: "x".into(),
            split: "train".into(),
            turns,
            src_file: "f".into(),
            src_record: 1,
            meta: "{}".into(),
        }
    }

    fn tp(id: &str, p: &str) -> TestPrompt {
        TestPrompt {
            id: id.into(),
            prompt: p.into(),
            file: "t.jsonl".into(),
            record: 1,
        }
    }

    #[test]
    fn both_directions_record_matches_and_scores() {
        let df = to_dataframe(&[
            conv(
                "c0",
                vec![
                    Turn::system("s"),
                    Turn::user("Tell me a joke about cats and dogs please."),
                    Turn::assistant("x"),
                ],
            ),
            conv("c1", vec![Turn::assistant("only assistant")]),
            conv(
                "c2",
                vec![Turn::user(
                    "Explain quantum computing in simple terms for a child.",
                )],
            ),
            conv(
                "c3",
                vec![Turn::user("Tell me a joke about cats and dogs, please!")],
            ),
        ])
        .unwrap();
        let tests = vec![
            tp("t0", "Tell me a joke about cats and dogs please."),
            tp("t1", "What is the tallest mountain on Earth?"),
        ];
        let out = filter(&df, &tests, &LeakageConfig::default()).unwrap();
        let kept: Vec<_> = out
            .kept
            .column("id")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .flatten()
            .map(String::from)
            .collect();
        assert_eq!(kept, vec!["c1", "c2"]);
        let d = &out.dropped;
        assert_eq!(
            d.column("leak_test_id").unwrap().str().unwrap().get(1),
            Some("t0")
        );
        let s = d.column("bleu_max").unwrap().f64().unwrap().get(1).unwrap();
        let want = sentence_bleu(
            &tests[0].prompt,
            &["Tell me a joke about cats and dogs, please!"],
            BleuOptions::default(),
        )
        .unwrap()
        .score;
        assert!((s - want).abs() < 1e-12);
        assert_eq!(out.report.training_rows_without_user_turn, 1);
        assert_eq!(out.leaks.len(), 2);

        let cfg = LeakageConfig {
            direction: Direction::Audit,
            ..LeakageConfig::default()
        };
        let out = filter(&df, &tests, &cfg).unwrap();
        assert_eq!(out.kept.height(), 1);
        assert_eq!(
            out.dropped.column("id").unwrap().str().unwrap().get(0),
            Some("t0")
        );
        // The exact copy (c0, score 100) wins over the near copy.
        assert_eq!(
            out.dropped
                .column("leak_train_id")
                .unwrap()
                .str()
                .unwrap()
                .get(0),
            Some("c0")
        );
        assert_eq!(out.report.rows_in, 2);
    }

    #[test]
    fn flagged_tests_are_dropped_in_audit_when_asked() {
        let df = to_dataframe(&[conv("c0", vec![Turn::user("hello there")])]).unwrap();
        let tests = vec![
            tp(
                "code",
                "Write a Python function that sorts a list of numbers.",
            ),
            tp(
                "fr",
                "Quelle est la meilleure façon d'apprendre le français rapidement ?",
            ),
            tp("ok", "Give me three ideas for a birthday party."),
        ];
        let cfg = LeakageConfig {
            direction: Direction::Audit,
            drop_flagged_tests: true,
            ..Default::default()
        };
        let out = filter(&df, &tests, &cfg).unwrap();
        let reasons: Vec<_> = out
            .dropped
            .column("filter_reason")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        assert_eq!(reasons, vec!["coding", "non_english"]);
        assert_eq!(out.report.test_prompts_compared, 1);
    }

    #[test]
    fn bad_threshold_is_a_config_error() {
        let cfg = LeakageConfig {
            threshold: f64::NAN,
            ..Default::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("leakage.threshold")
        );
    }
}
