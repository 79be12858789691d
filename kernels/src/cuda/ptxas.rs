//! Register and spill report per kernel from `ptxas -v` (the assembler in the PyPI wheel
//! `nvidia-cuda-nvcc-cu12`, found through `KOALA_PTXAS`).
//!
//! This is how the kernels' resource use is checked without a GPU: a kernel that spills, or that
//! needs so many registers that its block size cannot be resident, shows up here.
use std::path::Path;
use std::process::Command;

use crate::{Error, Result};

/// The environment variable naming the `ptxas` binary.
pub const PTXAS_ENV: &str = "KOALA_PTXAS";

/// Resource use of one kernel as `ptxas -v` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelResources {
    pub name: String,
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    pub stack_bytes: u32,
    pub shared_bytes: u32,
}

/// Assembles `ptx` for `arch` with the `ptxas` at `ptxas` and parses its `-v` report.
pub fn assemble_report(ptxas: &Path, ptx: &str, arch: &str) -> Result<Vec<KernelResources>> {
    let dir = std::env::temp_dir().join(format!("koala-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Device(format!("creating {}: {e}", dir.display())))?;
    let src = dir.join("module.ptx");
    let bin = dir.join("module.cubin");
    std::fs::write(&src, ptx)
        .map_err(|e| Error::Device(format!("writing {}: {e}", src.display())))?;
    let out = Command::new(ptxas)
        .arg(format!("-arch={arch}"))
        .arg("-v")
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .output()
        .map_err(|e| Error::Device(format!("running {}: {e}", ptxas.display())))?;
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(Error::Device(format!("ptxas -arch={arch} failed:\n{text}")));
    }
    Ok(parse_report(&text))
}

fn number_before(text: &str, unit: &str) -> Option<u32> {
    let idx = text.find(unit)?;
    text[..idx].split_whitespace().last()?.parse().ok()
}

/// Parses the `ptxas -v` output into one entry per kernel, in the order ptxas reports them.
pub fn parse_report(text: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(KernelResources {
                name,
                ..Default::default()
            });
        } else if let Some(k) = out.last_mut() {
            if line.contains("spill stores") {
                k.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
                k.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
                k.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("Used") && line.contains("registers") {
                k.registers = number_before(line, "registers").unwrap_or(0);
                k.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}

/// Formats a report as an aligned table.
pub fn format_report(arch: &str, rows: &[KernelResources]) -> String {
    let mut s = format!(
        "{:<28} {:>5} {:>12} {:>11} {:>6} {:>6}  ({arch})\n",
        "kernel", "regs", "spill_st(B)", "spill_ld(B)", "stack", "smem"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<28} {:>5} {:>12} {:>11} {:>6} {:>6}\n",
            r.name, r.registers, r.spill_stores, r.spill_loads, r.stack_bytes, r.shared_bytes
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_verbose_output() {
        let text = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'rmsnorm_fwd_f32' for 'sm_90'\n\
ptxas info    : Function properties for rmsnorm_fwd_f32\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 18 registers, used 0 barriers, 128 bytes smem, 384 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'rope_fwd_f32' for 'sm_90'\n\
ptxas info    : Function properties for rope_fwd_f32\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 30 registers, used 1 barriers, 384 bytes cmem[0]\n";
        let rows = parse_report(text);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            KernelResources {
                name: "rmsnorm_fwd_f32".into(),
                registers: 18,
                spill_stores: 4,
                spill_loads: 12,
                stack_bytes: 8,
                shared_bytes: 128
            }
        );
        assert_eq!(rows[1].name, "rope_fwd_f32");
        assert_eq!(rows[1].registers, 30);
        assert_eq!(rows[1].spill_stores, 0);
    }
}
