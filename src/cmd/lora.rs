//! `koala lora merge --model BASE --adapter DIR --out DIR`: fold a LoRA adapter (ours or peft's)
//! into its base model, as peft's `merge_and_unload` + `save_pretrained`.
use std::path::PathBuf;

use anyhow::Context;
use koala_model::lora::{Adapter, merge_dir};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Write BASE with the adapter merged into its weights (same dtypes, shards and files).
    Merge(MergeArgs),
}

#[derive(clap::Args)]
struct MergeArgs {
    /// The base HF model directory the adapter was trained on.
    #[arg(long)]
    model: PathBuf,
    /// The adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// Output directory for the merged model.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        Cmd::Merge(a) => {
            let ad = Adapter::load(&a.adapter)
                .with_context(|| format!("loading --adapter {}", a.adapter.display()))?;
            let n = merge_dir(&a.model, &ad, &a.out).with_context(|| {
                format!("merging {} into {}", a.adapter.display(), a.model.display())
            })?;
            println!(
                "merged {n} weights (r {}, alpha {}) into {}",
                ad.r,
                ad.alpha,
                a.out.display()
            );
            Ok(())
        }
    }
}
