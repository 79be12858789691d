#!/usr/bin/env bash
# The main job on the bundled sample data (examples/data), end to end on the CPU:
#   curate (Koala-All preset) → tokenize (trains a byte-level BPE, packs shards)
#   → train a tiny LLaMA from scratch (tiny-cpu preset) → generate from it.
# Outputs go to out/demo (or the folder given as the argument).
# Set KOALA_DEMO_STEPS to change the number of training steps (default 20).
#
#   ./scripts/demo.sh --daemon [OUT]   trains through the gRPC trainer daemon instead: starts
#   `koala serve` on a free loopback port, `koala submit job.toml --watch` follows the job to
#   SUCCEEDED, then generates from the job's final model and stops the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
daemon=0
if [ "${1:-}" = "--daemon" ]; then
  daemon=1
  shift
fi
out=${1:-out/demo}
steps=${KOALA_DEMO_STEPS:-20}
mkdir -p "$out"

# A debug build is enough for the sample (and shares its build with the tests); the hot GEMM
# crates are optimised even in debug (see Cargo.toml).
cargo build --quiet --bin koala
koala="${CARGO_TARGET_DIR:-target}/debug/koala"

echo "== curate: examples/data → $out/curate"
"$koala" curate --config pipeline/presets/koala-all.toml --input examples/data --out "$out/curate"

echo "== tokenize: Koala format, packed rows of 128 tokens"
"$koala" tokenize --input "$out/curate" --out "$out/shards" --format koala --seq-len 128 --pack \
  --vocab-size 1024

vocab=$(sed -n 's/^ *"vocab_size": *\([0-9]*\).*/\1/p' "$out/shards/manifest.json" | head -n 1)
cat > "$out/tiny-config.json" <<JSON
{
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "vocab_size": $vocab,
  "hidden_size": 64,
  "intermediate_size": 176,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "rope_theta": 10000.0,
  "rms_norm_eps": 1e-5,
  "max_position_embeddings": 128,
  "tie_word_embeddings": false
}
JSON
cat > "$out/train.toml" <<TOML
model = "$out/tiny-config.json"
shards = "$out/shards"
out_dir = "$out/run"
preset = "tiny-cpu"
seed = 0
checkpoint_every = 10
max_steps = $steps
TOML

if [ "$daemon" = 1 ]; then
  # The daemon resolves every job path inside its data_root: here, the demo's output folder.
  root=$(cd "$out" && pwd)
  rm -rf "$root/daemon-state" "$root/run"
  mkdir -p "$root/daemon-state"
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$root/daemon-token"
  cat > "$root/daemon.toml" <<TOML
listen = "127.0.0.1:0"
data_root = "$root"
state_dir = "$root/daemon-state"
token_file = "$root/daemon-token"
TOML
  cat > "$root/job.toml" <<TOML
name = "demo: tiny LLaMA on the curated sample"
init_config = "tiny-config.json"
shards_dir = "shards"
out_dir = "run"
preset = "tiny-cpu"
seed = 0
checkpoint_every = 10
max_steps = $steps
TOML
  echo "== serve: koala serve --config $out/daemon.toml (log: $out/daemon.log)"
  coproc DAEMON { exec "$koala" serve --config "$root/daemon.toml" 2> "$root/daemon.log"; }
  daemon_pid=$DAEMON_PID
  trap 'kill "$daemon_pid" 2> /dev/null || true' EXIT
  if ! read -r -t 60 line <&"${DAEMON[0]}"; then
    echo "the daemon did not start; see $out/daemon.log" >&2
    exit 1
  fi
  addr=${line#listening on }
  echo "== submit --watch: tiny LLaMA (vocab $vocab) from scratch, at most $steps steps (fewer if the epochs end first), via $addr"
  watch_flags=(--watch)
  [ -t 1 ] || watch_flags+=(--plain)
  "$koala" submit --addr "$addr" --token-file "$root/daemon-token" "${watch_flags[@]}" \
    "$root/job.toml"
  "$koala" jobs --addr "$addr" --token-file "$root/daemon-token"
else
  echo "== train: tiny LLaMA (vocab $vocab) from scratch, at most $steps steps (fewer if the epochs end first)"
  "$koala" train --config "$out/train.toml"
fi

echo "== generate"
"$koala" generate --model "$out/run/final" --tokenizer "$out/shards/tokenizer.json" \
  --prompt "BEGINNING OF CONVERSATION: USER: Give me three tips for staying healthy. GPT:" \
  --stop "</s>" --max-new-tokens 40 --seed 0

echo "== done: see $out/curate/report.md, $out/shards/report.json, $out/run/report.json"
