//! The pipeline's one error type.
use std::path::PathBuf;

/// Everything that can go wrong in the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A malformed input record: names the file, the line or row (1-based), and the field.
    #[error("{file}:{line}: field `{field}`: {message}")]
    Record {
        file: String,
        line: u64,
        field: String,
        message: String,
    },
    /// An input directory with none of the sources' layouts, or a source whose every record
    /// failed to parse: the message lists what was found and what was expected.
    #[error("{0}")]
    Input(String),
    /// A bad configuration value.
    #[error("config: {0}")]
    Config(String),
    /// An invariant of the pipeline was broken (for example rows in != kept + dropped).
    #[error("invariant broken: {0}")]
    Invariant(String),
    #[error(transparent)]
    Polars(#[from] polars::error::PolarsError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// Building a prompt format failed (a chat template that does not load or compile).
    #[error(transparent)]
    Format(#[from] koala_format::Error),
    /// Loading a test set failed (names the file, line and field).
    #[error(transparent)]
    TestSet(#[from] koala_testsets::Error),
}

/// The pipeline's result type.
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
