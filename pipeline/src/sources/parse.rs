//! Parsing: a batch of raw records into conversation rows, in parallel (rayon), each record on its
//! own: UTF-8, then JSON, then its source's field rules (one file per source: `sharegpt.rs`, …).
//! A record that fails becomes a [`QuarantineEntry`]; one an option skips is counted by reason.
use std::collections::BTreeMap;

use polars::prelude::*;
use rayon::prelude::*;
use serde_json::Value;

use super::read::{Batch, RawRecord};
use super::record::{self, FieldError, Parsed, RecordCtx};
use super::{
    InputFile, LoadOptions, QuarantineEntry, Source, alpaca, hc3, hh, oig, sharegpt, summarize,
    webgpt,
};
use crate::error::Result;
use crate::schema;

/// What a batch gave: its rows as frames (one per parallel chunk, empty ones left out), and its
/// counts.
#[derive(Default)]
pub(crate) struct BatchOut {
    pub frames: Vec<DataFrame>,
    pub loaded: u64,
    pub rows: u64,
    pub skipped: BTreeMap<String, u64>,
    pub quarantine: Vec<QuarantineEntry>,
}

/// Parses the records of `batch`, `opts.chunk_records` per parallel work item; the rows and the
/// quarantine keep the records' order.
pub(crate) fn parse_batch(f: &InputFile, opts: &LoadOptions, batch: &Batch) -> Result<BatchOut> {
    let outs: Vec<Result<BatchOut>> = batch
        .records
        .par_chunks(opts.chunk_records.max(1))
        .map(|recs| parse_chunk(f, opts, &batch.data, recs))
        .collect();
    let mut all = BatchOut::default();
    for o in outs {
        let o = o?;
        all.loaded += o.loaded;
        all.rows += o.rows;
        for (k, v) in o.skipped {
            *all.skipped.entry(k).or_insert(0) += v;
        }
        all.quarantine.extend(o.quarantine);
        all.frames.extend(o.frames);
    }
    Ok(all)
}

fn parse_chunk(
    f: &InputFile,
    opts: &LoadOptions,
    data: &[u8],
    recs: &[RawRecord],
) -> Result<BatchOut> {
    let mut convs = Vec::with_capacity(recs.len() * 2);
    let mut out = BatchOut::default();
    for r in recs {
        let raw = &data[r.start..r.end];
        if let Some(bytes) = r.oversized {
            let e = FieldError::new(
                "(record)",
                format!(
                    "the record is {bytes} bytes, over the limit of {} bytes \
                     (LoadOptions::max_record_bytes, --max-record-bytes): not loaded",
                    opts.max_record_bytes
                ),
            );
            out.quarantine
                .push(QuarantineEntry::new(f, (r.record, r.line), raw, bytes, e));
            continue;
        }
        let ctx = RecordCtx {
            source: f.source,
            file: &f.name,
            key: &f.key,
            record: r.record,
            opts,
        };
        match parse_record(&ctx, raw) {
            Ok(Parsed::Rows(rows)) => {
                out.loaded += 1;
                out.rows += rows.len() as u64;
                convs.extend(rows);
            }
            Ok(Parsed::Skipped(why)) => {
                *out.skipped.entry(why.to_string()).or_insert(0) += 1;
            }
            Err(e) => out.quarantine.push(QuarantineEntry::new(
                f,
                (r.record, r.line),
                raw,
                raw.len() as u64,
                e,
            )),
        }
    }
    if !convs.is_empty() {
        out.frames.push(schema::to_dataframe(&convs)?);
    }
    Ok(out)
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
    parse_value(ctx, &v)
}

/// The field rules of each source.
fn parse_value(ctx: &RecordCtx, v: &Value) -> record::FieldResult<Parsed> {
    match ctx.source {
        Source::ShareGpt => sharegpt::parse(ctx, v),
        Source::Hc3 => hc3::parse(ctx, v),
        Source::Oig => oig::parse(ctx, v),
        Source::Alpaca => alpaca::parse(ctx, v),
        Source::Hh => hh::parse(ctx, v),
        Source::WebGpt => webgpt::parse(ctx, v),
        Source::Summarize => summarize::parse(ctx, v),
    }
}
