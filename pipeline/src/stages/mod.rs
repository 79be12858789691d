//! Curation stages, one module per stage, in recipe order:
//! [`cleanup`] → [`dedup`] → [`language`] → [`markers`] → [`leakage`] (when configured) → [`mixture`].
//!
//! Every stage follows the datatrove shape: it *annotates* the conversation table with a
//! [`REASON`] column (null = keep) and a [`DETAILS`] column (a JSON object: the id a row
//! duplicates, the detected language and confidence, the matched keyword, …), and the shared
//! [`split`] function then separates kept from dropped rows and counts `total`, `kept` and
//! `dropped_{reason}` once, for every stage alike. [`run::curate`] chains the stages, checks the
//! lineage invariant (rows in = kept + Σ dropped) and [`run::write_outputs`] writes `kept.parquet`,
//! `dropped.parquet`, `report.{md,json}`, a composition chart and the Koala/EasyLM JSONL.
//!
//! # Example
//! ```
//! use koala_pipeline::schema::{to_dataframe, Conversation, Turn};
//! use koala_pipeline::stages::{cleanup::{Cleanup, CleanupConfig}, Stage};
//! let conv = |id: &str, reply: &str| Conversation {
//!     id: id.into(), source: "sharegpt".into(), split: "unsplit".into(),
//!     turns: vec![Turn::user("Who made you?"), Turn::assistant(reply)],
//!     src_file: "sg.json".into(), src_record: 1, meta: "{}".into(),
//! };
//! let df = to_dataframe(&[conv("sharegpt/1", "I am a model."), conv("sharegpt/2", "OpenAI did.")]).unwrap();
//! let out = Cleanup::new(CleanupConfig::default()).run(df).unwrap();
//! assert_eq!(out.stats.kept, 1);
//! assert_eq!(out.stats.dropped["origin_keyword"], 1);
//! ```
use std::collections::BTreeMap;
use std::ops::Add;

use indicatif::ProgressBar;
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schema::{col, conversation_schema};

pub mod cleanup;
pub mod config;
pub mod dedup;
pub mod export;
pub mod html;
pub mod language;
pub mod leakage;
pub mod markers;
pub mod minhash;
pub mod mixture;
pub mod report;
pub mod run;
pub mod shard;
pub mod view;

/// Annotation column: why a row is dropped (null when it is kept).
pub const REASON: &str = "drop_reason";
/// Annotation column: a JSON object with the evidence for the drop (null when kept).
pub const DETAILS: &str = "drop_details";
/// Lineage column of `dropped.parquet`: the stage that dropped the row.
pub const STAGE: &str = "drop_stage";

/// What one stage did: counted once, in [`split`], for every stage alike.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageStats {
    pub stage: String,
    pub total: u64,
    pub kept: u64,
    /// Dropped rows per reason.
    pub dropped: BTreeMap<String, u64>,
    /// Rows in, per source.
    pub total_by_source: BTreeMap<String, u64>,
    /// Rows kept, per source.
    pub kept_by_source: BTreeMap<String, u64>,
}

impl StageStats {
    /// Rows dropped, all reasons together.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
    /// Fails unless `total = kept + Σ dropped`.
    pub fn check(&self) -> Result<()> {
        if self.total != self.kept + self.dropped_total() {
            return Err(Error::Invariant(format!(
                "stage `{}`: {} rows in, but {} kept + {} dropped",
                self.stage,
                self.total,
                self.kept,
                self.dropped_total()
            )));
        }
        Ok(())
    }
}

fn merge(a: &mut BTreeMap<String, u64>, b: BTreeMap<String, u64>) {
    for (k, v) in b {
        *a.entry(k).or_default() += v;
    }
}

impl Add for StageStats {
    type Output = StageStats;
    /// Merges the counts of two runs of the same stage (for example on two shards).
    fn add(mut self, rhs: StageStats) -> StageStats {
        if self.stage.is_empty() {
            self.stage = rhs.stage;
        }
        self.total += rhs.total;
        self.kept += rhs.kept;
        merge(&mut self.dropped, rhs.dropped);
        merge(&mut self.total_by_source, rhs.total_by_source);
        merge(&mut self.kept_by_source, rhs.kept_by_source);
        self
    }
}

/// The result of one stage: kept rows (annotation columns removed), dropped rows (with
/// [`STAGE`], [`REASON`], [`DETAILS`]) and the counts.
#[derive(Debug)]
pub struct StageOutput {
    pub kept: DataFrame,
    pub dropped: DataFrame,
    pub stats: StageStats,
}

/// A curation stage. Implementors supply only [`Stage::annotate`]; the default
/// [`Stage::run`] drops and counts through [`split`].
pub trait Stage: Sync {
    /// The stage name recorded in lineage and reports.
    fn name(&self) -> &'static str;
    /// Returns the table with [`REASON`] and [`DETAILS`] columns added (and, for stages that
    /// rewrite or annotate, modified text or extra columns). Must not change the row count.
    fn annotate_with_progress(&self, df: DataFrame, progress: &ProgressBar) -> Result<DataFrame>;
    /// [`Stage::annotate_with_progress`] without a progress bar.
    fn annotate(&self, df: DataFrame) -> Result<DataFrame> {
        self.annotate_with_progress(df, &ProgressBar::hidden())
    }
    /// Annotates, then splits into kept and dropped rows and counts them.
    fn run_with_progress(&self, df: DataFrame, progress: &ProgressBar) -> Result<StageOutput> {
        let rows = df.height();
        let annotated = self.annotate_with_progress(df, progress)?;
        if annotated.height() != rows {
            return Err(Error::Invariant(format!(
                "stage `{}` changed the row count in annotate: {rows} → {}",
                self.name(),
                annotated.height()
            )));
        }
        split(self.name(), annotated)
    }
    /// [`Stage::run_with_progress`] without a progress bar.
    fn run(&self, df: DataFrame) -> Result<StageOutput> {
        self.run_with_progress(df, &ProgressBar::hidden())
    }
}

/// One row's verdict: `None` keeps it, `Some((reason, details_json))` drops it.
pub type Verdict = Option<(&'static str, String)>;

/// Adds the [`REASON`] and [`DETAILS`] columns built from per-row verdicts.
pub fn add_verdicts(mut df: DataFrame, verdicts: &[Verdict]) -> Result<DataFrame> {
    let reasons: StringChunked = verdicts.iter().map(|v| v.as_ref().map(|v| v.0)).collect();
    let details: StringChunked = verdicts
        .iter()
        .map(|v| v.as_ref().map(|v| v.1.as_str()))
        .collect();
    df.with_column(reasons.with_name(REASON.into()).into_column())?;
    df.with_column(details.with_name(DETAILS.into()).into_column())?;
    Ok(df)
}

fn counts_by(df: &DataFrame, key: &str) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for v in df.column(key)?.str()?.iter() {
        *out.entry(v.unwrap_or("<null>").to_string()).or_default() += 1;
    }
    Ok(out)
}

/// Splits an annotated table into kept and dropped rows and counts them: the one place where
/// every stage's `total`, `kept` and `dropped_{reason}` are computed.
pub fn split(stage: &str, annotated: DataFrame) -> Result<StageOutput> {
    let total_by_source = counts_by(&annotated, col::SOURCE)?;
    // A stage that drops nothing (markers, mixture, often most rows of the others) needs no
    // filter over the whole table.
    let none_dropped = annotated.column(REASON)?.null_count() == annotated.height();
    let (kept, dropped) = if none_dropped {
        let dropped = annotated
            .head(Some(0))
            .lazy()
            .with_column(lit(stage).alias(STAGE))
            .collect()?;
        (annotated.drop_many([REASON, DETAILS]), dropped)
    } else {
        let lf = annotated.lazy();
        let kept = lf
            .clone()
            .filter(col(REASON).is_null())
            .drop(cols([REASON, DETAILS]))
            .collect()?;
        let dropped = lf
            .filter(col(REASON).is_not_null())
            .with_column(lit(stage).alias(STAGE))
            .collect()?;
        (kept, dropped)
    };
    let stats = StageStats {
        stage: stage.to_string(),
        total: total_by_source.values().sum(),
        kept: kept.height() as u64,
        dropped: counts_by(&dropped, REASON)?,
        total_by_source,
        kept_by_source: counts_by(&kept, col::SOURCE)?,
    };
    stats.check()?;
    Ok(StageOutput {
        kept,
        dropped: lineage_columns(dropped)?,
        stats,
    })
}

/// Projects a dropped table onto the lineage schema: the conversation columns, then
/// [`STAGE`], [`REASON`], [`DETAILS`]. Every stage's dropped rows share it, so they concatenate.
pub fn lineage_columns(dropped: DataFrame) -> Result<DataFrame> {
    let mut names: Vec<PlSmallStr> = conversation_schema()
        .iter_names()
        .cloned()
        .collect::<Vec<_>>();
    names.extend([STAGE.into(), REASON.into(), DETAILS.into()]);
    Ok(dropped.select(names)?)
}

/// An empty table in the lineage schema.
pub fn empty_dropped() -> Result<DataFrame> {
    let df = crate::schema::to_dataframe(&[])?;
    let mut df = df;
    for name in [STAGE, REASON, DETAILS] {
        df.with_column(Column::new_empty(name.into(), &DataType::String))?;
    }
    Ok(df)
}

/// Does a stage's source list (`"*"` = every source) cover `source`?
pub fn covers(sources: &[String], source: &str) -> bool {
    sources.iter().any(|s| s == "*" || s == source)
}

/// A JSON object string from key/value pairs (for [`DETAILS`]).
pub fn details(pairs: &[(&str, serde_json::Value)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect();
    serde_json::Value::Object(map).to_string()
}
