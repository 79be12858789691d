//! `eval judge`: pairwise rating by an LLM judge, as FastChat's MT-bench "pair" judge does it.
//!
//! For each prompt and each pair of systems the judge sees the question and both answers, once
//! in each order, and ends its reply with `[[A]]`, `[[B]]` or `[[C]]` (tie). The last such mark
//! in the reply counts; a reply without one is asked again once, then counted as a tie (with a
//! warning, and in [`JudgeSummary::unparsed`]). The two verdicts are combined: when they agree
//! that is the winner, otherwise a tie (the judge flipped with the position).
//!
//! Every judgement is cached on a hash of (question, first answer, second answer, judge model,
//! [`PROMPT_VERSION`]), one JSON line each, so a rerun asks only what it has not asked yet.
//!
//! ```
//! use koala_eval::judge::{Verdict, parse_verdict};
//! assert_eq!(parse_verdict("A is terse; [[A]]... no, on reflection [[B]]"), Some(Verdict::B));
//! assert_eq!(parse_verdict("both fine"), None);
//! ```
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::client::{ChatClient, ChatOptions, Message};
use crate::error::{Error, Result};
use crate::rows::{RatingRow, ResponseRow, Side, Usage, Winner, write_jsonl_row};

/// Version of the prompt below; part of the cache key, so changing the prompt invalidates it.
pub const PROMPT_VERSION: &str = "koala-pair-v2.1";

/// The judge's system prompt, modelled on FastChat's MT-bench "pair-v2".
pub const SYSTEM_PROMPT: &str = "You are an impartial judge. Below are a user's question and the \
answers of two AI assistants, A and B. Decide which assistant follows the user's instructions and \
answers the question better, weighing helpfulness, relevance, accuracy, depth, creativity and \
level of detail. First compare the two answers and explain your reasoning briefly. Do not let the \
order in which the answers appear affect your decision, do not let the length of an answer sway \
you, and do not favour an assistant for its name. Be as objective as you can. After your \
explanation, give your final verdict in exactly this format: \"[[A]]\" if assistant A is better, \
\"[[B]]\" if assistant B is better, or \"[[C]]\" for a tie.";

/// The user message: the question and the two answers, A first.
pub fn user_prompt(question: &str, answer_a: &str, answer_b: &str) -> String {
    format!(
        "[User Question]\n{question}\n\n\
         [The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n\
         [The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
    )
}

/// One verdict of the judge, in the order it was shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    A,
    B,
    /// Tie.
    C,
}

impl Verdict {
    fn swapped(self) -> Verdict {
        match self {
            Verdict::A => Verdict::B,
            Verdict::B => Verdict::A,
            Verdict::C => Verdict::C,
        }
    }
}

/// The last `[[A]]`, `[[B]]` or `[[C]]` in `reply`.
pub fn parse_verdict(reply: &str) -> Option<Verdict> {
    [
        ("[[A]]", Verdict::A),
        ("[[B]]", Verdict::B),
        ("[[C]]", Verdict::C),
    ]
    .into_iter()
    .filter_map(|(mark, v)| reply.rfind(mark).map(|i| (i, v)))
    .max_by_key(|&(i, _)| i)
    .map(|(_, v)| v)
}

/// Combines the verdict with A first and the verdict with B first (already turned back to A's
/// point of view): agreement stands, disagreement is a tie.
pub fn combine(first: Verdict, second: Verdict) -> Winner {
    match (first, second) {
        (Verdict::A, Verdict::A) => Winner::A,
        (Verdict::B, Verdict::B) => Winner::B,
        _ => Winner::Tie,
    }
}

/// Which pairs of systems to judge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pairs {
    /// Every pair.
    All,
    /// Every system against this one.
    Versus(String),
}

impl std::str::FromStr for Pairs {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(Pairs::All),
            _ => match s.strip_prefix("vs:") {
                Some(n) if !n.is_empty() => Ok(Pairs::Versus(n.to_string())),
                _ => Err(Error::Invalid(format!(
                    "--pairs {s:?}: expected all or vs:NAME"
                ))),
            },
        }
    }
}

/// The pairs `(a, b)` with `a < b` by name, of the systems in `systems`.
pub fn system_pairs(systems: &BTreeSet<String>, pairs: &Pairs) -> Result<Vec<(String, String)>> {
    if let Pairs::Versus(n) = pairs
        && !systems.contains(n)
    {
        return Err(Error::Invalid(format!(
            "--pairs vs:{n}: no system {n:?} in the responses (systems: {})",
            systems.iter().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let v: Vec<&String> = systems.iter().collect();
    let mut out = Vec::new();
    for i in 0..v.len() {
        for j in i + 1..v.len() {
            let keep = match pairs {
                Pairs::All => true,
                Pairs::Versus(n) => v[i] == n || v[j] == n,
            };
            if keep {
                out.push((v[i].clone(), v[j].clone()));
            }
        }
    }
    Ok(out)
}

/// The cache key of one judgement.
pub fn cache_key(question: &str, first: &str, second: &str, model: &str) -> String {
    let mut h = Sha256::new();
    for part in [PROMPT_VERSION, model, question, first, second] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// One cached judgement.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CacheRow {
    key: String,
    /// `None`: the judge gave no verdict (counted as a tie).
    verdict: Option<Verdict>,
    #[serde(default)]
    usage: Option<Usage>,
}

/// Settings of a [`judge`] run.
#[derive(Clone, Debug)]
pub struct JudgeConfig {
    /// Ratings JSONL (written whole at the end).
    pub out: PathBuf,
    /// Judgement cache (JSONL, appended to).
    pub cache: Option<PathBuf>,
    pub pairs: Pairs,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Judge's max tokens per reply.
    pub max_tokens: Option<u32>,
    /// USD per million prompt / completion tokens, for the cost estimate.
    pub price_in: f64,
    pub price_out: f64,
    pub progress: bool,
}

/// What a [`judge`] run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JudgeSummary {
    /// Rating rows written.
    pub ratings: usize,
    /// Judgements asked (two per rating).
    pub judgements: usize,
    /// Judgements answered from the cache.
    pub cached: usize,
    /// Judgements with no verdict after a second try (counted as ties).
    pub unparsed: usize,
    /// Pairs where the two orders disagreed (ties).
    pub flipped: usize,
    /// Prompt/system pairs skipped because a system has no answer to the prompt.
    pub missing: usize,
    /// Wins of A, wins of B, ties.
    pub wins_a: usize,
    pub wins_b: usize,
    pub ties: usize,
    /// Tokens of this run's requests (cache hits count nothing).
    pub usage: Usage,
    /// `usage` priced with `price_in` and `price_out`.
    pub cost_usd: f64,
}

struct Shared {
    client: ChatClient,
    cache: Mutex<HashMap<String, CacheRow>>,
    cache_file: Option<(PathBuf, Mutex<std::fs::File>)>,
    usage: Mutex<Usage>,
    max_tokens: Option<u32>,
}

impl Shared {
    /// One judgement (from the cache, or asked, twice at most when no verdict comes back).
    /// Returns the verdict (`None`: none given), and whether it came from the cache.
    async fn judgement(
        &self,
        q: &str,
        first: &str,
        second: &str,
    ) -> Result<(Option<Verdict>, bool)> {
        let key = cache_key(q, first, second, self.client.model());
        if let Some(r) = self.lock_cache()?.get(&key) {
            return Ok((r.verdict, true));
        }
        let msgs = [
            Message::system(SYSTEM_PROMPT),
            Message::user(user_prompt(q, first, second)),
        ];
        let opts = ChatOptions {
            max_tokens: self.max_tokens,
            temperature: Some(0.0),
        };
        let mut verdict = None;
        let mut usage = Usage::default();
        for attempt in 0..2 {
            let c = self.client.chat(&msgs, opts).await?;
            if let Some(u) = c.usage {
                usage.prompt_tokens += u.prompt_tokens;
                usage.completion_tokens += u.completion_tokens;
                usage.total_tokens += u.total_tokens;
            }
            verdict = parse_verdict(&c.text);
            if verdict.is_some() {
                break;
            }
            let tail: String = c
                .text
                .chars()
                .rev()
                .take(200)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            tracing::warn!(
                "judge reply has no [[A]]/[[B]]/[[C]] (attempt {}): …{tail}",
                attempt + 1
            );
        }
        {
            let mut u = self
                .usage
                .lock()
                .map_err(|_| Error::Invalid("usage lock poisoned".into()))?;
            u.prompt_tokens += usage.prompt_tokens;
            u.completion_tokens += usage.completion_tokens;
            u.total_tokens += usage.total_tokens;
        }
        let row = CacheRow {
            key: key.clone(),
            verdict,
            usage: Some(usage),
        };
        if let Some((path, f)) = &self.cache_file {
            let mut line = Vec::new();
            write_jsonl_row(&mut line, &row).map_err(|e| Error::io(path, e))?;
            let mut f = f
                .lock()
                .map_err(|_| Error::Invalid("cache lock poisoned".into()))?;
            f.write_all(&line).map_err(|e| Error::io(path, e))?;
            f.flush().map_err(|e| Error::io(path, e))?;
        }
        self.lock_cache()?.insert(key, row);
        Ok((verdict, false))
    }

    fn lock_cache(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, CacheRow>>> {
        self.cache
            .lock()
            .map_err(|_| Error::Invalid("cache lock poisoned".into()))
    }
}

fn read_cache(path: &Path) -> Result<HashMap<String, CacheRow>> {
    let mut out = HashMap::new();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(path, e)),
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<CacheRow>(line) {
            Ok(r) => {
                out.insert(r.key.clone(), r);
            }
            // A torn line from a killed run: that judgement is asked again.
            Err(e) => tracing::warn!(
                "{}:{}: skipping a bad cache line: {e}",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(out)
}

/// Judges the answers in `rows` with `client` and writes [`RatingRow`]s (rater `judge:MODEL`,
/// `left: a`, `system_a < system_b`) to `cfg.out`.
pub async fn judge(
    rows: &[ResponseRow],
    client: ChatClient,
    cfg: &JudgeConfig,
) -> Result<JudgeSummary> {
    // (set, prompt_id) → (prompt, system → answer); the first answer of a repeated pair wins.
    let mut prompts: BTreeMap<(String, String), (String, BTreeMap<String, String>)> =
        BTreeMap::new();
    let mut systems = BTreeSet::new();
    for r in rows {
        systems.insert(r.system.clone());
        let e = prompts
            .entry((r.set.clone(), r.prompt_id.clone()))
            .or_insert_with(|| (r.prompt.clone(), BTreeMap::new()));
        e.1.entry(r.system.clone())
            .or_insert_with(|| r.response.clone());
    }
    let pairs = system_pairs(&systems, &cfg.pairs)?;
    if pairs.is_empty() {
        return Err(Error::Invalid(format!(
            "nothing to judge: the responses hold {} system(s); pairs need two",
            systems.len()
        )));
    }
    let mut summary = JudgeSummary::default();
    let mut jobs = Vec::new();
    for ((set, id), (q, answers)) in &prompts {
        for (a, b) in &pairs {
            match (answers.get(a), answers.get(b)) {
                (Some(x), Some(y)) => jobs.push((
                    set.clone(),
                    id.clone(),
                    q.clone(),
                    a.clone(),
                    b.clone(),
                    x.clone(),
                    y.clone(),
                )),
                _ => summary.missing += 1,
            }
        }
    }
    if summary.missing > 0 {
        tracing::warn!(
            "{} prompt/pair combinations skipped: a system has no answer to the prompt",
            summary.missing
        );
    }
    let cache = match &cfg.cache {
        Some(p) => read_cache(p)?,
        None => HashMap::new(),
    };
    let cache_file = match &cfg.cache {
        Some(p) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| Error::io(p, e))?;
            Some((p.clone(), Mutex::new(f)))
        }
        None => None,
    };
    let rater = format!("judge:{}", client.model());
    let shared = Arc::new(Shared {
        client,
        cache: Mutex::new(cache),
        cache_file,
        usage: Mutex::new(Usage::default()),
        max_tokens: cfg.max_tokens,
    });
    let bar = if cfg.progress {
        ProgressBar::new(jobs.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} pairs, ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let sem = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (idx, (set, id, q, a, b, x, y)) in jobs.into_iter().enumerate() {
        let shared = shared.clone();
        let sem = sem.clone();
        let bar = bar.clone();
        tasks.spawn(async move {
            // Both orders of a pair run together, under one permit each.
            let one = async {
                let _p = sem
                    .acquire()
                    .await
                    .map_err(|e| Error::Invalid(format!("semaphore closed: {e}")))?;
                shared.judgement(&q, &x, &y).await
            };
            let two = async {
                let _p = sem
                    .acquire()
                    .await
                    .map_err(|e| Error::Invalid(format!("semaphore closed: {e}")))?;
                shared.judgement(&q, &y, &x).await
            };
            let (r1, r2) = tokio::join!(one, two);
            bar.inc(1);
            Ok::<_, Error>((idx, set, id, a, b, r1?, r2?))
        });
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let r = r.map_err(|e| Error::Invalid(format!("a judge task failed: {e}")))??;
        results.push(r);
    }
    bar.finish_and_clear();
    results.sort_by_key(|r| r.0);
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut out_rows = Vec::new();
    for (_, set, id, a, b, (v1, c1), (v2, c2)) in results {
        summary.judgements += 2;
        summary.cached += usize::from(c1) + usize::from(c2);
        summary.unparsed += usize::from(v1.is_none()) + usize::from(v2.is_none());
        let first = v1.unwrap_or(Verdict::C);
        let second = v2.unwrap_or(Verdict::C).swapped();
        let winner = combine(first, second);
        if first != second {
            summary.flipped += 1;
        }
        match winner {
            Winner::A => summary.wins_a += 1,
            Winner::B => summary.wins_b += 1,
            _ => summary.ties += 1,
        }
        out_rows.push(RatingRow {
            prompt_id: id,
            system_a: a,
            system_b: b,
            winner,
            rater: rater.clone(),
            left: Side::A,
            ts,
            set: Some(set),
        });
    }
    if let Some(dir) = cfg.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut buf = Vec::new();
    for r in &out_rows {
        write_jsonl_row(&mut buf, r).map_err(|e| Error::io(&cfg.out, e))?;
    }
    std::fs::write(&cfg.out, buf).map_err(|e| Error::io(&cfg.out, e))?;
    summary.ratings = out_rows.len();
    summary.usage = *shared
        .usage
        .lock()
        .map_err(|_| Error::Invalid("usage lock poisoned".into()))?;
    summary.cost_usd = summary.usage.prompt_tokens as f64 * cfg.price_in / 1e6
        + summary.usage.completion_tokens as f64 * cfg.price_out / 1e6;
    if summary.unparsed > 0 {
        tracing::warn!(
            "{} judgements gave no verdict after a second try and count as ties",
            summary.unparsed
        );
    }
    Ok(summary)
}
