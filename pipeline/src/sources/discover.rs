//! Discovery: which files of an input directory are which source's, by the layout of
//! `docs/sources.md` (`DIR/sharegpt/*.json`, `DIR/hh/**/*.jsonl.gz`, …), in a deterministic order
//! (sources in [`Source::ALL`] order, then paths in order). Nothing is read here.
//!
//! # Example
//! ```
//! use koala_pipeline::sources::{discover, Source};
//! let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data");
//! let found = discover(&dir).unwrap();
//! assert_eq!(found.files[0].source, Source::ShareGpt);
//! assert!(found.files.iter().any(|f| f.key == "helpful-base/train"));
//! ```
use std::path::{Path, PathBuf};

use super::Source;
use crate::error::{Error, Result};

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
