//! `koala eval generate`: answer an eval set with one or more systems (checkpoint directories,
//! OpenAI-compatible endpoints, or files of answers), resumably. See koala_eval::generate.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use koala_eval::client::ClientConfig;
use koala_eval::generate::{GenerateConfig, generate};
use koala_eval::systems::{SystemOptions, open_system, parse_system};
use koala_testsets::TestPrompt;
use koala_testsets::curation::{DEFAULT_CODING_THRESHOLD, FlagConfig, curate_set};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `koala`, `self-instruct`, or a test-set file.
    #[arg(long)]
    set: String,
    /// `NAME=SPEC` (repeatable): SPEC is a checkpoint directory (`DIR`, `DIR#alpaca`,
    /// `DIR#chat-template`), `openai:BASE_URL#MODEL` (key from OPENAI_API_KEY), or `file:PATH`.
    #[arg(long = "system", required = true)]
    systems: Vec<String>,
    /// Responses JSONL; appended to, and read first to skip what it already holds.
    #[arg(long)]
    out: PathBuf,
    /// Answers in flight at most.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// New tokens per answer at most (default: the endpoint's, or what a checkpoint's context leaves).
    #[arg(long)]
    max_tokens: Option<u32>,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Retries of a failed request (429, 5xx, timeouts, connection errors).
    #[arg(long, default_value_t = 6)]
    retries: u32,
    /// Timeout of one request, in seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout_s: f64,
    /// Only the first N prompts of the set (after curation).
    #[arg(long)]
    limit: Option<usize>,
    /// Device of checkpoint systems: `cpu`, `cuda:N` or `auto`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Answer every prompt. By default the prompts that Koala's test-set curation removes
    /// (non-English, coding) are left out, and listed with their reasons in OUT's
    /// `.dropped.jsonl` next to it.
    #[arg(long)]
    keep_flagged: bool,
    /// The coding-score threshold of that curation (see docs/leakage.md).
    #[arg(long, default_value_t = DEFAULT_CODING_THRESHOLD)]
    coding_threshold: f64,
}

/// Where the prompts that curation left out are listed: `responses.jsonl` →
/// `responses.dropped.jsonl`.
fn dropped_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "responses".into());
    out.with_file_name(format!("{stem}.dropped.jsonl"))
}

/// Koala's test-set curation on the prompts, unless `--keep-flagged`: writes the dropped ones
/// (id and reason, with the flags) atomically, and returns the kept.
fn curate(args: &Args, set: &str, prompts: Vec<TestPrompt>) -> Result<Vec<TestPrompt>> {
    if args.keep_flagged {
        return Ok(prompts);
    }
    if !(args.coding_threshold.is_finite() && args.coding_threshold > 0.0) {
        bail!("--coding-threshold must be a positive number");
    }
    let cfg = FlagConfig {
        coding_threshold: args.coding_threshold,
    };
    let n = prompts.len();
    let (kept, dropped) = curate_set(prompts, &cfg);
    let path = dropped_path(&args.out);
    let mut text = String::new();
    for d in &dropped {
        text.push_str(&serde_json::to_string(d)?);
        text.push('\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    let count = |r: &str| dropped.iter().filter(|d| d.reason == r).count();
    eprintln!(
        "{set}: test-set curation keeps {} of {n} prompts; drops {} non-English, {} coding, {} both \
         (listed in {}; --keep-flagged answers all)",
        kept.len(),
        count("non_english"),
        count("coding"),
        count("non_english+coding"),
        path.display()
    );
    Ok(kept)
}

pub fn run(args: Args) -> Result<()> {
    if !(args.timeout_s.is_finite() && args.timeout_s > 0.0) {
        bail!("--timeout-s must be a positive number of seconds");
    }
    let (set, prompts) =
        koala_testsets::sets::resolve(&args.set).with_context(|| format!("--set {}", args.set))?;
    let mut prompts = curate(&args, &set, prompts)?;
    if let Some(n) = args.limit {
        prompts.truncate(n);
    }
    let opts = SystemOptions {
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        client: ClientConfig {
            retries: args.retries,
            timeout: Duration::from_secs_f64(args.timeout_s),
            ..Default::default()
        },
        device: args.device.clone(),
    };
    let mut systems = Vec::new();
    for s in &args.systems {
        let (name, spec) = parse_system(s)?;
        if systems.iter().any(|(n, _)| n == &name) {
            bail!("--system {s:?}: the name {name} is given twice");
        }
        tracing::info!("system {name}: {spec:?}");
        let sys = open_system(&name, &spec, &opts).with_context(|| format!("--system {s}"))?;
        systems.push((name, sys));
    }
    let cfg = GenerateConfig {
        out: args.out.clone(),
        concurrency: args.concurrency,
        progress: true,
    };
    let rt = tokio::runtime::Runtime::new()?;
    let n_prompts = prompts.len();
    let summary = rt.block_on(generate(&set, &prompts, &systems, &cfg))?;
    eprintln!(
        "{set}: {n_prompts} prompts × {} systems: {} written, {} already there, {} failed → {}",
        systems.len(),
        summary.written,
        summary.resumed,
        summary.failed,
        args.out.display()
    );
    if summary.failed > 0 {
        bail!(
            "{} answers failed (see the log); rerun the same command to ask only those",
            summary.failed
        );
    }
    Ok(())
}
