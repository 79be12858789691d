//! Whole-command runs of `koala train`, `koala logits` and `koala generate`.
use std::path::{Path, PathBuf};
use std::process::Command;

use koala_trainer::data::{Row, write_shard};
use koala_trainer::{npy, weights};

fn koala() -> Command {
    Command::new(env!("CARGO_BIN_EXE_koala"))
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("trainer/tests/fixtures/tiny_llama")
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "failed: {cmd:?}\nstdout: {so}\nstderr: {se}"
    );
    so.into_owned()
}

#[test]
fn logits_cli_matches_transformers_fixture() {
    let d = tempfile::tempdir().unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("fixture.json")).unwrap())
            .unwrap();
    let ids = d.path().join("ids.json");
    std::fs::write(&ids, meta["input_ids"].to_string()).unwrap();
    let out = d.path().join("logits.npy");
    run_ok(
        koala()
            .args(["logits", "--model"])
            .arg(fixture())
            .arg("--ids")
            .arg(&ids)
            .arg("--out")
            .arg(&out),
    );
    let (shape, got) = npy::read_f32(&out).unwrap();
    assert_eq!(shape, vec![2, 16, 128]);
    let want = &weights::load_file(&fixture().join("expected.safetensors")).unwrap()["logits"].data;
    let d = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(d <= 1e-4, "logits differ by {d}");
    // Ragged rows are a clear error naming the row.
    std::fs::write(&ids, "[[1, 2, 3], [4, 5]]").unwrap();
    let o = koala()
        .args(["logits", "--model"])
        .arg(fixture())
        .arg("--ids")
        .arg(&ids)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("row 1"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn make_run(dir: &Path) -> PathBuf {
    let shards = dir.join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    let rows: Vec<Row> = (0..16u32)
        .map(|i| {
            let tokens: Vec<u32> = (0..24).map(|j| (i * 7 + j * 3) % 96).collect();
            Row {
                loss_mask: vec![1; 24],
                segment_ids: vec![0; 24],
                tokens,
            }
        })
        .collect();
    write_shard(&shards.join("shard-00000.arrow"), &rows).unwrap();
    // A word-level tokenizer over the 96 ids, where `koala tokenize` would have put one.
    let vocab: serde_json::Map<String, serde_json::Value> = (0..96)
        .map(|i| {
            let w = if i == 0 {
                "<unk>".to_string()
            } else {
                format!("t{i}")
            };
            (w, serde_json::Value::from(i))
        })
        .collect();
    let tk = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(shards.join("tokenizer.json"), tk.to_string()).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "eos_token_id": 2}"#,
    )
    .unwrap();
    let cfg = dir.join("train.toml");
    std::fs::write(
        &cfg,
        format!(
            "model = {:?}\nshards = {:?}\nout_dir = {:?}\npreset = \"tiny-cpu\"\ncheckpoint_every = 2\n[hyper]\nbatch_size = 4\nlr = 5e-3\n",
            dir.join("config.json"),
            shards,
            dir.join("run")
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn train_cli_writes_model_metrics_curve_and_resumes() {
    let d = tempfile::tempdir().unwrap();
    let cfg = make_run(d.path());
    let so = run_ok(
        koala()
            .args(["train", "--config"])
            .arg(&cfg)
            .args(["--max-steps", "3"]),
    );
    assert!(so.contains("metrics"), "{so}");
    let so = run_ok(koala().args(["train", "--config"]).arg(&cfg));
    assert!(so.contains("final"), "{so}");
    let run = d.path().join("run");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 8, "16 rows / batch 4 × 2 epochs");
    let png = std::fs::read(run.join("loss_curve.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["steps"], 8);
    // The trained model samples through the CLI.
    let so = run_ok(
        koala()
            .args(["generate", "--model"])
            .arg(run.join("final"))
            .args([
                "--prompt-ids",
                "0,3,6",
                "--temperature",
                "0",
                "--max-new-tokens",
                "5",
            ]),
    );
    let ids: Vec<u32> = so.trim().split(',').map(|x| x.parse().unwrap()).collect();
    assert!(
        !ids.is_empty() && ids.len() <= 5 && ids.iter().all(|&i| i < 96),
        "{so}"
    );
    // The model folder holds the shards' tokenizer, so a text prompt needs no --tokenizer.
    assert_eq!(
        std::fs::read(run.join("final/tokenizer.json")).unwrap(),
        std::fs::read(d.path().join("shards/tokenizer.json")).unwrap()
    );
    let so = run_ok(
        koala()
            .args(["generate", "--model"])
            .arg(run.join("final"))
            .args([
                "--prompt",
                "t3 t6",
                "--temperature",
                "0",
                "--max-new-tokens",
                "4",
            ]),
    );
    // Every word printed is a word of that vocabulary: the text went through the tokenizer.
    let words: Vec<&str> = so.split_whitespace().collect();
    assert!(!words.is_empty(), "{so}");
    assert!(
        words.iter().all(|w| *w == "<unk>"
            || w.strip_prefix('t')
                .is_some_and(|n| n.parse::<u32>().is_ok())),
        "{so}"
    );
}
