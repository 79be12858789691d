#!/usr/bin/env bash
# Trains the small model of the watermark test (model/tests/fixtures/wm_small): a 0.5M-parameter
# LLaMA trained for 300 steps on a synthetic Koala-format corpus (koala synth --scale small,
# curated with the Koala-All preset), with a byte-level BPE tokenizer of 1,024 tokens.
# Its samples have the entropy of a small trained model, not of random weights.
#
#   ./scripts/gen_watermark_model.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-model/tests/fixtures/wm_small}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --quiet --bin koala
koala="${CARGO_TARGET_DIR:-target}/debug/koala"
"$koala" synth --scale small --out "$work/synth"
"$koala" curate --config pipeline/presets/koala-all.toml --input "$work/synth" --out "$work/curate"
"$koala" tokenize --input "$work/curate" --out "$work/shards" --format koala --seq-len 256 --pack \
  --vocab-size 1024
cat > "$work/config.json" <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 1024,
 "hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 4,
 "num_key_value_heads": 2, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
 "max_position_embeddings": 512, "tie_word_embeddings": false}
JSON
cat > "$work/train.toml" <<TOML
model = "$work/config.json"
shards = "$work/shards"
out_dir = "$work/run"
preset = "tiny-cpu"
seed = 0
checkpoint_every = 1000
max_steps = 300
[hyper]
epochs = 1
max_len = 256
TOML
"$koala" train --config "$work/train.toml"
mkdir -p "$out"
cp "$work/run/final/config.json" "$work/run/final/model.safetensors" "$out/"
cp "$work/shards/tokenizer.json" "$out/"
tail -n 1 "$work/run/metrics.jsonl" > "$out/final_metrics.json"
echo "wrote $out"
