//! `koala serve-model` as users run it: the real binary, driven by curl and by the official
//! `openai` Python client (installed into the test venv by scripts/test.sh; without it that part
//! prints a skip line, and fails under CI).
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("model/tests/fixtures/tiny_hf")
}

/// Starts the server; returns its base URL.
fn start(extra: &[&str]) -> (Kill, String) {
    let model = format!("tiny={}", fixture().display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_koala"))
        .args([
            "serve-model",
            "--model",
            &model,
            "--listen",
            "127.0.0.1:0",
            "--device",
            "cpu",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("koala serve-model: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (Kill(child), base)
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => panic!("curl: {e}"),
    };
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (body.to_string(), code.to_string())
}

#[test]
fn curl_speaks_to_it() {
    if Command::new("curl").arg("--version").output().is_err() {
        assert!(!in_ci(), "curl is missing in CI");
        println!("skipped: no curl");
        return;
    }
    let (_srv, base) = start(&[]);
    let (body, code) = curl(&[&format!("{base}/v1/models")]);
    assert_eq!(code, "200");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][0]["id"], "tiny");
    let req = r#"{"model":"tiny","messages":[{"role":"user","content":"Hello!"}],"max_tokens":8,"temperature":0,"stream":true}"#;
    let (body, code) = curl(&[
        "-N",
        "-H",
        "Content-Type: application/json",
        "-d",
        req,
        &format!("{base}/v1/chat/completions"),
    ]);
    assert_eq!(code, "200");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert!(body.contains("\"chat.completion.chunk\""));
    // A malformed body gets OpenAI's error JSON.
    let (body, code) = curl(&[
        "-H",
        "Content-Type: application/json",
        "-d",
        "{\"model\":",
        &format!("{base}/v1/chat/completions"),
    ]);
    assert_eq!(code, "400");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[test]
fn the_official_openai_client_works_unchanged() {
    let py = std::env::var("KOALA_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&py).args(["-c", "import openai"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            !in_ci(),
            "{py} cannot import openai in CI (scripts/test.sh installs it)"
        );
        println!("skipped: {py} cannot import openai");
        return;
    }
    let (_srv, base) = start(&[]);
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client_check.py");
    let out = Command::new(&py)
        .arg(&script)
        .args([base.as_str(), "tiny"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["models"], serde_json::json!(["tiny"]));
    assert!(!v["chat_text"].as_str().unwrap().is_empty());
    assert_eq!(v["stream_text"], v["chat_text"]);
    assert_eq!(v["stream_roles"], serde_json::json!(["assistant"]));
    assert_eq!(
        v["stream_finishes"],
        serde_json::json!([v["chat_finish"].clone()])
    );
    assert_eq!(v["stream_usage"], v["chat_usage"]);
    assert_eq!(v["completion_stream_text"], v["completion_text"]);
    assert_eq!(v["completion_finish"], "length");
    assert_eq!(v["n2_error"]["status"], 400);
    assert_eq!(v["n2_error"]["param"], "n");
    assert_eq!(v["unknown_model_error"]["status"], 404);
}
