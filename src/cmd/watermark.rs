//! `koala watermark detect --key K --tokenizer T [--gamma 0.25] [--text S | FILE] [--json]`:
//! tests texts for the green-list watermark that `koala serve-model --watermark-key K` adds
//! (see docs/watermark.md and `koala_model::watermark`).
//!
//! Input: `--text S` is one text. A FILE whose name ends in `.jsonl` holds one text per non-empty
//! line, a JSON object with a string `text` field or, failing that, a `response` field (the
//! shape of our generation and evaluation outputs). Any other FILE is read whole as one text;
//! `-` reads standard input as one text.
//!
//! Each text is tokenised with the tokenizer (`add_special_tokens = false`) and scored from its
//! second token on. One line per text, in input order: `T=… G=… z=… p=… flagged=yes|no`,
//! prefixed by `line=N ` for a `.jsonl` file; with `--json`, one JSON object per text instead.
//! A count of flagged texts goes to standard error.
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use koala_model::Watermark;
use koala_model::text::Tokenizer;
use koala_model::watermark::{Detection, Z_THRESHOLD};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: WatermarkCommand,
}

#[derive(Subcommand, Debug)]
pub enum WatermarkCommand {
    /// Print T, G, the z-score and the p-value of each text; flag texts with z > 4.
    Detect(DetectArgs),
}

#[derive(clap::Args, Debug)]
pub struct DetectArgs {
    /// The watermark key the server was started with (`--watermark-key`).
    #[arg(long)]
    pub key: String,
    /// `tokenizer.json`, or a model directory holding one: the generating model's tokenizer.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// The green fraction γ the server used (`--watermark-gamma`).
    #[arg(long, default_value_t = 0.25)]
    pub gamma: f32,
    /// One text to test.
    #[arg(long, conflicts_with = "file")]
    pub text: Option<String>,
    /// A `.jsonl` file of `{"text": …}` or `{"response": …}` lines, any other file as one
    /// text, or `-` for standard input as one text.
    #[arg(required_unless_present = "text")]
    pub file: Option<PathBuf>,
    /// One JSON object per text instead of the `T=… G=…` lines.
    #[arg(long)]
    pub json: bool,
}

/// One text to score; `line` is its 1-based line in a `.jsonl` file.
#[derive(Debug, PartialEq)]
struct Input {
    line: Option<usize>,
    text: String,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        WatermarkCommand::Detect(a) => detect(a),
    }
}

fn detect(args: DetectArgs) -> Result<()> {
    // δ does not enter detection; 0 keeps `new` from validating a value nobody gave.
    let wm = Watermark::new(&args.key, args.gamma, 0.0).map_err(|e| anyhow!("--gamma: {e}"))?;
    let tk_path = if args.tokenizer.is_dir() {
        args.tokenizer.join("tokenizer.json")
    } else {
        args.tokenizer.clone()
    };
    let tk = Tokenizer::from_file(&tk_path)
        .map_err(|e| anyhow!("{}: cannot load the tokenizer: {e}", tk_path.display()))?;
    let inputs = match (&args.text, &args.file) {
        (Some(text), _) => vec![Input {
            line: None,
            text: text.clone(),
        }],
        (None, Some(file)) => read_inputs(file)?,
        (None, None) => bail!("give --text or a FILE"),
    };
    let mut flagged = 0;
    for input in &inputs {
        let d = score_text(&wm, &tk, &input.text).with_context(|| {
            input
                .line
                .map_or("the text".into(), |l| format!("line {l}"))
        })?;
        flagged += usize::from(d.flagged);
        println!("{}", render(input.line, &d, args.json)?);
    }
    eprintln!(
        "{flagged} of {} text(s) flagged as watermarked (z > {Z_THRESHOLD}, gamma {})",
        inputs.len(),
        args.gamma
    );
    Ok(())
}

/// Tokenizes `text` as the server's output is tokenized (no special tokens) and scores it.
fn score_text(wm: &Watermark, tk: &Tokenizer, text: &str) -> Result<Detection> {
    let enc = tk
        .encode(text, false)
        .map_err(|e| anyhow!("tokenizing: {e}"))?;
    Ok(wm.score(enc.get_ids()))
}

/// One output line for one text.
fn render(line: Option<usize>, d: &Detection, json: bool) -> Result<String> {
    if json {
        let mut v = serde_json::to_value(d)?;
        if let Some(l) = line {
            v["line"] = serde_json::json!(l);
        }
        return Ok(v.to_string());
    }
    let prefix = line.map_or(String::new(), |l| format!("line={l} "));
    Ok(format!(
        "{prefix}T={} G={} z={:.3} p={:.3e} flagged={}",
        d.tokens_scored,
        d.green,
        d.z,
        d.p_value,
        if d.flagged { "yes" } else { "no" }
    ))
}

/// The texts of FILE: one per line of a `.jsonl` file, else the whole file (or stdin for `-`).
fn read_inputs(file: &Path) -> Result<Vec<Input>> {
    let name = file.display().to_string();
    let content = if name == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read standard input")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {name}"))?
    };
    if !name.ends_with(".jsonl") {
        return Ok(vec![Input {
            line: None,
            text: content,
        }]);
    }
    let mut out = Vec::new();
    for (i, line) in content.lines().enumerate() {
        let lineno = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{name}:{lineno}: not a JSON object"))?;
        let text = ["text", "response"]
            .iter()
            .find_map(|k| v.get(k).and_then(|t| t.as_str()))
            .with_context(|| {
                format!("{name}:{lineno}: expected a string field `text` or `response`")
            })?;
        out.push(Input {
            line: Some(lineno),
            text: text.to_string(),
        });
    }
    if out.is_empty() {
        bail!("{name}: no texts (every line is empty)");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_lines_take_text_then_response() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        std::fs::write(
            &p,
            "{\"text\": \"a\", \"response\": \"b\"}\n\n{\"response\": \"c\"}\n{\"text\": \"d\"}\n",
        )
        .unwrap();
        let got = read_inputs(&p).unwrap();
        let want = [(1, "a"), (3, "c"), (4, "d")].map(|(l, t)| Input {
            line: Some(l),
            text: t.to_string(),
        });
        assert_eq!(got, want);
        std::fs::write(&p, "{\"text\": \"a\"}\n{\"prompt\": \"x\"}\n").unwrap();
        let e = format!("{:#}", read_inputs(&p).unwrap_err());
        assert!(
            e.contains("out.jsonl:2") && e.contains("`text` or `response`"),
            "{e}"
        );
        std::fs::write(&p, "not json\n").unwrap();
        assert!(format!("{:#}", read_inputs(&p).unwrap_err()).contains("out.jsonl:1"));
    }

    #[test]
    fn other_files_are_one_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("reply.txt");
        std::fs::write(&p, "line one\n{\"text\": \"x\"}\n").unwrap();
        let got = read_inputs(&p).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].text, "line one\n{\"text\": \"x\"}\n");
        assert_eq!(got[0].line, None);
    }

    /// A text written to be green (each word chosen, among a few, to maximise the green count of
    /// the re-tokenized text) is flagged through the real tokenizer; ordinary prose is not.
    #[test]
    fn detects_green_text_through_the_tokenizer() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/model/tests/fixtures/tiny_hf/tokenizer.json"
        );
        let tk = Tokenizer::from_file(path).unwrap();
        let wm = Watermark::new("cli-test", 0.25, 2.0).unwrap();
        let words = [
            "the", "a", "model", "data", "is", "was", "of", "to", "and", "we", "it", "on", "for",
            "with", "text", "train", "small", "large", "good", "new", "then", "when", "so", "at",
        ];
        let mut text = String::from("Koala");
        for _ in 0..80 {
            let best = words
                .iter()
                .map(|w| format!("{text} {w}"))
                .max_by_key(|t| score_text(&wm, &tk, t).unwrap().green)
                .unwrap();
            text = best;
        }
        let d = score_text(&wm, &tk, &text).unwrap();
        assert!(d.flagged, "{d:?} for {text:?}");
        let readme = include_str!("../../README.md");
        for para in readme.split("\n\n").filter(|p| p.len() > 200) {
            let d = score_text(&wm, &tk, para).unwrap();
            assert!(!d.flagged, "{d:?} for {para:?}");
        }
        // The README's command block (as of this commit), with its runs of spaces, repeats
        // (space, space) bigrams: counting every position instead of each distinct bigram once
        // would flag it at z ≈ 5.4.
        let block = concat!(
            "```sh\n",
            "koala synth --scale small|koala --out DIR          # synthetic corpora in the real published formats\n",
            "koala load --input DIR --out conversations.parquet # the seven loaders into one table\n",
            "koala curate --config pipeline/presets/koala-all.toml --input DIR --out DIR\n",
            "koala bleu FILE.jsonl [--corpus]                   # sacrebleu-equal BLEU\n",
            "koala decontaminate --input kept.parquet --test koala_test_set.jsonl --out DIR\n",
            "koala tokenize --input DIR --out shards/ [--tokenizer tokenizer.json] [--format koala|alpaca|chat-template] [--pack|--pad]\n",
            "koala train --config train.toml                    # local training; Ctrl-C checkpoints, rerun resumes\n",
            "koala logits --model DIR --ids ids.json --out logits.npy\n",
            "koala generate --model DIR --prompt \"BEGINNING OF CONVERSATION: USER: Hi GPT:\" --stop \"</s>\"\n",
            "koala serve --config daemon.toml                   # the gRPC daemon (also: koala-trainerd)\n",
            "koala submit job.toml --watch; koala jobs; koala job ID; koala cancel ID\n",
            "```",
        );
        let ids = tk.encode(block, false).unwrap().get_ids().to_vec();
        let every = ids.windows(2).filter(|p| wm.is_green(p[0], p[1])).count();
        let d = wm.detection(ids.len() - 1, every);
        assert!(d.flagged && (d.z - 5.36).abs() < 0.01, "{d:?}");
        assert!(!score_text(&wm, &tk, block).unwrap().flagged);
        let other = Watermark::new("another-key", 0.25, 2.0).unwrap();
        assert!(!score_text(&other, &tk, &text).unwrap().flagged);
    }

    #[test]
    fn output_lines() {
        let wm = Watermark::new("k", 0.25, 0.0).unwrap();
        let d = wm.detection(48, 25);
        assert_eq!(
            render(Some(3), &d, false).unwrap(),
            "line=3 T=48 G=25 z=4.333 p=7.343e-6 flagged=yes"
        );
        assert_eq!(
            render(None, &wm.detection(100, 25), false).unwrap(),
            "T=100 G=25 z=0.000 p=5.000e-1 flagged=no"
        );
        let v: serde_json::Value =
            serde_json::from_str(&render(Some(3), &d, true).unwrap()).unwrap();
        assert_eq!(v["line"], 3);
        assert_eq!(v["tokens_scored"], 48);
        assert_eq!(v["green"], 25);
        assert_eq!(v["flagged"], true);
        assert!(v["z"].as_f64().unwrap() > 4.0);
        assert!(v["p_value"].as_f64().unwrap() < 1e-5);
    }
}
