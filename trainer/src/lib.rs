//! LLaMA fine-tuning core and daemon (see docs/architecture.md).
pub mod daemon;
