//! Stage 0 ([`Select`]) and stage 5 ([`Mixture`]): which sources enter, in what order, how much
//! of each is kept, and the seeded train/eval split.
//!
//! - [`Select`] keeps the sources named by the mixture (reason `not_in_mixture` otherwise),
//!   applies their `meta_equals` filters (reason `meta_filter`), and sorts the table into the
//!   deterministic order that every later "first occurrence" rule relies on: the source order of
//!   the mixture, then `src_file`, `src_record`, `id`.
//! - [`Mixture`] samples each source down to `weight × rows` and then to `cap` rows with a
//!   seeded shuffle (reason `mixture_sample`), then adds the `mix_split` column: `native` sources
//!   keep their dataset's split (`train` → train; `test`, `validation`, `valid`, `eval` → eval;
//!   `unsplit` rows fall back to the ratio rule), `ratio` sources put the first
//!   `floor(n × train_ratio)` rows of a seeded shuffle into train, as Koala's scripts do. Defaults
//!   follow Koala: Alpaca 0.9, OIG 0.95, HH / summarize / WebGPT native.
//!
//! Everything is seeded from [`Mixture::seed`] and the source name (ChaCha8), so the same
//! config and input give the same output, byte for byte.
//!
//! # Example
//! ```
//! use koala_pipeline::stages::mixture::{default_split, SplitRule};
//! assert_eq!(default_split("alpaca"), (SplitRule::Ratio, 0.9));
//! assert_eq!(default_split("oig"), (SplitRule::Ratio, 0.95));
//! assert_eq!(default_split("hh").0, SplitRule::Native);
//! ```
use std::collections::{BTreeMap, HashMap};

use indicatif::ProgressBar;
use polars::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::{Stage, Verdict, add_verdicts, details};
use crate::error::{Error, Result};
use crate::schema::col;

/// Column added by [`Mixture`]: `train` or `eval`.
pub const MIX_SPLIT: &str = "mix_split";

/// How a source is split into train and eval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitRule {
    /// The dataset's own split column.
    Native,
    /// A seeded shuffle, the first `train_ratio` share to train.
    Ratio,
}

/// Koala's split rule and train ratio for a source.
pub fn default_split(source: &str) -> (SplitRule, f64) {
    match source {
        "alpaca" => (SplitRule::Ratio, 0.9),
        "oig" | "hc3" | "sharegpt" => (SplitRule::Ratio, 0.95),
        "hh" | "summarize" | "webgpt" => (SplitRule::Native, 1.0),
        _ => (SplitRule::Ratio, 0.9),
    }
}

/// One source of a mixture (TOML array `[[sources]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// The `source` value of the conversation table.
    pub name: String,
    /// Share of the source's rows kept, in (0, 1]. Default 1.
    #[serde(default = "one")]
    pub weight: f64,
    /// At most this many rows (after `weight`). Default: no cap.
    #[serde(default)]
    pub cap: Option<u64>,
    /// `native` or `ratio`. Default: [`default_split`].
    #[serde(default)]
    pub split: Option<SplitRule>,
    /// Train share for `ratio` (and for `unsplit` rows of `native`). Default: [`default_split`].
    #[serde(default)]
    pub train_ratio: Option<f64>,
    /// Keep only rows whose `meta` JSON has these string values (e.g. HC3's ChatGPT answers).
    #[serde(default)]
    pub meta_equals: BTreeMap<String, String>,
}

fn one() -> f64 {
    1.0
}

impl SourceSpec {
    /// A source with every default.
    pub fn new(name: &str) -> Self {
        SourceSpec {
            name: name.into(),
            weight: 1.0,
            cap: None,
            split: None,
            train_ratio: None,
            meta_equals: BTreeMap::new(),
        }
    }

    fn rule(&self) -> (SplitRule, f64) {
        let (r, t) = default_split(&self.name);
        (self.split.unwrap_or(r), self.train_ratio.unwrap_or(t))
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.weight > 0.0 && self.weight <= 1.0) {
            return Err(Error::Config(format!(
                "sources.{}: weight = {} is not in (0, 1] (up-sampling is not supported)",
                self.name, self.weight
            )));
        }
        if let Some(r) = self.train_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(Error::Config(format!(
                "sources.{}: train_ratio = {r} is not in [0, 1]",
                self.name
            )));
        }
        Ok(())
    }
}

fn rng_for(seed: u64, source: &str, purpose: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(
        seed ^ xxh3_64(source.as_bytes()) ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15),
    )
}

/// Row indices of `df` grouped by source, in table order.
fn rows_by_source(df: &DataFrame) -> Result<BTreeMap<String, Vec<usize>>> {
    let mut by: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, s) in df.column(col::SOURCE)?.str()?.iter().enumerate() {
        by.entry(s.unwrap_or("").to_string()).or_default().push(i);
    }
    Ok(by)
}

/// Stage 0: source selection and deterministic order.
pub struct Select {
    pub sources: Vec<SourceSpec>,
}

impl Stage for Select {
    fn name(&self) -> &'static str {
        "select"
    }

    fn annotate_with_progress(&self, df: DataFrame, progress: &ProgressBar) -> Result<DataFrame> {
        let rank: HashMap<&str, u32> = self
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i as u32))
            .collect();
        let ranks: UInt32Chunked = df
            .column(col::SOURCE)?
            .str()?
            .iter()
            .map(|s| Some(rank.get(s.unwrap_or("")).copied().unwrap_or(u32::MAX)))
            .collect();
        let mut df = df;
        df.with_column(ranks.with_name("_rank".into()).into_column())?;
        let df = df
            .lazy()
            .sort_by_exprs(
                [
                    col("_rank"),
                    col(col::SRC_FILE),
                    col(col::SRC_RECORD),
                    col(col::ID),
                ],
                SortMultipleOptions::default().with_maintain_order(true),
            )
            .drop(cols(["_rank"]))
            .collect()?;
        let specs: HashMap<&str, &SourceSpec> =
            self.sources.iter().map(|s| (s.name.as_str(), s)).collect();
        let sources = df.column(col::SOURCE)?.str()?;
        let metas = df.column(col::META)?.str()?;
        let mut verdicts: Vec<Verdict> = Vec::with_capacity(df.height());
        for (src, meta) in sources.iter().zip(metas.iter()) {
            progress.inc(1);
            let src = src.unwrap_or("");
            let Some(spec) = specs.get(src) else {
                verdicts.push(Some(("not_in_mixture", details(&[("source", src.into())]))));
                continue;
            };
            if spec.meta_equals.is_empty() {
                verdicts.push(None);
                continue;
            }
            let meta: serde_json::Value =
                serde_json::from_str(meta.unwrap_or("{}")).unwrap_or(serde_json::Value::Null);
            let miss = spec
                .meta_equals
                .iter()
                .find(|(k, v)| meta.get(k.as_str()).and_then(|x| x.as_str()) != Some(v.as_str()));
            verdicts.push(miss.map(|(k, v)| {
                let got = meta
                    .get(k.as_str())
                    .cloned()
                    .unwrap_or(serde_json::Value::Null);
                (
                    "meta_filter",
                    details(&[
                        ("key", k.as_str().into()),
                        ("want", v.as_str().into()),
                        ("got", got),
                    ]),
                )
            }));
        }
        add_verdicts(df, &verdicts)
    }
}

/// Stage 5: per-source sampling and the train/eval split.
pub struct Mixture {
    pub seed: u64,
    pub sources: Vec<SourceSpec>,
}

impl Stage for Mixture {
    fn name(&self) -> &'static str {
        "mixture"
    }

    fn annotate_with_progress(
        &self,
        mut df: DataFrame,
        progress: &ProgressBar,
    ) -> Result<DataFrame> {
        let n = df.height();
        let specs: HashMap<&str, &SourceSpec> =
            self.sources.iter().map(|s| (s.name.as_str(), s)).collect();
        let splits = df.column(col::SPLIT)?.str()?.rechunk().into_owned();
        let mut verdicts: Vec<Verdict> = vec![None; n];
        let mut mix: Vec<Option<&'static str>> = vec![None; n];
        for (source, rows) in rows_by_source(&df)? {
            progress.inc(rows.len() as u64);
            let Some(spec) = specs.get(source.as_str()) else {
                for &i in &rows {
                    verdicts[i] = Some((
                        "not_in_mixture",
                        details(&[("source", source.as_str().into())]),
                    ));
                }
                continue;
            };
            // Sampling: weight, then cap, over a seeded shuffle; kept rows stay in table order.
            let mut keep_n = ((rows.len() as f64) * spec.weight).round() as usize;
            if let Some(cap) = spec.cap {
                keep_n = keep_n.min(cap as usize);
            }
            let mut kept: Vec<usize> = rows.clone();
            if keep_n < rows.len() {
                let mut perm = rows.clone();
                perm.shuffle(&mut rng_for(self.seed, &source, 1));
                for &i in &perm[keep_n..] {
                    let cap_v = spec.cap.map_or(serde_json::Value::Null, |c| c.into());
                    verdicts[i] = Some((
                        "mixture_sample",
                        details(&[("weight", spec.weight.into()), ("cap", cap_v)]),
                    ));
                }
                kept = perm[..keep_n].to_vec();
                kept.sort_unstable();
            }
            // Split.
            let (rule, ratio) = spec.rule();
            let mut by_ratio = Vec::new();
            for &i in &kept {
                match (rule, splits.get(i).unwrap_or("unsplit")) {
                    (SplitRule::Native, "train") => mix[i] = Some("train"),
                    (SplitRule::Native, "test" | "validation" | "valid" | "eval") => {
                        mix[i] = Some("eval")
                    }
                    _ => by_ratio.push(i),
                }
            }
            let n_train = ((by_ratio.len() as f64) * ratio).floor() as usize;
            by_ratio.shuffle(&mut rng_for(self.seed, &source, 2));
            for (k, &i) in by_ratio.iter().enumerate() {
                mix[i] = Some(if k < n_train { "train" } else { "eval" });
            }
        }
        let mix: StringChunked = mix.into_iter().collect();
        df.with_column(mix.with_name(MIX_SPLIT.into()).into_column())?;
        add_verdicts(df, &verdicts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Conversation, Turn, from_dataframe, to_dataframe};

    fn rows(source: &str, n: usize, split: &str) -> Vec<Conversation> {
        (0..n)
            .map(|i| Conversation {
                id: format!("{source}/{i}"),
                source: source.into(),
                split: split.into(),
                turns: vec![Turn::user(format!("q{i}")), Turn::assistant("a")],
                src_file: "f".into(),
                src_record: i as u64 + 1,
                meta: if i % 2 == 0 {
                    r#"{"answer":"chatgpt"}"#.into()
                } else {
                    r#"{"answer":"human"}"#.into()
                },
            })
            .collect()
    }

    fn split_of(df: &DataFrame) -> Vec<(String, String)> {
        let ids = df.column(col::ID).unwrap().str().unwrap();
        let sp = df.column(MIX_SPLIT).unwrap().str().unwrap();
        ids.iter()
            .zip(sp.iter())
            .map(|(a, b)| (a.unwrap().into(), b.unwrap().into()))
            .collect()
    }

    #[test]
    fn ratio_split_is_seeded_and_reproducible() {
        let mut all = rows("alpaca", 100, "unsplit");
        all.extend(rows("oig", 40, "unsplit"));
        let df = to_dataframe(&all).unwrap();
        let mk = |seed| Mixture {
            seed,
            sources: vec![SourceSpec::new("alpaca"), SourceSpec::new("oig")],
        };
        let a = mk(7).run(df.clone()).unwrap().kept;
        let b = mk(7).run(df.clone()).unwrap().kept;
        let c = mk(8).run(df).unwrap().kept;
        assert_eq!(split_of(&a), split_of(&b));
        assert_ne!(split_of(&a), split_of(&c));
        let count = |v: &[(String, String)], src: &str, s: &str| {
            v.iter()
                .filter(|(id, sp)| id.starts_with(src) && sp == s)
                .count()
        };
        let sa = split_of(&a);
        assert_eq!(count(&sa, "alpaca/", "train"), 90);
        assert_eq!(count(&sa, "alpaca/", "eval"), 10);
        assert_eq!(count(&sa, "oig/", "train"), 38); // floor(40 × 0.95)
        // Row order is kept: the split is a column, not a reordering.
        assert_eq!(sa[0].0, "alpaca/0");
    }

    #[test]
    fn native_split_and_cap() {
        let mut all = rows("hh", 10, "train");
        all.extend(rows("hh", 4, "test").into_iter().map(|mut c| {
            c.id = format!("{}/t", c.id);
            c
        }));
        let spec = SourceSpec {
            cap: Some(7),
            ..SourceSpec::new("hh")
        };
        let out = Mixture {
            seed: 1,
            sources: vec![spec],
        }
        .run(to_dataframe(&all).unwrap())
        .unwrap();
        assert_eq!(out.stats.kept, 7);
        assert_eq!(out.stats.dropped["mixture_sample"], 7);
        for (id, sp) in split_of(&out.kept) {
            assert_eq!(
                sp,
                if id.ends_with("/t") { "eval" } else { "train" },
                "{id}"
            );
        }
    }

    #[test]
    fn select_orders_filters_and_drops_unlisted_sources() {
        let mut all = rows("hc3", 4, "unsplit");
        all.extend(rows("alpaca", 2, "unsplit"));
        all.extend(rows("webgpt", 1, "unsplit"));
        let mut hc3 = SourceSpec::new("hc3");
        hc3.meta_equals.insert("answer".into(), "chatgpt".into());
        let sel = Select {
            sources: vec![SourceSpec::new("alpaca"), hc3],
        };
        let out = sel.run(to_dataframe(&all).unwrap()).unwrap();
        let ids: Vec<String> = from_dataframe(&out.kept)
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, ["alpaca/0", "alpaca/1", "hc3/0", "hc3/2"]);
        assert_eq!(out.stats.dropped["meta_filter"], 2);
        assert_eq!(out.stats.dropped["not_in_mixture"], 1);
    }

    #[test]
    fn bad_weight_is_a_config_error() {
        let s = SourceSpec {
            weight: 2.0,
            ..SourceSpec::new("alpaca")
        };
        assert!(s.validate().unwrap_err().to_string().contains("weight = 2"));
    }
}
