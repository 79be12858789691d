#!/usr/bin/env bash
# Runs every notebook in examples/notebooks with evcxr, cell by cell, and fails on the first cell
# that fails: a compile error, a `?` error, a panic (evcxr exits 0 on all three; the runner reads
# them off stderr), or a `display` cell without rich output. It also fails when a notebook's saved
# outputs differ from what its cells print now.
#
#   ./scripts/run-notebooks.sh                 check every notebook
#   ./scripts/run-notebooks.sh --write [NB…]   run and save the outputs into the notebooks
#
# The runner (scripts/notebook-runner, which links the evcxr crate) is installed once per machine
# with `cargo install --locked` into $KOALA_CACHE (default ~/.cache/koala). evcxr's build folder is
# $EVCXR_TMPDIR (default /var/tmp/koala-evcxr: evcxr cannot load its compiled cells from a folder
# under /root, see docs/notebooks.md), kept between runs so that a warm run compiles only the cells.
# The workspace's Cargo.lock is copied there before each notebook, so `:dep` builds what the
# workspace locks.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

cache=${KOALA_CACHE:-$HOME/.cache/koala}
export EVCXR_TMPDIR=${EVCXR_TMPDIR:-/var/tmp/koala-evcxr}
mkdir -p "$cache" "$EVCXR_TMPDIR"

echo "== notebook runner (cargo install --locked, cached in $cache)"
CARGO_TARGET_DIR="$cache/notebook-runner-target" cargo install --quiet --locked \
  --path scripts/notebook-runner --root "$cache/notebook-runner"
runner="$cache/notebook-runner/bin/koala-notebook-runner"

# Notebook 03 starts the trainer daemon from this workspace's koala binary.
cargo build --quiet --bin koala
export KOALA_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/koala"

# evcxr's build folder must stay outside /root (it cannot load cells from there), but a CI machine
# may keep only ~/.cache between runs. So the compiled dependencies are also kept in
# $cache/evcxr-target: restored when EVCXR_TMPDIR has none, saved again when a run built new ones.
store="$cache/evcxr-target"
if [ ! -d "$EVCXR_TMPDIR/target" ] && [ -d "$store/target" ]; then
  echo "== restoring evcxr's compiled dependencies from $store"
  cp -a "$store/target" "$EVCXR_TMPDIR/"
fi
save_build() {
  if [ -d "$EVCXR_TMPDIR/target" ] && { [ ! -e "$store/stamp" ] ||
    [ -n "$(find "$EVCXR_TMPDIR/target" -name '*.rlib' -newer "$store/stamp" -print -quit)" ]; }; then
    echo "== saving evcxr's compiled dependencies to $store"
    rm -rf "$store" && mkdir -p "$store"
    touch "$store/stamp"
    # The cells' own libraries and incremental state are rebuilt every run anyway.
    cp -a "$EVCXR_TMPDIR/target" "$store/"
    find "$store/target" -name 'libcode_*' -delete
    find "$store/target" -maxdepth 4 -type d -name incremental -prune -exec rm -rf {} +
  fi
}
trap 'save_build || echo "warning: could not save evcxr build folder to $store" >&2' EXIT

args=(--lock "$root/Cargo.lock")
if [ "${1:-}" = "--write" ]; then
  args+=(--write)
  shift
fi
if [ $# -eq 0 ]; then
  set -- examples/notebooks/*.ipynb
fi
"$runner" "${args[@]}" "$@"
