//! `koala eval generate`: answer an eval set with one or more systems (checkpoint directories,
//! OpenAI-compatible endpoints, or files of answers), resumably. See koala_eval::generate.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use koala_eval::client::ClientConfig;
use koala_eval::generate::{GenerateConfig, generate};
use koala_eval::systems::{SystemOptions, open_system, parse_system};

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
    /// Only the first N prompts of the set.
    #[arg(long)]
    limit: Option<usize>,
    /// Device of checkpoint systems: `cpu`, `cuda:N` or `auto`.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: Args) -> Result<()> {
    if !(args.timeout_s.is_finite() && args.timeout_s > 0.0) {
        bail!("--timeout-s must be a positive number of seconds");
    }
    let (set, mut prompts) =
        koala_testsets::sets::resolve(&args.set).with_context(|| format!("--set {}", args.set))?;
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
