#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, for a machine that has one (see docs/gpu.md):
#   * every test marked #[ignore = "needs an NVIDIA GPU"] (e.g. the engine's CUDA greedy parity);
#   * the CUDA op tests and the NCCL tests, which skip at run time without a GPU;
#   * the GPU training-step bench.
# Put what it prints into docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || {
  echo "gpu-check: no NVIDIA GPU here" >&2
  exit 1
}
mkdir -p target
{
  cargo test --workspace -- --ignored
  cargo test -p koala-kernels --test cuda_ops --test cuda_select --test comm_nccl -- --nocapture
  cargo bench --bench gpu_step
} 2>&1 | tee target/gpu-check.log
