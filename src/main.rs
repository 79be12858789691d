//! `koala`: curate Koala/Alpaca-style dialogue data and fine-tune LLaMA-family models.
//!
//! Subcommands stay thin: each lives in `src/cmd/<name>.rs` and calls into the crates.
use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(
    name = "koala",
    version,
    about = "Curate dialogue data and fine-tune LLaMA-family models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    // One variant per subcommand, in the order of docs/architecture.md's command map.
    /// Read a directory of public dialogue datasets into one Parquet conversation table.
    Load(cmd::load::Args),
    /// Write a synthetic corpus of the seven sources in their published formats.
    Synth(cmd::synth::Args),
    /// Load the sources, run the curation stages, write kept/dropped Parquet, Koala JSONL and a report.
    Curate(cmd::curate::CurateArgs),
    /// BLEU test-set leakage filter alone: decontaminate training data or audit a test set.
    Decontaminate(cmd::decontaminate::DecontaminateArgs),
    /// Sentence or corpus BLEU of a JSONL file, equal to sacrebleu 2.x.
    Bleu(cmd::bleu::BleuArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Load(a) => cmd::load::run(a),
        Command::Synth(a) => cmd::synth::run(a),
        Command::Curate(args) => cmd::curate::run(args),
        Command::Bleu(args) => cmd::bleu::run(args),
        Command::Decontaminate(args) => cmd::decontaminate::run(args),
    }
}
