//! `koala eval …`: evaluation as the Koala study ran it (see docs/evaluation.md).
//!
//! `generate` answers an eval set with each system; `rate` serves the blind pairwise rating page;
//! `status` and `export` read its database; `judge` rates with an LLM; `report` fits
//! Bradley–Terry ratings and draws the Koala chart.
use anyhow::Result;
use clap::Subcommand;

mod generate;
mod judge;
mod rate;
mod report;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: EvalCommand,
}

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Answer an eval set with one or more systems (checkpoint, OpenAI-compatible endpoint, or file).
    Generate(generate::Args),
    /// Serve the blind pairwise rating web app over a responses file.
    Rate(rate::RateArgs),
    /// Show rating progress per rater from a rating database.
    Status(rate::StatusArgs),
    /// Export the votes of a rating database as ratings JSONL.
    Export(rate::ExportArgs),
    /// Rate response pairs with an LLM judge (FastChat's pairwise prompt, both orders).
    Judge(judge::Args),
    /// Bradley–Terry ratings with bootstrap intervals, pairwise win rates and the Koala chart.
    Report(report::Args),
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        EvalCommand::Generate(a) => generate::run(a),
        EvalCommand::Rate(a) => rate::rate(a),
        EvalCommand::Status(a) => rate::status(a),
        EvalCommand::Export(a) => rate::export(a),
        EvalCommand::Judge(a) => judge::run(a),
        EvalCommand::Report(a) => report::run(a),
    }
}
