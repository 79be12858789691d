//! GGUF export, for llama.cpp and Ollama: a Hugging Face LLaMA directory (config.json,
//! safetensors and its tokenizer), optionally with a PEFT LoRA adapter merged in, written as one
//! `.gguf` file with the `llama` architecture.
//!
//! * [`writer`]: the GGUF v3 container and the tensor encodings (f32, f16, bf16, q8_0);
//! * [`vocab`]: the tokenizer as `tokenizer.ggml.*` metadata (SentencePiece or byte-level BPE);
//! * [`sentencepiece`]: the `tokenizer.model` protobuf;
//! * [`export()`]: the tensors under llama.cpp's names, Q/K rows permuted to its RoPE layout.
//!
//! ```no_run
//! use koala_model::gguf::{export, ExportOptions, TensorType};
//! let opts = ExportOptions { dtype: TensorType::F16, ..Default::default() };
//! let report = export("out/demo/model".as_ref(), "demo.gguf".as_ref(), &opts).unwrap();
//! println!("{} tensors, {} bytes", report.tensors, report.bytes);
//! ```
mod export;
pub mod sentencepiece;
pub mod vocab;
pub mod writer;

pub use export::{ExportOptions, ExportReport, export, permute_rope_rows};
pub use writer::TensorType;
