//! Stage 2, user-query dedup (the Koala rule), with optional MinHash-LSH near-dup.
//!
//! - **Key**: the first user turn, normalised by [`normalize_query`]: Unicode NFKC, lowercase,
//!   whitespace runs collapsed to one space, trimmed.
//! - **Exact**: rows whose keys have equal xxh3-128 hashes are duplicates. The first row in table
//!   order is kept ([`run::curate`](super::run::curate) sorts the input deterministically first:
//!   source order of the preset, then file, then record). Each dropped row records the kept id:
//!   reason `duplicate_query`, details `{"duplicate_of", "hash"}`.
//! - **Scope**: `per-source` (keys compared within one source) or `global` (across all sources
//!   in [`DedupConfig::sources`]).
//! - **Near-dup** (off by default): MinHash-LSH over word 5-grams of the key
//!   ([`super::minhash`]); reason `near_duplicate_query`, details `{"duplicate_of", "jaccard"}`.
//!
//! # Example
//! ```
//! use koala_pipeline::stages::dedup::normalize_query;
//! assert_eq!(normalize_query("  Ｈｅｌｌｏ\u{00A0}\tWORLD \n"), "hello world");
//! ```
use std::collections::HashMap;

use indicatif::ProgressBar;
use polars::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use xxhash_rust::xxh3::xxh3_128;

use super::minhash::{MinHashConfig, MinHashLsh};
use super::view::TurnsView;
use super::{Stage, Verdict, add_verdicts, covers, details};
use crate::error::Result;
use crate::schema::col;

/// Whether duplicate keys are compared within a source or across sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    PerSource,
    Global,
}

/// Configuration of [`Dedup`] (TOML table `[dedup]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// Run the stage at all.
    pub enabled: bool,
    /// Sources that are deduplicated (`"*"` = all). Koala: ShareGPT only (HC3 has several answers
    /// per question and HH a chosen and a rejected reply per prompt, all of them wanted).
    pub sources: Vec<String>,
    /// `per-source` or `global`.
    pub scope: Scope,
    /// MinHash-LSH near-duplicate detection (off by default).
    pub near: MinHashConfig,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            enabled: true,
            sources: vec!["sharegpt".into()],
            scope: Scope::PerSource,
            near: MinHashConfig::default(),
        }
    }
}

/// NFKC, lowercase, collapsed whitespace, trimmed.
pub fn normalize_query(text: &str) -> String {
    let nfkc: String = text.nfkc().collect();
    let lower = nfkc.to_lowercase();
    lower.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The 128-bit key hash of a normalised query.
pub fn query_hash(normalized: &str) -> u128 {
    xxh3_128(normalized.as_bytes())
}

/// The dedup stage.
pub struct Dedup {
    config: DedupConfig,
}

impl Dedup {
    pub fn new(config: DedupConfig) -> Self {
        Dedup { config }
    }
}

impl Stage for Dedup {
    fn name(&self) -> &'static str {
        "dedup"
    }

    fn annotate_with_progress(&self, df: DataFrame, progress: &ProgressBar) -> Result<DataFrame> {
        let n = df.height();
        if !self.config.enabled {
            progress.inc(n as u64);
            return add_verdicts(df, &vec![None; n]);
        }
        let view = TurnsView::new(&df)?;
        let sources = df.column(col::SOURCE)?.str()?.rechunk().into_owned();
        let ids = df.column(col::ID)?.str()?.rechunk().into_owned();
        // Keys in parallel …
        let keys: Vec<Option<String>> = (0..n)
            .into_par_iter()
            .with_max_len(super::view::ROW_TASK)
            .map(|i| {
                let src = sources.get(i).unwrap_or("");
                if !covers(&self.config.sources, src) {
                    return None;
                }
                view.turns(i)
                    .find(|t| t.role == "user")
                    .map(|t| normalize_query(t.text))
            })
            .collect();
        // … first occurrence sequentially, in table order.
        let mut first: HashMap<(&str, u128), usize> = HashMap::with_capacity(n);
        let mut verdicts: Vec<Verdict> = vec![None; n];
        for (i, key) in keys.iter().enumerate() {
            progress.inc(1);
            let Some(key) = key else { continue };
            let h = query_hash(key);
            let scope = match self.config.scope {
                Scope::PerSource => sources.get(i).unwrap_or(""),
                Scope::Global => "",
            };
            match first.get(&(scope, h)) {
                Some(&j) => {
                    let d = details(&[
                        ("duplicate_of", ids.get(j).unwrap_or("").into()),
                        ("hash", format!("{h:032x}").into()),
                    ]);
                    verdicts[i] = Some(("duplicate_query", d));
                }
                None => {
                    first.insert((scope, h), i);
                }
            }
        }
        if self.config.near.enabled {
            let lsh = MinHashLsh::new(self.config.near.clone())?;
            // Only rows that survived exact dedup take part.
            let docs: Vec<(usize, &str, &str)> = keys
                .iter()
                .enumerate()
                .filter(|(i, k)| k.is_some() && verdicts[*i].is_none())
                .map(|(i, k)| {
                    let scope = match self.config.scope {
                        Scope::PerSource => sources.get(i).unwrap_or(""),
                        Scope::Global => "",
                    };
                    (i, scope, k.as_deref().unwrap_or(""))
                })
                .collect();
            for (i, j, jac) in lsh.duplicates(&docs) {
                let d = details(&[
                    ("duplicate_of", ids.get(j).unwrap_or("").into()),
                    ("jaccard", ((jac * 1e4).round() / 1e4).into()),
                ]);
                verdicts[i] = Some(("near_duplicate_query", d));
            }
        }
        add_verdicts(df, &verdicts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Conversation, Turn, from_dataframe, to_dataframe};
    use crate::stages::DETAILS;

    fn conv(id: &str, source: &str, q: &str) -> Conversation {
        Conversation {
            id: id.into(),
            source: source.into(),
            split: "unsplit".into(),
            turns: vec![
                Turn::system("sys"),
                Turn::user(q),
                Turn::assistant("a"),
                Turn::user("later"),
            ],
            src_file: "f".into(),
            src_record: 1,
            meta: "{}".into(),
        }
    }

    fn kept_ids(out: &crate::stages::StageOutput) -> Vec<String> {
        from_dataframe(&out.kept)
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect()
    }

    #[test]
    fn normalisation_is_nfkc_lower_collapsed() {
        assert_eq!(normalize_query("Ｆｕｌｌ ｗｉｄｔｈ"), "full width");
        assert_eq!(
            normalize_query("ﬁne\u{2003}\u{2003}LIGATURE"),
            "fine ligature"
        );
        assert_eq!(normalize_query("\tA\n\nB  C "), "a b c");
        assert_eq!(normalize_query("Straße"), "straße");
        assert_eq!(normalize_query("Ⅻ"), "xii");
    }

    #[test]
    fn first_occurrence_kept_and_id_recorded() {
        let rows = vec![
            conv("sharegpt/1", "sharegpt", "How do I sort a list?"),
            conv("sharegpt/2", "sharegpt", "how do i  SORT a list?\n"),
            conv("sharegpt/3", "sharegpt", "Something else"),
            conv("sharegpt/4", "sharegpt", "ＨＯＷ do I sort a list?"),
        ];
        let out = Dedup::new(DedupConfig::default())
            .run(to_dataframe(&rows).unwrap())
            .unwrap();
        assert_eq!(kept_ids(&out), ["sharegpt/1", "sharegpt/3"]);
        let d = out.dropped.column(DETAILS).unwrap().str().unwrap();
        assert!(
            d.get(0)
                .unwrap()
                .starts_with(r#"{"duplicate_of":"sharegpt/1","hash":""#)
        );
        assert!(
            d.get(1)
                .unwrap()
                .starts_with(r#"{"duplicate_of":"sharegpt/1""#)
        );
        assert_eq!(out.stats.dropped["duplicate_query"], 2);
    }

    #[test]
    fn scope_per_source_vs_global_tie_order() {
        let rows = vec![
            conv("alpaca/1", "alpaca", "Same question"),
            conv("sharegpt/9", "sharegpt", "same question"),
        ];
        let all = DedupConfig {
            sources: vec!["*".into()],
            ..Default::default()
        };
        let per = Dedup::new(all.clone())
            .run(to_dataframe(&rows).unwrap())
            .unwrap();
        assert_eq!(per.stats.kept, 2);
        let global = Dedup::new(DedupConfig {
            scope: Scope::Global,
            ..all
        })
        .run(to_dataframe(&rows).unwrap())
        .unwrap();
        // Table order decides: the alpaca row comes first and wins.
        assert_eq!(kept_ids(&global), ["alpaca/1"]);
        let d = global.dropped.column(DETAILS).unwrap().str().unwrap();
        assert!(d.get(0).unwrap().contains(r#""duplicate_of":"alpaca/1""#));
    }

    #[test]
    fn sources_outside_the_list_are_untouched() {
        let rows = vec![conv("hh/1", "hh", "q"), conv("hh/2", "hh", "q")];
        let out = Dedup::new(DedupConfig::default())
            .run(to_dataframe(&rows).unwrap())
            .unwrap();
        assert_eq!(out.stats.kept, 2);
    }

    #[test]
    fn near_duplicates_when_enabled() {
        let base = "please write a short poem about the sea and the wind at night in winter for my grandmother";
        let near = "please write a short poem about the sea and the wind at night in winter for my grandfather";
        let rows = vec![
            conv("sharegpt/1", "sharegpt", base),
            conv("sharegpt/2", "sharegpt", near),
            conv(
                "sharegpt/3",
                "sharegpt",
                "explain quantum entanglement to a child using a story about two socks",
            ),
        ];
        let off = Dedup::new(DedupConfig::default())
            .run(to_dataframe(&rows).unwrap())
            .unwrap();
        assert_eq!(off.stats.kept, 3);
        let mut cfg = DedupConfig::default();
        cfg.near.enabled = true;
        cfg.near.threshold = 0.7;
        let on = Dedup::new(cfg).run(to_dataframe(&rows).unwrap()).unwrap();
        assert_eq!(kept_ids(&on), ["sharegpt/1", "sharegpt/3"]);
        let d = on.dropped.column(DETAILS).unwrap().str().unwrap();
        assert!(
            d.get(0)
                .unwrap()
                .starts_with(r#"{"duplicate_of":"sharegpt/1","jaccard":"#)
        );
    }
}
