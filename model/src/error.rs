//! The model crate's one error type.
use std::path::PathBuf;

/// Everything loading and running a model can fail with. Messages name the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An op of the backend failed (shape, index or device error).
    #[error(transparent)]
    Kernel(#[from] koala_kernels::Error),
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not what we expect (bad JSON, safetensors, tokenizer).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// A request or argument is invalid; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// A tensor of a checkpoint or weight diff is missing or not what was expected.
    #[error("{path}: tensor {tensor}: {msg}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        msg: String,
    },
    /// A tensor's sha256 differs from the one a weight diff recorded in `manifest`: a wrong base
    /// checkpoint, a corrupted diff, or a recovered tensor that is not the fine-tuned one (the
    /// message gives both checksums and says which).
    #[error("{path}: tensor {tensor}: {msg}")]
    Checksum {
        path: PathBuf,
        tensor: String,
        manifest: PathBuf,
        msg: String,
    },
    /// The engine's bounded queue is full; retry later.
    #[error("the generation queue is full ({0} requests waiting)")]
    QueueFull(usize),
    /// The engine thread has stopped.
    #[error("the engine has shut down")]
    Shutdown,
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

/// The model crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
