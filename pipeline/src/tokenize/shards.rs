//! Shard files and `manifest.json`: the contract with the trainer (`docs/shards.md`).
//!
//! Each split is written as Arrow IPC *file* format (`{split}/shard-NNNNN.arrow`, uncompressed, so a
//! reader can memory-map it), with three columns of fixed-size lists, one row per training
//! sequence of `seq_len` tokens:
//!
//! | column        | Arrow type                         | meaning |
//! |---------------|------------------------------------|---------|
//! | `tokens`      | `FixedSizeList<UInt32>[seq_len]`   | token ids, `pad_id` where the row is padding |
//! | `loss_mask`   | `FixedSizeList<UInt8>[seq_len]`    | 1 where the token is a training target |
//! | `segment_ids` | `FixedSizeList<UInt32>[seq_len]`   | 1, 2, … per example within the row; 0 for padding |
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, FixedSizeListArray, RecordBatch, UInt8Array, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use serde::{Deserialize, Serialize};

use super::Side;
use super::pack::{Mode, Rows};
use crate::error::{Error, Result};

/// The manifest's format version; bumped on any incompatible change of the layout.
pub const FORMAT_VERSION: u32 = 1;
/// Column names.
pub const TOKENS: &str = "tokens";
pub const LOSS_MASK: &str = "loss_mask";
pub const SEGMENT_IDS: &str = "segment_ids";

/// One shard file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardFile {
    /// Relative to the manifest's folder.
    pub path: String,
    pub rows: usize,
}

/// Counts of one split.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitInfo {
    pub files: Vec<ShardFile>,
    pub rows: usize,
    /// Examples (rendered conversations) in the rows.
    pub examples: usize,
    /// Tokens that belong to examples (segment id > 0).
    pub tokens: usize,
    /// Tokens with loss mask 1.
    pub loss_tokens: usize,
    /// Padding tokens (segment id 0).
    pub pad_tokens: usize,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// `pack` or `pad`.
    pub mode: Mode,
    pub seq_len: usize,
    /// Longest example kept, in tokens (≤ seq_len); longer ones were truncated.
    pub max_len: usize,
    pub truncation_side: Side,
    /// Prompt format name (`koala`, `alpaca`, `chat-template`) and its options.
    pub format: String,
    pub format_options: serde_json::Value,
    /// The tokenizer, saved beside the manifest.
    pub tokenizer_file: String,
    /// SHA-256 (hex) of that file's bytes.
    pub tokenizer_sha256: String,
    /// Embedding rows needed: one more than the largest token id.
    pub vocab_size: usize,
    pub bos_id: Option<u32>,
    pub eos_id: u32,
    pub pad_id: u32,
    /// The conversation table read, and the SHA-256 of its bytes.
    pub source_path: String,
    pub source_sha256: String,
    /// Conversations read from the source.
    pub source_rows: usize,
    /// Row shuffle seed (rows are shuffled within each split).
    pub shuffle_seed: u64,
    pub splits: BTreeMap<String, SplitInfo>,
}

impl Manifest {
    /// Reads and checks `manifest.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| Error::Record {
            file: path.display().to_string(),
            line: e.line() as u64,
            field: "(manifest)".into(),
            message: e.to_string(),
        })?;
        if m.format_version != FORMAT_VERSION {
            return Err(Error::Record {
                file: path.display().to_string(),
                line: 1,
                field: "format_version".into(),
                message: format!("{} is not the supported {FORMAT_VERSION}", m.format_version),
            });
        }
        Ok(m)
    }

    /// Writes `manifest.json` (pretty-printed).
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
    }
}

fn arrow_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Record {
        file: path.display().to_string(),
        line: 0,
        field: "(arrow ipc)".into(),
        message: e.to_string(),
    }
}

/// The Arrow schema of a shard.
pub fn schema(seq_len: usize) -> Schema {
    let list = |name: &str, item: DataType| {
        Field::new(
            name,
            DataType::FixedSizeList(Arc::new(Field::new("item", item, false)), seq_len as i32),
            false,
        )
    };
    Schema::new(vec![
        list(TOKENS, DataType::UInt32),
        list(LOSS_MASK, DataType::UInt8),
        list(SEGMENT_IDS, DataType::UInt32),
    ])
}

fn fsl(values: ArrayRef, item: DataType, seq_len: usize) -> ArrayRef {
    Arc::new(FixedSizeListArray::new(
        Arc::new(Field::new("item", item, false)),
        seq_len as i32,
        values,
        None,
    ))
}

/// Writes rows as shard files `dir/shard-NNNNN.arrow` of at most `rows_per_shard` rows, in record
/// batches of at most `batch_rows`. Returns the files, with paths relative to `rel_base`.
pub fn write_rows(
    rows: &Rows,
    dir: &Path,
    rel_base: &Path,
    rows_per_shard: usize,
    batch_rows: usize,
) -> Result<Vec<ShardFile>> {
    let s = rows.seq_len;
    write_rows_with(
        rows.len(),
        s,
        dir,
        rel_base,
        rows_per_shard,
        batch_rows,
        |r, batch| {
            let span = r * s..(r + 1) * s;
            batch.tokens.extend_from_slice(&rows.tokens[span.clone()]);
            batch
                .loss_mask
                .extend_from_slice(&rows.loss_mask[span.clone()]);
            batch.segment_ids.extend_from_slice(&rows.segment_ids[span]);
        },
    )
}

/// Like [`write_rows`], but the rows are produced on the fly: `fill(r, batch)` appends row `r`
/// (`seq_len` tokens, loss flags and segment ids) to `batch`. Only one record batch is ever held
/// in memory, so the shards of a corpus can be larger than the machine's memory.
pub fn write_rows_with(
    n: usize,
    seq_len: usize,
    dir: &Path,
    rel_base: &Path,
    rows_per_shard: usize,
    batch_rows: usize,
    mut fill: impl FnMut(usize, &mut Rows),
) -> Result<Vec<ShardFile>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let schema = Arc::new(schema(seq_len));
    let rows_per_shard = rows_per_shard.max(1);
    let batch_rows = batch_rows.clamp(1, rows_per_shard);
    let mut files = Vec::new();
    let mut start = 0;
    while start < n || (n == 0 && files.is_empty()) {
        let end = (start + rows_per_shard).min(n);
        let path = dir.join(format!("shard-{:05}.arrow", files.len()));
        let f = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = FileWriter::try_new_buffered(f, &schema).map_err(|e| arrow_err(&path, e))?;
        let mut b = start;
        while b < end {
            let e = (b + batch_rows).min(end);
            let mut batch = Rows::with_capacity(seq_len, e - b);
            for r in b..e {
                fill(r, &mut batch);
            }
            if batch.tokens.len() != (e - b) * seq_len
                || batch.loss_mask.len() != batch.tokens.len()
                || batch.segment_ids.len() != batch.tokens.len()
            {
                return Err(Error::Config(format!(
                    "{}: rows {b}..{e} were laid out with {}/{}/{} values, expected {} each",
                    path.display(),
                    batch.tokens.len(),
                    batch.loss_mask.len(),
                    batch.segment_ids.len(),
                    (e - b) * seq_len
                )));
            }
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    fsl(
                        Arc::new(UInt32Array::from(batch.tokens)),
                        DataType::UInt32,
                        seq_len,
                    ),
                    fsl(
                        Arc::new(UInt8Array::from(batch.loss_mask)),
                        DataType::UInt8,
                        seq_len,
                    ),
                    fsl(
                        Arc::new(UInt32Array::from(batch.segment_ids)),
                        DataType::UInt32,
                        seq_len,
                    ),
                ],
            )
            .map_err(|e| arrow_err(&path, e))?;
            w.write(&batch).map_err(|e| arrow_err(&path, e))?;
            b = e;
        }
        w.finish().map_err(|e| arrow_err(&path, e))?;
        let rel = path
            .strip_prefix(rel_base)
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        files.push(ShardFile {
            path: rel,
            rows: end - start,
        });
        start = end;
        if n == 0 {
            break;
        }
    }
    Ok(files)
}

fn column<'a, T: 'static>(
    batch: &'a RecordBatch,
    name: &str,
    seq_len: usize,
    path: &Path,
) -> Result<&'a T> {
    let bad = |m: String| Error::Record {
        file: path.display().to_string(),
        line: 0,
        field: name.into(),
        message: m,
    };
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| bad("missing column".into()))?;
    let list = col
        .as_any()
        .downcast_ref::<FixedSizeListArray>()
        .ok_or_else(|| bad(format!("expected FixedSizeList, found {}", col.data_type())))?;
    if list.value_length() as usize != seq_len {
        return Err(bad(format!(
            "list size {} differs from the manifest's seq_len {seq_len}",
            list.value_length()
        )));
    }
    list.values().as_any().downcast_ref::<T>().ok_or_else(|| {
        bad(format!(
            "unexpected item type {}",
            list.values().data_type()
        ))
    })
}

/// Reads one shard file into rows (a small reader for tests and tools; the trainer has its own).
pub fn read_shard(path: &Path, seq_len: usize) -> Result<Rows> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = FileReader::try_new_buffered(f, None).map_err(|e| arrow_err(path, e))?;
    let mut rows = Rows {
        seq_len,
        ..Rows::default()
    };
    for batch in reader {
        let batch = batch.map_err(|e| arrow_err(path, e))?;
        // Offsets of a sliced array are honoured by `values()` only from offset 0; shards are
        // written unsliced, and `value_offset` is checked to be sure.
        let t = column::<UInt32Array>(&batch, TOKENS, seq_len, path)?;
        let l = column::<UInt8Array>(&batch, LOSS_MASK, seq_len, path)?;
        let s = column::<UInt32Array>(&batch, SEGMENT_IDS, seq_len, path)?;
        let n = batch.num_rows() * seq_len;
        if t.len() != n || l.len() != n || s.len() != n {
            return Err(arrow_err(
                path,
                "column lengths disagree with the row count",
            ));
        }
        rows.tokens.extend_from_slice(t.values());
        rows.loss_mask.extend_from_slice(l.values());
        rows.segment_ids.extend_from_slice(s.values());
    }
    Ok(rows)
}

/// Reads every shard of a split, checking the row counts against the manifest.
pub fn read_split(dir: &Path, manifest: &Manifest, split: &str) -> Result<Rows> {
    let info = manifest.splits.get(split).ok_or_else(|| {
        Error::Config(format!(
            "{}: no split `{split}` in the manifest",
            dir.display()
        ))
    })?;
    let mut all = Rows {
        seq_len: manifest.seq_len,
        ..Rows::default()
    };
    for f in &info.files {
        let path: PathBuf = dir.join(&f.path);
        let r = read_shard(&path, manifest.seq_len)?;
        if r.len() != f.rows {
            return Err(arrow_err(
                &path,
                format!("{} rows, the manifest says {}", r.len(), f.rows),
            ));
        }
        all.tokens.extend(r.tokens);
        all.loss_mask.extend(r.loss_mask);
        all.segment_ids.extend(r.segment_ids);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let seq_len = 4;
        let rows = Rows {
            seq_len,
            tokens: (0..20).collect(),
            loss_mask: (0..20).map(|i| (i % 3 == 0) as u8).collect(),
            segment_ids: (0..20).map(|i| i / 3).collect(),
        };
        let files = write_rows(&rows, &dir.path().join("train"), dir.path(), 2, 1).unwrap();
        assert_eq!(
            files
                .iter()
                .map(|f| (f.path.as_str(), f.rows))
                .collect::<Vec<_>>(),
            vec![
                ("train/shard-00000.arrow", 2),
                ("train/shard-00001.arrow", 2),
                ("train/shard-00002.arrow", 1)
            ]
        );
        let mut back = Rows {
            seq_len,
            ..Rows::default()
        };
        for f in &files {
            let r = read_shard(&dir.path().join(&f.path), seq_len).unwrap();
            back.tokens.extend(r.tokens);
            back.loss_mask.extend(r.loss_mask);
            back.segment_ids.extend(r.segment_ids);
        }
        assert_eq!(back, rows);
        let e = read_shard(&dir.path().join(&files[0].path), 5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("seq_len"), "{e}");
    }
}
