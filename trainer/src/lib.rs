//! LLaMA fine-tuning core and daemon (see docs/training.md, docs/daemon.md and docs/architecture.md).
//!
//! * [`config`]: the architecture from a HF `config.json`;
//! * [`weights`]: HF-layout safetensors load/save, seeded init, weight diff/recover;
//! * [`hparams`], [`schedule`]: presets and the learning-rate schedule;
//! * [`train`]: the training loop and the API the daemon calls;
//! * [`daemon`]: the gRPC job daemon (`koala-trainerd`, `koala serve`).
pub mod checkpoint;
/// The architecture config now lives in `koala-model`; re-exported under its old path.
pub use koala_model::config;
pub mod daemon;
pub mod data;
pub mod dp;
pub mod error;
pub mod hparams;
pub mod infer;
pub mod model;
pub mod npy;
pub mod optim;
pub mod plot;
pub mod schedule;
pub mod tensorboard;
pub mod train;
pub mod weights;

pub use config::LlamaConfig;
pub use error::{Error, Result};
pub use hparams::{Hyper, LossMode};
pub use train::{Observer, RunOutcome, TrainConfig, TrainEvent, run};
