//! Reconciliation: the counts of a load per file, per source and in total, and the checks that
//! every record read is accounted for (`read = loaded + skipped + quarantined`, the table has
//! `Σ rows` rows), that no source lost every record, and that ids are unique.
use std::collections::{BTreeMap, HashMap};

use polars::prelude::*;
use serde::Serialize;
use serde_json::Value;

use super::{LoadOutcome, Source};
use crate::error::{Error, Result};
use crate::schema::col;

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

/// Fails when a source had records but every one of them went to quarantine.
pub(crate) fn check_some_rows_parse(out: &LoadOutcome) -> Result<()> {
    for s in Source::ALL {
        let files: Vec<&FileStats> = out.files.iter().filter(|f| f.source == s.name()).collect();
        let read: u64 = files.iter().map(|f| f.records_read).sum();
        let bad: u64 = files.iter().map(|f| f.records_quarantined).sum();
        if read > 0 && bad == read {
            let entries = || out.quarantine.iter().filter(|q| q.source == s);
            let first = entries()
                .next()
                .map(|q| {
                    format!(
                        "; the first: {} line {}, field `{}`: {}",
                        q.file, q.line, q.field, q.reason
                    )
                })
                .unwrap_or_default();
            // Records refused for their size say nothing about the format.
            let hint = if entries().all(|q| q.field == "(record)") {
                "Raise --max-record-bytes (LoadOptions::max_record_bytes) to load them".to_string()
            } else {
                format!("Is this the {} format (docs/sources.md)?", s.name())
            };
            return Err(Error::Input(format!(
                "every one of the {read} records of source `{}` failed to parse (files: {}){first}. \
                 {hint}",
                s.name(),
                files
                    .iter()
                    .map(|f| f.file.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )));
        }
    }
    Ok(())
}

/// Suffixes repeated ids with `#2`, `#3`, … in table order; returns how many were renamed.
pub(crate) fn make_ids_unique(table: &mut DataFrame) -> Result<u64> {
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
