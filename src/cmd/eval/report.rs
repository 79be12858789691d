//! `koala eval report`: Bradley–Terry ratings with bootstrap intervals, pairwise win rates, rater
//! agreement and the Koala win-rate chart from ratings JSONL files (see
//! [`koala_eval::report`]).
use std::path::PathBuf;

use anyhow::{Context, Result};
use koala_eval::report::{ReportOptions, build, read_ratings};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Ratings JSONL files (from `eval export` or `eval judge`); all are pooled.
    #[arg(long, required = true, num_args = 1..)]
    pub ratings: Vec<PathBuf>,
    /// Output folder: report.json, report.md, winrates.svg, winrates.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Bootstrap rounds over the battles for the 95% intervals.
    #[arg(long, default_value_t = 100)]
    pub bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: Args) -> Result<()> {
    let t = std::time::Instant::now();
    let rows = read_ratings(&args.ratings)?;
    let opts = ReportOptions {
        bootstrap: args.bootstrap,
        seed: args.seed,
    };
    let report = build(&rows, &opts).context("eval report")?;
    let written = report.write(&args.out)?;
    println!(
        "{} ratings, {} systems, {} pairs, {} bootstrap rounds ({:.2}s)",
        report.ratings,
        report.systems.len(),
        report.pairs.len(),
        report.bootstrap,
        t.elapsed().as_secs_f64()
    );
    println!(
        "{:<4} {:<24} {:>8} {:>19} {:>8}",
        "rank", "system", "rating", "95% CI", "battles"
    );
    for (k, s) in report.systems.iter().enumerate() {
        println!(
            "{:<4} {:<24} {:>8.1} {:>8.1} – {:>8.1} {:>8}",
            k + 1,
            s.name,
            s.rating,
            s.ci_low,
            s.ci_high,
            s.battles
        );
    }
    for p in written {
        println!("wrote {}", p.display());
    }
    Ok(())
}
