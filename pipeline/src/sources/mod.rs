//! Loaders, one file per published source format, into the conversation table.
//!
//! A load runs one way, one job per file of this module:
//!
//! 1. [`discover`] (`discover.rs`) finds each source's files in a directory by the layout of
//!    `docs/sources.md` (`DIR/sharegpt/*.json`, `DIR/hh/**/*.jsonl.gz`, …);
//! 2. [`read`] streams each file as batches of raw records (JSON list, JSON lines, Parquet; gzip
//!    detected by its magic bytes), with a cap on one record's size, on its own thread;
//! 3. [`parse`](parse.rs) turns each batch into rows in parallel with rayon, through the source's
//!    field rules (`sharegpt.rs`, `hc3.rs`, …, one file per source);
//! 4. [`quarantine`] keeps what did not parse, with its reason;
//! 5. [`reconcile`] counts and checks that every record read is accounted for.
//!
//! The table comes out in a deterministic order (sources in [`Source::ALL`] order, files in path
//! order, records in file order), with per-file counts and the quarantined records. Reading holds
//! one batch per file in flight ([`LoadOptions::batch_bytes`]), never a whole file.
//!
//! **Error policy.** A malformed record (bad JSON, invalid UTF-8, a wrong type, a broken turn
//! structure) is an error that names the file, the line and the field. With [`OnError::Skip`] (the
//! default) it goes to the quarantine with its raw text and the reason; with [`OnError::Fail`] the
//! load stops at the first one. A record over [`LoadOptions::max_record_bytes`] is quarantined
//! without being loaded. The damaged tail of a file (a truncated gzip stream, a JSON list that
//! never closes) is quarantined as one more record.
//!
//! **Counts reconcile per record**: `records_read = records_loaded + records_skipped +
//! records_quarantined` for every file, and the table has exactly `Σ rows` rows (a HC3 record gives
//! one row per answer, a HH, WebGPT or summarize record two). [`LoadOutcome::check_reconciled`]
//! asserts it.
//!
//! # Example
//! ```
//! use koala_pipeline::sources::{load_dir, LoadOptions};
//! let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data");
//! let out = load_dir(&dir, &LoadOptions::default()).unwrap();
//! out.check_reconciled().unwrap();
//! let totals = out.totals();
//! assert_eq!(out.table.height() as u64, totals.rows);
//! assert_eq!(out.quarantine.len() as u64, totals.records_quarantined);
//! ```
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::Ordering;

use indicatif::ProgressBar;
use polars::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::schema;

pub mod alpaca;
mod discover;
pub mod hc3;
pub mod hh;
pub mod oig;
mod parse;
pub mod quarantine;
pub mod read;
pub mod reconcile;
mod record;
pub mod sharegpt;
pub mod summarize;
#[cfg(test)]
mod tests;
pub mod webgpt;

pub use discover::{Discovery, InputFile, LAYOUT_HELP, discover};
pub use quarantine::{QUARANTINE_RAW_LIMIT, QuarantineEntry};
pub use reconcile::{FileStats, SourceStats};
use record::FieldError;

/// The seven sources, in the order the table lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    ShareGpt,
    Hc3,
    Oig,
    Alpaca,
    Hh,
    WebGpt,
    Summarize,
}

impl Source {
    /// Every source, in table order.
    pub const ALL: [Source; 7] = [
        Source::ShareGpt,
        Source::Hc3,
        Source::Oig,
        Source::Alpaca,
        Source::Hh,
        Source::WebGpt,
        Source::Summarize,
    ];

    /// The name used in the `source` column, in ids, and as the input directory name.
    pub fn name(self) -> &'static str {
        match self {
            Source::ShareGpt => "sharegpt",
            Source::Hc3 => "hc3",
            Source::Oig => "oig",
            Source::Alpaca => "alpaca",
            Source::Hh => "hh",
            Source::WebGpt => "webgpt",
            Source::Summarize => "summarize",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Source::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| format!("unknown source {s:?} (one of sharegpt, hc3, oig, alpaca, hh, webgpt, summarize)"))
    }
}

/// What to do with a malformed record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Quarantine it (raw text + reason) and go on.
    #[default]
    Skip,
    /// Stop the load with an error naming file, line and field.
    Fail,
}

impl FromStr for OnError {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "skip" => Ok(OnError::Skip),
            "fail" => Ok(OnError::Fail),
            _ => Err(format!("unknown error policy {s:?} (skip or fail)")),
        }
    }
}

/// What to do with a WebGPT comparison whose two scores are equal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TiePolicy {
    /// Keep both answers, marked `unrated`.
    #[default]
    KeepUnrated,
    /// Skip the comparison (counted in `records_skipped`), as Koala's script does.
    Skip,
}

impl FromStr for TiePolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "keep" | "keep-unrated" => Ok(TiePolicy::KeepUnrated),
            "skip" => Ok(TiePolicy::Skip),
            _ => Err(format!("unknown tie policy {s:?} (keep or skip)")),
        }
    }
}

/// Options of a load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub on_error: OnError,
    pub webgpt_ties: TiePolicy,
    /// Only these sources (all when `None`).
    pub sources: Option<Vec<Source>>,
    /// Records per parallel work item.
    pub chunk_records: usize,
    /// Bytes of records read per batch: with one batch being parsed and the next being read, a
    /// file's reading holds about twice this, whatever the file's size.
    pub batch_bytes: usize,
    /// A record longer than this (in decoded bytes) is quarantined without being loaded.
    pub max_record_bytes: usize,
    /// Advanced by the bytes read (on disk); its length is set by [`load_files`].
    pub progress: Option<ProgressBar>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            on_error: OnError::Skip,
            webgpt_ties: TiePolicy::KeepUnrated,
            sources: None,
            chunk_records: 2048,
            batch_bytes: 32 << 20,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            progress: None,
        }
    }
}

/// The default [`LoadOptions::max_record_bytes`]: 64 MiB, far above any real conversation.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 << 20;

/// The result of a load.
#[derive(Debug)]
pub struct LoadOutcome {
    /// The conversation table (`schema::conversation_schema()`).
    pub table: DataFrame,
    pub files: Vec<FileStats>,
    pub quarantine: Vec<QuarantineEntry>,
    pub ignored: Vec<String>,
    /// Rows whose id was already taken (for example a native id repeated in a dump) and got a
    /// `#2`, `#3`, … suffix to stay unique.
    pub renamed_ids: u64,
}

impl LoadOutcome {
    /// Writes the table as Parquet (zstd), the format `koala load` outputs.
    pub fn write_table(&mut self, path: &Path) -> Result<()> {
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        ParquetWriter::new(std::io::BufWriter::new(file))
            .with_compression(ParquetCompression::Zstd(None))
            .finish(&mut self.table)?;
        Ok(())
    }
}

/// Loads every source found in `dir` (see [`discover`]).
///
/// A directory with no file in the sources' layout is an error that lists what was found, and
/// so is a source whose every record failed to parse: neither is "0 rows".
pub fn load_dir(dir: &Path, opts: &LoadOptions) -> Result<LoadOutcome> {
    let found = discover(dir)?;
    let wanted = found
        .files
        .iter()
        .filter(|f| opts.sources.as_ref().is_none_or(|s| s.contains(&f.source)))
        .count();
    if wanted == 0 {
        let mut seen: Vec<String> = found.files.iter().map(|f| f.name.clone()).collect();
        seen.extend(found.ignored.iter().cloned());
        let seen = match seen.len() {
            0 => "nothing".to_string(),
            n if n > 12 => format!("{}, … ({n} entries)", seen[..12].join(", ")),
            _ => seen.join(", "),
        };
        let which = match &opts.sources {
            Some(s) => format!(
                " for the sources {}",
                s.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
            ),
            None => String::new(),
        };
        return Err(Error::Input(format!(
            "{}: no input files{which} in the expected layout {LAYOUT_HELP}; found: {seen}",
            dir.display()
        )));
    }
    let mut out = load_files(&found.files, opts)?;
    reconcile::check_some_rows_parse(&out)?;
    out.ignored = found.ignored;
    Ok(out)
}

/// Loads one file of a source.
pub fn load_file(source: Source, path: &Path, opts: &LoadOptions) -> Result<LoadOutcome> {
    load_files(&[InputFile::new(source, path)], opts)
}

/// Loads the given files, in the given order.
pub fn load_files(files: &[InputFile], opts: &LoadOptions) -> Result<LoadOutcome> {
    let files: Vec<&InputFile> = files
        .iter()
        .filter(|f| opts.sources.as_ref().is_none_or(|s| s.contains(&f.source)))
        .collect();
    if let Some(pb) = &opts.progress {
        let total: u64 = files
            .iter()
            .map(|f| std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0))
            .sum();
        pb.set_length(total);
    }
    let mut frames = Vec::new();
    let mut stats = Vec::with_capacity(files.len());
    let mut quarantine = Vec::new();
    for f in files {
        let (mut df, st, mut q) = load_one(f, opts)?;
        frames.append(&mut df);
        stats.push(st);
        quarantine.append(&mut q);
    }
    let mut table = match frames.len() {
        0 => schema::to_dataframe(&[])?,
        _ => {
            let mut it = frames.into_iter();
            let mut acc = it.next().unwrap_or_default();
            for df in it {
                acc.vstack_mut_owned(df)?;
            }
            acc
        }
    };
    let renamed_ids = reconcile::make_ids_unique(&mut table)?;
    if let Some(pb) = &opts.progress {
        pb.finish();
    }
    Ok(LoadOutcome {
        table,
        files: stats,
        quarantine,
        ignored: Vec::new(),
        renamed_ids,
    })
}

type FileResult = (Vec<DataFrame>, FileStats, Vec<QuarantineEntry>);

/// Loads one file: its batches are read on a thread of their own while the previous one is parsed.
fn load_one(f: &InputFile, opts: &LoadOptions) -> Result<FileResult> {
    let _span = tracing::debug_span!("load", file = %f.name).entered();
    let mut reader = read::RecordReader::open(&f.path, opts.max_record_bytes)?;
    let disk_read = reader.disk_read_counter();
    let mut stats = FileStats {
        source: f.source.name().to_string(),
        file: f.name.clone(),
        layout: reader.layout().as_str().into(),
        ..FileStats::default()
    };
    let mut frames = Vec::new();
    let mut quarantine = Vec::new();
    let mut shown = 0u64;
    let mut show_progress = |upto: u64| {
        if let Some(pb) = &opts.progress {
            pb.inc(upto.saturating_sub(shown));
            shown = shown.max(upto);
        }
    };
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<read::Batch>>(1);
        let reader = &mut reader;
        scope.spawn(move || {
            loop {
                let next = reader
                    .next_batch(opts.batch_bytes, opts.chunk_records)
                    .transpose();
                let stop = !matches!(next, Some(Ok(_)));
                // A closed channel means the parser stopped (an error): so does the reader.
                if next.is_some_and(|b| tx.send(b).is_err()) || stop {
                    break;
                }
            }
        });
        for batch in rx {
            let out = parse::parse_batch(f, opts, &batch?)?;
            stats.records_read += out.loaded + out.quarantine.len() as u64;
            stats.records_loaded += out.loaded;
            stats.rows += out.rows;
            for (k, v) in out.skipped {
                stats.records_read += v;
                stats.records_skipped += v;
                *stats.skipped.entry(k).or_insert(0) += v;
            }
            stats.records_quarantined += out.quarantine.len() as u64;
            if let (OnError::Fail, Some(q)) = (opts.on_error, out.quarantine.first()) {
                return Err(q.to_error());
            }
            quarantine.extend(out.quarantine);
            frames.extend(out.frames);
            show_progress(disk_read.load(Ordering::Relaxed));
        }
        Ok(())
    })?;
    let fin = reader.finish();
    stats.gzipped = fin.gzipped;
    stats.disk_bytes = fin.disk_bytes;
    stats.decoded_bytes = fin.decoded_bytes;
    // The damaged tail of the file (and a gzip failure) is one more quarantined record.
    if let Some(t) = fin.tail {
        stats.records_read += 1;
        stats.records_quarantined += 1;
        quarantine.push(QuarantineEntry::new(
            f,
            (t.record, t.line),
            &t.head,
            t.bytes,
            FieldError::new(t.field, t.message),
        ));
    } else if stats.records_read == 0 {
        stats.warning = Some("empty file: no records".into());
        tracing::warn!(file = %f.name, "empty file: no records");
    }
    show_progress(fin.disk_bytes);
    if let (OnError::Fail, Some(q)) = (opts.on_error, quarantine.first()) {
        return Err(q.to_error());
    }
    if stats.warning.is_some() && opts.on_error == OnError::Fail {
        return Err(Error::Record {
            file: f.name.clone(),
            line: 1,
            field: "(file)".into(),
            message: "empty file: no records".into(),
        });
    }
    for q in &quarantine {
        tracing::debug!(file = %f.name, line = q.line, field = %q.field, "quarantined: {}", q.reason);
    }
    Ok((frames, stats, quarantine))
}
