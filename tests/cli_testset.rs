//! `koala testset check`: runs the binary on the committed labelled set and on a small labelled
//! file of its own.
use std::path::Path;
use std::process::Command;

fn koala() -> Command {
    Command::new(env!("CARGO_BIN_EXE_koala"))
}

const LABELS: &str = "testsets/data/labels/labels.jsonl";
const HAND_MADE: &str = "testsets/data/labels/hand_made_prompts.jsonl";

#[test]
fn check_prints_metrics_and_misclassified_prompts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = koala()
        .current_dir(root)
        .args([
            "testset",
            "check",
            "--test",
            "koala",
            "--test",
            "builtin:self-instruct",
        ])
        .args(["--test", HAND_MADE, "--labels", LABELS])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("580 labelled prompts"), "{text}");
    for needle in [
        "coding",
        "non_english",
        "precision",
        "recall",
        "Misclassified",
        "Borderline",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
}

#[test]
fn check_json_follows_the_threshold_and_lists_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let tests = dir.path().join("t.jsonl");
    std::fs::write(
        &tests,
        concat!(
            "{\"id\":\"c\",\"prompt\":\"Write a Python function that sorts a list.\"}\n",
            "{\"id\":\"n\",\"prompt\":\"Tell me a joke about cats.\"}\n",
            "{\"id\":\"es\",\"prompt\":\"¿Qué hora es?\"}\n",
        ),
    )
    .unwrap();
    let labels = dir.path().join("l.jsonl");
    std::fs::write(
        &labels,
        concat!(
            "{\"id\":\"c\",\"coding\":true,\"non_english\":false}\n",
            "{\"id\":\"n\",\"coding\":false,\"non_english\":false}\n",
            "{\"id\":\"es\",\"coding\":false,\"non_english\":true}\n",
        ),
    )
    .unwrap();
    let run = |threshold: &str| {
        let out = koala()
            .args([
                "testset",
                "check",
                "--json",
                "--threshold",
                threshold,
                "--test",
            ])
            .arg(&tests)
            .arg("--labels")
            .arg(&labels)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let v = run("2");
    assert_eq!(v["labelled"], 3);
    assert_eq!(v["coding"]["recall"], 1.0);
    assert_eq!(v["non_english"]["recall"], 1.0);
    assert_eq!(v["mismatches"].as_array().unwrap().len(), 0);
    // A threshold no prompt reaches: the coding prompt is missed and listed with its reasons.
    let v = run("50");
    assert_eq!(v["coding"]["tp"], 0);
    let m = &v["mismatches"][0];
    assert_eq!(
        (m["id"].as_str(), m["flag"].as_str()),
        (Some("c"), Some("coding"))
    );
    assert!(m["reasons"].as_str().unwrap().contains("lang_noun"), "{m}");
}

#[test]
fn check_rejects_unknown_sets_and_bad_labels() {
    let out = koala()
        .args(["testset", "check", "--test", "nope", "--labels", LABELS])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown eval set"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"id\":\"koala_0\"}\n").unwrap();
    let out = koala()
        .args(["testset", "check", "--test", "koala", "--labels"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(":1:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
