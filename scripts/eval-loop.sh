#!/usr/bin/env bash
# The whole evaluation loop on the bundled sample data (examples/data), on the CPU, in minutes:
#   curate two mixtures (the Koala-All and Koala-Distill presets) → tokenize each → train a tiny
#   LLaMA from scratch on each → serve both from one `koala serve-model` → `koala eval generate`
#   on the Koala test set → a STAND-IN judge (examples/stand_in_judge.rs: word counting, not a
#   real judge) → `koala eval judge` → `koala eval report`.
# Outputs go to out/eval-loop (or the folder given as the argument). See docs/evaluation.md,
# "The whole loop".
#
# Knobs (environment):
#   KOALA_LOOP_STEPS       training steps per model, about (default 100): each mixture gets the
#                          whole epochs that come closest (the sample mixtures are tiny: 35 and 9
#                          packed rows, 5 and 2 steps an epoch at the tiny-cpu preset's batch of 8)
#   KOALA_LOOP_LIMIT       the first N prompts of the set (default: all that curation keeps)
#   KOALA_LOOP_MAX_TOKENS  new tokens per answer (default 32)
#   KOALA_LOOP_SET         koala | self-instruct | FILE (default koala)
#   KOALA_LOOP_JUDGE       openai:BASE_URL#MODEL of a real judge (default: start the stand-in)
#   KOALA_BIN              a koala binary to use (default: build the debug one with cargo)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/eval-loop}
steps=${KOALA_LOOP_STEPS:-100}
limit=${KOALA_LOOP_LIMIT:-}
max_tokens=${KOALA_LOOP_MAX_TOKENS:-32}
set_name=${KOALA_LOOP_SET:-koala}
judge_spec=${KOALA_LOOP_JUDGE:-}
mkdir -p "$out"

# A debug build, shared with the tests (the GEMM crates and the model engine are optimised even
# in debug; see Cargo.toml).
if [ -n "${KOALA_BIN:-}" ]; then
  koala=$KOALA_BIN
else
  cargo build --quiet --bin koala
  koala="${CARGO_TARGET_DIR:-target}/debug/koala"
fi
if [ -z "$judge_spec" ]; then
  cargo build --quiet --example stand_in_judge
  judge_bin="${CARGO_TARGET_DIR:-target}/debug/examples/stand_in_judge"
fi
# Timings below leave the build out.
start=$(date +%s)
stamp() { echo "   ($(($(date +%s) - start)) s so far)"; }

pids=()
cleanup() {
  for p in "${pids[@]}"; do
    kill "$p" 2> /dev/null || true
  done
  for p in "${pids[@]}"; do
    wait "$p" 2> /dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts a server that prints "…listening on http://ADDR" on stdout once it listens; sets $addr
# and appends its pid to $pids. Its stdout goes to $2.out, its log (stderr) to $2.log.
start_server() {
  local name=$1 base=$2
  shift 2
  # Created here, before the server starts: the redirect below happens in the background job,
  # and under load the poll could otherwise read the file before it exists (and fail the run).
  : > "$base.out"
  "$@" > "$base.out" 2> "$base.log" &
  local pid=$!
  pids+=("$pid")
  local line="" i
  for ((i = 0; i < 600; i++)); do
    line=$(sed -n 's/.*listening on http:\/\///p' "$base.out" | head -n 1)
    [ -n "$line" ] && break
    if ! kill -0 "$pid" 2> /dev/null; then
      break
    fi
    sleep 0.1
  done
  if [ -z "$line" ]; then
    echo "$name did not start; see $base.log" >&2
    exit 1
  fi
  addr=$line
}

# One mixture: curate with the preset, tokenize (its own byte-level BPE), train a tiny model.
train_mixture() {
  local mix=$1 d="$out/$1"
  mkdir -p "$d"
  echo "== $mix: curate (pipeline/presets/$mix.toml) → tokenize → train about $steps steps"
  "$koala" curate --config "pipeline/presets/$mix.toml" --input examples/data --out "$d/curate" \
    > "$d/curate.log" 2>&1
  "$koala" tokenize --input "$d/curate" --out "$d/shards" --format koala --seq-len 128 --pack \
    --vocab-size 1024 > "$d/tokenize.log" 2>&1
  local vocab rows epochs
  vocab=$(sed -n 's/^ *"vocab_size": *\([0-9]*\).*/\1/p' "$d/shards/manifest.json" | head -n 1)
  # Equal compute for both mixtures: epochs × ceil(rows / 8) ≈ $steps.
  rows=$(sed -n '/"train": {/,/"tokens"/ s/^ *"rows": *\([0-9]*\).*/\1/p' "$d/shards/manifest.json" |
    tail -n 1)
  epochs=$(((steps + (rows + 7) / 8 / 2) / ((rows + 7) / 8)))
  [ "$epochs" -ge 1 ] || epochs=1
  cat > "$d/tiny-config.json" <<JSON
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
  cat > "$d/train.toml" <<TOML
model = "$d/tiny-config.json"
shards = "$d/shards"
out_dir = "$d/run"
preset = "tiny-cpu"
seed = 0
checkpoint_every = 0

[hyper]
epochs = $epochs
TOML
  "$koala" train --config "$d/train.toml" > "$d/train.log" 2>&1
  local convs steps_done loss
  convs=$(sed -n 's/^ *"source_rows": *\([0-9]*\).*/\1/p' "$d/shards/manifest.json" | head -n 1)
  steps_done=$(sed -n 's/^  "steps": *\([0-9]*\).*/\1/p' "$d/run/report.json" | head -n 1)
  loss=$(sed -n 's/^  "final_loss": *\([0-9.]*\).*/\1/p' "$d/run/report.json" | head -n 1)
  echo "   $convs conversations kept, $rows packed training rows; $epochs epochs = $steps_done steps,\
 final loss $loss; model: $d/run/final"
  stamp
}

# A rerun starts the models afresh (training resumes from a checkpoint otherwise), and asks
# for every answer and judgement again.
rm -rf "$out/koala-all" "$out/koala-distill" "$out/responses.jsonl" "$out/ratings.jsonl" \
  "$out/judge-cache.jsonl" "$out/report"
train_mixture koala-all
train_mixture koala-distill

echo "== serve-model: koala-all and koala-distill on one loopback server (log: $out/serve.log)"
start_server serve-model "$out/serve" "$koala" serve-model --listen 127.0.0.1:0 --device cpu \
  --model "koala-all=$out/koala-all/run/final" --model "koala-distill=$out/koala-distill/run/final"
serve_addr=$addr

limit_flags=()
[ -n "$limit" ] && limit_flags=(--limit "$limit")
echo "== eval generate: --set $set_name ${limit:+(first $limit prompts) }via http://$serve_addr, $max_tokens new tokens an answer"
"$koala" eval generate --set "$set_name" "${limit_flags[@]}" --out "$out/responses.jsonl" \
  --max-tokens "$max_tokens" --concurrency 8 \
  --system "koala-all=openai:http://$serve_addr/v1#koala-all" \
  --system "koala-distill=openai:http://$serve_addr/v1#koala-distill"
stamp

if [ -z "$judge_spec" ]; then
  echo "== stand-in judge (word counting, NOT a real judge; log: $out/judge.log)"
  start_server stand-in-judge "$out/judge" "$judge_bin" --listen 127.0.0.1:0
  judge_spec="openai:http://$addr/v1#stand-in"
fi

echo "== eval judge: every pair, both orders, by $judge_spec"
"$koala" eval judge --responses "$out/responses.jsonl" --judge "$judge_spec" --cache "$out/judge-cache.jsonl" \
  --out "$out/ratings.jsonl"
stamp

echo "== eval report"
"$koala" eval report --ratings "$out/ratings.jsonl" --out "$out/report"

echo "== done in $(($(date +%s) - start)) s (after the build): see $out/report/report.md and $out/report/winrates.png"
echo "   (the ratings come from a stand-in judge that counts words: they exercise the loop and"
echo "    measure nothing; point --judge at a real model for a real evaluation)"
