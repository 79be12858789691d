//! LLaMA inference for serving, evaluation and the CLI (see docs/serving.md).
//!
//! * [`config`]: the architecture from a HF `config.json` (shared with the trainer);
//! * [`weights`]: inference-only weights, memory-mapped from safetensors with no copy when the
//!   file is already `f32`;
//! * [`engine`]: the batched KV-cache decoding engine (continuous batching on a worker thread);
//! * [`sampling`]: temperature, top-k, top-p;
//! * [`text`]: incremental detokenisation with stop strings that may span tokens;
//! * [`gguf`]: export to GGUF for llama.cpp and Ollama, with a LoRA adapter merged ([`lora`]);
//! * [`watermark`]: a keyed green-list watermark (Kirchenbauer et al. 2023) and its detector;
//! * [`weight_diff`]: Koala-style weight diffs against a base checkpoint, and recovery, exact to
//!   the bit and checked by sha256 (see docs/weights.md).
pub mod config;
pub mod engine;
pub mod error;
pub mod forward;
pub mod gguf;
pub mod isa;
pub mod kv;
pub mod linear;
pub mod lora;
pub mod sampling;
pub mod text;
pub mod watermark;
pub mod weight_diff;
pub mod weights;

pub use config::LlamaConfig;
pub use engine::{Engine, EngineConfig, Event, FinishReason, Request, Stream};
pub use error::{Error, Result};
pub use sampling::SampleParams;
pub use text::TextStream;
pub use watermark::Watermark;
pub use weights::{WeightDtype, Weights};
