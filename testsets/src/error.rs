use std::path::PathBuf;

/// Errors of test-set loading.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record that does not parse, with the file, the 1-based line (or list index) and the field.
    #[error("{file}:{line}: field `{field}`: {message}")]
    Record {
        file: String,
        line: u64,
        field: String,
        message: String,
    },
    #[error("unknown eval set `{0}`: expected `koala`, `self-instruct` or a file path")]
    UnknownSet(String),
    /// A labels file (`koala testset check --labels`) that does not parse or does not fit the
    /// test prompts.
    #[error("{file}:{line}: {message}")]
    Labels {
        file: String,
        line: u64,
        message: String,
    },
    /// Labels that match none of the test prompts, or test prompts with clashing ids.
    #[error("{0}")]
    Check(String),
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
