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
    /// Format, tokenise (with loss masks) and pack conversations into training shards.
    Tokenize(cmd::tokenize::TokenizeArgs),
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
        Command::Tokenize(a) => cmd::tokenize::main(a),
    }
}
