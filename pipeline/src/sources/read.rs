//! Reading one input file as a stream of record batches: transparent gzip, the record layout
//! (JSON lines, the elements of one JSON list, or the rows of a Parquet file), and a cap on the
//! size of one record.
//!
//! A [`RecordReader`] holds a read buffer and the batch it is filling, never the whole file: its
//! memory is set by the batch size and the record cap, not by the file's size. A record longer than
//! the cap is not loaded: the reader keeps its first bytes (at most [`QUARANTINE_RAW_LIMIT`]), skips
//! the rest while still tracking strings and nesting, and hands it on marked
//! [`RawRecord::oversized`], so that the loader quarantines it with its reason.
//!
//! Splitting never parses a record: each record's bytes go to the source parser on their own, so
//! one malformed record (bad JSON, invalid UTF-8) costs that record only, not the whole file. The
//! damaged end of a file (a truncated gzip stream, a JSON list that never closes, data after the
//! list) comes out of [`RecordReader::finish`] as one [`Tail`].
//!
//! # Example
//! ```
//! use koala_pipeline::sources::read::{Layout, RecordReader};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("data.json");
//! std::fs::write(&path, br#"[{"a": "x, ]"}, {"b": [1, 2]}]"#).unwrap();
//! let mut reader = RecordReader::open(&path, 1 << 20).unwrap();
//! assert_eq!(reader.layout(), Layout::JsonList);
//! let batch = reader.next_batch(1 << 20, 1).unwrap().unwrap();
//! let texts: Vec<&[u8]> = batch.records.iter().map(|r| &batch.data[r.start..r.end]).collect();
//! assert_eq!(texts, [&br#"{"a": "x, ]"}"#[..], br#"{"b": [1, 2]}"#]);
//! assert!(reader.next_batch(1 << 20, 1).unwrap().is_none());
//! assert!(reader.finish().tail.is_none());
//! ```
use std::fs::File;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use polars::prelude::*;

use super::QUARANTINE_RAW_LIMIT;
use crate::error::{Error, Result};

/// How the records of a file are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One JSON value per line.
    JsonLines,
    /// One JSON list whose elements are the records.
    JsonList,
    /// A Parquet file; each row is a record (re-encoded as a JSON object).
    Parquet,
}

impl Layout {
    /// The name written in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::JsonLines => "jsonl",
            Layout::JsonList => "json-list",
            Layout::Parquet => "parquet",
        }
    }
}

/// Decides the layout from the first bytes: Parquet by its magic, a JSON list when the first
/// non-blank byte is `[`, JSON lines otherwise.
pub fn detect_layout(data: &[u8]) -> Layout {
    if data.len() >= 8 && data.starts_with(b"PAR1") {
        return Layout::Parquet;
    }
    match data.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => Layout::JsonList,
        _ => Layout::JsonLines,
    }
}

/// One raw record of a [`Batch`]: a byte range of [`Batch::data`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// 1-based record number: line number (JSON lines), element index (JSON list), row (Parquet).
    pub record: u64,
    /// 1-based text line where the record starts (the row for Parquet).
    pub line: u64,
    pub start: usize,
    pub end: usize,
    /// Set when the record was longer than the cap: its full size in bytes. `start..end` then
    /// holds only its first bytes, for the quarantine.
    pub oversized: Option<u64>,
}

/// Consecutive records of a file, their bytes copied into one buffer.
#[derive(Debug, Default)]
pub struct Batch {
    pub data: Vec<u8>,
    pub records: Vec<RawRecord>,
}

/// The damaged end of a file, which could not be split into records: one more quarantined record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tail {
    /// The record number it would have had.
    pub record: u64,
    /// The line where it starts.
    pub line: u64,
    /// `(gzip)`, `(parquet)` or `(file)`.
    pub field: &'static str,
    pub message: String,
    /// Its first bytes (at most [`QUARANTINE_RAW_LIMIT`]).
    pub head: Vec<u8>,
    /// Its full size in bytes.
    pub bytes: u64,
}

/// What a finished reader knows about its file.
#[derive(Debug)]
pub struct Finished {
    pub layout: Layout,
    pub gzipped: bool,
    pub disk_bytes: u64,
    /// Bytes after gzip decoding (the file's size when it is not gzipped).
    pub decoded_bytes: u64,
    /// Records handed out in batches, oversized ones included.
    pub records: u64,
    pub tail: Option<Tail>,
}

/// Bytes asked of the decoder per read.
const READ_CHUNK: usize = 1 << 20;
/// Parquet rows per batch.
const PARQUET_ROWS: usize = 16 * 1024;

/// The file under the decoder: counts the bytes read from disk (for progress), and records a disk
/// error on the side, so that a gzip failure and a disk failure are told apart after the decoder
/// has turned both into `io::Error`s.
struct Disk {
    file: File,
    read: Arc<AtomicU64>,
    error: Arc<Mutex<Option<String>>>,
}

impl Read for Disk {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let r = self.file.read(buf);
        match &r {
            Ok(n) => {
                self.read.fetch_add(*n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() != std::io::ErrorKind::Interrupted => {
                if let Ok(mut slot) = self.error.lock() {
                    *slot = Some(e.to_string());
                }
            }
            Err(_) => {}
        }
        r
    }
}

enum ListPhase {
    Open,
    Elements,
    Closed,
}

enum Mode {
    Lines,
    List(ListPhase),
    Parquet(ParquetRows),
    Done,
}

/// Reads one file as batches of raw records. See the [module docs](self).
pub struct RecordReader {
    path: PathBuf,
    src: Box<dyn Read + Send>,
    /// A disk error seen under the decoder.
    disk_error: Arc<Mutex<Option<String>>>,
    disk_read: Arc<AtomicU64>,
    layout: Layout,
    mode: Mode,
    gzipped: bool,
    disk_bytes: u64,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes of `buf`.
    pos: usize,
    eof: bool,
    gzip_error: Option<String>,
    decoded: u64,
    /// Line number at `buf[pos]`.
    line: u64,
    /// Records handed out so far.
    records: u64,
    /// (record, line) of the last record handed out.
    last: Option<(u64, u64)>,
    max_record: usize,
    /// Bytes asked of the decoder per read ([`READ_CHUNK`]; tests make it small).
    chunk: usize,
    tail: Option<Tail>,
}

impl RecordReader {
    /// Opens `path` (gzip detected by its magic bytes) and detects its layout. Records longer than
    /// `max_record` bytes are skipped and handed out as oversized.
    pub fn open(path: &Path, max_record: usize) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let disk_bytes = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut magic = [0u8; 2];
        let mut got = 0;
        while got < 2 {
            match file.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        let gzipped = got == 2 && magic == [0x1f, 0x8b];
        let disk_read = Arc::new(AtomicU64::new(got as u64));
        let disk_error = Arc::new(Mutex::new(None));
        let disk = Disk {
            file,
            read: disk_read.clone(),
            error: disk_error.clone(),
        };
        let head = Cursor::new(magic[..got].to_vec());
        let src: Box<dyn Read + Send> = if gzipped {
            Box::new(flate2::read::MultiGzDecoder::new(head.chain(disk)))
        } else {
            Box::new(head.chain(disk))
        };
        let mut r = RecordReader {
            path: path.to_path_buf(),
            src,
            disk_error,
            disk_read,
            layout: Layout::JsonLines,
            mode: Mode::Done,
            gzipped,
            disk_bytes,
            buf: Vec::new(),
            pos: 0,
            eof: false,
            gzip_error: None,
            decoded: 0,
            line: 1,
            records: 0,
            last: None,
            max_record: max_record.max(1),
            chunk: READ_CHUNK,
            tail: None,
        };
        // Enough bytes to tell the layout: the Parquet magic, or the first non-blank byte.
        while !r.eof && (r.buf.len() < 8 || r.buf.iter().all(|b| b.is_ascii_whitespace())) {
            r.fill()?;
        }
        r.layout = detect_layout(&r.buf);
        r.mode = match r.layout {
            Layout::JsonLines => Mode::Lines,
            Layout::JsonList => Mode::List(ListPhase::Open),
            Layout::Parquet => Mode::Parquet(r.open_parquet()?),
        };
        Ok(r)
    }

    /// The file's layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Size of the file on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// The count of bytes read from disk so far, readable from another thread (for progress).
    pub fn disk_read_counter(&self) -> Arc<AtomicU64> {
        self.disk_read.clone()
    }

    /// The next records, about `target_bytes` of them (at least one), or `None` at the end. The
    /// batch holds a multiple of `align` records (but the last), so that parallel chunks of
    /// `align` records fall at the same records whatever the batch size.
    pub fn next_batch(&mut self, target_bytes: usize, align: usize) -> Result<Option<Batch>> {
        let align = align.max(1);
        let mut b = Batch {
            data: Vec::with_capacity(target_bytes.min(64 << 20) + 4096),
            records: Vec::new(),
        };
        while b.data.len() < target_bytes || !b.records.len().is_multiple_of(align) {
            let rec = match &mut self.mode {
                Mode::Lines => self.next_line(&mut b.data)?,
                Mode::List(_) => self.next_element(&mut b.data)?,
                Mode::Parquet(_) => {
                    if !b.records.is_empty() {
                        break; // one slice per batch
                    }
                    let n = self.parquet_slice(&mut b, align)?;
                    if n == 0 {
                        break;
                    }
                    continue;
                }
                Mode::Done => None,
            };
            match rec {
                Some(r) => {
                    self.records += 1;
                    self.last = Some((r.record, r.line));
                    b.records.push(r);
                }
                None => break,
            }
        }
        Ok((!b.records.is_empty()).then_some(b))
    }

    /// Ends the read: the counts, and the damaged tail, if any. A gzip stream that failed becomes
    /// the tail (or is added to its message).
    pub fn finish(self) -> Finished {
        let tail = match (self.tail, &self.gzip_error) {
            (Some(mut t), Some(g)) => {
                t.message = format!("truncated or corrupt gzip stream ({g}); {}", t.message);
                t.field = "(gzip)";
                Some(t)
            }
            (None, Some(g)) => Some(Tail {
                record: self.last.map_or(1, |(r, _)| r + 1),
                line: self.last.map_or(1, |(_, l)| l + 1),
                field: "(gzip)",
                message: format!(
                    "truncated or corrupt gzip stream ({g}) after the last complete line"
                ),
                head: Vec::new(),
                bytes: 0,
            }),
            (t, None) => t,
        };
        Finished {
            layout: self.layout,
            gzipped: self.gzipped,
            disk_bytes: self.disk_bytes,
            decoded_bytes: self.decoded,
            records: self.records,
            tail,
        }
    }

    /// Reads one more chunk into `buf`; false at the end of the stream (or of what a broken gzip
    /// stream could give).
    fn fill(&mut self) -> Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.pos > 0 && (self.pos >= self.chunk || self.pos * 2 >= self.buf.len()) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + self.chunk, 0);
        let got = loop {
            match self.src.read(&mut self.buf[len..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(len);
                    if let Some(d) = self.disk_error.lock().ok().and_then(|mut s| s.take()) {
                        return Err(Error::io(&self.path, std::io::Error::other(d)));
                    }
                    if !self.gzipped {
                        return Err(Error::io(&self.path, e));
                    }
                    // The bytes decoded before the damage stay: the intact records still load.
                    self.gzip_error = Some(e.to_string());
                    self.eof = true;
                    return Ok(false);
                }
            }
        };
        self.buf.truncate(len + got);
        self.decoded += got as u64;
        if got == 0 {
            self.eof = true;
        }
        Ok(got > 0)
    }

    /// Consumes `n` unconsumed bytes, counting their lines.
    fn consume(&mut self, n: usize) {
        let end = self.pos + n;
        self.line += memchr::memchr_iter(b'\n', &self.buf[self.pos..end]).count() as u64;
        self.pos = end;
    }

    fn unconsumed(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Copies the first bytes of an oversized record into `out` for the quarantine.
    fn keep_head(&self, len: usize, out: &mut Vec<u8>) -> (usize, usize) {
        let keep = len.min(QUARANTINE_RAW_LIMIT).min(self.max_record);
        let start = out.len();
        out.extend_from_slice(&self.buf[self.pos..self.pos + keep]);
        (start, out.len())
    }

    /// The next non-blank line. Blank lines are not records (but count for line numbers). A last
    /// line without its newline is a record, except when the gzip stream broke: then it is the
    /// tail.
    fn next_line(&mut self, out: &mut Vec<u8>) -> Result<Option<RawRecord>> {
        loop {
            let line = self.line;
            let mut scanned = 0usize;
            let mut oversized: Option<(usize, usize, u64)> = None;
            let end = loop {
                if let Some(k) = memchr::memchr(b'\n', &self.unconsumed()[scanned..]) {
                    break Some(scanned + k);
                }
                scanned = self.unconsumed().len();
                if scanned > self.max_record || oversized.is_some() {
                    // Keep its head, then drop what is scanned as it comes.
                    let (s, e) = match oversized {
                        Some((s, e, _)) => (s, e),
                        None => self.keep_head(scanned, out),
                    };
                    let seen = oversized.map_or(0, |o| o.2) + scanned as u64;
                    self.consume(scanned);
                    scanned = 0;
                    oversized = Some((s, e, seen));
                }
                if !self.fill()? {
                    break None;
                }
            };
            let len = end.unwrap_or(self.unconsumed().len());
            if oversized.is_none() && len > self.max_record {
                let (s, e) = self.keep_head(len, out);
                oversized = Some((s, e, 0));
            }
            if let Some((s, e, seen)) = oversized {
                let total = seen + len as u64;
                self.consume(len + usize::from(end.is_some()));
                if end.is_none() && self.gzip_error.is_some() {
                    self.tail = Some(self.tail_at(line, line, &out[s..e], total, CUT_LINE));
                    out.truncate(s);
                    self.mode = Mode::Done;
                    return Ok(None);
                }
                return Ok(Some(RawRecord {
                    record: line,
                    line,
                    start: s,
                    end: e,
                    oversized: Some(total),
                }));
            }
            if end.is_none() && len == 0 {
                self.mode = Mode::Done;
                return Ok(None);
            }
            if end.is_none() && self.gzip_error.is_some() {
                let head = self.unconsumed()[..len.min(QUARANTINE_RAW_LIMIT)].to_vec();
                self.tail = Some(self.tail_at(line, line, &head, len as u64, CUT_LINE));
                self.consume(len);
                self.mode = Mode::Done;
                return Ok(None);
            }
            let text = &self.unconsumed()[..len];
            let blank = text.iter().all(|b| b.is_ascii_whitespace());
            let start = out.len();
            if !blank {
                out.extend_from_slice(text);
            }
            self.consume(len + usize::from(end.is_some()));
            if !blank {
                return Ok(Some(RawRecord {
                    record: line,
                    line,
                    start,
                    end: out.len(),
                    oversized: None,
                }));
            }
        }
    }

    fn tail_at(&self, record: u64, line: u64, head: &[u8], bytes: u64, message: &str) -> Tail {
        Tail {
            record,
            line,
            field: "(file)",
            message: message.to_string(),
            head: head[..head.len().min(QUARANTINE_RAW_LIMIT)].to_vec(),
            bytes,
        }
    }

    /// Skips blanks; false at the end of the stream.
    fn skip_blanks(&mut self) -> Result<bool> {
        loop {
            match self
                .unconsumed()
                .iter()
                .position(|b| !b.is_ascii_whitespace())
            {
                Some(k) => {
                    self.consume(k);
                    return Ok(true);
                }
                None => {
                    let n = self.unconsumed().len();
                    self.consume(n);
                    if !self.fill()? {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// The next element of the JSON list, found by tracking strings, escapes and nesting only.
    fn next_element(&mut self, out: &mut Vec<u8>) -> Result<Option<RawRecord>> {
        if let Mode::List(ListPhase::Open) = self.mode {
            // `detect_layout` saw `[` as the first non-blank byte.
            self.skip_blanks()?;
            self.consume(1);
            self.mode = Mode::List(ListPhase::Elements);
        }
        if let Mode::List(ListPhase::Closed) = self.mode {
            self.mode = Mode::Done;
            if self.skip_blanks()? {
                let line = self.line;
                let head =
                    self.unconsumed()[..self.unconsumed().len().min(QUARANTINE_RAW_LIMIT)].to_vec();
                let mut bytes = 0u64;
                loop {
                    let n = self.unconsumed().len();
                    bytes += n as u64;
                    self.consume(n);
                    if !self.fill()? {
                        break;
                    }
                }
                let record = self.records + 1;
                self.tail = Some(self.tail_at(record, line, &head, bytes, AFTER_LIST));
            }
            return Ok(None);
        }
        if !self.skip_blanks()? {
            let record = self.records + 1;
            self.tail = Some(self.tail_at(record, self.line, &[], 0, NOT_CLOSED));
            self.mode = Mode::Done;
            return Ok(None);
        }
        if self.unconsumed()[0] == b']' && self.records == 0 {
            self.consume(1);
            self.mode = Mode::Done; // `[]`
            return Ok(None);
        }
        let record = self.records + 1;
        let line = self.line;
        let mut scan = ElementScan::default();
        let mut oversized: Option<(usize, usize, u64)> = None;
        let found = loop {
            if let Some(hit) = scan.advance(self.unconsumed()) {
                break Some(hit);
            }
            if scan.off > self.max_record || oversized.is_some() {
                let (s, e) = match oversized {
                    Some((s, e, _)) => (s, e),
                    None => self.keep_head(scan.off, out),
                };
                let seen = oversized.map_or(0, |o| o.2) + scan.off as u64;
                self.consume(scan.off);
                scan.off = 0;
                oversized = Some((s, e, seen));
            }
            if !self.fill()? {
                break None;
            }
        };
        let Some((end, closes)) = found else {
            let rest = self.unconsumed().len();
            let (head, bytes) = match oversized {
                Some((s, e, seen)) => (out[s..e].to_vec(), seen + rest as u64),
                None => (self.unconsumed().to_vec(), rest as u64),
            };
            if let Some((s, _, _)) = oversized {
                out.truncate(s);
            }
            self.consume(rest);
            self.tail = Some(self.tail_at(record, line, &head, bytes, NOT_CLOSED));
            self.mode = Mode::Done;
            return Ok(None);
        };
        if oversized.is_none() && end > self.max_record {
            let (s, e) = self.keep_head(end, out);
            oversized = Some((s, e, 0));
        }
        let rec = match oversized {
            Some((s, e, seen)) => RawRecord {
                record,
                line,
                start: s,
                end: e,
                oversized: Some(seen + end as u64),
            },
            None => {
                let text = &self.unconsumed()[..end];
                let trimmed = text
                    .iter()
                    .rposition(|b| !b.is_ascii_whitespace())
                    .map_or(0, |k| k + 1);
                let start = out.len();
                out.extend_from_slice(&text[..trimmed]);
                RawRecord {
                    record,
                    line,
                    start,
                    end: out.len(),
                    oversized: None,
                }
            }
        };
        self.consume(end + 1);
        if closes {
            self.mode = Mode::List(ListPhase::Closed);
        }
        Ok(Some(rec))
    }

    fn open_parquet(&mut self) -> Result<ParquetRows> {
        let input = if self.gzipped {
            // A gzipped Parquet file (rare) is decoded into memory: Parquet needs random access.
            while self.fill()? {}
            ParquetInput::Memory(Arc::new(std::mem::take(&mut self.buf)))
        } else {
            // Read straight from the file, one slice of rows at a time.
            self.decoded = self.disk_bytes;
            ParquetInput::File(self.path.clone())
        };
        self.buf = Vec::new();
        self.pos = 0;
        let rows = input.reader().and_then(|mut r| {
            r.num_rows()
                .map_err(|e| Error::Input(format!("unreadable Parquet file: {e}")))
        });
        Ok(match rows {
            Ok(rows) => ParquetRows {
                input,
                rows,
                next: 0,
            },
            Err(e) => {
                let message = match e {
                    Error::Input(m) => m,
                    other => format!("unreadable Parquet file: {other}"),
                };
                self.tail = Some(Tail {
                    record: 1,
                    line: 1,
                    field: "(parquet)",
                    message,
                    head: Vec::new(),
                    bytes: 0,
                });
                ParquetRows {
                    input,
                    rows: 0,
                    next: 0,
                }
            }
        })
    }

    /// Reads the next slice of Parquet rows into `b`, re-encoded as JSON lines, so that Parquet
    /// records go through exactly the same field rules as JSON ones. Returns the rows read.
    fn parquet_slice(&mut self, b: &mut Batch, align: usize) -> Result<usize> {
        let Mode::Parquet(p) = &mut self.mode else {
            return Ok(0);
        };
        if p.next >= p.rows {
            self.mode = Mode::Done;
            return Ok(0);
        }
        let first = p.next;
        let len = PARQUET_ROWS
            .div_ceil(align)
            .saturating_mul(align)
            .min(p.rows - first);
        let df = p
            .input
            .reader()
            .and_then(|r| Ok(r.with_slice(Some((first, len))).finish()?));
        let mut df = match df {
            Ok(df) => df,
            Err(e) => {
                self.tail = Some(Tail {
                    record: first as u64 + 1,
                    line: first as u64 + 1,
                    field: "(parquet)",
                    message: format!("unreadable Parquet rows from row {}: {e}", first + 1),
                    head: Vec::new(),
                    bytes: 0,
                });
                self.mode = Mode::Done;
                return Ok(0);
            }
        };
        p.next += len;
        JsonWriter::new(&mut b.data)
            .with_json_format(JsonFormat::JsonLines)
            .finish(&mut df)?;
        let mut start = 0;
        for (k, end) in memchr::memchr_iter(b'\n', &b.data).enumerate() {
            let n = (first + k) as u64 + 1;
            b.records.push(RawRecord {
                record: n,
                line: n,
                start,
                end,
                oversized: None,
            });
            start = end + 1;
        }
        if start < b.data.len() {
            let n = (first + b.records.len()) as u64 + 1;
            b.records.push(RawRecord {
                record: n,
                line: n,
                start,
                end: b.data.len(),
                oversized: None,
            });
        }
        if let Some(r) = b.records.last() {
            self.records += b.records.len() as u64;
            self.last = Some((r.record, r.line));
        }
        Ok(len)
    }
}

const CUT_LINE: &str = "the line is cut off where the file ends";
const NOT_CLOSED: &str = "the JSON list is not closed (file truncated?)";
const AFTER_LIST: &str = "unexpected data after the end of the JSON list";

enum ParquetInput {
    File(PathBuf),
    Memory(Arc<Vec<u8>>),
}

struct ParquetRows {
    input: ParquetInput,
    rows: usize,
    next: usize,
}

/// Bytes shared with a Parquet reader without copying them.
struct Shared2(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared2 {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl ParquetInput {
    fn reader(&self) -> Result<ParquetReader<Box<dyn polars_io::mmap::MmapBytesReader>>> {
        let r: Box<dyn polars_io::mmap::MmapBytesReader> = match self {
            ParquetInput::File(p) => Box::new(File::open(p).map_err(|e| Error::io(p, e))?),
            ParquetInput::Memory(v) => Box::new(Cursor::new(Shared2(v.clone()))),
        };
        Ok(ParquetReader::new(r))
    }
}

/// Where the scan of one JSON list element stands: resumable when the bytes run out mid-element.
#[derive(Default)]
struct ElementScan {
    /// Bytes of the element scanned so far.
    off: usize,
    depth: u32,
    in_string: bool,
    escaped: bool,
}

impl ElementScan {
    /// Scans on from `off`; at the element's delimiter (a `,` or the list's `]` at depth 0) returns
    /// its offset and whether it closes the list.
    fn advance(&mut self, data: &[u8]) -> Option<(usize, bool)> {
        let n = data.len();
        let mut i = self.off;
        while i < n {
            if self.escaped {
                self.escaped = false;
                i += 1;
                continue;
            }
            if self.in_string {
                match memchr::memchr2(b'"', b'\\', &data[i..]) {
                    Some(k) => {
                        i += k;
                        if data[i] == b'\\' {
                            self.escaped = true;
                        } else {
                            self.in_string = false;
                        }
                        i += 1;
                    }
                    None => i = n,
                }
                continue;
            }
            match data[i] {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' if self.depth > 0 => self.depth -= 1,
                b']' => return Some((i, true)),
                b',' if self.depth == 0 => return Some((i, false)),
                _ => {}
            }
            i += 1;
        }
        self.off = n;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `bytes` (written to a file) with batches of `target` bytes: the records' texts and
    /// positions, and the tail.
    fn read_all(bytes: &[u8], max: usize, target: usize) -> (Vec<(String, u64, u64)>, Finished) {
        read_chunked(bytes, max, target, READ_CHUNK)
    }

    fn read_chunked(
        bytes: &[u8],
        max: usize,
        target: usize,
        chunk: usize,
    ) -> (Vec<(String, u64, u64)>, Finished) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, bytes).unwrap();
        let mut r = RecordReader::open(&p, max).unwrap();
        r.chunk = chunk;
        let mut out = Vec::new();
        let mut short = false;
        while let Some(b) = r.next_batch(target, 3).unwrap() {
            // Batches hold multiples of 3 records, but the last.
            assert!(!short, "a batch of a size other than 3k before the last");
            short = !b.records.len().is_multiple_of(3);
            for rec in &b.records {
                let text = String::from_utf8_lossy(&b.data[rec.start..rec.end]).into_owned();
                let text = match rec.oversized {
                    Some(n) => format!("OVERSIZED({n}):{text}"),
                    None => text,
                };
                out.push((text, rec.record, rec.line));
            }
        }
        (out, r.finish())
    }

    fn texts(v: &[(String, u64, u64)]) -> Vec<(&str, u64, u64)> {
        v.iter().map(|(t, r, l)| (t.as_str(), *r, *l)).collect()
    }

    #[test]
    fn lines_skip_blanks_and_keep_numbers() {
        let (recs, fin) = read_all(b"{\"a\":1}\n\n  \n{\"b\":2}\n{\"c\":3}", 1 << 20, 1);
        assert_eq!(
            texts(&recs),
            [
                ("{\"a\":1}", 1, 1),
                ("{\"b\":2}", 4, 4),
                ("{\"c\":3}", 5, 5)
            ]
        );
        assert!(fin.tail.is_none());
        assert_eq!(fin.layout, Layout::JsonLines);
        assert_eq!(fin.records, 3);
    }

    #[test]
    fn json_list_elements_with_tricky_strings() {
        let data = b"[\n {\"a\": \"x, ] \\\" y\"},\n {\"b\": [1, {\"c\": \"}\"}]}\n]\n";
        let (recs, fin) = read_all(data, 1 << 20, 1);
        assert_eq!(
            texts(&recs),
            [
                (r#"{"a": "x, ] \" y"}"#, 1, 2),
                (r#"{"b": [1, {"c": "}"}]}"#, 2, 3)
            ]
        );
        assert!(fin.tail.is_none());
    }

    #[test]
    fn json_list_truncated_keeps_the_intact_elements() {
        let (recs, fin) = read_all(b"[{\"a\": 1}, {\"b\": \"cut", 1 << 20, 1 << 20);
        assert_eq!(texts(&recs), [("{\"a\": 1}", 1, 1)]);
        let t = fin.tail.unwrap();
        assert_eq!(
            (t.record, t.line, t.head.as_slice()),
            (2, 1, &b"{\"b\": \"cut"[..])
        );
        assert!(t.message.contains("not closed"), "{}", t.message);
    }

    #[test]
    fn empty_list_and_trailing_garbage() {
        let (recs, fin) = read_all(b"  []  ", 1 << 20, 1);
        assert!(recs.is_empty() && fin.tail.is_none());
        let (recs, fin) = read_all(b"[1, 2]\nxyz", 1 << 20, 1);
        assert_eq!(texts(&recs), [("1", 1, 1), ("2", 2, 1)]);
        let t = fin.tail.unwrap();
        assert_eq!((t.record, t.line, t.head.as_slice()), (3, 2, &b"xyz"[..]));
        assert_eq!(t.bytes, 3);
    }

    #[test]
    fn layout_detection() {
        assert_eq!(detect_layout(b"  [1]"), Layout::JsonList);
        assert_eq!(detect_layout(b"{\"a\":1}\n"), Layout::JsonLines);
        assert_eq!(detect_layout(b"PAR1xxxxPAR1"), Layout::Parquet);
        assert_eq!(detect_layout(b""), Layout::JsonLines);
    }

    #[test]
    fn oversized_records_are_skipped_not_loaded() {
        let big = format!("{{\"a\": \"{}\"}}", "x".repeat(5000));
        // JSON lines: the long line is handed out with only its head.
        let lines = format!("{{\"a\":1}}\n{big}\n{{\"b\":2}}\n");
        let (recs, fin) = read_all(lines.as_bytes(), 100, 1 << 20);
        assert_eq!(recs.len(), 3);
        assert_eq!(
            (recs[0].1, recs[2].1, recs[2].0.as_str()),
            (1, 3, "{\"b\":2}")
        );
        assert!(
            recs[1]
                .0
                .starts_with(&format!("OVERSIZED({}):{{\"a\": \"xxx", big.len())),
            "{}",
            &recs[1].0[..40]
        );
        assert!(recs[1].0.len() < 200);
        assert!(fin.tail.is_none());
        // A JSON list: the scan goes on through the skipped bytes, strings and nesting included.
        let tricky = format!("{{\"a\": [\"], {}\"]}}", "y".repeat(5000));
        let list = format!("[{{\"a\":1}},\n{tricky},\n{{\"b\":2}}]");
        let (recs, fin) = read_all(list.as_bytes(), 100, 1);
        assert_eq!(recs.len(), 3, "{recs:?}");
        assert_eq!(recs[1].1, 2);
        assert!(
            recs[1]
                .0
                .starts_with(&format!("OVERSIZED({}):", tricky.len()))
        );
        assert_eq!(
            (recs[2].0.as_str(), recs[2].1, recs[2].2),
            ("{\"b\":2}", 3, 3)
        );
        assert!(fin.tail.is_none());
    }

    #[test]
    fn gzip_is_streamed_and_a_broken_stream_is_the_tail() {
        use std::io::Write;
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!(
                "{{\"i\": {i}, \"pad\": \"{}\"}}\n",
                "z".repeat(i % 97)
            ));
        }
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(text.as_bytes()).unwrap();
        let gz = enc.finish().unwrap();
        let (recs, fin) = read_all(&gz, 1 << 20, 4096);
        assert_eq!(recs.len(), 20_000);
        assert!(fin.gzipped && fin.tail.is_none());
        assert_eq!(fin.decoded_bytes, text.len() as u64);
        let (recs, fin) = read_all(&gz[..gz.len() / 2], 1 << 20, 4096);
        let t = fin.tail.unwrap();
        assert_eq!(t.field, "(gzip)");
        assert_eq!(t.record, recs.len() as u64 + 1);
        assert!(
            t.message.contains("truncated or corrupt gzip stream"),
            "{}",
            t.message
        );
    }

    /// Whatever the batch size and wherever the reads cut the bytes, the records are the same.
    #[test]
    fn batch_size_does_not_change_the_records() {
        let mut list = String::from("[");
        let mut lines = String::new();
        for i in 0..3000 {
            let rec = format!(
                "{{\"i\": {i}, \"s\": \"a \\\"q\\\" ] , {}\"}}",
                "w".repeat(i % 501)
            );
            if i > 0 {
                list.push_str(",\n ");
            }
            list.push_str(&rec);
            lines.push_str(&rec);
            lines.push('\n');
        }
        list.push(']');
        for data in [list, lines] {
            let (a, _) = read_all(data.as_bytes(), 1 << 20, 1 << 30);
            assert_eq!(a.len(), 3000);
            for (target, chunk) in [(1, 1), (7777, 13), (1, 4096), (1 << 16, 100_003)] {
                let (b, fin) = read_chunked(data.as_bytes(), 1 << 20, target, chunk);
                assert_eq!(a, b, "batches of {target} bytes, reads of {chunk}");
                assert!(fin.tail.is_none());
            }
            // Oversized records are found whatever the reads.
            let (o, _) = read_chunked(data.as_bytes(), 300, 1000, 64);
            let big: Vec<u64> = o
                .iter()
                .filter(|r| r.0.starts_with("OVERSIZED"))
                .map(|r| r.1)
                .collect();
            let want: Vec<u64> = a.iter().filter(|r| r.0.len() > 300).map(|r| r.1).collect();
            assert_eq!(big, want);
        }
    }
}
