use std::path::PathBuf;

/// Errors of the eval crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line of an input file that does not parse, with the file and the 1-based line.
    #[error("{file}:{line}: {message}")]
    Record {
        file: String,
        line: u64,
        message: String,
    },
    #[error(transparent)]
    TestSet(#[from] koala_testsets::Error),
    /// A bad argument or setting.
    #[error("{0}")]
    Invalid(String),
    /// A request to a system or judge that failed for good (after its retries, or at once for a
    /// client error such as HTTP 400/401).
    #[error("{0}")]
    Request(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
