//! `koala serve-model`: an OpenAI-compatible HTTP server over the inference engine
//! (see docs/serving.md).
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use koala_model::{EngineConfig, Watermark};
use koala_serve::moderation::{ModerationMode, Moderator, Policy};
use koala_serve::{AppState, FormatName, Served, ServerConfig};

#[derive(clap::Args)]
pub struct Args {
    /// A model directory (`DIR`, served under its folder name) or `NAME=DIR`; repeatable.
    #[arg(long = "model", required = true)]
    models: Vec<String>,
    /// A LoRA adapter directory (ours or peft's) to merge into a model at load: `DIR` when one
    /// model is served, else `NAME=DIR`; repeatable.
    #[arg(long = "adapter")]
    adapters: Vec<String>,
    /// Address to listen on (`127.0.0.1:0` picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: String,
    /// How chat messages become a prompt.
    #[arg(long, value_enum, default_value = "koala")]
    format: FormatName,
    /// A file holding the bearer token that `/v1/*` requests must send.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// `cpu`, `cuda:N`, or `auto` (CUDA when a GPU is usable).
    #[arg(long, default_value = "auto")]
    device: String,
    /// How the projection weights are held: `f32`, or `bf16` (half the bytes per token).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: super::generate::DtypeArg,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Requests that may wait for a slot; past it, 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Largest request body in bytes (413 past it).
    #[arg(long, default_value_t = koala_serve::server::DEFAULT_BODY_LIMIT)]
    max_body_bytes: usize,
    /// `builtin` (the shipped keyword lists), `off`, a `/v1/moderations` URL, or a TOML file of lists.
    #[arg(long, default_value = "off")]
    moderation: String,
    /// What happens to flagged input or output.
    #[arg(long, value_enum, default_value = "refuse")]
    moderation_policy: PolicyArg,
    /// Watermark every completion with this key (see docs/watermark.md).
    #[arg(long)]
    watermark_key: Option<String>,
    #[arg(long, default_value_t = 0.25)]
    watermark_gamma: f32,
    #[arg(long, default_value_t = 2.0)]
    watermark_delta: f32,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PolicyArg {
    /// Send a fixed refusal with finish_reason `content_filter`.
    Refuse,
    /// Log it and mark the response (`moderation` field).
    Flag,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    koala_model::engine::set_idle_hook(super::release_freed_memory);
    let limits = EngineConfig {
        max_batch: args.max_batch,
        queue_capacity: args.queue,
        ..EngineConfig::default()
    };
    let mut adapters: Vec<(Option<String>, PathBuf)> = Vec::new();
    for a in &args.adapters {
        adapters.push(match a.split_once('=') {
            Some((n, d)) if !n.is_empty() => (Some(n.to_string()), PathBuf::from(d)),
            _ if args.models.len() == 1 => (None, PathBuf::from(a)),
            _ => bail!("--adapter {a}: several models are served; use --adapter NAME=DIR"),
        });
    }
    let mut models = Vec::new();
    for spec in &args.models {
        let (name, dir) = match spec.split_once('=') {
            Some((n, d)) if !n.is_empty() => (n.to_string(), PathBuf::from(d)),
            _ => {
                let dir = PathBuf::from(spec);
                let name = dir
                    .canonicalize()
                    .ok()
                    .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| spec.clone());
                (name, dir)
            }
        };
        if models.iter().any(|m: &Arc<Served>| m.name == name) {
            bail!("--model: two models are named `{name}`; use NAME=DIR");
        }
        let adapter = adapters
            .iter()
            .find(|(n, _)| n.as_deref().is_none_or(|n| n == name))
            .map(|(_, d)| d.as_path());
        let served = Served::load_with_adapter(
            &name,
            &dir,
            args.format,
            &args.device,
            limits.clone(),
            args.dtype.into(),
            adapter,
        )
        .with_context(|| format!("loading --model {spec}"))?;
        tracing::info!(model = %name, dir = %dir.display(), device = served.engine.device(), "loaded");
        models.push(Arc::new(served));
    }
    if let Some((Some(n), _)) = adapters.iter().find(|(n, _)| {
        n.as_ref()
            .is_some_and(|n| !models.iter().any(|m| &m.name == n))
    }) {
        bail!("--adapter {n}=…: no model is named `{n}`");
    }
    let token = match &args.token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .with_context(|| format!("reading --token-file {}", p.display()))?;
            let t = t.trim().to_string();
            if t.is_empty() {
                bail!("--token-file {} is empty", p.display());
            }
            Some(t)
        }
        None => None,
    };
    let moderator = match ModerationMode::parse(&args.moderation)
        .with_context(|| format!("--moderation {}", args.moderation))?
    {
        ModerationMode::Off => None,
        mode => Some(Moderator::new(mode).context("--moderation")?),
    };
    let watermark = args
        .watermark_key
        .as_deref()
        .map(|k| Watermark::new(k, args.watermark_gamma, args.watermark_delta))
        .transpose()?;
    let cfg = ServerConfig {
        token,
        body_limit: args.max_body_bytes,
        moderator,
        policy: match args.moderation_policy {
            PolicyArg::Refuse => Policy::Refuse,
            PolicyArg::Flag => Policy::Flag,
        },
        watermark,
    };
    let state = Arc::new(AppState { models, cfg });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("--listen {}", args.listen))?;
        let addr = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "koala serve-model: listening on http://{addr}")?;
            out.flush()?;
        }
        koala_serve::serve(listener, state, async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
        })
        .await
        .context("serving")
    })
}
