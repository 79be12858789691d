//! Debug pause points for crash tests.
//!
//! When the environment variable `KOALA_TRAINERD_PAUSE_AT` names a point (a comma-separated list
//! is allowed), the thread that reaches it writes the marker file `paused-at-<point>` into
//! `KOALA_TRAINERD_PAUSE_DIR` (when set) and then sleeps forever, so that a test can `kill -9` the
//! process at exactly that point. Points:
//!
//! | point | where |
//! |---|---|
//! | `submitted` | the job is stored, the SubmitJob answer is not yet sent |
//! | `running` | the job is stored as RUNNING, training has not begun |
//! | `step-N` | step N's progress is stored (before a checkpoint of step N is written) |
//! | `checkpoint-write-N` | inside the trainer's checkpoint write of step N: the weights are in the temp directory, not yet renamed into place |
//! | `checkpoint-N` | the trainer reported checkpoint N on disk, the store does not know yet |
//! | `finished` | training returned, SUCCEEDED is not yet stored |
//!
//! Unset (the normal case), each check is one environment lookup.
use std::time::Duration;

/// The environment variable naming pause points.
pub const PAUSE_ENV: &str = "KOALA_TRAINERD_PAUSE_AT";
/// The environment variable naming the directory for `paused-at-<point>` markers.
pub const PAUSE_DIR_ENV: &str = "KOALA_TRAINERD_PAUSE_DIR";

/// Pauses forever if `point` is named in [`PAUSE_ENV`].
pub fn pause_point(point: &str) {
    let Ok(spec) = std::env::var(PAUSE_ENV) else {
        return;
    };
    if !spec.split(',').any(|p| p.trim() == point) {
        return;
    }
    if let Some(dir) = std::env::var_os(PAUSE_DIR_ENV) {
        let marker = std::path::Path::new(&dir).join(format!("paused-at-{point}"));
        if let Err(e) = std::fs::write(&marker, b"paused\n") {
            tracing::error!("cannot write pause marker {}: {e}", marker.display());
        }
    }
    tracing::warn!("paused at debug point {point} ({PAUSE_ENV})");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
