//! The trainer daemon (`koala-trainerd`, `koala serve`): a gRPC service (`koala.trainer.v1`) that
//! queues fine-tuning jobs in a durable SQLite store, runs them one at a time per device set on a
//! dedicated thread, and resumes a job from its last checkpoint after a crash.
//!
//! Layout, in request order: [`config`] → [`server`] (tonic, TLS, health, reflection) →
//! [`auth`] (bearer token) → [`service`] (RPC handlers) → [`validate`] (JobSpec rules) →
//! [`store`] (SQLite, WAL) → [`scheduler`] (FIFO per [`devices`] set) → [`runner`] (the training
//! trait) → [`train_runner`] (the real trainer). [`generate`] serves `Generate` (sampling a job's
//! checkpoint on koala-model's engine). [`client`] is the Rust client the CLI uses;
//! [`hooks`] holds the debug pause points of the crash tests; [`wire`] the pre-encoded replies of
//! `GetJob`/`ListJobs`. See docs/daemon.md.
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod devices;
pub mod error;
pub mod generate;
pub mod hooks;
pub mod runner;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod store;
pub mod train_runner;
pub mod validate;
pub mod wire;

pub use config::DaemonConfig;
pub use error::{DaemonError, Result};
pub use runner::{RunEvent, RunOutcome, RunRequest, RunSink, Runner};
