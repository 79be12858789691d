//! LoRA through the `koala` binary, against peft and transformers:
//! * `koala lora merge` of a peft adapter equals peft's `merge_and_unload` (fixture);
//! * `koala logits --adapter` (unmerged) and `koala logits` of the merged model give peft's logits;
//! * `koala generate --adapter` gives the adapted model's greedy tokens from transformers;
//! * an adapter trained by `koala train` with `[lora]` loads in peft with the same logits, and a
//!   full fine-tuning checkpoint loads in transformers with the same logits.
//!
//! The last two run Python with torch, transformers and peft: `$KOALA_TORCH_PYTHON`
//! (scripts/test.sh installs it under ~/.cache). Without it they print `skipped: …`, except under
//! CI (`CI` set), where they fail.
use std::path::{Path, PathBuf};
use std::process::Command;

use koala_trainer::{npy, weights};

fn koala() -> Command {
    Command::new(env!("CARGO_BIN_EXE_koala"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn base() -> PathBuf {
    root().join("model/tests/fixtures/tiny_hf")
}

fn peft_adapter() -> PathBuf {
    root().join("model/tests/fixtures/tiny_lora")
}

fn fixture() -> PathBuf {
    root().join("trainer/tests/fixtures/lora_peft")
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

/// Worst `|a − b|` relative to the largest `|b|`.
fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-12);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

/// Writes the fixture's input ids as the `--ids` file; returns its path.
fn ids_file(dir: &Path) -> PathBuf {
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("ids.json")).unwrap())
            .unwrap();
    let p = dir.join("ids.json");
    std::fs::write(&p, j["input_ids"].to_string()).unwrap();
    p
}

fn logits(model: &Path, adapter: Option<&Path>, ids: &Path, out: &Path) -> Vec<f32> {
    let mut cmd = koala();
    cmd.args(["logits", "--model"]).arg(model);
    if let Some(a) = adapter {
        cmd.arg("--adapter").arg(a);
    }
    run_ok(cmd.arg("--ids").arg(ids).arg("--out").arg(out));
    npy::read_f32(out).unwrap().1
}

#[test]
fn merge_and_logits_of_a_peft_adapter_match_peft() {
    let d = tempfile::tempdir().unwrap();
    let merged = d.path().join("merged");
    let said = run_ok(
        koala()
            .args(["lora", "merge", "--model"])
            .arg(base())
            .arg("--adapter")
            .arg(peft_adapter())
            .arg("--out")
            .arg(&merged),
    );
    assert!(said.contains("merged 14 weights"), "{said}");
    let ours = weights::load_dir(&merged).unwrap();
    let base_w = weights::load_dir(&base()).unwrap();
    let want = weights::load_file(&fixture().join("merged.safetensors")).unwrap();
    assert_eq!(ours.len(), base_w.len());
    for (name, t) in &ours {
        match want.get(name) {
            // peft sums B·A in another order: equal to a few ulps.
            Some(w) => assert!(worst(&t.data, &w.data) < 1e-6, "{name}"),
            None => assert_eq!(t, &base_w[name], "{name} is not adapted: copied as is"),
        }
    }
    for f in ["config.json", "tokenizer.json"] {
        assert!(
            merged.join(f).is_file(),
            "{f} travels with the merged model"
        );
    }
    let ids = ids_file(d.path());
    let (_, want) = npy::read_f32(&fixture().join("logits.npy")).unwrap();
    let unmerged = logits(
        &base(),
        Some(&peft_adapter()),
        &ids,
        &d.path().join("a.npy"),
    );
    assert!(worst(&unmerged, &want) < 1e-5, "--adapter logits");
    let from_merged = logits(&merged, None, &ids, &d.path().join("m.npy"));
    assert!(worst(&from_merged, &want) < 1e-5, "merged model's logits");
}

#[test]
fn generate_with_a_peft_adapter_gives_transformers_greedy_tokens() {
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(peft_adapter().join("greedy.json")).unwrap())
            .unwrap();
    let case = &g["cases"][0];
    let ids: Vec<u64> = serde_json::from_value(case["ids"].clone()).unwrap();
    let want: Vec<u64> = serde_json::from_value(case["greedy"].clone()).unwrap();
    let prompt = ids
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = run_ok(
        koala()
            .args(["generate", "--model"])
            .arg(base())
            .arg("--adapter")
            .arg(peft_adapter())
            .args(["--prompt-ids", &prompt, "--temperature", "0"])
            .args(["--max-new-tokens", &want.len().to_string()]),
    );
    let got: Vec<u64> = out
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(
        got == want,
        "greedy tokens differ:\n ours {got:?}\n want {want:?}"
    );
}

/// Python with torch, transformers and peft, or `None` (a skip, or a failure under CI).
fn torch_python() -> Option<String> {
    let py = std::env::var("KOALA_TORCH_PYTHON").ok();
    let ok = py.as_ref().is_some_and(|p| {
        Command::new(p)
            .args(["-c", "import torch, transformers, peft"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if ok {
        return py;
    }
    let why = "KOALA_TORCH_PYTHON does not name a Python with torch, transformers and peft \
               (scripts/test.sh installs one)";
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("skipped: {why}");
    None
}

/// A tiny training run on tiny_hf: `lora` adds a `[lora]` table.
fn train(dir: &Path, out: &str, lora: bool) -> PathBuf {
    let shards = dir.join("shards");
    if !shards.exists() {
        let rows: Vec<koala_trainer::data::Row> = (0..8u32)
            .map(|i| koala_trainer::data::Row {
                tokens: (0..12).map(|j| (5 + 7 * i + 3 * j) % 500).collect(),
                loss_mask: (0..12).map(|j| u8::from(j >= 3)).collect(),
                segment_ids: vec![0; 12],
            })
            .collect();
        std::fs::create_dir_all(&shards).unwrap();
        koala_trainer::data::write_shard(&shards.join("part-0.arrow"), &rows).unwrap();
        std::fs::write(
            shards.join("manifest.json"),
            r#"{"format": "koala", "vocab_size": 512, "seq_len": 12,
                "shards": [{"path": "part-0.arrow", "rows": 8}]}"#,
        )
        .unwrap();
    }
    let cfg = dir.join(format!("{out}.toml"));
    let lora_table = if lora {
        "[lora]\nr = 4\nalpha = 8\ntarget_modules = [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"down_proj\"]\n"
    } else {
        ""
    };
    std::fs::write(
        &cfg,
        format!(
            "model = {:?}\nshards = {:?}\nout_dir = {:?}\nseed = 3\nval_split = \"none\"\n\
             [hyper]\nbatch_size = 4\nmicro_batch_size = 4\nepochs = 2\nlr = 1e-2\n{lora_table}",
            base(),
            shards,
            dir.join(out)
        ),
    )
    .unwrap();
    run_ok(koala().args(["train", "--config"]).arg(&cfg));
    dir.join(out).join("final")
}

#[test]
fn peft_loads_our_adapter_and_transformers_our_checkpoint_with_our_logits() {
    let Some(py) = torch_python() else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let ids = ids_file(d.path());
    let script = root().join("scripts/peft_logits.py");

    let adapter = train(d.path(), "lora", true);
    assert!(adapter.join("adapter_model.safetensors").is_file());
    let ours = logits(&base(), Some(&adapter), &ids, &d.path().join("ours.npy"));
    let theirs_path = d.path().join("peft.npy");
    run_ok(
        Command::new(&py)
            .arg(&script)
            .arg(base())
            .arg(&adapter)
            .arg(&ids)
            .arg(&theirs_path),
    );
    let theirs = npy::read_f32(&theirs_path).unwrap().1;
    assert!(worst(&ours, &theirs) < 1e-5, "peft's logits of our adapter");
    // The adapter learned something: it moved the logits away from the base's.
    let plain = logits(&base(), None, &ids, &d.path().join("base.npy"));
    assert!(
        worst(&ours, &plain) > 1e-3,
        "the trained adapter changes nothing"
    );

    // Full fine-tuning: transformers loads the final checkpoint as-is.
    let full = train(d.path(), "full", false);
    let ours = logits(&full, None, &ids, &d.path().join("full.npy"));
    let hf_path = d.path().join("hf.npy");
    run_ok(
        Command::new(&py)
            .args(["-c", HF_LOGITS])
            .arg(&full)
            .arg(&ids)
            .arg(&hf_path),
    );
    let theirs = npy::read_f32(&hf_path).unwrap().1;
    assert!(
        worst(&ours, &theirs) < 1e-5,
        "transformers' logits of our checkpoint"
    );
}

/// transformers' logits of a model directory: `python -c HF_LOGITS MODEL IDS OUT`.
const HF_LOGITS: &str = r#"
import json, sys
import numpy as np, torch
from transformers import LlamaForCausalLM
m = LlamaForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32).eval()
ids = torch.tensor(json.load(open(sys.argv[2])))
with torch.no_grad():
    np.save(sys.argv[3], m(input_ids=ids).logits.numpy().astype(np.float32))
"#;
