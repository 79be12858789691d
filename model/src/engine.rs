//! The decoding engine: one worker thread that owns the model and runs continuous batching.
//!
//! Requests wait in a bounded queue ([`EngineConfig::queue_capacity`]; a full queue is
//! [`Error::QueueFull`], never unbounded memory). Between steps the worker admits waiting
//! requests up to [`EngineConfig::max_batch`] active sequences, drops sequences whose [`Stream`]
//! was dropped (a client that disconnected, or a server that matched a stop string), and runs
//! one forward pass over all of them: each new sequence brings a chunk of its prompt (at most
//! [`EngineConfig::prefill_chunk`] prompt tokens per step in all, so decoding sequences are not
//! stalled by a long prompt), each decoding sequence its last sampled token.
//!
//! ```no_run
//! use std::sync::Arc;
//! use koala_model::{Engine, EngineConfig, Request, SampleParams, Weights};
//! let w = Arc::new(Weights::load(std::path::Path::new("out/demo/model")).unwrap());
//! let engine = Engine::cpu(w, EngineConfig::default());
//! let out = engine
//!     .generate(Request::new(vec![1, 15, 27], 16, SampleParams::greedy()))
//!     .unwrap();
//! println!("{:?} ({:?})", out.tokens, out.finish);
//! ```
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::config::LlamaConfig;
use crate::forward::{Model, Projector, Slice};
use crate::kv::KvCache;
use crate::sampling::{SampleParams, sample};
use crate::watermark::Watermark;
use crate::weights::Weights;
use crate::{Error, Result};

/// Limits of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Sequences decoded together in one step.
    pub max_batch: usize,
    /// Requests that may wait for a batch slot; one more is refused with [`Error::QueueFull`].
    pub queue_capacity: usize,
    /// Prompt tokens processed per step, over all sequences.
    pub prefill_chunk: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch: 16,
            queue_capacity: 64,
            prefill_chunk: 256,
        }
    }
}

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// It produced a stop token (EOS), or its consumer stopped it (a stop string).
    Stop,
    /// It reached `max_tokens` or the model's context.
    Length,
}

impl FinishReason {
    /// OpenAI's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One generation request, in tokens.
#[derive(Clone, Debug)]
pub struct Request {
    /// The prompt (must be non-empty and fit the context with at least one free position).
    pub prompt: Vec<u32>,
    /// New tokens at most.
    pub max_tokens: usize,
    pub params: SampleParams,
    /// Tokens that end the sequence (not sent as [`Event::Token`]): the model's EOS.
    pub stop_tokens: Vec<u32>,
    /// Bias sampling towards a keyed green list.
    pub watermark: Option<Watermark>,
}

impl Request {
    /// A request with no stop tokens and no watermark.
    pub fn new(prompt: Vec<u32>, max_tokens: usize, params: SampleParams) -> Self {
        Request {
            prompt,
            max_tokens,
            params,
            stop_tokens: Vec::new(),
            watermark: None,
        }
    }
}

/// What a [`Stream`] yields.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// One new token.
    Token(u32),
    /// The sequence ended; always the last event of a stream that did not fail.
    Done {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The forward pass failed; the sequence is dropped.
    Failed(String),
}

/// The events of one request. Dropping it cancels the request at the next step.
pub struct Stream {
    rx: UnboundedReceiver<Event>,
    /// When the request was submitted (for time-to-first-token figures).
    pub submitted: Instant,
}

impl Stream {
    /// The next event (async); `None` once the stream ended.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event, blocking the thread (not for use inside an async runtime).
    pub fn blocking_next(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }
}

/// The result of [`Engine::generate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
}

struct Job {
    req: Request,
    tx: UnboundedSender<Event>,
}

/// Gauges of the engine, readable from any thread.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Requests waiting for a slot.
    pub waiting: AtomicUsize,
    /// Sequences in the batch.
    pub active: AtomicUsize,
    /// KV-cache bytes held by active sequences.
    pub kv_bytes: AtomicUsize,
    /// Forward steps run.
    pub steps: AtomicUsize,
}

/// A handle to the engine's worker thread; cheap to share behind an `Arc`.
pub struct Engine {
    tx: Mutex<Option<SyncSender<Job>>>,
    cfg: LlamaConfig,
    limits: EngineConfig,
    device: String,
    gauges: Arc<Gauges>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Engine {
    /// An engine that projects on the CPU from the memory-mapped weights.
    pub fn cpu(w: Arc<Weights>, limits: EngineConfig) -> Self {
        Self::start(Model::cpu(w), limits)
    }

    /// An engine with any projector (see [`crate::forward::BackendProjector`] for CUDA).
    pub fn with_projector(w: Arc<Weights>, proj: Box<dyn Projector>, limits: EngineConfig) -> Self {
        Self::start(Model::with_projector(w, proj), limits)
    }

    /// An engine on a device named as everywhere in koala (`cpu`, `cuda:N`, or `auto`: CUDA
    /// when a GPU and its libraries are present, the CPU otherwise). On CUDA the projections run
    /// in f32 through cuBLAS.
    pub fn on_device(w: Arc<Weights>, device: &str, limits: EngineConfig) -> Result<Self> {
        use koala_kernels::select::{DeviceSpec, Selected};
        let spec: DeviceSpec = device.parse()?;
        let sel = match spec {
            DeviceSpec::Cpu => return Ok(Self::cpu(w, limits)),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(n) => {
                koala_kernels::select::open_cuda_with(n, koala_kernels::cuda::Precision::F32)?
            }
            #[cfg(feature = "cuda")]
            DeviceSpec::Auto => {
                match koala_kernels::select::open_cuda_with(0, koala_kernels::cuda::Precision::F32)
                {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::info!("decoding on the CPU: {e}");
                        return Ok(Self::cpu(w, limits));
                    }
                }
            }
            #[cfg(not(feature = "cuda"))]
            _ => koala_kernels::select::select(device)?,
        };
        match sel {
            Selected::Cpu { .. } => Ok(Self::cpu(w, limits)),
            #[cfg(feature = "cuda")]
            Selected::Cuda(be) => {
                let p = crate::forward::BackendProjector::new(be, &w)?;
                Ok(Self::with_projector(w, Box::new(p), limits))
            }
        }
    }

    fn start(model: Model, limits: EngineConfig) -> Self {
        let cfg = model.w.cfg.clone();
        let device = model.device();
        let (tx, rx) = std::sync::mpsc::sync_channel(limits.queue_capacity.max(1));
        let gauges = Arc::new(Gauges::default());
        let g = gauges.clone();
        let l = limits.clone();
        let worker = std::thread::Builder::new()
            .name("koala-engine".into())
            .spawn(move || Worker::new(model, l, g).run(rx))
            .ok();
        Engine {
            tx: Mutex::new(Some(tx)),
            cfg,
            limits,
            device,
            gauges,
            worker: Mutex::new(worker),
        }
    }

    /// The model's architecture.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The engine's limits.
    pub fn limits(&self) -> &EngineConfig {
        &self.limits
    }

    /// Where projections run (`cpu`, `cuda:0`).
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Live counters.
    pub fn gauges(&self) -> &Gauges {
        &self.gauges
    }

    /// Queues a request. Fails at once with [`Error::Invalid`] (naming the field) or
    /// [`Error::QueueFull`].
    pub fn submit(&self, req: Request) -> Result<Stream> {
        let ctx = self.cfg.max_position_embeddings;
        if req.prompt.is_empty() {
            return Err(Error::Invalid("prompt: no tokens".into()));
        }
        if req.prompt.len() >= ctx {
            return Err(Error::Invalid(format!(
                "prompt: {} tokens leave no room in the context of {ctx}",
                req.prompt.len()
            )));
        }
        if let Some(&bad) = req
            .prompt
            .iter()
            .find(|&&t| t as usize >= self.cfg.vocab_size)
        {
            return Err(Error::Invalid(format!(
                "prompt: token id {bad} >= vocab_size {}",
                self.cfg.vocab_size
            )));
        }
        if req.max_tokens == 0 {
            return Err(Error::Invalid("max_tokens must be at least 1".into()));
        }
        req.params.validate().map_err(Error::Invalid)?;
        let (etx, erx) = unbounded_channel();
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = guard.as_ref() else {
            return Err(Error::Shutdown);
        };
        self.gauges.waiting.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(Job { req, tx: etx }) {
            Ok(()) => Ok(Stream {
                rx: erx,
                submitted: Instant::now(),
            }),
            Err(TrySendError::Full(_)) => {
                self.gauges.waiting.fetch_sub(1, Ordering::SeqCst);
                Err(Error::QueueFull(self.limits.queue_capacity))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.gauges.waiting.fetch_sub(1, Ordering::SeqCst);
                Err(Error::Shutdown)
            }
        }
    }

    /// Runs a request to the end on the calling thread's behalf (blocking).
    pub fn generate(&self, req: Request) -> Result<Output> {
        let mut s = self.submit(req)?;
        let mut tokens = Vec::new();
        while let Some(ev) = s.blocking_next() {
            match ev {
                Event::Token(t) => tokens.push(t),
                Event::Done {
                    reason,
                    prompt_tokens,
                    ..
                } => {
                    return Ok(Output {
                        tokens,
                        finish: reason,
                        prompt_tokens,
                    });
                }
                Event::Failed(m) => return Err(Error::Invalid(m)),
            }
        }
        Err(Error::Shutdown)
    }

    /// Stops the worker after the sequences it holds; later submits fail with `Shutdown`.
    pub fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

static IDLE_HOOK: OnceLock<fn()> = OnceLock::new();

/// Sets a function that every engine's worker calls when it runs out of work (no sequence
/// active, no request waiting) after having decoded, just before it blocks for the next request.
/// The `koala` binary returns freed memory to the OS there: its allocator (mimalloc) keeps freed
/// pages (a full batch's KV caches) until more allocator activity comes, which an idle server
/// never makes. Only the first call takes effect.
pub fn set_idle_hook(hook: fn()) {
    let _ = IDLE_HOOK.set(hook);
}

/// One active sequence.
struct Seq {
    job: Job,
    cache: KvCache,
    /// Prompt tokens already in the cache.
    fed: usize,
    /// The token sampled last, to feed next.
    next: Option<u32>,
    /// The token before `next` (the watermark's context).
    prev: u32,
    produced: usize,
    rng: ChaCha8Rng,
}

struct Worker {
    model: Model,
    limits: EngineConfig,
    gauges: Arc<Gauges>,
    active: Vec<Seq>,
}

static SEED_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Worker {
    fn new(model: Model, limits: EngineConfig, gauges: Arc<Gauges>) -> Self {
        Worker {
            model,
            limits,
            gauges,
            active: Vec::new(),
        }
    }

    fn run(mut self, rx: Receiver<Job>) {
        let mut open = true;
        // Whether a step ran since the engine last went idle.
        let mut busy = false;
        loop {
            // Admit waiting requests while there is room.
            while open && self.active.len() < self.limits.max_batch.max(1) {
                let job = if self.active.is_empty() {
                    let next = match rx.try_recv() {
                        Ok(j) => Ok(j),
                        Err(TryRecvError::Empty) => {
                            // Out of work: the idle hook runs once, then wait.
                            if std::mem::take(&mut busy)
                                && let Some(hook) = IDLE_HOOK.get()
                            {
                                hook();
                            }
                            rx.recv().map_err(|_| ())
                        }
                        Err(TryRecvError::Disconnected) => Err(()),
                    };
                    match next {
                        Ok(j) => j,
                        Err(()) => {
                            open = false;
                            break;
                        }
                    }
                } else {
                    match rx.try_recv() {
                        Ok(j) => j,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                };
                self.gauges.waiting.fetch_sub(1, Ordering::SeqCst);
                self.admit(job);
            }
            if self.active.is_empty() {
                if !open {
                    return;
                }
                continue;
            }
            // Cancelled: nobody listens any more.
            self.active.retain(|s| !s.job.tx.is_closed());
            if self.active.is_empty() {
                self.publish();
                continue;
            }
            busy = true;
            if let Err(e) = self.step() {
                tracing::error!("engine step failed: {e}");
                for s in self.active.drain(..) {
                    let _ = s.job.tx.send(Event::Failed(e.to_string()));
                }
            }
            self.publish();
        }
    }

    fn publish(&self) {
        self.gauges
            .active
            .store(self.active.len(), Ordering::Relaxed);
        self.gauges.kv_bytes.store(
            self.active.iter().map(|s| s.cache.bytes()).sum(),
            Ordering::Relaxed,
        );
    }

    fn admit(&mut self, job: Job) {
        let seed = job.req.params.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            t ^ (SEED_COUNTER.fetch_add(1, Ordering::Relaxed) as u64).wrapping_mul(0x9E37_79B9)
        });
        let reserve = job.req.prompt.len() + job.req.max_tokens;
        let prev = *job.req.prompt.last().unwrap_or(&0);
        let cache = KvCache::new(&self.model.w.cfg, reserve);
        self.active.push(Seq {
            job,
            cache,
            fed: 0,
            next: None,
            prev,
            produced: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        });
    }

    fn step(&mut self) -> Result<()> {
        let mut budget = self.limits.prefill_chunk.max(1);
        let mut slices = Vec::with_capacity(self.active.len());
        let mut who = Vec::with_capacity(self.active.len());
        for (i, s) in self.active.iter_mut().enumerate() {
            let plen = s.job.req.prompt.len();
            if s.fed < plen {
                if budget == 0 {
                    continue;
                }
                let n = (plen - s.fed).min(budget);
                budget -= n;
                let end = s.fed + n;
                let tokens = &s.job.req.prompt[s.fed..end];
                s.fed = end;
                slices.push(Slice {
                    cache: &mut s.cache,
                    tokens,
                    logits: end == plen,
                });
                who.push((i, end == plen));
            } else if let Some(t) = s.next.as_ref() {
                slices.push(Slice {
                    cache: &mut s.cache,
                    tokens: std::slice::from_ref(t),
                    logits: true,
                });
                who.push((i, true));
            }
        }
        let vocab = self.model.w.cfg.vocab_size;
        let logits = self.model.step_logits(&mut slices)?;
        drop(slices);
        self.gauges.steps.fetch_add(1, Ordering::Relaxed);
        let mut li = logits.chunks_mut(vocab);
        let mut finished = Vec::new();
        for (i, wants) in who {
            if !wants {
                continue;
            }
            let Some(lg) = li.next() else { break };
            let s = &mut self.active[i];
            if let Some(t) = s.next {
                s.prev = t;
            }
            let req = &s.job.req;
            if let Some(wm) = &req.watermark {
                wm.bias(s.prev, lg);
            }
            let tok = sample(lg, &req.params, &mut s.rng);
            let done = |reason| Event::Done {
                reason,
                prompt_tokens: req.prompt.len(),
                completion_tokens: s.produced,
            };
            if req.stop_tokens.contains(&tok) {
                let _ = s.job.tx.send(done(FinishReason::Stop));
                finished.push(i);
                continue;
            }
            s.produced += 1;
            let _ = s.job.tx.send(Event::Token(tok));
            let full = s.cache.free() == 0;
            if s.produced >= req.max_tokens || full {
                let ev = Event::Done {
                    reason: FinishReason::Length,
                    prompt_tokens: req.prompt.len(),
                    completion_tokens: s.produced,
                };
                let _ = s.job.tx.send(ev);
                finished.push(i);
                continue;
            }
            s.next = Some(tok);
        }
        finished.sort_unstable();
        for i in finished.into_iter().rev() {
            self.active.swap_remove(i);
        }
        Ok(())
    }
}
