//! Runs the evcxr notebooks of `examples/notebooks` non-interactively, the way the evcxr Jupyter
//! kernel would, and fails where a person reading the notebook would see a failure.
//!
//! ```text
//! koala-notebook-runner [--write] [--lock Cargo.lock] NOTEBOOK.ipynb...
//! ```
//!
//! Each notebook gets a fresh evcxr context (one child process), started in the notebook's own
//! folder as Jupyter starts its kernel there. Its code cells run in order. A cell fails when:
//! - evcxr reports an error (compile errors, a lost variable, a dead child process);
//! - it writes anything to stderr, unless the cell is tagged `allow-stderr`. evcxr reports a `?`
//!   error and a panic only there (its own `EVCXR_ERROR_OCCURRED` and panic markers never reach
//!   a library user), and exits 0 on both, so stderr is the one place they show;
//! - it is tagged `display` and produced no `text/html` output.
//!
//! Without `--write`, each cell's outputs must also equal the outputs saved in the notebook, so a
//! committed notebook whose outputs are stale fails. Cells whose numbers depend on the machine are
//! tagged `volatile-numbers` (numbers masked) or `volatile` (kinds of output only); see
//! [`comparable`]. With `--write`, the outputs are saved instead.
//! `--lock` copies a `Cargo.lock` into `EVCXR_TMPDIR` before each notebook, so that `:dep` builds
//! the versions the workspace locks.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

fn main() -> ExitCode {
    // evcxr runs each cell in a child process that is this same binary: the hook turns the child
    // into evcxr's runtime and never returns there.
    evcxr::runtime_hook();
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("koala-notebook-runner: {e:#}");
            ExitCode::from(2)
        }
    }
}

struct Args {
    write: bool,
    lock: Option<PathBuf>,
    notebooks: Vec<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        write: false,
        lock: None,
        notebooks: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--write" => args.write = true,
            "--lock" => {
                let p = it.next().context("--lock needs a path")?;
                args.lock = Some(std::fs::canonicalize(&p).with_context(|| format!("{p}"))?);
            }
            "-h" | "--help" => {
                println!("usage: koala-notebook-runner [--write] [--lock Cargo.lock] NOTEBOOK...");
                std::process::exit(0);
            }
            s if s.starts_with('-') => bail!("unknown option {s}"),
            _ => args
                .notebooks
                .push(std::fs::canonicalize(&a).with_context(|| a.clone())?),
        }
    }
    if args.notebooks.is_empty() {
        bail!("no notebook given");
    }
    Ok(args)
}

fn run() -> Result<bool> {
    let args = parse_args()?;
    let mut all_ok = true;
    for nb in &args.notebooks {
        let t0 = Instant::now();
        let ok = run_notebook(nb, &args)?;
        println!(
            "{}: {} ({:.0} s)",
            nb.display(),
            if ok { "ok" } else { "FAILED" },
            t0.elapsed().as_secs_f64()
        );
        all_ok &= ok;
    }
    Ok(all_ok)
}

/// Lines a child stream produced, collected by a thread so that evcxr never waits on us.
#[derive(Clone)]
struct Sink(Arc<Mutex<(Vec<String>, Instant)>>);

impl Sink {
    fn start(rx: crossbeam_channel::Receiver<String>) -> Sink {
        let sink = Sink(Arc::new(Mutex::new((Vec::new(), Instant::now()))));
        let s = sink.clone();
        std::thread::spawn(move || {
            while let Ok(line) = rx.recv() {
                let mut g = s.0.lock().unwrap_or_else(|p| p.into_inner());
                g.0.push(line);
                g.1 = Instant::now();
            }
        });
        sink
    }

    /// Waits until nothing has arrived for `quiet`, then takes what arrived. Both streams are
    /// written before evcxr's end-of-cell marker, so their lines are already in the pipes when
    /// `execute` returns; the wait covers the reader threads' hand-over.
    fn take(&self, quiet: Duration) -> Vec<String> {
        loop {
            {
                let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
                if g.1.elapsed() >= quiet {
                    return std::mem::take(&mut g.0);
                }
            }
            std::thread::sleep(quiet / 4);
        }
    }
}

fn source_of(cell: &Value) -> String {
    match &cell["source"] {
        Value::String(s) => s.clone(),
        Value::Array(lines) => lines.iter().filter_map(Value::as_str).collect(),
        _ => String::new(),
    }
}

fn has_tag(cell: &Value, tag: &str) -> bool {
    cell["metadata"]["tags"]
        .as_array()
        .is_some_and(|t| t.iter().any(|v| v.as_str() == Some(tag)))
}

/// A cell's outputs as the stale check compares them. Most cells are compared exactly. A cell
/// whose numbers depend on the machine (a training run's losses: the CPU's SIMD path and thread
/// count change the last bits, and the chart's coordinates with them) is tagged
/// `volatile-numbers`: every number is replaced by `#`, so the text, the table and the chart's
/// shape are still compared. A cell tagged `volatile` (a sample from that model) is compared on
/// the kinds of output it made only.
fn comparable(cell: &Value, outputs: &Value) -> Value {
    if has_tag(cell, "volatile") {
        let kinds = outputs.as_array().map(|outs| {
            outs.iter()
                .map(|o| {
                    let mut keys: Vec<&str> = o["data"]
                        .as_object()
                        .map(|d| d.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    keys.sort_unstable();
                    json!([o["output_type"], o["name"], keys])
                })
                .collect::<Vec<_>>()
        });
        return json!(kinds);
    }
    if has_tag(cell, "volatile-numbers") {
        return Value::String(mask_numbers(&outputs.to_string()));
    }
    outputs.clone()
}

/// `text` with each run of digits (with the points between them) replaced by `#`.
fn mask_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars.peek().is_some_and(|n| n.is_ascii_digit() || *n == '.') {
                chars.next();
            }
            out.push('#');
        } else {
            out.push(c);
        }
    }
    out
}

/// nbformat's multi-line string: one entry a line, each but the last ending in `\n`.
fn lines_value(text: &str) -> Value {
    Value::Array(
        text.split_inclusive('\n')
            .map(|l| Value::String(l.to_owned()))
            .collect(),
    )
}

fn stream(name: &str, lines: &[String]) -> Value {
    let mut text = lines.join("\n");
    text.push('\n');
    json!({"name": name, "output_type": "stream", "text": lines_value(&text)})
}

fn run_notebook(path: &Path, args: &Args) -> Result<bool> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut nb: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let dir = path.parent().context("notebook has no folder")?;
    std::env::set_current_dir(dir).with_context(|| dir.display().to_string())?;
    let (mut ctx, outputs) = evcxr::CommandContext::new()
        .map_err(|e| anyhow::anyhow!("{}: starting evcxr: {e}", path.display()))?;
    let stdout = Sink::start(outputs.stdout);
    let stderr = Sink::start(outputs.stderr);
    let quiet = Duration::from_millis(150);
    // Whatever the context printed while starting is not a cell's.
    stdout.take(quiet);
    stderr.take(quiet);

    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let cells = nb["cells"]
        .as_array_mut()
        .with_context(|| format!("{name}: no `cells` array"))?;
    let mut count = 0u64;
    let mut ok = true;
    for (i, cell) in cells.iter_mut().enumerate() {
        if cell["cell_type"] != "code" {
            continue;
        }
        count += 1;
        let at = format!("{name}, cell {} (code cell {count})", i + 1);
        let src = source_of(cell);
        pin_versions(args)?;
        let t0 = Instant::now();
        let result = ctx.execute(&src);
        let out_lines = stdout.take(quiet);
        let err_lines = stderr.take(quiet);
        let secs = t0.elapsed().as_secs_f64();
        let mut produced = Vec::new();
        if !out_lines.is_empty() {
            produced.push(stream("stdout", &out_lines));
        }
        if !err_lines.is_empty() {
            produced.push(stream("stderr", &err_lines));
        }
        let mut failure = None;
        match result {
            Ok(o) => {
                if !o.content_by_mime_type.is_empty() {
                    let mut data = serde_json::Map::new();
                    let mut mimes: Vec<_> = o.content_by_mime_type.into_iter().collect();
                    mimes.sort();
                    for (mime, body) in mimes {
                        data.insert(mime, lines_value(&body));
                    }
                    if has_tag(cell, "display") && !data.contains_key("text/html") {
                        failure = Some("tagged `display` but produced no text/html".to_owned());
                    }
                    produced.push(json!({
                        "data": data,
                        "execution_count": count,
                        "metadata": {},
                        "output_type": "execute_result",
                    }));
                } else if has_tag(cell, "display") {
                    failure = Some("tagged `display` but produced no rich output".to_owned());
                }
            }
            Err(e) => failure = Some(format!("evcxr error:\n{e}")),
        }
        if !err_lines.is_empty() && !has_tag(cell, "allow-stderr") {
            let what = if err_lines.iter().any(|l| l.contains("panicked at")) {
                "panicked"
            } else {
                "wrote to stderr (a `?` error, or a warning)"
            };
            failure = Some(format!("{what}:\n{}", err_lines.join("\n")));
        }
        if let Some(why) = failure {
            println!("{at}: FAILED after {secs:.1} s: {why}");
            println!(
                "--- the cell ---\n{src}\n--- its stdout ---\n{}\n---",
                out_lines.join("\n")
            );
            return Ok(false);
        }
        println!("{at}: ran in {secs:.1} s");
        let produced = Value::Array(produced);
        if args.write {
            cell["outputs"] = produced;
            cell["execution_count"] = json!(count);
        } else if comparable(cell, &cell["outputs"]) != comparable(cell, &produced) {
            ok = false;
            println!(
                "{at}: saved outputs are stale (rerun scripts/run-notebooks.sh --write):\n{}",
                first_difference(&comparable(cell, &cell["outputs"]), &comparable(cell, &produced))
            );
        }
    }
    if args.write {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        serde::Serialize::serialize(&nb, &mut ser)?;
        out.push(b'\n');
        std::fs::write(path, out).with_context(|| path.display().to_string())?;
    }
    Ok(ok)
}

/// Copies the workspace's lock file into evcxr's crate folder (`EVCXR_TMPDIR`), before every
/// cell: evcxr runs cargo with only its own first cell's dependencies when it starts (which prunes
/// the lock), and with each new `:dep` alone to validate it, so a copy made once would not last.
/// With the full lock in place, cargo keeps the locked version of every crate it still needs.
fn pin_versions(args: &Args) -> Result<()> {
    if let (Some(lock), Some(tmp)) = (&args.lock, std::env::var_os("EVCXR_TMPDIR")) {
        std::fs::copy(lock, Path::new(&tmp).join("Cargo.lock"))
            .with_context(|| format!("copying {} into EVCXR_TMPDIR", lock.display()))?;
    }
    Ok(())
}

/// The first line where the saved and the new outputs differ, as text.
fn first_difference(saved: &Value, produced: &Value) -> String {
    let a = serde_json::to_string_pretty(saved).unwrap_or_default();
    let b = serde_json::to_string_pretty(produced).unwrap_or_default();
    for (n, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            return format!("  line {}:\n  saved: {x}\n  now:   {y}", n + 1);
        }
    }
    format!(
        "  saved outputs have {} lines, new ones {}",
        a.lines().count(),
        b.lines().count()
    )
}
