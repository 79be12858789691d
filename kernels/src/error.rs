//! The kernels' one error type.

/// Everything an op or a backend can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Buffer lengths or dimensions that do not fit the op's contract.
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    /// An id, target or position outside its valid range.
    #[error("{op}: index {index} out of range (limit {limit})")]
    Index {
        op: &'static str,
        index: u64,
        limit: u64,
    },
    /// The requested backend is not available on this machine (no driver, no GPU, not compiled in).
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// A device-side failure.
    #[error("device error: {0}")]
    Device(String),
}

/// The kernels' result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
