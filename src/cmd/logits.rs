//! `koala logits --model DIR [--adapter LORA] --ids ids.json --out logits.npy`: fp32 logits `[b, t, vocab]` of a
//! batch of token ids, for cross-checking any HF-layout checkpoint against `transformers`.
use std::path::PathBuf;

use anyhow::Context;
use koala_kernels::cpu::CpuBackend;
use koala_trainer::{infer, npy};

#[derive(clap::Args)]
pub struct Args {
    /// HF model directory (`config.json` + safetensors).
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter directory (ours or peft's), applied unmerged through the adapter path.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// JSON list of equal-length lists of token ids.
    #[arg(long)]
    ids: PathBuf,
    /// Output `.npy` file (float32, shape `[b, t, vocab]`).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let be = CpuBackend::new();
    let mut model = match &args.adapter {
        Some(a) => infer::load_model_with_adapter(&be, &args.model, a)?,
        None => infer::load_model(&be, &args.model)?,
    };
    let text = std::fs::read_to_string(&args.ids)
        .with_context(|| format!("reading {}", args.ids.display()))?;
    let rows = infer::parse_ids(&text, &args.ids, model.cfg.vocab_size)?;
    let (shape, logits) = infer::logits(&be, &mut model, &rows)?;
    npy::write_f32(&args.out, &shape, &logits)?;
    println!("wrote {} ({shape:?} float32)", args.out.display());
    Ok(())
}
