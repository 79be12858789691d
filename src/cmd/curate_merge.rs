//! `koala curate-merge --config PRESET.toml --out DIR SHARD_DIR...`: combine the outputs of
//! `koala curate --shard I/N` (I = 0..N) into what one unsharded `koala curate` writes: the same
//! kept/dropped Parquet, Koala JSONL export and report (docs/curation.md, "Sharded runs").
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use koala_pipeline::stages::shard::merge_dir;

/// Arguments of `koala curate-merge`.
#[derive(Args, Debug)]
pub struct CurateMergeArgs {
    /// The curation preset the shards ran with (checked against their manifests).
    #[arg(long)]
    pub config: PathBuf,
    /// Output directory (created): the files of a single `koala curate` run.
    #[arg(long)]
    pub out: PathBuf,
    /// The `--seed` the shards ran with, if any.
    #[arg(long)]
    pub seed: Option<u64>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// The shard output directories (`koala curate --shard I/N --out DIR`): shards 0..N-1, each
    /// exactly once, in any order.
    #[arg(required = true, value_name = "SHARD_DIR")]
    pub shards: Vec<PathBuf>,
}

/// Runs `koala curate-merge`.
pub fn run(args: CurateMergeArgs) -> Result<()> {
    let (cfg, mp) = super::curate::config_and_progress(&args.config, args.seed, args.quiet)?;
    let run = merge_dir(&cfg, &args.shards, &args.out, Some(&mp)).with_context(|| {
        format!(
            "merging {} shard directories with {} into {}",
            args.shards.len(),
            args.config.display(),
            args.out.display()
        )
    })?;
    super::curate::print_summary(&cfg, &run.report, &args.out);
    Ok(())
}
