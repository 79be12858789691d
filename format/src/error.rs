//! The format crate's one error type: loading a chat template. (A conversation that a format
//! cannot render is not an error but an [`crate::Unrenderable`], skipped and counted.)
use std::path::PathBuf;

/// What can go wrong while building a format.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file (a `tokenizer_config.json`).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A malformed file: names the file, the line (1-based), and the field.
    #[error("{file}:{line}: field `{field}`: {message}")]
    Record {
        file: String,
        line: u64,
        field: String,
        message: String,
    },
    /// A chat template that does not compile.
    #[error("chat template does not compile: {0}")]
    Template(String),
}

/// The format crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
