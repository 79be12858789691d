//! Loaders, one file per published source format, into the conversation table.
//!
//! [`load_dir`] finds each source's files in a directory by the layout of `docs/sources.md`
//! (`DIR/sharegpt/*.json`, `DIR/hh/**/*.jsonl.gz`, …), reads them (JSON list, JSON lines, Parquet;
//! gzip detected by its magic bytes), parses records in parallel with rayon, and returns one table
//! in a deterministic order (sources in [`Source::ALL`] order, files in path order, records in file
//! order), with per-file counts and the quarantined records.
//!
//! **Error policy.** A malformed record (bad JSON, invalid UTF-8, a wrong type, a broken turn
//! structure) is an error that names the file, the line and the field. With [`OnError::Skip`] (the
//! default) it goes to the quarantine with its raw text and the reason; with [`OnError::Fail`] the
//! load stops at the first one. The damaged tail of a file (a truncated gzip stream, a JSON list
//! that never closes) is quarantined as one more record.
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
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use indicatif::ProgressBar;
use polars::prelude::*;
use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::schema::{self, col};

pub mod alpaca;
pub mod hc3;
pub mod hh;
pub mod oig;
pub mod read;
mod record;
pub mod sharegpt;
pub mod summarize;
#[cfg(test)]
mod tests;
pub mod webgpt;

use read::Layout;
use record::{FieldError, Parsed, RecordCtx};

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

    fn parse(self, ctx: &RecordCtx, v: &Value) -> record::FieldResult<Parsed> {
        match self {
            Source::ShareGpt => sharegpt::parse(ctx, v),
            Source::Hc3 => hc3::parse(ctx, v),
            Source::Oig => oig::parse(ctx, v),
            Source::Alpaca => alpaca::parse(ctx, v),
            Source::Hh => hh::parse(ctx, v),
            Source::WebGpt => webgpt::parse(ctx, v),
            Source::Summarize => summarize::parse(ctx, v),
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
            progress: None,
        }
    }
}

/// The most raw text a quarantine entry keeps (the full size is in `raw_bytes`).
pub const QUARANTINE_RAW_LIMIT: usize = 1 << 20;

/// A record that was not loaded, with where it came from and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuarantineEntry {
    pub source: Source,
    pub file: String,
    /// 1-based record number (line, element or row), as in `src_record`.
    pub record: u64,
    /// 1-based text line where the record starts.
    pub line: u64,
    pub field: String,
    pub reason: String,
    /// The raw text (lossy UTF-8), at most [`QUARANTINE_RAW_LIMIT`] bytes.
    pub raw: String,
    pub raw_bytes: u64,
    pub raw_truncated: bool,
}

impl QuarantineEntry {
    /// The error this entry stands for.
    pub fn to_error(&self) -> Error {
        let message = if self.record != self.line {
            format!("{} (record {})", self.reason, self.record)
        } else {
            self.reason.clone()
        };
        Error::Record {
            file: self.file.clone(),
            line: self.line,
            field: self.field.clone(),
            message,
        }
    }
}

/// Counts of one input file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FileStats {
    pub source: String,
    pub file: String,
    pub layout: String,
    pub gzipped: bool,
    pub disk_bytes: u64,
    pub decoded_bytes: u64,
    pub records_read: u64,
    pub records_loaded: u64,
    pub records_skipped: u64,
    pub records_quarantined: u64,
    pub rows: u64,
    /// Skipped records by reason (an option's doing, not an error).
    pub skipped: BTreeMap<String, u64>,
    /// A note such as "empty file".
    pub warning: Option<String>,
}

/// Counts summed over a source's files (or over everything, for [`LoadOutcome::totals`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SourceStats {
    pub source: String,
    pub files: u64,
    pub disk_bytes: u64,
    pub decoded_bytes: u64,
    pub records_read: u64,
    pub records_loaded: u64,
    pub records_skipped: u64,
    pub records_quarantined: u64,
    pub rows: u64,
}

impl SourceStats {
    fn add(&mut self, f: &FileStats) {
        self.files += 1;
        self.disk_bytes += f.disk_bytes;
        self.decoded_bytes += f.decoded_bytes;
        self.records_read += f.records_read;
        self.records_loaded += f.records_loaded;
        self.records_skipped += f.records_skipped;
        self.records_quarantined += f.records_quarantined;
        self.rows += f.rows;
    }
}

/// One input file and how it is named in the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputFile {
    pub source: Source,
    pub path: PathBuf,
    /// As reported in `src_file` and errors: the path relative to the input directory.
    pub name: String,
    /// The file's part of position-based ids: its path below the source directory, extensions
    /// removed (`helpful-base/train`).
    pub key: String,
}

impl InputFile {
    /// A file given directly: named by its path, keyed by its stem.
    pub fn new(source: Source, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let name = path.display().to_string();
        let base = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        InputFile {
            source,
            key: strip_data_ext(&base).unwrap_or(&base).to_string(),
            path,
            name,
        }
    }
}

/// What [`discover`] found in an input directory.
#[derive(Clone, Debug, Default)]
pub struct Discovery {
    pub files: Vec<InputFile>,
    /// Paths (relative to the directory) that are not in the layout, so not read.
    pub ignored: Vec<String>,
}

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

const DATA_EXTS: [&str; 5] = [".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet"];

fn strip_data_ext(name: &str) -> Option<&str> {
    DATA_EXTS.iter().find_map(|e| name.strip_suffix(e))
}

/// Finds the sources' files in `dir` by the documented layout (`DIR/<source>/**/*.{json,jsonl,
/// json.gz,jsonl.gz,parquet}`), in source order then path order.
pub fn discover(dir: &Path) -> Result<Discovery> {
    let mut out = Discovery::default();
    if !dir.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        ));
    }
    let mut top: Vec<PathBuf> = read_dir_sorted(dir)?;
    top.retain(|p| {
        let known = p.is_dir()
            && p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.parse::<Source>().is_ok());
        if !known {
            out.ignored.push(rel_name(dir, p));
        }
        known
    });
    for source in Source::ALL {
        let sdir = dir.join(source.name());
        if !sdir.is_dir() {
            continue;
        }
        let mut stack = vec![sdir.clone()];
        let mut found = Vec::new();
        while let Some(d) = stack.pop() {
            for p in read_dir_sorted(&d)? {
                if p.is_dir() {
                    stack.push(p);
                } else {
                    found.push(p);
                }
            }
        }
        found.sort();
        for p in found {
            let base = rel_name(&sdir, &p);
            match strip_data_ext(&base) {
                Some(key) if !key.is_empty() => out.files.push(InputFile {
                    source,
                    name: rel_name(dir, &p),
                    key: key.to_string(),
                    path: p,
                }),
                _ => out.ignored.push(rel_name(dir, &p)),
            }
        }
    }
    Ok(out)
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<Vec<_>>>()?;
    v.sort();
    Ok(v)
}

fn rel_name(base: &Path, p: &Path) -> String {
    let rel = p.strip_prefix(base).unwrap_or(p);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// The layout [`discover`] expects, for error messages.
pub const LAYOUT_HELP: &str = "DIR/sharegpt/*.json, DIR/hc3/*.jsonl, DIR/oig/unified_*.jsonl, \
DIR/alpaca/*.json, DIR/hh/**/*.jsonl.gz, DIR/webgpt/*.jsonl, DIR/summarize/**/*.json \
(any of .json, .jsonl, .json.gz, .jsonl.gz, .parquet; docs/sources.md)";

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
    check_some_rows_parse(&out)?;
    out.ignored = found.ignored;
    Ok(out)
}

/// Fails when a source had records but every one of them went to quarantine.
fn check_some_rows_parse(out: &LoadOutcome) -> Result<()> {
    for s in Source::ALL {
        let files: Vec<&FileStats> = out.files.iter().filter(|f| f.source == s.name()).collect();
        let read: u64 = files.iter().map(|f| f.records_read).sum();
        let bad: u64 = files.iter().map(|f| f.records_quarantined).sum();
        if read > 0 && bad == read {
            let first = out
                .quarantine
                .iter()
                .find(|q| q.source == s)
                .map(|q| {
                    format!(
                        "; the first: {} line {}, field `{}`: {}",
                        q.file, q.line, q.field, q.reason
                    )
                })
                .unwrap_or_default();
            return Err(Error::Input(format!(
                "every one of the {read} records of source `{}` failed to parse (files: {}){first}. \
                 Is this the {} format (docs/sources.md)?",
                s.name(),
                files
                    .iter()
                    .map(|f| f.file.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                s.name()
            )));
        }
    }
    Ok(())
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
    let renamed_ids = make_ids_unique(&mut table)?;
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

/// Suffixes repeated ids with `#2`, `#3`, … in table order; returns how many were renamed.
fn make_ids_unique(table: &mut DataFrame) -> Result<u64> {
    let ids = table.column(col::ID)?.str()?;
    let mut seen: HashMap<&str, u32> = HashMap::with_capacity(ids.len());
    let mut repeated = false;
    for id in ids.iter().flatten() {
        let n = seen.entry(id).or_insert(0);
        *n += 1;
        repeated |= *n > 1;
    }
    if !repeated {
        return Ok(0);
    }
    let mut count: HashMap<String, u32> = HashMap::new();
    let mut renamed = 0u64;
    let new: Vec<String> = ids
        .iter()
        .map(|id| {
            let id = id.unwrap_or_default();
            let n = count.entry(id.to_string()).or_insert(0);
            *n += 1;
            if *n == 1 {
                id.to_string()
            } else {
                renamed += 1;
                format!("{id}#{n}")
            }
        })
        .collect();
    table.replace(col::ID, Column::new(col::ID.into(), new))?;
    Ok(renamed)
}

struct ChunkOut {
    df: Option<DataFrame>,
    loaded: u64,
    rows: u64,
    skipped: BTreeMap<String, u64>,
    quarantine: Vec<QuarantineEntry>,
}

fn quarantine_entry(
    f: &InputFile,
    record: u64,
    line: u64,
    raw: &[u8],
    e: FieldError,
) -> QuarantineEntry {
    let cut = raw.len().min(QUARANTINE_RAW_LIMIT);
    QuarantineEntry {
        source: f.source,
        file: f.name.clone(),
        record,
        line,
        field: e.field,
        reason: e.message,
        raw: String::from_utf8_lossy(&raw[..cut]).into_owned(),
        raw_bytes: raw.len() as u64,
        raw_truncated: cut < raw.len(),
    }
}

/// Parses one record's bytes: UTF-8, then JSON, then the source's field rules.
fn parse_record(ctx: &RecordCtx, bytes: &[u8]) -> record::FieldResult<Parsed> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(u) => {
            let lossy = String::from_utf8_lossy(bytes);
            let field = serde_json::from_str::<Value>(&lossy)
                .ok()
                .and_then(|v| record::replacement_char_path(&v, ""))
                .unwrap_or_else(|| "(record)".into());
            return Err(FieldError::new(
                field,
                format!(
                    "invalid UTF-8 at byte {} of the record",
                    u.valid_up_to() + 1
                ),
            ));
        }
    };
    if ctx.source == Source::ShareGpt
        && let Some(parsed) = sharegpt::parse_fast(ctx, text)
    {
        return Ok(parsed);
    }
    let v: Value = serde_json::from_str(text)
        .map_err(|e| FieldError::new("(json)", format!("not valid JSON: {e}")))?;
    ctx.source.parse(ctx, &v)
}

type FileResult = (Vec<DataFrame>, FileStats, Vec<QuarantineEntry>);

fn load_one(f: &InputFile, opts: &LoadOptions) -> Result<FileResult> {
    let _span = tracing::debug_span!("load", file = %f.name).entered();
    let bytes = read::read_file(&f.path)?;
    let mut stats = FileStats {
        source: f.source.name().to_string(),
        file: f.name.clone(),
        gzipped: bytes.gzipped,
        disk_bytes: bytes.disk_bytes,
        decoded_bytes: bytes.data.len() as u64,
        ..FileStats::default()
    };
    let layout = read::detect_layout(&bytes.data);
    let mut quarantine = Vec::new();
    let mut data = bytes.data;
    if layout == Layout::Parquet {
        match read::parquet_to_json_lines(std::mem::take(&mut data)) {
            Ok(lines) => data = lines,
            Err(e) => {
                // An unreadable Parquet file is one damaged record: there are no rows to count.
                stats.layout = layout.as_str().into();
                stats.records_read = 1;
                stats.records_quarantined = 1;
                quarantine.push(quarantine_entry(
                    f,
                    1,
                    1,
                    b"",
                    FieldError::new("(parquet)", format!("unreadable Parquet file: {e}")),
                ));
                return finish_file(f, opts, Vec::new(), stats, quarantine);
            }
        }
    }
    stats.layout = layout.as_str().into();
    let mut split = match layout {
        Layout::JsonList => read::split_json_list(&data),
        Layout::JsonLines | Layout::Parquet => read::split_lines(&data, bytes.gzip_error.is_some()),
    };
    if split.records.is_empty() && split.tail.is_none() && bytes.gzip_error.is_none() {
        stats.warning = Some("empty file: no records".into());
        tracing::warn!(file = %f.name, "empty file: no records");
        if opts.on_error == OnError::Fail {
            return Err(Error::Record {
                file: f.name.clone(),
                line: 1,
                field: "(file)".into(),
                message: "empty file: no records".into(),
            });
        }
    }
    let scale = |n: usize| -> u64 {
        if data.is_empty() {
            0
        } else {
            (n as u128 * stats.disk_bytes as u128 / data.len() as u128) as u64
        }
    };
    let chunk = opts.chunk_records.max(1);
    let outs: Vec<Result<ChunkOut>> = split
        .records
        .par_chunks(chunk)
        .map(|recs| {
            let mut convs = Vec::with_capacity(recs.len() * 2);
            let mut out = ChunkOut {
                df: None,
                loaded: 0,
                rows: 0,
                skipped: BTreeMap::new(),
                quarantine: Vec::new(),
            };
            for r in recs {
                let ctx = RecordCtx {
                    source: f.source,
                    file: &f.name,
                    key: &f.key,
                    record: r.record,
                    opts,
                };
                let raw = &data[r.start..r.end];
                match parse_record(&ctx, raw) {
                    Ok(Parsed::Rows(rows)) => {
                        out.loaded += 1;
                        out.rows += rows.len() as u64;
                        convs.extend(rows);
                    }
                    Ok(Parsed::Skipped(why)) => {
                        *out.skipped.entry(why.to_string()).or_insert(0) += 1;
                    }
                    Err(e) => out
                        .quarantine
                        .push(quarantine_entry(f, r.record, r.line, raw, e)),
                }
            }
            out.df = Some(schema::to_dataframe(&convs)?);
            if let (Some(pb), Some(first), Some(last)) = (&opts.progress, recs.first(), recs.last())
            {
                pb.inc(scale(last.end - first.start));
            }
            Ok(out)
        })
        .collect();
    let mut frames = Vec::with_capacity(outs.len());
    stats.records_read = split.records.len() as u64;
    for o in outs {
        let o = o?;
        stats.records_loaded += o.loaded;
        stats.rows += o.rows;
        for (k, v) in o.skipped {
            stats.records_skipped += v;
            *stats.skipped.entry(k).or_insert(0) += v;
        }
        stats.records_quarantined += o.quarantine.len() as u64;
        quarantine.extend(o.quarantine);
        frames.extend(o.df.filter(|d| d.height() > 0));
    }
    // The damaged tail of the file (and a gzip failure) is one more quarantined record.
    let gz = bytes.gzip_error.as_deref();
    let tail = split.tail.take().map(|t| {
        let message = match gz {
            Some(g) => format!("truncated or corrupt gzip stream ({g}); {}", t.message),
            None => t.message,
        };
        (t.record, t.line, t.start, message)
    });
    let tail = tail.or_else(|| {
        gz.map(|g| {
            let last = split.records.last();
            (
                last.map_or(1, |r| r.record + 1),
                last.map_or(1, |r| r.line + 1),
                data.len(),
                format!("truncated or corrupt gzip stream ({g}) after the last complete line"),
            )
        })
    });
    if let Some((record, line, start, message)) = tail {
        let field = if gz.is_some() { "(gzip)" } else { "(file)" };
        stats.records_read += 1;
        stats.records_quarantined += 1;
        quarantine.push(quarantine_entry(
            f,
            record,
            line,
            &data[start.min(data.len())..],
            FieldError::new(field, message),
        ));
    }
    if let Some(pb) = &opts.progress {
        let done: u64 = split.records.iter().map(|r| scale(r.end - r.start)).sum();
        pb.inc(stats.disk_bytes.saturating_sub(done.min(stats.disk_bytes)));
    }
    finish_file(f, opts, frames, stats, quarantine)
}

fn finish_file(
    f: &InputFile,
    opts: &LoadOptions,
    frames: Vec<DataFrame>,
    stats: FileStats,
    quarantine: Vec<QuarantineEntry>,
) -> Result<FileResult> {
    if let (OnError::Fail, Some(q)) = (opts.on_error, quarantine.first()) {
        return Err(q.to_error());
    }
    for q in &quarantine {
        tracing::debug!(file = %f.name, line = q.line, field = %q.field, "quarantined: {}", q.reason);
    }
    Ok((frames, stats, quarantine))
}

impl LoadOutcome {
    /// Counts per source, in [`Source::ALL`] order (sources with no files are left out).
    pub fn by_source(&self) -> Vec<SourceStats> {
        let mut out: Vec<SourceStats> = Vec::new();
        for s in Source::ALL {
            let mut st = SourceStats {
                source: s.name().into(),
                ..SourceStats::default()
            };
            for f in self.files.iter().filter(|f| f.source == s.name()) {
                st.add(f);
            }
            if st.files > 0 {
                out.push(st);
            }
        }
        out
    }

    /// Counts over every file.
    pub fn totals(&self) -> SourceStats {
        let mut st = SourceStats {
            source: "total".into(),
            ..SourceStats::default()
        };
        for f in &self.files {
            st.add(f);
        }
        st
    }

    /// Asserts that the counts reconcile: per file, read = loaded + skipped + quarantined; the
    /// table has Σ rows rows; the quarantine holds Σ quarantined entries.
    pub fn check_reconciled(&self) -> Result<()> {
        for f in &self.files {
            let accounted = f.records_loaded + f.records_skipped + f.records_quarantined;
            if f.records_read != accounted {
                return Err(Error::Invariant(format!(
                    "{}: {} records read but {} loaded + {} skipped + {} quarantined",
                    f.file,
                    f.records_read,
                    f.records_loaded,
                    f.records_skipped,
                    f.records_quarantined
                )));
            }
        }
        let t = self.totals();
        if self.table.height() as u64 != t.rows {
            return Err(Error::Invariant(format!(
                "the table has {} rows but the loaders counted {}",
                self.table.height(),
                t.rows
            )));
        }
        if self.quarantine.len() as u64 != t.records_quarantined {
            return Err(Error::Invariant(format!(
                "{} quarantine entries but {} records counted as quarantined",
                self.quarantine.len(),
                t.records_quarantined
            )));
        }
        Ok(())
    }

    /// Writes the table as Parquet (zstd), the format `koala load` outputs.
    pub fn write_table(&mut self, path: &Path) -> Result<()> {
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        ParquetWriter::new(std::io::BufWriter::new(file))
            .with_compression(ParquetCompression::Zstd(None))
            .finish(&mut self.table)?;
        Ok(())
    }

    /// Writes the quarantine as JSON lines, one [`QuarantineEntry`] per line.
    pub fn write_quarantine(&self, path: &Path) -> Result<()> {
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut w = std::io::BufWriter::new(file);
        for q in &self.quarantine {
            serde_json::to_writer(&mut w, q)?;
            w.write_all(b"\n").map_err(|e| Error::io(path, e))?;
        }
        w.flush().map_err(|e| Error::io(path, e))?;
        Ok(())
    }

    /// Writes the quarantine to `dir/quarantine.jsonl` (creating `dir`) when any record was
    /// quarantined; returns the file written.
    pub fn write_quarantine_into(&self, dir: &Path) -> Result<Option<PathBuf>> {
        if self.quarantine.is_empty() {
            return Ok(None);
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let q = dir.join("quarantine.jsonl");
        self.write_quarantine(&q)?;
        Ok(Some(q))
    }

    /// The machine-readable report: totals, per source, per file, ignored paths.
    pub fn report(&self) -> Value {
        serde_json::json!({
            "totals": self.totals(),
            "sources": self.by_source(),
            "files": self.files,
            "quarantined": self.quarantine.len(),
            "renamed_ids": self.renamed_ids,
            "ignored": self.ignored,
        })
    }
}
