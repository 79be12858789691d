//! `koala decontaminate --input PARQUET_OR_DIR --test FILE... --out DIR [--direction ...]`:
//! the BLEU leakage filter alone, in either direction.
//!
//! Writes to `--out`: `kept.parquet` and `dropped.parquet` (training conversations for
//! `decontaminate`, test prompts for `audit`; dropped rows carry `filter_reason`, the matched id
//! and `bleu_max`), `tests.parquet` (every test prompt with its curation flags and reasons),
//! `leaks.jsonl` (every leaking pair) and `report.json`.
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use koala_pipeline::leakage::{self, Direction, Hypothesis, LeakageConfig};
use polars::prelude::{DataFrame, ParquetReader, ParquetWriter, SerReader};

#[derive(Args, Debug)]
pub struct DecontaminateArgs {
    /// A conversation-table Parquet file, or a directory (its `kept.parquet` if present, else
    /// every `*.parquet` in it, in name order).
    #[arg(long)]
    pub input: PathBuf,
    /// Test sets: `builtin:koala`, `builtin:self-instruct` (the shipped eval sets, the default),
    /// or files: Koala JSONL {"id","prompt"}, self-instruct JSONL, instruction JSONL, or an Alpaca
    /// JSON list.
    #[arg(long = "test", num_args = 1.., default_values = ["builtin:koala", "builtin:self-instruct"])]
    pub tests: Vec<PathBuf>,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// `decontaminate` drops training rows; `audit` drops test prompts.
    #[arg(long, value_enum, default_value = "decontaminate")]
    pub direction: DirectionArg,
    /// Which side is the BLEU hypothesis: test, train, or the max of both.
    #[arg(long, value_enum, default_value = "test")]
    pub hypothesis: HypothesisArg,
    /// A pair leaks when its sentence BLEU is above this.
    #[arg(long, default_value_t = 20.0)]
    pub threshold: f64,
    /// Lowercased BLEU.
    #[arg(long)]
    pub lowercase: bool,
    /// Leave non-English and coding test prompts out (dropped with their reason in audit).
    #[arg(long)]
    pub drop_flagged_tests: bool,
    /// The coding-score threshold of the test-prompt flags (lower flags more; measure with
    /// `koala testset check --threshold`).
    #[arg(long, default_value_t = koala_pipeline::leakage::curation::DEFAULT_CODING_THRESHOLD)]
    pub coding_threshold: f64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DirectionArg {
    Decontaminate,
    Audit,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum HypothesisArg {
    Test,
    Train,
    Max,
}

fn read_parquet(path: &Path) -> Result<DataFrame> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    ParquetReader::new(f)
        .finish()
        .with_context(|| format!("{}: not a readable Parquet file", path.display()))
}

/// Reads the conversation table from a file or a directory.
pub fn read_table(input: &Path) -> Result<DataFrame> {
    if !input.is_dir() {
        return read_parquet(input);
    }
    let kept = input.join("kept.parquet");
    if kept.is_file() {
        return read_parquet(&kept);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(input)
        .with_context(|| format!("cannot list {}", input.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    let Some(first) = files.first() else {
        bail!("{}: no .parquet files in this directory", input.display());
    };
    let mut df = read_parquet(first)?;
    for f in &files[1..] {
        df.vstack_mut(&read_parquet(f)?).with_context(|| {
            format!(
                "{}: does not match the schema of {}",
                f.display(),
                first.display()
            )
        })?;
    }
    Ok(df)
}

fn write_parquet(df: &mut DataFrame, path: &Path) -> Result<()> {
    let f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    ParquetWriter::new(f)
        .finish(df)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub fn run(args: DecontaminateArgs) -> Result<()> {
    let cfg = LeakageConfig {
        enabled: true,
        test_sets: args.tests.clone(),
        direction: match args.direction {
            DirectionArg::Decontaminate => Direction::Decontaminate,
            DirectionArg::Audit => Direction::Audit,
        },
        hypothesis: match args.hypothesis {
            HypothesisArg::Test => Hypothesis::Test,
            HypothesisArg::Train => Hypothesis::Train,
            HypothesisArg::Max => Hypothesis::Max,
        },
        threshold: args.threshold,
        lowercase: args.lowercase,
        drop_flagged_tests: args.drop_flagged_tests,
        coding_threshold: args.coding_threshold,
    };
    cfg.validate()?;
    let df = read_table(&args.input)?;
    koala_pipeline::schema::validate(&df)
        .with_context(|| format!("{}: not a conversation table", args.input.display()))?;
    let tests = leakage::load_test_sets(&args.tests)?;
    tracing::info!(
        training_rows = df.height(),
        test_prompts = tests.len(),
        "leakage filter"
    );
    let mut out = leakage::filter(&df, &tests, &cfg)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    write_parquet(&mut out.kept, &args.out.join("kept.parquet"))?;
    write_parquet(&mut out.dropped, &args.out.join("dropped.parquet"))?;
    write_parquet(&mut out.tests, &args.out.join("tests.parquet"))?;
    let leaks_path = args.out.join("leaks.jsonl");
    let mut w = std::io::BufWriter::new(
        File::create(&leaks_path)
            .with_context(|| format!("cannot create {}", leaks_path.display()))?,
    );
    for l in &out.leaks {
        writeln!(w, "{}", serde_json::to_string(l)?)?;
    }
    w.flush()?;
    let report_path = args.out.join("report.json");
    std::fs::write(&report_path, serde_json::to_string_pretty(&out.report)?)
        .with_context(|| format!("cannot write {}", report_path.display()))?;
    let r = &out.report;
    println!(
        "{:?}: {} in, {} kept, {} dropped; {} leaking pairs; {} of {} pairs scored exactly ({} pruned) in {:.2}s; {} test prompts flagged non-English, {} coding",
        r.direction,
        r.rows_in,
        r.kept,
        r.dropped,
        r.search.leaking,
        r.search.exact_scored,
        r.search.pairs,
        r.search.pruned,
        r.seconds,
        r.test_prompts_flagged_non_english,
        r.test_prompts_flagged_coding
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use koala_pipeline::schema::{Conversation, Turn, to_dataframe};

    fn conv(id: &str, q: &str) -> Conversation {
        Conversation {
            id: id.into(),
            source: "sharegpt".into(),
            split: "train".into(),
            turns: vec![Turn::user(q), Turn::assistant("ok")],
            src_file: "sg.json".into(),
            src_record: 1,
            meta: "{}".into(),
        }
    }

    #[test]
    fn writes_kept_dropped_tests_leaks_and_report() {
        let dir = tempfile::tempdir().unwrap();
        let mut df = to_dataframe(&[
            conv("c0", "Write me a limerick about a cat who loves lasagna."),
            conv("c1", "How many moons does Jupiter have?"),
        ])
        .unwrap();
        let input = dir.path().join("in.parquet");
        write_parquet(&mut df, &input).unwrap();
        let test = dir.path().join("koala_test_set.jsonl");
        std::fs::write(
            &test,
            "{\"id\":\"k1\",\"prompt\":\"Write me a limerick about a cat who loves lasagna!\"}\n",
        )
        .unwrap();
        let out = dir.path().join("out");
        let args = |direction| DecontaminateArgs {
            input: input.clone(),
            tests: vec![test.clone()],
            out: out.clone(),
            direction,
            hypothesis: HypothesisArg::Test,
            threshold: 20.0,
            lowercase: false,
            drop_flagged_tests: false,
            coding_threshold: koala_pipeline::leakage::curation::DEFAULT_CODING_THRESHOLD,
        };
        run(args(DirectionArg::Decontaminate)).unwrap();
        let kept = read_parquet(&out.join("kept.parquet")).unwrap();
        let dropped = read_parquet(&out.join("dropped.parquet")).unwrap();
        assert_eq!(kept.height(), 1);
        assert_eq!(
            dropped
                .column("leak_test_id")
                .unwrap()
                .str()
                .unwrap()
                .get(0),
            Some("k1")
        );
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(report["dropped"], 1);
        assert_eq!(
            std::fs::read_to_string(out.join("leaks.jsonl"))
                .unwrap()
                .lines()
                .count(),
            1
        );
        run(args(DirectionArg::Audit)).unwrap();
        let dropped = read_parquet(&out.join("dropped.parquet")).unwrap();
        assert_eq!(
            dropped
                .column("leak_train_id")
                .unwrap()
                .str()
                .unwrap()
                .get(0),
            Some("c0")
        );
    }

    #[test]
    fn a_missing_input_names_the_file() {
        let e = read_table(Path::new("/nonexistent/x.parquet"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/x.parquet"), "{e}");
    }
}
