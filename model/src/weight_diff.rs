//! Weight diffs as Koala released its weights, exact to the bit: [`diff`] writes a fine-tuned
//! checkpoint as a diff against its base, [`recover`] rebuilds the fine-tuned checkpoint from the
//! base and the diff (see docs/weights.md).
//!
//! Koala, like Alpaca and Vicuna, was fine-tuned from LLaMA, whose licence did not allow
//! redistributing its weights, so it was released as a diff that only someone holding LLaMA can
//! apply. A float diff (`tuned − base`, then `base + diff`) is not exact: it rounds, `inf − inf`
//! and `NaN − NaN` are NaN, and `-0.0` can come back as `0.0`. This one works on bit patterns.
//!
//! # Encoding
//!
//! A tensor that the base has with the same dtype and shape is stored as a **delta**: per lane,
//! `(tuned − base) mod 2^w` of the raw little-endian bit patterns, where a lane is one element
//! for 8-, 16-, 32- and 64-bit dtypes (`w` = 8, 16, 32, 64: `u16` lanes for `F16`/`BF16`, `u32`
//! for `F32`, `u64` for `F64`/`I64`/`C64`), and one byte for the sub-byte dtypes (`F4`, `F6_*`).
//! The delta is stored as the unsigned integer dtype of the lane width (`U8`, `U16`, `U32`,
//! `U64`) with the tensor's shape (a flat `[bytes]` for sub-byte dtypes). Recovery adds it back
//! `mod 2^w`, which gives every bit pattern back, NaN payloads, infinities and `-0.0` included,
//! whatever the dtype is. A tensor whose dtype or shape differs from the base's (an embedding
//! resized for a pad token) or that only the tuned checkpoint has is stored **whole**, and the
//! manifest says so and why. Tensors only the base has are listed as `base_only`.
//!
//! # The diff folder
//!
//! * [`MANIFEST`] (`weight_diff.json`, a [`Manifest`]): per tuned shard, its file name and its
//!   safetensors header verbatim, and per tensor its dtype, shape, kind, the sha256 of its tuned
//!   bytes and, for a delta, the base tensor's file, dtype, shape and sha256; the tuned
//!   `model.safetensors.index.json` verbatim; the copied files with their sizes and sha256;
//! * one `weight_diff-0000i-of-0000n.safetensors` per tuned shard (`weight_diff.safetensors` when
//!   the tuned checkpoint is a single file): valid safetensors files, with
//!   `__metadata__.format = "koala-weight-diff"` so that nothing loads them as a model;
//! * the tuned checkpoint's other files (`config.json`, `generation_config.json`, tokenizer
//!   files), copied. Other weight files (`*.bin`, `*.pt`, `*.gguf`, …) are left out, with a
//!   warning, since they would carry the tuned weights whole.
//!
//! The recovered folder gets the tuned shard files under their names, each written as the
//! recorded header followed by its tensors in offset order: byte for byte the tuned files.
//!
//! # Checksums
//!
//! [`recover`] checks each base tensor against the sha256 recorded at [`diff`] time (a wrong base
//! is an [`Error::Checksum`] naming the tensor, the base file and the manifest), then each
//! recovered tensor against the tuned sha256: with the base checked, a mismatch there can only
//! come from the diff file, and the error says so and names it. Copied files are checked against
//! their recorded sha256 too. Two streams are hashed per tensor, on two threads: base and tuned
//! in [`diff`], base and output in [`recover`].
//!
//! # Memory
//!
//! Inputs are memory-mapped and streamed in 1 MiB chunks: one tensor is in flight at a time, and
//! its mapped pages are released (`MADV_DONTNEED`) once it is written, so the resident set stays
//! about the largest tensor, whatever the checkpoint's size (the page cache, which the kernel is
//! free to drop, holds the rest). Outputs are written tensor by tensor (the safetensors header is
//! computed up front), into a temporary sibling folder that is renamed into place at the end: a
//! failed run leaves no output behind.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The manifest's file name in a diff folder.
pub const MANIFEST: &str = "weight_diff.json";
/// The manifest's `format` and the diff shards' `__metadata__.format`.
pub const FORMAT: &str = "koala-weight-diff";
/// The manifest version this code writes and reads.
pub const VERSION: u32 = 1;

const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";
/// Bytes computed and written per step.
const CHUNK: usize = 1 << 20;
/// Tensors at least this large are hashed on their own threads.
const PAR_MIN: usize = 1 << 20;
/// Extensions of weight files that must not be copied into a diff (they would carry the tuned
/// weights whole).
const WEIGHT_EXTS: &[&str] = &[
    "bin",
    "pt",
    "pth",
    "ckpt",
    "gguf",
    "ggml",
    "h5",
    "msgpack",
    "onnx",
    "npz",
    "npy",
    "pkl",
    "safetensors",
];
const ENCODING: &str = "delta tensors: per lane, (tuned - base) mod 2^w of the raw little-endian \
    bit patterns, stored as U8/U16/U32/U64 (w = 8/16/32/64 = the dtype's width; sub-byte dtypes \
    per byte); recover adds it back mod 2^w. whole tensors: the tuned bytes as they are.";

/// A diff folder's `weight_diff.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The encoding, in words (for a reader of the file).
    pub encoding: String,
    /// The tuned checkpoint's `model.safetensors.index.json`, verbatim (`None`: a single file).
    pub tuned_index: Option<String>,
    /// One entry per tuned shard, in file-name order.
    pub shards: Vec<ShardEntry>,
    /// Tensors only the base has (not in the recovered checkpoint).
    pub base_only: Vec<String>,
    /// Non-tensor files copied from the tuned checkpoint.
    pub files: Vec<FileEntry>,
}

/// One tuned shard and the diff file that holds its tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// The tuned shard's file name (the recovered file's name).
    pub tuned_file: String,
    /// The tuned shard's safetensors JSON header, verbatim (padding included).
    pub tuned_header: String,
    /// The diff file's name in the diff folder.
    pub diff_file: String,
    /// The shard's tensors in offset order.
    pub tensors: Vec<TensorEntry>,
}

/// How a tensor is stored in the diff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `(tuned − base) mod 2^w` per lane (see the module docs).
    Delta,
    /// The tuned bytes as they are.
    Whole,
}

/// One tensor of the tuned checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    /// The tuned tensor's dtype.
    pub dtype: Dtype,
    /// The tuned tensor's shape.
    pub shape: Vec<usize>,
    pub kind: Kind,
    /// Why a tensor is stored whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// sha256 (hex) of the tuned tensor's bytes (for [`Kind::Whole`], the bytes stored).
    pub tuned_sha256: String,
    /// The base tensor a delta applies to (`None` for [`Kind::Whole`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseEntry>,
}

/// The base tensor a delta was computed against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaseEntry {
    /// The base file it was read from (informational: any shard layout of the base recovers).
    pub file: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// sha256 (hex) of the base tensor's bytes.
    pub sha256: String,
}

/// A non-tensor file copied from the tuned checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Where a long run stands, passed to the progress callback after each tensor.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    /// The tensor just written.
    pub tensor: &'a str,
    pub tensors_done: usize,
    pub tensors_total: usize,
    /// Tensor bytes written so far and in all.
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// What [`diff`] wrote.
#[derive(Clone, Debug, Default)]
pub struct DiffReport {
    pub out: PathBuf,
    /// Tensors of the tuned checkpoint.
    pub tensors: usize,
    /// Of which stored as deltas.
    pub delta: usize,
    /// Of which stored whole: name and reason.
    pub whole: Vec<(String, String)>,
    /// Tensors only the base has.
    pub base_only: Vec<String>,
    /// Diff files written.
    pub shards: usize,
    /// Tensor bytes written.
    pub bytes: u64,
    /// Non-tensor files copied.
    pub files: Vec<String>,
}

/// What [`recover`] wrote.
#[derive(Clone, Debug, Default)]
pub struct RecoverReport {
    pub out: PathBuf,
    pub tensors: usize,
    /// Safetensors files written.
    pub shards: usize,
    /// Tensor bytes written.
    pub bytes: u64,
    /// Non-tensor files copied.
    pub files: Vec<String>,
}

/// Writes the checkpoint folder `tuned` as an exact diff against `base` into the new folder `out`
/// (which must not exist, or be empty). `progress` is called after each tensor.
///
/// Both inputs are Hugging Face folders: `model.safetensors`, or shards listed in
/// `model.safetensors.index.json`. Their shard layouts may differ: tensors are matched by name.
///
/// ```no_run
/// use std::path::Path;
/// use koala_model::weight_diff::{diff, recover};
///
/// # fn main() -> koala_model::Result<()> {
/// let r = diff(Path::new("llama-7b"), Path::new("koala-7b"), Path::new("koala-7b-diff"), |_| {})?;
/// println!("{} tensors: {} deltas, {} whole", r.tensors, r.delta, r.whole.len());
/// // Whoever holds llama-7b gets koala-7b back, bit for bit:
/// recover(Path::new("llama-7b"), Path::new("koala-7b-diff"), Path::new("koala-7b-r"), |_| {})?;
/// # Ok(())
/// # }
/// ```
pub fn diff(
    base: &Path,
    tuned: &Path,
    out: &Path,
    mut progress: impl FnMut(&Progress<'_>),
) -> Result<DiffReport> {
    let b = Checkpoint::open(base)?;
    let t = Checkpoint::open(tuned)?;
    tracing::info!(
        base = %base.display(),
        tuned = %tuned.display(),
        base_tensors = b.tensors.len(),
        tuned_tensors = t.tensors.len(),
        tuned_files = t.shards.len(),
        "weight diff"
    );
    let staging = Staging::new(out)?;
    let files = copy_side_files(tuned, &staging.tmp)?;
    let mut report = DiffReport {
        out: out.to_path_buf(),
        tensors: t.tensors.len(),
        shards: t.shards.len(),
        files: files.iter().map(|f| f.name.clone()).collect(),
        ..DiffReport::default()
    };
    let bytes_total: u64 = t.tensors.values().map(|l| (l.end - l.start) as u64).sum();
    let mut done = 0usize;
    let mut buf = vec![0u8; CHUNK];
    let n = t.shards.len();
    let mut shards = Vec::with_capacity(n);
    for (si, shard) in t.shards.iter().enumerate() {
        let diff_file = if n == 1 {
            "weight_diff.safetensors".to_string()
        } else {
            format!("weight_diff-{:05}-of-{n:05}.safetensors", si + 1)
        };
        // Plan the file first: its header needs every stored dtype, shape and size.
        let mut plan = Vec::with_capacity(shard.order.len());
        for name in &shard.order {
            let tl = t.loc(name)?;
            let (kind, reason, bl) = match b.tensors.get(name) {
                Some(bl) if bl.dtype == tl.dtype && bl.shape == tl.shape => {
                    (Kind::Delta, None, Some(bl))
                }
                Some(bl) => {
                    let why = if bl.dtype != tl.dtype {
                        format!("dtype {} in the base, {} tuned", bl.dtype, tl.dtype)
                    } else {
                        format!("shape {:?} in the base, {:?} tuned", bl.shape, tl.shape)
                    };
                    (Kind::Whole, Some(why), None)
                }
                None => (
                    Kind::Whole,
                    Some("not in the base checkpoint".to_string()),
                    None,
                ),
            };
            let (dtype, shape) = match kind {
                Kind::Delta => {
                    let (d, s, _) = lane_layout(tl.dtype, &tl.shape, tl.end - tl.start);
                    (d, s)
                }
                Kind::Whole => (tl.dtype, tl.shape.clone()),
            };
            plan.push(Planned {
                name,
                tl,
                bl,
                kind,
                reason,
                dtype,
                shape,
            });
        }
        let header = diff_header(plan.iter().map(|p| {
            (
                p.name.as_str(),
                p.dtype,
                p.shape.as_slice(),
                p.tl.end - p.tl.start,
            )
        }))?;
        let path = staging.tmp.join(&diff_file);
        let mut w = create(&path)?;
        write_header(&mut w, &header).map_err(|e| Error::io(&path, e))?;
        let mut entries = Vec::with_capacity(plan.len());
        for Planned {
            name,
            tl,
            bl,
            kind,
            reason,
            ..
        } in plan
        {
            let tb = t.bytes(tl, name)?;
            let entry = match bl {
                Some(bl) => {
                    let bb = b.bytes(bl, name)?;
                    let lane = lane_layout(tl.dtype, &tl.shape, tb.len()).2;
                    let (t_sha, b_sha) =
                        transfer(Op::Sub(lane), tb, bb, Hash::Input, &mut w, &mut buf)
                            .map_err(|e| Error::io(&path, e))?;
                    b.release(bl);
                    report.delta += 1;
                    TensorEntry {
                        name: name.clone(),
                        dtype: tl.dtype,
                        shape: tl.shape.clone(),
                        kind,
                        reason,
                        tuned_sha256: t_sha,
                        base: Some(BaseEntry {
                            file: b.shards[bl.shard].name.clone(),
                            dtype: bl.dtype,
                            shape: bl.shape.clone(),
                            sha256: b_sha,
                        }),
                    }
                }
                None => {
                    let (sha, _) = transfer(Op::Copy, tb, &[], Hash::Output, &mut w, &mut buf)
                        .map_err(|e| Error::io(&path, e))?;
                    let why = reason.clone().unwrap_or_default();
                    tracing::info!(tensor = %name, reason = %why, "stored whole");
                    report.whole.push((name.clone(), why));
                    TensorEntry {
                        name: name.clone(),
                        dtype: tl.dtype,
                        shape: tl.shape.clone(),
                        kind,
                        reason,
                        tuned_sha256: sha,
                        base: None,
                    }
                }
            };
            t.release(tl);
            entries.push(entry);
            done += 1;
            report.bytes += tb.len() as u64;
            progress(&Progress {
                tensor: name,
                tensors_done: done,
                tensors_total: report.tensors,
                bytes_done: report.bytes,
                bytes_total,
            });
        }
        finish(w, &path)?;
        shards.push(ShardEntry {
            tuned_file: shard.name.clone(),
            tuned_header: shard.header.clone(),
            diff_file,
            tensors: entries,
        });
    }
    report.base_only = b
        .tensors
        .keys()
        .filter(|k| !t.tensors.contains_key(*k))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let manifest = Manifest {
        format: FORMAT.to_string(),
        version: VERSION,
        encoding: ENCODING.to_string(),
        tuned_index: t.index.clone(),
        shards,
        base_only: report.base_only.clone(),
        files,
    };
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| Error::Invalid(format!("serialising {MANIFEST}: {e}")))?;
    let mpath = staging.tmp.join(MANIFEST);
    let mut w = create(&mpath)?;
    w.write_all(text.as_bytes())
        .map_err(|e| Error::io(&mpath, e))?;
    finish(w, &mpath)?;
    staging.commit()?;
    tracing::info!(
        out = %out.display(),
        delta = report.delta,
        whole = report.whole.len(),
        base_only = report.base_only.len(),
        "weight diff written"
    );
    Ok(report)
}

/// Rebuilds the tuned checkpoint from `base` and the diff folder `diff` into the new folder
/// `out` (which must not exist, or be empty), checking every tensor against the checksums the
/// diff recorded. `progress` is called after each tensor. See [`diff`] for an example.
///
/// A base other than the one the diff was made from fails with [`Error::Checksum`] (or
/// [`Error::Tensor`] when a tensor is missing or has another dtype or shape), naming the tensor,
/// the base file and the manifest; nothing is left at `out` on any failure.
pub fn recover(
    base: &Path,
    diff: &Path,
    out: &Path,
    mut progress: impl FnMut(&Progress<'_>),
) -> Result<RecoverReport> {
    let mpath = diff.join(MANIFEST);
    let m = read_manifest(diff)?;
    let b = Checkpoint::open(base)?;
    tracing::info!(
        base = %base.display(),
        diff = %diff.display(),
        tensors = m.shards.iter().map(|s| s.tensors.len()).sum::<usize>(),
        files = m.shards.len(),
        "weight recover"
    );
    let staging = Staging::new(out)?;
    let mut report = RecoverReport {
        out: out.to_path_buf(),
        tensors: m.shards.iter().map(|s| s.tensors.len()).sum(),
        shards: m.shards.len(),
        ..RecoverReport::default()
    };
    for f in &m.files {
        copy_checked(&diff.join(&f.name), &staging.tmp.join(&f.name), f, &mpath)?;
        report.files.push(f.name.clone());
    }
    let bytes_total = m
        .shards
        .iter()
        .map(|s| header_data_len(s, &mpath))
        .sum::<Result<u64>>()?;
    let mut done = 0usize;
    let mut buf = vec![0u8; CHUNK];
    for shard in &m.shards {
        let dpath = diff.join(&shard.diff_file);
        let (dshard, dmeta) = Shard::open(&dpath, &shard.diff_file)?;
        let tmeta = tuned_meta(shard, &mpath)?;
        let entries: HashMap<&str, &TensorEntry> =
            shard.tensors.iter().map(|e| (e.name.as_str(), e)).collect();
        let order = tmeta.offset_keys();
        if order.len() != shard.tensors.len()
            || order.iter().any(|n| !entries.contains_key(n.as_str()))
        {
            return Err(Error::format(
                &mpath,
                format!(
                    "shard {}: the tensors of tuned_header and of the tensor list differ",
                    shard.tuned_file
                ),
            ));
        }
        let opath = staging.tmp.join(&shard.tuned_file);
        let mut w = create(&opath)?;
        write_header(&mut w, &shard.tuned_header).map_err(|e| Error::io(&opath, e))?;
        for name in &order {
            let Some(&e) = entries.get(name.as_str()) else {
                continue; // checked above
            };
            let Some(ti) = tmeta.info(name) else {
                continue; // offset_keys come from the same metadata
            };
            if ti.dtype != e.dtype || ti.shape != e.shape {
                return Err(Error::Tensor {
                    path: mpath.clone(),
                    tensor: name.clone(),
                    msg: format!(
                        "tuned_header says {} {:?}, the tensor list {} {:?}",
                        ti.dtype, ti.shape, e.dtype, e.shape
                    ),
                });
            }
            let nbytes = ti.data_offsets.1 - ti.data_offsets.0;
            let (want_dtype, want_shape, lane) = match e.kind {
                Kind::Delta => lane_layout(e.dtype, &e.shape, nbytes),
                Kind::Whole => (e.dtype, e.shape.clone(), 1),
            };
            let di = dmeta.info(name).ok_or_else(|| Error::Tensor {
                path: dpath.clone(),
                tensor: name.clone(),
                msg: format!("missing from the diff file ({MANIFEST} lists it)"),
            })?;
            if di.dtype != want_dtype || di.shape != want_shape {
                return Err(Error::Tensor {
                    path: dpath.clone(),
                    tensor: name.clone(),
                    msg: format!(
                        "stored as {} {:?}, but {MANIFEST} implies {want_dtype} {want_shape:?}",
                        di.dtype, di.shape
                    ),
                });
            }
            let dl = Loc {
                shard: 0,
                dtype: di.dtype,
                shape: di.shape.clone(),
                start: dshard.data_start + di.data_offsets.0,
                end: dshard.data_start + di.data_offsets.1,
            };
            let db = dshard.slice(&dl, name)?;
            let out_sha = match e.kind {
                Kind::Delta => {
                    let be = e.base.as_ref().ok_or_else(|| Error::Tensor {
                        path: mpath.clone(),
                        tensor: name.clone(),
                        msg: "a delta without its base entry".into(),
                    })?;
                    let bl = b.tensors.get(name.as_str()).ok_or_else(|| Error::Tensor {
                        path: b.dir.clone(),
                        tensor: name.clone(),
                        msg: format!(
                            "missing from the base checkpoint, but {} was made against a base \
                             that has it (in {}): wrong base checkpoint",
                            mpath.display(),
                            be.file
                        ),
                    })?;
                    let bpath = b.shards[bl.shard].path.clone();
                    if bl.dtype != be.dtype || bl.shape != be.shape {
                        return Err(Error::Tensor {
                            path: bpath,
                            tensor: name.clone(),
                            msg: format!(
                                "is {} {:?} here, but {} was made against {} {:?} (in {}): \
                                 wrong base checkpoint",
                                bl.dtype,
                                bl.shape,
                                mpath.display(),
                                be.dtype,
                                be.shape,
                                be.file
                            ),
                        });
                    }
                    let bb = b.bytes(bl, name)?;
                    let (out_sha, b_sha) =
                        transfer(Op::Add(lane), bb, db, Hash::Output, &mut w, &mut buf)
                            .map_err(|e| Error::io(&opath, e))?;
                    b.release(bl);
                    if b_sha != be.sha256 {
                        return Err(checksum_error(
                            bpath,
                            name,
                            &b_sha,
                            &be.sha256,
                            &mpath,
                            &format!(
                                "this is not the base the diff was made from (there the tensor \
                                 was in {}): wrong base checkpoint",
                                be.file
                            ),
                        ));
                    }
                    out_sha
                }
                Kind::Whole => {
                    transfer(Op::Copy, db, &[], Hash::Output, &mut w, &mut buf)
                        .map_err(|e| Error::io(&opath, e))?
                        .0
                }
            };
            dshard.release(&dl);
            // The base tensor checked out: a recovered tensor that does not is the diff's fault.
            if out_sha != e.tuned_sha256 {
                return Err(checksum_error(
                    dpath.clone(),
                    name,
                    &out_sha,
                    &e.tuned_sha256,
                    &mpath,
                    "the tensor recovered with this diff file is not the fine-tuned one: the \
                     diff file is corrupted (download it again)",
                ));
            }
            done += 1;
            report.bytes += nbytes as u64;
            progress(&Progress {
                tensor: name,
                tensors_done: done,
                tensors_total: report.tensors,
                bytes_done: report.bytes,
                bytes_total,
            });
        }
        finish(w, &opath)?;
    }
    if let Some(index) = &m.tuned_index {
        let ipath = staging.tmp.join(INDEX);
        let mut w = create(&ipath)?;
        w.write_all(index.as_bytes())
            .map_err(|e| Error::io(&ipath, e))?;
        finish(w, &ipath)?;
    }
    staging.commit()?;
    tracing::info!(out = %out.display(), tensors = report.tensors, "weights recovered");
    Ok(report)
}

/// One tuned tensor as [`diff`] will store it: a delta against `bl`, or whole (`bl` is `None`,
/// `reason` says why), as `dtype` and `shape` in the diff file.
struct Planned<'a> {
    name: &'a String,
    tl: &'a Loc,
    bl: Option<&'a Loc>,
    kind: Kind,
    reason: Option<String>,
    dtype: Dtype,
    shape: Vec<usize>,
}

/// Reads and checks `dir/weight_diff.json`: format, version, and plain file names.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| Error::format(&path, e))?;
    if m.format != FORMAT {
        return Err(Error::format(
            &path,
            format!("format is {:?}, expected {FORMAT:?}", m.format),
        ));
    }
    if m.version != VERSION {
        return Err(Error::format(
            &path,
            format!(
                "version {} (this koala reads version {VERSION}); use a matching koala",
                m.version
            ),
        ));
    }
    if m.shards.is_empty() {
        return Err(Error::format(&path, "no shards"));
    }
    if m.tuned_index.is_none() && m.shards.len() != 1 {
        return Err(Error::format(
            &path,
            "several shards but no tuned_index to list them",
        ));
    }
    let mut outs = BTreeSet::new();
    for s in &m.shards {
        check_plain_name(&path, &s.tuned_file)?;
        check_plain_name(&path, &s.diff_file)?;
        if !s.tuned_file.ends_with(".safetensors") {
            return Err(Error::format(
                &path,
                format!("shard {:?} is not a .safetensors file name", s.tuned_file),
            ));
        }
        if !outs.insert(s.tuned_file.as_str()) {
            return Err(Error::format(
                &path,
                format!("shard {} is listed twice", s.tuned_file),
            ));
        }
    }
    for f in &m.files {
        check_plain_name(&path, &f.name)?;
        if f.name == INDEX || !outs.insert(f.name.as_str()) {
            return Err(Error::format(
                &path,
                format!("file {} clashes with a weight file", f.name),
            ));
        }
    }
    Ok(m)
}

/// An [`Error::Checksum`]: `path`'s `tensor` hashes to `got` where `manifest` records `expected`.
fn checksum_error(
    path: PathBuf,
    tensor: &str,
    got: &str,
    expected: &str,
    manifest: &Path,
    hint: &str,
) -> Error {
    Error::Checksum {
        path,
        tensor: tensor.to_string(),
        manifest: manifest.to_path_buf(),
        msg: format!(
            "sha256 {got}, but {} records {expected}: {hint}",
            manifest.display()
        ),
    }
}

/// The tuned header of a shard, parsed and validated as safetensors does.
fn tuned_meta(shard: &ShardEntry, mpath: &Path) -> Result<Metadata> {
    serde_json::from_str::<Metadata>(&shard.tuned_header).map_err(|e| {
        Error::format(
            mpath,
            format!("shard {}: tuned_header: {e}", shard.tuned_file),
        )
    })
}

fn header_data_len(shard: &ShardEntry, mpath: &Path) -> Result<u64> {
    Ok(tuned_meta(shard, mpath)?.data_len() as u64)
}

/// The integer dtype, shape and lane width (bytes) a delta of a `dtype` tensor is stored with.
fn lane_layout(dtype: Dtype, shape: &[usize], nbytes: usize) -> (Dtype, Vec<usize>, usize) {
    match dtype.bitsize() {
        8 => (Dtype::U8, shape.to_vec(), 1),
        16 => (Dtype::U16, shape.to_vec(), 2),
        32 => (Dtype::U32, shape.to_vec(), 4),
        64 => (Dtype::U64, shape.to_vec(), 8),
        _ => (Dtype::U8, vec![nbytes], 1),
    }
}

/// What [`transfer`] writes.
#[derive(Clone, Copy)]
enum Op {
    /// `a`.
    Copy,
    /// `a − b` per lane of this many bytes, wrapping.
    Sub(usize),
    /// `a + b` per lane, wrapping.
    Add(usize),
}

/// Which stream [`transfer`]'s calling thread hashes as it goes.
#[derive(Clone, Copy)]
enum Hash {
    /// `a` (then `b` is hashed on another thread).
    Input,
    /// What is written (then `a` is hashed on another thread, unless the op is a copy).
    Output,
}

/// Writes `op(a, b)` to `w` chunk by chunk. Returns the sha256 of the stream `hash` names and,
/// for `Sub`/`Add`, of the other input (`b` for [`Hash::Input`], `a` for [`Hash::Output`]),
/// hashed on a second thread meanwhile when large; that one is empty for a copy.
fn transfer(
    op: Op,
    a: &[u8],
    b: &[u8],
    hash: Hash,
    w: &mut impl Write,
    buf: &mut [u8],
) -> std::io::Result<(String, String)> {
    if !matches!(op, Op::Copy) && a.len() != b.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("operands of {} and {} bytes", a.len(), b.len()),
        ));
    }
    let beside: &[u8] = match (op, hash) {
        (Op::Copy, _) => &[],
        (_, Hash::Input) => b,
        (_, Hash::Output) => a,
    };
    std::thread::scope(|s| {
        let other = if beside.len() >= PAR_MIN
            && let Ok(h) = std::thread::Builder::new()
                .name("weight-hash".into())
                .spawn_scoped(s, move || sha256_hex(beside))
        {
            Hashed::Thread(h)
        } else if matches!(op, Op::Copy) {
            Hashed::Done(String::new())
        } else {
            Hashed::Done(sha256_hex(beside))
        };
        let mut h = Sha256::new();
        let mut res = Ok(());
        let mut start = 0;
        while start < a.len() {
            let end = (start + CHUNK).min(a.len());
            let out: &[u8] = match op {
                Op::Copy => &a[start..end],
                Op::Sub(lane) | Op::Add(lane) => {
                    let o = &mut buf[..end - start];
                    lanes(
                        matches!(op, Op::Add(_)),
                        lane,
                        &a[start..end],
                        &b[start..end],
                        o,
                    );
                    o
                }
            };
            h.update(match hash {
                Hash::Input => &a[start..end],
                Hash::Output => out,
            });
            if let Err(e) = w.write_all(out) {
                res = Err(e);
                break;
            }
            start = end;
        }
        let other = match other {
            Hashed::Done(s) => s,
            // A hashing thread cannot panic; should it, the empty hash fails the check.
            Hashed::Thread(t) => t.join().unwrap_or_default(),
        };
        res.map(|()| (hex::encode(h.finalize()), other))
    })
}

enum Hashed<'s> {
    Done(String),
    Thread(std::thread::ScopedJoinHandle<'s, String>),
}

/// `out = a ± b` per little-endian lane of `width` bytes, wrapping (`b` as long as `a`).
fn lanes(add: bool, width: usize, a: &[u8], b: &[u8], out: &mut [u8]) {
    macro_rules! go {
        ($t:ty, $n:literal) => {{
            let (xa, _) = a.as_chunks::<$n>();
            let (xb, _) = b.as_chunks::<$n>();
            let (xo, _) = out.as_chunks_mut::<$n>();
            if add {
                for ((o, x), y) in xo.iter_mut().zip(xa).zip(xb) {
                    *o = <$t>::from_le_bytes(*x)
                        .wrapping_add(<$t>::from_le_bytes(*y))
                        .to_le_bytes();
                }
            } else {
                for ((o, x), y) in xo.iter_mut().zip(xa).zip(xb) {
                    *o = <$t>::from_le_bytes(*x)
                        .wrapping_sub(<$t>::from_le_bytes(*y))
                        .to_le_bytes();
                }
            }
        }};
    }
    match width {
        2 => go!(u16, 2),
        4 => go!(u32, 4),
        8 => go!(u64, 8),
        _ => go!(u8, 1),
    }
}

/// A safetensors JSON header for tensors laid out back to back in this order, padded with spaces
/// so that the data starts 8-byte aligned; checked by parsing it back.
fn diff_header<'a>(
    items: impl Iterator<Item = (&'a str, Dtype, &'a [usize], usize)>,
) -> Result<String> {
    let bad = |e: &dyn std::fmt::Display| Error::Invalid(format!("building a diff header: {e}"));
    let mut s = format!("{{\"__metadata__\":{{\"format\":\"{FORMAT}\"}}");
    let mut off = 0usize;
    for (name, dtype, shape, n) in items {
        let name = serde_json::to_string(name).map_err(|e| bad(&e))?;
        let shape = serde_json::to_string(shape).map_err(|e| bad(&e))?;
        write!(
            s,
            ",{name}:{{\"dtype\":\"{dtype}\",\"shape\":{shape},\"data_offsets\":[{off},{}]}}",
            off + n
        )
        .map_err(|e| bad(&e))?;
        off += n;
    }
    s.push('}');
    while !s.len().is_multiple_of(8) {
        s.push(' ');
    }
    serde_json::from_str::<Metadata>(&s).map_err(|e| bad(&e))?;
    Ok(s)
}

fn write_header(w: &mut impl Write, header: &str) -> std::io::Result<()> {
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(header.as_bytes())
}

fn create(path: &Path) -> Result<BufWriter<File>> {
    let f = File::create(path).map_err(|e| Error::io(path, e))?;
    Ok(BufWriter::with_capacity(CHUNK, f))
}

/// Flushes and `fsync`s a written file.
fn finish(mut w: BufWriter<File>, path: &Path) -> Result<()> {
    w.flush().map_err(|e| Error::io(path, e))?;
    w.get_ref().sync_all().map_err(|e| Error::io(path, e))
}

fn check_plain_name(src: &Path, name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.contains('\\') || name == "." || name == ".." {
        return Err(Error::format(
            src,
            format!("{name:?} must be a plain file name"),
        ));
    }
    Ok(())
}

/// Copies the tuned checkpoint's non-tensor files (config, tokenizer) into `dst`, in name order.
fn copy_side_files(src: &Path, dst: &Path) -> Result<Vec<FileEntry>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(src).map_err(|e| Error::io(src, e))? {
        let e = e.map_err(|e| Error::io(src, e))?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            tracing::warn!(file = ?e.path(), "skipped: the name is not UTF-8");
            continue;
        };
        // Follows symbolic links (a Hugging Face cache snapshot is all links).
        let meta = std::fs::metadata(e.path()).map_err(|err| Error::io(e.path(), err))?;
        if !meta.is_file() {
            tracing::debug!(file = %name, "skipped: not a file");
            continue;
        }
        let ext = name.rsplit_once('.').map(|(_, x)| x.to_ascii_lowercase());
        if name == INDEX {
            continue;
        }
        if name == MANIFEST {
            tracing::warn!(file = %name, "skipped: the tuned checkpoint holds a diff manifest");
            continue;
        }
        if ext.as_deref().is_some_and(|x| WEIGHT_EXTS.contains(&x)) {
            if ext.as_deref() != Some("safetensors") {
                tracing::warn!(
                    file = %name,
                    "skipped: a weight file would carry the tuned weights whole"
                );
            }
            continue;
        }
        names.push(name);
    }
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let (bytes, sha256) = copy_hashed(&src.join(&name), &dst.join(&name))?;
        out.push(FileEntry {
            name,
            bytes,
            sha256,
        });
    }
    Ok(out)
}

/// Copies `from` to `to`, returning its size and sha256.
fn copy_hashed(from: &Path, to: &Path) -> Result<(u64, String)> {
    let mut r = File::open(from).map_err(|e| Error::io(from, e))?;
    let mut w = create(to)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(from, e)),
        };
        h.update(&buf[..k]);
        w.write_all(&buf[..k]).map_err(|e| Error::io(to, e))?;
        n += k as u64;
    }
    finish(w, to)?;
    Ok((n, hex::encode(h.finalize())))
}

/// Copies a file listed in the manifest, checking its size and sha256.
fn copy_checked(from: &Path, to: &Path, f: &FileEntry, mpath: &Path) -> Result<()> {
    let (bytes, sha) = copy_hashed(from, to)?;
    if bytes != f.bytes || sha != f.sha256 {
        return Err(Error::format(
            from,
            format!(
                "{bytes} bytes with sha256 {sha}, but {} records {} bytes with sha256 {}: \
                 the diff folder is corrupted",
                mpath.display(),
                f.bytes,
                f.sha256
            ),
        ));
    }
    Ok(())
}

/// The output folder, built under a temporary sibling name and renamed into place on
/// [`Staging::commit`]; removed if dropped before.
struct Staging {
    tmp: PathBuf,
    out: PathBuf,
    done: bool,
}

impl Staging {
    fn new(out: &Path) -> Result<Self> {
        if out.exists() {
            if !out.is_dir() {
                return Err(Error::format(out, "exists and is not a folder"));
            }
            let mut entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
            if entries.next().is_some() {
                return Err(Error::format(
                    out,
                    "exists and is not empty (the output must be a new folder)",
                ));
            }
        }
        let name = out
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::format(out, "the output needs a UTF-8 folder name"))?;
        let parent = parent_dir(out);
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Staging {
            tmp,
            out: out.to_path_buf(),
            done: false,
        })
    }

    fn commit(mut self) -> Result<()> {
        if self.out.is_dir() {
            std::fs::remove_dir(&self.out).map_err(|e| Error::io(&self.out, e))?;
        }
        std::fs::rename(&self.tmp, &self.out).map_err(|e| Error::io(&self.out, e))?;
        self.done = true;
        let parent = parent_dir(&self.out);
        File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(&parent, e))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done
            && let Err(e) = std::fs::remove_dir_all(&self.tmp)
        {
            tracing::warn!(
                dir = %self.tmp.display(),
                error = %e,
                "could not remove a partial output"
            );
        }
    }
}

fn parent_dir(p: &Path) -> PathBuf {
    p.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// One tensor's place: its shard, dtype, shape and absolute byte range in the shard's map.
struct Loc {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// One memory-mapped safetensors file.
struct Shard {
    name: String,
    path: PathBuf,
    map: Mmap,
    /// The JSON header, verbatim.
    header: String,
    /// Where the data starts (8 + the header's length).
    data_start: usize,
    /// Tensor names in offset order.
    order: Vec<String>,
}

impl Shard {
    fn open(path: &Path, name: &str) -> Result<(Shard, Metadata)> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is opened read-only; like every mmap-based loader (weights.rs, HF's
        // safetensors) we rely on nobody truncating a checkpoint while it is read.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        #[cfg(unix)]
        {
            let _ = map.advise(memmap2::Advice::Sequential);
        }
        let (n, meta) = SafeTensors::read_metadata(&map)
            .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
        let header = map
            .get(8..8 + n)
            .and_then(|h| std::str::from_utf8(h).ok())
            .ok_or_else(|| Error::format(path, "the header is not UTF-8"))?
            .to_string();
        let order = meta.offset_keys();
        let shard = Shard {
            name: name.to_string(),
            path: path.to_path_buf(),
            map,
            header,
            data_start: 8 + n,
            order,
        };
        Ok((shard, meta))
    }

    fn slice(&self, loc: &Loc, tensor: &str) -> Result<&[u8]> {
        self.map
            .get(loc.start..loc.end)
            .ok_or_else(|| Error::Tensor {
                path: self.path.clone(),
                tensor: tensor.to_string(),
                msg: "its data lies outside the file".into(),
            })
    }

    /// Drops the mapped pages of a tensor that is done with (they stay in the page cache).
    fn release(&self, loc: &Loc) {
        #[cfg(unix)]
        if loc.end > loc.start {
            // SAFETY: a read-only shared file mapping: MADV_DONTNEED only unmaps the pages, and a
            // later read of them faults the same bytes back in from the file.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    loc.start,
                    loc.end - loc.start,
                )
            };
        }
    }
}

/// A Hugging Face checkpoint folder's safetensors, mapped.
struct Checkpoint {
    dir: PathBuf,
    /// `model.safetensors.index.json`, verbatim.
    index: Option<String>,
    /// In file-name order.
    shards: Vec<Shard>,
    tensors: HashMap<String, Loc>,
}

impl Checkpoint {
    fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::format(
                dir,
                "not a folder (expected a Hugging Face checkpoint folder)",
            ));
        }
        let ipath = dir.join(INDEX);
        let (index, files, listed) = if ipath.is_file() {
            let text = std::fs::read_to_string(&ipath).map_err(|e| Error::io(&ipath, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::format(&ipath, e))?;
            let wm = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::format(&ipath, "missing object field `weight_map`"))?;
            let mut listed = BTreeMap::new();
            let mut files = BTreeSet::new();
            for (t, f) in wm {
                let f = f.as_str().ok_or_else(|| {
                    Error::format(&ipath, format!("weight_map.{t} is not a string"))
                })?;
                check_plain_name(&ipath, f)?;
                files.insert(f.to_string());
                listed.insert(t.clone(), f.to_string());
            }
            if files.is_empty() {
                return Err(Error::format(&ipath, "weight_map is empty"));
            }
            (
                Some(text),
                files.into_iter().collect::<Vec<_>>(),
                Some(listed),
            )
        } else if dir.join(SINGLE).is_file() {
            (None, vec![SINGLE.to_string()], None)
        } else {
            return Err(Error::format(
                dir,
                "no model.safetensors or model.safetensors.index.json",
            ));
        };
        let mut shards = Vec::with_capacity(files.len());
        let mut tensors = HashMap::new();
        for (si, name) in files.into_iter().enumerate() {
            let path = dir.join(&name);
            let (shard, meta) = Shard::open(&path, &name)?;
            for t in &shard.order {
                let Some(info) = meta.info(t) else { continue };
                let loc = Loc {
                    shard: si,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: shard.data_start + info.data_offsets.0,
                    end: shard.data_start + info.data_offsets.1,
                };
                if let Some(prev) = tensors.insert(t.clone(), loc) {
                    let other = shards
                        .get(prev.shard)
                        .map_or_else(String::new, |s: &Shard| s.name.clone());
                    return Err(Error::Tensor {
                        path: path.clone(),
                        tensor: t.clone(),
                        msg: format!("is also in {other}"),
                    });
                }
            }
            shards.push(shard);
        }
        if let Some(listed) = listed {
            for (t, f) in &listed {
                match tensors.get(t) {
                    None => {
                        return Err(Error::Tensor {
                            path: dir.join(f),
                            tensor: t.clone(),
                            msg: format!("listed in {INDEX} but not in this file"),
                        });
                    }
                    Some(l) if shards[l.shard].name != *f => {
                        return Err(Error::Tensor {
                            path: ipath.clone(),
                            tensor: t.clone(),
                            msg: format!("listed in {f}, but it is in {}", shards[l.shard].name),
                        });
                    }
                    Some(_) => {}
                }
            }
            for t in tensors.keys().filter(|t| !listed.contains_key(*t)) {
                tracing::warn!(
                    tensor = %t,
                    index = %ipath.display(),
                    "a tensor the index does not list"
                );
            }
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            index,
            shards,
            tensors,
        })
    }

    fn loc(&self, name: &str) -> Result<&Loc> {
        self.tensors.get(name).ok_or_else(|| Error::Tensor {
            path: self.dir.clone(),
            tensor: name.to_string(),
            msg: "missing".into(),
        })
    }

    fn bytes(&self, loc: &Loc, tensor: &str) -> Result<&[u8]> {
        let shard = self
            .shards
            .get(loc.shard)
            .ok_or_else(|| Error::Invalid("weight diff: bad shard index".into()))?;
        shard.slice(loc, tensor)
    }

    fn release(&self, loc: &Loc) {
        if let Some(s) = self.shards.get(loc.shard) {
            s.release(loc);
        }
    }
}

/// The sha256 of `bytes`, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_nist_vectors() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        // One million 'a's, fed in uneven pieces to cross the block buffer.
        let mut h = Sha256::new();
        let a = vec![b'a'; 1_000_000];
        let mut rest = &a[..];
        for step in [1usize, 63, 64, 65, 1000, 7].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let k = (*step).min(rest.len());
            h.update(&rest[..k]);
            rest = &rest[k..];
        }
        assert_eq!(
            hex::encode(h.finalize()),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    #[test]
    fn lanes_wrap_and_invert() {
        let a: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37)).collect();
        let b: Vec<u8> = (0..64u8).map(|i| 255 - i.wrapping_mul(11)).collect();
        for width in [1, 2, 4, 8] {
            let mut d = vec![0; 64];
            lanes(false, width, &a, &b, &mut d);
            let mut r = vec![0; 64];
            lanes(true, width, &b, &d, &mut r);
            assert_eq!(r, a, "width {width}");
        }
        let mut d = [0u8; 2];
        lanes(
            false,
            2,
            &0x0001u16.to_le_bytes(),
            &0x0002u16.to_le_bytes(),
            &mut d,
        );
        assert_eq!(u16::from_le_bytes(d), 0xffff);
    }

    #[test]
    fn diff_header_is_valid_safetensors() {
        let shape = [2usize, 3];
        let h = diff_header(
            [
                ("a\"b", Dtype::U16, &shape[..], 12),
                ("c", Dtype::U8, &[5][..], 5),
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!((h.len() + 8) % 8, 0);
        let mut file = (h.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(h.as_bytes());
        file.extend_from_slice(&[0; 17]);
        let st = SafeTensors::deserialize(&file).unwrap();
        assert_eq!(st.tensor("a\"b").unwrap().dtype(), Dtype::U16);
        assert_eq!(st.tensor("c").unwrap().shape(), &[5]);
    }
}
