#!/usr/bin/env bash
# One honest GPU check, for a machine with an NVIDIA GPU (docs/gpu.md):
#   1. nvidia-smi: which GPUs, which driver;
#   2. the CUDA libraries the backend loads at run time (NVRTC, cuBLAS, NCCL): found in a Python
#      environment (.venv, scripts/test.sh's torch venv, python3's) or the system, else installed
#      from PyPI into .venv (best effort: a machine without network uses what it has);
#   3. one release build with `--features cuda` of every test target and the GPU bench;
#   4. the tests marked #[ignore = "needs an NVIDIA GPU"], with --ignored, part by part:
#      every kernel against the CPU reference (f32 and bf16), the trainer's Llama step and loop on
#      the GPU against the CPU, NCCL collectives and data-parallel steps on every visible GPU, the
#      inference engine's CUDA parity, LoRA and sharded steps against their CPU results;
#   5. the bench: the trainer's step in bf16 (tokens/s, MFU), beside PyTorch on the same GPU when
#      torch imports.
# Each part's result, time and key figure go into one summary table at the end; the whole log is
# target/gpu-check.log. Everything runs under one time budget (KOALA_GPU_CHECK_BUDGET, default
# 470 s, under 8 minutes): a part that would overrun is cut by `timeout` and reported as such.
# Exit status 0 when every part passed (LoRA and sharded-step parts may be "not present").
set -uo pipefail
cd "$(dirname "$0")/.."

BUDGET=${KOALA_GPU_CHECK_BUDGET:-470}
START=$(date +%s)
mkdir -p target
LOG=target/gpu-check.log
: >"$LOG"
PART_LOG=$(mktemp)
trap 'rm -f "$PART_LOG"' EXIT
# Every cargo command builds or runs the same three packages with the same features, so the
# release build of step 3 serves every later step (tests and bench share the release artifacts).
PKGS=(-p koala-kernels -p koala-trainer -p koala-model --features cuda)

ROW_PART=() ROW_RESULT=() ROW_TIME=() ROW_FIGURE=()
FAILED=0

say() { echo "$*" | tee -a "$LOG"; }
remaining() { echo $((BUDGET - ($(date +%s) - START))); }

add_row() { # part result seconds figure
  ROW_PART+=("$1") ROW_RESULT+=("$2") ROW_TIME+=("$3") ROW_FIGURE+=("$4")
  case "$2" in pass | "not present") ;; *) FAILED=1 ;; esac
}

# run_part NAME LIMIT CMD...: runs CMD (a bash command line each; all of them, even after one
# fails) under `timeout` (LIMIT seconds, or what is left of the budget); output to the terminal,
# the log and $PART_LOG; sets PART_RC (0, 124 on timeout, else the first failure) and PART_SECS.
run_part() {
  local name=$1 limit=$2
  shift 2
  local left
  left=$(remaining)
  ((limit > left)) && limit=$left
  : >"$PART_LOG"
  PART_SECS=0
  if ((limit < 5)); then
    PART_RC=125
    return
  fi
  say ""
  say "=== $name (limit ${limit}s) ==="
  local t0 rc=0 cmd r deadline
  t0=$(date +%s)
  deadline=$((t0 + limit))
  for cmd in "$@"; do
    left=$((deadline - $(date +%s)))
    if ((left < 1)); then
      rc=124
      break
    fi
    say "\$ $cmd"
    timeout -k 10 "$left" bash -c "$cmd" 2>&1 | tee -a "$LOG" "$PART_LOG"
    r=${PIPESTATUS[0]}
    if ((r != 0 && rc == 0)); then rc=$r; fi
  done
  PART_RC=$rc
  PART_SECS=$(($(date +%s) - t0))
}

# "P passed, F failed" summed over the libtest result lines of the last part.
test_counts() {
  awk '/^test result:/ {
         for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?/) p += $(i-1); if ($(i) ~ /^failed;?/) f += $(i-1) }
       } END { printf "%d %d", p, f }' "$PART_LOG"
}

# Records a test part: pass when it exited 0 and ran tests; `optional` parts with no matching
# test report "not present".
record_tests() { # name optional extra-figure
  local name=$1 optional=$2 extra=${3:-} p f result fig
  read -r p f <<<"$(test_counts)"
  fig="$p passed, $f failed${extra:+; $extra}"
  if ((PART_RC == 125)); then
    result="not run"
    fig="the time budget was spent"
  elif ((PART_RC == 124)); then
    result="TIMEOUT"
  elif ((p + f == 0)); then
    if [ "$optional" = optional ] && ((PART_RC == 0)); then result="not present"; else result="FAIL"; fi
    fig="no test matched${extra:+; $extra}"
  elif ((PART_RC == 0 && f == 0)); then
    result=pass
  else
    result=FAIL
  fi
  add_row "$name" "$result" "$PART_SECS" "$fig"
}

print_table() {
  local i w=0
  for i in "${!ROW_PART[@]}"; do ((${#ROW_PART[i]} > w)) && w=${#ROW_PART[i]}; done
  {
    echo ""
    echo "=== gpu-check summary ($(($(date +%s) - START)) s of a ${BUDGET} s budget; log: $LOG) ==="
    printf "%-${w}s | %-12s | %6s | %s\n" "part" "result" "time" "key figure"
    printf "%-${w}s-+-%-12s-+-%6s-+-%s\n" "$(printf '%*s' "$w" '' | tr ' ' -)" "------------" "------" "----------"
    for i in "${!ROW_PART[@]}"; do
      printf "%-${w}s | %-12s | %5ss | %s\n" "${ROW_PART[i]}" "${ROW_RESULT[i]}" "${ROW_TIME[i]}" "${ROW_FIGURE[i]}"
    done
  } | tee -a "$LOG"
}

# 1. The GPUs.
t0=$(date +%s)
gpus=""
if ! command -v nvidia-smi >/dev/null; then
  why="nvidia-smi not found (no NVIDIA driver on this machine)"
elif ! gpus=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1); then
  why="nvidia-smi: $(echo "$gpus" | head -1)"
  gpus=""
elif [ -z "$gpus" ]; then
  why="nvidia-smi lists no GPU"
fi
if [ -z "$gpus" ]; then
  say "gpu-check: no usable NVIDIA GPU here: $why"
  add_row "GPUs (nvidia-smi)" FAIL 0 "no NVIDIA GPU: $why"
  print_table
  exit 1
fi
say "$gpus"
NGPU=$(echo "$gpus" | grep -c .)
if [ -n "${CUDA_VISIBLE_DEVICES+x}" ]; then
  # What the tests see (device_count) when CUDA_VISIBLE_DEVICES narrows the list.
  NGPU=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .)
fi
CUDA_VERSION=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -1)
add_row "GPUs (nvidia-smi)" pass $(($(date +%s) - t0)) \
  "$NGPU x $(echo "$gpus" | head -1 | cut -d, -f1 | xargs), driver $(echo "$gpus" | head -1 | cut -d, -f3 | xargs) (CUDA ${CUDA_VERSION:-?})"

# 2. The CUDA libraries: NVRTC (kernels), cuBLAS (matmuls), NCCL (collectives).
t0=$(date +%s)
LIBS=(cuda_nvrtc:libnvrtc.so.12:nvidia-cuda-nvrtc-cu12 cublas:libcublas.so.12:nvidia-cublas-cu12
  nccl:libnccl.so.2:nvidia-nccl-cu12)
# Python environments to look in: the project's .venv, the torch venv scripts/test.sh keeps
# (PyPI's torch brings these libraries), python3.
pythons=()
[ -x .venv/bin/python ] && pythons+=(.venv/bin/python)
tv=${KOALA_TORCH_PYTHON:-${KOALA_TORCH_VENV:-$HOME/.cache/koala/torch-venv}/bin/python}
[ -x "$tv" ] && pythons+=("$tv")
command -v python3 >/dev/null && pythons+=(python3)
find_libs() { # sets FOUND (dir per lib, or "system") and MISSING (wheel names)
  FOUND=() MISSING=()
  local entry sub lib wheel py site dir
  for entry in "${LIBS[@]}"; do
    IFS=: read -r sub lib wheel <<<"$entry"
    dir=""
    for py in "${pythons[@]}"; do
      site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null) || continue
      # The wheel itself, not only the path: a cu13 wheel (e.g. torch's NCCL) uses the same one.
      if [ -e "$site/nvidia/$sub/lib/$lib" ] && compgen -G "$site/${wheel//-/_}-*.dist-info" >/dev/null; then
        dir="$site/nvidia/$sub/lib" && break
      fi
    done
    # (grep reads all of ldconfig's output: with -q, pipefail could see ldconfig's SIGPIPE)
    if [ -z "$dir" ] && ldconfig -p 2>/dev/null | grep -F "$lib" >/dev/null; then dir=system; fi
    FOUND+=("$dir")
    [ -z "$dir" ] && MISSING+=("$wheel")
  done
}
find_libs
if ((${#MISSING[@]})) && [ -z "${KOALA_GPU_CHECK_NO_INSTALL:-}" ] && command -v python3 >/dev/null; then
  # NVRTC's PTX must not be newer than the driver: pin it to the driver's CUDA version.
  specs=()
  for w in "${MISSING[@]}"; do
    if [ "$w" = nvidia-cuda-nvrtc-cu12 ] && [[ ${CUDA_VERSION:-} == 12.* ]]; then
      specs+=("$w<12.$((${CUDA_VERSION#12.} + 1))")
    else
      specs+=("$w")
    fi
  done
  say "gpu-check: installing ${specs[*]} into .venv"
  { [ -x .venv/bin/python ] || python3 -m venv .venv; } >>"$LOG" 2>&1
  timeout 150 .venv/bin/pip install -q --disable-pip-version-check "${specs[@]}" 2>&1 | tail -3 | tee -a "$LOG"
  pythons=(.venv/bin/python "${pythons[@]}")
  find_libs
fi
libfig=""
for i in "${!LIBS[@]}"; do
  IFS=: read -r sub lib _ <<<"${LIBS[i]}"
  dir=${FOUND[i]}
  if [ -n "$dir" ] && [ "$dir" != system ]; then
    export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    [ "$sub" = cuda_nvrtc ] && export KOALA_NVRTC_DIR="$dir"
  fi
  libfig+="${libfig:+, }${lib%%.so*}: ${dir:-MISSING}"
done
say "libraries: $libfig"
if ((${#MISSING[@]})); then lib_result=FAIL; else lib_result=pass; fi
add_row "CUDA libraries" "$lib_result" $(($(date +%s) - t0)) "$(echo "$libfig" | sed "s|$PWD/||g; s|/lib/python[0-9.]*/site-packages||g")"
# The interpreter for the PyTorch side of the bench: the first one that imports torch.
for py in "${pythons[@]}"; do
  if "$py" -c 'import torch' >/dev/null 2>&1; then
    export KOALA_PYTHON=$py
    break
  fi
done
say "torch: ${KOALA_PYTHON:-not importable (the bench runs without the PyTorch comparison)}"

# 3. One release build of every test target and the bench.
run_part "build (release, --features cuda)" 330 \
  "cargo test --release ${PKGS[*]} --tests --no-run" \
  "cargo bench ${PKGS[*]} --bench gpu_step --no-run"
if ((PART_RC == 0)); then
  add_row "build (release, --features cuda)" pass "$PART_SECS" "koala-kernels, koala-trainer, koala-model"
else
  add_row "build (release, --features cuda)" "$([ $PART_RC = 124 ] && echo TIMEOUT || echo FAIL)" "$PART_SECS" "see $LOG"
  print_table
  exit 1
fi

T="cargo test --release --no-fail-fast ${PKGS[*]}"

# 4. The GPU tests.
run_part "kernels vs CPU (f32, bf16)" 90 "$T --test cuda_ops -- --ignored"
record_tests "kernels vs CPU (f32, bf16)" required

run_part "trainer Llama step + loop on cuda:0 vs CPU" 120 \
  "$T --test cuda_step --test dp_train -- --ignored --nocapture --skip gpu_multi_"
bf16=$(grep -m1 'loss: cpu .* cuda-bf16' "$PART_LOG")
record_tests "trainer Llama step + loop on cuda:0 vs CPU" required "${bf16:+$bf16}"

nccl_cmds=("$T --test comm_nccl --test data_parallel -- --ignored")
if ((NGPU >= 2)); then
  nccl_cmds+=("$T --test dp_train -- --ignored gpu_multi_")
  multi="training loop on cuda:0..$NGPU"
else
  multi="1 GPU: NCCL groups of one rank; the multi-GPU training loop (gpu_multi_) needs 2"
fi
run_part "NCCL collectives + DP steps, $NGPU GPU(s)" 90 "${nccl_cmds[@]}"
record_tests "NCCL collectives + DP steps, $NGPU GPU(s)" required "$multi"

run_part "engine CUDA parity" 60 "$T --test engine_parity -- --ignored"
record_tests "engine CUDA parity" required

# LoRA: trainer/tests/cuda_lora.rs (`gpu_lora_step_matches_the_cpu_step`: loss and adapter
# gradients, dropout on, f32 and bf16; the op itself is `lora` in the kernels part above).
# Sharded (ZeRO-3) steps with checkpointing: `gpu_sharded_*` tests (trainer/tests/data_parallel.rs).
run_part "LoRA vs CPU" 60 "$T --tests -- --ignored gpu_lora_"
record_tests "LoRA vs CPU" required
run_part "sharded steps vs CPU" 60 "$T --tests -- --ignored gpu_sharded_"
record_tests "sharded steps vs CPU" optional

# 5. The bench.
run_part "bench: trainer step bf16 (tokens/s, MFU)" 150 "cargo bench ${PKGS[*]} --bench gpu_step"
fig=$(grep '^gpu_step: ' "$PART_LOG" | tail -1 | sed 's/^gpu_step: //')
if ((PART_RC == 125)); then
  add_row "bench: trainer step bf16 (tokens/s, MFU)" "not run" 0 "the time budget was spent"
elif ((PART_RC == 0)) && [[ $fig == *tokens/s* ]]; then
  add_row "bench: trainer step bf16 (tokens/s, MFU)" pass "$PART_SECS" "$fig"
else
  skip=$(grep -m1 '^skipped' "$PART_LOG")
  add_row "bench: trainer step bf16 (tokens/s, MFU)" "$([ $PART_RC = 124 ] && echo TIMEOUT || echo FAIL)" "$PART_SECS" "${fig:-${skip:-see $LOG}}"
fi

print_table
exit $FAILED
