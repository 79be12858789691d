//! The trainer's one error type.
use std::path::PathBuf;

/// Everything the trainer can fail with. Messages name the file and the field involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An op of the backend failed (shape, index or device error).
    #[error(transparent)]
    Kernel(#[from] koala_kernels::Error),
    /// Loading or running a model for inference failed.
    #[error(transparent)]
    Model(#[from] koala_model::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not what we expect (bad JSON, TOML, safetensors, Arrow).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// A configuration value is invalid.
    #[error("config: {0}")]
    Config(String),
    /// Anything else that is the caller's mistake (mismatched shapes between two models, ...).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// A format error on `path`.
    pub fn format(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
}

/// The trainer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
