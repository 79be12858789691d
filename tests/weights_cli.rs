//! The real `koala weights diff` / `koala weights recover` binary: a sharded bf16/f32 checkpoint
//! with NaN, inf and -0.0 goes through a diff and back, and the recovered files equal the tuned
//! ones byte for byte; a base one ulp off fails with a message naming the tensor.
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// Runs `koala weights <sub> --flag path ...`.
fn koala(sub: &str, flags: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_koala"));
    cmd.arg("weights").arg(sub);
    for (flag, p) in flags {
        cmd.arg(flag).arg(p);
    }
    cmd.output().unwrap()
}

fn bf16_bytes(bits: &[u16]) -> Vec<u8> {
    bits.iter().flat_map(|b| b.to_le_bytes()).collect()
}

fn f32_bytes(xs: &[f32]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `tensors` (name, dtype, shape, bytes) as two shards with an index, plus a config.
fn write_ckpt(dir: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    std::fs::write(dir.join("tokenizer.json"), r#"{"model": {}}"#).unwrap();
    let mut weight_map = serde_json::Map::new();
    for s in 0..2 {
        let fname = format!("model-{:05}-of-00002.safetensors", s + 1);
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .skip(s)
            .step_by(2)
            .map(|(n, d, shape, b)| {
                weight_map.insert(n.to_string(), fname.clone().into());
                (
                    n.to_string(),
                    TensorView::new(*d, shape.clone(), b).unwrap(),
                )
            })
            .collect();
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        std::fs::write(
            dir.join(&fname),
            safetensors::serialize(views, Some(meta)).unwrap(),
        )
        .unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn diff_and_recover_through_the_binary() {
    let d = tempfile::tempdir().unwrap();
    let (base, tuned, diff, rec) = (
        d.path().join("base"),
        d.path().join("tuned"),
        d.path().join("diff"),
        d.path().join("rec"),
    );
    let q_base = [0x3f80u16, 0x7fc1, 0x8000, 0xff80, 0x0001, 0x4000];
    let q_tuned = [0x3f81u16, 0x3f80, 0x0000, 0x7f80, 0x7fc0, 0x4000];
    let n_base = [1.0f32, f32::NAN, -0.0, f32::INFINITY];
    let n_tuned = [f32::from_bits(0x7fc0_0042), 1.0, 0.0, f32::NEG_INFINITY];
    let b = [
        (
            "model.embed_tokens.weight",
            Dtype::BF16,
            vec![2, 3],
            bf16_bytes(&q_base),
        ),
        (
            "model.layers.0.self_attn.q_proj.weight",
            Dtype::BF16,
            vec![3, 2],
            bf16_bytes(&q_base),
        ),
        ("model.norm.weight", Dtype::F32, vec![4], f32_bytes(&n_base)),
    ];
    let mut emb = q_tuned.to_vec();
    emb.extend([0x1234, 0x4321, 0xffff]);
    let t = [
        (
            "model.embed_tokens.weight",
            Dtype::BF16,
            vec![3, 3],
            bf16_bytes(&emb),
        ),
        (
            "model.layers.0.self_attn.q_proj.weight",
            Dtype::BF16,
            vec![3, 2],
            bf16_bytes(&q_tuned),
        ),
        (
            "model.norm.weight",
            Dtype::F32,
            vec![4],
            f32_bytes(&n_tuned),
        ),
    ];
    write_ckpt(&base, &b);
    write_ckpt(&tuned, &t);

    let o = koala(
        "diff",
        &[("--base", &base), ("--tuned", &tuned), ("--out", &diff)],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("3 tensors in 2 files"), "{stdout}");
    assert!(stdout.contains("2 deltas, 1 whole"), "{stdout}");
    assert!(
        stdout.contains("whole: model.embed_tokens.weight"),
        "{stdout}"
    );
    assert!(diff.join("weight_diff.json").exists());
    assert!(diff.join("config.json").exists());

    let o = koala(
        "recover",
        &[("--base", &base), ("--diff", &diff), ("--out", &rec)],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("3 tensors in 2 files"), "{stdout}");
    for f in [
        "config.json",
        "tokenizer.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        assert_eq!(
            std::fs::read(rec.join(f)).unwrap(),
            std::fs::read(tuned.join(f)).unwrap(),
            "{f}"
        );
    }

    // A base whose q_proj is one ulp off: a non-zero exit naming the tensor; no output folder.
    let wrong = d.path().join("wrong");
    let mut q_wrong = q_base;
    q_wrong[0] += 1;
    let mut w = b.clone();
    w[1].3 = bf16_bytes(&q_wrong);
    write_ckpt(&wrong, &w);
    let rec2 = d.path().join("rec2");
    let o = koala(
        "recover",
        &[("--base", &wrong), ("--diff", &diff), ("--out", &rec2)],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("model.layers.0.self_attn.q_proj.weight") && stderr.contains("wrong base"),
        "{stderr}"
    );
    assert!(!rec2.exists());
}
