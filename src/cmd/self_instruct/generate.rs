//! `koala self-instruct generate`: Stanford Alpaca's self-instruct loop against any
//! OpenAI-compatible teacher (`/v1/completions` or `/v1/chat/completions`).
//!
//! Each request shows the teacher our requirements text and 3 seed tasks drawn with a seeded RNG
//! (request `r` of run seed `S` always draws the same 3), numbered `1.`–`3.`, and ends with
//! `4. Instruction:`; the teacher continues the list up to 20 (stop sequences `\n20`, `20.`).
//! Each request also carries an OpenAI `seed` derived from `S` and `r` ([`request_seed`]), so a
//! teacher that honours seeds (ours does) samples the same text when the run is repeated.
//! The response is parsed as Alpaca does (split on `###`, `N. Instruction/Input/Output:` with the
//! expected N; the last piece dropped when `finish_reason == "length"`), then Alpaca's rule
//! filters and the ROUGE-L filter against every instruction kept so far, seeds included.
//!
//! **Resumable, exactly once.** Every successful response is appended to `DIR/responses.jsonl`
//! (flushed and synced) *before* it is processed, and processing is a deterministic function of
//! that journal (in its order). `regen.json`, `dropped.jsonl` and `report.json` are derived from it
//! (rewritten every few seconds and at the end). A rerun with the same DIR replays the journal
//! (dropping a torn last line from a crash) and continues with new request numbers, so no parsed
//! instruction is lost or counted twice. `DIR/run.json` pins the seed, threshold and prompt:
//! resuming with different ones is an error.
//!
//! **Requests.** At most `--concurrency` in flight (default `--request-batch-size`, 5). 429, 5xx,
//! timeouts, connection errors and unreadable bodies are retried with exponential backoff
//! (`--retry-initial-ms` doubling, capped at 60 s), or after `Retry-After` seconds when the server
//! sends it; other statuses stop the run with the server's message (the journal keeps what was
//! done). The bearer key, if any, is read from the environment variable `--api-key-env`.
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use koala_pipeline::selfinstruct::dedup::{ALPACA_THRESHOLD, SimilarityFilter};
use koala_pipeline::selfinstruct::generate::{
    DEFAULT_PROMPT, Drop, PROMPT_EXAMPLES, Piece, Task, draw_examples, encode_prompt,
    load_seed_tasks, parse_response, rule_filter,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `POST {api-base}/completions` with `prompt` (Alpaca's way).
    Completions,
    /// `POST {api-base}/chat/completions` with the prompt as one user message.
    Chat,
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Seed tasks, Alpaca's seed_tasks.jsonl (shipped: pipeline/data/alpaca/seed_tasks.jsonl).
    #[arg(long)]
    pub seeds: PathBuf,
    /// Base URL of the OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1.
    #[arg(long)]
    pub api_base: String,
    /// Model name sent with each request.
    #[arg(long)]
    pub model: String,
    #[arg(long, value_enum, default_value_t = Api::Completions)]
    pub api: Api,
    /// Stop once this many machine instructions are kept (requests in flight still count).
    #[arg(long, default_value_t = 100)]
    pub num_instructions: usize,
    /// Prompts per round (Alpaca: 5 per request); the default concurrency.
    #[arg(long, default_value_t = 5)]
    pub request_batch_size: usize,
    /// Requests in flight at most (default: --request-batch-size).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// A file whose text replaces our requirements text (the examples follow it).
    #[arg(long)]
    pub prompt: Option<PathBuf>,
    /// Seed of the seed-task draws.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output directory (rerun with the same one to resume).
    #[arg(long)]
    pub out: PathBuf,
    /// ROUGE-L threshold of the similarity filter.
    #[arg(long, default_value_t = ALPACA_THRESHOLD)]
    pub threshold: f64,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 3072)]
    pub max_tokens: u32,
    /// Retries per request after the first attempt.
    #[arg(long, default_value_t = 8)]
    pub max_retries: u32,
    /// First backoff in milliseconds (doubles each retry, at most 60 s).
    #[arg(long, default_value_t = 1000)]
    pub retry_initial_ms: u64,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 600.0)]
    pub timeout_s: f64,
    /// USD per 1K tokens for the cost estimate: `P` (prompt and completion) or `P,C`.
    #[arg(long)]
    pub price_per_1k: Option<String>,
    /// Environment variable holding the API key (sent as a bearer token when set).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// Stop after this many requests in total (journal included), kept count notwithstanding.
    #[arg(long)]
    pub max_requests: Option<u64>,
}

/// One journal line: a teacher response as received.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Response {
    request: u64,
    text: String,
    finish_reason: String,
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// What `run.json` pins for a resumed run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunPin {
    seed: u64,
    threshold: f64,
    prompt_fnv1a: String,
    seeds: usize,
}

/// The derived state: kept instructions, drops, counters.
struct State {
    filter: SimilarityFilter,
    /// Every instruction in the filter, in order (seeds first).
    all: Vec<String>,
    kept: Vec<Task>,
    dropped: Vec<Value>,
    by_reason: BTreeMap<&'static str, u64>,
    requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    generated: u64,
    max_request: Option<u64>,
}

impl State {
    fn new(seeds: &[Task], threshold: f64) -> Result<Self> {
        let mut filter = SimilarityFilter::new(threshold)?;
        for s in seeds {
            filter.insert(&s.instruction);
        }
        Ok(Self {
            filter,
            all: seeds.iter().map(|s| s.instruction.clone()).collect(),
            kept: Vec::new(),
            dropped: Vec::new(),
            by_reason: BTreeMap::new(),
            requests: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            generated: 0,
            max_request: None,
        })
    }

    /// Parses and filters one response (deterministic: replay gives the same state).
    fn process(&mut self, r: &Response) {
        self.requests += 1;
        self.prompt_tokens += r.prompt_tokens;
        self.completion_tokens += r.completion_tokens;
        self.max_request = Some(self.max_request.map_or(r.request, |m| m.max(r.request)));
        for piece in parse_response(PROMPT_EXAMPLES, &r.text, &r.finish_reason) {
            self.generated += 1;
            match piece {
                Piece::Dropped { raw, why } => self.drop(json!({ "raw": raw }), why, r.request),
                Piece::Task(t) => {
                    let why = rule_filter(&t.instruction).or_else(|| {
                        self.filter
                            .best_match(&t.instruction)
                            .map(|(k, f)| Drop::Similar {
                                rouge_l: f,
                                similar_to: self.all[k].clone(),
                            })
                    });
                    match why {
                        Some(why) => {
                            let v = serde_json::to_value(&t).unwrap_or(Value::Null);
                            self.drop(v, why, r.request);
                        }
                        None => {
                            self.filter.insert(&t.instruction);
                            self.all.push(t.instruction.clone());
                            self.kept.push(t);
                        }
                    }
                }
            }
        }
    }

    fn drop(&mut self, mut v: Value, why: Drop, request: u64) {
        *self.by_reason.entry(why.name()).or_insert(0) += 1;
        if let (Value::Object(m), Ok(Value::Object(w))) = (&mut v, serde_json::to_value(&why)) {
            m.extend(w);
            m.insert("request".into(), request.into());
        }
        self.dropped.push(v);
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

struct Prices(f64, f64);

fn parse_prices(s: &str) -> Result<Prices> {
    let p: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("--price-per-1k {s:?}: expected P or P,C (USD per 1K tokens)"))?;
    match p[..] {
        [a] => Ok(Prices(a, a)),
        [a, b] => Ok(Prices(a, b)),
        _ => bail!("--price-per-1k {s:?}: expected P or P,C"),
    }
}

#[allow(clippy::too_many_arguments)]
fn write_outputs(
    dir: &Path,
    st: &State,
    args: &GenerateArgs,
    seeds: usize,
    prices: Option<&Prices>,
    attempts: u64,
    retries: u64,
    elapsed: f64,
) -> Result<()> {
    write_atomic(
        &dir.join("regen.json"),
        &serde_json::to_vec_pretty(&st.kept)?,
    )?;
    let mut d = Vec::new();
    for v in &st.dropped {
        writeln!(d, "{v}")?;
    }
    write_atomic(&dir.join("dropped.jsonl"), &d)?;
    let cost = prices
        .map(|p| (st.prompt_tokens as f64 * p.0 + st.completion_tokens as f64 * p.1) / 1000.0);
    let report = json!({
        "model": args.model,
        "api": args.api,
        "requests": st.requests,
        "attempts_this_run": attempts,
        "retries_this_run": retries,
        "prompt_tokens": st.prompt_tokens,
        "completion_tokens": st.completion_tokens,
        "estimated_cost_usd": cost,
        "seed_tasks": seeds,
        "generated": st.generated,
        "kept": st.kept.len(),
        "dropped": st.dropped.len(),
        "dropped_by_reason": st.by_reason,
        "num_instructions": args.num_instructions,
        "elapsed_s_this_run": elapsed,
    });
    write_atomic(
        &dir.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )
}

/// Reads the journal; a torn last line (a crash mid-append) is cut off with a warning.
fn read_journal(path: &Path) -> Result<Vec<Response>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut good_len = 0usize;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let complete = line.ends_with('\n');
        match serde_json::from_str::<Response>(line.trim_end()) {
            Ok(r) if complete => {
                out.push(r);
                good_len += line.len();
            }
            _ if i + 1 == lines.len() => {
                tracing::warn!(
                    "{}:{}: torn last line (interrupted write) dropped; its request is redone",
                    path.display(),
                    i + 1
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                f.set_len(good_len as u64)?;
            }
            Err(e) => bail!("{}:{}: invalid journal line: {e}", path.display(), i + 1),
            Ok(_) => bail!("{}:{}: incomplete journal line", path.display(), i + 1),
        }
    }
    Ok(out)
}

fn prompt_hash(s: &str) -> String {
    // FNV-1a, only to notice a changed prompt between runs.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

struct Client {
    http: reqwest::Client,
    url: String,
    key: Option<String>,
    args_model: String,
    api: Api,
    /// The run's seed (`--seed`), mixed with the request number into the request's `seed`.
    seed: u64,
    temperature: f64,
    top_p: f64,
    max_tokens: u32,
    max_retries: u32,
    retry_initial: Duration,
    attempts: AtomicU64,
    retries: AtomicU64,
}

/// The OpenAI `seed` of request `request` in a run seeded `seed`: a SplitMix64 mix of the two,
/// kept to the non-negative `i64` range that OpenAI's API accepts.
pub fn request_seed(seed: u64, request: u64) -> i64 {
    let mut z = seed ^ request.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 1) as i64
}

enum Failure {
    Retry(String, Option<Duration>),
    Fatal(anyhow::Error),
}

impl Client {
    fn body(&self, request: u64, prompt: &str) -> Value {
        let mut b = json!({
            "model": self.args_model,
            "seed": request_seed(self.seed, request),
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "n": 1,
            "stop": ["\n20", "20."],
        });
        match self.api {
            Api::Completions => b["prompt"] = json!(prompt),
            Api::Chat => b["messages"] = json!([{"role": "user", "content": prompt}]),
        }
        b
    }

    async fn once(&self, request: u64, body: &Value) -> Result<Response, Failure> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let mut rb = self.http.post(&self.url).json(body);
        if let Some(k) = &self.key {
            rb = rb.bearer_auth(k);
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| Failure::Retry(format!("request failed: {e}"), None))?;
        let status = resp.status();
        if status.as_u16() == 429 || status.is_server_error() {
            let after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(600.0)));
            return Err(Failure::Retry(format!("HTTP {status}"), after));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Failure::Retry(format!("reading the body: {e}"), None))?;
        if !status.is_success() {
            return Err(Failure::Fatal(anyhow!(
                "{}: HTTP {status}: {}",
                self.url,
                String::from_utf8_lossy(&bytes)
            )));
        }
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Retry(format!("body is not JSON: {e}"), None))?;
        let choice = &v["choices"][0];
        let text = match self.api {
            Api::Completions => choice["text"].as_str(),
            Api::Chat => choice["message"]["content"].as_str(),
        };
        let Some(text) = text else {
            return Err(Failure::Fatal(anyhow!(
                "{}: response has no choices[0].{}: {v}",
                self.url,
                if self.api == Api::Chat {
                    "message.content"
                } else {
                    "text"
                }
            )));
        };
        let mut text = text.to_owned();
        if self.api == Api::Chat {
            // A chat model may restate the label the prompt ends with.
            let label = format!("{}. Instruction:", PROMPT_EXAMPLES + 1);
            if let Some(rest) = text.trim_start().strip_prefix(&label) {
                text = rest.to_owned();
            }
        }
        Ok(Response {
            request,
            text,
            finish_reason: choice["finish_reason"]
                .as_str()
                .unwrap_or("stop")
                .to_owned(),
            prompt_tokens: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            completion_tokens: v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        })
    }

    async fn call(&self, request: u64, prompt: String) -> Result<Response> {
        let body = self.body(request, &prompt);
        let mut attempt = 0u32;
        loop {
            match self.once(request, &body).await {
                Ok(r) => return Ok(r),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(why, after)) => {
                    if attempt >= self.max_retries {
                        bail!(
                            "request {request}: gave up after {} attempts: {why}",
                            attempt + 1
                        );
                    }
                    let backoff = after.unwrap_or_else(|| {
                        (self.retry_initial * 2u32.saturating_pow(attempt.min(16)))
                            .min(Duration::from_secs(60))
                    });
                    tracing::warn!(request, attempt, ?backoff, "{why}; retrying");
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    attempt += 1;
                }
            }
        }
    }
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let seeds = load_seed_tasks(&args.seeds)?;
    if seeds.len() < PROMPT_EXAMPLES {
        bail!(
            "{}: {} seed tasks; need at least {PROMPT_EXAMPLES}",
            args.seeds.display(),
            seeds.len()
        );
    }
    let header = match &args.prompt {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read --prompt {}", p.display()))?
            .trim_end()
            .to_owned(),
        None => DEFAULT_PROMPT.to_owned(),
    };
    let prices = args.price_per_1k.as_deref().map(parse_prices).transpose()?;
    let concurrency = args.concurrency.unwrap_or(args.request_batch_size).max(1);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;

    let pin = RunPin {
        seed: args.seed,
        threshold: args.threshold,
        prompt_fnv1a: prompt_hash(&header),
        seeds: seeds.len(),
    };
    let pin_path = args.out.join("run.json");
    if let Ok(text) = std::fs::read_to_string(&pin_path) {
        let old: RunPin = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a run file", pin_path.display()))?;
        if old != pin {
            bail!(
                "{} was started with {old:?}; this run has {pin:?}. Use a new --out to change them.",
                args.out.display()
            );
        }
    } else {
        write_atomic(&pin_path, serde_json::to_string_pretty(&pin)?.as_bytes())?;
    }

    let journal_path = args.out.join("responses.jsonl");
    let mut st = State::new(&seeds, args.threshold)?;
    for r in read_journal(&journal_path)? {
        st.process(&r);
    }
    if st.requests > 0 {
        tracing::info!(
            requests = st.requests,
            kept = st.kept.len(),
            "resumed from {}",
            journal_path.display()
        );
    }
    let mut journal = BufWriter::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal_path)
            .with_context(|| format!("cannot open {}", journal_path.display()))?,
    );

    let key = std::env::var(&args.api_key_env)
        .ok()
        .filter(|k| !k.is_empty());
    let endpoint = match args.api {
        Api::Completions => "completions",
        Api::Chat => "chat/completions",
    };
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(args.timeout_s.max(0.001)))
            .build()
            .context("HTTP client")?,
        url: format!("{}/{endpoint}", args.api_base.trim_end_matches('/')),
        key,
        args_model: args.model.clone(),
        api: args.api,
        seed: args.seed,
        temperature: args.temperature,
        top_p: args.top_p,
        max_tokens: args.max_tokens,
        max_retries: args.max_retries,
        retry_initial: Duration::from_millis(args.retry_initial_ms),
        attempts: AtomicU64::new(0),
        retries: AtomicU64::new(0),
    });

    let bar = ProgressBar::new(args.num_instructions as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "generate {bar:40} {pos}/{len} kept [{elapsed} < {eta}] {msg}",
        )
        .context("progress template")?,
    );
    bar.set_position(st.kept.len().min(args.num_instructions) as u64);
    let t0 = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let seeds = Arc::new(seeds);
    let outcome: Result<()> = rt.block_on(async {
        let mut next = st.max_request.map_or(0, |m| m + 1);
        let mut launched_total = st.requests;
        let mut set = tokio::task::JoinSet::new();
        let mut last_write = Instant::now();
        loop {
            while set.len() < concurrency
                && st.kept.len() < args.num_instructions
                && args.max_requests.is_none_or(|m| launched_total < m)
            {
                let ex = draw_examples(&seeds, args.seed, next);
                let prompt = encode_prompt(&header, &ex);
                let c = Arc::clone(&client);
                let r = next;
                set.spawn(async move { c.call(r, prompt).await });
                next += 1;
                launched_total += 1;
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            let resp = match joined {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    set.abort_all();
                    return Err(e);
                }
                Err(e) => {
                    set.abort_all();
                    return Err(anyhow!("request task failed: {e}"));
                }
            };
            let line = serde_json::to_string(&resp)?;
            writeln!(journal, "{line}")?;
            journal.flush()?;
            journal.get_ref().sync_data()?;
            st.process(&resp);
            bar.set_position(st.kept.len().min(args.num_instructions) as u64);
            bar.set_message(format!("{} requests", st.requests));
            if last_write.elapsed() > Duration::from_secs(5) {
                write_outputs(
                    &args.out,
                    &st,
                    &args,
                    seeds.len(),
                    prices.as_ref(),
                    client.attempts.load(Ordering::Relaxed),
                    client.retries.load(Ordering::Relaxed),
                    t0.elapsed().as_secs_f64(),
                )?;
                last_write = Instant::now();
            }
        }
        Ok(())
    });
    bar.finish_and_clear();
    write_outputs(
        &args.out,
        &st,
        &args,
        seeds.len(),
        prices.as_ref(),
        client.attempts.load(Ordering::Relaxed),
        client.retries.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    )?;
    outcome?;
    tracing::info!(
        kept = st.kept.len(),
        dropped = st.dropped.len(),
        requests = st.requests,
        "self-instruct generate done: {}",
        args.out.join("regen.json").display()
    );
    println!(
        "{}",
        json!({"kept": st.kept.len(), "dropped": st.dropped.len(), "requests": st.requests,
               "out": args.out.join("regen.json")})
    );
    Ok(())
}
