//! `eval generate`: every system answers every prompt of an eval set, with bounded concurrency,
//! appending [`ResponseRow`]s to the output as they complete (flushed each), so a killed run loses
//! nothing. A rerun reads the output first and skips the `(system, prompt_id)` pairs it holds; a
//! torn last line (a kill mid-write) is cut off.
use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressStyle};
use koala_testsets::TestPrompt;
use tokio::sync::Semaphore;

use crate::error::{Error, Result};
use crate::rows::{ResponseRow, write_jsonl_row};
use crate::systems::System;

/// Settings of a [`generate`] run.
#[derive(Clone, Debug)]
pub struct GenerateConfig {
    /// The output JSONL (appended to; read first to resume).
    pub out: PathBuf,
    /// Requests in flight at most (over all systems).
    pub concurrency: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// What a [`generate`] run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenerateSummary {
    /// Rows already in the output (skipped).
    pub resumed: usize,
    /// Rows written by this run.
    pub written: usize,
    /// Answers that failed (logged; a rerun retries them).
    pub failed: usize,
}

/// Reads the `(system, prompt_id)` pairs already in `path` (none when it does not exist). A torn
/// last line, with no newline and not valid JSON, is cut off the file; a bad line elsewhere is an
/// error.
pub fn read_done(path: &Path) -> Result<HashSet<(String, String)>> {
    let mut done = HashSet::new();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut start = 0;
    let mut line_no = 0u64;
    while start < bytes.len() {
        line_no += 1;
        let end = bytes[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| start + i);
        let line = &bytes[start..end.unwrap_or(bytes.len())];
        let parsed = if line.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(serde_json::from_slice::<ResponseRow>(line))
        };
        match (parsed, end) {
            (None, _) => {}
            (Some(Ok(r)), _) => {
                done.insert((r.system, r.prompt_id));
            }
            (Some(Err(_)), None) => {
                tracing::warn!(
                    "{}:{line_no}: cutting off a torn last line (an earlier run was stopped mid-write)",
                    path.display()
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| Error::io(path, e))?;
                f.set_len(start as u64).map_err(|e| Error::io(path, e))?;
            }
            (Some(Err(e)), Some(_)) => {
                return Err(Error::Record {
                    file: path.display().to_string(),
                    line: line_no,
                    message: e.to_string(),
                });
            }
        }
        start = end.map_or(bytes.len(), |e| e + 1);
    }
    // A last row without its newline: add it so the next row starts on its own line.
    if bytes.last().is_some_and(|&b| b != b'\n') && !done.is_empty() {
        let len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        if len == bytes.len() as u64 {
            let mut f = OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|e| Error::io(path, e))?;
            f.write_all(b"\n").map_err(|e| Error::io(path, e))?;
        }
    }
    Ok(done)
}

/// Asks every system in `systems` (name, system) every prompt of `prompts` (from the eval set
/// `set`) that the output does not hold yet. A failed answer is logged and counted, not fatal.
pub async fn generate(
    set: &str,
    prompts: &[TestPrompt],
    systems: &[(String, Arc<dyn System>)],
    cfg: &GenerateConfig,
) -> Result<GenerateSummary> {
    let done = read_done(&cfg.out)?;
    let mut jobs = Vec::new();
    let mut resumed = 0;
    for p in prompts {
        for (name, sys) in systems {
            if done.contains(&(name.clone(), p.id.clone())) {
                resumed += 1;
            } else {
                jobs.push((name.clone(), sys.clone(), p.clone()));
            }
        }
    }
    if resumed > 0 {
        tracing::info!(
            "{}: {resumed} answers already there, {} to go",
            cfg.out.display(),
            jobs.len()
        );
    }
    if let Some(dir) = cfg.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.out)
        .map_err(|e| Error::io(&cfg.out, e))?;
    let out = Arc::new(Mutex::new(file));
    let bar = if cfg.progress {
        ProgressBar::new(jobs.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} answers, ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let sem = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (name, sys, p) in jobs {
        let sem = sem.clone();
        let out = out.clone();
        let path = cfg.out.clone();
        let set = set.to_string();
        let bar = bar.clone();
        tasks.spawn(async move {
            let _permit = sem
                .acquire_owned()
                .await
                .map_err(|e| Error::Invalid(format!("semaphore closed: {e}")))?;
            let res = sys.answer(&p.id, &p.prompt).await;
            bar.inc(1);
            let a = match res {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!("system {name}, prompt {}: {e}", p.id);
                    return Ok(false);
                }
            };
            let row = ResponseRow {
                prompt_id: p.id,
                set,
                prompt: p.prompt,
                system: name,
                response: a.response,
                finish_reason: a.finish_reason,
                latency_ms: a.latency_ms,
                usage: a.usage,
            };
            let mut line = Vec::new();
            write_jsonl_row(&mut line, &row).map_err(|e| Error::io(&path, e))?;
            let mut f = out
                .lock()
                .map_err(|_| Error::Invalid("output lock poisoned".into()))?;
            f.write_all(&line).map_err(|e| Error::io(&path, e))?;
            f.flush().map_err(|e| Error::io(&path, e))?;
            Ok::<bool, Error>(true)
        });
    }
    let mut summary = GenerateSummary {
        resumed,
        ..Default::default()
    };
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(true)) => summary.written += 1,
            Ok(Ok(false)) => summary.failed += 1,
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(Error::Invalid(format!("an answer task failed: {e}"))),
        }
    }
    bar.finish_and_clear();
    Ok(summary)
}
