//! The Koala-scale synthetic corpus shared by the curation benches (each includes this file with
//! `#[path]`).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// `KOALA_BENCH_DATA` when set; otherwise `koala synth --scale koala` into a temp folder, run
/// once with the built `koala` binary (`env!("CARGO_BIN_EXE_koala")`) and reused after.
pub fn koala_corpus(koala: &Path) -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("KOALA_BENCH_DATA") {
        return Ok(PathBuf::from(d));
    }
    let d = std::env::temp_dir().join("koala-bench-synth-koala");
    if !d.join(".complete").exists() {
        let t = Instant::now();
        let st = Command::new(koala)
            .args(["synth", "--scale", "koala", "--out"])
            .arg(&d)
            .status()?;
        anyhow::ensure!(st.success(), "koala synth failed");
        std::fs::write(d.join(".complete"), b"")?;
        println!("synth: {:.1} s", t.elapsed().as_secs_f64());
    }
    Ok(d)
}
