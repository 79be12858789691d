//! The example Python client (`examples/python/client.py`, grpcio + grpcio-tools stubs generated
//! from proto/) against the real daemon: submit a tiny job and watch it to SUCCEEDED, list, read
//! metrics, sample its checkpoint with Generate, and get UNAUTHENTICATED with a wrong token.
//! Skipped with a message when Python or those packages are missing (scripts/test.sh installs
//! them).
mod daemon_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use daemon_common::TOKEN;
use daemon_common::process::*;

const BIN: &str = env!("CARGO_BIN_EXE_koala-trainerd");

fn python() -> String {
    std::env::var("KOALA_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn client(
    args: &[&str],
    addr: &str,
    token_file: &Path,
    gen_dir: &Path,
) -> (bool, Vec<serde_json::Value>, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/client.py");
    let out = Command::new(python())
        .arg(script)
        .arg("--addr")
        .arg(addr)
        .arg("--token-file")
        .arg(token_file)
        .arg("--gen-dir")
        .arg(gen_dir)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn python_grpcio_client_drives_the_daemon() {
    let probe = Command::new(python())
        .args(["-c", "import grpc, grpc_tools, tomllib"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "skipped: {} cannot import grpc/grpc_tools (pip install grpcio grpcio-tools): {}",
                python(),
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            return;
        }
        Err(e) => {
            eprintln!("skipped: no Python interpreter ({}): {e}", python());
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    tiny_training_data(&root);
    let cfg = write_config(dir.path(), &root, &dir.path().join("state"), TOKEN);
    let d = spawn_daemon(BIN, &cfg, &[], &dir.path().join("daemon.log"));
    let token = dir.path().join("token");
    let gen_dir: PathBuf = dir.path().join("gen");
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        r#"
name = "from python"
init_config = "models/tiny/config.json"
shards_dir = "shards/tiny"
out_dir = "runs/py"
preset = "tiny-cpu"
seed = 3
checkpoint_every = 5
idempotency_key = "py-1"
[hyperparameters]
batch_size = 4
micro_batch_size = 4
epochs = 1
"#,
    )
    .unwrap();
    let (ok, lines, err) = client(
        &["submit", job.to_str().unwrap(), "--watch"],
        &d.addr,
        &token,
        &gen_dir,
    );
    assert!(ok, "client failed: {lines:?}\n{err}");
    let first = &lines[0];
    assert_eq!(first["state"], "QUEUED");
    let last = lines.last().unwrap();
    assert_eq!(last["state"], "SUCCEEDED", "{lines:?}");
    assert_eq!(last["step"], 5);
    let progress: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["kind"] == "progress").collect();
    assert_eq!(progress.len(), 5);
    assert!(
        lines
            .iter()
            .any(|l| l["kind"] == "checkpoint" && l["step"] == 5)
    );
    assert!(
        root.join("runs/py/checkpoints/step-00000005/model.safetensors")
            .is_file()
    );

    let (ok, listed, err) = client(&["list", "--state", "succeeded"], &d.addr, &token, &gen_dir);
    assert!(ok, "{err}");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "from python");
    let (ok, metrics, err) = client(&["metrics", "1"], &d.addr, &token, &gen_dir);
    assert!(ok, "{err}");
    assert_eq!(
        metrics
            .iter()
            .map(|m| m["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );

    // Generate: greedy tokens from the job's checkpoint, one JSON line per message, the last with
    // the finish reason and counts (the tiny model names no EOS: all 4 tokens).
    let (ok, sampled, err) = client(
        &[
            "generate",
            "1",
            "--prompt-ids",
            "1,2,3",
            "--max-tokens",
            "4",
            "--temperature",
            "0",
        ],
        &d.addr,
        &token,
        &gen_dir,
    );
    assert!(ok, "{sampled:?}\n{err}");
    let last = sampled.last().unwrap();
    assert_eq!(last["finish_reason"], "length", "{sampled:?}");
    assert_eq!(
        (
            last["prompt_tokens"].as_u64(),
            last["completion_tokens"].as_u64()
        ),
        (Some(3), Some(4))
    );
    let ids: usize = sampled
        .iter()
        .map(|m| m["token_ids"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(ids, 4, "{sampled:?}");
    assert!(
        sampled[0]["checkpoint"]
            .as_str()
            .is_some_and(|c| c.ends_with("runs/py/checkpoints/step-00000005")),
        "{sampled:?}"
    );
    let (ok, refused, _) = client(
        &["generate", "1", "--prompt-ids", "1", "--temperature", "-1"],
        &d.addr,
        &token,
        &gen_dir,
    );
    assert!(!ok);
    assert_eq!(refused[0]["error"], "INVALID_ARGUMENT");
    assert!(
        refused[0]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("temperature:")),
        "{refused:?}"
    );

    let bad = dir.path().join("bad-token");
    std::fs::write(&bad, "nope").unwrap();
    let (ok, out, _) = client(&["get", "1"], &d.addr, &bad, &gen_dir);
    assert!(!ok);
    assert_eq!(out[0]["error"], "UNAUTHENTICATED");
}
