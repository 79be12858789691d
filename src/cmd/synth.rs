//! `koala synth`: write a synthetic corpus in the real published formats.
use std::path::PathBuf;

use anyhow::{Context, Result};
use koala_pipeline::synth::{self, Scale, SynthOptions};

/// Write a seeded synthetic corpus of the seven sources, in their published formats and the
/// layout `koala load` reads (docs/sources.md).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// `small` (1/100 of Koala's sizes, for tests), `koala` (the blog's sizes, ~1 GB), `tiny`,
    /// or `Nx`: N times the Koala sizes, N from 1 to 1000 (`10x` is ~11 GB; `1x` = `koala`).
    #[arg(long, default_value = "small")]
    pub scale: Scale,
    /// Output directory (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed: the same seed gives byte-identical files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: Args) -> Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let pb = indicatif::ProgressBar::new_spinner().with_message(format!(
        "writing a {} corpus to {}",
        args.scale,
        args.out.display()
    ));
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    let report = synth::synth(
        &args.out,
        &SynthOptions {
            scale: args.scale,
            seed: args.seed,
        },
    )?;
    pb.finish_and_clear();
    println!(
        "{:<46} {:>9} {:>10} {:>10}",
        "file", "records", "MB", "MB on disk"
    );
    for f in &report.files {
        println!(
            "{:<46} {:>9} {:>10.1} {:>10.1}",
            f.file,
            f.records,
            f.decoded_bytes as f64 / 1e6,
            f.disk_bytes as f64 / 1e6
        );
    }
    let records: u64 = report.files.iter().map(|f| f.records).sum();
    println!(
        "wrote {records} records, {:.1} MB ({:.1} MB on disk) in {:.1}s ({:.0} MB/s)",
        report.decoded_bytes() as f64 / 1e6,
        report.disk_bytes() as f64 / 1e6,
        report.seconds,
        report.decoded_bytes() as f64 / 1e6 / report.seconds.max(1e-9)
    );
    let path = args.out.join("report.json");
    let mut json = serde_json::to_value(&report)?;
    json["command"] = "synth".into();
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("report: {}", path.display());
    Ok(())
}
