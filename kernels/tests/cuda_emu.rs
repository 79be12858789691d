//! Runs every CUDA kernel on the CPU: `kernels/cuda/emu/harness.cpp` compiles the kernel sources
//! with the host C++ compiler against a small emulator of the CUDA execution model
//! (`kernels/cuda/emu/emu.h`: fibers per thread, block and warp barriers, shuffles, shared memory),
//! launches them with the backend's launch shapes, and compares them with naive double-precision
//! references, f32 and bf16 stamps alike (94 checks: embedding, RMSNorm, RoPE, attention fwd/bwd
//! with GQA, packing and tile edges, SwiGLU, cross-entropy, AdamW with master weights, global norm,
//! casts, residual, LoRA dropout against the standard SplitMix64).
//!
//! This is how the kernels' arithmetic, indexing and barrier logic are tested on machines without a
//! GPU; it says nothing about speed, and `kernels/tests/cuda_ops.rs` remains the test on a GPU.
//! Needs a C++20 compiler (`$CXX`, else `c++`); without one the test prints `skipped: …`.
use std::path::PathBuf;
use std::process::Command;

#[test]
fn kernels_match_naive_references_under_the_cpu_emulator() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let harness = manifest.join("cuda/emu/harness.cpp");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let exe = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("koala-cuda-emu");
    let compiled = Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-Wno-unknown-pragmas", "-o"])
        .arg(&exe)
        .arg(&harness)
        .output();
    let compiled = match compiled {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: no C++ compiler ({cxx}: {e}); set CXX to a C++20 compiler");
            return;
        }
    };
    assert!(
        compiled.status.success(),
        "compiling {} with {cxx} failed:\n{}",
        harness.display(),
        String::from_utf8_lossy(&compiled.stderr)
    );
    let run = Command::new(&exe)
        .output()
        .expect("running the emulator harness");
    let stdout = String::from_utf8_lossy(&run.stdout);
    for line in stdout.lines().filter(|l| !l.starts_with("ok")) {
        eprintln!("{line}");
    }
    assert!(
        run.status.success(),
        "kernel checks failed under the emulator:\n{stdout}"
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert_eq!(
        summary, "94 checks, 0 failed",
        "unexpected summary (a check was dropped?)"
    );
}
