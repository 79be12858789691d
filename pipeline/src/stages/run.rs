//! The whole curation run: select → cleanup → dedup → language → markers → [leakage] → mixture, with
//! lineage and the invariant `rows in = kept + Σ dropped`, checked at the end of every run.
//!
//! # Example
//! ```
//! use koala_pipeline::schema::{to_dataframe, Conversation, Turn};
//! use koala_pipeline::stages::{config::CurateConfig, run::curate};
//! let cfg = CurateConfig::from_toml_str("[[sources]]\nname = \"alpaca\"", "inline").unwrap();
//! let row = |i: u64, reply: &str| Conversation {
//!     id: format!("alpaca/{i}"), source: "alpaca".into(), split: "unsplit".into(),
//!     turns: vec![Turn::user("Name three colours of the rainbow."), Turn::assistant(reply)],
//!     src_file: "alpaca_data.json".into(), src_record: i, meta: "{}".into(),
//! };
//! // The second row has an empty reply: cleanup drops it (no_assistant_reply).
//! let df = to_dataframe(&[row(1, "Red, orange and yellow are three of them."), row(2, " ")]).unwrap();
//! let out = curate(&cfg, df, None).unwrap();
//! assert_eq!((out.kept.height(), out.dropped.height()), (1, 1));
//! ```
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use polars::prelude::*;

use super::cleanup::Cleanup;
use super::config::CurateConfig;
use super::dedup::Dedup;
use super::language::LanguageFilter;
use super::leakage::Leakage;
use super::markers::Markers;
use super::mixture::{Mixture, Select};
use super::report::Report;
use super::{Stage, StageStats, empty_dropped};
use crate::error::{Error, Result};
use crate::schema::validate;

/// Everything a run produced, in memory.
#[derive(Debug)]
pub struct CurateOutput {
    /// Kept rows: the conversation columns plus `language`, `language_score`, `mix_split`.
    pub kept: DataFrame,
    /// Dropped rows of every stage: the conversation columns plus stage, reason, details.
    pub dropped: DataFrame,
    /// Per-stage counts, in order.
    pub stats: Vec<StageStats>,
    /// Wall time per stage.
    pub timings: Vec<(String, Duration)>,
    pub rows_in: u64,
}

/// The stages of `cfg`, in recipe order.
pub fn stages(cfg: &CurateConfig) -> Result<Vec<Box<dyn Stage>>> {
    let mut v: Vec<Box<dyn Stage>> = vec![
        Box::new(Select {
            sources: cfg.sources.clone(),
        }),
        Box::new(Cleanup::new(cfg.cleanup.clone())),
        Box::new(Dedup::new(cfg.dedup.clone())),
        Box::new(LanguageFilter::new(cfg.language.clone())?),
        Box::new(Markers::new(cfg.markers.clone())),
    ];
    if cfg.leakage.enabled {
        v.push(Box::new(Leakage::new(cfg.leakage.clone())?));
    }
    v.push(Box::new(Mixture {
        seed: cfg.seed,
        sources: cfg.sources.clone(),
    }));
    Ok(v)
}

/// Runs every stage on the conversation table `input`. With `progress`, each stage gets a bar.
pub fn curate(
    cfg: &CurateConfig,
    input: DataFrame,
    progress: Option<&MultiProgress>,
) -> Result<CurateOutput> {
    // A frame from another evcxr cell carries a schema cache it cannot read (crate::notebook).
    let input = crate::notebook::reseat(&input)?;
    validate(&input)?;
    cfg.validate()?;
    run_stages(&stages(cfg)?, input, progress, &mut |_, _| Ok(()))
}

/// Runs `stages` in order on `input`, stacking each stage's dropped rows (in stage order, each
/// in its table order) and checking the lineage invariant at the end: the loop of [`curate`],
/// usable on a part of the recipe (a sharded run, [`super::shard`], stops before `mixture`;
/// its merge runs `mixture` alone). `after_stage` sees each stage's name and kept table before
/// the next stage starts (an error from it stops the run).
pub fn run_stages(
    stages: &[Box<dyn Stage>],
    input: DataFrame,
    progress: Option<&MultiProgress>,
    after_stage: &mut dyn FnMut(&str, &DataFrame) -> Result<()>,
) -> Result<CurateOutput> {
    let rows_in = input.height() as u64;
    // (`select` sorts the table into one chunk per column; every later stage then views
    // `turns` in place, and the row filters between stages keep single chunks.)
    let mut df = input;
    let mut dropped = empty_dropped()?;
    let mut stats = Vec::new();
    let mut timings = Vec::new();
    let style = ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {msg}")
        .map_err(|e| Error::Config(e.to_string()))?
        .progress_chars("=> ");
    for stage in stages {
        let pb = match progress {
            Some(mp) => mp.add(ProgressBar::new(df.height() as u64)),
            None => ProgressBar::hidden(),
        };
        pb.set_style(style.clone());
        pb.set_prefix(stage.name());
        let t0 = Instant::now();
        let out = stage.run_with_progress(df, &pb)?;
        timings.push((stage.name().to_string(), t0.elapsed()));
        pb.finish_with_message(format!(
            "kept {}, dropped {}",
            out.stats.kept,
            out.stats.dropped_total()
        ));
        tracing::debug!(
            stage = stage.name(),
            kept = out.stats.kept,
            dropped = out.stats.dropped_total()
        );
        dropped.vstack_mut(&out.dropped)?;
        stats.push(out.stats);
        df = out.kept;
        after_stage(stage.name(), &df)?;
    }
    dropped.rechunk_mut();
    let out = CurateOutput {
        kept: df,
        dropped,
        stats,
        timings,
        rows_in,
    };
    check_lineage(&out)?;
    Ok(out)
}

/// The lineage invariant: rows in = kept + Σ dropped, for the run and for every stage, and each
/// stage starts with what the one before it kept.
pub fn check_lineage(out: &CurateOutput) -> Result<()> {
    let kept = out.kept.height() as u64;
    let dropped = out.dropped.height() as u64;
    if out.rows_in != kept + dropped {
        return Err(Error::Invariant(format!(
            "lineage: {} rows in, but {kept} kept + {dropped} dropped = {}",
            out.rows_in,
            kept + dropped
        )));
    }
    let mut expect = out.rows_in;
    for s in &out.stats {
        s.check()?;
        if s.total != expect {
            return Err(Error::Invariant(format!(
                "lineage: stage `{}` got {} rows, the previous stage kept {expect}",
                s.stage, s.total
            )));
        }
        expect = s.kept;
    }
    if expect != kept {
        return Err(Error::Invariant(format!(
            "lineage: last stage kept {expect}, output has {kept}"
        )));
    }
    Ok(())
}

fn write_parquet(df: &mut DataFrame, path: &Path) -> Result<()> {
    let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    ParquetWriter::new(f).finish(df)?;
    Ok(())
}

/// One call for a whole run, as `koala curate` does it without progress bars: loads every source
/// under `input` (`DIR/<source>/…`), curates with `cfg`, and writes everything into `out`
/// (malformed input records, if any, to `out/quarantine.jsonl`). Returns the tables and the
/// report, as one value (a struct, not a tuple: evcxr falls back to a slow full check on
/// `let (a, b) = …`).
///
/// ```no_run
/// use koala_pipeline::prelude::*;
/// let cfg = CurateConfig::preset("koala-all")?;
/// let run = curate_dir(&cfg, "examples/data".as_ref(), "out/curate".as_ref())?;
/// println!("{}", run.report);
/// println!("{}", run.output.kept.head(Some(3)));
/// # Ok::<(), koala_pipeline::Error>(())
/// ```
pub fn curate_dir(cfg: &CurateConfig, input: &Path, out: &Path) -> Result<Curated> {
    let loaded = crate::sources::load_dir(input, &crate::sources::LoadOptions::default())?;
    loaded.check_reconciled()?;
    if let Some(q) = loaded.write_quarantine_into(out)? {
        tracing::warn!(
            "{} malformed input records quarantined in {}",
            loaded.quarantine.len(),
            q.display()
        );
    }
    let mut output = curate(cfg, loaded.table, None)?;
    let report = write_outputs(cfg, &mut output, out)?;
    Ok(Curated { output, report })
}

/// What [`curate_dir`] returns.
pub struct Curated {
    /// The kept and dropped tables, with per-stage statistics.
    pub output: CurateOutput,
    /// The report written as `report.json` / `report.md`.
    pub report: Report,
}

#[cfg(feature = "evcxr")]
impl Curated {
    /// evcxr's rich display: the report ([`Report::to_html`]) and the first kept rows.
    pub fn evcxr_display(&self) {
        let mut h = self.report.to_html();
        h.push_str("<h4>Kept conversations (first 5)</h4>");
        h.push_str(&crate::notebook::html_table(&self.output.kept, 5, 160));
        let plain = format!(
            "{}\nKept conversations (first 5):\n{}",
            self.report.to_markdown(),
            self.output.kept.head(Some(5))
        );
        crate::notebook::evcxr_rich(&plain, &h);
    }
}

/// Writes `kept.parquet`, `dropped.parquet`, the JSONL export, `report.json`, `report.md` and
/// `composition.svg` into `dir`, and re-checks the invariant on the files written.
pub fn write_outputs(cfg: &CurateConfig, out: &mut CurateOutput, dir: &Path) -> Result<Report> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // The two Parquet files and the JSONL export are independent: write all three side by side
    // (each Parquet file is compressed on one thread, so one after the other they left a core
    // idle). The writer wants `&mut`; a DataFrame clone shares its columns, so this copies no data.
    let mut kept = out.kept.clone();
    let dropped = &mut out.dropped;
    let (dropped_written, (kept_written, export)) = rayon::join(
        || write_parquet(dropped, &dir.join("dropped.parquet")),
        || {
            rayon::join(
                || write_parquet(&mut kept, &dir.join("kept.parquet")),
                || -> Result<Option<super::export::ExportCounts>> {
                    if !cfg.export.jsonl {
                        return Ok(None);
                    }
                    Ok(Some(super::export::write_jsonl(
                        &out.kept,
                        &cfg.markers,
                        cfg.seed,
                        cfg.export.shuffle,
                        cfg.export.eval_prompts,
                        dir,
                    )?))
                },
            )
        },
    );
    dropped_written?;
    kept_written?;
    let export = export?;
    // Read back the row counts of what was written (from the Parquet footers): the files, not
    // the memory, must satisfy the invariant.
    let count = |name: &str| -> Result<u64> {
        let path = dir.join(name);
        let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(ParquetReader::new(f).num_rows()? as u64)
    };
    let (k, d) = (count("kept.parquet")?, count("dropped.parquet")?);
    if k + d != out.rows_in {
        return Err(Error::Invariant(format!(
            "lineage on disk: {} rows in, kept.parquet {k} + dropped.parquet {d}",
            out.rows_in
        )));
    }
    let report = Report::build(cfg, out, export)?;
    report.write(dir)?;
    Ok(report)
}
