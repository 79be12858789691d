//! The evaluation loop through the `koala` binary (issue 15, docs/evaluation.md "The whole loop"):
//! - `eval report` on a ratings file: report.json (ratings averaging 1000, intervals around them,
//!   pair counts from the first name's side whichever side it was listed or shown on, agreement,
//!   per-set tables), report.md and the chart files, the same bytes on a rerun;
//! - the stand-in judge (examples/stand_in_judge.rs, served in-process) behind `eval judge`: the
//!   verdicts follow its rule, both orders agree, a rerun is answered from the cache;
//! - `eval generate`'s test-set curation: flagged prompts left out and listed with their reasons,
//!   all answered with `--keep-flagged`;
//! - scripts/eval-loop.sh end to end (train two tiny models, serve, answer, judge, report), made
//!   small: 10 steps per model, 10 prompts.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use koala_eval::rows::{read_jsonl, write_jsonl_row};
use koala_eval::{RatingRow, ResponseRow, Side, Winner};
use serde_json::Value;

#[path = "../examples/stand_in_judge.rs"]
#[allow(dead_code)]
mod stand_in_judge;

fn koala() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_koala"));
    c.env("RUST_LOG", "warn");
    c
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().expect("running koala");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{c:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn write_rows<T: serde::Serialize>(path: &Path, rows: &[T]) {
    let mut f = std::fs::File::create(path).unwrap();
    for r in rows {
        write_jsonl_row(&mut f, r).unwrap();
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn rating(prompt: usize, a: &str, b: &str, winner: Winner, rater: &str, left: Side) -> RatingRow {
    RatingRow {
        prompt_id: format!("koala_{prompt}"),
        system_a: a.into(),
        system_b: b.into(),
        winner,
        rater: rater.into(),
        left,
        ts: 1_700_000_000_000 + prompt as i64,
        set: Some(
            if prompt.is_multiple_of(4) {
                "self-instruct"
            } else {
                "koala"
            }
            .into(),
        ),
    }
}

/// Three systems, 40 prompts per pair: in each pair the stronger one wins `wins` and ties
/// `ties` of every 10 (a tie is `tie` or `both_bad`, alternately). Which system is listed as
/// `system_a`, and which was shown on the left, alternate. Rater `ann` rates everything; `bob`
/// and the judge repeat ann's verdict on 10 prompts of the first pair (for the agreement).
fn ratings() -> Vec<RatingRow> {
    let plan = [
        ("koala-distill", "alpaca", 8, 1),
        ("koala-all", "alpaca", 7, 2),
        ("koala-distill", "koala-all", 5, 3),
    ];
    let mut rows = Vec::new();
    for (k, &(strong, weak, wins, ties)) in plan.iter().enumerate() {
        for i in 0..40 {
            let r = i % 10;
            let strong_is_a = i % 2 == 0;
            let (a, b) = if strong_is_a {
                (strong, weak)
            } else {
                (weak, strong)
            };
            let winner = if r < wins {
                if strong_is_a { Winner::A } else { Winner::B }
            } else if r < wins + ties {
                if i % 3 == 0 {
                    Winner::BothBad
                } else {
                    Winner::Tie
                }
            } else if strong_is_a {
                Winner::B
            } else {
                Winner::A
            };
            let left = if i % 3 == 1 { Side::B } else { Side::A };
            let prompt = k * 100 + i;
            rows.push(rating(prompt, a, b, winner, "ann", left));
            if k == 0 && i < 10 {
                rows.push(rating(prompt, a, b, winner, "bob", left));
                rows.push(rating(prompt, a, b, winner, "judge:stand-in", left));
            }
        }
    }
    rows
}

/// (wins of the first name, ties, wins of the second) per pair in name order, counted here
/// independently of the report code.
fn expected_pairs(rows: &[RatingRow]) -> BTreeMap<(String, String), [u64; 3]> {
    let mut m: BTreeMap<(String, String), [u64; 3]> = BTreeMap::new();
    for r in rows {
        let flipped = r.system_a > r.system_b;
        let key = if flipped {
            (r.system_b.clone(), r.system_a.clone())
        } else {
            (r.system_a.clone(), r.system_b.clone())
        };
        let c = m.entry(key).or_default();
        match (r.winner, flipped) {
            (Winner::A, false) | (Winner::B, true) => c[0] += 1,
            (Winner::Tie | Winner::BothBad, _) => c[1] += 1,
            _ => c[2] += 1,
        }
    }
    m
}

#[test]
fn report_through_the_cli() {
    let d = tempfile::tempdir().unwrap();
    let rows = ratings();
    let file = d.path().join("ratings.jsonl");
    write_rows(&file, &rows);
    let out = d.path().join("report");
    let stdout = run_ok(
        koala()
            .args(["eval", "report", "--bootstrap", "100", "--ratings"])
            .arg(&file)
            .arg("--out")
            .arg(&out),
    );
    assert!(
        stdout.contains(&format!("{} ratings, 3 systems, 3 pairs", rows.len())),
        "{stdout}"
    );

    let j = read_json(&out.join("report.json"));
    assert_eq!(j["ratings"], rows.len());
    assert_eq!(j["bootstrap"], 100);

    // Systems: best first, ratings averaging 1000, each inside its interval.
    let systems = j["systems"].as_array().unwrap();
    let names: Vec<&str> = systems
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["koala-distill", "koala-all", "alpaca"]);
    let mean = systems
        .iter()
        .map(|s| s["rating"].as_f64().unwrap())
        .sum::<f64>()
        / 3.0;
    assert!((mean - 1000.0).abs() < 1e-6, "mean rating {mean}");
    for s in systems {
        let (r, lo, hi) = (
            s["rating"].as_f64().unwrap(),
            s["ci_low"].as_f64().unwrap(),
            s["ci_high"].as_f64().unwrap(),
        );
        assert!(lo <= r && r <= hi && lo < hi, "{s}");
    }
    let mut battles: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &rows {
        *battles.entry(&r.system_a).or_default() += 1;
        *battles.entry(&r.system_b).or_default() += 1;
    }
    for s in systems {
        assert_eq!(s["battles"], battles[s["name"].as_str().unwrap()], "{s}");
    }

    // Pairs: a < b, counted from a's side.
    let want = expected_pairs(&rows);
    let pairs = j["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 3);
    for p in pairs {
        let (a, b) = (p["a"].as_str().unwrap(), p["b"].as_str().unwrap());
        assert!(a < b, "{p}");
        let c = want[&(a.to_string(), b.to_string())];
        assert_eq!(
            [
                p["wins_a"].as_u64().unwrap(),
                p["ties"].as_u64().unwrap(),
                p["wins_b"].as_u64().unwrap()
            ],
            c,
            "{a} vs {b}"
        );
        let n = (c[0] + c[1] + c[2]) as f64;
        let rate = (c[0] as f64 + 0.5 * c[1] as f64) / n;
        assert!(
            (p["win_rate_a"].as_f64().unwrap() - rate).abs() < 1e-12,
            "{p}"
        );
        assert!(p["ci_low"].as_f64().unwrap() <= rate && rate <= p["ci_high"].as_f64().unwrap());
    }
    // alpaca vs koala-distill: 40 of ann's + 10 of bob's + 10 of the judge's battles.
    assert_eq!(want[&("alpaca".into(), "koala-distill".into())], [6, 6, 48]);

    // Agreement: bob and the judge repeat ann on 10 items.
    for k in ["human_human", "human_judge"] {
        assert!(j["agreement"][k].is_object(), "{k}: {}", j["agreement"]);
    }
    let sets: BTreeSet<&str> = j["per_set"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["set"].as_str().unwrap())
        .collect();
    assert_eq!(sets, BTreeSet::from(["koala", "self-instruct"]));
    let per_set: u64 = j["per_set"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["battles"].as_u64().unwrap())
        .sum();
    assert_eq!(per_set, rows.len() as u64);

    // report.md names every system; the chart files are real.
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for n in &names {
        assert!(md.contains(n), "report.md lacks {n}:\n{md}");
    }
    let svg = std::fs::read_to_string(out.join("winrates.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("koala-all") && svg.contains("alpaca"));
    let png = std::fs::read(out.join("winrates.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert!(
        width >= 600 && height >= 150 && png.len() > 10_000,
        "{width}x{height}, {} bytes",
        png.len()
    );

    // The same ratings and seed give the same report, byte for byte.
    let again = d.path().join("again");
    run_ok(
        koala()
            .args(["eval", "report", "--bootstrap", "100", "--ratings"])
            .arg(&file)
            .arg("--out")
            .arg(&again),
    );
    assert_eq!(
        std::fs::read(out.join("report.json")).unwrap(),
        std::fs::read(again.join("report.json")).unwrap()
    );
}

/// The stand-in judge on a free loopback port, in this process.
struct StandIn {
    _rt: tokio::runtime::Runtime,
    judge: Arc<stand_in_judge::Judge>,
    spec: String,
}

fn stand_in() -> StandIn {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let judge = Arc::new(stand_in_judge::Judge::default());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = stand_in_judge::router(judge.clone());
    rt.spawn(async move { axum::serve(listener, app).await });
    StandIn {
        _rt: rt,
        judge,
        spec: format!("openai:http://{addr}/v1#stand-in"),
    }
}

fn response(id: &str, prompt: &str, system: &str, response: &str) -> ResponseRow {
    ResponseRow {
        prompt_id: id.into(),
        set: "koala".into(),
        prompt: prompt.into(),
        system: system.into(),
        response: response.into(),
        finish_reason: "stop".into(),
        latency_ms: 1,
        usage: None,
    }
}

#[test]
fn stand_in_judge_through_the_cli() {
    let d = tempfile::tempdir().unwrap();
    // `echo` repeats the question's words, `verbose` says much but shares none, `terse` says "ok";
    // on q2 `verbose` and `terse` give the same number of words with no overlap: a tie.
    let qs = [
        ("q0", "How do I bake bread at home?"),
        ("q1", "Name three rivers in Europe."),
        ("q2", "Why is the sky blue?"),
    ];
    let mut rows = Vec::new();
    for (id, q) in qs {
        rows.push(response(id, q, "echo", &format!("You asked: {q}")));
        let (verbose, terse) = if id == "q2" {
            ("scattering", "light")
        } else {
            (
                "well, there are several things one could say about that",
                "ok",
            )
        };
        rows.push(response(id, q, "verbose", verbose));
        rows.push(response(id, q, "terse", terse));
    }
    let responses = d.path().join("responses.jsonl");
    write_rows(&responses, &rows);

    let judge = stand_in();
    let out = d.path().join("ratings.jsonl");
    let cache = d.path().join("cache.jsonl");
    let mut cmd = koala();
    cmd.args(["eval", "judge", "--judge", &judge.spec, "--responses"])
        .arg(&responses)
        .arg("--out")
        .arg(&out)
        .arg("--cache")
        .arg(&cache);
    let first = cmd.output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains("(0 flipped with the order)"), "{stderr}");
    // 3 prompts × 3 pairs, each judged in both orders.
    assert_eq!(judge.judge.requests.load(Ordering::SeqCst), 18);

    let got: Vec<RatingRow> = read_jsonl(&out).unwrap();
    assert_eq!(got.len(), 9);
    let answer = |id: &str, s: &str| {
        rows.iter()
            .find(|r| r.prompt_id == id && r.system == s)
            .map(|r| (r.prompt.clone(), r.response.clone()))
            .unwrap()
    };
    for r in &got {
        assert_eq!(r.rater, "judge:stand-in");
        let (q, a) = answer(&r.prompt_id, &r.system_a);
        let (_, b) = answer(&r.prompt_id, &r.system_b);
        let want = match stand_in_judge::verdict(&q, &a, &b) {
            stand_in_judge::Verdict::A => Winner::A,
            stand_in_judge::Verdict::B => Winner::B,
            stand_in_judge::Verdict::Tie => Winner::Tie,
        };
        assert_eq!(r.winner, want, "{r:?}");
        // The rule as documented, spelled out.
        let winner_name = match r.winner {
            Winner::A => Some(r.system_a.as_str()),
            Winner::B => Some(r.system_b.as_str()),
            _ => None,
        };
        let expected = match (
            r.prompt_id.as_str(),
            r.system_a.as_str(),
            r.system_b.as_str(),
        ) {
            (_, "echo", _) | (_, _, "echo") => Some("echo"),
            ("q2", _, _) => None,
            _ => Some("verbose"),
        };
        assert_eq!(winner_name, expected, "{r:?}");
    }

    // A rerun is answered from the cache: no new requests, the same ratings.
    let second = cmd.output().unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(judge.judge.requests.load(Ordering::SeqCst), 18);
    let again: Vec<RatingRow> = read_jsonl(&out).unwrap();
    let strip = |v: &[RatingRow]| -> Vec<(String, String, String, Winner)> {
        v.iter()
            .map(|r| {
                (
                    r.prompt_id.clone(),
                    r.system_a.clone(),
                    r.system_b.clone(),
                    r.winner,
                )
            })
            .collect()
    };
    assert_eq!(strip(&again), strip(&got));

    // And the ratings make a report: echo first, terse last.
    let report = d.path().join("report");
    run_ok(
        koala()
            .args(["eval", "report", "--ratings"])
            .arg(&out)
            .arg("--out")
            .arg(&report),
    );
    let j = read_json(&report.join("report.json"));
    let names: Vec<&str> = j["systems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "verbose", "terse"]);
}

#[test]
fn generate_leaves_out_flagged_prompts_and_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set.jsonl");
    let prompts = [
        (
            "p_plain",
            "What are good ways to keep a sourdough starter alive over a long holiday?",
        ),
        (
            "p_code",
            "Write a Python function that reverses a linked list in place.",
        ),
        (
            "p_es",
            "¿Cuál es la mejor manera de aprender a tocar la guitarra siendo adulto?",
        ),
        (
            "p_sky",
            "Explain why the sky looks blue during the day and red at sunset.",
        ),
    ];
    let set_rows: Vec<Value> = prompts
        .iter()
        .map(|(id, p)| serde_json::json!({"id": id, "prompt": p}))
        .collect();
    write_rows(&set, &set_rows);
    let answers = dir.path().join("answers.jsonl");
    let answer_rows: Vec<Value> = prompts
        .iter()
        .map(|(id, _)| serde_json::json!({"prompt_id": id, "response": format!("answer to {id}")}))
        .collect();
    write_rows(&answers, &answer_rows);
    let system = format!("made=file:{}", answers.display());
    let generate = |out: &Path, extra: &[&str]| {
        let mut c = koala();
        c.args(["eval", "generate", "--set"])
            .arg(&set)
            .args(["--system", &system, "--out"])
            .arg(out)
            .args(extra);
        run_ok(&mut c);
        let rows: Vec<ResponseRow> = read_jsonl(out).unwrap();
        rows.into_iter()
            .map(|r| r.prompt_id)
            .collect::<BTreeSet<_>>()
    };

    let out = dir.path().join("responses.jsonl");
    let answered = generate(&out, &[]);
    assert_eq!(answered, BTreeSet::from(["p_plain".into(), "p_sky".into()]));
    let dropped: Vec<Value> = std::fs::read_to_string(dir.path().join("responses.dropped.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let dropped: Vec<(&str, &str)> = dropped
        .iter()
        .map(|d| (d["id"].as_str().unwrap(), d["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(dropped, [("p_code", "coding"), ("p_es", "non_english")]);

    let out = dir.path().join("all.jsonl");
    let answered = generate(&out, &["--keep-flagged"]);
    assert_eq!(answered.len(), 4, "{answered:?}");
    assert!(!dir.path().join("all.dropped.jsonl").exists());
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[cfg(unix)]
#[test]
fn eval_loop_script_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let judge = stand_in();
    let out_dir = d.path().join("loop");
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/eval-loop.sh"))
        .arg(&out_dir)
        .env("KOALA_BIN", env!("CARGO_BIN_EXE_koala"))
        .env("KOALA_LOOP_JUDGE", &judge.spec)
        .env("KOALA_LOOP_STEPS", "10")
        .env("KOALA_LOOP_LIMIT", "10")
        .env("KOALA_LOOP_MAX_TOKENS", "16")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "eval-loop.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("== done in"), "{stdout}");

    let responses: Vec<ResponseRow> = read_jsonl(&out_dir.join("responses.jsonl")).unwrap();
    assert_eq!(responses.len(), 20);
    let ratings: Vec<RatingRow> = read_jsonl(&out_dir.join("ratings.jsonl")).unwrap();
    assert_eq!(ratings.len(), 10);
    // Both orders of each pair went to the judge.
    assert_eq!(judge.judge.requests.load(Ordering::SeqCst), 20);

    let j = read_json(&out_dir.join("report/report.json"));
    let systems: BTreeSet<&str> = j["systems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(systems, BTreeSet::from(["koala-all", "koala-distill"]));
    for s in j["systems"].as_array().unwrap() {
        assert_eq!(s["battles"], 10);
    }
    for f in ["report.md", "winrates.svg", "winrates.png"] {
        let len = std::fs::metadata(out_dir.join("report").join(f))
            .unwrap()
            .len();
        assert!(len > 500, "{f}: {len} bytes");
    }
    // The servers the script started are gone: nothing listens on the address it printed.
    let serve_out = std::fs::read_to_string(out_dir.join("serve.out")).unwrap();
    let addr = serve_out.split("http://").nth(1).unwrap().trim();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "serve-model still listens on {addr}"
    );
}
