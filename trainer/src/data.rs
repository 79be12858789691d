//! Token shards → batches, with arrow-rs only (no Polars).
//!
//! A shard directory holds Arrow IPC files (file or stream format) with three list columns per
//! row: `tokens` (`list<u32>`), `loss_mask` (`list<u8>`, 1 = the token is a training target) and
//! `segment_ids` (`list<u32>`, the packed example each token belongs to), plus a
//! `manifest.json` (see docs/shards.md). Integer columns of other widths are cast to the expected
//! type. The shard files are taken from the manifest: `splits.train.files` (the layout `koala
//! tokenize` writes), else a top-level `shards`/`files` list; without a manifest, every `*.arrow` /
//! `*.ipc` / `*.feather` file of the directory in name order.
//!
//! The data order is a seeded permutation per epoch; [`Loader`]'s position (`epoch`, `cursor`) is
//! all a checkpoint needs to resume it exactly.
use std::path::{Path, PathBuf};

use std::sync::Arc;

use arrow::array::{Array, AsArray, ListArray, ListBuilder, UInt8Builder, UInt32Builder};
use arrow::datatypes::{DataType, Field, Schema, UInt32Type};
use arrow::record_batch::RecordBatch;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One packed training row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub tokens: Vec<u32>,
    pub loss_mask: Vec<u8>,
    pub segment_ids: Vec<u32>,
}

/// All rows of a shard directory, in file then row order.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub rows: Vec<Row>,
}

impl Dataset {
    /// Reads every shard of `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let files = shard_files(dir)?;
        if files.is_empty() {
            return Err(Error::format(
                dir,
                "no shard files (*.arrow, *.ipc, *.feather) found",
            ));
        }
        let mut rows = Vec::new();
        for f in files {
            read_shard(&f, &mut rows)?;
        }
        if rows.is_empty() {
            return Err(Error::format(dir, "the shards hold no rows"));
        }
        Ok(Dataset { rows })
    }

    /// Reads the shards of the manifest's split `split` (for example `eval`, the held-out rows
    /// `koala curate` set aside); `None` when `dir` has no manifest or the manifest no such split.
    pub fn open_split(dir: &Path, split: &str) -> Result<Option<Self>> {
        let Some((manifest, v)) = read_manifest(dir)? else {
            return Ok(None);
        };
        let Some(list) = v
            .get("splits")
            .and_then(|s| s.get(split))
            .and_then(|s| s.get("files"))
            .and_then(|l| l.as_array())
        else {
            return Ok(None);
        };
        let mut rows = Vec::new();
        for f in list_files(dir, &manifest, list, &format!("splits.{split}.files"))? {
            read_shard(&f, &mut rows)?;
        }
        Ok((!rows.is_empty()).then_some(Dataset { rows }))
    }

    /// Total number of tokens.
    pub fn n_tokens(&self) -> usize {
        self.rows.iter().map(|r| r.tokens.len()).sum()
    }
}

/// `dir/manifest.json`, parsed, with its path; `None` when there is none.
pub fn read_manifest(dir: &Path) -> Result<Option<(PathBuf, serde_json::Value)>> {
    let manifest = dir.join("manifest.json");
    if !manifest.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&manifest).map_err(|e| Error::io(&manifest, e))?;
    let v = serde_json::from_str(&text).map_err(|e| Error::format(&manifest, e))?;
    Ok(Some((manifest, v)))
}

/// The files of a manifest's file list (each a name, or an object with `path`, `file` or
/// `name`), relative to `dir`; `what` names the list in errors.
fn list_files(
    dir: &Path,
    manifest: &Path,
    list: &[serde_json::Value],
    what: &str,
) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let name = item.as_str().or_else(|| {
            ["path", "file", "name"]
                .iter()
                .find_map(|k| item.get(k).and_then(|x| x.as_str()))
        });
        let name =
            name.ok_or_else(|| Error::format(manifest, format!("{what}[{i}]: no file name")))?;
        out.push(dir.join(name));
    }
    Ok(out)
}

fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if let Some((manifest, v)) = read_manifest(dir)? {
        // `koala tokenize` writes `splits.<name>.files[].path`; training reads the train split.
        let list = match v.get("splits") {
            Some(splits) => Some(
                splits
                    .get("train")
                    .and_then(|s| s.get("files"))
                    .and_then(|l| l.as_array())
                    .ok_or_else(|| {
                        Error::format(&manifest, "splits: no `train` split with a `files` list")
                    })?,
            ),
            None => v
                .get("shards")
                .or_else(|| v.get("files"))
                .and_then(|l| l.as_array()),
        };
        if let Some(list) = list {
            return list_files(dir, &manifest, list, "shards");
        }
    }
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("arrow" | "ipc" | "feather")
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

fn read_shard(path: &Path, rows: &mut Vec<Row>) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let batches: Vec<RecordBatch> = if bytes.starts_with(b"ARROW1") {
        let r = arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| Error::format(path, e))?;
        r.collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::format(path, e))?
    } else {
        let r = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| Error::format(path, e))?;
        r.collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::format(path, e))?
    };
    let mut row0 = 0usize;
    for b in &batches {
        let tokens = u32_lists(b, "tokens", path)?;
        let mask = u32_lists(b, "loss_mask", path)?;
        let segs = u32_lists(b, "segment_ids", path)?;
        for i in 0..b.num_rows() {
            let (t, m, s) = (list_row(&tokens, i), list_row(&mask, i), list_row(&segs, i));
            if t.len() != m.len() || t.len() != s.len() {
                return Err(Error::format(
                    path,
                    format!(
                        "row {}: tokens ({}), loss_mask ({}) and segment_ids ({}) differ in length",
                        row0 + i,
                        t.len(),
                        m.len(),
                        s.len()
                    ),
                ));
            }
            if t.is_empty() {
                continue;
            }
            rows.push(Row {
                tokens: t,
                loss_mask: m.iter().map(|&x| u8::from(x != 0)).collect(),
                segment_ids: s,
            });
        }
        row0 += b.num_rows();
    }
    Ok(())
}

fn u32_lists(b: &RecordBatch, col: &str, path: &Path) -> Result<ListArray> {
    let arr = b
        .column_by_name(col)
        .ok_or_else(|| Error::format(path, format!("missing column `{col}`")))?;
    let target = DataType::List(std::sync::Arc::new(
        arrow::datatypes::Field::new_list_field(DataType::UInt32, true),
    ));
    let cast = arrow::compute::cast(arr, &target).map_err(|e| {
        Error::format(
            path,
            format!(
                "column `{col}` ({}): not a list of integers: {e}",
                arr.data_type()
            ),
        )
    })?;
    let list = cast.as_list::<i32>().clone();
    if list.values().null_count() > 0 || list.null_count() > 0 {
        return Err(Error::format(path, format!("column `{col}` has nulls")));
    }
    Ok(list)
}

fn list_row(l: &ListArray, i: usize) -> Vec<u32> {
    let v = l.value(i);
    v.as_primitive::<UInt32Type>().values().to_vec()
}

/// Where the loader is: what a checkpoint stores to resume the data order exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LoaderPosition {
    pub epoch: u32,
    /// Rows of this epoch's permutation already handed out.
    pub cursor: usize,
}

/// Seeded epoch-wise shuffled batches of row indices.
#[derive(Clone, Debug)]
pub struct Loader {
    n_rows: usize,
    seed: u64,
    pos: LoaderPosition,
    perm: Vec<usize>,
}

impl Loader {
    /// A loader over `n_rows` rows, starting at `pos`.
    pub fn new(n_rows: usize, seed: u64, pos: LoaderPosition) -> Self {
        let perm = permutation(n_rows, seed, pos.epoch);
        Loader {
            n_rows,
            seed,
            pos,
            perm,
        }
    }

    /// Current position.
    pub fn position(&self) -> LoaderPosition {
        self.pos
    }

    /// The next up-to-`batch` row indices of the current epoch (the last batch of an epoch may
    /// be short), moving to the next epoch first when this one is exhausted.
    pub fn next_batch(&mut self, batch: usize) -> Vec<usize> {
        if self.pos.cursor >= self.n_rows {
            self.pos = LoaderPosition {
                epoch: self.pos.epoch + 1,
                cursor: 0,
            };
            self.perm = permutation(self.n_rows, self.seed, self.pos.epoch);
        }
        let end = (self.pos.cursor + batch).min(self.n_rows);
        let out = self.perm[self.pos.cursor..end].to_vec();
        self.pos.cursor = end;
        out
    }
}

/// The row order of `epoch`: a Fisher–Yates shuffle seeded by `(seed, epoch)`.
pub fn permutation(n: usize, seed: u64, epoch: u32) -> Vec<usize> {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (u64::from(epoch).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let mut p: Vec<usize> = (0..n).collect();
    p.shuffle(&mut rng);
    p
}

/// A micro-batch laid out for the model: `[b, t]` row-major, rows right-padded to the longest.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub b: usize,
    pub t: usize,
    pub inputs: Vec<u32>,
    /// `targets[i] = inputs[i + 1]` within a row (0 at the last position, which is masked).
    pub targets: Vec<u32>,
    /// 1 where position `i` predicts a target that is trained on: the next token's `loss_mask`
    /// is set and it belongs to the same packed segment.
    pub target_mask: Vec<u8>,
    pub positions: Vec<u32>,
    pub segment_ids: Vec<u32>,
}

impl Batch {
    /// Builds a batch from rows, cutting each to `max_len` tokens. Padding gets segment id
    /// `u32::MAX`, token 0 and no loss.
    pub fn from_rows(rows: &[&Row], max_len: usize) -> Self {
        let b = rows.len();
        let t = rows
            .iter()
            .map(|r| r.tokens.len().min(max_len))
            .max()
            .unwrap_or(0);
        let n = b * t;
        let mut out = Batch {
            b,
            t,
            inputs: vec![0; n],
            targets: vec![0; n],
            target_mask: vec![0; n],
            positions: vec![0; n],
            segment_ids: vec![u32::MAX; n],
        };
        for (r, row) in rows.iter().enumerate() {
            let len = row.tokens.len().min(max_len);
            let base = r * t;
            let mut pos = 0u32;
            for i in 0..len {
                if i > 0 && row.segment_ids[i] != row.segment_ids[i - 1] {
                    pos = 0;
                }
                out.inputs[base + i] = row.tokens[i];
                out.segment_ids[base + i] = row.segment_ids[i];
                out.positions[base + i] = pos;
                pos += 1;
                if i + 1 < len {
                    out.targets[base + i] = row.tokens[i + 1];
                    out.target_mask[base + i] = u8::from(
                        row.loss_mask[i + 1] != 0 && row.segment_ids[i + 1] == row.segment_ids[i],
                    );
                }
            }
            // Padding positions count up so that RoPE angles stay finite and distinct.
            for i in len..t {
                out.positions[base + i] = (i - len) as u32;
            }
        }
        out
    }

    /// Number of trained target positions.
    pub fn n_targets(&self) -> usize {
        self.target_mask.iter().map(|&m| m as usize).sum()
    }
}

/// Writes rows as one Arrow IPC file in the shard layout (for tests, demos and tools that make
/// shards without the pipeline).
pub fn write_shard(path: &Path, rows: &[Row]) -> Result<()> {
    let mut t = ListBuilder::new(UInt32Builder::new());
    let mut m = ListBuilder::new(UInt8Builder::new());
    let mut s = ListBuilder::new(UInt32Builder::new());
    for r in rows {
        t.values().append_slice(&r.tokens);
        t.append(true);
        m.values().append_slice(&r.loss_mask);
        m.append(true);
        s.values().append_slice(&r.segment_ids);
        s.append(true);
    }
    let (t, m, s) = (t.finish(), m.finish(), s.finish());
    let schema = Arc::new(Schema::new(vec![
        Field::new("tokens", t.data_type().clone(), false),
        Field::new("loss_mask", m.data_type().clone(), false),
        Field::new("segment_ids", s.data_type().clone(), false),
    ]));
    let err = |e: arrow::error::ArrowError| Error::format(path, e);
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(t), Arc::new(m), Arc::new(s)])
        .map_err(err)?;
    let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = arrow::ipc::writer::FileWriter::try_new(f, &schema).map_err(err)?;
    w.write(&batch).map_err(err)?;
    w.finish().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tokens: &[u32], mask: &[u8], segs: &[u32]) -> Row {
        Row {
            tokens: tokens.to_vec(),
            loss_mask: mask.to_vec(),
            segment_ids: segs.to_vec(),
        }
    }

    #[test]
    fn reads_shards_in_manifest_order() {
        let d = tempfile::tempdir().unwrap();
        let a = vec![row(&[1, 2, 3], &[0, 1, 1], &[0, 0, 0])];
        let b = vec![row(&[4, 5], &[1, 1], &[0, 1]), row(&[6], &[1], &[0])];
        write_shard(&d.path().join("b.arrow"), &a).unwrap();
        write_shard(&d.path().join("a.arrow"), &b).unwrap();
        std::fs::write(
            d.path().join("manifest.json"),
            r#"{"shards": [{"path": "b.arrow"}, "a.arrow"]}"#,
        )
        .unwrap();
        let ds = Dataset::open(d.path()).unwrap();
        assert_eq!(ds.rows.len(), 3);
        assert_eq!(ds.rows[0], a[0]);
        assert_eq!(ds.rows[2], b[1]);
        assert_eq!(ds.n_tokens(), 6);
    }

    #[test]
    fn reads_the_train_split_of_a_tokenize_manifest() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("train")).unwrap();
        std::fs::create_dir_all(d.path().join("eval")).unwrap();
        let train = vec![row(&[1, 2], &[0, 1], &[1, 1])];
        let eval = vec![row(&[7, 8, 9], &[1, 1, 1], &[1, 1, 1])];
        write_shard(&d.path().join("train/shard-00000.arrow"), &train).unwrap();
        write_shard(&d.path().join("eval/shard-00000.arrow"), &eval).unwrap();
        std::fs::write(
            d.path().join("manifest.json"),
            r#"{"splits": {"eval": {"files": [{"path": "eval/shard-00000.arrow", "rows": 1}]},
                           "train": {"files": [{"path": "train/shard-00000.arrow", "rows": 1}]}}}"#,
        )
        .unwrap();
        let ds = Dataset::open(d.path()).unwrap();
        assert_eq!(ds.rows, train, "only the train split is read");

        std::fs::write(
            d.path().join("manifest.json"),
            r#"{"splits": {"eval": {"files": []}}}"#,
        )
        .unwrap();
        let err = Dataset::open(d.path()).unwrap_err().to_string();
        assert!(err.contains("no `train` split"), "{err}");
    }

    #[test]
    fn missing_column_names_file_and_column() {
        let d = tempfile::tempdir().unwrap();
        let mut t = ListBuilder::new(UInt32Builder::new());
        t.values().append_slice(&[1, 2]);
        t.append(true);
        let t = t.finish();
        let schema = Arc::new(Schema::new(vec![Field::new(
            "tokens",
            t.data_type().clone(),
            false,
        )]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(t)]).unwrap();
        let p = d.path().join("x.arrow");
        let mut w =
            arrow::ipc::writer::FileWriter::try_new(std::fs::File::create(&p).unwrap(), &schema)
                .unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        let e = Dataset::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("x.arrow") && e.contains("loss_mask"), "{e}");
    }

    #[test]
    fn loader_is_seeded_and_resumable() {
        let mut a = Loader::new(10, 3, LoaderPosition::default());
        let all: Vec<Vec<usize>> = (0..7).map(|_| a.next_batch(4)).collect();
        assert_eq!(all[0].len() + all[1].len() + all[2].len(), 10);
        assert_eq!(all[2].len(), 2);
        let mut e0: Vec<usize> = all[..3].concat();
        e0.sort();
        assert_eq!(e0, (0..10).collect::<Vec<_>>());
        assert_ne!(
            all[..3].concat(),
            all[3..6].concat(),
            "epochs are reshuffled"
        );
        // Resume from the position after 4 batches.
        let mut b = Loader::new(10, 3, LoaderPosition::default());
        for _ in 0..4 {
            b.next_batch(4);
        }
        let mut c = Loader::new(10, 3, b.position());
        assert_eq!(c.next_batch(4), all[4]);
        assert_eq!(c.next_batch(4), all[5]);
    }

    #[test]
    fn batch_masks_cross_segment_targets_and_resets_positions() {
        let r = row(&[10, 11, 12, 20, 21], &[0, 1, 1, 1, 1], &[0, 0, 0, 1, 1]);
        let short = row(&[7, 8], &[1, 1], &[0, 0]);
        let b = Batch::from_rows(&[&r, &short], 16);
        assert_eq!((b.b, b.t), (2, 5));
        assert_eq!(&b.targets[..5], &[11, 12, 20, 21, 0]);
        assert_eq!(&b.target_mask[..5], &[1, 1, 0, 1, 0]);
        assert_eq!(&b.positions[..5], &[0, 1, 2, 0, 1]);
        assert_eq!(&b.target_mask[5..], &[1, 0, 0, 0, 0]);
        assert_eq!(&b.segment_ids[5..], &[0, 0, u32::MAX, u32::MAX, u32::MAX]);
        assert_eq!(b.n_targets(), 4);
    }
}
