//! Hugging Face-layout weights on the host: safetensors load (single file or sharded with
//! `model.safetensors.index.json`; `F32`, `F16`, `BF16` → `f32`), save (the layout
//! `transformers` loads as-is), and seeded initialisation (Koala-style weight diff / recover is `koala_model::weight_diff`).
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::config::LlamaConfig;
use crate::{Error, Result};

/// A dense row-major `f32` tensor on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor filled with `v`.
    pub fn full(shape: Vec<usize>, v: f32) -> Self {
        let n = shape.iter().product();
        HostTensor {
            shape,
            data: vec![v; n],
        }
    }
}

/// Tensors by name, in name order (the order safetensors writes them in anyway).
pub type Tensors = BTreeMap<String, HostTensor>;

/// Name and shape of one model parameter, in the HF `LlamaForCausalLM` naming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl ParamSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Parameters per transformer layer, in the order [`param_specs`] lists them.
pub const PER_LAYER: usize = 9;

/// Every parameter of the model in a fixed order: `embed_tokens`, then per layer
/// `input_layernorm, q, k, v, o, post_attention_layernorm, gate, up, down`, then `norm`, then
/// `lm_head` unless the embeddings are tied.
pub fn param_specs(cfg: &LlamaConfig) -> Vec<ParamSpec> {
    let (c, i, q, kv, v) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.vocab_size,
    );
    let p = |name: String, shape: Vec<usize>| ParamSpec { name, shape };
    let mut out = vec![p("model.embed_tokens.weight".into(), vec![v, c])];
    for l in 0..cfg.num_hidden_layers {
        let pre = format!("model.layers.{l}");
        out.push(p(format!("{pre}.input_layernorm.weight"), vec![c]));
        out.push(p(format!("{pre}.self_attn.q_proj.weight"), vec![q, c]));
        out.push(p(format!("{pre}.self_attn.k_proj.weight"), vec![kv, c]));
        out.push(p(format!("{pre}.self_attn.v_proj.weight"), vec![kv, c]));
        out.push(p(format!("{pre}.self_attn.o_proj.weight"), vec![c, q]));
        out.push(p(format!("{pre}.post_attention_layernorm.weight"), vec![c]));
        out.push(p(format!("{pre}.mlp.gate_proj.weight"), vec![i, c]));
        out.push(p(format!("{pre}.mlp.up_proj.weight"), vec![i, c]));
        out.push(p(format!("{pre}.mlp.down_proj.weight"), vec![c, i]));
    }
    out.push(p("model.norm.weight".into(), vec![c]));
    if !cfg.tie_word_embeddings {
        out.push(p("lm_head.weight".into(), vec![v, c]));
    }
    out
}

/// Seeded initialisation as HF `LlamaPreTrainedModel._init_weights`: every matrix from
/// `N(0, std²)` (HF's `initializer_range`, 0.02 by default), every norm weight 1.
pub fn init_weights(cfg: &LlamaConfig, seed: u64, std: f32) -> Tensors {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Tensors::new();
    for spec in param_specs(cfg) {
        let data = if spec.shape.len() == 1 {
            vec![1.0; spec.numel()]
        } else {
            (0..spec.numel()).map(|_| std * normal(&mut rng)).collect()
        };
        out.insert(
            spec.name,
            HostTensor {
                shape: spec.shape,
                data,
            },
        );
    }
    out
}

/// One standard normal sample (Box–Muller; deterministic for a given RNG state).
fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Reads one `.safetensors` file, converting `F32`/`F16`/`BF16` to `f32`.
pub fn load_file(path: &Path) -> Result<Tensors> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, e))?;
    let mut out = Tensors::new();
    for (name, view) in st.tensors() {
        let data = to_f32(&view).map_err(|m| Error::format(path, format!("tensor {name}: {m}")))?;
        out.insert(
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

fn to_f32(view: &TensorView<'_>) -> std::result::Result<Vec<f32>, String> {
    koala_model::weights::decode_floats(view.dtype(), view.data()).ok_or_else(|| {
        format!(
            "dtype {:?} is not supported (F32, F16, BF16 are)",
            view.dtype()
        )
    })
}

/// Loads the weights of a HF model directory: `model.safetensors.index.json` (sharded) if
/// present, else `model.safetensors`.
pub fn load_dir(dir: &Path) -> Result<Tensors> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(&index, e))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::format(&index, "missing object field `weight_map`"))?;
        let mut files: Vec<&str> = Vec::new();
        for (name, f) in map {
            let f = f.as_str().ok_or_else(|| {
                Error::format(&index, format!("weight_map.{name} is not a string"))
            })?;
            if !files.contains(&f) {
                files.push(f);
            }
        }
        let mut out = Tensors::new();
        for f in files {
            if f.contains('/') || f.contains("..") {
                return Err(Error::format(
                    &index,
                    format!("shard name {f:?} must be a plain file name"),
                ));
            }
            out.append(&mut load_file(&dir.join(f))?);
        }
        for name in map.keys() {
            if !out.contains_key(name) {
                return Err(Error::format(
                    &index,
                    format!("tensor {name} is listed but not in its shard"),
                ));
            }
        }
        return Ok(out);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return load_file(&single);
    }
    Err(Error::format(
        dir,
        "no model.safetensors or model.safetensors.index.json",
    ))
}

fn f32_bytes(data: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 4);
    for x in data {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Serialises tensors as one safetensors buffer (`F32`, metadata `format = pt`, which
/// `transformers` requires).
pub fn serialize(tensors: &Tensors) -> Result<Vec<u8>> {
    let bytes: Vec<(&String, Vec<u8>, &Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| (n, f32_bytes(&t.data), &t.shape))
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (n, b, s) in &bytes {
        let view = TensorView::new(Dtype::F32, s.to_vec(), b)
            .map_err(|e| Error::Invalid(format!("tensor {n}: {e}")))?;
        views.push((n.as_str(), view));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::Invalid(e.to_string()))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, `fsync`,
/// `rename`, then `fsync` of the directory. A crash leaves either the old file or the new one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let io = |e| Error::io(&tmp, e);
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(dir)
}

/// `fsync` of a directory, so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Writes `dir/config.json` (HF's `LlamaConfig` keys), creating `dir`; returns its path.
pub fn save_config(dir: &Path, cfg: &LlamaConfig) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let cfg_path = dir.join("config.json");
    let cfg_text = serde_json::to_string_pretty(&cfg.to_hf_json())
        .map_err(|e| Error::Invalid(e.to_string()))?;
    atomic_write(&cfg_path, cfg_text.as_bytes())?;
    Ok(cfg_path)
}

/// Saves a model directory in the HF layout: `config.json` plus `model.safetensors`, or, when
/// the weights exceed `max_shard_bytes`, `model-0000i-of-0000n.safetensors` shards with a
/// `model.safetensors.index.json`. Returns the files written.
pub fn save_dir(
    dir: &Path,
    cfg: &LlamaConfig,
    tensors: &Tensors,
    max_shard_bytes: usize,
) -> Result<Vec<PathBuf>> {
    let mut written = vec![save_config(dir, cfg)?];
    // Greedy split into shards in name order.
    let mut shards: Vec<Tensors> = vec![Tensors::new()];
    let mut cur = 0usize;
    for (name, t) in tensors {
        let sz = t.data.len() * 4;
        if cur > 0 && cur + sz > max_shard_bytes {
            shards.push(Tensors::new());
            cur = 0;
        }
        cur += sz;
        if let Some(last) = shards.last_mut() {
            last.insert(name.clone(), t.clone());
        }
    }
    if shards.len() == 1 {
        let p = dir.join("model.safetensors");
        atomic_write(&p, &serialize(&shards[0])?)?;
        written.push(p);
        return Ok(written);
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let total: usize = tensors.values().map(|t| t.data.len() * 4).sum();
    for (i, shard) in shards.iter().enumerate() {
        let fname = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
        for name in shard.keys() {
            weight_map.insert(name.clone(), fname.clone().into());
        }
        let p = dir.join(&fname);
        atomic_write(&p, &serialize(shard)?)?;
        written.push(p);
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let p = dir.join("model.safetensors.index.json");
    atomic_write(
        &p,
        serde_json::to_string_pretty(&index)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    written.push(p);
    Ok(written)
}

/// Checks that `tensors` holds exactly the parameters of `cfg` with the right shapes (a tied
/// model may carry an `lm_head.weight` copy, which is ignored).
pub fn check_against(cfg: &LlamaConfig, tensors: &Tensors, src: &Path) -> Result<()> {
    let specs = param_specs(cfg);
    for s in &specs {
        match tensors.get(&s.name) {
            None => return Err(Error::format(src, format!("missing tensor {}", s.name))),
            Some(t) if t.shape != s.shape => {
                return Err(Error::format(
                    src,
                    format!(
                        "tensor {}: shape {:?}, config expects {:?}",
                        s.name, t.shape, s.shape
                    ),
                ));
            }
            _ => {}
        }
    }
    for name in tensors.keys() {
        let known = specs.iter().any(|s| &s.name == name)
            || (cfg.tie_word_embeddings && name == "lm_head.weight")
            || name.ends_with("rotary_emb.inv_freq");
        if !known {
            return Err(Error::format(
                src,
                format!("unexpected tensor {name} for this config"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> LlamaConfig {
        LlamaConfig::from_json_str(
            r#"{"vocab_size": 16, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2,
                "num_attention_heads": 2, "num_key_value_heads": 1}"#,
        )
        .unwrap()
    }

    #[test]
    fn save_load_roundtrip_single_and_sharded() {
        let cfg = tiny();
        let w = init_weights(&cfg, 7, 0.02);
        let d = tempfile::tempdir().unwrap();
        save_dir(d.path(), &cfg, &w, usize::MAX).unwrap();
        assert_eq!(load_dir(d.path()).unwrap(), w);
        let d2 = tempfile::tempdir().unwrap();
        let files = save_dir(d2.path(), &cfg, &w, 600).unwrap();
        assert!(files.len() > 3, "expected several shards, got {files:?}");
        assert!(d2.path().join("model.safetensors.index.json").exists());
        assert_eq!(load_dir(d2.path()).unwrap(), w);
        assert_eq!(
            LlamaConfig::from_file(&d2.path().join("config.json")).unwrap(),
            cfg
        );
    }

    #[test]
    fn init_is_seeded() {
        let cfg = tiny();
        assert_eq!(init_weights(&cfg, 1, 0.02), init_weights(&cfg, 1, 0.02));
        assert_ne!(init_weights(&cfg, 1, 0.02), init_weights(&cfg, 2, 0.02));
        let w = init_weights(&cfg, 1, 0.02);
        let e = &w["model.embed_tokens.weight"].data;
        let var = e.iter().map(|x| x * x).sum::<f32>() / e.len() as f32;
        assert!((var.sqrt() - 0.02).abs() < 0.005, "std {}", var.sqrt());
        assert!(w["model.norm.weight"].data.iter().all(|&x| x == 1.0));
    }

    #[test]
    fn missing_files_and_bad_shapes_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let e = load_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("no model.safetensors"), "{e}");
        let cfg = tiny();
        let mut w = init_weights(&cfg, 1, 0.02);
        w.get_mut("model.norm.weight").unwrap().shape = vec![9];
        let e = check_against(&cfg, &w, Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.norm.weight"), "{e}");
    }
}
