//! Sharded curation: one run split over N machines (or processes), then merged into exactly what
//! a single run of the same config on the same input writes.
//!
//! - **Assignment** ([`shard_keys`], [`shard_of`]): every input row gets a 64-bit key and belongs
//!   to shard `key % N`. Rows that the dedup stage compares (its `sources`, when it is enabled)
//!   are keyed by their dedup key: the xxh3-128 hash ([`super::dedup::query_hash`]) of the
//!   normalised first user turn *as cleanup will leave it* (the first user turn that is not empty
//!   after cleanup's HTML → Markdown rule), together with the source under `per-source` scope, so
//!   that every exact duplicate lands in the shard of the row it duplicates. Every other row is
//!   keyed by its `id`. Each shard checks, right after its cleanup, that the key taken from the
//!   cleaned text (as dedup takes it) gives the same shard for all of its rows, so a change of
//!   cleanup's rules cannot make a sharded run silently differ: it fails instead.
//! - **A shard** ([`curate_shard`]) reads the whole input, keeps its own rows, and runs every
//!   stage before `mixture` on them: select, cleanup, dedup, language, markers, leakage (each
//!   shard builds the same test-set index from the config). It writes its kept rows, its dropped
//!   rows and a manifest ([`ShardRun::write`]: [`KEPT`], [`DROPPED`], [`MANIFEST`]).
//! - **The merge** ([`merge`], [`merge_shards`], [`merge_dir`]) checks that the shards are
//!   shards `0..N` of one run (same N, config hash, test sets, input fingerprint, each index
//!   exactly once), puts the kept rows back into `select`'s order (mixture source order,
//!   `src_file`, `src_record`, `id`), runs `mixture` on all of them (its seeded sampling and split
//!   are global per source), and stacks the dropped rows as a single run does: by stage, and in
//!   `select`'s order within a stage. The per-stage counts are summed over the shards.
//!
//! MinHash near-duplicates (`[dedup.near]`) are not exact across shards (near duplicates can
//! have different keys), so N > 1 refuses them ([`check_shardable`]).
//!
//! # Example
//! ```
//! use koala_pipeline::schema::{to_dataframe, Conversation, Turn};
//! use koala_pipeline::stages::{config::CurateConfig, run::curate};
//! use koala_pipeline::stages::shard::{curate_shard, merge, ShardSpec};
//! let cfg = CurateConfig::from_toml_str(
//!     "[[sources]]\nname = \"sharegpt\"\n[leakage]\nenabled = false", "inline").unwrap();
//! let row = |i: u64, q: &str| Conversation {
//!     id: format!("sharegpt/{i}"), source: "sharegpt".into(), split: "unsplit".into(),
//!     turns: vec![Turn::user(q), Turn::assistant("Use the sorted function, or the sort method.")],
//!     src_file: "sg.json".into(), src_record: i, meta: "{}".into(),
//! };
//! let df = to_dataframe(&[
//!     row(1, "How do I sort a list in Python?"),
//!     row(2, "What is the capital city of France, and why?"),
//!     row(3, "how do I  SORT a list in python?"), // a duplicate of row 1
//! ]).unwrap();
//! let single = curate(&cfg, df.clone(), None).unwrap();
//! let spec: ShardSpec = "1/3".parse().unwrap();
//! assert_eq!((spec.index, spec.count), (1, 3));
//! assert!("3/3".parse::<ShardSpec>().is_err());
//! let shards = (0..3)
//!     .map(|i| curate_shard(&cfg, df.clone(), "inline", ShardSpec::new(i, 3).unwrap(), None))
//!     .collect::<Result<Vec<_>, _>>().unwrap();
//! let merged = merge(&cfg, shards, None).unwrap();
//! assert!(merged.kept.equals_missing(&single.kept));
//! assert!(merged.dropped.equals_missing(&single.dropped));
//! assert_eq!(merged.stats, single.stats);
//! ```
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use indicatif::MultiProgress;
use polars::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use super::cleanup::{html_to_markdown, looks_like_html};
use super::config::CurateConfig;
use super::dedup::{Scope, normalize_query, query_hash};
use super::mixture::Mixture;
use super::run::{CurateOutput, Curated, check_lineage, run_stages, stages, write_outputs};
use super::view::{ROW_TASK, TurnsView};
use super::{STAGE, Stage, StageStats, covers};
use crate::error::{Error, Result};
use crate::schema::{col, validate};

/// The shard manifest in a shard's output directory.
pub const MANIFEST: &str = "shard.json";
/// A shard's kept rows (before `mixture`), Parquet (zstd).
pub const KEPT: &str = "shard-kept.parquet";
/// A shard's dropped rows, in the lineage schema of `dropped.parquet`, Parquet (zstd).
pub const DROPPED: &str = "shard-dropped.parquet";
/// The `format` of [`ShardManifest`].
pub const FORMAT: &str = "koala-curate-shard/1";
/// Malformed input records, as `koala curate` writes them (copied from shard 0 by the merge).
const QUARANTINE: &str = "quarantine.jsonl";

/// Shard `index` of `count` (0-based), parsed from `"I/N"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShardSpec {
    pub index: u32,
    pub count: u32,
}

/// A bad `I/N` shard spec.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("shard `{spec}`: {message}")]
pub struct ShardSpecError {
    /// The spec as given.
    pub spec: String,
    /// What is wrong with it.
    pub message: String,
}

impl From<ShardSpecError> for Error {
    fn from(e: ShardSpecError) -> Self {
        Error::Config(e.to_string())
    }
}

impl ShardSpec {
    /// Shard `index` of `count`: `count ≥ 1` and `index < count`.
    pub fn new(index: u32, count: u32) -> std::result::Result<Self, ShardSpecError> {
        let err = |message: String| ShardSpecError {
            spec: format!("{index}/{count}"),
            message,
        };
        if count == 0 {
            return Err(err("N = 0: the shard count must be at least 1".into()));
        }
        if index >= count {
            return Err(err(format!(
                "index {index} is not below N = {count} (shards are numbered from 0 to {})",
                count - 1
            )));
        }
        Ok(ShardSpec { index, count })
    }

    /// The whole input as one shard (`0/1`).
    pub fn whole() -> Self {
        ShardSpec { index: 0, count: 1 }
    }

    /// Does a row with this key belong to this shard?
    pub fn owns(&self, key: u64) -> bool {
        shard_of(key, self.count) == self.index
    }
}

impl fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for ShardSpec {
    type Err = ShardSpecError;

    /// `"I/N"`: shard I of N, 0-based.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let err = |message: String| ShardSpecError {
            spec: s.to_string(),
            message,
        };
        let Some((i, n)) = s.trim().split_once('/') else {
            return Err(err(
                "expected I/N, shard I of N counted from 0 (for N = 4: 0/4, 1/4, 2/4, 3/4)".into(),
            ));
        };
        let num = |part: &str, what: &str| {
            part.trim()
                .parse::<u32>()
                .map_err(|_| err(format!("`{part}` is not a {what} (a whole number)")))
        };
        let (index, count) = (num(i, "shard index")?, num(n, "shard count")?);
        ShardSpec::new(index, count).map_err(|e| err(e.message))
    }
}

/// The shard of a row key: `key % count`.
pub fn shard_of(key: u64, count: u32) -> u32 {
    (key % u64::from(count.max(1))) as u32
}

/// The key of a dedup query: its 128-bit dedup hash, with the source under `per-source` scope.
fn query_key(scope: Scope, source: &str, normalized: &str) -> u64 {
    let mut h = Xxh3::new();
    h.update(b"query\0");
    if scope == Scope::PerSource {
        h.update(source.as_bytes());
    }
    h.update(b"\0");
    h.update(&query_hash(normalized).to_le_bytes());
    h.digest()
}

/// The key of a row that dedup does not compare: its id.
fn id_key(id: &str) -> u64 {
    let mut h = Xxh3::new();
    h.update(b"id\0");
    h.update(id.as_bytes());
    h.digest()
}

/// Row keys of `df`. `raw`: the table as loaded, whose first user turn is taken as cleanup will
/// leave it (HTML → Markdown for cleanup's sources, empty turns skipped); otherwise a cleaned
/// table, whose first user turn is taken as it is (the dedup stage's rule).
fn row_keys(cfg: &CurateConfig, df: &DataFrame, raw: bool) -> Result<Vec<u64>> {
    let view = TurnsView::new(df)?;
    let sources = df.column(col::SOURCE)?.str()?.rechunk().into_owned();
    let ids = df.column(col::ID)?.str()?.rechunk().into_owned();
    let (dedup, clean) = (&cfg.dedup, &cfg.cleanup);
    Ok((0..df.height())
        .into_par_iter()
        .with_max_len(ROW_TASK)
        .map(|i| {
            let src = sources.get(i).unwrap_or("");
            if dedup.enabled && covers(&dedup.sources, src) {
                let mut users = view.turns(i).filter(|t| t.role == "user");
                let first = if raw {
                    let html = clean.html_to_markdown && covers(&clean.sources, src);
                    users.find_map(|t| {
                        let text = if html && looks_like_html(t.text) {
                            Cow::Owned(html_to_markdown(t.text))
                        } else {
                            Cow::Borrowed(t.text)
                        };
                        if clean.drop_empty_turns && text.trim().is_empty() {
                            None
                        } else {
                            Some(normalize_query(&text))
                        }
                    })
                } else {
                    users.next().map(|t| normalize_query(t.text))
                };
                if let Some(q) = first {
                    return query_key(dedup.scope, src, &q);
                }
            }
            id_key(ids.get(i).unwrap_or(""))
        })
        .collect())
}

/// The shard key of every row of a loaded conversation table (before any stage): the dedup key
/// of the first user turn as cleanup will leave it, for the rows dedup compares; the `id` for
/// the others. Row `i` belongs to shard [`shard_of`]`(keys[i], N)`.
pub fn shard_keys(cfg: &CurateConfig, df: &DataFrame) -> Result<Vec<u64>> {
    row_keys(cfg, df, true)
}

/// Refuses what is not exact across shards: MinHash near-dup with N > 1.
pub fn check_shardable(cfg: &CurateConfig, spec: ShardSpec) -> Result<()> {
    if spec.count > 1 && cfg.dedup.enabled && cfg.dedup.near.enabled {
        return Err(Error::Config(format!(
            "--shard {spec}: `[dedup.near] enabled = true` (MinHash near-duplicates) is not exact \
             across shards: near duplicates can fall into different shards. Run it unsharded, or \
             set `[dedup.near] enabled = false`"
        )));
    }
    Ok(())
}

/// A stable hex hash of the effective config (after `--seed`): what shards and merge must share.
pub fn config_hash(cfg: &CurateConfig) -> Result<String> {
    let json = serde_json::to_string(cfg)?;
    Ok(format!(
        "{:032x}",
        xxhash_rust::xxh3::xxh3_128(json.as_bytes())
    ))
}

/// A hash of the leakage stage's test prompts (id, file, prompt), when the stage is on: every
/// shard must decontaminate against the same test sets.
fn test_sets_hash(cfg: &CurateConfig) -> Result<Option<String>> {
    if !cfg.leakage.enabled {
        return Ok(None);
    }
    let tests = crate::leakage::load_test_sets(&cfg.leakage.test_sets)?;
    let mut h = Xxh3::new();
    for t in &tests {
        for field in [&t.id, &t.file, &t.prompt] {
            h.update(&(field.len() as u64).to_le_bytes());
            h.update(field.as_bytes());
        }
    }
    Ok(Some(format!("{:032x}", h.digest128())))
}

/// A fingerprint of a whole conversation table (every column of every row, in order): shards
/// that read the same input agree on it.
pub fn input_fingerprint(df: &DataFrame) -> Result<String> {
    let view = TurnsView::new(df)?;
    let s = |name: &str| -> Result<StringChunked> {
        Ok(df.column(name)?.str()?.rechunk().into_owned())
    };
    let (ids, sources, splits, files, metas) = (
        s(col::ID)?,
        s(col::SOURCE)?,
        s(col::SPLIT)?,
        s(col::SRC_FILE)?,
        s(col::META)?,
    );
    let records = df.column(col::SRC_RECORD)?.u64()?.rechunk().into_owned();
    let rows: Vec<u64> = (0..df.height())
        .into_par_iter()
        .with_max_len(ROW_TASK)
        .map(|i| {
            let mut h = Xxh3::new();
            let mut put = |b: &[u8]| {
                h.update(&(b.len() as u64).to_le_bytes());
                h.update(b);
            };
            for c in [&ids, &sources, &splits, &files, &metas] {
                put(c.get(i).unwrap_or("").as_bytes());
            }
            put(&records.get(i).unwrap_or(0).to_le_bytes());
            for t in view.turns(i) {
                put(t.role.as_bytes());
                put(t.text.as_bytes());
                put(t.preference.as_bytes());
            }
            h.digest()
        })
        .collect();
    let mut h = Xxh3::new();
    h.update(&(rows.len() as u64).to_le_bytes());
    for r in rows {
        h.update(&r.to_le_bytes());
    }
    Ok(format!("{:032x}", h.digest128()))
}

/// The rank of each row's source in the mixture (`u32::MAX` for other sources), as `select`
/// orders them.
fn ranks(cfg: &CurateConfig, df: &DataFrame) -> Result<Vec<u32>> {
    let rank: HashMap<&str, u32> = cfg
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i as u32))
        .collect();
    Ok(df
        .column(col::SOURCE)?
        .str()?
        .iter()
        .map(|s| rank.get(s.unwrap_or("")).copied().unwrap_or(u32::MAX))
        .collect())
}

/// Sharded output can be put back into `select`'s order only if that order is total: no two
/// rows may share (source rank, `src_file`, `src_record`, `id`). (The loaders never produce such
/// rows; a hand-made Parquet input might.)
fn check_total_order(cfg: &CurateConfig, df: &DataFrame) -> Result<()> {
    let rank = ranks(cfg, df)?;
    let files = df.column(col::SRC_FILE)?.str()?.rechunk().into_owned();
    let records = df.column(col::SRC_RECORD)?.u64()?.rechunk().into_owned();
    let ids = df.column(col::ID)?.str()?.rechunk().into_owned();
    let mut seen: HashSet<(u32, &str, u64, &str)> = HashSet::with_capacity(df.height());
    for (i, &r) in rank.iter().enumerate() {
        let key = (
            r,
            files.get(i).unwrap_or(""),
            records.get(i).unwrap_or(0),
            ids.get(i).unwrap_or(""),
        );
        if !seen.insert(key) {
            return Err(Error::Input(format!(
                "sharded curation needs a total row order, but two input rows share id `{}`, \
                 src_file `{}` and src_record {} (and source rank): the merge could not put them \
                 back in the single run's order. Make the ids unique, or run without --shard",
                key.3, key.1, key.2
            )));
        }
    }
    Ok(())
}

/// Fails unless every row of a cleaned shard table belongs to `spec` by the key dedup will use.
fn check_assignment(cfg: &CurateConfig, cleaned: &DataFrame, spec: ShardSpec) -> Result<()> {
    let keys = row_keys(cfg, cleaned, false)?;
    if let Some(i) = keys.iter().position(|&k| !spec.owns(k)) {
        let id = cleaned.column(col::ID)?.str()?.get(i).unwrap_or("");
        return Err(Error::Invariant(format!(
            "shard {spec}: row `{id}` was assigned to this shard by its first user turn before \
             cleanup, but its cleaned first user turn belongs to shard {}: the key rule of \
             stages/shard.rs no longer follows cleanup's rules",
            shard_of(keys[i], spec.count)
        )));
    }
    Ok(())
}

/// What a shard wrote: identity, checks and counts (the file [`MANIFEST`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardManifest {
    /// [`FORMAT`].
    pub format: String,
    /// The koala-pipeline version that wrote it; the merge must be the same.
    pub pipeline_version: String,
    /// I of I/N.
    pub shard: u32,
    /// N of I/N.
    pub shards: u32,
    /// The config's `name`.
    pub config_name: String,
    /// [`config_hash`] of the effective config.
    pub config_hash: String,
    /// A hash of the leakage test sets, when the stage is on.
    pub test_sets_hash: Option<String>,
    /// The input as named on the command line (for people; not checked).
    pub input: String,
    /// [`input_fingerprint`] of the whole input table.
    pub input_fingerprint: String,
    /// Rows of the whole input.
    pub rows_seen: u64,
    /// Rows of this shard (the stages' input).
    pub rows_owned: u64,
    /// Rows of [`KEPT`].
    pub rows_kept: u64,
    /// Rows of [`DROPPED`].
    pub rows_dropped: u64,
    /// Counts of every stage before `mixture`, on this shard's rows.
    pub stages: Vec<StageStats>,
    /// Seconds per stage.
    pub stage_seconds: Vec<(String, f64)>,
    /// Seconds to fingerprint the input and assign its rows.
    pub assign_seconds: f64,
}

impl ShardManifest {
    /// This shard's I/N.
    pub fn spec(&self) -> ShardSpec {
        ShardSpec {
            index: self.shard,
            count: self.shards,
        }
    }
}

/// One shard's result: its manifest and tables.
#[derive(Debug)]
pub struct ShardRun {
    pub manifest: ShardManifest,
    /// Kept rows after the last stage before `mixture`, in `select`'s order.
    pub kept: DataFrame,
    /// Dropped rows, stacked by stage, in the lineage schema.
    pub dropped: DataFrame,
    /// Where it came from, for messages: the shard directory, or `memory`.
    pub origin: String,
}

/// Runs shard `spec` of a sharded curation of `input` (the whole loaded conversation table; the
/// shard keeps its own rows): every stage before `mixture`. `input_label` names the input in the
/// manifest. With `progress`, each stage gets a bar.
pub fn curate_shard(
    cfg: &CurateConfig,
    input: DataFrame,
    input_label: &str,
    spec: ShardSpec,
    progress: Option<&MultiProgress>,
) -> Result<ShardRun> {
    let input = crate::notebook::reseat(&input)?;
    validate(&input)?;
    cfg.validate()?;
    ShardSpec::new(spec.index, spec.count)?;
    check_shardable(cfg, spec)?;
    let t0 = Instant::now();
    let rows_seen = input.height() as u64;
    let fingerprint = input_fingerprint(&input)?;
    let owned = if spec.count == 1 {
        input
    } else {
        check_total_order(cfg, &input)?;
        let mask: BooleanChunked = shard_keys(cfg, &input)?
            .into_iter()
            .map(|k| spec.owns(k))
            .collect();
        input.filter(&mask)?
    };
    let assign_seconds = t0.elapsed().as_secs_f64();
    let mut recipe = stages(cfg)?;
    match recipe.pop() {
        Some(last) if last.name() == "mixture" => {}
        other => {
            return Err(Error::Invariant(format!(
                "the recipe ends with `{}`, not `mixture`",
                other.map_or("nothing", |s| s.name())
            )));
        }
    }
    let out = run_stages(&recipe, owned, progress, &mut |stage, kept| {
        if stage == "cleanup" && spec.count > 1 {
            check_assignment(cfg, kept, spec)?;
        }
        Ok(())
    })?;
    let manifest = ShardManifest {
        format: FORMAT.into(),
        pipeline_version: env!("CARGO_PKG_VERSION").into(),
        shard: spec.index,
        shards: spec.count,
        config_name: cfg.name.clone(),
        config_hash: config_hash(cfg)?,
        test_sets_hash: test_sets_hash(cfg)?,
        input: input_label.into(),
        input_fingerprint: fingerprint,
        rows_seen,
        rows_owned: out.rows_in,
        rows_kept: out.kept.height() as u64,
        rows_dropped: out.dropped.height() as u64,
        stages: out.stats,
        stage_seconds: out
            .timings
            .iter()
            .map(|(n, d)| (n.clone(), d.as_secs_f64()))
            .collect(),
        assign_seconds,
    };
    Ok(ShardRun {
        manifest,
        kept: out.kept,
        dropped: out.dropped,
        origin: "memory".into(),
    })
}

fn write_zstd(df: &mut DataFrame, path: &Path) -> Result<()> {
    let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    ParquetWriter::new(f)
        .with_compression(ParquetCompression::Zstd(None))
        .finish(df)?;
    Ok(())
}

fn read_parquet(path: &Path) -> Result<DataFrame> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(ParquetReader::new(f).finish()?)
}

impl ShardRun {
    /// Writes [`KEPT`], [`DROPPED`] and [`MANIFEST`] into `dir` (created).
    pub fn write(&mut self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        write_zstd(&mut self.kept, &dir.join(KEPT))?;
        write_zstd(&mut self.dropped, &dir.join(DROPPED))?;
        let path = dir.join(MANIFEST);
        let json = serde_json::to_string_pretty(&self.manifest)? + "\n";
        std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
        self.origin = dir.display().to_string();
        Ok(())
    }

    /// Reads a shard directory written by [`ShardRun::write`].
    pub fn read(dir: &Path) -> Result<ShardRun> {
        let path = dir.join(MANIFEST);
        if !path.is_file() {
            return Err(Error::Input(format!(
                "{}: no {MANIFEST}: not the output of `koala curate --shard I/N` (or that run did \
                 not finish)",
                dir.display()
            )));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let manifest: ShardManifest = serde_json::from_str(&text)
            .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
        if manifest.format != FORMAT {
            return Err(Error::Input(format!(
                "{}: format `{}`, this koala reads `{FORMAT}`",
                path.display(),
                manifest.format
            )));
        }
        let kept = read_parquet(&dir.join(KEPT))?;
        let dropped = read_parquet(&dir.join(DROPPED))?;
        if kept.height() as u64 != manifest.rows_kept
            || dropped.height() as u64 != manifest.rows_dropped
        {
            return Err(Error::Input(format!(
                "{}: {KEPT} has {} rows and {DROPPED} {}, the manifest says {} and {}",
                dir.display(),
                kept.height(),
                dropped.height(),
                manifest.rows_kept,
                manifest.rows_dropped
            )));
        }
        Ok(ShardRun {
            manifest,
            kept,
            dropped,
            origin: dir.display().to_string(),
        })
    }
}

/// Checks that `runs` are shards `0..N` of one run of `cfg`, each exactly once, and returns
/// them in shard order.
fn check_set(cfg: &CurateConfig, mut runs: Vec<ShardRun>) -> Result<Vec<ShardRun>> {
    let Some(first) = runs.first() else {
        return Err(Error::Input("no shards to merge".into()));
    };
    let (n, origin0) = (first.manifest.shards, first.origin.clone());
    let want_hash = config_hash(cfg)?;
    let version = env!("CARGO_PKG_VERSION");
    for r in &runs {
        let m = &r.manifest;
        let who = format!("`{}` (shard {})", r.origin, m.spec());
        if m.shards != n {
            return Err(Error::Input(format!(
                "mismatched shard counts: `{origin0}` is shard {} but {who} is of N = {}: every \
                 shard of one run must use the same N",
                first.manifest.spec(),
                m.shards
            )));
        }
        if m.shard >= m.shards {
            return Err(Error::Input(format!("{who}: the index is not below N")));
        }
        if m.pipeline_version != version {
            return Err(Error::Input(format!(
                "{who} was written by koala-pipeline {}, this is {version}",
                m.pipeline_version
            )));
        }
        if m.config_hash != want_hash {
            return Err(Error::Config(format!(
                "{who} was curated with another config (`{}`, hash {}) than the one given to the \
                 merge (`{}`, hash {want_hash}): use the same config file and --seed everywhere",
                m.config_name, m.config_hash, cfg.name
            )));
        }
        if m.test_sets_hash != first.manifest.test_sets_hash {
            return Err(Error::Input(format!(
                "{who} decontaminated against other test sets than `{origin0}`: the leakage \
                 test-set files must be the same for every shard"
            )));
        }
        if (m.input_fingerprint.as_str(), m.rows_seen)
            != (
                first.manifest.input_fingerprint.as_str(),
                first.manifest.rows_seen,
            )
        {
            return Err(Error::Input(format!(
                "{who} read another input ({} rows, fingerprint {}) than `{origin0}` ({} rows, \
                 fingerprint {}): every shard must read the same input",
                m.rows_seen,
                m.input_fingerprint,
                first.manifest.rows_seen,
                first.manifest.input_fingerprint
            )));
        }
        let names =
            |m: &ShardManifest| m.stages.iter().map(|s| s.stage.clone()).collect::<Vec<_>>();
        if names(m) != names(&first.manifest) {
            return Err(Error::Input(format!(
                "{who} ran the stages {:?}, `{origin0}` ran {:?}",
                names(m),
                names(&first.manifest)
            )));
        }
    }
    let mut by_index: BTreeMap<u32, &str> = BTreeMap::new();
    for r in &runs {
        if let Some(other) = by_index.insert(r.manifest.shard, &r.origin) {
            return Err(Error::Input(format!(
                "duplicate shard {}: given twice, as `{other}` and `{}`; merge needs every shard \
                 of N = {n} (0 to {}) exactly once",
                r.manifest.spec(),
                r.origin,
                n - 1
            )));
        }
    }
    let missing: Vec<String> = (0..n)
        .filter(|i| !by_index.contains_key(i))
        .map(|i| format!("{i}/{n}"))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Input(format!(
            "missing shard{} {}: merge needs every shard of N = {n} (0 to {}) exactly once ({} \
             of {n} given)",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            n - 1,
            runs.len()
        )));
    }
    runs.sort_by_key(|r| r.manifest.shard);
    let owned: u64 = runs.iter().map(|r| r.manifest.rows_owned).sum();
    if owned != first_rows_seen(&runs) {
        return Err(Error::Invariant(format!(
            "the shards own {owned} rows together, the input has {}",
            first_rows_seen(&runs)
        )));
    }
    Ok(runs)
}

fn first_rows_seen(runs: &[ShardRun]) -> u64 {
    runs.first().map_or(0, |r| r.manifest.rows_seen)
}

/// Sorts `df` into `select`'s order (mixture source order, `src_file`, `src_record`, `id`),
/// after `lead` when given (a column added for the sort and removed after it).
fn select_order(cfg: &CurateConfig, mut df: DataFrame, lead: Option<Column>) -> Result<DataFrame> {
    let rank: UInt32Chunked = ranks(cfg, &df)?.into_iter().map(Some).collect();
    df.with_column(rank.with_name("_rank".into()).into_column())?;
    let mut by = vec![
        col("_rank"),
        col(col::SRC_FILE),
        col(col::SRC_RECORD),
        col(col::ID),
    ];
    let mut helpers = vec!["_rank".to_string()];
    if let Some(lead) = lead {
        helpers.push(lead.name().to_string());
        by.insert(0, col(lead.name().clone()));
        df.with_column(lead)?;
    }
    Ok(df
        .lazy()
        .sort_by_exprs(by, SortMultipleOptions::default().with_maintain_order(true))
        .drop(cols(helpers))
        .collect()?)
}

fn stack(frames: impl IntoIterator<Item = DataFrame>, what: &str) -> Result<DataFrame> {
    let mut it = frames.into_iter();
    let Some(mut all) = it.next() else {
        return Err(Error::Input(format!("no {what} tables to merge")));
    };
    for df in it {
        all.vstack_mut(&df)
            .map_err(|e| Error::Input(format!("the shards' {what} tables do not stack: {e}")))?;
    }
    Ok(all)
}

/// Merges shard runs into the output of a single run of `cfg` on the same input: checks that
/// they are shards `0..N` of one run (same N, config, test sets and input; each index exactly
/// once), restores `select`'s order, runs `mixture` and stacks the dropped rows by stage and
/// order. Timings are summed over the shards.
pub fn merge(
    cfg: &CurateConfig,
    runs: Vec<ShardRun>,
    progress: Option<&MultiProgress>,
) -> Result<CurateOutput> {
    cfg.validate()?;
    let runs = check_set(cfg, runs)?;
    let rows_in = first_rows_seen(&runs);
    let names: Vec<String> = runs[0]
        .manifest
        .stages
        .iter()
        .map(|s| s.stage.clone())
        .collect();
    let mut stats: Vec<StageStats> = vec![StageStats::default(); names.len()];
    let mut seconds: Vec<f64> = vec![0.0; names.len()];
    let mut kept = Vec::with_capacity(runs.len());
    let mut dropped = Vec::with_capacity(runs.len());
    for r in runs {
        for (i, s) in r.manifest.stages.into_iter().enumerate() {
            stats[i] = std::mem::take(&mut stats[i]) + s;
        }
        for (i, (_, secs)) in r.manifest.stage_seconds.iter().enumerate() {
            if let Some(t) = seconds.get_mut(i) {
                *t += secs;
            }
        }
        kept.push(r.kept);
        dropped.push(r.dropped);
    }
    let kept = select_order(cfg, stack(kept, "kept")?, None)?;
    // A single run stacks each stage's dropped rows in stage order, each in its table order,
    // which is `select`'s order: sort by (stage, select order).
    let dropped = stack(dropped, "dropped")?;
    let stage_index: HashMap<&str, u32> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as u32))
        .collect();
    let idx: UInt32Chunked = dropped
        .column(STAGE)?
        .str()?
        .iter()
        .map(|s| stage_index.get(s.unwrap_or("")).copied())
        .collect();
    if idx.null_count() > 0 {
        return Err(Error::Invariant(
            "a shard's dropped row names a stage the shards did not run".into(),
        ));
    }
    let idx = idx.with_name("_stage".into()).into_column();
    let mut dropped = select_order(cfg, dropped, Some(idx))?;
    let mixture: Vec<Box<dyn Stage>> = vec![Box::new(Mixture {
        seed: cfg.seed,
        sources: cfg.sources.clone(),
    })];
    let mix = run_stages(&mixture, kept, progress, &mut |_, _| Ok(()))?;
    dropped.vstack_mut(&mix.dropped)?;
    dropped.rechunk_mut();
    let mut timings: Vec<(String, Duration)> = names
        .into_iter()
        .zip(seconds)
        .map(|(n, s)| (n, Duration::from_secs_f64(s)))
        .collect();
    timings.extend(mix.timings);
    stats.extend(mix.stats);
    let out = CurateOutput {
        kept: mix.kept,
        dropped,
        stats,
        timings,
        rows_in,
    };
    check_lineage(&out)?;
    Ok(out)
}

/// [`merge`] of shard directories written by [`ShardRun::write`] (`koala curate --shard`).
pub fn merge_shards(
    cfg: &CurateConfig,
    dirs: &[PathBuf],
    progress: Option<&MultiProgress>,
) -> Result<CurateOutput> {
    let runs = dirs
        .iter()
        .map(|d| ShardRun::read(d))
        .collect::<Result<Vec<_>>>()?;
    merge(cfg, runs, progress)
}

/// What `koala curate-merge` does: [`merge_shards`], then the files of a single run written into
/// `out` by [`write_outputs`] (and shard 0's `quarantine.jsonl`, if it has one).
pub fn merge_dir(
    cfg: &CurateConfig,
    dirs: &[PathBuf],
    out: &Path,
    progress: Option<&MultiProgress>,
) -> Result<Curated> {
    let runs = dirs
        .iter()
        .map(|d| ShardRun::read(d))
        .collect::<Result<Vec<_>>>()?;
    // Every shard loaded the same input (checked by `merge`): shard 0's quarantine is the run's.
    let quarantine = dirs
        .iter()
        .zip(&runs)
        .find(|(_, r)| r.manifest.shard == 0)
        .map(|(d, _)| d.join(QUARANTINE))
        .filter(|q| q.is_file());
    let mut output = merge(cfg, runs, progress)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    if let Some(q) = quarantine {
        let to = out.join(QUARANTINE);
        std::fs::copy(&q, &to).map_err(|e| Error::io(&to, e))?;
    }
    let report = write_outputs(cfg, &mut output, out)?;
    Ok(Curated { output, report })
}

/// What `koala curate --shard I/N` does, without progress bars: loads every source under
/// `input`, runs shard `spec` ([`curate_shard`]) and writes it into `out` (malformed input
/// records, if any, to `out/quarantine.jsonl`).
///
/// ```no_run
/// use koala_pipeline::prelude::*;
/// use koala_pipeline::stages::shard::{curate_shard_dir, merge_dir, ShardSpec};
/// let cfg = CurateConfig::preset("koala-all")?;
/// let mut dirs = Vec::new();
/// for i in 0..4 {
///     let dir = std::path::PathBuf::from(format!("out/shards/{i}"));
///     curate_shard_dir(&cfg, "examples/data".as_ref(), ShardSpec::new(i, 4)?, &dir)?;
///     dirs.push(dir);
/// }
/// let run = merge_dir(&cfg, &dirs, "out/curate".as_ref(), None)?;
/// println!("{}", run.report);
/// # Ok::<(), koala_pipeline::Error>(())
/// ```
pub fn curate_shard_dir(
    cfg: &CurateConfig,
    input: &Path,
    spec: ShardSpec,
    out: &Path,
) -> Result<ShardManifest> {
    check_shardable(cfg, spec)?;
    let loaded = crate::sources::load_dir(input, &crate::sources::LoadOptions::default())?;
    loaded.check_reconciled()?;
    loaded.write_quarantine_into(out)?;
    let mut run = curate_shard(cfg, loaded.table, &input.display().to_string(), spec, None)?;
    run.write(out)?;
    Ok(run.manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Conversation, Turn, to_dataframe};
    use crate::stages::run::curate;

    #[test]
    fn spec_parsing_and_errors() {
        assert_eq!(
            "2/7".parse::<ShardSpec>().unwrap(),
            ShardSpec { index: 2, count: 7 }
        );
        assert_eq!(" 0 / 1 ".parse::<ShardSpec>().unwrap(), ShardSpec::whole());
        let e = |s: &str| s.parse::<ShardSpec>().unwrap_err().to_string();
        assert!(
            e("3/3").contains("index 3 is not below N = 3"),
            "{}",
            e("3/3")
        );
        assert!(e("3/3").contains("from 0 to 2"), "{}", e("3/3"));
        assert!(e("1/0").contains("at least 1"), "{}", e("1/0"));
        assert!(e("7").contains("expected I/N"), "{}", e("7"));
        assert!(
            e("a/4").contains("`a` is not a shard index"),
            "{}",
            e("a/4")
        );
        assert!(e("-1/4").contains("is not a shard index"), "{}", e("-1/4"));
        assert_eq!(ShardSpec::new(1, 4).unwrap().to_string(), "1/4");
    }

    fn conv(id: &str, source: &str, q: &str, record: u64) -> Conversation {
        Conversation {
            id: id.into(),
            source: source.into(),
            split: "unsplit".into(),
            turns: vec![
                Turn::user(" "),
                Turn::user(q),
                Turn::assistant("Here is a reply that is long enough to be judged in English."),
            ],
            src_file: "f.json".into(),
            src_record: record,
            meta: "{}".into(),
        }
    }

    fn table() -> DataFrame {
        let mut rows = Vec::new();
        for i in 0..40u64 {
            // Duplicates differing in case, spacing and HTML markup, in several sources.
            let q = match i % 4 {
                0 => format!("How do I sort list number {}?", i % 8),
                1 => format!("<p>how do I  SORT list number {}?</p>", (i - 1) % 8),
                2 => format!("What is the capital of country {i}?"),
                _ => "Tell me about ChatGPT please".into(),
            };
            let src = ["sharegpt", "alpaca", "hc3"][(i % 3) as usize];
            rows.push(conv(&format!("{src}/{i}"), src, &q, 40 - i));
        }
        rows.push(conv("webgpt/1", "webgpt", "not in the mixture", 1));
        to_dataframe(&rows).unwrap()
    }

    fn cfg(extra: &str) -> CurateConfig {
        CurateConfig::from_toml_str(
            &format!(
                "[[sources]]\nname = \"hc3\"\nweight = 0.7\n[[sources]]\nname = \"sharegpt\"\n\
                 [[sources]]\nname = \"alpaca\"\ncap = 9\n[cleanup]\nsources = [\"*\"]\n\
                 [leakage]\nenabled = false\n{extra}"
            ),
            "test",
        )
        .unwrap()
    }

    #[test]
    fn merged_shards_equal_the_single_run_with_empty_shards() {
        for extra in [
            "[dedup]\nsources = [\"*\"]\nscope = \"global\"",
            "[dedup]\nsources = [\"sharegpt\", \"alpaca\"]",
        ] {
            let cfg = cfg(extra);
            let single = curate(&cfg, table(), None).unwrap();
            assert!(single.stats[2].dropped_total() > 0, "dedup drops something");
            for n in [1u32, 3, 50] {
                let runs: Vec<ShardRun> = (0..n)
                    .map(|i| {
                        curate_shard(&cfg, table(), "t", ShardSpec::new(i, n).unwrap(), None)
                            .unwrap()
                    })
                    .collect();
                if n == 50 {
                    assert!(runs.iter().any(|r| r.manifest.rows_owned == 0));
                }
                let merged = merge(&cfg, runs, None).unwrap();
                assert!(merged.kept.equals_missing(&single.kept), "{extra} N={n}");
                assert!(
                    merged.dropped.equals_missing(&single.dropped),
                    "{extra} N={n}"
                );
                assert_eq!(merged.stats, single.stats, "{extra} N={n}");
            }
        }
    }

    #[test]
    fn duplicates_share_a_shard_and_merge_checks_the_set() {
        let cfg = cfg("");
        let keys = shard_keys(&cfg, &table()).unwrap();
        // Rows 0 and 1 are duplicates after cleanup (HTML, case, spacing) in sharegpt.
        let ids = table();
        let ids = ids.column("id").unwrap().str().unwrap();
        let at = |id: &str| ids.iter().position(|x| x == Some(id)).unwrap();
        assert_eq!(keys[at("sharegpt/0")], keys[at("sharegpt/9")]);
        let run = |i, n| curate_shard(&cfg, table(), "t", ShardSpec::new(i, n).unwrap(), None);
        let e = merge(&cfg, vec![run(0, 3).unwrap(), run(2, 3).unwrap()], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing shard 1/3"), "{e}");
        let e = merge(
            &cfg,
            vec![run(0, 2).unwrap(), run(0, 2).unwrap(), run(1, 2).unwrap()],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("duplicate shard 0/2"), "{e}");
        let e = merge(&cfg, vec![run(0, 2).unwrap(), run(1, 3).unwrap()], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mismatched shard counts"), "{e}");
        let other = CurateConfig {
            seed: 7,
            ..cfg.clone()
        };
        let e = merge(&other, vec![run(0, 1).unwrap()], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("another config"), "{e}");
        let mut near = cfg.clone();
        near.dedup.near.enabled = true;
        let e = curate_shard(&near, table(), "t", ShardSpec::new(0, 2).unwrap(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[dedup.near]"), "{e}");
        assert!(curate_shard(&near, table(), "t", ShardSpec::whole(), None).is_ok());
    }

    #[test]
    fn ties_in_the_select_order_are_refused_when_sharded() {
        let cfg = cfg("");
        let row = conv("sharegpt/1", "sharegpt", "q", 1);
        let df = to_dataframe(&[row.clone(), row]).unwrap();
        let e = curate_shard(&cfg, df.clone(), "t", ShardSpec::new(0, 2).unwrap(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("total row order"), "{e}");
        assert!(curate_shard(&cfg, df, "t", ShardSpec::whole(), None).is_ok());
    }
}
