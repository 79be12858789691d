//! LoRA adapters in PEFT's format, merged into the base weights: `W' = W + s · B·A` with
//! `s = lora_alpha / r` (`lora_alpha / √r` with `use_rslora`), as `peft`'s `merge_and_unload`.
//!
//! An adapter directory holds `adapter_config.json` and `adapter_model.safetensors`, whose
//! tensors are named `base_model.model.<module>.lora_A.weight` (`[r, in]`) and
//! `…lora_B.weight` (`[out, r]`) for each adapted linear `<module>` (for example
//! `model.layers.0.self_attn.q_proj`).
use std::collections::HashMap;
use std::path::Path;

use safetensors::SafeTensors;
use serde_json::Value as Json;

use crate::weights::decode_floats;
use crate::{Error, Result};

/// One adapted linear layer.
struct Pair {
    /// `[r, in]`.
    a: Vec<f32>,
    /// `[out, r]`.
    b: Vec<f32>,
    r: usize,
    a_in: usize,
    b_out: usize,
}

/// A loaded adapter.
pub struct Adapter {
    /// Keyed by the base weight's name (`model.layers.0.self_attn.q_proj.weight`).
    pairs: HashMap<String, Pair>,
    /// `lora_alpha / r` (or `/ √r`).
    pub scale: f32,
    pub r: usize,
    pub alpha: f32,
}

impl Adapter {
    /// Loads `dir/adapter_config.json` and `dir/adapter_model.safetensors`.
    pub fn load(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let cfg: Json = serde_json::from_str(&text).map_err(|e| Error::format(&cfg_path, e))?;
        let num = |k: &str| cfg.get(k).and_then(Json::as_f64);
        let r = num("r")
            .filter(|r| *r >= 1.0 && r.fract() == 0.0)
            .ok_or_else(|| Error::format(&cfg_path, "`r` must be a positive integer"))?
            as usize;
        let alpha = num("lora_alpha")
            .ok_or_else(|| Error::format(&cfg_path, "missing number field `lora_alpha`"))?
            as f32;
        if cfg.get("fan_in_fan_out").and_then(Json::as_bool) == Some(true) {
            return Err(Error::format(
                &cfg_path,
                "fan_in_fan_out adapters (GPT-2 Conv1D layers) do not apply to LLaMA",
            ));
        }
        if cfg.get("lora_bias").and_then(Json::as_bool) == Some(true) {
            return Err(Error::format(
                &cfg_path,
                "adapters with a trained bias (lora_bias) are not supported",
            ));
        }
        if cfg.get("use_dora").and_then(Json::as_bool) == Some(true) {
            return Err(Error::format(
                &cfg_path,
                "DoRA adapters (use_dora) are not supported",
            ));
        }
        for k in ["rank_pattern", "alpha_pattern"] {
            if cfg
                .get(k)
                .and_then(Json::as_object)
                .is_some_and(|m| !m.is_empty())
            {
                return Err(Error::format(
                    &cfg_path,
                    format!("per-module `{k}` is not supported: one r and lora_alpha for all"),
                ));
            }
        }
        let rslora = cfg.get("use_rslora").and_then(Json::as_bool) == Some(true);
        let scale = if rslora {
            alpha / (r as f32).sqrt()
        } else {
            alpha / r as f32
        };
        let st_path = dir.join("adapter_model.safetensors");
        let bytes = std::fs::read(&st_path).map_err(|e| Error::io(&st_path, e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::format(&st_path, e))?;
        // module → [lora_A, lora_B], each (shape, values).
        type Half = Option<(Vec<usize>, Vec<f32>)>;
        let mut halves: HashMap<String, [Half; 2]> = HashMap::new();
        for (name, view) in st.tensors() {
            let module = name.strip_prefix("base_model.model.").unwrap_or(&name);
            // Older peft kept the adapter name in saved keys (`….lora_A.default.weight`).
            let (module, which) = if let Some(m) = module
                .strip_suffix(".lora_A.weight")
                .or_else(|| module.strip_suffix(".lora_A.default.weight"))
            {
                (m, 0)
            } else if let Some(m) = module
                .strip_suffix(".lora_B.weight")
                .or_else(|| module.strip_suffix(".lora_B.default.weight"))
            {
                (m, 1)
            } else {
                return Err(Error::format(
                    &st_path,
                    format!(
                        "tensor {name}: only LoRA lora_A/lora_B weights merge (modules_to_save \
                         and embedding adapters are not supported)"
                    ),
                ));
            };
            let shape = view.shape().to_vec();
            if shape.len() != 2 {
                return Err(Error::format(
                    &st_path,
                    format!("tensor {name}: shape {shape:?} is not a matrix"),
                ));
            }
            let values = decode_floats(view.dtype(), view.data()).ok_or_else(|| {
                Error::format(
                    &st_path,
                    format!(
                        "tensor {name}: dtype {:?} is not supported (F32, F16, BF16 are)",
                        view.dtype()
                    ),
                )
            })?;
            halves.entry(module.to_string()).or_default()[which] = Some((shape, values));
        }
        let mut pairs = HashMap::new();
        for (module, [a, b]) in halves {
            let (Some((sa, a)), Some((sb, b))) = (a, b) else {
                return Err(Error::format(
                    &st_path,
                    format!("{module}: has only one of lora_A and lora_B"),
                ));
            };
            if sa[0] != sb[1] {
                return Err(Error::format(
                    &st_path,
                    format!("{module}: lora_A is {sa:?} and lora_B {sb:?}: their ranks differ"),
                ));
            }
            pairs.insert(
                format!("{module}.weight"),
                Pair {
                    a,
                    b,
                    r: sa[0],
                    a_in: sa[1],
                    b_out: sb[0],
                },
            );
        }
        if pairs.is_empty() {
            return Err(Error::format(&st_path, "the adapter has no LoRA weights"));
        }
        Ok(Adapter {
            pairs,
            scale,
            r,
            alpha,
        })
    }

    /// The adapted base weights' names.
    pub fn targets(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.pairs.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Adds `scale · B·A` to `w` (`[out, in]`, row-major) when `name` is adapted; returns whether
    /// it was. A shape mismatch is an error naming the weight.
    pub fn merge_into(&self, name: &str, w: &mut [f32], out: usize, inp: usize) -> Result<bool> {
        let Some(p) = self.pairs.get(name) else {
            return Ok(false);
        };
        if p.b_out != out || p.a_in != inp {
            return Err(Error::Invalid(format!(
                "adapter weight for {name} is [{}, {}] after merging, the base weight [{out}, {inp}]",
                p.b_out, p.a_in
            )));
        }
        // As peft: `W + (B·A)·scale`, the product summed over the rank first, then scaled.
        let mut delta = vec![0.0f32; inp];
        for (o, row) in w.chunks_exact_mut(inp).enumerate() {
            delta.fill(0.0);
            for j in 0..p.r {
                let b = p.b[o * p.r + j];
                for (d, a) in delta.iter_mut().zip(&p.a[j * inp..(j + 1) * inp]) {
                    *d += b * a;
                }
            }
            for (x, d) in row.iter_mut().zip(&delta) {
                *x += d * self.scale;
            }
        }
        Ok(true)
    }

    /// Whether the base weight `name` (`model.layers.0.self_attn.q_proj.weight`) is adapted.
    pub fn adapts(&self, name: &str) -> bool {
        self.pairs.contains_key(name)
    }
}

/// The files a merged model directory copies unchanged from its base (besides the weights).
const SIDE_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "model.safetensors.index.json",
];

/// Writes `out`: the HF model in `base` with `adapter` merged, as peft's `merge_and_unload` +
/// `save_pretrained` would: every adapted weight becomes `W + (B·A)·scale` (computed in f32,
/// rounded once to the weight's own dtype: F32, F16 or BF16), every other tensor and file is
/// copied unchanged, and the shard layout (single file, or shards with their index) is kept.
///
/// It streams: each safetensors file keeps its header (dtypes and shapes do not change, so
/// neither do the offsets), and tensors are read from the memory map and written one at a
/// time, so a 13B checkpoint needs memory for its largest tensor, not for the model. Returns
/// how many weights were merged.
///
/// ```no_run
/// use koala_model::lora::{Adapter, merge_dir};
/// use std::path::Path;
/// let ad = Adapter::load(Path::new("runs/lora/final")).unwrap();
/// let n = merge_dir(Path::new("llama-7b"), &ad, Path::new("koala-7b-merged")).unwrap();
/// println!("merged {n} weights");
/// ```
pub fn merge_dir(base: &Path, adapter: &Adapter, out: &Path) -> Result<usize> {
    use std::io::Write;
    let index = base.join("model.safetensors.index.json");
    let files: Vec<String> = if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: Json = serde_json::from_str(&text).map_err(|e| Error::format(&index, e))?;
        let map = v
            .get("weight_map")
            .and_then(Json::as_object)
            .ok_or_else(|| Error::format(&index, "missing object `weight_map`"))?;
        let mut f: Vec<String> = map
            .values()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect();
        f.sort();
        f.dedup();
        f
    } else {
        vec!["model.safetensors".to_string()]
    };
    if out.exists() && std::fs::canonicalize(out).ok() == std::fs::canonicalize(base).ok() {
        return Err(Error::Invalid(format!(
            "--out {} is the base model's own directory",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut merged = Vec::new();
    for name in &files {
        let src = base.join(name);
        let file = std::fs::File::open(&src).map_err(|e| Error::io(&src, e))?;
        // SAFETY: read-only map of a file we do not modify; a concurrent writer would be the
        // caller's bug (the same rule as the model loader).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&src, e))?;
        let (header_len, meta) =
            SafeTensors::read_metadata(&map).map_err(|e| Error::format(&src, e))?;
        let data_start = 8 + header_len;
        let mut tensors: Vec<(String, &safetensors::tensor::TensorInfo)> =
            meta.tensors().into_iter().collect();
        tensors.sort_by_key(|(_, info)| info.data_offsets.0);
        let dst = out.join(name);
        let tmp = out.join(format!(".{name}.tmp"));
        let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 22, f);
        w.write_all(&map[..data_start])
            .map_err(|e| Error::io(&tmp, e))?;
        let mut pos = 0usize;
        for (tname, info) in tensors {
            let (a, b) = info.data_offsets;
            if a != pos {
                // Padding between tensors is kept as it is.
                w.write_all(&map[data_start + pos..data_start + a])
                    .map_err(|e| Error::io(&tmp, e))?;
            }
            let bytes = &map[data_start + a..data_start + b];
            if adapter.adapts(&tname) {
                let [o, i] = info.shape[..] else {
                    return Err(Error::format(
                        &src,
                        format!("tensor {tname}: shape {:?} is not a matrix", info.shape),
                    ));
                };
                let mut x = decode_floats(info.dtype, bytes).ok_or_else(|| {
                    Error::format(
                        &src,
                        format!(
                            "tensor {tname}: dtype {:?} is not supported (F32, F16, BF16 are)",
                            info.dtype
                        ),
                    )
                })?;
                adapter.merge_into(&tname, &mut x, o, i)?;
                w.write_all(&encode_floats(info.dtype, &x))
                    .map_err(|e| Error::io(&tmp, e))?;
                merged.push(tname);
            } else {
                w.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
            }
            pos = b;
        }
        if data_start + pos != map.len() {
            w.write_all(&map[data_start + pos..])
                .map_err(|e| Error::io(&tmp, e))?;
        }
        let f = w
            .into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
        tracing::info!(file = %dst.display(), "merged");
    }
    if let Some(t) = adapter
        .targets()
        .into_iter()
        .find(|t| !merged.iter().any(|m| m == t))
    {
        return Err(Error::Invalid(format!(
            "the adapter adapts {t}, which the model in {} does not have",
            base.display()
        )));
    }
    for side in SIDE_FILES {
        let p = base.join(side);
        if p.is_file() {
            std::fs::copy(&p, out.join(side)).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(merged.len())
}

/// `values` in `dtype`'s little-endian bytes (round to nearest even for F16 / BF16); only the
/// dtypes [`decode_floats`] reads reach here.
fn encode_floats(dtype: safetensors::Dtype, values: &[f32]) -> Vec<u8> {
    use safetensors::Dtype;
    match dtype {
        Dtype::F16 => values
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
        _ => values.iter().flat_map(|&x| x.to_le_bytes()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::Dtype;

    fn write_adapter(dir: &Path, cfg: &str, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
        std::fs::write(dir.join("adapter_config.json"), cfg).unwrap();
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .zip(&bytes)
            .map(|((n, s, _), b)| {
                (
                    n.to_string(),
                    safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join("adapter_model.safetensors"))
            .unwrap();
    }

    #[test]
    fn merge_adds_scaled_b_times_a() {
        let dir = tempfile::tempdir().unwrap();
        let m = "base_model.model.model.layers.0.self_attn.q_proj";
        write_adapter(
            dir.path(),
            r#"{"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}"#,
            &[
                (
                    &format!("{m}.lora_A.weight"),
                    vec![2, 3],
                    vec![1., 2., 3., 4., 5., 6.],
                ),
                (
                    &format!("{m}.lora_B.weight"),
                    vec![2, 2],
                    vec![1., 0., 0., -1.],
                ),
            ],
        );
        let ad = Adapter::load(dir.path()).unwrap();
        assert_eq!(ad.scale, 2.0);
        assert_eq!(ad.targets(), vec!["model.layers.0.self_attn.q_proj.weight"]);
        let mut w = vec![0f32; 6];
        assert!(
            ad.merge_into("model.layers.0.self_attn.q_proj.weight", &mut w, 2, 3)
                .unwrap()
        );
        // B·A = [[1,2,3], [-4,-5,-6]], times 2.
        assert_eq!(w, vec![2., 4., 6., -8., -10., -12.]);
        assert!(
            !ad.merge_into("model.layers.0.self_attn.k_proj.weight", &mut w, 2, 3)
                .unwrap()
        );
        let err = ad
            .merge_into("model.layers.0.self_attn.q_proj.weight", &mut w, 3, 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("q_proj"), "{err}");
    }

    #[test]
    fn half_an_adapter_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_adapter(
            dir.path(),
            r#"{"r": 1, "lora_alpha": 1}"#,
            &[("base_model.model.x.lora_A.weight", vec![1, 2], vec![1., 2.])],
        );
        let err = Adapter::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("only one of lora_A and lora_B"), "{err}");
    }
}
