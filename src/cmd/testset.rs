//! `koala testset check --test SET|FILE... --labels FILE [--threshold X] [--json]`: measures the
//! test-set curation flags (non-English, coding) against hand labels.
//!
//! `--test` takes the shipped sets by name (`koala`, `self-instruct`, or `builtin:…`) or test-set
//! files (Koala, self-instruct, instruction JSONL or an Alpaca JSON list), and may be given more
//! than once. Labels are matched by prompt id (see `testsets/data/labels/LABELLING.md`). Prints
//! precision, recall and false-flag rate per flag, borderline prompts counted apart, then every
//! misclassified prompt with the detector's reasons; `--json` prints the report as one JSON
//! object instead.
//!
//! ```text
//! koala testset check --test koala --test self-instruct \
//!     --test testsets/data/labels/hand_made_prompts.jsonl \
//!     --labels testsets/data/labels/labels.jsonl
//! ```
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use koala_testsets::check::{check, load_labels};
use koala_testsets::curation::{DEFAULT_CODING_THRESHOLD, FlagConfig};
use koala_testsets::sets::resolve;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: TestsetCommand,
}

#[derive(Subcommand, Debug)]
pub enum TestsetCommand {
    /// Precision and recall of the curation flags against hand labels, with the misclassified
    /// prompts.
    Check(CheckArgs),
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// A test set: `koala`, `self-instruct` (or `builtin:…`), or a test-set file. Repeatable.
    #[arg(long = "test", required = true)]
    pub tests: Vec<String>,
    /// The labels JSONL: `{"id", "coding": bool, "non_english": bool, "borderline"?: bool, …}`.
    #[arg(long)]
    pub labels: PathBuf,
    /// The coding-score threshold (a prompt is flagged coding at or above it).
    #[arg(long, default_value_t = DEFAULT_CODING_THRESHOLD)]
    pub threshold: f64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        TestsetCommand::Check(a) => run_check(a),
    }
}

fn run_check(args: CheckArgs) -> Result<()> {
    if !args.threshold.is_finite() {
        bail!(
            "--threshold must be a finite number, got {}",
            args.threshold
        );
    }
    let mut prompts = Vec::new();
    for spec in &args.tests {
        let (_, p) = resolve(spec).with_context(|| format!("--test {spec}"))?;
        prompts.extend(p);
    }
    let labels =
        load_labels(&args.labels).with_context(|| format!("--labels {}", args.labels.display()))?;
    let cfg = FlagConfig {
        coding_threshold: args.threshold,
    };
    let report = check(&prompts, &labels, &cfg)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
