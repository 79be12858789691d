//! `koala curate --config PRESET.toml --input DIR --out DIR`: load every source under DIR, run
//! the curation stages with a progress bar each, write kept/dropped Parquet, the Koala JSONL
//! export and the report. With `--shard I/N`: only shard I's rows, every stage before `mixture`,
//! written for `koala curate-merge` (docs/curation.md, "Sharded runs").
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::MultiProgress;
use koala_pipeline::sources::{LoadOptions, load_dir};
use koala_pipeline::stages::config::CurateConfig;
use koala_pipeline::stages::report::Report;
use koala_pipeline::stages::run::{curate, write_outputs};
use koala_pipeline::stages::shard::{ShardSpec, check_shardable, curate_shard};

/// Arguments of `koala curate`.
#[derive(Args, Debug)]
pub struct CurateArgs {
    /// A curation preset (e.g. pipeline/presets/koala-all.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Directory of raw source files, or a conversation-table `.parquet` file.
    #[arg(long)]
    pub input: PathBuf,
    /// Output directory (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Override the preset's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Run shard I of N (0-based, e.g. 3/8): only that shard's rows, every stage before
    /// `mixture`; `koala curate-merge` combines the N shard directories into the single run's
    /// output.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<ShardSpec>,
    /// A raw input record longer than this many bytes is quarantined without being loaded.
    #[arg(long, default_value_t = koala_pipeline::sources::DEFAULT_MAX_RECORD_BYTES)]
    pub max_record_bytes: usize,
}

/// Runs `koala curate`.
pub fn run(args: CurateArgs) -> Result<()> {
    let (cfg, mp) = config_and_progress(&args.config, args.seed, args.quiet)?;
    if let Some(spec) = args.shard {
        return run_shard(&args, &cfg, spec, &mp);
    }
    let input = load_input(&args.input, &mp, &args.out, args.max_record_bytes)?;
    let mut out = curate(&cfg, input, Some(&mp)).with_context(|| {
        format!(
            "curating {} with {}",
            args.input.display(),
            args.config.display()
        )
    })?;
    let report = write_outputs(&cfg, &mut out, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    print_summary(&cfg, &report, &args.out);
    Ok(())
}

/// The preset with `--seed` applied, and the progress bars (hidden with `--quiet`): the start of
/// `koala curate` and `koala curate-merge`.
pub fn config_and_progress(
    config: &std::path::Path,
    seed: Option<u64>,
    quiet: bool,
) -> Result<(CurateConfig, MultiProgress)> {
    let mut cfg = CurateConfig::load(config)?;
    if let Some(seed) = seed {
        cfg.seed = seed;
    }
    let mp = MultiProgress::new();
    if quiet {
        mp.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    Ok((cfg, mp))
}

/// The name a run prints: the preset's, or `curate`.
fn run_name(cfg: &CurateConfig) -> &str {
    if cfg.name.is_empty() {
        "curate"
    } else {
        &cfg.name
    }
}

/// The closing lines of `koala curate` and `koala curate-merge`: totals, funnel, export.
pub fn print_summary(cfg: &CurateConfig, report: &Report, out: &std::path::Path) {
    println!(
        "{}: {} rows in → {} kept + {} dropped (invariant holds)",
        run_name(cfg),
        report.rows_in,
        report.rows_kept,
        report.rows_dropped
    );
    for (src, steps) in &report.funnel {
        let line: Vec<String> = steps.iter().map(|(st, n)| format!("{st} {n}")).collect();
        println!("  {src}: {}", line.join(" → "));
    }
    if let Some(e) = &report.export {
        println!("  export: {} train, {} eval examples", e.train, e.eval);
    }
    println!("  wrote {}", out.display());
}

/// `koala curate --shard I/N`.
fn run_shard(
    args: &CurateArgs,
    cfg: &CurateConfig,
    spec: ShardSpec,
    mp: &MultiProgress,
) -> Result<()> {
    // Refused before the input is read.
    check_shardable(cfg, spec)?;
    let input = load_input(&args.input, mp, &args.out, args.max_record_bytes)?;
    let mut run = curate_shard(
        cfg,
        input,
        &args.input.display().to_string(),
        spec,
        Some(mp),
    )
    .with_context(|| {
        format!(
            "curating shard {spec} of {} with {}",
            args.input.display(),
            args.config.display()
        )
    })?;
    run.write(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let m = &run.manifest;
    println!(
        "{} shard {spec}: {} rows seen, {} owned → {} kept before mixture + {} dropped (invariant holds)",
        run_name(cfg),
        m.rows_seen,
        m.rows_owned,
        m.rows_kept,
        m.rows_dropped
    );
    println!(
        "  wrote {} (merge all {} shards with `koala curate-merge`)",
        args.out.display(),
        spec.count
    );
    Ok(())
}

fn load_input(
    path: &std::path::Path,
    mp: &MultiProgress,
    out: &std::path::Path,
    max_record_bytes: usize,
) -> Result<polars::prelude::DataFrame> {
    use polars::prelude::{ParquetReader, PlSmallStr, SerReader};
    if path.is_file() {
        let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let df = ParquetReader::new(f)
            .finish()
            .with_context(|| format!("reading {} as a conversation table", path.display()))?;
        let names: Vec<PlSmallStr> = koala_pipeline::schema::conversation_schema()
            .iter_names()
            .cloned()
            .collect();
        let df = df
            .select(names)
            .with_context(|| format!("{}: not a conversation table", path.display()))?;
        koala_pipeline::schema::validate(&df).with_context(|| path.display().to_string())?;
        return Ok(df);
    }
    let pb = mp.add(indicatif::ProgressBar::new(0));
    pb.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>9} [{bar:30}] {bytes}/{total_bytes}")?
            .progress_chars("=> "),
    );
    pb.set_prefix("load");
    let opts = LoadOptions {
        progress: Some(pb.clone()),
        max_record_bytes,
        ..LoadOptions::default()
    };
    let loaded = load_dir(path, &opts).with_context(|| format!("loading {}", path.display()))?;
    pb.finish();
    loaded.check_reconciled()?;
    if let Some(q) = loaded.write_quarantine_into(out)? {
        eprintln!(
            "warning: {} malformed input records quarantined in {} (not part of the lineage: they never became rows)",
            loaded.quarantine.len(),
            q.display()
        );
    }
    Ok(loaded.table)
}
