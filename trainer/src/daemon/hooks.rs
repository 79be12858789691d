//! Debug pause points for crash tests.
//!
//! When the environment variable `KOALA_TRAINERD_PAUSE_AT` names a point (a comma-separated list
//! is allowed), the daemon thread that reaches it writes `<state_dir>/paused-at-<point>` and then
//! sleeps forever, so that a test can `kill -9` the daemon at exactly that point. Points:
//!
//! | point | where |
//! |---|---|
//! | `submitted` | the job is stored, the SubmitJob answer is not yet sent |
//! | `running` | the job is stored as RUNNING, training has not begun |
//! | `step-N` | step N's progress is stored |
//! | `checkpoint-N` | the trainer reported checkpoint N on disk, the store does not know yet |
//! | `finished` | training returned, SUCCEEDED is not yet stored |
//!
//! Unset (the normal case), each check is one environment lookup.
use std::path::Path;
use std::time::Duration;

/// The environment variable naming pause points.
pub const PAUSE_ENV: &str = "KOALA_TRAINERD_PAUSE_AT";

/// Pauses forever if `point` is named in [`PAUSE_ENV`].
pub fn pause_point(state_dir: &Path, point: &str) {
    let Ok(spec) = std::env::var(PAUSE_ENV) else {
        return;
    };
    if !spec.split(',').any(|p| p.trim() == point) {
        return;
    }
    let marker = state_dir.join(format!("paused-at-{point}"));
    if let Err(e) = std::fs::write(&marker, b"paused\n") {
        tracing::error!("cannot write pause marker {}: {e}", marker.display());
    }
    tracing::warn!("paused at debug point {point} ({PAUSE_ENV})");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
