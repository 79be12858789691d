//! The daemon's error type.
use std::path::PathBuf;

/// Errors of the daemon's own machinery (store, config, server); RPC errors are `tonic::Status`.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("job store: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("job store: stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("config: {0}")]
    Config(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Server(String),
}

/// Result with [`DaemonError`].
pub type Result<T, E = DaemonError> = std::result::Result<T, E>;
