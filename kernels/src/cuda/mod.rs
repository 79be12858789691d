//! The CUDA side of the op set: kernel sources ([`modules`], always compiled in, so tools can list
//! them), and with the `cuda` feature the NVRTC compiler wrapper ([`nvrtc`]), the ptxas resource
//! report ([`ptxas`]) and [`CudaBackend`], the [`crate::Backend`] implementation on one GPU.
//!
//! Everything loads CUDA at run time (cudarc's dynamic loading), so this builds and runs on machines
//! with no CUDA and no GPU; see `docs/gpu.md` for the kernel layout and the precision policy.
pub mod modules;

#[cfg(feature = "cuda")]
mod backend;
#[cfg(feature = "cuda")]
pub mod nvrtc;
#[cfg(feature = "cuda")]
pub mod ptxas;
#[cfg(feature = "cuda")]
pub use backend::{CudaBackend, CudaBuf, CudaIds, DType, Precision, device_count, driver_present};
