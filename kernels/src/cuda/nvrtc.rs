//! Run-time compilation of the kernel modules with NVRTC (through cudarc's dynamic loading).
//!
//! cudarc finds `libnvrtc` by `dlopen` of names such as `libnvrtc.so` and `libnvrtc.so.12`, which
//! only searches `LD_LIBRARY_PATH` and the system paths. The PyPI wheel `nvidia-cuda-nvrtc-cu12`
//! ships `libnvrtc.so.12` (and `libnvrtc-builtins.so.12.x`) in `site-packages/nvidia/cuda_nvrtc/lib`,
//! which is on neither. When `KOALA_NVRTC_DIR` names that directory, [`ensure_nvrtc`] loads the
//! library from it by full path first; the later `dlopen("libnvrtc.so.12")` then matches the
//! already-loaded object by its SONAME, so no `LD_LIBRARY_PATH` is needed. Nothing here panics when
//! NVRTC is missing: [`ensure_nvrtc`] returns [`Error::Unavailable`].
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::nvrtc::{CompileOptions, Ptx};

use super::modules::Module;
use crate::{Error, Result};

/// The environment variable naming a directory that holds `libnvrtc.so.12`.
pub const NVRTC_DIR_ENV: &str = "KOALA_NVRTC_DIR";

/// The architectures the compile test covers (A100 and H100).
pub const TEST_ARCHS: [&str; 2] = ["sm_80", "sm_90"];

static PRELOADED: OnceLock<Vec<libloading::Library>> = OnceLock::new();

fn preload_dir(dir: &Path) -> Vec<libloading::Library> {
    let mut libs = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return libs;
    };
    let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    // The builtins library first: libnvrtc dlopens it by name at compile time.
    names.sort_by_key(|p| !p.to_string_lossy().contains("builtins"));
    for path in names {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("libnvrtc") && name.contains(".so") && !name.contains(".alt.") {
            // SAFETY: loading NVIDIA's NVRTC runs its initialisers, which have no preconditions.
            if let Ok(lib) = unsafe { libloading::Library::new(&path) } {
                tracing::debug!(path = %path.display(), "preloaded NVRTC library");
                libs.push(lib);
            }
        }
    }
    libs
}

/// Makes NVRTC loadable, or says why it is not. Safe to call many times.
pub fn ensure_nvrtc() -> Result<()> {
    PRELOADED.get_or_init(|| match std::env::var_os(NVRTC_DIR_ENV) {
        Some(dir) => preload_dir(Path::new(&dir)),
        None => Vec::new(),
    });
    // SAFETY: only probes `dlopen` with cudarc's candidate names.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::Unavailable(format!(
            "NVRTC (libnvrtc.so.12) not found: install the PyPI package nvidia-cuda-nvrtc-cu12 and set \
             {NVRTC_DIR_ENV} to its site-packages/nvidia/cuda_nvrtc/lib (scripts/test.sh does this), \
             or put a CUDA toolkit's lib64 on LD_LIBRARY_PATH"
        )))
    }
}

/// Compiles one module for `arch` (`"sm_80"`, `"sm_90"`, ...), returning the PTX text.
pub fn compile_module(module: &Module, arch: &'static str) -> Result<String> {
    Ok(compile_module_ptx(module, arch)?.to_src())
}

/// Compiles one module for `arch` into a [`Ptx`] that a context can load.
pub fn compile_module_ptx(module: &Module, arch: &'static str) -> Result<Ptx> {
    ensure_nvrtc()?;
    let opts = CompileOptions {
        arch: Some(arch),
        name: Some(format!("{}.cu", module.name)),
        options: vec!["--std=c++17".into()],
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(module.source(), opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => Error::Device(format!(
            "NVRTC failed to compile kernels/cuda/{}.cu for {arch}:\n{}",
            module.name,
            log.to_string_lossy()
        )),
        other => Error::Device(format!(
            "NVRTC error on kernels/cuda/{}.cu for {arch}: {other}",
            module.name
        )),
    })
}

/// The `.entry` names declared in a PTX text, in order.
pub fn ptx_entries(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let rest = line
                .strip_prefix(".visible .entry ")
                .or_else(|| line.strip_prefix(".entry "))?;
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// The kind of one kernel parameter as PTX declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// `.u64`/`.s64`/`.b64`: a pointer or a 64-bit integer.
    B64,
    /// `.u32`/`.s32`/`.b32`: a 32-bit integer.
    B32,
    /// `.f32`.
    F32,
    /// Anything else (aggregates, other widths).
    Other,
}

/// Every `.entry` of a PTX text with the kinds of its parameters, in order. The backend checks each
/// launch's arguments against this, so a launcher whose arguments drift from the kernel's
/// signature fails with an error instead of passing garbage.
pub fn ptx_params(ptx: &str) -> Vec<(String, Vec<ParamKind>)> {
    let mut out: Vec<(String, Vec<ParamKind>)> = Vec::new();
    let mut open = false;
    for line in ptx.lines() {
        let t = line.trim();
        if let Some(rest) = t
            .strip_prefix(".visible .entry ")
            .or_else(|| t.strip_prefix(".entry "))
        {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            open = !rest.contains(')');
            out.push((name, Vec::new()));
        } else if open {
            if let Some(rest) = t.strip_prefix(".param ") {
                let ty = rest.split_whitespace().next().unwrap_or_default();
                let kind = match ty {
                    ".u64" | ".s64" | ".b64" => ParamKind::B64,
                    ".u32" | ".s32" | ".b32" => ParamKind::B32,
                    ".f32" => ParamKind::F32,
                    _ => ParamKind::Other,
                };
                if let Some(last) = out.last_mut() {
                    last.1.push(kind);
                }
            }
            if t.starts_with(')') {
                open = false;
            }
        }
    }
    out
}
