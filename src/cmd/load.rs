//! `koala load`: read a directory of sources into one conversation table (Parquet).
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use koala_pipeline::sources::{self, LoadOptions, LoadOutcome, OnError, Source, TiePolicy};

/// Read a directory of public dialogue datasets (layout in docs/sources.md) into one Parquet
/// conversation table, with a quarantine file of the records that could not be read and a
/// report.json beside the output.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input directory: DIR/sharegpt/*.json, DIR/hc3/*.jsonl, DIR/oig/unified_*.jsonl,
    /// DIR/alpaca/*.json, DIR/hh/**/*.jsonl.gz, DIR/webgpt/*.jsonl, DIR/summarize/**/*.json.
    #[arg(long)]
    pub input: PathBuf,
    /// Output Parquet file (its directory is created).
    #[arg(long)]
    pub out: PathBuf,
    /// What to do with a malformed record: `skip` quarantines it, `fail` stops.
    #[arg(long, default_value = "skip")]
    pub on_error: OnError,
    /// Quarantine file (JSON lines) [default: quarantine.jsonl beside the output].
    #[arg(long)]
    pub quarantine: Option<PathBuf>,
    /// WebGPT comparisons with equal scores: `keep` (both answers unrated) or `skip`.
    #[arg(long, default_value = "keep")]
    pub webgpt_ties: TiePolicy,
    /// Only these sources (comma-separated names) [default: all found].
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<Source>,
    /// A record longer than this many bytes is quarantined without being loaded.
    #[arg(long, default_value_t = sources::DEFAULT_MAX_RECORD_BYTES)]
    pub max_record_bytes: usize,
}

pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let dir = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let quarantine = args
        .quarantine
        .clone()
        .unwrap_or_else(|| dir.join("quarantine.jsonl"));

    let pb = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{spinner} loading [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )?
        .progress_chars("=> "),
    );
    let opts = LoadOptions {
        on_error: args.on_error,
        webgpt_ties: args.webgpt_ties,
        sources: (!args.sources.is_empty()).then(|| args.sources.clone()),
        max_record_bytes: args.max_record_bytes,
        progress: Some(pb),
        ..LoadOptions::default()
    };
    let mut out = sources::load_dir(&args.input, &opts)
        .with_context(|| format!("loading {}", args.input.display()))?;
    out.check_reconciled()?;
    let load_s = start.elapsed().as_secs_f64();

    out.write_table(&args.out)?;
    out.write_quarantine(&quarantine)?;
    let wall_s = start.elapsed().as_secs_f64();

    print_summary(&out);
    let mut report = out.report();
    report["command"] = "load".into();
    report["input"] = args.input.display().to_string().into();
    report["output"] = args.out.display().to_string().into();
    report["quarantine_file"] = quarantine.display().to_string().into();
    report["options"] = serde_json::json!({
        "on_error": args.on_error, "webgpt_ties": args.webgpt_ties,
        "sources": args.sources,
    });
    report["load_seconds"] = load_s.into();
    report["wall_seconds"] = wall_s.into();
    let report_path = dir.join("report.json");
    std::fs::write(&report_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", report_path.display()))?;

    let t = out.totals();
    println!(
        "read {} records = {} loaded + {} skipped + {} quarantined; wrote {} rows to {} in {:.1}s",
        t.records_read,
        t.records_loaded,
        t.records_skipped,
        t.records_quarantined,
        t.rows,
        args.out.display(),
        wall_s
    );
    if t.records_quarantined > 0 {
        println!(
            "quarantined records (raw text + reason): {}",
            quarantine.display()
        );
    }
    if !out.ignored.is_empty() {
        println!("ignored (not in the layout): {}", out.ignored.join(", "));
    }
    println!("report: {}", report_path.display());
    Ok(())
}

fn print_summary(out: &LoadOutcome) {
    println!(
        "{:<10} {:>5} {:>10} {:>10} {:>8} {:>11} {:>10} {:>9}",
        "source", "files", "read", "loaded", "skipped", "quarantined", "rows", "MB"
    );
    let mut all = out.by_source();
    all.push(out.totals());
    for s in all {
        println!(
            "{:<10} {:>5} {:>10} {:>10} {:>8} {:>11} {:>10} {:>9.1}",
            s.source,
            s.files,
            s.records_read,
            s.records_loaded,
            s.records_skipped,
            s.records_quarantined,
            s.rows,
            s.disk_bytes as f64 / 1e6
        );
    }
}
