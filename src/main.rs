//! `koala`: curate Koala/Alpaca-style dialogue data and fine-tune LLaMA-family models.
//!
//! Subcommands stay thin: each lives in `src/cmd/<name>.rs` and calls into the crates.
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Write a synthetic corpus of the seven sources in their published formats.
    Synth(cmd::synth::Args),
    /// Read a directory of public dialogue datasets into one Parquet conversation table.
    Load(cmd::load::Args),
    /// Load the sources, run the curation stages, write kept/dropped Parquet, Koala JSONL and a report.
    Curate(cmd::curate::CurateArgs),
    /// Combine the shard directories of `koala curate --shard I/N` into the single run's output.
    CurateMerge(cmd::curate_merge::CurateMergeArgs),
    /// BLEU test-set leakage filter alone: decontaminate training data or audit a test set.
    Decontaminate(cmd::decontaminate::DecontaminateArgs),
    /// Test-set curation tools: `check` measures the non-English and coding flags against labels.
    Testset(cmd::testset::Args),
    /// Sentence or corpus BLEU of a JSONL file, equal to sacrebleu 2.x.
    Bleu(cmd::bleu::BleuArgs),
    /// Format, tokenise (with loss masks) and pack conversations into training shards.
    Tokenize(cmd::tokenize::TokenizeArgs),
    /// Memory per GPU and tokens/s of a fine-tuning job before launching it (see docs/scale.md).
    Plan(cmd::plan::Args),
    /// Train locally on token shards (progress bar, metrics JSONL, loss curve, checkpoints).
    Train(cmd::train::Args),
    /// Write the fp32 logits of a batch of token ids as .npy (cross-check against transformers).
    Logits(cmd::logits::Args),
    /// Sample from a checkpoint (temperature, top-k, top-p, stop string, KV-cache).
    Generate(cmd::generate::Args),
    /// Export a model for other runtimes: `gguf` writes one file for llama.cpp and Ollama.
    Export(cmd::export::Args),
    /// LoRA adapters: `merge` folds one into its base model (see docs/training.md).
    Lora(cmd::lora::Args),
    /// Serve models over the OpenAI HTTP API, with a chat page at `/` (see docs/serving.md).
    ServeModel(cmd::serve_model::Args),
    /// Run the gRPC trainer daemon (see docs/daemon.md).
    Serve(cmd::serve::ServeArgs),
    /// Submit a job file to the daemon; --watch follows it with a progress bar.
    Submit(cmd::submit::SubmitArgs),
    /// List the daemon's jobs, newest first.
    Jobs(cmd::jobs::JobsArgs),
    /// Show one job (--events, --metrics for its history).
    Job(cmd::jobs::JobArgs),
    /// Cancel a job (a running one stops at its next step boundary).
    Cancel(cmd::jobs::CancelArgs),
    /// Sample a job's newest checkpoint on the daemon (Generate), printing text as it streams.
    Sample(cmd::jobs::SampleArgs),
    /// Watermark tools: `detect` tests texts for the `--watermark-key` green-list watermark.
    Watermark(cmd::watermark::Args),
    /// Weight diffs as Koala released its weights: `diff` against a base, `recover` bit for bit.
    Weights(cmd::weights::Args),
    /// Alpaca's self-instruct: `generate` instruction data from a teacher API, `dedup` (ROUGE-L).
    #[command(name = "self-instruct")]
    SelfInstruct(cmd::self_instruct::Args),
    /// Evaluate as Koala did: answer eval sets, rate blind in pairs or with a judge, report.
    Eval(cmd::eval::Args),
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
        Command::Synth(a) => cmd::synth::run(a),
        Command::Load(a) => cmd::load::run(a),
        Command::Curate(a) => cmd::curate::run(a),
        Command::CurateMerge(a) => cmd::curate_merge::run(a),
        Command::Decontaminate(a) => cmd::decontaminate::run(a),
        Command::Testset(a) => cmd::testset::run(a),
        Command::Bleu(a) => cmd::bleu::run(a),
        Command::Tokenize(a) => cmd::tokenize::main(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Logits(a) => cmd::logits::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Lora(a) => cmd::lora::run(a),
        Command::ServeModel(a) => cmd::serve_model::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Submit(a) => cmd::submit::run(a),
        Command::Jobs(a) => cmd::jobs::jobs(a),
        Command::Job(a) => cmd::jobs::job(a),
        Command::Cancel(a) => cmd::jobs::cancel(a),
        Command::Sample(a) => cmd::jobs::sample(a),
        Command::Watermark(a) => cmd::watermark::run(a),
        Command::Weights(a) => cmd::weights::run(a),
        Command::SelfInstruct(a) => cmd::self_instruct::run(a),
        Command::Eval(a) => cmd::eval::run(a),
    }
}
