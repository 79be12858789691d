//! End to end: `koala curate` on the bundled sample (`examples/data`) with the `koala-all`
//! preset. Asserts the funnel per source and stage, the lineage invariant on the files written,
//! the Koala JSONL export, byte-identical reruns, and clear config errors.
use std::path::{Path, PathBuf};
use std::process::Command;

use polars::prelude::*;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn curate(preset: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_koala"))
        .arg("curate")
        .arg("--config")
        .arg(root().join("pipeline/presets").join(preset))
        .arg("--input")
        .arg(root().join("examples/data"))
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .args(extra)
        .output()
        .expect("run koala")
}

fn read_parquet(path: &Path) -> DataFrame {
    ParquetReader::new(std::fs::File::open(path).unwrap())
        .finish()
        .unwrap()
}

fn funnel(report: &Value, source: &str) -> Vec<u64> {
    report["funnel"][source]
        .as_array()
        .unwrap_or_else(|| panic!("no funnel for {source}: {report}"))
        .iter()
        .map(|step| step[1].as_u64().unwrap())
        .collect()
}

#[test]
fn koala_all_on_the_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a");
    let run = curate("koala-all.toml", &out, &[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("invariant holds"), "{stdout}");

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let stages: Vec<&str> = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        [
            "select", "cleanup", "dedup", "language", "markers", "leakage", "mixture"
        ]
    );
    // Funnel per source: input, select, cleanup, dedup, language, markers, leakage (on by
    // default, against the shipped eval sets), mixture.
    // examples/data holds 9 ShareGPT conversations (2 in Koala's keyed layout, 7 in the
    // ShareGPT-90K layout): two repeat an earlier user query ("How do I reverse a list in
    // Python?", "Write a haiku about autumn rain." with other casing/spacing), one is Spanish and
    // one Mandarin. One HH rejected reply is empty. Everything else passes the koala-all preset.
    assert_eq!(funnel(&report, "sharegpt"), [9, 9, 9, 7, 5, 5, 5, 5]);
    assert_eq!(funnel(&report, "hh"), [14, 14, 13, 13, 13, 13, 13, 13]);
    for (src, n) in [
        ("alpaca", 6),
        ("hc3", 13),
        ("oig", 6),
        ("summarize", 6),
        ("webgpt", 6),
    ] {
        assert_eq!(funnel(&report, src), [n; 8], "{src}");
    }
    let reasons = |i: usize| report["stages"][i]["dropped"].clone();
    assert_eq!(reasons(1), serde_json::json!({"no_assistant_reply": 1}));
    assert_eq!(reasons(2), serde_json::json!({"duplicate_query": 2}));
    assert_eq!(reasons(3), serde_json::json!({"language": 2}));
    // Nothing in the sample leaks a Koala or self-instruct test prompt.
    assert_eq!(reasons(5), serde_json::json!({}));
    assert_eq!(report["rows_in"], 60);
    assert_eq!(report["rows_kept"], 55);

    // Lineage invariant on the files.
    let kept = read_parquet(&out.join("kept.parquet"));
    let dropped = read_parquet(&out.join("dropped.parquet"));
    let rows_in = report["rows_in"].as_u64().unwrap();
    assert_eq!(kept.height() as u64 + dropped.height() as u64, rows_in);
    assert_eq!(report["invariant_holds"], Value::Bool(true));
    for c in ["drop_stage", "drop_reason", "drop_details"] {
        assert_eq!(dropped.column(c).unwrap().null_count(), 0, "{c}");
    }
    for d in dropped
        .column("drop_details")
        .unwrap()
        .str()
        .unwrap()
        .iter()
    {
        let v: Value = serde_json::from_str(d.unwrap()).unwrap();
        assert!(v.is_object());
    }
    // Kept and dropped ids are disjoint.
    let mut ids: Vec<String> = Vec::new();
    for df in [&kept, &dropped] {
        ids.extend(
            df.column("id")
                .unwrap()
                .str()
                .unwrap()
                .iter()
                .map(|s| s.unwrap().to_string()),
        );
    }
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n);

    // Export: one example per kept row; every key that `fields` names is present.
    let mut examples = 0;
    for split in ["train", "eval"] {
        let text = std::fs::read_to_string(out.join(format!("{split}.jsonl"))).unwrap();
        for line in text.lines() {
            let ex: Value = serde_json::from_str(line).unwrap();
            for field in ex["fields"].as_str().unwrap().split(',') {
                for sub in field
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .split('+')
                {
                    assert!(
                        sub == "<|eos|>" || ex.get(sub).is_some(),
                        "{sub} missing in {line}"
                    );
                }
            }
            assert_eq!(ex["marker_user"], "USER:");
            examples += 1;
        }
    }
    assert_eq!(examples, kept.height());
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Funnel per source"));
    let svg = std::fs::read_to_string(out.join("composition.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("sharegpt"));
    // A title, both axis titles, tick values and a legend entry per split, as SVG text.
    let texts: Vec<&str> = svg
        .split("<text")
        .skip(1)
        .filter_map(|t| t.split_once('>').map(|(_, rest)| rest))
        .map(|rest| rest.split('<').next().unwrap_or("").trim())
        .collect();
    for want in [
        "Final mixture per source",
        "conversations",
        "source",
        "train",
        "eval",
        "0",
    ] {
        assert!(
            texts.iter().any(|t| t.starts_with(want)),
            "composition.svg has no text {want:?}: {texts:?}"
        );
    }

    // Same config, same input: byte-identical outputs. Another seed: another order.
    let again = tmp.path().join("b");
    assert!(curate("koala-all.toml", &again, &[]).status.success());
    for f in [
        "kept.parquet",
        "dropped.parquet",
        "train.jsonl",
        "eval.jsonl",
        "eval_prompts.json",
    ] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(again.join(f)).unwrap(),
            "{f}"
        );
    }
    let other = tmp.path().join("c");
    assert!(
        curate("koala-all.toml", &other, &["--seed", "7"])
            .status
            .success()
    );
    assert_ne!(
        std::fs::read(out.join("train.jsonl")).unwrap(),
        std::fs::read(other.join("train.jsonl")).unwrap()
    );
}

/// The notebook path: an embedded preset and `curate_dir` in one call give what the CLI gives.
#[test]
fn curate_dir_with_an_embedded_preset_matches_the_cli() {
    use koala_pipeline::prelude::{CurateConfig, curate_dir};
    let tmp = tempfile::tempdir().unwrap();
    let cli_out = tmp.path().join("cli");
    assert!(curate("koala-all.toml", &cli_out, &[]).status.success());
    let cli: Value =
        serde_json::from_str(&std::fs::read_to_string(cli_out.join("report.json")).unwrap())
            .unwrap();

    let cfg = CurateConfig::preset("koala-all").unwrap();
    let lib_out = tmp.path().join("lib");
    let run = curate_dir(&cfg, &root().join("examples/data"), &lib_out).unwrap();
    let (out, report) = (run.output, run.report);
    assert_eq!(report.rows_in, cli["rows_in"].as_u64().unwrap());
    assert_eq!(report.rows_kept, cli["rows_kept"].as_u64().unwrap());
    assert_eq!(report.rows_dropped, cli["rows_dropped"].as_u64().unwrap());
    assert_eq!(out.kept.height() as u64, report.rows_kept);
    assert_eq!(
        serde_json::to_value(&report.funnel).unwrap(),
        cli["funnel"],
        "funnel"
    );
    for f in [
        "kept.parquet",
        "dropped.parquet",
        "train.jsonl",
        "eval.jsonl",
    ] {
        assert_eq!(
            std::fs::read(lib_out.join(f)).unwrap(),
            std::fs::read(cli_out.join(f)).unwrap(),
            "{f} differs from the CLI's"
        );
    }
    // Display is the Markdown report.
    let text = report.to_string();
    assert!(text.contains("## Funnel per source"), "{text}");
    assert_eq!(
        text,
        std::fs::read_to_string(lib_out.join("report.md")).unwrap()
    );
    // The notebook view: funnel, drops by reason, and the chart inline.
    let html = report.to_html();
    for want in [
        "Funnel per source",
        "Dropped, by stage and reason",
        "<svg",
        "sharegpt",
    ] {
        assert!(html.contains(want), "to_html lacks {want:?}");
    }
    let mut reasons = 0;
    for st in &report.stages {
        for (reason, n) in &st.dropped {
            if *n > 0 {
                reasons += 1;
                assert!(
                    html.contains(&format!("<td>{reason}</td><td>{n}</td>")),
                    "{reason}"
                );
            }
        }
    }
    assert!(reasons > 0, "the sample drops rows for some reason");
}

#[test]
fn positive_only_preset_drops_every_negative() {
    let tmp = tempfile::tempdir().unwrap();
    let po = tmp.path().join("po");
    let run = curate("hf_po.toml", &po, &[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(po.join("train.jsonl")).unwrap()
        + &std::fs::read_to_string(po.join("eval.jsonl")).unwrap();
    assert!(!text.contains("gpt_bad_"));
    let pn = tmp.path().join("pn");
    assert!(curate("hf_pn.toml", &pn, &[]).status.success());
    let text = std::fs::read_to_string(pn.join("train.jsonl")).unwrap();
    assert!(
        text.contains("+marker_gpt_bad],gpt_bad_"),
        "pn export has no negative example"
    );
}

#[test]
fn config_errors_name_the_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[[sources]]\nname = \"alpaca\"\n[dedup]\nscoep = \"global\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_koala"))
        .args(["curate", "--config"])
        .arg(&cfg)
        .arg("--input")
        .arg(root().join("examples/data"))
        .arg("--out")
        .arg(tmp.path().join("o"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("scoep"), "{err}");
}

#[test]
fn leakage_stage_drops_training_rows_that_leak_a_test_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let test_set = tmp.path().join("koala_test.jsonl");
    std::fs::write(
        &test_set,
        "{\"id\": \"koala_1\", \"prompt\": \"How can I reverse a list in Python?\"}\n\
         {\"id\": \"koala_2\", \"prompt\": \"Explain the rules of cricket to a baseball fan.\"}\n",
    )
    .unwrap();
    let cfg = tmp.path().join("leak.toml");
    std::fs::write(
        &cfg,
        format!(
            "name = \"leak\"\n[[sources]]\nname = \"sharegpt\"\n[leakage]\ntest_sets = [{:?}]\nthreshold = 20.0\n",
            test_set.display().to_string()
        ),
    )
    .unwrap();
    let out = tmp.path().join("o");
    let run = Command::new(env!("CARGO_BIN_EXE_koala"))
        .args(["curate", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--input")
        .arg(root().join("examples/data"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let leak = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "leakage")
        .expect("a leakage stage");
    // "How do I reverse a list in Python?" (the kept one of the two duplicates) leaks koala_1.
    assert_eq!(leak["dropped"], serde_json::json!({"leakage": 1}));
    let dropped = read_parquet(&out.join("dropped.parquet"));
    let mask = dropped
        .column("drop_reason")
        .unwrap()
        .str()
        .unwrap()
        .equal("leakage");
    let row = dropped.filter(&mask).unwrap();
    let d = row
        .column("drop_details")
        .unwrap()
        .str()
        .unwrap()
        .get(0)
        .unwrap()
        .to_string();
    assert!(d.contains("\"test_id\":\"koala_1\""), "{d}");
    assert_eq!(
        row.column("id").unwrap().str().unwrap().get(0),
        Some("sharegpt/QWJhYvA_0")
    );
}
