//! `koala eval judge`: rate response pairs with an LLM judge (FastChat's pairwise prompt, both
//! orders, disagreement = tie), cached. See koala_eval::judge.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use koala_eval::ResponseRow;
use koala_eval::client::{ChatClient, ClientConfig};
use koala_eval::judge::{JudgeConfig, Pairs, judge};
use koala_eval::rows::read_jsonl;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Responses JSONL from `koala eval generate`.
    #[arg(long)]
    responses: PathBuf,
    /// The judge: `openai:BASE_URL#MODEL` (key from OPENAI_API_KEY).
    #[arg(long)]
    judge: String,
    /// Ratings JSONL (rater `judge:MODEL`).
    #[arg(long)]
    out: PathBuf,
    /// Judgement cache (JSONL): a rerun asks only what it has not asked.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// `all` pairs of systems, or `vs:NAME`: every system against NAME.
    #[arg(long, default_value = "all")]
    pairs: Pairs,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Max tokens of a judge reply.
    #[arg(long, default_value_t = 1024)]
    max_tokens: u32,
    /// Retries of a failed request (429, 5xx, timeouts, connection errors).
    #[arg(long, default_value_t = 6)]
    retries: u32,
    /// Timeout of one request, in seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout_s: f64,
    /// USD per million prompt tokens (for the cost estimate).
    #[arg(long, default_value_t = 0.0)]
    price_in: f64,
    /// USD per million completion tokens.
    #[arg(long, default_value_t = 0.0)]
    price_out: f64,
}

pub fn run(args: Args) -> Result<()> {
    if !(args.timeout_s.is_finite() && args.timeout_s > 0.0) {
        bail!("--timeout-s must be a positive number of seconds");
    }
    let rows: Vec<ResponseRow> = read_jsonl(&args.responses)?;
    let client = ChatClient::from_spec(
        &args.judge,
        ClientConfig {
            retries: args.retries,
            timeout: Duration::from_secs_f64(args.timeout_s),
            ..Default::default()
        },
    )?;
    let cfg = JudgeConfig {
        out: args.out.clone(),
        cache: args.cache.clone(),
        pairs: args.pairs.clone(),
        concurrency: args.concurrency,
        max_tokens: Some(args.max_tokens),
        price_in: args.price_in,
        price_out: args.price_out,
        progress: true,
    };
    let rt = tokio::runtime::Runtime::new()?;
    let s = rt.block_on(judge(&rows, client, &cfg))?;
    eprintln!(
        "{} ratings → {}: A {} / B {} / tie {} ({} flipped with the order)",
        s.ratings,
        args.out.display(),
        s.wins_a,
        s.wins_b,
        s.ties,
        s.flipped
    );
    eprintln!(
        "{} judgements: {} from the cache, {} asked, {} without a verdict (counted as ties){}",
        s.judgements,
        s.cached,
        s.judgements - s.cached,
        s.unparsed,
        if s.missing > 0 {
            format!("; {} prompt/pair combinations lacked an answer", s.missing)
        } else {
            String::new()
        }
    );
    eprintln!(
        "tokens: {} prompt + {} completion = {}; cost ${:.4}",
        s.usage.prompt_tokens, s.usage.completion_tokens, s.usage.total_tokens, s.cost_usd
    );
    Ok(())
}
