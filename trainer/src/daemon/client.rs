//! The Rust client the `koala` CLI uses: connect (token, optional TLS), job files in TOML, job
//! formatting, a live progress bar fed by WatchJob, and sampling a checkpoint with Generate.
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use koala_proto::v1::trainer_service_client::TrainerServiceClient;
use koala_proto::v1::{
    GenerateRequest, GetJobRequest, Hyperparameters, Job, JobSpec, JobState, WatchJobRequest,
    job_event::Kind, job_spec::BaseModel,
};
use serde::Deserialize;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::auth::BearerToken;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{}", status_text(.0))]
    Rpc(#[from] tonic::Status),
    #[error("{path}: {reason}")]
    JobFile { path: String, reason: String },
    #[error("{0}")]
    Other(String),
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// A connected client with the token interceptor.
pub type Client = TrainerServiceClient<InterceptedService<Channel, BearerToken>>;

/// How to reach the daemon.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// `host:port` or a URL (`http://…`, `https://…`).
    pub addr: String,
    pub token: Option<String>,
    /// CA certificate (PEM) to verify a TLS daemon; setting it switches to TLS.
    pub ca_cert: Option<PathBuf>,
    /// Server name to verify in the certificate (default: the address's host).
    pub tls_domain: Option<String>,
}

/// Connects to the daemon.
pub async fn connect(opts: &ClientOptions) -> Result<Client, ClientError> {
    let tls = opts.ca_cert.is_some() || opts.addr.starts_with("https://");
    let url = if opts.addr.contains("://") {
        opts.addr.clone()
    } else if tls {
        format!("https://{}", opts.addr)
    } else {
        format!("http://{}", opts.addr)
    };
    let fail = |reason: String| ClientError::Connect {
        addr: url.clone(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(url.clone()).map_err(|e| fail(e.to_string()))?;
    if tls {
        let mut cfg = ClientTlsConfig::new();
        if let Some(ca) = &opts.ca_cert {
            let pem = std::fs::read(ca).map_err(|e| fail(format!("{}: {e}", ca.display())))?;
            cfg = cfg.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some(d) = &opts.tls_domain {
            cfg = cfg.domain_name(d.clone());
        }
        endpoint = endpoint.tls_config(cfg).map_err(|e| fail(e.to_string()))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            reason.push_str(&format!(": {s}"));
            src = s.source();
        }
        fail(reason)
    })?;
    let auth = BearerToken::new(opts.token.as_deref()).map_err(ClientError::Other)?;
    Ok(TrainerServiceClient::with_interceptor(channel, auth))
}

/// A job file (`koala submit job.toml`): the `JobSpec` fields in TOML. Unknown keys are errors.
///
/// ```
/// use koala_trainer::daemon::client::JobFile;
/// let spec = JobFile::parse(r#"
///     init_config = "models/tiny/config.json"
///     shards_dir = "shards/demo"
///     out_dir = "runs/demo"
///     preset = "tiny-cpu"
///     seed = 7
///     val_every = 20
///     [hyperparameters]
///     lr = 1e-3
/// "#).unwrap();
/// assert_eq!(spec.seed, 7);
/// assert_eq!((spec.val_split.as_str(), spec.val_every), ("", 20));
/// assert_eq!(spec.hyperparameters.unwrap().lr, Some(1e-3));
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    #[serde(default)]
    pub name: String,
    pub model_dir: Option<String>,
    pub init_config: Option<String>,
    pub shards_dir: String,
    pub out_dir: String,
    #[serde(default)]
    pub preset: String,
    #[serde(default)]
    pub devices: String,
    /// CPU data-parallel workers (JobSpec `workers`).
    #[serde(default)]
    pub workers: u32,
    /// ZeRO-1 optimizer-state sharding (JobSpec `zero1`).
    #[serde(default)]
    pub zero1: bool,
    /// ZeRO stage 0 to 3 (JobSpec `zero`; unset: the preset's choice).
    #[serde(default)]
    pub zero: Option<u32>,
    /// Activation checkpointing (JobSpec `checkpointing`; unset: the preset's choice).
    #[serde(default)]
    pub checkpointing: Option<bool>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub checkpoint_every: u64,
    #[serde(default)]
    pub max_steps: u64,
    #[serde(default)]
    pub idempotency_key: String,
    /// The held-out split for the validation loss (JobSpec `val_split`).
    #[serde(default)]
    pub val_split: String,
    /// Steps between validation losses (JobSpec `val_every`).
    #[serde(default)]
    pub val_every: u64,
    pub hyperparameters: Option<HyperparametersFile>,
    /// `[lora]`: train a LoRA adapter (JobSpec `lora`; keys as in a training TOML).
    pub lora: Option<crate::lora::LoraConfig>,
}

/// `[hyperparameters]` of a job file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HyperparametersFile {
    pub lr: Option<f64>,
    pub batch_size: Option<u32>,
    pub micro_batch_size: Option<u32>,
    pub max_len: Option<u32>,
    pub epochs: Option<u32>,
    pub warmup_ratio: Option<f64>,
    pub warmup_steps: Option<u64>,
    pub weight_decay: Option<f64>,
    pub grad_clip: Option<f64>,
    pub schedule: Option<String>,
    pub beta1: Option<f64>,
    pub beta2: Option<f64>,
    pub eps: Option<f64>,
    pub min_lr_ratio: Option<f64>,
    pub loss: Option<String>,
}

impl JobFile {
    /// Parses job-file text into a `JobSpec`.
    pub fn parse(text: &str) -> Result<JobSpec, String> {
        let f: JobFile = toml::from_str(text).map_err(|e| e.to_string())?;
        f.into_spec()
    }

    /// Reads and parses a job file.
    pub fn load(path: &std::path::Path) -> Result<JobSpec, ClientError> {
        let fail = |reason: String| ClientError::JobFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        Self::parse(&text).map_err(fail)
    }

    fn into_spec(self) -> Result<JobSpec, String> {
        let base_model = match (self.model_dir, self.init_config) {
            (Some(d), None) => Some(BaseModel::ModelDir(d)),
            (None, Some(c)) => Some(BaseModel::InitConfig(c)),
            (None, None) => return Err("set one of model_dir or init_config".into()),
            (Some(_), Some(_)) => {
                return Err("model_dir and init_config exclude each other".into());
            }
        };
        Ok(JobSpec {
            name: self.name,
            base_model,
            shards_dir: self.shards_dir,
            preset: self.preset,
            hyperparameters: self.hyperparameters.map(|h| Hyperparameters {
                lr: h.lr,
                batch_size: h.batch_size,
                micro_batch_size: h.micro_batch_size,
                max_len: h.max_len,
                epochs: h.epochs,
                warmup_ratio: h.warmup_ratio,
                warmup_steps: h.warmup_steps,
                weight_decay: h.weight_decay,
                grad_clip: h.grad_clip,
                schedule: h.schedule,
                beta1: h.beta1,
                beta2: h.beta2,
                eps: h.eps,
                min_lr_ratio: h.min_lr_ratio,
                loss: h.loss,
            }),
            out_dir: self.out_dir,
            devices: self.devices,
            workers: self.workers,
            zero1: self.zero1,
            zero: self.zero,
            checkpointing: self.checkpointing,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            max_steps: self.max_steps,
            idempotency_key: self.idempotency_key,
            lora: self.lora.map(|l| koala_proto::v1::LoraSpec {
                r: l.r as u32,
                alpha: l.alpha as f64,
                dropout: Some(l.dropout as f64),
                target_modules: l.target_modules,
            }),
            val_split: self.val_split,
            val_every: self.val_every,
        })
    }
}

/// A state without its `JOB_STATE_` prefix.
pub fn state_name(s: JobState) -> &'static str {
    let n = s.as_str_name();
    n.strip_prefix("JOB_STATE_").unwrap_or(n)
}

/// The header of [`job_row`] lines.
pub const JOB_TABLE_HEADER: &str = "ID     STATE      STEP/TOTAL      LOSS      NAME";

/// One table line for `koala jobs`.
pub fn job_row(j: &Job) -> String {
    let name = j.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("");
    let loss = if j.step > 0 {
        format!("{:.4}", j.last_loss)
    } else {
        "-".into()
    };
    format!(
        "{:<6} {:<10} {:>6}/{:<8} {:<9} {}",
        j.id,
        state_name(j.state()),
        j.step,
        j.total_steps,
        loss,
        name
    )
}

/// A multi-line description for `koala job ID`.
pub fn describe_job(j: &Job) -> String {
    let spec = j.spec.clone().unwrap_or_default();
    let base = match &spec.base_model {
        Some(BaseModel::ModelDir(d)) => format!("model_dir {d}"),
        Some(BaseModel::InitConfig(c)) => format!("init_config {c}"),
        None => "-".into(),
    };
    let mut out = format!(
        "job {}  {}{}\n  name:        {}\n  base model:  {}\n  shards:      {}\n  out_dir:     {}\n  preset:      {}\n  devices:     {}\n  seed:        {}\n  progress:    step {}/{}  loss {:.4}\n  checkpoint:  {}\n  attempts:    {}\n",
        j.id,
        state_name(j.state()),
        if j.cancel_requested && !super::store::is_terminal(j.state()) {
            " (cancel requested)"
        } else {
            ""
        },
        spec.name,
        base,
        spec.shards_dir,
        spec.out_dir,
        if spec.preset.is_empty() {
            "-"
        } else {
            &spec.preset
        },
        if spec.devices.is_empty() {
            "cpu"
        } else {
            &spec.devices
        },
        spec.seed,
        j.step,
        j.total_steps,
        j.last_loss,
        if j.last_checkpoint.is_empty() {
            "-"
        } else {
            &j.last_checkpoint
        },
        j.attempts,
    );
    if !j.error.is_empty() {
        out.push_str(&format!("  error:       {}\n", j.error));
    }
    out
}

/// Follows a job with WatchJob until it ends, drawing a progress bar (when `bar`) or printing
/// events as lines. Returns the final job.
pub async fn watch(client: &mut Client, id: u64, bar: bool) -> Result<Job, ClientError> {
    let mut stream = client
        .watch_job(WatchJobRequest { id, after_seq: 0 })
        .await?
        .into_inner();
    let pb = if bar {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps  {msg}")
            .map_err(|e| ClientError::Other(e.to_string()))?
            .progress_chars("=> "),
    );
    pb.set_prefix(format!("job {id}"));
    let say = |line: String| {
        if bar {
            pb.println(line);
        } else {
            println!("{line}");
        }
    };
    while let Some(ev) = stream.message().await? {
        match ev.kind {
            Some(Kind::StateChanged(s)) => {
                say(format!("job {id}: {} {}", state_name(s.state()), s.message))
            }
            Some(Kind::Progress(p)) => {
                if let Some(v) = p.val_loss {
                    say(format!(
                        "job {id}: step {}: validation loss {v:.4} (perplexity {:.2})",
                        p.step,
                        (v as f64).exp()
                    ));
                }
                if bar {
                    pb.set_length(p.total_steps);
                    pb.set_position(p.step);
                    pb.set_message(format!(
                        "loss {:.4}  lr {:.2e}  {:.0} tok/s  eta {:.0}s",
                        p.loss, p.lr, p.tokens_per_s, p.eta_s
                    ));
                } else {
                    say(format!(
                        "job {id}: step {}/{} loss {:.4} lr {:.3e} {:.0} tok/s eta {:.0}s",
                        p.step, p.total_steps, p.loss, p.lr, p.tokens_per_s, p.eta_s
                    ));
                }
            }
            Some(Kind::Checkpoint(c)) => say(format!(
                "job {id}: checkpoint at step {}: {}",
                c.step, c.path
            )),
            Some(Kind::Error(e)) => say(format!("job {id}: error: {}", e.message)),
            None => {}
        }
    }
    pb.finish_and_clear();
    Ok(client.get_job(GetJobRequest { id }).await?.into_inner())
}

/// What a `Generate` call produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sampled {
    /// The checkpoint (or model directory) the daemon sampled.
    pub checkpoint: String,
    /// The completion's text ("" without a tokenizer) and tokens.
    pub text: String,
    pub token_ids: Vec<u32>,
    /// "stop" or "length".
    pub finish_reason: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// Runs `Generate`, writing the completion to `out` as it streams: its text, or with `ids` its
/// token ids (comma-separated). Fails when the stream ends without its last message.
pub async fn generate(
    client: &mut Client,
    req: GenerateRequest,
    out: &mut impl std::io::Write,
    ids: bool,
) -> Result<Sampled, ClientError> {
    let mut stream = client.generate(req).await?.into_inner();
    let mut got = Sampled::default();
    let io = |e: std::io::Error| ClientError::Other(format!("writing the output: {e}"));
    while let Some(m) = stream.message().await? {
        if got.checkpoint.is_empty() {
            got.checkpoint = m.checkpoint;
        }
        if ids {
            for t in &m.token_ids {
                let sep = if got.token_ids.is_empty() { "" } else { "," };
                write!(out, "{sep}{t}").map_err(io)?;
                got.token_ids.push(*t);
            }
        } else {
            write!(out, "{}", m.text).map_err(io)?;
            got.token_ids.extend(&m.token_ids);
        }
        out.flush().map_err(io)?;
        got.text.push_str(&m.text);
        if !m.finish_reason.is_empty() {
            got.finish_reason = m.finish_reason;
            got.prompt_tokens = m.prompt_tokens;
            got.completion_tokens = m.completion_tokens;
            return Ok(got);
        }
    }
    Err(ClientError::Other(
        "the Generate stream ended without its last message".into(),
    ))
}
