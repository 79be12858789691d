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
/// LoRA adapters in peft's format: config, tensors, save and load.
pub mod lora;
pub mod model;
pub mod notebook;
pub mod npy;
pub mod optim;
/// The memory planner behind `koala plan`: per-GPU memory and tokens/s of a fine-tuning job.
pub mod plan;
pub mod plot;
pub mod schedule;
pub mod tensorboard;
pub mod train;
pub mod weights;

pub use config::LlamaConfig;
pub use error::{Error, Result};
pub use hparams::{Hyper, LossMode};
/// The tokio the daemon client is built with, so that a notebook drives the client with the same
/// version (and needs no `:dep tokio` of its own).
pub use tokio;
pub use train::{Observer, RunOutcome, TrainConfig, TrainEvent, run};

/// What a notebook needs to train locally or to drive the daemon over gRPC, in one
/// `use koala_trainer::prelude::*;`.
///
/// ```no_run
/// use koala_trainer::prelude::*;
/// # async fn demo() -> std::result::Result<(), Box<dyn std::error::Error>> {
/// let mut c = connect(&ClientOptions { addr: "127.0.0.1:50051".into(), ..Default::default() }).await?;
/// let spec: JobSpec = JobFile::load("job.toml".as_ref())?;
/// let job = c.submit_job(spec).await?.into_inner();
/// let done = watch(&mut c, job.id, false).await?;
/// let metrics = c.get_metrics(GetMetricsRequest { id: done.id }).await?.into_inner();
/// # Ok(()) }
/// ```
pub mod prelude {
    pub use crate::daemon::client::{
        Client, ClientError, ClientOptions, JobFile, Sampled, connect, describe_job, generate,
        state_name, watch,
    };
    pub use crate::notebook::{LossHistory, block_on};
    pub use crate::train::{MetricRecord, Observer, RunOutcome, TrainConfig, TrainEvent, run};
    pub use koala_proto::v1::job_event::Kind;
    pub use koala_proto::v1::{
        GenerateRequest, GetJobRequest, GetMetricsRequest, Job, JobSpec, JobState, MetricPoint,
        WatchJobRequest, generate_request,
    };
}
