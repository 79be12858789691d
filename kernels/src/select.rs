//! Backend selection from a device string: `"cpu"`, `"cuda"` (= `"cuda:0"`), `"cuda:N"` or
//! `"auto"`, and device lists for data parallelism (`"cuda:0..4"`, `"cuda:0,cuda:1"`).
//!
//! * `auto` picks `cuda:0` when a driver, a GPU, NVRTC and cuBLAS are all present, and otherwise
//!   falls back to the CPU, saying why ([`Selected::fallback`], also logged as a warning).
//! * An explicit `cuda[:N]` that cannot be honoured is an [`Error::Unavailable`] naming what is
//!   missing (no driver, no GPU, ordinal out of range, no NVRTC, built without the `cuda` feature).
//! * Nothing here panics, on any machine: the CUDA libraries are probed before they are used.
//!
//! ```
//! use koala_kernels::select::{DeviceSpec, select};
//!
//! assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
//! assert_eq!(DeviceSpec::parse_list("cuda:0..2").unwrap(), vec![DeviceSpec::Cuda(0), DeviceSpec::Cuda(1)]);
//! // Always succeeds: the GPU when there is one, else the CPU with the reason.
//! let sel = select("auto").unwrap();
//! println!("{} ({:?})", sel.name(), sel.fallback());
//! ```
use std::str::FromStr;

use crate::{Backend, CpuBackend, Error, Result};

/// A parsed device string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    Auto,
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(DeviceSpec::Auto),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => match t.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map(DeviceSpec::Cuda).map_err(|_| {
                    Error::Unavailable(format!(
                        "bad device {s:?}: expected cuda:N with N a GPU ordinal"
                    ))
                }),
                None => Err(Error::Unavailable(format!(
                    "unknown device {s:?}: expected cpu, cuda, cuda:N or auto"
                ))),
            },
        }
    }
}

impl DeviceSpec {
    /// Parses a device list: one device, a comma-separated list, or a range `cuda:A..B` (B
    /// exclusive), as a JobSpec's `devices` field gives them. Duplicates are an error.
    pub fn parse_list(s: &str) -> Result<Vec<DeviceSpec>> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some((a, b)) = part
                .to_ascii_lowercase()
                .strip_prefix("cuda:")
                .and_then(|r| r.split_once(".."))
            {
                let bad =
                    || Error::Unavailable(format!("bad device range {part:?}: expected cuda:A..B"));
                let a: usize = a.parse().map_err(|_| bad())?;
                let b: usize = b.parse().map_err(|_| bad())?;
                if a >= b {
                    return Err(bad());
                }
                out.extend((a..b).map(DeviceSpec::Cuda));
            } else {
                out.push(part.parse()?);
            }
        }
        if out.is_empty() {
            return Err(Error::Unavailable(format!("empty device list {s:?}")));
        }
        for (i, d) in out.iter().enumerate() {
            if out[..i].contains(d) {
                return Err(Error::Unavailable(format!(
                    "device {d:?} listed twice in {s:?}"
                )));
            }
        }
        Ok(out)
    }
}

/// The backend a device string selected.
pub enum Selected {
    /// The CPU; `fallback` says why `auto` did not pick a GPU.
    Cpu {
        backend: CpuBackend,
        fallback: Option<String>,
    },
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::CudaBackend),
}

impl Selected {
    /// The backend's name (`cpu`, `cuda:0`).
    pub fn name(&self) -> String {
        match self {
            Selected::Cpu { backend, .. } => backend.name(),
            #[cfg(feature = "cuda")]
            Selected::Cuda(b) => b.name(),
        }
    }

    /// Why `auto` fell back to the CPU, if it did.
    pub fn fallback(&self) -> Option<&str> {
        match self {
            Selected::Cpu { fallback, .. } => fallback.as_deref(),
            #[cfg(feature = "cuda")]
            Selected::Cuda(_) => None,
        }
    }
}

/// Opens `cuda:ordinal` in bf16 mixed precision, or says why it cannot.
#[cfg(feature = "cuda")]
pub fn open_cuda(ordinal: usize) -> Result<Selected> {
    open_cuda_with(ordinal, crate::cuda::Precision::Bf16)
}

/// Opens `cuda:ordinal` with an explicit precision policy.
#[cfg(feature = "cuda")]
pub fn open_cuda_with(ordinal: usize, precision: crate::cuda::Precision) -> Result<Selected> {
    // The libraries are probed before use, so this should never unwind; the guard keeps a panic
    // inside a CUDA library binding from taking the caller down all the same.
    std::panic::catch_unwind(|| crate::cuda::CudaBackend::new(ordinal, precision))
        .unwrap_or_else(|_| {
            Err(Error::Unavailable(
                "the CUDA runtime panicked while opening the device".into(),
            ))
        })
        .map(Selected::Cuda)
        .map_err(|e| match e {
            Error::Unavailable(msg) => Error::Unavailable(format!("cuda:{ordinal}: {msg}")),
            other => other,
        })
}

/// Without the `cuda` feature, every CUDA request is an error.
#[cfg(not(feature = "cuda"))]
pub fn open_cuda(ordinal: usize) -> Result<Selected> {
    Err(Error::Unavailable(format!(
        "cuda:{ordinal}: koala-kernels was built without the `cuda` feature"
    )))
}

/// Selects a backend from a device string (see the module docs).
pub fn select(spec: &str) -> Result<Selected> {
    match spec.parse::<DeviceSpec>()? {
        DeviceSpec::Cpu => Ok(Selected::Cpu {
            backend: CpuBackend::new(),
            fallback: None,
        }),
        DeviceSpec::Cuda(n) => open_cuda(n),
        DeviceSpec::Auto => match open_cuda(0) {
            Ok(sel) => Ok(sel),
            Err(e) => {
                let why = format!("no usable GPU, running on the CPU: {e}");
                tracing::warn!("{why}");
                Ok(Selected::Cpu {
                    backend: CpuBackend::new(),
                    fallback: Some(why),
                })
            }
        },
    }
}
