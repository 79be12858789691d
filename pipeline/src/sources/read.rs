//! Shared reading code: file bytes with transparent gzip, and splitting them into raw records
//! (JSON lines, elements of a JSON list, or rows of a Parquet file).
//!
//! Splitting never parses a record: each record's bytes are handed to the source parser on its own,
//! so one malformed record (bad JSON, invalid UTF-8) costs that record only, not the whole file.
use std::io::Read;
use std::path::Path;

use polars::prelude::*;

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

/// The decoded bytes of one input file.
pub struct FileBytes {
    /// The bytes after gzip decoding (the raw bytes when the file is not gzipped).
    pub data: Vec<u8>,
    /// Size of the file on disk.
    pub disk_bytes: u64,
    /// Whether the file was gzipped.
    pub gzipped: bool,
    /// Set when the gzip stream ended early or was corrupt: the message; `data` holds what
    /// could be decoded before the failure.
    pub gzip_error: Option<String>,
}

/// Reads a file whole, decoding gzip (single- or multi-member) when its magic bytes say so.
pub fn read_file(path: &Path) -> Result<FileBytes> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let disk_bytes = raw.len() as u64;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut data = Vec::with_capacity(raw.len().saturating_mul(4));
        let mut dec = flate2::read::MultiGzDecoder::new(&raw[..]);
        // On error `read_to_end` keeps the bytes decoded so far, so the intact records before the
        // damage are still loaded.
        let gzip_error = dec.read_to_end(&mut data).err().map(|e| e.to_string());
        Ok(FileBytes {
            data,
            disk_bytes,
            gzipped: true,
            gzip_error,
        })
    } else {
        Ok(FileBytes {
            data: raw,
            disk_bytes,
            gzipped: false,
            gzip_error: None,
        })
    }
}

/// Decides the layout from the content: Parquet by its magic, a JSON list when the first
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

/// One raw record: a byte range of the decoded file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// 1-based record number: line number (JSON lines), element index (JSON list), row (Parquet).
    pub record: u64,
    /// 1-based text line where the record starts (the row for Parquet).
    pub line: u64,
    pub start: usize,
    pub end: usize,
}

/// The damaged tail of a file that could not be split into records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenTail {
    /// The record number the tail would have had.
    pub record: u64,
    /// The line where it starts.
    pub line: u64,
    /// Byte offset in the decoded data where it starts.
    pub start: usize,
    pub message: String,
}

/// The records of a file, and its unsplittable tail if any.
#[derive(Debug, Default)]
pub struct Split {
    pub records: Vec<RawRecord>,
    pub tail: Option<BrokenTail>,
}

/// Splits JSON lines. Blank lines are not records (but still count for line numbers).
/// With `truncated`, a last line that lacks its newline is reported as the broken tail.
pub fn split_lines(data: &[u8], truncated: bool) -> Split {
    let mut out = Split::default();
    let mut start = 0usize;
    let mut ends: Vec<usize> = memchr::memchr_iter(b'\n', data).collect();
    let unterminated = data.len() > ends.last().map_or(0, |e| e + 1);
    if unterminated {
        ends.push(data.len());
    }
    let n = ends.len();
    for (k, end) in ends.into_iter().enumerate() {
        let line = k as u64 + 1;
        let text = &data[start..end];
        let blank = text.iter().all(|b| b.is_ascii_whitespace());
        if truncated && unterminated && k + 1 == n {
            out.tail = Some(BrokenTail {
                record: line,
                line,
                start,
                message: "the line is cut off where the file ends".into(),
            });
        } else if !blank {
            out.records.push(RawRecord {
                record: line,
                line,
                start,
                end,
            });
        }
        start = end + 1;
    }
    out
}

/// Splits a JSON list into its elements without parsing them: tracks strings, escapes and nesting
/// only. A list that does not close (a truncated file) yields the elements before the damage and
/// a broken tail.
pub fn split_json_list(data: &[u8]) -> Split {
    let mut out = Split::default();
    let Some(open) = data.iter().position(|b| !b.is_ascii_whitespace()) else {
        return out;
    };
    // `detect_layout` guarantees data[open] == b'['.
    let mut i = open + 1;
    let mut line = 1 + memchr::memchr_iter(b'\n', &data[..i]).count() as u64;
    let mut counted_to = i;
    let mut record = 0u64;
    let n = data.len();
    loop {
        while i < n && data[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= n {
            line += memchr::memchr_iter(b'\n', &data[counted_to..i.min(n)]).count() as u64;
            out.tail = Some(BrokenTail {
                record: record + 1,
                line,
                start: i.min(n),
                message: "the JSON list is not closed (file truncated?)".into(),
            });
            return out;
        }
        if data[i] == b']' && record == 0 {
            return out; // `[]`
        }
        let start = i;
        line += memchr::memchr_iter(b'\n', &data[counted_to..start]).count() as u64;
        counted_to = start;
        record += 1;
        let mut depth = 0u32;
        let mut closed_list = false;
        let mut end = None;
        while i < n {
            match data[i] {
                b'"' => {
                    // Jump to the closing quote, skipping escapes.
                    i += 1;
                    loop {
                        match memchr::memchr2(b'"', b'\\', &data[i..]) {
                            Some(k) if data[i + k] == b'\\' => i += k + 2,
                            Some(k) => {
                                i += k;
                                break;
                            }
                            None => {
                                i = n;
                                break;
                            }
                        }
                    }
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth > 0 => depth -= 1,
                b']' => {
                    closed_list = true;
                    end = Some(i);
                    break;
                }
                b',' if depth == 0 => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        let Some(end) = end else {
            out.tail = Some(BrokenTail {
                record,
                line,
                start,
                message: "the JSON list is not closed (file truncated?)".into(),
            });
            return out;
        };
        let mut e = end;
        while e > start && data[e - 1].is_ascii_whitespace() {
            e -= 1;
        }
        out.records.push(RawRecord {
            record,
            line,
            start,
            end: e,
        });
        i = end + 1;
        if closed_list {
            if let Some(k) = data[i..].iter().position(|b| !b.is_ascii_whitespace()) {
                let at = i + k;
                line += memchr::memchr_iter(b'\n', &data[counted_to..at]).count() as u64;
                out.tail = Some(BrokenTail {
                    record: record + 1,
                    line,
                    start: at,
                    message: "unexpected data after the end of the JSON list".into(),
                });
            }
            return out;
        }
    }
}

/// Re-encodes a Parquet file's rows as JSON lines, so that Parquet records go through exactly the
/// same field rules as JSON ones.
pub fn parquet_to_json_lines(data: Vec<u8>) -> Result<Vec<u8>> {
    let mut df = ParquetReader::new(std::io::Cursor::new(data)).finish()?;
    let mut out = Vec::new();
    JsonWriter::new(&mut out)
        .with_json_format(JsonFormat::JsonLines)
        .finish(&mut df)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts<'a>(data: &'a [u8], s: &Split) -> Vec<(&'a str, u64, u64)> {
        s.records
            .iter()
            .map(|r| {
                (
                    std::str::from_utf8(&data[r.start..r.end]).unwrap(),
                    r.record,
                    r.line,
                )
            })
            .collect()
    }

    #[test]
    fn lines_skip_blanks_and_keep_numbers() {
        let data = b"{\"a\":1}\n\n{\"a\":2}\r\n{\"a\":3}";
        let s = split_lines(data, false);
        let t = texts(data, &s);
        assert_eq!(t[0], ("{\"a\":1}", 1, 1));
        assert_eq!(t[1], ("{\"a\":2}\r", 3, 3));
        assert_eq!(t[2], ("{\"a\":3}", 4, 4));
        assert!(s.tail.is_none());
        let s = split_lines(data, true);
        assert_eq!(s.records.len(), 2);
        assert_eq!(s.tail.unwrap().line, 4);
    }

    #[test]
    fn json_list_elements_with_tricky_strings() {
        let data = b"[\n {\"a\": \"x,]}\\\"\"},\n [1, [2]],\n \"s\" ,\n 3\n]\n";
        let s = split_json_list(data);
        let t = texts(data, &s);
        assert_eq!(
            t,
            vec![
                ("{\"a\": \"x,]}\\\"\"}", 1, 2),
                ("[1, [2]]", 2, 3),
                ("\"s\"", 3, 4),
                ("3", 4, 5)
            ]
        );
        assert!(s.tail.is_none());
    }

    #[test]
    fn json_list_truncated_keeps_the_intact_elements() {
        let data = b"[{\"a\": 1},\n{\"a\": \"unfinished";
        let s = split_json_list(data);
        assert_eq!(s.records.len(), 1);
        let tail = s.tail.unwrap();
        assert_eq!((tail.record, tail.line), (2, 2));
    }

    #[test]
    fn empty_list_and_trailing_garbage() {
        assert!(split_json_list(b" [ ] ").records.is_empty());
        let s = split_json_list(b"[1]\nxx");
        assert_eq!(s.records.len(), 1);
        assert_eq!(s.tail.unwrap().line, 2);
    }

    #[test]
    fn layout_detection() {
        assert_eq!(detect_layout(b"  \n[{}]"), Layout::JsonList);
        assert_eq!(detect_layout(b"{}\n{}"), Layout::JsonLines);
        assert_eq!(detect_layout(b""), Layout::JsonLines);
    }
}
