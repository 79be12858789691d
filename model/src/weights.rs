//! Inference-only LLaMA weights, memory-mapped from safetensors.
//!
//! `f32` tensors are used in place: a [`Tensor`] is a view into the file's memory map, so a model
//! costs its file size in page cache and nothing more (no gradient buffers, no second copy).
//! `f16`/`bf16` tensors, and `f32` tensors whose offset in the file is not 4-byte aligned, are
//! converted once into owned `f32` buffers. Both single files (`model.safetensors`) and sharded
//! checkpoints (`model.safetensors.index.json`) load; tensor names are Hugging Face's.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::config::LlamaConfig;
use crate::{Error, Result};

enum Data {
    /// `len` floats at byte `offset` of a shared memory map.
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
    Owned(Vec<f32>),
}

/// One tensor, row-major, as `f32`.
pub struct Tensor {
    /// Dimensions, outermost first (`[out, in]` for a projection, as HF stores it).
    pub shape: Vec<usize>,
    data: Data,
}

impl Tensor {
    /// An owned tensor (tests, and weights that had to be converted).
    pub fn owned(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Tensor {
            shape,
            data: Data::Owned(data),
        }
    }

    /// The values.
    pub fn as_slice(&self) -> &[f32] {
        match &self.data {
            Data::Owned(v) => v,
            Data::Mapped { map, offset, len } => {
                let bytes = &map[*offset..*offset + *len * 4];
                // The offset was checked to be 4-byte aligned when the view was made, and the
                // map outlives `self`.
                bytemuck_cast(bytes)
            }
        }
    }

    /// Whether the values are read straight from the file's memory map.
    pub fn is_mapped(&self) -> bool {
        matches!(self.data, Data::Mapped { .. })
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Reinterprets aligned little-endian bytes as `f32`s (x86-64 and aarch64 are little-endian).
fn bytemuck_cast(bytes: &[u8]) -> &[f32] {
    debug_assert_eq!(bytes.as_ptr() as usize % 4, 0);
    debug_assert_eq!(bytes.len() % 4, 0);
    // SAFETY: alignment and length are checked where `Data::Mapped` is built (`view_or_copy`);
    // every bit pattern is a valid f32.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), bytes.len() / 4) }
}

/// The weights of one decoder layer.
pub struct Layer {
    pub attn_norm: Tensor,
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub o: Tensor,
    pub mlp_norm: Tensor,
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
}

/// A whole LLaMA, ready for inference.
pub struct Weights {
    pub cfg: LlamaConfig,
    /// `[vocab, hidden]`.
    pub embed: Tensor,
    pub layers: Vec<Layer>,
    /// The final RMSNorm weight, `[hidden]`.
    pub norm: Tensor,
    /// `[vocab, hidden]`; `None` when the embeddings are tied.
    pub lm_head: Option<Tensor>,
    /// The directory it was loaded from.
    pub dir: PathBuf,
}

impl Weights {
    /// Loads `dir/config.json` and its safetensors (single or sharded).
    ///
    /// ```no_run
    /// let w = koala_model::Weights::load(std::path::Path::new("out/demo/model")).unwrap();
    /// println!("{} layers, {} parameters", w.layers.len(), w.n_params());
    /// ```
    pub fn load(dir: &Path) -> Result<Self> {
        let cfg = LlamaConfig::from_file(&dir.join("config.json"))?;
        let mut map = TensorMap::open(dir)?;
        let (c, q, kv, im, v) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
            cfg.vocab_size,
        );
        let embed = map.take("model.embed_tokens.weight", &[v, c])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            layers.push(Layer {
                attn_norm: map.take(&format!("{p}.input_layernorm.weight"), &[c])?,
                q: map.take(&format!("{p}.self_attn.q_proj.weight"), &[q, c])?,
                k: map.take(&format!("{p}.self_attn.k_proj.weight"), &[kv, c])?,
                v: map.take(&format!("{p}.self_attn.v_proj.weight"), &[kv, c])?,
                o: map.take(&format!("{p}.self_attn.o_proj.weight"), &[c, q])?,
                mlp_norm: map.take(&format!("{p}.post_attention_layernorm.weight"), &[c])?,
                gate: map.take(&format!("{p}.mlp.gate_proj.weight"), &[im, c])?,
                up: map.take(&format!("{p}.mlp.up_proj.weight"), &[im, c])?,
                down: map.take(&format!("{p}.mlp.down_proj.weight"), &[c, im])?,
            });
        }
        let norm = map.take("model.norm.weight", &[c])?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(map.take("lm_head.weight", &[v, c])?)
        };
        Ok(Weights {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            dir: dir.to_path_buf(),
        })
    }

    /// The output projection (`lm_head`, or the embeddings when tied).
    pub fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Total parameter count.
    pub fn n_params(&self) -> usize {
        let per_layer: usize = self
            .layers
            .iter()
            .map(|l| {
                [
                    &l.attn_norm,
                    &l.q,
                    &l.k,
                    &l.v,
                    &l.o,
                    &l.mlp_norm,
                    &l.gate,
                    &l.up,
                    &l.down,
                ]
                .iter()
                .map(|t| t.numel())
                .sum::<usize>()
            })
            .sum();
        self.embed.numel()
            + per_layer
            + self.norm.numel()
            + self.lm_head.as_ref().map_or(0, Tensor::numel)
    }

    /// Bytes of weights read to decode one token: every projection and the output head (the
    /// embedding table is read one row at a time).
    pub fn bytes_per_token(&self) -> usize {
        let unread_embed = if self.lm_head.is_some() {
            self.embed.numel()
        } else {
            0
        };
        (self.n_params() - unread_embed) * 4
    }
}

/// Where each tensor of a checkpoint lives: its file's map and the header entry.
struct TensorMap {
    /// name → (file index, dtype, shape, byte offset in the map, byte length).
    entries: HashMap<String, (usize, Dtype, Vec<usize>, usize, usize)>,
    maps: Vec<(PathBuf, Arc<Mmap>)>,
}

impl TensorMap {
    fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::format(&index, e))?;
            let wm = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::format(&index, "missing object field `weight_map`"))?;
            let mut names: Vec<&str> = Vec::new();
            for (t, f) in wm {
                let f = f.as_str().ok_or_else(|| {
                    Error::format(&index, format!("weight_map.{t} is not a string"))
                })?;
                if f.contains('/') || f.contains("..") {
                    return Err(Error::format(
                        &index,
                        format!("weight_map.{t}: shard name {f:?} must be a plain file name"),
                    ));
                }
                if !names.contains(&f) {
                    names.push(f);
                }
            }
            names.into_iter().map(|f| dir.join(f)).collect()
        } else {
            let single = dir.join("model.safetensors");
            if !single.exists() {
                return Err(Error::format(
                    dir,
                    "no model.safetensors or model.safetensors.index.json",
                ));
            }
            vec![single]
        };
        let mut entries = HashMap::new();
        let mut maps = Vec::new();
        for (fi, path) in files.into_iter().enumerate() {
            let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: the file is opened read-only; like every mmap-based loader (HF's
            // safetensors included) we rely on nobody truncating a checkpoint while it is served.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let map = Arc::new(map);
            let st = SafeTensors::deserialize(&map).map_err(|e| Error::format(&path, e))?;
            let base = map.as_ptr() as usize;
            for (name, view) in st.tensors() {
                let off = view.data().as_ptr() as usize - base;
                entries.insert(
                    name,
                    (
                        fi,
                        view.dtype(),
                        view.shape().to_vec(),
                        off,
                        view.data().len(),
                    ),
                );
            }
            maps.push((path, map));
        }
        Ok(TensorMap { entries, maps })
    }

    /// Takes tensor `name`, checking its shape.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let Some((fi, dtype, got, off, nbytes)) = self.entries.remove(name) else {
            let path = self.maps.first().map(|m| m.0.clone()).unwrap_or_default();
            return Err(Error::format(path, format!("missing tensor {name}")));
        };
        let (path, map) = &self.maps[fi];
        if got != shape {
            return Err(Error::format(
                path,
                format!("tensor {name} has shape {got:?}, config.json implies {shape:?}"),
            ));
        }
        let bytes = &map[off..off + nbytes];
        let data = match dtype {
            Dtype::F32 if (map.as_ptr() as usize + off).is_multiple_of(4) => Data::Mapped {
                map: map.clone(),
                offset: off,
                len: nbytes / 4,
            },
            Dtype::F32 => Data::Owned(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Dtype::F16 => Data::Owned(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            Dtype::BF16 => Data::Owned(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            other => {
                return Err(Error::format(
                    path,
                    format!("tensor {name}: dtype {other:?} is not supported (F32, F16, BF16 are)"),
                ));
            }
        };
        Ok(Tensor { shape: got, data })
    }
}
