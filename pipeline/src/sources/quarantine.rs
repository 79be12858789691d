//! The quarantine: records that were not loaded (malformed, oversized, or the damaged end of a
//! file), each with where it came from, why, and its raw text, written as `quarantine.jsonl`.
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::record::FieldError;
use super::{InputFile, LoadOutcome, Source};
use crate::error::{Error, Result};

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

impl QuarantineEntry {
    /// The entry of a record of `f`: `head` is its text (or the first bytes of it), `bytes` its
    /// full size.
    pub(crate) fn new(
        f: &InputFile,
        (record, line): (u64, u64),
        head: &[u8],
        bytes: u64,
        e: FieldError,
    ) -> Self {
        let cut = head.len().min(QUARANTINE_RAW_LIMIT);
        QuarantineEntry {
            source: f.source,
            file: f.name.clone(),
            record,
            line,
            field: e.field,
            reason: e.message,
            raw: String::from_utf8_lossy(&head[..cut]).into_owned(),
            raw_bytes: bytes,
            raw_truncated: (cut as u64) < bytes,
        }
    }
}

impl LoadOutcome {
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
}
