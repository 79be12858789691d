//! Inference-only LLaMA weights, memory-mapped from safetensors.
//!
//! `f32` tensors are used in place: a [`Tensor`] is a view into the file's memory map, so a model
//! costs its file size in page cache and nothing more (no gradient buffers, no second copy).
//! `f16`/`bf16` tensors, and `f32` tensors whose offset in the file is not 4-byte aligned, are
//! converted once into owned `f32` buffers. Both single files (`model.safetensors`) and sharded
//! checkpoints (`model.safetensors.index.json`) load; tensor names are Hugging Face's.
//!
//! With [`WeightDtype::Bf16`] the projection matrices and the output head are kept as `bf16`
//! instead (mapped in place from a `bf16` file, else rounded once to nearest even), which halves
//! the bytes a decoding step reads; embeddings and norm weights stay `f32`.
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::bf16;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::config::LlamaConfig;
use crate::lora::Adapter;
use crate::{Error, Result};

enum Data {
    /// `len` floats at byte `offset` of a shared memory map.
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
    Owned(Vec<f32>),
    /// `len` bf16 values at byte `offset` of a shared memory map.
    Bf16Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
    Bf16Owned(Vec<bf16>),
}

/// How projection weights are kept in memory (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightDtype {
    /// `f32`, as Hugging Face computes (the default: greedy tokens equal transformers').
    #[default]
    F32,
    /// `bf16` projections with `f32` accumulation: half the bytes per decoded token.
    Bf16,
}

/// A tensor's values in their stored type.
pub enum View<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
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

    /// The values in their stored type.
    pub fn view(&self) -> View<'_> {
        match &self.data {
            Data::Owned(v) => View::F32(v),
            Data::Mapped { map, offset, len } => {
                let bytes = &map[*offset..*offset + *len * 4];
                // The offset was checked to be 4-byte aligned when the view was made, and the
                // map outlives `self`.
                View::F32(bytemuck_cast(bytes))
            }
            Data::Bf16Owned(v) => View::Bf16(v),
            Data::Bf16Mapped { map, offset, len } => {
                let bytes = &map[*offset..*offset + *len * 2];
                // SAFETY: the offset was checked to be 2-byte aligned when the view was made;
                // bf16 is a plain 16-bit value, and every bit pattern is valid.
                View::Bf16(unsafe {
                    std::slice::from_raw_parts(bytes.as_ptr().cast::<bf16>(), *len)
                })
            }
        }
    }

    /// The values of an `f32` tensor. Embeddings and norm weights are always `f32`.
    ///
    /// # Panics
    /// On a `bf16` projection weight (loaded with [`WeightDtype::Bf16`]): use [`Tensor::view`]
    /// or [`Tensor::to_f32`].
    pub fn as_slice(&self) -> &[f32] {
        match self.view() {
            View::F32(v) => v,
            View::Bf16(_) => panic!("as_slice on a bf16 tensor: use view() or to_f32()"),
        }
    }

    /// The values as `f32`, widened when stored as `bf16` (exactly).
    pub fn to_f32(&self) -> Cow<'_, [f32]> {
        match self.view() {
            View::F32(v) => Cow::Borrowed(v),
            View::Bf16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
        }
    }

    /// Bytes the values take.
    pub fn bytes(&self) -> usize {
        match self.view() {
            View::F32(v) => v.len() * 4,
            View::Bf16(v) => v.len() * 2,
        }
    }

    /// Whether the values are read straight from the file's memory map.
    pub fn is_mapped(&self) -> bool {
        matches!(self.data, Data::Mapped { .. } | Data::Bf16Mapped { .. })
    }

    /// This tensor as `bf16`: `bf16` stays as is, `f32` is rounded to nearest even.
    fn into_bf16(self) -> Tensor {
        if matches!(self.view(), View::Bf16(_)) {
            return self;
        }
        let data = Data::Bf16Owned(self.as_slice().iter().map(|x| bf16::from_f32(*x)).collect());
        Tensor {
            shape: self.shape,
            data,
        }
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

/// Decodes little-endian `F32`, `F16` or `BF16` safetensors bytes to `f32` (exact for all three);
/// `None` for any other dtype. Shared by the loader, LoRA adapters and the trainer's reader.
pub fn decode_floats(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
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

impl Layer {
    /// Every tensor of the layer: the two norms and the seven projections.
    pub fn tensors(&self) -> [&Tensor; 9] {
        [
            &self.attn_norm,
            &self.q,
            &self.k,
            &self.v,
            &self.o,
            &self.mlp_norm,
            &self.gate,
            &self.up,
            &self.down,
        ]
    }
}

/// A whole LLaMA, ready for inference.
pub struct Weights {
    pub cfg: LlamaConfig,
    /// `[vocab, hidden]`.
    pub embed: Tensor,
    pub layers: Vec<Layer>,
    /// The final RMSNorm weight, `[hidden]`.
    pub norm: Tensor,
    /// `[vocab, hidden]`; `None` when the embeddings are tied (except with
    /// [`WeightDtype::Bf16`], which keeps a `bf16` copy of them here).
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
        Self::load_as(dir, WeightDtype::F32)
    }

    /// Loads like [`Weights::load`], keeping the projections and the output head as `dtype`.
    pub fn load_as(dir: &Path, dtype: WeightDtype) -> Result<Self> {
        Self::load_with_adapter(dir, dtype, None)
    }

    /// Loads like [`Weights::load_as`] with a LoRA adapter merged into the weights it adapts
    /// (`W + scale·B·A` in f32, as peft's `merge_and_unload`, then stored as `dtype`). An adapter
    /// naming a weight this model does not have is an error.
    ///
    /// ```no_run
    /// use koala_model::{Weights, WeightDtype, lora::Adapter};
    /// use std::path::Path;
    /// let ad = Adapter::load(Path::new("out/lora/final")).unwrap();
    /// let w = Weights::load_with_adapter(Path::new("base"), WeightDtype::F32, Some(&ad)).unwrap();
    /// ```
    pub fn load_with_adapter(
        dir: &Path,
        dtype: WeightDtype,
        adapter: Option<&Adapter>,
    ) -> Result<Self> {
        let cfg = LlamaConfig::from_file(&dir.join("config.json"))?;
        let mut map = TensorMap::open(dir)?;
        map.adapter = adapter;
        if let Some(ad) = adapter
            && let Some(t) = ad
                .targets()
                .into_iter()
                .find(|t| !map.entries.contains_key(*t))
        {
            return Err(Error::Invalid(format!(
                "the adapter adapts {t}, which the model in {} does not have",
                dir.display()
            )));
        }
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
                q: map.take_as(&format!("{p}.self_attn.q_proj.weight"), &[q, c], dtype)?,
                k: map.take_as(&format!("{p}.self_attn.k_proj.weight"), &[kv, c], dtype)?,
                v: map.take_as(&format!("{p}.self_attn.v_proj.weight"), &[kv, c], dtype)?,
                o: map.take_as(&format!("{p}.self_attn.o_proj.weight"), &[c, q], dtype)?,
                mlp_norm: map.take(&format!("{p}.post_attention_layernorm.weight"), &[c])?,
                gate: map.take_as(&format!("{p}.mlp.gate_proj.weight"), &[im, c], dtype)?,
                up: map.take_as(&format!("{p}.mlp.up_proj.weight"), &[im, c], dtype)?,
                down: map.take_as(&format!("{p}.mlp.down_proj.weight"), &[c, im], dtype)?,
            });
        }
        let norm = map.take("model.norm.weight", &[c])?;
        let lm_head = if !cfg.tie_word_embeddings {
            Some(map.take_as("lm_head.weight", &[v, c], dtype)?)
        } else if dtype == WeightDtype::Bf16 {
            // The head is read whole every step: a bf16 copy of the tied embeddings.
            Some(Tensor {
                shape: embed.shape.clone(),
                data: Data::Bf16Owned(
                    embed
                        .as_slice()
                        .iter()
                        .map(|x| bf16::from_f32(*x))
                        .collect(),
                ),
            })
        } else {
            None
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
            .flat_map(Layer::tensors)
            .map(Tensor::numel)
            .sum();
        self.embed.numel()
            + per_layer
            + self.norm.numel()
            + if self.cfg.tie_word_embeddings {
                0
            } else {
                self.lm_head.as_ref().map_or(0, Tensor::numel)
            }
    }

    /// Bytes of weights read to decode one token: every projection, the output head and the
    /// norm weights (the embedding table is read one row at a time), in their stored types.
    pub fn bytes_per_token(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .flat_map(Layer::tensors)
            .map(Tensor::bytes)
            .sum();
        layers + self.norm.bytes() + self.head().bytes()
    }
}

/// Where each tensor of a checkpoint lives: its file's map and the header entry.
struct TensorMap<'a> {
    /// name → (file index, dtype, shape, byte offset in the map, byte length).
    entries: HashMap<String, (usize, Dtype, Vec<usize>, usize, usize)>,
    maps: Vec<(PathBuf, Arc<Mmap>)>,
    /// Merged into the weights it adapts as they are taken.
    adapter: Option<&'a Adapter>,
}

impl TensorMap<'_> {
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
            // Advice only (a kernel without it ignores it): read the file ahead, and map it with
            // huge pages where the page cache holds large folios, so that a decoding step's
            // stream over the weights takes fewer TLB misses (llama.cpp advises the same).
            #[cfg(unix)]
            {
                let _ = map.advise(memmap2::Advice::WillNeed);
                let _ = map.advise(memmap2::Advice::HugePage);
            }
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
        Ok(TensorMap {
            entries,
            maps,
            adapter: None,
        })
    }

    /// Takes tensor `name` as `dtype`: a `bf16` tensor in the file is mapped in place when
    /// `bf16` is asked for.
    fn take_as(&mut self, name: &str, shape: &[usize], dtype: WeightDtype) -> Result<Tensor> {
        if let Some(ad) = self.adapter
            && ad.adapts(name)
        {
            let t = self.take(name, shape)?;
            let mut w = t.to_f32().into_owned();
            ad.merge_into(name, &mut w, shape[0], shape[1])?;
            let t = Tensor::owned(shape.to_vec(), w);
            return Ok(match dtype {
                WeightDtype::F32 => t,
                WeightDtype::Bf16 => t.into_bf16(),
            });
        }
        if dtype == WeightDtype::Bf16
            && let Some((fi, Dtype::BF16, got, off, nbytes)) = self.entries.get(name).cloned()
            && got == shape
            && (self.maps[fi].1.as_ptr() as usize + off).is_multiple_of(2)
        {
            self.entries.remove(name);
            return Ok(Tensor {
                shape: got,
                data: Data::Bf16Mapped {
                    map: self.maps[fi].1.clone(),
                    offset: off,
                    len: nbytes / 2,
                },
            });
        }
        let t = self.take(name, shape)?;
        Ok(match dtype {
            WeightDtype::F32 => t,
            WeightDtype::Bf16 => t.into_bf16(),
        })
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
            other => Data::Owned(decode_floats(other, bytes).ok_or_else(|| {
                Error::format(
                    path,
                    format!("tensor {name}: dtype {other:?} is not supported (F32, F16, BF16 are)"),
                )
            })?),
        };
        Ok(Tensor { shape: got, data })
    }
}
