//! `koala self-instruct generate` and `dedup` end to end against stand-in OpenAI-compatible
//! teachers (plain HTTP/1.1 servers on loopback written here): a well-behaved one, one answering
//! 429 with `Retry-After`, one breaking connections, a chat one, one answering 400; resuming, and
//! a torn journal line.
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use koala_pipeline::rouge::rouge_l;
use serde_json::{Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn seeds_path() -> PathBuf {
    root().join("pipeline/data/alpaca/seed_tasks.jsonl")
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Every 4th request 429 (Retry-After: 0), every 5th connection closed without an answer.
    Flaky,
    Good,
    BadRequest,
    /// The first request gets 429 with `Retry-After: 1`, the rest are answered.
    RetryAfterOnce,
}

/// Deterministic, mutually dissimilar English-looking text: `n` words from a list of 256.
fn words(k: u64, n: usize) -> String {
    const WORDS: &str = "time year people way day man thing woman life child world school state \
        family student group country problem hand part place case week company system program \
        question work government number night point home water room mother area money story fact \
        month lot right study book eye job word business issue side kind head house service friend \
        father power hour game line end member law car city community name president team minute \
        idea kid body information back parent face others level office door health person art war \
        history party result change morning reason research girl guy moment air teacher force \
        education foot boy age policy process market sense nation plan college \
        interest death experience effect use class control care field development role effort rate \
        heart drug show leader light voice wife police mind price report decision son view \
        relationship town road arm difference value building action model season society tax \
        director position player record paper space ground form event official matter center couple \
        site project activity star table need court oil situation cost industry figure street \
        phone data practice piece land product doctor wall patient worker news test movie \
        north love support technology step baby computer type attention film tree source organization \
        hair window evidence population site garden river mountain island ocean forest desert valley \
        bridge castle village harbor meadow canyon glacier volcano prairie lagoon orchard vineyard \
        cottage tower station library museum theater stadium airport factory bakery kitchen pantry \
        cellar attic balcony porch chimney fence gate path trail";
    let list: Vec<&str> = WORDS.split_whitespace().collect();
    let mut x = k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x1234_5678;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            list[(x % list.len() as u64) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A teacher response continuing after `4. Instruction:`: items 4..=19, some made to fail each
/// of Alpaca's filters; every 3rd response is cut (`finish_reason: length`).
fn teacher_text(n: u64, seed_instruction: &str) -> (String, &'static str) {
    let mut items: Vec<(String, String, String)> = Vec::new();
    for i in 4..=19u64 {
        let inst = match i {
            5 => format!("Describe the video of {}", words(n * 100 + i, 5)),
            6 => format!("Write a program that {}", words(n * 100 + i, 5)),
            7 => "Do it now".to_owned(),
            8 => seed_instruction.to_owned(),
            9 => format!("\"{}\"", words(n * 100 + i, 6)),
            10 => format!("Émettez {}", words(n * 100 + i, 6)),
            _ => format!("Please explain the {}.", words(n * 100 + i, 8)),
        };
        let input = if i % 2 == 0 {
            "<noinput>".to_owned()
        } else {
            words(n * 1000 + i, 4)
        };
        items.push((
            inst,
            input,
            format!(
                "Answer: the {} is near the {}.",
                words(n * 7 + i, 3),
                words(n * 11 + i, 4)
            ),
        ));
    }
    let mut text = String::new();
    for (k, (inst, input, output)) in items.iter().enumerate() {
        let i = k + 4;
        if k > 0 {
            text.push_str(&format!("###\n{i}. Instruction: {inst}\n"));
        } else {
            text.push_str(&format!(" {inst}\n"));
        }
        text.push_str(&format!("{i}. Input:\n{input}\n{i}. Output:\n{output}\n\n"));
    }
    if n.is_multiple_of(3) {
        text.push_str("###\n20. Instruction: cut off in the mid");
        (text, "length")
    } else {
        (text, "stop")
    }
}

struct Server {
    url: String,
    requests: Arc<AtomicU64>,
}

fn serve(mode: Mode) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let requests = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let seed0: Value = serde_json::from_str(
        std::fs::read_to_string(seeds_path())
            .expect("seeds")
            .lines()
            .next()
            .expect("a line"),
    )
    .expect("json");
    let seed_instruction = seed0["instruction"].as_str().expect("str").to_owned();
    let r = Arc::clone(&requests);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (r, a, si) = (
                Arc::clone(&r),
                Arc::clone(&answered),
                seed_instruction.clone(),
            );
            std::thread::spawn(move || handle(conn, mode, &r, &a, &si));
        }
    });
    Server { url, requests }
}

fn handle(mut conn: TcpStream, mode: Mode, requests: &AtomicU64, answered: &AtomicU64, si: &str) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    loop {
        let mut first = String::new();
        if reader.read_line(&mut first).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
        let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (status, extra, payload) = match mode {
            Mode::BadRequest => (400, "", json!({"error": {"message": "bad model"}})),
            Mode::Flaky if n % 5 == 3 => {
                // break the connection: no answer at all
                let _ = conn.shutdown(std::net::Shutdown::Both);
                return;
            }
            Mode::Flaky if n % 7 == 4 => {
                // break the connection mid-body: headers promise more than is sent
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"choices\": [",
                );
                let _ = conn.shutdown(std::net::Shutdown::Both);
                return;
            }
            Mode::RetryAfterOnce if n == 1 => (
                429,
                "Retry-After: 1\r\n",
                json!({"error": {"message": "slow down"}}),
            ),
            Mode::Flaky if n % 4 == 2 => (
                429,
                "Retry-After: 0\r\n",
                json!({"error": {"message": "slow down"}}),
            ),
            _ => {
                assert_eq!(req["temperature"], 1.0);
                assert_eq!(req["max_tokens"], 3072);
                assert_eq!(req["stop"], json!(["\n20", "20."]));
                let k = answered.fetch_add(1, Ordering::SeqCst);
                let (text, finish) = teacher_text(k, si);
                let chat = first.contains("/v1/chat/completions");
                let prompt = if chat {
                    req["messages"][0]["content"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned()
                } else {
                    req["prompt"].as_str().unwrap_or("").to_owned()
                };
                assert!(prompt.contains("1. Instruction:"), "{prompt}");
                assert!(prompt.ends_with("###\n4. Instruction:"), "{prompt}");
                let choice = if chat {
                    json!({"index": 0, "message": {"role": "assistant", "content": format!("4. Instruction:{text}")}, "finish_reason": finish})
                } else {
                    json!({"index": 0, "text": text, "finish_reason": finish})
                };
                (
                    200,
                    "",
                    json!({"choices": [choice], "usage": {"prompt_tokens": 500, "completion_tokens": 700}}),
                )
            }
        };
        let body = payload.to_string();
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn generate(url: &str, out: &Path, n: usize, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_koala"))
        .args(["self-instruct", "generate", "--model", "teacher"])
        .args(if extra.contains(&"--seed") {
            &[][..]
        } else {
            &["--seed", "7"][..]
        })
        .arg("--seeds")
        .arg(seeds_path())
        .arg("--api-base")
        .arg(url)
        .arg("--num-instructions")
        .arg(n.to_string())
        .arg("--out")
        .arg(out)
        .args(if extra.contains(&"--retry-initial-ms") {
            &[][..]
        } else {
            &["--retry-initial-ms", "5"][..]
        })
        .args(["--price-per-1k", "0.02"])
        .args(extra)
        .output()
        .expect("run koala")
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn regen(out: &Path) -> Vec<Value> {
    serde_json::from_str(&std::fs::read_to_string(out.join("regen.json")).expect("regen"))
        .expect("json")
}

fn json_file(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).expect("read")).expect("json")
}

#[test]
fn generate_against_a_flaky_teacher() {
    let server = serve(Mode::Flaky);
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("gen");
    let o = generate(&server.url, &out, 60, &["--concurrency", "3"]);
    ok(&o);
    let kept = regen(&out);
    assert!(kept.len() >= 60, "{}", kept.len());
    // each response keeps items 4, 11..19 (10) except when cut (the last is then dropped)
    let report = json_file(&out.join("report.json"));
    assert!(
        report["retries_this_run"].as_u64().expect("retries") > 0,
        "{report}"
    );
    let by = &report["dropped_by_reason"];
    let requests = report["requests"].as_u64().expect("requests");
    for reason in [
        "blacklist",
        "write_a_program",
        "word_count",
        "similar",
        "punctuation",
        "non_ascii",
    ] {
        assert_eq!(by[reason].as_u64(), Some(requests), "{reason}: {report}");
    }
    assert!(
        by["truncated"].as_u64().expect("truncated") >= 1,
        "{report}"
    );
    assert_eq!(
        report["estimated_cost_usd"].as_f64().expect("cost"),
        requests as f64 * 1200.0 * 0.02 / 1000.0
    );
    assert!(server.requests.load(Ordering::SeqCst) > requests);
    // fields as Alpaca writes them: <noinput> read as empty
    assert!(kept.iter().any(|t| t["input"] == ""));
    assert!(kept.iter().all(|t| {
        t["output"]
            .as_str()
            .is_some_and(|s| s.starts_with("Answer:"))
    }));
    // the similar drops name the seed instruction they matched
    let dropped = std::fs::read_to_string(out.join("dropped.jsonl")).expect("dropped");
    let sim: Vec<Value> = dropped
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json"))
        .filter(|v| v["reason"] == "similar")
        .collect();
    assert!(
        sim.iter()
            .all(|v| v["rouge_l"] == 1.0 && v["similar_to"] == v["instruction"])
    );
    // no kept instruction is within ROUGE-L 0.7 of another or of a seed (brute force)
    let seeds: Vec<String> = std::fs::read_to_string(seeds_path())
        .expect("seeds")
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("j")["instruction"]
                .as_str()
                .expect("s")
                .to_owned()
        })
        .collect();
    let mut all: Vec<String> = seeds.clone();
    for t in &kept {
        let s = t["instruction"].as_str().expect("instruction").to_owned();
        assert!(all.iter().all(|k| rouge_l(&s, k) <= 0.7), "{s}");
        all.push(s);
    }
}

#[test]
fn generate_resumes_without_losing_or_duplicating() {
    let server = serve(Mode::Good);
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("gen");
    ok(&generate(&server.url, &out, 20, &[]));
    let first = regen(&out);
    assert!(first.len() >= 20);
    ok(&generate(&server.url, &out, 45, &[]));
    let second = regen(&out);
    assert!(second.len() >= 45);
    assert_eq!(
        second[..first.len()],
        first[..],
        "a resumed run keeps what was kept, in order"
    );
    let names: HashSet<&str> = second
        .iter()
        .map(|t| t["instruction"].as_str().expect("s"))
        .collect();
    assert_eq!(names.len(), second.len(), "no duplicates");
    let journal = std::fs::read_to_string(out.join("responses.jsonl")).expect("journal");
    let ids: Vec<u64> = journal
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("j")["request"]
                .as_u64()
                .expect("n")
        })
        .collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    assert_eq!(json_file(&out.join("report.json"))["requests"], ids.len());

    // a crash mid-append leaves a torn line: it is cut, nothing else changes
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(out.join("responses.jsonl"))
        .expect("open");
    f.write_all(b"{\"request\": 999, \"text\": \"4. Instr")
        .expect("w");
    drop(f);
    ok(&generate(&server.url, &out, 45, &[]));
    assert_eq!(regen(&out), second);
    assert_eq!(
        std::fs::read_to_string(out.join("responses.jsonl")).expect("j"),
        journal
    );

    // a different seed on the same directory is refused
    let o = generate(&server.url, &out, 45, &["--seed", "8"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("was started with"), "{err}");
}

#[test]
fn generate_with_the_chat_api() {
    let server = serve(Mode::Good);
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("gen");
    ok(&generate(&server.url, &out, 15, &["--api", "chat"]));
    assert!(regen(&out).len() >= 15);
}

#[test]
fn a_client_error_stops_with_the_servers_message() {
    let server = serve(Mode::BadRequest);
    let tmp = tempfile::tempdir().expect("tmp");
    let o = generate(&server.url, &tmp.path().join("gen"), 5, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("HTTP 400") && err.contains("bad model"),
        "{err}"
    );
}

#[test]
fn dedup_cli_writes_kept_and_dropped() {
    let tmp = tempfile::tempdir().expect("tmp");
    let input = tmp.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"instruction\":\"Give three tips for staying healthy.\"}\n\
         {\"instruction\":\"Give 3 tips for staying healthy!\",\"input\":\"x\"}\n\n\
         {\"instruction\":\"Write a poem about the sea.\"}\n",
    )
    .expect("w");
    let out = tmp.path().join("d");
    let o = Command::new(env!("CARGO_BIN_EXE_koala"))
        .args(["self-instruct", "dedup", "--input"])
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run");
    ok(&o);
    let kept = std::fs::read_to_string(out.join("kept.jsonl")).expect("kept");
    assert_eq!(kept.lines().count(), 2);
    let d: Value = serde_json::from_str(
        std::fs::read_to_string(out.join("dropped.jsonl"))
            .expect("dropped")
            .trim(),
    )
    .expect("json");
    assert_eq!(d["similar_to"], "Give three tips for staying healthy.");
    assert_eq!(d["similar_to_line"], 1);
    assert_eq!(
        d["rouge_l"].as_f64(),
        Some(rouge_l(
            "Give 3 tips for staying healthy!",
            "Give three tips for staying healthy."
        ))
    );
    // a bad record names file, line and field
    std::fs::write(&input, "{\"instruction\":\"ok\"}\n{\"instruction\":3}\n").expect("w");
    let o = Command::new(env!("CARGO_BIN_EXE_koala"))
        .args(["self-instruct", "dedup", "--input"])
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("in.jsonl:line 2: field `instruction`"),
        "{err}"
    );
}

/// The whole loop: stand-in teacher → `regen.json` → `koala curate` (Alpaca source) →
/// `koala tokenize` → `koala train` a tiny model for a few steps.
#[test]
fn whole_loop_teacher_to_trained_model() {
    let server = serve(Mode::Good);
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    ok(&generate(&server.url, &t.join("gen"), 120, &[]));
    let kept = regen(&t.join("gen"));
    std::fs::create_dir_all(t.join("data/alpaca")).expect("mkdir");
    std::fs::copy(t.join("gen/regen.json"), t.join("data/alpaca/regen.json")).expect("copy");
    std::fs::write(
        t.join("preset.toml"),
        "name = \"selfinstruct\"\nseed = 0\n\n[[sources]]\nname = \"alpaca\"\n",
    )
    .expect("preset");
    let koala = || Command::new(env!("CARGO_BIN_EXE_koala"));
    ok(&koala()
        .arg("curate")
        .arg("--config")
        .arg(t.join("preset.toml"))
        .arg("--input")
        .arg(t.join("data"))
        .arg("--out")
        .arg(t.join("curate"))
        .arg("--quiet")
        .output()
        .expect("curate"));
    let report = json_file(&t.join("curate/report.json"));
    let funnel = report["funnel"]["alpaca"].as_array().expect("funnel");
    assert_eq!(funnel[0][1].as_u64(), Some(kept.len() as u64), "{report}");
    // Every text field of the exported rows, decoded (an instruction with quotes is escaped in
    // the JSONL, so the raw file is no place to look for it).
    let mut texts = String::new();
    for file in ["curate/train.jsonl", "curate/eval.jsonl"] {
        let body = std::fs::read_to_string(t.join(file)).unwrap_or_default();
        for line in body.lines() {
            let row: serde_json::Value = serde_json::from_str(line).expect("JSONL row");
            for v in row.as_object().expect("row object").values() {
                if let Some(s) = v.as_str() {
                    texts.push_str(s);
                    texts.push('\n');
                }
            }
        }
    }
    let dropped = report["rows_dropped"].as_u64().expect("rows_dropped");
    let missing: Vec<&str> = kept
        .iter()
        .map(|k| k["instruction"].as_str().expect("instruction"))
        .filter(|i| !texts.contains(i))
        .collect();
    assert!(
        missing.len() as u64 <= dropped,
        "{} kept instructions are in neither train.jsonl nor eval.jsonl, but curation dropped \
         {dropped} rows: {missing:?}\nfunnel: {}",
        missing.len(),
        report["funnel"]
    );
    assert!(
        (missing.len() as u64) < kept.len() as u64,
        "no kept instruction reached train.jsonl or eval.jsonl"
    );
    ok(&koala()
        .args([
            "tokenize",
            "--format",
            "koala",
            "--seq-len",
            "256",
            "--pack",
            "--vocab-size",
            "300",
        ])
        .arg("--input")
        .arg(t.join("curate"))
        .arg("--out")
        .arg(t.join("shards"))
        .output()
        .expect("tokenize"));
    let manifest = json_file(&t.join("shards/manifest.json"));
    let vocab = manifest["vocab_size"]
        .as_u64()
        .or_else(|| manifest["tokenizer"]["vocab_size"].as_u64())
        .expect("vocab_size");
    std::fs::write(
        t.join("tiny.json"),
        json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 256, "tie_word_embeddings": false
        })
        .to_string(),
    )
    .expect("config");
    std::fs::write(
        t.join("train.toml"),
        format!(
            "model = {:?}\nshards = {:?}\nout_dir = {:?}\npreset = \"tiny-cpu\"\nseed = 0\n\
             checkpoint_every = 4\nmax_steps = 4\n",
            t.join("tiny.json"),
            t.join("shards"),
            t.join("run")
        ),
    )
    .expect("train.toml");
    let o = koala()
        .args(["train", "--config"])
        .arg(t.join("train.toml"))
        .output()
        .expect("train");
    ok(&o);
    assert!(t.join("run/final").is_dir(), "no final model");
    let metrics = std::fs::read_to_string(t.join("run/metrics.jsonl")).expect("metrics");
    assert!(metrics.lines().count() >= 4, "{metrics}");
}

/// Our own teacher: `koala serve-model` with the tiny test model, over both APIs. Its text is
/// noise, so nothing parses; the point is that the requests are accepted and journaled, and that
/// the per-request `seed` makes a repeated run sample the same text (the model may end a response
/// early, on its end-of-sequence token or a stop string, so token counts are bounded, not fixed).
#[test]
fn generate_against_koala_serve_model() {
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let model = format!(
        "tiny={}",
        root().join("model/tests/fixtures/tiny_hf").display()
    );
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
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("serve-model");
    let stdout = child.stdout.take().expect("stdout");
    let server = Kill(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("line");
    let base = line
        .trim()
        .strip_prefix("koala serve-model: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let tmp = tempfile::tempdir().expect("tmp");
    for (api, run) in [("completions", 1), ("completions", 2), ("chat", 1)] {
        let out = tmp.path().join(format!("{api}-{run}"));
        let o = Command::new(env!("CARGO_BIN_EXE_koala"))
            .args(["self-instruct", "generate", "--model", "tiny", "--api", api])
            .args([
                "--max-requests",
                "2",
                "--max-tokens",
                "16",
                "--num-instructions",
                "5",
            ])
            .arg("--seeds")
            .arg(seeds_path())
            .arg("--api-base")
            .arg(format!("{base}/v1"))
            .arg("--out")
            .arg(&out)
            .output()
            .expect("generate");
        ok(&o);
        let report = json_file(&out.join("report.json"));
        assert_eq!(report["requests"], 2, "{report}");
        assert_eq!(report["kept"], 0, "{report}");
        let tokens = report["completion_tokens"]
            .as_u64()
            .expect("completion_tokens");
        assert!((2..=32).contains(&tokens), "{report}");
        let by_reason: u64 = report["dropped_by_reason"]
            .as_object()
            .expect("dropped_by_reason")
            .values()
            .map(|v| v.as_u64().expect("count"))
            .sum();
        assert_eq!(report["dropped"], by_reason, "{report}");
        assert!(
            by_reason >= 2,
            "every response yields at least one dropped piece: {report}"
        );
    }
    let texts = |dir: &str| -> Vec<(u64, String)> {
        let journal =
            std::fs::read_to_string(tmp.path().join(dir).join("responses.jsonl")).expect("journal");
        let mut v: Vec<(u64, String)> = journal
            .lines()
            .map(|l| {
                let r: serde_json::Value = serde_json::from_str(l).expect("journal line");
                (
                    r["request"].as_u64().expect("request"),
                    r["text"].as_str().expect("text").to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let first = texts("completions-1");
    assert_eq!(first.len(), 2);
    assert_eq!(
        first,
        texts("completions-2"),
        "same run seed, different text"
    );
    drop(server);
}

/// `Retry-After` is honoured: with a 1 ms initial backoff, a 429 asking for 1 s costs ≥ 1 s.
#[test]
fn retry_after_is_honoured() {
    let server = serve(Mode::RetryAfterOnce);
    let tmp = tempfile::tempdir().expect("tmp");
    let t0 = std::time::Instant::now();
    let o = generate(
        &server.url,
        &tmp.path().join("gen"),
        5,
        &["--concurrency", "1", "--retry-initial-ms", "1"],
    );
    ok(&o);
    assert!(t0.elapsed() >= std::time::Duration::from_secs(1));
    let report = json_file(&tmp.path().join("gen/report.json"));
    assert_eq!(report["retries_this_run"], 1, "{report}");
}
