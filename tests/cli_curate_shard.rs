//! Sharded curation end to end: `koala curate --shard I/N` for every I, then `koala
//! curate-merge`, must write what the single `koala curate` run writes (kept and dropped tables
//! row for row, the JSONL export and chart byte for byte, the report but its timings), for
//! N = 1, 2 and 7, with the koala-all and koala-distill presets and a global-dedup,
//! sampling config; and the merge must refuse an incomplete or mixed set of shards.
//!
//! The corpus is `koala synth --scale tiny` (386 rows of the seven sources; ShareGPT with exact
//! duplicate queries, some only after cleanup). Besides the run with the shipped eval sets, the
//! leakage stage runs against a small test set made of prompts copied from the corpus, so that
//! it drops rows in several shards (and a debug build need not index the shipped sets 30 times).
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use polars::prelude::*;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn koala(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_koala"));
    c.args(args);
    c
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The shared fixture: the synthetic corpus and a leakage test set drawn from it.
struct Fixture {
    _tmp: tempfile::TempDir,
    corpus: PathBuf,
    leak_set: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let corpus = tmp.path().join("corpus");
        let c = corpus.to_str().unwrap();
        ok(
            koala(&["synth", "--scale", "tiny", "--out", c])
                .output()
                .unwrap(),
            "synth",
        );
        std::fs::remove_file(corpus.join("report.json")).ok();
        // Test prompts copied from the corpus: the first long-enough user turn of a few rows
        // of each source, so that leakage (BLEU 100 > 20) drops them.
        let loaded = koala_pipeline::sources::load_dir(
            &corpus,
            &koala_pipeline::sources::LoadOptions::default(),
        )
        .unwrap();
        let convs = koala_pipeline::schema::from_dataframe(&loaded.table).unwrap();
        let mut lines = Vec::new();
        for src in [
            "sharegpt",
            "hc3",
            "alpaca",
            "hh",
            "summarize",
            "oig",
            "webgpt",
        ] {
            let prompts = convs
                .iter()
                .filter(|c| c.source == src)
                .filter_map(|c| {
                    c.turns
                        .iter()
                        .find(|t| t.role == koala_pipeline::schema::Role::User)
                })
                .map(|t| t.text.clone())
                .filter(|t| t.split_whitespace().count() >= 8 && !t.contains('<'));
            for (k, p) in prompts.skip(3).step_by(5).take(2).enumerate() {
                lines
                    .push(serde_json::json!({"id": format!("{src}-{k}"), "prompt": p}).to_string());
            }
        }
        assert!(lines.len() >= 8, "{lines:?}");
        let leak_set = tmp.path().join("leak_test.jsonl");
        std::fs::write(&leak_set, lines.join("\n") + "\n").unwrap();
        Fixture {
            corpus,
            leak_set,
            _tmp: tmp,
        }
    })
}

/// A preset with the leakage stage pointed at the fixture's test set.
fn preset_with_small_leak_set(preset: &str, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join("pipeline/presets").join(preset)).unwrap();
    assert!(
        !text.lines().any(|l| l.trim() == "[leakage]"),
        "{preset} has a [leakage] table now: adapt this test"
    );
    let path = dir.join(preset);
    let leak = fixture().leak_set.to_str().unwrap().replace('\\', "/");
    std::fs::write(
        &path,
        format!("{text}\n[leakage]\ntest_sets = [\"{leak}\"]\n"),
    )
    .unwrap();
    path
}

fn read_parquet(path: &Path) -> DataFrame {
    ParquetReader::new(
        std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .finish()
    .unwrap()
}

fn report(dir: &Path) -> Value {
    let mut r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    r.as_object_mut().unwrap().remove("stage_seconds").unwrap();
    r
}

fn files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// The merged directory holds what the single run wrote, and the same content.
fn assert_same_outputs(single: &Path, merged: &Path, label: &str) {
    assert_eq!(files(single), files(merged), "{label}: file names");
    for table in ["kept.parquet", "dropped.parquet"] {
        let (a, b) = (
            read_parquet(&single.join(table)),
            read_parquet(&merged.join(table)),
        );
        assert_eq!(a.schema(), b.schema(), "{label}: {table} schema");
        assert!(
            a.equals_missing(&b),
            "{label}: {table} differs\nsingle:\n{a}\nmerged:\n{b}"
        );
    }
    for f in [
        "train.jsonl",
        "eval.jsonl",
        "eval_prompts.json",
        "composition.svg",
        "quarantine.jsonl",
    ] {
        if single.join(f).exists() {
            assert!(
                std::fs::read(single.join(f)).unwrap() == std::fs::read(merged.join(f)).unwrap(),
                "{label}: {f} differs"
            );
        }
    }
    assert_eq!(report(single), report(merged), "{label}: report.json");
}

/// `koala curate` with `config` on the fixture corpus into `out`, with `extra` arguments.
fn curate(config: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = koala(&["curate", "--quiet", "--input"]);
    c.arg(&fixture().corpus)
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}

/// Runs the N shards side by side; returns their directories.
fn run_shards(config: &Path, dir: &Path, n: u32) -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = (0..n)
        .map(|i| dir.join(format!("shard-{i}-of-{n}")))
        .collect();
    let children: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let spec = format!("{i}/{n}");
            curate(config, d, &["--shard", &spec])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = ok(c.wait_with_output().unwrap(), &format!("shard {i}/{n}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&format!("shard {i}/{n}:")), "{stdout}");
    }
    dirs
}

fn merge(config: &Path, out: &Path, shards: &[PathBuf], extra: &[&str]) -> Output {
    let mut c = koala(&["curate-merge", "--quiet", "--config"]);
    c.arg(config).arg("--out").arg(out).args(extra).args(shards);
    c.output().unwrap()
}

/// Single run vs. sharded runs with N = each of `ns`, merged; returns the single run's report.
fn single_vs_sharded(config: &Path, dir: &Path, ns: &[u32]) -> Value {
    let single = dir.join("single");
    ok(curate(config, &single, &[]).output().unwrap(), "single run");
    for &n in ns {
        let shards = run_shards(config, &dir.join(format!("n{n}")), n);
        // Any order of the shard directories.
        let mut order = shards.clone();
        order.reverse();
        let merged = dir.join(format!("merged-{n}"));
        let out = ok(merge(config, &merged, &order, &[]), &format!("merge N={n}"));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("invariant holds"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_same_outputs(&single, &merged, &format!("{} N={n}", config.display()));
        // Shards own disjoint parts of the input that cover it.
        let owned: u64 = shards
            .iter()
            .map(|d| {
                let m: Value =
                    serde_json::from_str(&std::fs::read_to_string(d.join("shard.json")).unwrap())
                        .unwrap();
                m["rows_owned"].as_u64().unwrap()
            })
            .sum();
        assert_eq!(Value::from(owned), report(&single)["rows_in"]);
    }
    report(&single)
}

fn dropped(report: &Value, stage: &str, reason: &str) -> u64 {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == stage)
        .and_then(|s| s["dropped"][reason].as_u64())
        .unwrap_or(0)
}

#[test]
fn koala_all_shards_merge_to_the_single_run() {
    let tmp = tempfile::tempdir().unwrap();
    let config = preset_with_small_leak_set("koala-all.toml", tmp.path());
    let r = single_vs_sharded(&config, tmp.path(), &[1, 2, 7]);
    // The corpus exercises what sharding must get right.
    assert!(dropped(&r, "dedup", "duplicate_query") >= 3, "{r}");
    assert!(dropped(&r, "leakage", "leakage") >= 4, "{r}");
    assert!(dropped(&r, "cleanup", "origin_keyword") >= 1, "{r}");
    assert!(dropped(&r, "language", "language") >= 1, "{r}");
}

#[test]
fn koala_distill_shards_merge_to_the_single_run() {
    let tmp = tempfile::tempdir().unwrap();
    let config = preset_with_small_leak_set("koala-distill.toml", tmp.path());
    let r = single_vs_sharded(&config, tmp.path(), &[1, 2, 7]);
    assert!(dropped(&r, "select", "meta_filter") >= 1, "{r}");
    assert!(dropped(&r, "select", "not_in_mixture") >= 1, "{r}");
    assert!(dropped(&r, "dedup", "duplicate_query") >= 3, "{r}");
    assert!(dropped(&r, "leakage", "leakage") >= 1, "{r}");
}

/// Global dedup over every source, cleanup rules everywhere, mixture sampling (weight and cap).
#[test]
fn global_dedup_and_sampling_shards_merge_to_the_single_run() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("global.toml");
    std::fs::write(
        &config,
        r#"name = "global-test"
seed = 5
[[sources]]
name = "hh"
weight = 0.5
[[sources]]
name = "sharegpt"
weight = 0.8
[[sources]]
name = "hc3"
cap = 20
[[sources]]
name = "alpaca"
[cleanup]
sources = ["*"]
[dedup]
sources = ["*"]
scope = "global"
[leakage]
enabled = false
"#,
    )
    .unwrap();
    let r = single_vs_sharded(&config, tmp.path(), &[2, 7]);
    assert!(dropped(&r, "dedup", "duplicate_query") >= 10, "{r}");
    assert!(dropped(&r, "mixture", "mixture_sample") >= 10, "{r}");
}

/// The preset as shipped: leakage against the shipped Koala and self-instruct eval sets.
#[test]
fn shipped_preset_with_the_shipped_eval_sets() {
    let tmp = tempfile::tempdir().unwrap();
    single_vs_sharded(
        &root().join("pipeline/presets/koala-all.toml"),
        tmp.path(),
        &[2],
    );
}

#[test]
fn merge_refuses_incomplete_or_mixed_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let text = std::fs::read_to_string(root().join("pipeline/presets/koala-all.toml")).unwrap();
    let config = dir.join("fast.toml");
    std::fs::write(&config, format!("{text}\n[leakage]\nenabled = false\n")).unwrap();
    let two = run_shards(&config, &dir.join("two"), 2);
    let three = run_shards(&config, &dir.join("three"), 3);
    let fails = |out: Output, want: &str| {
        assert!(!out.status.success(), "expected failure ({want})");
        let e = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(e.contains(want), "stderr lacks {want:?}:\n{e}");
    };
    let out = dir.join("merged");
    fails(
        merge(&config, &out, &[two[1].clone()], &[]),
        "missing shard 0/2",
    );
    fails(merge(&config, &out, &three[..2], &[]), "missing shard 2/3");
    fails(
        merge(
            &config,
            &out,
            &[two[0].clone(), two[1].clone(), two[0].clone()],
            &[],
        ),
        "duplicate shard 0/2",
    );
    fails(
        merge(
            &config,
            &out,
            &[two[0].clone(), three[1].clone(), three[2].clone()],
            &[],
        ),
        "mismatched shard counts",
    );
    fails(
        merge(&config, &out, &two, &["--seed", "7"]),
        "another config",
    );
    fails(
        merge(&config, &out, &[two[0].clone(), dir.to_path_buf()], &[]),
        "no shard.json",
    );
    assert!(!out.exists(), "a refused merge writes nothing");
    ok(merge(&config, &out, &two, &[]), "merge of both shards");

    // Bad shard specs, refused before any input is read.
    for (spec, want) in [
        ("3/3", "index 3 is not below N = 3"),
        ("1/0", "the shard count must be at least 1"),
        ("1", "expected I/N"),
    ] {
        let o = dir.join(format!("bad-{}", spec.replace('/', "-")));
        fails(
            curate(&config, &o, &["--shard", spec]).output().unwrap(),
            want,
        );
        assert!(!o.exists());
    }
    // MinHash near-dup is not exact across shards: refused with N > 1, fine with N = 1.
    assert!(text.contains("[dedup.near]\nenabled = false"));
    let near = dir.join("near.toml");
    std::fs::write(
        &near,
        text.replace(
            "[dedup.near]\nenabled = false",
            "[dedup.near]\nenabled = true",
        ) + "\n[leakage]\nenabled = false\n",
    )
    .unwrap();
    let o = dir.join("near-2");
    fails(
        curate(&near, &o, &["--shard", "1/2"]).output().unwrap(),
        "[dedup.near]",
    );
    assert!(!o.exists());
    ok(
        curate(&near, &dir.join("near-1"), &["--shard", "0/1"])
            .output()
            .unwrap(),
        "near-dup as one shard",
    );
}
