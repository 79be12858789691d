#!/usr/bin/env bash
# The main job on the bundled sample data: load the seven sample sources into one table.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/demo}
mkdir -p "$out"
cargo run --release --quiet -- load --input examples/data --out "$out/conversations.parquet"
