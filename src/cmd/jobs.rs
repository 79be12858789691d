//! `koala jobs`, `koala job ID`, `koala cancel ID`, `koala sample ID`: list, inspect, cancel and
//! sample daemon jobs. Also the connection flags every client subcommand shares.
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use koala_proto::v1::{
    CancelJobRequest, GenerateRequest, GetJobRequest, GetMetricsRequest, JobState, ListJobsRequest,
    WatchJobRequest, generate_request, job_event::Kind,
};
use koala_trainer::daemon::client::{self, Client, ClientOptions};

/// How to reach the daemon. Each flag falls back to an environment variable: `KOALA_DAEMON`,
/// `KOALA_TOKEN_FILE` (or the token itself in `KOALA_TOKEN`), `KOALA_CA_CERT`.
#[derive(Args, Clone)]
pub struct ConnectArgs {
    /// Daemon address, `host:port` or a URL [default: $KOALA_DAEMON, else 127.0.0.1:50051].
    #[arg(long)]
    pub addr: Option<String>,
    /// File holding the bearer token [default: $KOALA_TOKEN_FILE; else the token in $KOALA_TOKEN].
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) of a TLS daemon; turns TLS on [default: $KOALA_CA_CERT].
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Server name to verify in the daemon's certificate (default: the address's host).
    #[arg(long)]
    pub tls_domain: Option<String>,
}

impl ConnectArgs {
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let token_file = self
            .token_file
            .clone()
            .or_else(|| env("KOALA_TOKEN_FILE").map(PathBuf::from));
        let token = match &token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading the token file {}", p.display()))?
                    .trim()
                    .to_string(),
            ),
            None => env("KOALA_TOKEN"),
        };
        Ok(client::connect(&ClientOptions {
            addr: self
                .addr
                .clone()
                .or_else(|| env("KOALA_DAEMON"))
                .unwrap_or_else(|| "127.0.0.1:50051".into()),
            token,
            ca_cert: self
                .ca_cert
                .clone()
                .or_else(|| env("KOALA_CA_CERT").map(PathBuf::from)),
            tls_domain: self.tls_domain.clone(),
        })
        .await?)
    }
}

/// Runs an async client command on a small runtime.
pub fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f)
}

#[derive(Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// Only jobs in these states (queued, running, succeeded, failed, cancelled).
    #[arg(long, value_delimiter = ',')]
    pub state: Vec<String>,
    /// At most this many jobs, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_state(s: &str) -> anyhow::Result<JobState> {
    let upper = format!("JOB_STATE_{}", s.trim().to_ascii_uppercase());
    match JobState::from_str_name(&upper) {
        Some(JobState::Unspecified) | None => anyhow::bail!(
            "--state: {s:?} is not one of queued, running, succeeded, failed, cancelled"
        ),
        Some(st) => Ok(st),
    }
}

pub fn jobs(args: JobsArgs) -> anyhow::Result<()> {
    let states = args
        .state
        .iter()
        .map(|s| parse_state(s).map(|s| s as i32))
        .collect::<anyhow::Result<Vec<_>>>()?;
    block_on(async move {
        let mut c = args.conn.connect().await?;
        let mut left = args.limit;
        let mut token = String::new();
        if !args.json {
            println!("{}", client::JOB_TABLE_HEADER);
        }
        while left > 0 {
            let page = c
                .list_jobs(ListJobsRequest {
                    states: states.clone(),
                    page_size: left.min(1000),
                    page_token: token.clone(),
                })
                .await
                .map_err(client::ClientError::from)?
                .into_inner();
            for j in &page.jobs {
                if args.json {
                    println!("{}", job_json(j));
                } else {
                    println!("{}", client::job_row(j));
                }
            }
            left = left.saturating_sub(page.jobs.len() as u32);
            if page.next_page_token.is_empty() || page.jobs.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        Ok(())
    })
}

fn job_json(j: &koala_proto::v1::Job) -> serde_json::Value {
    let spec = j.spec.clone().unwrap_or_default();
    serde_json::json!({
        "id": j.id,
        "state": client::state_name(j.state()),
        "name": spec.name,
        "step": j.step,
        "total_steps": j.total_steps,
        "last_loss": j.last_loss,
        "last_checkpoint": j.last_checkpoint,
        "out_dir": spec.out_dir,
        "error": j.error,
        "attempts": j.attempts,
        "cancel_requested": j.cancel_requested,
        "created_at_ms": j.created_at_ms,
        "started_at_ms": j.started_at_ms,
        "finished_at_ms": j.finished_at_ms,
    })
}

#[derive(Args)]
pub struct JobArgs {
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// The job id.
    pub id: u64,
    /// Also print the job's stored events.
    #[arg(long)]
    pub events: bool,
    /// Also print the per-step metrics (step, loss, lr, tokens/s).
    #[arg(long)]
    pub metrics: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn job(args: JobArgs) -> anyhow::Result<()> {
    block_on(async move {
        let mut c = args.conn.connect().await?;
        let j = c
            .get_job(GetJobRequest { id: args.id })
            .await
            .map_err(client::ClientError::from)?
            .into_inner();
        if args.json {
            println!("{}", job_json(&j));
        } else {
            print!("{}", client::describe_job(&j));
        }
        if args.metrics {
            let m = c
                .get_metrics(GetMetricsRequest { id: args.id })
                .await
                .map_err(client::ClientError::from)?
                .into_inner();
            println!("  step      loss        lr          tokens/s  val loss");
            for p in m.points {
                let val = p.val_loss.map(|v| format!("{v:.5}")).unwrap_or_default();
                println!(
                    "  {:<9} {:<11.5} {:<11.3e} {:<9.0} {val}",
                    p.step, p.loss, p.lr, p.tokens_per_s
                );
            }
        }
        if args.events {
            // A finished job's stream ends by itself; a live one is read until now only.
            let mut stream = c
                .watch_job(WatchJobRequest {
                    id: args.id,
                    after_seq: 0,
                })
                .await
                .map_err(client::ClientError::from)?
                .into_inner();
            loop {
                let next =
                    tokio::time::timeout(std::time::Duration::from_millis(300), stream.message())
                        .await;
                let Ok(msg) = next else { break };
                let Some(ev) = msg.map_err(client::ClientError::from)? else {
                    break;
                };
                let what = match ev.kind {
                    Some(Kind::StateChanged(s)) => {
                        format!("{} {}", client::state_name(s.state()), s.message)
                    }
                    Some(Kind::Progress(p)) => match p.val_loss {
                        Some(v) => format!("step {} loss {:.5} val_loss {v:.5}", p.step, p.loss),
                        None => format!("step {} loss {:.5}", p.step, p.loss),
                    },
                    Some(Kind::Checkpoint(cp)) => format!("checkpoint {} {}", cp.step, cp.path),
                    Some(Kind::Error(e)) => format!("error {}", e.message),
                    None => continue,
                };
                println!("  #{:<5} {}", ev.seq, what);
            }
        }
        Ok(())
    })
}

#[derive(Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// The job id.
    pub id: u64,
}

pub fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    block_on(async move {
        let mut c = args.conn.connect().await?;
        let j = c
            .cancel_job(CancelJobRequest { id: args.id })
            .await
            .map_err(client::ClientError::from)?
            .into_inner();
        match j.state() {
            JobState::Cancelled => println!("job {} cancelled", j.id),
            JobState::Running => println!(
                "job {} will stop at its next step boundary (cancel requested)",
                j.id
            ),
            other => println!("job {} already ended: {}", j.id, client::state_name(other)),
        }
        Ok(())
    })
}

#[derive(Args)]
pub struct SampleArgs {
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// The job whose newest checkpoint to sample.
    #[arg(required_unless_present = "model_dir", conflicts_with = "model_dir")]
    pub id: Option<u64>,
    /// Sample a model directory under the daemon's data root instead (the daemon must allow it:
    /// `generate_allow_dirs = true`).
    #[arg(long)]
    pub model_dir: Option<String>,
    /// Prompt text (tokenised by the daemon with the checkpoint's tokenizer).
    #[arg(
        long,
        required_unless_present = "prompt_ids",
        conflicts_with = "prompt_ids"
    )]
    pub prompt: Option<String>,
    /// Prompt as comma-separated token ids (prints ids instead of text).
    #[arg(long, value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    /// New tokens at most [default: the daemon's, 128].
    #[arg(long, alias = "max-new-tokens")]
    pub max_tokens: Option<u32>,
    /// 0 = greedy [default: the daemon's, 1.0].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// 0 = no top-k filter [default: the daemon's, 50].
    #[arg(long)]
    pub top_k: Option<u32>,
    /// [default: the daemon's, 1.0]
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Seed of the sampling [default: a fresh one each call].
    #[arg(long)]
    pub seed: Option<u64>,
    /// End the output before the first occurrence of this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Print the token ids instead of the text.
    #[arg(long)]
    pub ids: bool,
}

/// `koala sample ID --prompt TEXT`: streams the completion to stdout as the daemon decodes it,
/// then the finish reason and token counts to stderr.
pub fn sample(args: SampleArgs) -> anyhow::Result<()> {
    let model = match (args.id, args.model_dir) {
        (Some(id), None) => generate_request::Model::JobId(id),
        (None, Some(d)) => generate_request::Model::ModelDir(d),
        _ => anyhow::bail!("give a job id or --model-dir"),
    };
    let ids = args.ids || args.prompt_ids.is_some();
    let req = GenerateRequest {
        model: Some(model),
        prompt: args.prompt.unwrap_or_default(),
        prompt_ids: args.prompt_ids.unwrap_or_default(),
        max_tokens: args.max_tokens.unwrap_or(0),
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        stop: args.stop,
    };
    block_on(async move {
        let mut c = args.conn.connect().await?;
        let mut out = std::io::stdout();
        let got = client::generate(&mut c, req, &mut out, ids).await?;
        println!();
        eprintln!(
            "[{}: {}, {} prompt + {} completion tokens]",
            got.checkpoint, got.finish_reason, got.prompt_tokens, got.completion_tokens
        );
        Ok(())
    })
}
