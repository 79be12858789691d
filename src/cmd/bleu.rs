//! `koala bleu FILE.jsonl [--corpus] [--lowercase]`: sacrebleu-equal BLEU from the command line.
//!
//! Input lines are `{"hyp": str, "refs": [str, ...]}`. Without `--corpus`, prints one JSON line
//! per input line with the sentence BLEU and its statistics (sacrebleu's `sentence_bleu`); with
//! `--corpus`, prints one JSON line with the corpus BLEU (sacrebleu's `corpus_bleu`). Use `-` to
//! read standard input.
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use koala_pipeline::bleu::{self, BleuOptions};
use serde::Deserialize;

#[derive(Args, Debug)]
pub struct BleuArgs {
    /// JSONL file of {"hyp": str, "refs": [str, ...]} lines, or `-` for standard input.
    pub file: PathBuf,
    /// Print the corpus BLEU of the whole file instead of one sentence BLEU per line.
    #[arg(long)]
    pub corpus: bool,
    /// Lowercase hypotheses and references (sacrebleu `-lc`).
    #[arg(long)]
    pub lowercase: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    hyp: String,
    refs: Vec<String>,
}

pub fn run(args: BleuArgs) -> Result<()> {
    let name = args.file.display().to_string();
    let reader: Box<dyn BufRead> = if name == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        Box::new(BufReader::new(
            std::fs::File::open(&args.file).with_context(|| format!("cannot open {name}"))?,
        ))
    };
    let opts = BleuOptions {
        lowercase: args.lowercase,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut hyps, mut refs) = (Vec::new(), Vec::new());
    for (i, line) in reader.lines().enumerate() {
        let lineno = i + 1;
        let line = line.with_context(|| format!("{name}:{lineno}: cannot read"))?;
        if line.trim().is_empty() {
            continue;
        }
        let rec: Line = serde_json::from_str(&line).with_context(|| {
            format!("{name}:{lineno}: expected {{\"hyp\": str, \"refs\": [str, ...]}}")
        })?;
        if rec.refs.is_empty() {
            bail!("{name}:{lineno}: field `refs`: needs at least one reference");
        }
        if args.corpus {
            hyps.push(rec.hyp);
            refs.push(rec.refs);
        } else {
            let s = bleu::sentence_bleu(&rec.hyp, &rec.refs, opts)
                .with_context(|| format!("{name}:{lineno}"))?;
            let mut v = serde_json::to_value(&s)?;
            v["line"] = serde_json::json!(lineno);
            writeln!(out, "{v}")?;
        }
    }
    if args.corpus {
        if hyps.is_empty() {
            bail!("{name}: no input lines");
        }
        let s = bleu::corpus_bleu(&hyps, &refs, opts)?;
        let mut v = serde_json::to_value(&s)?;
        v["segments"] = serde_json::json!(hyps.len());
        v["signature"] = serde_json::json!(format!(
            "case:{}|eff:no|tok:13a|smooth:exp",
            if args.lowercase { "lc" } else { "mixed" }
        ));
        writeln!(out, "{v}")?;
    }
    out.flush()?;
    Ok(())
}
