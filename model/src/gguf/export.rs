//! A HF LLaMA directory → one GGUF file (see the module docs of [`crate::gguf`]).
use std::borrow::Cow;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::vocab;
use super::writer::{Header, TensorInfo, TensorType, Value, encode};
use crate::lora::Adapter;
use crate::weights::{Tensor, Weights};
use crate::{Error, Result};

/// What to write.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// The type of the matrices. Norm weights stay `f32`, as llama.cpp's converter keeps them;
    /// with `Q8_0`, a matrix whose rows are not a multiple of 32 is written `f16`.
    pub dtype: TensorType,
    /// A PEFT LoRA adapter directory to merge into the weights.
    pub adapter: Option<PathBuf>,
    /// `general.name`; defaults to the model directory's name.
    pub name: Option<String>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            dtype: TensorType::F32,
            adapter: None,
            name: None,
        }
    }
}

/// What was written.
#[derive(Clone, Debug)]
pub struct ExportReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub tensors: usize,
    /// `llama` (SentencePiece) or `gpt2` (byte-level BPE).
    pub tokenizer: &'static str,
    /// The tokenizer file it came from.
    pub tokenizer_source: String,
    pub vocab: usize,
    /// Base weights that had a LoRA update merged in.
    pub merged: Vec<String>,
    /// Matrices written as `f16` because `q8_0` needs rows that are a multiple of 32.
    pub fell_back_to_f16: Vec<String>,
}

/// Permutes the rows of a Q or K projection (`[heads · head_dim, in]`) from Hugging Face's
/// rotate-half RoPE layout to the interleaved one llama.cpp applies: within each head, the rows
/// `i` and `i + head_dim/2` become neighbours `2i` and `2i + 1` (the converter's `permute`).
pub fn permute_rope_rows(w: &[f32], heads: usize, inp: usize) -> Vec<f32> {
    let rows = w.len() / inp;
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let new = h * hd + 2 * i + j;
                let old = h * hd + j * half + i;
                out[new * inp..(new + 1) * inp].copy_from_slice(&w[old * inp..(old + 1) * inp]);
            }
        }
    }
    out
}

/// `general.file_type` (llama.cpp's `llama_ftype`) of a file whose matrices are `ty`.
fn file_type(ty: TensorType) -> u32 {
    match ty {
        TensorType::F32 => 0,
        TensorType::F16 => 1,
        TensorType::Q8_0 => 7,
        TensorType::Bf16 => 32,
    }
}

/// One tensor to write: where it comes from and how.
struct Plan<'a> {
    name: String,
    /// The HF name (for LoRA), or `None` for weights no adapter touches (norms, embeddings).
    hf: Option<String>,
    src: &'a Tensor,
    /// Heads to permute for RoPE (Q and K).
    rope_heads: Option<usize>,
    ty: TensorType,
}

impl<'a> Plan<'a> {
    fn new(
        name: String,
        hf: Option<String>,
        src: &'a Tensor,
        rope_heads: Option<usize>,
        dtype: TensorType,
    ) -> Self {
        let ty = match src.shape.as_slice() {
            [_] => TensorType::F32,
            [_, k] if dtype == TensorType::Q8_0 && !k.is_multiple_of(32) => TensorType::F16,
            _ => dtype,
        };
        Plan {
            name,
            hf,
            src,
            rope_heads,
            ty,
        }
    }
}

/// Writes `model_dir` (and `opts.adapter`, merged) to `out` as GGUF. The file is written next to
/// `out` and renamed into place when complete.
pub fn export(model_dir: &Path, out: &Path, opts: &ExportOptions) -> Result<ExportReport> {
    let w = Weights::load(model_dir)?;
    let cfg = &w.cfg;
    let vocab = vocab::read(model_dir, cfg)?;
    let adapter = opts.adapter.as_deref().map(Adapter::load).transpose()?;
    let mut plans: Vec<Plan> = Vec::new();
    let dtype = opts.dtype;
    let mut add = |name: String, hf: Option<String>, src, rope_heads| {
        plans.push(Plan::new(name, hf, src, rope_heads, dtype))
    };
    add("token_embd.weight".into(), None, &w.embed, None);
    for (l, layer) in w.layers.iter().enumerate() {
        let b = format!("blk.{l}");
        let hf = |m: &str| Some(format!("model.layers.{l}.{m}.weight"));
        add(
            format!("{b}.attn_norm.weight"),
            None,
            &layer.attn_norm,
            None,
        );
        add(
            format!("{b}.attn_q.weight"),
            hf("self_attn.q_proj"),
            &layer.q,
            Some(cfg.num_attention_heads),
        );
        add(
            format!("{b}.attn_k.weight"),
            hf("self_attn.k_proj"),
            &layer.k,
            Some(cfg.n_kv_heads()),
        );
        add(
            format!("{b}.attn_v.weight"),
            hf("self_attn.v_proj"),
            &layer.v,
            None,
        );
        add(
            format!("{b}.attn_output.weight"),
            hf("self_attn.o_proj"),
            &layer.o,
            None,
        );
        add(format!("{b}.ffn_norm.weight"), None, &layer.mlp_norm, None);
        add(
            format!("{b}.ffn_gate.weight"),
            hf("mlp.gate_proj"),
            &layer.gate,
            None,
        );
        add(
            format!("{b}.ffn_up.weight"),
            hf("mlp.up_proj"),
            &layer.up,
            None,
        );
        add(
            format!("{b}.ffn_down.weight"),
            hf("mlp.down_proj"),
            &layer.down,
            None,
        );
    }
    add("output_norm.weight".into(), None, &w.norm, None);
    if let Some(head) = &w.lm_head {
        add(
            "output.weight".into(),
            Some("lm_head.weight".into()),
            head,
            None,
        );
    }
    if let Some(ad) = &adapter {
        let known: Vec<&str> = plans.iter().filter_map(|p| p.hf.as_deref()).collect();
        if let Some(t) = ad.targets().into_iter().find(|t| !known.contains(t)) {
            return Err(Error::Invalid(format!(
                "the adapter in {} adapts {t}, which this LLaMA has no linear weight for",
                opts.adapter.as_deref().unwrap_or(Path::new("")).display()
            )));
        }
    }

    let name = opts.name.clone().unwrap_or_else(|| {
        model_dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "koala".into())
    });
    let u = |v: usize| Value::U32(v as u32);
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::Str("llama".into())),
        ("general.name".into(), Value::Str(name)),
        (
            "general.file_type".into(),
            Value::U32(file_type(opts.dtype)),
        ),
        ("general.quantization_version".into(), Value::U32(2)),
        ("llama.vocab_size".into(), u(cfg.vocab_size)),
        (
            "llama.context_length".into(),
            u(cfg.max_position_embeddings),
        ),
        ("llama.embedding_length".into(), u(cfg.hidden_size)),
        ("llama.block_count".into(), u(cfg.num_hidden_layers)),
        ("llama.feed_forward_length".into(), u(cfg.intermediate_size)),
        ("llama.rope.dimension_count".into(), u(cfg.head_dim())),
        (
            "llama.attention.head_count".into(),
            u(cfg.num_attention_heads),
        ),
        ("llama.attention.head_count_kv".into(), u(cfg.n_kv_heads())),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(cfg.rms_norm_eps),
        ),
        ("llama.rope.freq_base".into(), Value::F32(cfg.rope_theta)),
    ];
    if cfg.head_dim() * cfg.num_attention_heads != cfg.hidden_size {
        metadata.push(("llama.attention.key_length".into(), u(cfg.head_dim())));
        metadata.push(("llama.attention.value_length".into(), u(cfg.head_dim())));
    }
    let (tokenizer, tokenizer_source, n_vocab) = (vocab.model, vocab.source.clone(), vocab.len);
    metadata.extend(vocab.metadata);

    let header = Header {
        metadata,
        tensors: plans
            .iter()
            .map(|p| TensorInfo {
                name: p.name.clone(),
                shape: p.src.shape.iter().map(|d| *d as u64).collect(),
                ty: p.ty,
            })
            .collect(),
    };
    let tmp = tmp_path(out);
    let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut sink = BufWriter::with_capacity(1 << 20, file);
    let io = |e| Error::io(&tmp, e);
    header.write(&mut sink).map_err(io)?;
    let mut merged = Vec::new();
    let mut buf = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        let mut values: Cow<[f32]> = p.src.to_f32();
        if let (Some(ad), Some(hf)) = (&adapter, &p.hf) {
            let (n, k) = (p.src.shape[0], p.src.shape[1]);
            let mut owned = values.into_owned();
            if ad.merge_into(hf, &mut owned, n, k)? {
                merged.push(hf.clone());
            }
            values = Cow::Owned(owned);
        }
        if let Some(heads) = p.rope_heads {
            values = Cow::Owned(permute_rope_rows(&values, heads, p.src.shape[1]));
        }
        encode(&values, p.ty, &mut buf);
        header.write_tensor(&mut sink, i, &buf).map_err(io)?;
    }
    sink.flush().map_err(io)?;
    drop(sink);
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    let bytes = std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len();
    tracing::info!(
        path = %out.display(),
        bytes,
        tensors = plans.len(),
        tokenizer,
        merged = merged.len(),
        "GGUF written"
    );
    Ok(ExportReport {
        path: out.to_path_buf(),
        bytes,
        tensors: plans.len(),
        tokenizer,
        tokenizer_source,
        vocab: n_vocab,
        merged,
        fell_back_to_f16: plans
            .iter()
            .filter(|p| p.ty != opts.dtype && p.src.shape.len() == 2)
            .map(|p| p.name.clone())
            .collect(),
    })
}

fn tmp_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_permutation_interleaves_the_two_halves_of_each_head() {
        // 2 heads of head_dim 4, 1 input column: rows are [h0: 0 1 2 3, h1: 4 5 6 7].
        let w: Vec<f32> = (0..8).map(|x| x as f32).collect();
        let p = permute_rope_rows(&w, 2, 1);
        // Per head: half = [0 1] and [2 3] → 0 2 1 3.
        assert_eq!(p, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
        // With 2 input columns, rows move whole.
        let w: Vec<f32> = (0..8).map(|x| x as f32).collect();
        assert_eq!(
            permute_rope_rows(&w, 1, 2),
            vec![0., 1., 4., 5., 2., 3., 6., 7.]
        );
    }
}
