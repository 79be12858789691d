//! The tiny training fixture shared by the training-loop tests: 20 packed rows of a 64-token
//! vocabulary in two shards, and a 2-layer GQA model config to initialise from.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use koala_trainer::data::{Row, write_shard};

/// Writes the shards and the model config under `dir`; returns `(shards_dir, config.json)`.
pub fn make_data(dir: &Path) -> (PathBuf, PathBuf) {
    let shards = dir.join("shards");
    std::fs::create_dir_all(&shards).unwrap();
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
    let model = dir.join("config.json");
    std::fs::write(
        &model,
        r#"{"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5}"#,
    )
    .unwrap();
    (shards, model)
}
