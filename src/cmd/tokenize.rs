//! `koala tokenize`: formats conversations, tokenises them with loss masks, and writes packed
//! (or padded) training shards with a manifest. See docs/shards.md and docs/formats.md.
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use koala_pipeline::tokenize::Side;
use koala_pipeline::tokenize::pack::Mode;
use koala_pipeline::tokenize::run::{FormatName, TokenizeConfig, run};

/// Arguments of `koala tokenize`. Flags override the `--config` file.
#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// The conversation table: a Parquet file, or a folder with `kept.parquet`.
    #[arg(long)]
    pub input: PathBuf,
    /// Output folder (shards, manifest.json, tokenizer.json, report.json).
    #[arg(long)]
    pub out: PathBuf,
    /// A TOML file with the `TokenizeConfig` keys (see docs/shards.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A tokenizer.json; without one a byte-level BPE is trained on the input.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// koala | alpaca | chat-template.
    #[arg(long)]
    pub format: Option<FormatName>,
    /// tokenizer_config.json holding the chat_template (default: beside --tokenizer).
    #[arg(long)]
    pub chat_template_config: Option<PathBuf>,
    /// Row length in tokens (default 2048; 512 for alpaca).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Truncate examples to this many tokens (default: seq_len).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Which end to cut: right (keep the start) or left.
    #[arg(long)]
    pub truncation_side: Option<Side>,
    /// Pack several examples per row (default).
    #[arg(long, conflicts_with = "pad")]
    pub pack: bool,
    /// One example per row, padded.
    #[arg(long)]
    pub pad: bool,
    /// Vocabulary size of a trained tokenizer.
    #[arg(long)]
    pub vocab_size: Option<usize>,
    /// Seed of the row shuffle.
    #[arg(long)]
    pub seed: Option<u64>,
}

pub fn main(args: TokenizeArgs) -> Result<()> {
    let mut cfg = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str::<TokenizeConfig>(&text).with_context(|| format!("{}", p.display()))?
        }
        None => TokenizeConfig::default(),
    };
    if let Some(f) = args.format {
        cfg.format = f;
    }
    if args.tokenizer.is_some() {
        cfg.tokenizer = args.tokenizer;
    }
    if args.chat_template_config.is_some() {
        cfg.chat_template_config = args.chat_template_config;
    }
    if args.seq_len.is_some() {
        cfg.seq_len = args.seq_len;
    }
    if args.max_len.is_some() {
        cfg.max_len = args.max_len;
    }
    if let Some(s) = args.truncation_side {
        cfg.truncation_side = s;
    }
    if args.pack {
        cfg.mode = Mode::Pack;
    }
    if args.pad {
        cfg.mode = Mode::Pad;
    }
    if let Some(v) = args.vocab_size {
        cfg.vocab_size = v;
    }
    if let Some(s) = args.seed {
        cfg.shuffle_seed = s;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} tokenize [{elapsed_precise}] {wide_bar} {pos}/{len} conversations ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (manifest, report) = run(&args.input, &args.out, &cfg, Some(&bar))?;
    bar.finish_and_clear();

    println!(
        "tokenize: {} conversations -> {} examples ({} skipped), format {}, {} mode, seq_len {}",
        report.conversations,
        report.examples,
        report.skipped.values().sum::<usize>(),
        manifest.format,
        match manifest.mode {
            Mode::Pack => "pack",
            Mode::Pad => "pad",
        },
        manifest.seq_len
    );
    for (reason, n) in &report.skipped {
        println!("  skipped {reason}: {n}");
    }
    println!(
        "  tokens {} (loss share {:.1}%), {} rows, packing efficiency {:.2}%",
        report.tokens,
        100.0 * report.loss_token_share,
        report.rows,
        100.0 * report.packing_efficiency
    );
    println!(
        "  truncated {} examples by {} tokens (max {}), {:.0} tokens/s",
        report.truncated_examples,
        report.truncated_tokens,
        report.max_truncated_tokens,
        report.tokens_per_second
    );
    println!(
        "  {:<16} {:>9} {:>12} {:>8}",
        "source", "examples", "tokens", "loss %"
    );
    for (src, s) in &report.per_source {
        println!(
            "  {:<16} {:>9} {:>12} {:>7.1}%",
            src,
            s.examples,
            s.tokens,
            100.0 * s.loss_tokens as f64 / s.tokens.max(1) as f64
        );
    }
    for (split, info) in &manifest.splits {
        println!(
            "  split {split}: {} rows in {} files",
            info.rows,
            info.files.len()
        );
    }
    println!("  wrote {}", args.out.join("manifest.json").display());
    Ok(())
}
