#!/usr/bin/env bash
# Runs the daemon load bench N times (default 8), alternating the default config (training_nice
# 10) and training_idle = true, and prints one summary line per run; the bench's full JSON lines
# go to the file given as the second argument (default: daemon-load-series.jsonl).
#
#   ./scripts/daemon-load-series.sh 8 /tmp/series.jsonl
#
# Runs one after the other in one shell loop, so that the two configs see the same machine state.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-8}
out=${2:-daemon-load-series.jsonl}
cargo bench -p koala-trainer --bench daemon_load --no-run >/dev/null 2>&1
for _ in $(seq 1 "$n"); do
  for mode in nice10 idle; do
    if [ "$mode" = idle ]; then export KOALA_BENCH_IDLE=1; else unset KOALA_BENCH_IDLE; fi
    line=$(cargo bench -q -p koala-trainer --bench daemon_load 2>/dev/null | tail -1)
    echo "$mode $line" >>"$out"
    python3 -c '
import json, sys
mode, r = sys.argv[1], json.loads(sys.argv[2])
t, h = r["training"], r.get("h2load")
s = "%-7s p99 %.1f p50 %.1f first-wave p99 %.1f cold p99 %.1f idle p99 %.1f slowdown %.1fx" % (
    mode, t["p99_ms"], t["p50_ms"], r["first_wave"]["p99_ms"], r["cold_wave"]["p99_ms"],
    r["idle"]["p99_ms"], r["step_slowdown"])
if h:
    s += " | h2load p99 %.1f p50 %.1f %.0f calls/s slowdown %.1fx" % (
        h["latency"]["p99_ms"], h["latency"]["p50_ms"], h["calls_per_s"], h["step_slowdown"])
print(s)' "$mode" "$line"
  done
done
