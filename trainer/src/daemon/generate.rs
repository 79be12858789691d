//! `Generate`: sampling a job's newest checkpoint over the API, on koala-model's inference engine
//! (the engine `koala generate` runs), so a trained model can be tried where it was trained.
//!
//! A request is checked first (INVALID_ARGUMENT, the message starts with the field), before
//! anything is read or loaded. Then the model is found: a job's newest complete checkpoint
//! (NOT_FOUND for an unknown job, FAILED_PRECONDITION for one without a checkpoint yet), or a
//! `model_dir` inside the data root when the config sets `generate_allow_dirs` (PERMISSION_DENIED
//! otherwise). Its engine comes from a small cache keyed by the checkpoint directory, or is
//! loaded on the blocking pool on first use (weights memory-mapped, decoding on the engine's own
//! worker thread at `generate_device`). Tokens go back one message each as the worker decodes
//! them; a full engine queue is RESOURCE_EXHAUSTED. When the response stream is dropped (the
//! client disconnected or cancelled), the engine's stream is dropped with it, which cancels the
//! sequence at the engine's next step.
//!
//! The tokenizer of a job's checkpoint is, in order: a `tokenizer.json` in the checkpoint, the
//! tokenizer of the job's shards (`tokenizer_file` of its `manifest.json`, default
//! `tokenizer.json`, checked against the manifest's SHA-256 when it names one), the base model's
//! `tokenizer.json`. Without one, text prompts and stop strings are refused and the messages carry
//! token ids only. The EOS that ends generation is the checkpoint's `eos_token_id`, else the
//! shards' `eos_id`.
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use koala_model::text::{TextStream, Tokenizer};
use koala_model::{Engine, EngineConfig, Event, SampleParams, Weights};
use koala_proto::v1::generate_request::Model as Source;
use koala_proto::v1::{GenerateRequest, GenerateResponse, JobSpec, job_spec::BaseModel};
use sha2::{Digest, Sha256};
use tokio::sync::{OnceCell, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::scheduler::Core;
use super::validate::{MAX_PATH_BYTES, resolve_in_root};

/// `max_tokens` when a request leaves it at 0.
pub const DEFAULT_MAX_TOKENS: u32 = 128;
/// Stop strings per request, and bytes per stop string.
pub const MAX_STOPS: usize = 16;
pub const MAX_STOP_BYTES: usize = 256;
/// Engines kept loaded (least recently used first out).
pub const ENGINE_CACHE: usize = 2;
/// Messages buffered per stream before the decoding side waits for the client.
const STREAM_BUFFER: usize = 64;

/// How the daemon runs `Generate` (from `daemon.toml`).
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// `cpu`, `auto` or `cuda:N` (`generate_device`).
    pub device: String,
    /// Whether `model_dir` requests are allowed (`generate_allow_dirs`).
    pub allow_dirs: bool,
    /// The limits of each engine (batch, queue, prefill chunk).
    pub engine: EngineConfig,
    /// Engines kept loaded.
    pub cache: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            device: "cpu".into(),
            allow_dirs: false,
            engine: EngineConfig::default(),
            cache: ENGINE_CACHE,
        }
    }
}

/// The response stream of one `Generate` call.
pub type GenerateStream =
    Pin<Box<dyn Stream<Item = Result<GenerateResponse, Status>> + Send + 'static>>;

/// The prompt of a checked request.
#[derive(Debug, Clone, PartialEq)]
enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// A request whose fields passed the checks that need no model.
#[derive(Debug, Clone, PartialEq)]
struct Checked {
    source: Source,
    prompt: Prompt,
    max_tokens: usize,
    params: SampleParams,
    stop: Vec<String>,
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

/// Checks the fields that need no model; every failure names its field.
fn check(req: GenerateRequest) -> Result<Checked, Status> {
    let source = match req.model {
        None => {
            return Err(invalid(
                "model",
                "required: set job_id (sample that job's newest checkpoint) or model_dir",
            ));
        }
        Some(Source::ModelDir(d)) if d.len() > MAX_PATH_BYTES => {
            return Err(invalid(
                "model_dir",
                format!("is {} bytes; the limit is {MAX_PATH_BYTES}", d.len()),
            ));
        }
        Some(s) => s,
    };
    let prompt = match (req.prompt.is_empty(), req.prompt_ids.is_empty()) {
        (false, false) => return Err(invalid("prompt", "set prompt or prompt_ids, not both")),
        (true, true) => return Err(invalid("prompt", "required (set prompt or prompt_ids)")),
        (false, true) => Prompt::Text(req.prompt),
        (true, false) => Prompt::Ids(req.prompt_ids),
    };
    let defaults = SampleParams::default();
    let temperature = req.temperature.unwrap_or(defaults.temperature);
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(invalid(
            "temperature",
            format!("must be a finite number >= 0 (0 is greedy), got {temperature}"),
        ));
    }
    let top_p = req.top_p.unwrap_or(defaults.top_p);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid("top_p", format!("must be in (0, 1], got {top_p}")));
    }
    if req.stop.len() > MAX_STOPS {
        return Err(invalid(
            "stop",
            format!("{} strings; the limit is {MAX_STOPS}", req.stop.len()),
        ));
    }
    for (i, s) in req.stop.iter().enumerate() {
        if s.is_empty() {
            return Err(invalid(&format!("stop[{i}]"), "empty"));
        }
        if s.len() > MAX_STOP_BYTES {
            return Err(invalid(
                &format!("stop[{i}]"),
                format!("is {} bytes; the limit is {MAX_STOP_BYTES}", s.len()),
            ));
        }
    }
    let max_tokens = if req.max_tokens == 0 {
        DEFAULT_MAX_TOKENS
    } else {
        req.max_tokens
    };
    Ok(Checked {
        source,
        prompt,
        max_tokens: max_tokens as usize,
        params: SampleParams {
            temperature,
            top_k: req.top_k.map_or(defaults.top_k, |k| k as usize),
            top_p,
            seed: req.seed,
        },
        stop: req.stop,
    })
}

/// What a request samples: a canonical directory inside the data root and its tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    key: Key,
    /// The shards' EOS, used when the checkpoint's config names none.
    eos: Vec<u32>,
    /// The field errors about the model are reported under (`job_id` or `model_dir`).
    field: &'static str,
}

/// An engine cache key: the weights' directory and the tokenizer file served with them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    dir: PathBuf,
    tokenizer: Option<PathBuf>,
}

/// Finds the model of a request (blocking: reads the file system).
fn resolve(core: &Core, source: &Source, allow_dirs: bool) -> Result<Target, Status> {
    let root = core.data_root.as_path();
    match source {
        Source::JobId(id) => {
            let id = *id;
            let job = core
                .store
                .get_encoded(id)
                .ok_or_else(|| Status::not_found(format!("no job {id}")))?
                .decode_job()
                .map_err(|e| Status::internal(format!("stored job {id}: {e}")))?;
            let spec = job.spec.clone().unwrap_or_default();
            let out_dir = resolve_in_root("out_dir", &spec.out_dir, root, false)
                .map_err(|e| Status::failed_precondition(format!("job {id}: {e}")))?;
            let latest = crate::checkpoint::latest(&out_dir.join("checkpoints"))
                .map_err(|e| Status::internal(format!("job {id}: {e}")))?;
            let Some(dir) = latest else {
                return Err(Status::failed_precondition(format!(
                    "job {id} has no checkpoint yet ({}, step {} of {}): a job writes its first \
                     one after checkpoint_every steps, and always when it ends",
                    super::client::state_name(job.state()),
                    job.step,
                    job.total_steps
                )));
            };
            // The checkpoint must still be inside the data root after following symlinks.
            let dir = dir
                .canonicalize()
                .ok()
                .filter(|d| d.starts_with(root))
                .ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "job {id}: its checkpoint {} is not readable inside the data root",
                        dir.display()
                    ))
                })?;
            let (tokenizer, eos) = job_tokenizer(&dir, &spec, root);
            Ok(Target {
                key: Key { dir, tokenizer },
                eos,
                field: "job_id",
            })
        }
        Source::ModelDir(raw) => {
            if !allow_dirs {
                return Err(Status::permission_denied(
                    "model_dir: this daemon samples only the checkpoints of its jobs (send \
                     job_id; generate_allow_dirs = true in the daemon config allows directories)",
                ));
            }
            let dir = resolve_in_root("model_dir", raw, root, true)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            if !dir.join("config.json").is_file() {
                return Err(invalid("model_dir", format!("{raw:?} has no config.json")));
            }
            let tok = dir.join("tokenizer.json");
            Ok(Target {
                key: Key {
                    tokenizer: tok.is_file().then_some(tok),
                    dir,
                },
                eos: Vec::new(),
                field: "model_dir",
            })
        }
    }
}

/// The tokenizer file of a job's checkpoint `ckpt` (see the module docs for the order), and the
/// EOS id of its shards.
fn job_tokenizer(ckpt: &Path, spec: &JobSpec, root: &Path) -> (Option<PathBuf>, Vec<u32>) {
    let own = ckpt.join("tokenizer.json");
    let mut found = own.is_file().then_some(own);
    let mut eos = Vec::new();
    let shards = resolve_in_root("shards_dir", &spec.shards_dir, root, true).ok();
    let manifest = shards.as_ref().and_then(|s| {
        let text = std::fs::read_to_string(s.join("manifest.json")).ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()
    });
    if let Some(m) = &manifest
        && let Some(id) = m
            .get("eos_id")
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
    {
        eos.push(id);
    }
    if found.is_none()
        && let (Some(shards), Some(m)) = (&shards, &manifest)
    {
        let name = m
            .get("tokenizer_file")
            .and_then(|v| v.as_str())
            .unwrap_or("tokenizer.json");
        if let Ok(p) = resolve_in_root("tokenizer_file", name, shards, true)
            && p.is_file()
            && tokenizer_matches(m, &p)
        {
            found = Some(p);
        }
    }
    if found.is_none()
        && let Some(BaseModel::ModelDir(d)) = &spec.base_model
        && let Ok(dir) = resolve_in_root("model_dir", d, root, true)
    {
        let p = dir.join("tokenizer.json");
        if p.is_file() {
            found = Some(p);
        }
    }
    (found, eos)
}

/// Whether `path` hashes to the manifest's tokenizer SHA-256 (true when it names none). The keys
/// are the ones submission checks (`validate`): `tokenizer_hash`, `tokenizer_sha256`,
/// `tokenizer.sha256`, `tokenizer.hash`.
fn tokenizer_matches(manifest: &serde_json::Value, path: &Path) -> bool {
    let want = ["tokenizer_hash", "tokenizer_sha256"]
        .iter()
        .find_map(|k| manifest.get(*k))
        .or_else(|| manifest.pointer("/tokenizer/sha256"))
        .or_else(|| manifest.pointer("/tokenizer/hash"))
        .and_then(|v| v.as_str())
        .map(|s| s.trim_start_matches("sha256:").to_ascii_lowercase());
    let Some(want) = want else { return true };
    match std::fs::read(path) {
        Ok(bytes) if hex::encode(Sha256::digest(&bytes)) == want => true,
        Ok(_) => {
            tracing::warn!(
                "{}: not the tokenizer the manifest names (sha256 {want}); not used",
                path.display()
            );
            false
        }
        Err(_) => false,
    }
}

/// A loaded model: the engine, its tokenizer and EOS.
struct Model {
    /// Always `Some` until dropped.
    engine: Option<Engine>,
    tokenizer: Option<Tokenizer>,
    eos: Vec<u32>,
}

impl Model {
    fn load(key: &Key, device: &str, limits: EngineConfig) -> Result<Self, String> {
        let t0 = Instant::now();
        let tokenizer = match &key.tokenizer {
            Some(p) => Some(Tokenizer::from_file(p).map_err(|e| format!("{}: {e}", p.display()))?),
            None => None,
        };
        let w = Weights::load(&key.dir).map_err(|e| e.to_string())?;
        let eos = w.cfg.eos_ids();
        let engine = Engine::on_device(Arc::new(w), device, limits)
            .map_err(|e| format!("generate_device {device:?}: {e}"))?;
        tracing::info!(
            dir = %key.dir.display(),
            device = engine.device(),
            tokenizer = key.tokenizer.is_some(),
            "generate: model loaded in {:.0} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
        Ok(Model {
            engine: Some(engine),
            tokenizer,
            eos,
        })
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // Dropping an engine joins its worker thread, which first finishes the step it is in:
        // never on the async runtime.
        if let Some(engine) = self.engine.take() {
            let _ = std::thread::Builder::new()
                .name("koala-engine-drop".into())
                .spawn(move || drop(engine));
        }
    }
}

type Slot = Arc<OnceCell<Arc<Model>>>;

/// The loaded engines, least recently used first.
struct Cache {
    cap: usize,
    entries: Mutex<Vec<(Key, Slot)>>,
}

impl Cache {
    fn new(cap: usize) -> Self {
        Cache {
            cap: cap.max(1),
            entries: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Key, Slot)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slot of `key` (new and empty on a miss), now the most recently used. Evicted slots
    /// are dropped after the lock; their engines stop once their last stream ends.
    fn slot(&self, key: &Key) -> Slot {
        let mut evicted = Vec::new();
        let slot = {
            let mut entries = self.lock();
            let entry = match entries.iter().position(|(k, _)| k == key) {
                Some(i) => entries.remove(i),
                None => (key.clone(), Arc::new(OnceCell::new())),
            };
            let slot = entry.1.clone();
            entries.push(entry);
            while entries.len() > self.cap {
                evicted.push(entries.remove(0));
            }
            slot
        };
        drop(evicted);
        slot
    }

    /// Removes `slot` (a load that failed) so that it holds no place in the cache.
    fn forget(&self, slot: &Slot) {
        self.lock().retain(|(_, s)| !Arc::ptr_eq(s, slot));
    }

    #[cfg(test)]
    fn keys(&self) -> Vec<Key> {
        self.lock().iter().map(|(k, _)| k.clone()).collect()
    }
}

/// Serves `Generate` for a daemon: resolves requests against its job store and data root, and
/// keeps the engines.
pub struct Generator {
    core: Arc<Core>,
    opts: GenerateOptions,
    cache: Cache,
}

impl Generator {
    pub fn new(core: Arc<Core>, opts: GenerateOptions) -> Self {
        Generator {
            cache: Cache::new(opts.cache),
            core,
            opts,
        }
    }

    /// Checks and starts one generation; the stream yields its messages.
    pub async fn generate(&self, req: GenerateRequest) -> Result<GenerateStream, Status> {
        let Checked {
            source,
            prompt,
            max_tokens,
            params,
            stop,
        } = check(req)?;
        let core = self.core.clone();
        let allow_dirs = self.opts.allow_dirs;
        let target = tokio::task::spawn_blocking(move || resolve(&core, &source, allow_dirs))
            .await
            .map_err(|e| Status::internal(format!("generate task failed: {e}")))??;
        if target.key.tokenizer.is_none() {
            let why = "no tokenizer.json with the checkpoint";
            if matches!(prompt, Prompt::Text(_)) {
                return Err(invalid("prompt", format!("{why}; send prompt_ids")));
            }
            if !stop.is_empty() {
                return Err(invalid(
                    "stop",
                    format!("{why} to match stop strings against"),
                ));
            }
        }
        let model = self.model(&target).await?;
        let (ids, prompt_field) = match prompt {
            Prompt::Ids(ids) => (ids, "prompt_ids"),
            Prompt::Text(text) => {
                let m = model.clone();
                let ids = tokio::task::spawn_blocking(move || -> Result<Vec<u32>, Status> {
                    let tk = m
                        .tokenizer
                        .as_ref()
                        .ok_or_else(|| invalid("prompt", "no tokenizer; send prompt_ids"))?;
                    let enc = tk
                        .encode(text.as_str(), true)
                        .map_err(|e| invalid("prompt", format!("cannot be tokenised: {e}")))?;
                    Ok(enc.get_ids().to_vec())
                })
                .await
                .map_err(|e| Status::internal(format!("tokenizer task failed: {e}")))??;
                if ids.is_empty() {
                    return Err(invalid("prompt", "tokenises to no tokens"));
                }
                (ids, "prompt")
            }
        };
        let engine = model
            .engine
            .as_ref()
            .ok_or_else(|| Status::unavailable("the engine has shut down"))?;
        let stop_tokens = if model.eos.is_empty() {
            target.eos.clone()
        } else {
            model.eos.clone()
        };
        let prompt_len = ids.len();
        let stream = engine
            .submit(koala_model::Request {
                prompt: ids,
                max_tokens,
                params,
                stop_tokens,
                watermark: None,
            })
            .map_err(|e| engine_status(e, prompt_field))?;
        tracing::debug!(
            dir = %target.key.dir.display(),
            prompt_tokens = prompt_len,
            max_tokens,
            "generate: started"
        );
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let label = target.key.dir.to_string_lossy().into_owned();
        tokio::spawn(forward(model, stream, prompt_len, stop, label, tx));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    /// The model of `target`, from the cache or loaded now (one load per key at a time).
    async fn model(&self, target: &Target) -> Result<Arc<Model>, Status> {
        let slot = self.cache.slot(&target.key);
        let key = target.key.clone();
        let device = self.opts.device.clone();
        let limits = self.opts.engine.clone();
        let got = slot
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || {
                    let dir = key.dir.clone();
                    Model::load(&key, &device, limits).map_err(|e| (dir, e))
                })
                .await
                .map_err(|e| (PathBuf::new(), format!("load task failed: {e}")))?
                .map(Arc::new)
            })
            .await
            .cloned();
        got.map_err(|(dir, e)| {
            self.cache.forget(&slot);
            tracing::warn!("generate: cannot load {}: {e}", dir.display());
            if !dir.as_os_str().is_empty() && !dir.exists() {
                // A running job pruned the checkpoint between the lookup and the load.
                Status::unavailable(format!(
                    "{}: the checkpoint was replaced while loading it; retry",
                    target.field
                ))
            } else if target.field == "model_dir" {
                invalid("model_dir", format!("cannot be loaded: {e}"))
            } else {
                Status::internal(format!("the checkpoint cannot be loaded: {e}"))
            }
        })
    }
}

/// The gRPC status of an engine refusal. Its `Invalid` messages start with the field; a prompt
/// sent as ids is reported as `prompt_ids`.
fn engine_status(e: koala_model::Error, prompt_field: &str) -> Status {
    match e {
        koala_model::Error::Invalid(m) => {
            Status::invalid_argument(match m.strip_prefix("prompt:") {
                Some(rest) => format!("{prompt_field}:{rest}"),
                None => m,
            })
        }
        koala_model::Error::QueueFull(n) => Status::resource_exhausted(format!(
            "the generation queue is full ({n} requests waiting); retry later"
        )),
        koala_model::Error::Shutdown => Status::unavailable("the engine has shut down"),
        other => Status::internal(other.to_string()),
    }
}

/// Saturating `usize` → `u32` for the token counts.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Sends the engine's events as messages until the sequence ends or the client goes away. Every
/// way out drops `stream`, which cancels the sequence if it is still running.
async fn forward(
    model: Arc<Model>,
    mut stream: koala_model::Stream,
    prompt_len: usize,
    stops: Vec<String>,
    label: String,
    tx: mpsc::Sender<Result<GenerateResponse, Status>>,
) {
    let mut text = model
        .tokenizer
        .as_ref()
        .map(|tk| TextStream::new(tk, stops));
    let mut first = Some(label);
    let mut produced = 0usize;
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            // The client went away: stop now, not after the next token.
            _ = tx.closed() => break,
        };
        let (msg, last) = match ev {
            Some(Event::Token(t)) => {
                produced += 1;
                let (delta, stopped) = match text.as_mut().map(|ts| ts.push(t)) {
                    None => (String::new(), false),
                    Some(Ok(d)) => (d.text, d.stopped),
                    Some(Err(e)) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        break;
                    }
                };
                let msg = GenerateResponse {
                    text: delta,
                    token_ids: vec![t],
                    checkpoint: first.take().unwrap_or_default(),
                    ..Default::default()
                };
                if stopped {
                    // A stop string: this token ends the completion (the engine learns it when
                    // `stream` is dropped below).
                    if tx.send(Ok(msg)).await.is_err() {
                        break;
                    }
                    (
                        GenerateResponse {
                            finish_reason: koala_model::FinishReason::Stop.as_str().into(),
                            prompt_tokens: count(prompt_len),
                            completion_tokens: count(produced),
                            ..Default::default()
                        },
                        true,
                    )
                } else {
                    (msg, false)
                }
            }
            Some(Event::Done {
                reason,
                prompt_tokens,
                completion_tokens,
            }) => (
                GenerateResponse {
                    text: text.as_mut().map(|ts| ts.finish()).unwrap_or_default(),
                    finish_reason: reason.as_str().into(),
                    prompt_tokens: count(prompt_tokens),
                    completion_tokens: count(completion_tokens),
                    checkpoint: first.take().unwrap_or_default(),
                    ..Default::default()
                },
                true,
            ),
            Some(Event::Failed(m)) => {
                let _ = tx
                    .send(Err(Status::internal(format!("generation failed: {m}"))))
                    .await;
                break;
            }
            None => {
                let _ = tx
                    .send(Err(Status::unavailable("the engine stopped")))
                    .await;
                break;
            }
        };
        if tx.send(Ok(msg)).await.is_err() || last {
            break;
        }
    }
    // The stream (cancelling the sequence) goes first, then what borrows the model, then the model.
    drop(stream);
    drop(text);
    drop(model);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::store::Store;
    use tonic::Code;

    fn req(f: impl FnOnce(&mut GenerateRequest)) -> GenerateRequest {
        let mut r = GenerateRequest {
            model: Some(Source::JobId(1)),
            prompt_ids: vec![1, 2, 3],
            ..Default::default()
        };
        f(&mut r);
        r
    }

    fn refused(r: GenerateRequest, field: &str) {
        let e = check(r).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().starts_with(&format!("{field}:")),
            "{field}: {}",
            e.message()
        );
    }

    #[test]
    fn checks_name_the_field_and_fill_in_defaults() {
        let ok = check(req(|_| {})).unwrap();
        assert_eq!(ok.max_tokens, DEFAULT_MAX_TOKENS as usize);
        assert_eq!(ok.params, SampleParams::default());
        assert_eq!(ok.prompt, Prompt::Ids(vec![1, 2, 3]));
        let greedy = check(req(|r| {
            r.temperature = Some(0.0);
            r.top_k = Some(0);
            r.top_p = Some(0.5);
            r.seed = Some(9);
            r.max_tokens = 7;
        }))
        .unwrap();
        assert_eq!(
            greedy.params,
            SampleParams {
                temperature: 0.0,
                top_k: 0,
                top_p: 0.5,
                seed: Some(9)
            }
        );
        assert_eq!(greedy.max_tokens, 7);

        refused(req(|r| r.model = None), "model");
        refused(
            req(|r| r.model = Some(Source::ModelDir("m".repeat(5000)))),
            "model_dir",
        );
        refused(req(|r| r.prompt = "hi".into()), "prompt");
        refused(req(|r| r.prompt_ids.clear()), "prompt");
        for t in [-1.0, f32::NAN, f32::INFINITY] {
            refused(req(|r| r.temperature = Some(t)), "temperature");
        }
        for p in [0.0, -0.5, 1.5, f32::NAN] {
            refused(req(|r| r.top_p = Some(p)), "top_p");
        }
        refused(req(|r| r.stop = vec!["x".into(); MAX_STOPS + 1]), "stop");
        refused(req(|r| r.stop = vec!["a".into(), String::new()]), "stop[1]");
        refused(
            req(|r| r.stop = vec!["s".repeat(MAX_STOP_BYTES + 1)]),
            "stop[0]",
        );
    }

    #[test]
    fn engine_refusals_map_to_grpc_codes() {
        let full = engine_status(koala_model::Error::QueueFull(64), "prompt");
        assert_eq!(full.code(), Code::ResourceExhausted);
        let ids = engine_status(
            koala_model::Error::Invalid("prompt: token id 99 >= vocab_size 64".into()),
            "prompt_ids",
        );
        assert_eq!(ids.code(), Code::InvalidArgument);
        assert_eq!(ids.message(), "prompt_ids: token id 99 >= vocab_size 64");
        let max = engine_status(
            koala_model::Error::Invalid("max_tokens must be at least 1".into()),
            "prompt",
        );
        assert!(max.message().starts_with("max_tokens"), "{max:?}");
        assert_eq!(
            engine_status(koala_model::Error::Shutdown, "prompt").code(),
            Code::Unavailable
        );
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used() {
        let key = |d: &str| Key {
            dir: d.into(),
            tokenizer: None,
        };
        let c = Cache::new(2);
        let a = c.slot(&key("a"));
        assert!(Arc::ptr_eq(&a, &c.slot(&key("a"))));
        let b = c.slot(&key("b"));
        let _ = c.slot(&key("a"));
        let _ = c.slot(&key("c"));
        assert_eq!(c.keys(), vec![key("a"), key("c")], "b was the least recent");
        assert!(!Arc::ptr_eq(&b, &c.slot(&key("b"))), "b was evicted");
        assert_eq!(c.keys(), vec![key("c"), key("b")]);
        let b2 = c.slot(&key("b"));
        c.forget(&b2);
        assert_eq!(c.keys(), vec![key("c")]);
        // Another tokenizer with the same weights is another entry.
        let mut with_tk = key("c");
        with_tk.tokenizer = Some("t.json".into());
        let _ = c.slot(&with_tk);
        assert_eq!(c.keys(), vec![key("c"), with_tk]);
    }

    #[test]
    fn a_jobs_tokenizer_is_found_in_order() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        let ckpt = root.join("runs/a/checkpoints/step-00000002");
        let shards = root.join("shards/s");
        let model = root.join("models/m");
        for dir in [&ckpt, &shards, &model] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let spec = JobSpec {
            base_model: Some(BaseModel::ModelDir("models/m".into())),
            shards_dir: "shards/s".into(),
            out_dir: "runs/a".into(),
            ..Default::default()
        };
        let found = || job_tokenizer(&ckpt, &spec, &root);
        let manifest = |extra: &str| {
            std::fs::write(
                shards.join("manifest.json"),
                format!(r#"{{"vocab_size": 64, "eos_id": 1{extra}}}"#),
            )
            .unwrap()
        };
        manifest("");
        assert_eq!(found(), (None, vec![1]));
        std::fs::write(model.join("tokenizer.json"), "base").unwrap();
        assert_eq!(found().0, Some(model.join("tokenizer.json")));
        // The shards' tokenizer (default name) comes before the base model's...
        std::fs::write(shards.join("tokenizer.json"), "shards").unwrap();
        assert_eq!(found().0, Some(shards.join("tokenizer.json")));
        // ...under the manifest's name, when its hash matches.
        std::fs::write(shards.join("tok.json"), "named").unwrap();
        let sha = hex::encode(Sha256::digest(b"named"));
        manifest(&format!(
            r#", "tokenizer_file": "tok.json", "tokenizer_sha256": "{sha}""#
        ));
        assert_eq!(found().0, Some(shards.join("tok.json")));
        manifest(r#", "tokenizer_file": "tok.json", "tokenizer_sha256": "00""#);
        assert_eq!(found().0, Some(model.join("tokenizer.json")), "wrong hash");
        // A manifest cannot point outside the shards directory.
        manifest(r#", "tokenizer_file": "../../models/m/tokenizer.json""#);
        std::fs::remove_file(model.join("tokenizer.json")).unwrap();
        assert_eq!(found().0, None);
        // The checkpoint's own tokenizer comes first.
        std::fs::write(ckpt.join("tokenizer.json"), "own").unwrap();
        assert_eq!(found(), (Some(ckpt.join("tokenizer.json")), vec![1]));
    }

    fn tiny_hf() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/tiny_hf")
    }

    /// A generator over a fresh store whose data root holds a copy of koala-model's tiny HF model
    /// (`models/tiny`) and a small random model with a long context (`models/long`), on which an
    /// uncancelled sequence runs for thousands of steps.
    fn generator(opts: GenerateOptions) -> (tempfile::TempDir, Generator) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("data").join("models/tiny");
        std::fs::create_dir_all(&root).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(tiny_hf().join(f), root.join(f)).unwrap();
        }
        let cfg = koala_model::LlamaConfig::from_json_str(
            r#"{"vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
                "num_hidden_layers": 1, "num_attention_heads": 2,
                "max_position_embeddings": 8192}"#,
        )
        .unwrap();
        let w = crate::weights::init_weights(&cfg, 1, 0.5);
        crate::weights::save_dir(&d.path().join("data/models/long"), &cfg, &w, 1 << 30).unwrap();
        let state = d.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let store = Store::open(&state.join("jobs.sqlite3")).unwrap();
        let data_root = d.path().join("data").canonicalize().unwrap();
        let core = Arc::new(Core::new(store, data_root, state));
        (d, Generator::new(core, opts))
    }

    fn dir_req(max_tokens: u32) -> GenerateRequest {
        GenerateRequest {
            model: Some(Source::ModelDir("models/tiny".into())),
            prompt_ids: vec![1, 304, 290],
            max_tokens,
            temperature: Some(0.0),
            ..Default::default()
        }
    }

    /// Greedy from `models/long`.
    fn long_req(max_tokens: u32) -> GenerateRequest {
        GenerateRequest {
            model: Some(Source::ModelDir("models/long".into())),
            prompt_ids: vec![1, 2, 3],
            max_tokens,
            temperature: Some(0.0),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn model_dirs_only_when_allowed_and_a_full_queue_is_resource_exhausted() {
        let (_d, g) = generator(GenerateOptions::default());
        let e = g.generate(dir_req(4)).await.err().unwrap();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().starts_with("model_dir:"), "{e:?}");
        let e = g
            .generate(GenerateRequest {
                model: Some(Source::JobId(3)),
                ..dir_req(4)
            })
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");

        // One sequence at a time and one waiting: a third, while the first decodes its long
        // completion, finds the queue full.
        let (_d, g) = generator(GenerateOptions {
            allow_dirs: true,
            engine: EngineConfig {
                max_batch: 1,
                queue_capacity: 1,
                prefill_chunk: 256,
            },
            ..Default::default()
        });
        let mut held = Vec::new();
        let mut full = None;
        for _ in 0..6 {
            match g.generate(long_req(8000)).await {
                Ok(s) => held.push(s),
                Err(e) => {
                    full = Some(e);
                    break;
                }
            }
        }
        let e = full.expect("a full queue");
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        // Dropping the streams cancels their sequences: the queue drains and takes requests again.
        drop(held);
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let mut s = loop {
            match g.generate(long_req(3)).await {
                Ok(s) => break s,
                Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e:?}"),
            }
        };
        let mut ids = Vec::new();
        let mut last = None;
        while let Some(m) = tokio_stream::StreamExt::next(&mut s).await {
            let m = m.unwrap();
            ids.extend(m.token_ids.iter().copied());
            if !m.finish_reason.is_empty() {
                last = Some(m);
            }
        }
        let last = last.expect("a last message");
        assert_eq!(
            (last.finish_reason.as_str(), last.prompt_tokens),
            ("length", 3)
        );
        assert_eq!(last.completion_tokens as usize, ids.len());
        assert_eq!(ids.len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_response_stream_cancels_the_sequence() {
        let (_d, g) = generator(GenerateOptions {
            allow_dirs: true,
            ..Default::default()
        });
        let max_tokens = 8000;
        let mut s = g.generate(long_req(max_tokens)).await.unwrap();
        let first = tokio_stream::StreamExt::next(&mut s)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.token_ids.len(), 1);
        assert!(first.checkpoint.ends_with("models/long"), "{first:?}");
        let model = g
            .cache
            .lock()
            .first()
            .and_then(|(_, slot)| slot.get().cloned())
            .unwrap();
        let gauges = model.engine.as_ref().unwrap().gauges();
        let load = |g: &std::sync::atomic::AtomicUsize| g.load(std::sync::atomic::Ordering::SeqCst);
        drop(s);
        // The engine stops stepping (nothing else is active) well before the sequence's end.
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let before = load(&gauges.steps);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if load(&gauges.steps) == before && load(&gauges.active) == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "still decoding: not cancelled");
        }
        // Finishing would have taken `max_tokens` steps.
        let steps = load(&gauges.steps);
        assert!(steps < max_tokens as usize, "{steps} steps");
    }
}
