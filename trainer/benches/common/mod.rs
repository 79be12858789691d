//! What the CPU step benches share: command-line numbers, the stories15M-like model, its rows.
use koala_trainer::LlamaConfig;
use koala_trainer::data::Row;

/// The number after `name` on the command line, or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A stories15M-like LLaMA: dim 288, 6 layers, 6 heads, ffn 768, vocab 32000.
pub fn stories15m() -> LlamaConfig {
    LlamaConfig::from_json_str(
        r#"{"vocab_size": 32000, "hidden_size": 288, "intermediate_size": 768, "num_hidden_layers": 6,
            "num_attention_heads": 6, "num_key_value_heads": 6, "rms_norm_eps": 1e-5}"#,
    )
    .expect("config")
}

/// `batch` rows of `t` fixed pseudo-random tokens, every position trained.
pub fn rows(batch: usize, t: usize) -> Vec<Row> {
    (0..batch)
        .map(|r| Row {
            tokens: (0..t as u32)
                .map(|j| (j * 7919 + r as u32 * 104729) % 32000)
                .collect(),
            loss_mask: vec![1; t],
            segment_ids: vec![0; t],
        })
        .collect()
}
