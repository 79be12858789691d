//! Knobs and verdicts shared by the decode and serving benches (each includes this file with
//! `#[path]`).
use std::path::PathBuf;

/// An integer knob from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The middle value of `v` (the upper middle for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// How a goal's line reads.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}
