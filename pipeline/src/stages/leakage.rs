//! Stage 4b, test-set leakage: the BLEU filter of [`crate::leakage`] as a curation stage.
//!
//! Training conversations whose first user turn scores a sentence BLEU above the threshold
//! (Koala: 20) against any prompt of the configured test sets are dropped: reason `leakage`,
//! details `{"test_id", "test_file", "bleu"}`. Only the `decontaminate` direction makes sense
//! inside `curate` (the `audit` direction filters the test set; use `koala decontaminate`).
//! Relative `test_sets` paths are taken from the working directory.
//!
//! # Example
//! ```
//! use koala_pipeline::leakage::{LeakageConfig, testset::TestPrompt};
//! use koala_pipeline::schema::{to_dataframe, Conversation, Turn};
//! use koala_pipeline::stages::{leakage::Leakage, Stage};
//! let conv = |id: &str, q: &str| Conversation {
//!     id: id.into(), source: "sharegpt".into(), split: "unsplit".into(),
//!     turns: vec![Turn::user(q), Turn::assistant("...")],
//!     src_file: "f".into(), src_record: 1, meta: "{}".into(),
//! };
//! let df = to_dataframe(&[
//!     conv("a", "Write a haiku about autumn leaves falling in the park."),
//!     conv("b", "How do I bake sourdough bread at home?"),
//! ]).unwrap();
//! let tests = vec![TestPrompt { id: "t1".into(), file: "koala_test.jsonl".into(), record: 1,
//!     prompt: "Write a haiku about autumn leaves falling in a park.".into() }];
//! let out = Leakage::with_tests(LeakageConfig::default(), tests).unwrap().run(df).unwrap();
//! assert_eq!(out.stats.dropped["leakage"], 1);
//! ```
use indicatif::ProgressBar;
use polars::prelude::*;

use super::{Stage, Verdict, add_verdicts, details};
use crate::error::{Error, Result};
use crate::leakage::{
    Direction, LeakageConfig, TestPrompt, best_per_row, find_matches, load_test_sets,
};

/// The leakage stage.
pub struct Leakage {
    config: LeakageConfig,
    tests: Vec<TestPrompt>,
}

impl Leakage {
    /// Loads the configured test sets.
    pub fn new(config: LeakageConfig) -> Result<Self> {
        if config.test_sets.is_empty() {
            return Err(Error::Config(
                "leakage.test_sets is empty: name the test-set files to decontaminate against"
                    .into(),
            ));
        }
        let tests = load_test_sets(&config.test_sets)?;
        Self::with_tests(config, tests)
    }

    /// Uses already loaded test prompts.
    pub fn with_tests(config: LeakageConfig, tests: Vec<TestPrompt>) -> Result<Self> {
        config.validate()?;
        if config.direction != Direction::Decontaminate {
            return Err(Error::Config(
                "leakage.direction must be \"decontaminate\" in curate (audit filters the test set: use `koala decontaminate`)".into(),
            ));
        }
        Ok(Leakage { config, tests })
    }
}

impl Stage for Leakage {
    fn name(&self) -> &'static str {
        "leakage"
    }

    fn annotate_with_progress(&self, df: DataFrame, progress: &ProgressBar) -> Result<DataFrame> {
        // Only the matches: the stage split builds the kept and dropped tables once.
        let m = find_matches(&df, &self.tests, &self.config)?;
        progress.inc(df.height() as u64);
        let verdicts: Vec<Verdict> = best_per_row(&m.hits, df.height())
            .into_iter()
            .map(|best| {
                best.map(|(score, t)| {
                    let test = &self.tests[m.compared[t as usize]];
                    (
                        "leakage",
                        details(&[
                            ("test_id", test.id.as_str().into()),
                            ("test_file", test.file.as_str().into()),
                            ("bleu", ((score * 1e4).round() / 1e4).into()),
                        ]),
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
    use crate::stages::Stage;

    /// With no `[leakage]` table, the stage runs against the shipped eval sets: a training
    /// conversation that copies a Koala or self-instruct test prompt is dropped.
    #[test]
    fn default_config_drops_copies_of_the_shipped_eval_sets() {
        let koala = koala_testsets::EvalSet::Koala.prompts();
        let si = koala_testsets::EvalSet::SelfInstruct.prompts();
        let conv = |id: &str, q: &str| Conversation {
            id: id.into(),
            source: "sharegpt".into(),
            split: "unsplit".into(),
            turns: vec![Turn::user(q), Turn::assistant("...")],
            src_file: "f".into(),
            src_record: 1,
            meta: "{}".into(),
        };
        let df = to_dataframe(&[
            conv("k", &koala[7].prompt),
            conv("s", &si[11].prompt),
            conv(
                "ok",
                "How do I keep basil alive on a windowsill through the winter?",
            ),
        ])
        .unwrap();
        let out = Leakage::new(LeakageConfig::default())
            .unwrap()
            .run(df)
            .unwrap();
        assert_eq!(out.stats.dropped["leakage"], 2);
        assert_eq!(out.kept.height(), 1);
    }
}
