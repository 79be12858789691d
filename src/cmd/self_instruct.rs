//! `koala self-instruct …`: Stanford Alpaca's self-instruct tools (see docs/self-instruct.md).
//!
//! - `dedup --input FILE --out DIR [--threshold 0.7] [--against FILE] [--field instruction]`:
//!   Alpaca's ROUGE-L similarity filter on its own, in input order. An instruction is dropped when
//!   its ROUGE-L F (equal to `rouge_score` 0.1.2) with an instruction kept before it, or with one
//!   of `--against` (always kept, e.g. the seed tasks), is above the threshold. Writes
//!   `DIR/kept.jsonl` (the input records as they were) and `DIR/dropped.jsonl` (each record plus
//!   `rouge_l`, the best score, `similar_to`, the instruction it matched, and `similar_to_file` /
//!   `similar_to_line`), and prints a one-line JSON summary.
//!
//! - `generate --seeds FILE --api-base URL --model NAME --out DIR …`: the generator; see
//!   `generate.rs` beside this file.
//!
//! Input files are JSONL (one object per non-empty line) or, when the first non-blank character
//! is `[`, a JSON list of objects (Alpaca's own `regen.json` / `alpaca_data.json`). The
//! instruction is the string field `--field`.
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use koala_pipeline::selfinstruct::dedup::{self, Similar};
use serde_json::{Map, Value};

mod generate;
pub use generate::GenerateArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: SelfInstructCommand,
}

#[derive(Subcommand, Debug)]
pub enum SelfInstructCommand {
    /// Alpaca's ROUGE-L similarity filter alone: keep an instruction unless it is too close to
    /// one kept before it (exact, and fast at 52K).
    Dedup(DedupArgs),
    /// Alpaca's self-instruct generator against any OpenAI-compatible teacher: prompts with 3
    /// seeded seed tasks, Alpaca's parse and filters, resumable (see docs/self-instruct.md).
    Generate(Box<GenerateArgs>),
}

#[derive(clap::Args, Debug)]
pub struct DedupArgs {
    /// Instructions to filter, in order: JSONL of objects, or a JSON list of objects.
    #[arg(long)]
    pub input: PathBuf,
    /// Output directory for kept.jsonl and dropped.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Drop when ROUGE-L F is above this (Alpaca: 0.7).
    #[arg(long, default_value_t = dedup::ALPACA_THRESHOLD)]
    pub threshold: f64,
    /// Instructions that count as already kept (e.g. the seed tasks); same formats as --input.
    #[arg(long)]
    pub against: Option<PathBuf>,
    /// The string field holding the instruction.
    #[arg(long, default_value = "instruction")]
    pub field: String,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        SelfInstructCommand::Dedup(a) => run_dedup(a),
        SelfInstructCommand::Generate(a) => generate::run(*a),
    }
}

/// One input record: the object, its instruction, its 1-based line (or list position).
pub struct Record {
    pub value: Map<String, Value>,
    pub instruction: String,
    pub line: usize,
}

/// Reads JSONL or a JSON list of objects, each with a string `field`; errors name file, line
/// (or list item) and field.
pub fn read_records(path: &Path, field: &str) -> Result<Vec<Record>> {
    let name = path.display();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {name}"))?;
    let mut out = Vec::new();
    let take = |v: Value, line: usize, what: &str| -> Result<Record> {
        let Value::Object(map) = v else {
            bail!("{name}:{what} {line}: expected a JSON object");
        };
        let instruction = match map.get(field) {
            Some(Value::String(s)) => s.clone(),
            Some(_) => bail!("{name}:{what} {line}: field `{field}`: expected a string"),
            None => bail!("{name}:{what} {line}: field `{field}`: missing"),
        };
        Ok(Record {
            value: map,
            instruction,
            line,
        })
    };
    if text.trim_start().starts_with('[') {
        let items: Vec<Value> = serde_json::from_str(&text)
            .with_context(|| format!("{name}: expected a JSON list of objects"))?;
        for (i, v) in items.into_iter().enumerate() {
            out.push(take(v, i + 1, "item")?);
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{name}:line {}: invalid JSON", i + 1))?;
            out.push(take(v, i + 1, "line")?);
        }
    }
    Ok(out)
}

fn run_dedup(args: DedupArgs) -> Result<()> {
    let items = read_records(&args.input, &args.field)?;
    let against = match &args.against {
        Some(p) => read_records(p, &args.field)?,
        None => Vec::new(),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let bar = ProgressBar::new(items.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("dedup {bar:40} {pos}/{len} [{elapsed} < {eta}]")
            .context("progress template")?,
    );
    let t0 = Instant::now();
    let a: Vec<&str> = against.iter().map(|r| r.instruction.as_str()).collect();
    let x: Vec<&str> = items.iter().map(|r| r.instruction.as_str()).collect();
    let decisions = dedup::dedup(&a, &x, args.threshold, Some(&bar))?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let open = |n: &str| -> Result<BufWriter<std::fs::File>> {
        let p = args.out.join(n);
        Ok(BufWriter::new(std::fs::File::create(&p).with_context(
            || format!("cannot create {}", p.display()),
        )?))
    };
    let (mut kept_w, mut dropped_w) = (open("kept.jsonl")?, open("dropped.jsonl")?);
    let (mut kept, mut dropped) = (0usize, 0usize);
    let input_name = args.input.display().to_string();
    let against_name = args
        .against
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    for (rec, d) in items.iter().zip(&decisions) {
        match d.best {
            None => {
                kept += 1;
                writeln!(kept_w, "{}", Value::Object(rec.value.clone()))?;
            }
            Some((who, f)) => {
                dropped += 1;
                let (r, file) = match who {
                    Similar::Against(i) => (&against[i], &against_name),
                    Similar::Input(i) => (&items[i], &input_name),
                };
                let mut v = rec.value.clone();
                v.insert("rouge_l".into(), f.into());
                v.insert("similar_to".into(), r.instruction.clone().into());
                v.insert("similar_to_file".into(), file.clone().into());
                v.insert("similar_to_line".into(), r.line.into());
                writeln!(dropped_w, "{}", Value::Object(v))?;
            }
        }
    }
    kept_w.flush()?;
    dropped_w.flush()?;
    tracing::info!(kept, dropped, seconds = secs, "self-instruct dedup done");
    println!(
        "{}",
        serde_json::json!({
            "input": items.len(), "against": against.len(), "threshold": args.threshold,
            "kept": kept, "dropped": dropped, "seconds": secs,
        })
    );
    Ok(())
}
