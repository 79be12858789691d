//! `koala export gguf --model DIR [--adapter DIR] --out FILE.gguf [--dtype f32|f16|bf16|q8_0]`:
//! one GGUF file for llama.cpp and Ollama (see docs/serving.md, "Running in llama.cpp and
//! Ollama", and `koala_model::gguf`).
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use koala_model::gguf::{ExportOptions, TensorType, export};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: ExportCommand,
}

#[derive(Subcommand, Debug)]
pub enum ExportCommand {
    /// Write a HF LLaMA directory (and a merged LoRA adapter) as GGUF.
    Gguf(GgufArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
}

#[derive(clap::Args, Debug)]
pub struct GgufArgs {
    /// HF model directory: config.json, safetensors, and tokenizer.model or tokenizer.json.
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors) to merge.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The GGUF file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Type of the weight matrices (norm weights stay f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Dtype,
    /// `general.name` in the file (default: the model directory's name).
    #[arg(long)]
    pub name: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        ExportCommand::Gguf(a) => gguf(a),
    }
}

fn gguf(a: GgufArgs) -> Result<()> {
    let dtype = match a.dtype {
        Dtype::F32 => TensorType::F32,
        Dtype::F16 => TensorType::F16,
        Dtype::Bf16 => TensorType::Bf16,
        Dtype::Q8_0 => TensorType::Q8_0,
    };
    let opts = ExportOptions {
        dtype,
        adapter: a.adapter.clone(),
        name: a.name,
    };
    let r = export(&a.model, &a.out, &opts)
        .with_context(|| format!("exporting {} to GGUF", a.model.display()))?;
    println!(
        "wrote {}: {} tensors, {:.1} MB, {:?} matrices, tokenizer {} ({} tokens, from {})",
        r.path.display(),
        r.tensors,
        r.bytes as f64 / 1e6,
        dtype,
        r.tokenizer,
        r.vocab,
        r.tokenizer_source
    );
    if let Some(ad) = &a.adapter {
        println!(
            "merged the LoRA adapter {} into {} weights",
            ad.display(),
            r.merged.len()
        );
    }
    if !r.fell_back_to_f16.is_empty() {
        println!(
            "{} matrices are f16: q8_0 needs rows that are a multiple of 32 ({})",
            r.fell_back_to_f16.len(),
            r.fell_back_to_f16.join(", ")
        );
    }
    Ok(())
}
