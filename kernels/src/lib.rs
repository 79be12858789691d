//! The LLaMA training op set: a [`Backend`] trait with a forward and a backward per op.
//!
//! The CPU backend ([`cpu`]) is the f32 reference; the CUDA backend implements the same trait.
//! See `docs/kernels.md`, `docs/architecture.md` and the contract on each method of [`Backend`].
pub mod backend;
pub mod cpu;
pub mod error;

pub use backend::{AdamWParams, AttnShape, Backend, LoraShape, lora_keep};
pub use cpu::CpuBackend;
pub use error::{Error, Result};
// ---- CUDA backend, communicators, backend selection (helper "cuda"; see docs/gpu.md) ----
pub mod comm;
pub mod cuda;
pub mod select;
