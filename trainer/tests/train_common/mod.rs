//! The tiny training fixture shared by the training-loop tests: 20 packed rows of a 64-token
//! vocabulary in two shards, and a 2-layer GQA model config to initialise from.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use koala_trainer::data::{Row, write_shard};

/// Writes the shards and the model config under `dir`; returns `(shards_dir, config.json)`.
pub fn make_data(dir: &Path) -> (PathBuf, PathBuf) {
    write_tiny(&dir.join("shards"), &dir.join("config.json"))
}

/// Writes the tiny shards (with their manifest) to `shards` and the model config to `config`;
/// returns both paths.
pub fn write_tiny(shards: &Path, config: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(shards).unwrap();
    let mut rows = Vec::new();
    for i in 0..20u32 {
        let len = 10 + (i % 7) as usize;
        let tokens: Vec<u32> = (0..len as u32)
            .map(|j| (3 + i + j * (1 + i % 3)) % 64)
            .collect();
        let split = len / 2;
        let segment_ids = (0..len)
            .map(|j| u32::from(i % 2 == 0 && j >= split))
            .collect();
        let loss_mask = (0..len).map(|j| u8::from(j >= 2)).collect();
        rows.push(Row {
            tokens,
            loss_mask,
            segment_ids,
        });
    }
    write_shard(&shards.join("part-0.arrow"), &rows[..12]).unwrap();
    write_shard(&shards.join("part-1.arrow"), &rows[12..]).unwrap();
    std::fs::write(
        shards.join("manifest.json"),
        r#"{"format": "koala", "vocab_size": 64, "seq_len": 16,
            "shards": [{"path": "part-0.arrow", "rows": 12}, {"path": "part-1.arrow", "rows": 8}]}"#,
    )
    .unwrap();
    if let Some(parent) = config.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(
        config,
        r#"{"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5}"#,
    )
    .unwrap();
    (shards.to_path_buf(), config.to_path_buf())
}

/// A training config on the tiny data under `dir` (written there), output to `dir/out`: seed 11,
/// a checkpoint every 2 steps (all kept), 2 epochs at lr 3e-3 in micro-batches of 2. `top` adds
/// top-level TOML lines, `hyper` lines of the `[hyper]` table (it must set `batch_size`).
pub fn tiny_config(dir: &Path, out: &str, top: &str, hyper: &str) -> koala_trainer::TrainConfig {
    let (shards, model) = make_data(dir);
    let text = format!(
        r#"
        model = {model:?}
        shards = {shards:?}
        out_dir = {out:?}
        preset = "tiny-cpu"
        seed = 11
        checkpoint_every = 2
        keep_checkpoints = 0
        {top}
        [hyper]
        micro_batch_size = 2
        epochs = 2
        lr = 3e-3
        {hyper}
        "#,
        out = dir.join(out)
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
}
