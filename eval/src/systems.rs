//! The systems `eval generate` asks: `--system NAME=SPEC`, where SPEC is
//!
//! * a checkpoint directory (run in-process on our engine; the prompt is rendered by the Koala
//!   format, or `DIR#alpaca` / `DIR#chat-template` for the others),
//! * `openai:BASE_URL#MODEL`: an OpenAI-compatible endpoint (`POST {BASE_URL}/chat/completions`),
//! * `file:PATH`: answers already written, a JSONL of rows with `prompt_id` and `response`
//!   (a [`ResponseRow`] file works).
//!
//! ```
//! use koala_eval::systems::{SystemSpec, parse_system};
//! let (name, spec) = parse_system("gpt=openai:http://127.0.0.1:8000/v1#gpt-3.5-turbo").unwrap();
//! assert_eq!(name, "gpt");
//! assert!(matches!(spec, SystemSpec::OpenAi { .. }));
//! ```
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use koala_format::Turn;
use koala_model::{EngineConfig, Event, Request, SampleParams};
use koala_serve::{FormatName, Served};
use serde::Deserialize;

use crate::client::{ChatClient, ChatOptions, ClientConfig, Message, parse_openai_spec};
use crate::error::{Error, Result};
use crate::rows::{Usage, read_jsonl};

/// What a `--system` SPEC names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SystemSpec {
    /// A checkpoint directory and the prompt format that renders the question.
    Checkpoint { dir: PathBuf, format: String },
    /// A model behind an OpenAI-compatible endpoint.
    OpenAi { base_url: String, model: String },
    /// Answers read from a JSONL file.
    File(PathBuf),
}

/// Parses `NAME=SPEC`. Errors name the argument and say what was expected.
pub fn parse_system(arg: &str) -> Result<(String, SystemSpec)> {
    let Some((name, spec)) = arg.split_once('=') else {
        return Err(Error::Invalid(format!(
            "--system {arg:?}: expected NAME=SPEC, where SPEC is a checkpoint directory, \
             openai:BASE_URL#MODEL or file:PATH"
        )));
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(Error::Invalid(format!(
            "--system {arg:?}: the NAME is empty"
        )));
    }
    Ok((name.to_string(), parse_spec(spec)?))
}

/// Parses a SPEC (the part after `NAME=`).
pub fn parse_spec(spec: &str) -> Result<SystemSpec> {
    if spec.starts_with("openai:") {
        let (base_url, model) = parse_openai_spec(spec)?;
        return Ok(SystemSpec::OpenAi { base_url, model });
    }
    if let Some(p) = spec.strip_prefix("file:") {
        let path = PathBuf::from(p);
        if !path.is_file() {
            return Err(Error::Invalid(format!(
                "system spec {spec:?}: {p} is not a file"
            )));
        }
        return Ok(SystemSpec::File(path));
    }
    let (dir, format) = match spec.rsplit_once('#') {
        Some((d, f)) => (d, f.to_string()),
        None => (spec, "koala".to_string()),
    };
    if !["koala", "alpaca", "chat-template"].contains(&format.as_str()) {
        return Err(Error::Invalid(format!(
            "system spec {spec:?}: unknown prompt format {format:?} (koala, alpaca or chat-template)"
        )));
    }
    let dir = PathBuf::from(dir);
    if !dir.join("config.json").is_file() {
        return Err(Error::Invalid(format!(
            "system spec {spec:?}: not openai:BASE_URL#MODEL, not file:PATH, and {} is not a \
             checkpoint directory (no config.json)",
            dir.display()
        )));
    }
    Ok(SystemSpec::Checkpoint { dir, format })
}

/// One system's answer to one prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub response: String,
    pub finish_reason: String,
    pub latency_ms: u64,
    pub usage: Option<Usage>,
}

/// A boxed future of an answer.
pub type AnswerFuture<'a> = Pin<Box<dyn Future<Output = Result<Answer>> + Send + 'a>>;

/// Something that answers eval prompts.
pub trait System: Send + Sync {
    /// Answers the prompt `prompt` whose id is `prompt_id`.
    fn answer<'a>(&'a self, prompt_id: &'a str, prompt: &'a str) -> AnswerFuture<'a>;
}

/// Settings shared by the systems of one `eval generate` run.
#[derive(Clone, Debug)]
pub struct SystemOptions {
    /// New tokens at most (`None`: the endpoint's default; checkpoints: what the context leaves).
    pub max_tokens: Option<u32>,
    /// 0 = greedy.
    pub temperature: f64,
    /// Retries and timeouts of endpoint systems.
    pub client: ClientConfig,
    /// `cpu`, `cuda:N` or `auto`, for checkpoints.
    pub device: String,
}

impl Default for SystemOptions {
    fn default() -> Self {
        SystemOptions {
            max_tokens: None,
            temperature: 0.0,
            client: ClientConfig::default(),
            device: "cpu".into(),
        }
    }
}

/// Builds the system a spec names (loads a checkpoint, reads a file).
pub fn open_system(name: &str, spec: &SystemSpec, opts: &SystemOptions) -> Result<Arc<dyn System>> {
    Ok(match spec {
        SystemSpec::OpenAi { base_url, model } => Arc::new(OpenAiSystem {
            client: ChatClient::new(base_url, model, opts.client.clone())?,
            opts: ChatOptions {
                max_tokens: opts.max_tokens,
                temperature: Some(opts.temperature),
            },
        }),
        SystemSpec::File(path) => Arc::new(FileSystem::read(path)?),
        SystemSpec::Checkpoint { dir, format } => {
            let format = match format.as_str() {
                "alpaca" => FormatName::Alpaca,
                "chat-template" => FormatName::ChatTemplate,
                _ => FormatName::Koala,
            };
            let served = Served::load(name, dir, format, &opts.device, EngineConfig::default())
                .map_err(|e| Error::Invalid(format!("system {name} ({}): {e}", dir.display())))?;
            Arc::new(CheckpointSystem {
                served,
                max_tokens: opts.max_tokens.map(|m| m as usize),
                temperature: opts.temperature as f32,
            })
        }
    })
}

/// A model behind an OpenAI-compatible endpoint; the prompt is sent as one user message.
pub struct OpenAiSystem {
    client: ChatClient,
    opts: ChatOptions,
}

impl System for OpenAiSystem {
    fn answer<'a>(&'a self, _prompt_id: &'a str, prompt: &'a str) -> AnswerFuture<'a> {
        Box::pin(async move {
            let c = self
                .client
                .chat(&[Message::user(prompt)], self.opts)
                .await?;
            Ok(Answer {
                response: c.text,
                finish_reason: c.finish_reason,
                latency_ms: c.latency_ms,
                usage: c.usage,
            })
        })
    }
}

#[derive(Deserialize)]
struct FileRow {
    prompt_id: String,
    response: String,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    latency_ms: Option<u64>,
    #[serde(default)]
    usage: Option<Usage>,
}

/// Answers read from a JSONL file (`prompt_id` and `response`; the other [`crate::ResponseRow`]
/// fields are kept where present). A prompt the file lacks is an error for that prompt.
pub struct FileSystem {
    path: PathBuf,
    rows: HashMap<String, FileRow>,
}

impl FileSystem {
    /// Reads `path`; the first row of a repeated `prompt_id` wins.
    pub fn read(path: &Path) -> Result<Self> {
        let mut rows = HashMap::new();
        for r in read_jsonl::<FileRow>(path)? {
            rows.entry(r.prompt_id.clone()).or_insert(r);
        }
        Ok(FileSystem {
            path: path.to_path_buf(),
            rows,
        })
    }
}

impl System for FileSystem {
    fn answer<'a>(&'a self, prompt_id: &'a str, _prompt: &'a str) -> AnswerFuture<'a> {
        Box::pin(async move {
            let r = self.rows.get(prompt_id).ok_or_else(|| {
                Error::Request(format!(
                    "{}: no row with prompt_id {prompt_id:?}",
                    self.path.display()
                ))
            })?;
            Ok(Answer {
                response: r.response.clone(),
                finish_reason: r.finish_reason.clone().unwrap_or_else(|| "stop".into()),
                latency_ms: r.latency_ms.unwrap_or(0),
                usage: r.usage,
            })
        })
    }
}

/// A checkpoint run in-process on our engine: the question as one user turn in the model's
/// prompt format, greedy when the temperature is 0, cut at the model's EOS.
pub struct CheckpointSystem {
    served: Served,
    max_tokens: Option<usize>,
    temperature: f32,
}

impl System for CheckpointSystem {
    fn answer<'a>(&'a self, _prompt_id: &'a str, prompt: &'a str) -> AnswerFuture<'a> {
        Box::pin(async move {
            let t0 = Instant::now();
            let s = &self.served;
            let ids = s
                .chat_prompt(&[Turn::user(prompt)])
                .map_err(|e| Error::Request(format!("{}: {e:?}", s.name)))?;
            let ctx = s.engine.config().max_position_embeddings;
            let (ids, max_tokens) = koala_serve::models::fit(ids, self.max_tokens, ctx, s.bos)
                .map_err(|e| Error::Request(format!("{}: {e:?}", s.name)))?;
            let req = Request {
                prompt: ids,
                max_tokens,
                params: SampleParams {
                    temperature: self.temperature,
                    top_k: 0,
                    top_p: 1.0,
                    seed: Some(0),
                },
                stop_tokens: s.eos.clone(),
                watermark: None,
            };
            let mut stream = s
                .engine
                .submit(req)
                .map_err(|e| Error::Request(format!("{}: {e}", s.name)))?;
            let mut tokens = Vec::new();
            let (reason, prompt_tokens) = loop {
                match stream.next().await {
                    Some(Event::Token(t)) => tokens.push(t),
                    Some(Event::Done {
                        reason,
                        prompt_tokens,
                        ..
                    }) => break (reason, prompt_tokens),
                    Some(Event::Failed(m)) => {
                        return Err(Error::Request(format!(
                            "{}: generation failed: {m}",
                            s.name
                        )));
                    }
                    None => {
                        return Err(Error::Request(format!(
                            "{}: the engine ended the stream",
                            s.name
                        )));
                    }
                }
            };
            let response = s
                .tokenizer
                .decode(&tokens, true)
                .map_err(|e| Error::Request(format!("{}: decoding: {e}", s.name)))?;
            let completion = tokens.len() as u64;
            Ok(Answer {
                response: response.trim().to_string(),
                finish_reason: reason.as_str().to_string(),
                latency_ms: t0.elapsed().as_millis() as u64,
                usage: Some(Usage {
                    prompt_tokens: prompt_tokens as u64,
                    completion_tokens: completion,
                    total_tokens: prompt_tokens as u64 + completion,
                }),
            })
        })
    }
}
