#!/usr/bin/env bash
# Profile the replicas of a `shieldwall bench` run: starts the bench with BENCH_ARGS, waits
# DELAY seconds (past warm-up), records every replica process (`<binary> node ...`) with
# `perf record --call-graph dwarf` for SECONDS seconds, and the bench process itself (the
# clients), then prints each process's top functions by self and by inclusive samples
# (bench/perf_top.py).
# Usage: bench/profile.sh BINARY DELAY SECONDS -- BENCH_ARGS...
# Example:
#   cp target/release/shieldwall /tmp/sw
#   bench/profile.sh /tmp/sw 4 6 -- --mode crash --replicas 3 --auth mac --clients 16 \
#     --depth 32 --duration 10s --warmup 2s
# Give the bench a duration longer than DELAY + SECONDS. Results stay in $BENCH_DIR (default
# /var/tmp): perf.<pid>.data and the reports. Needs perf and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 4 ] && [ "$4" = "--" ] || { sed -n 2,13p "$0" >&2; exit 2; }
BIN=$1 DELAY=$2 SECONDS_=$3
shift 4
. bench/lib.sh
need_tools "$BIN" perf python3
work=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}" profile.XXXXXX)
"$BIN" bench --out "$work/bench" "$@" >"$work/bench.log" 2>&1 &
bench_pid=$!
sleep "$DELAY"
pids=$(pgrep -f "^$BIN node" || true)
[ -n "$pids" ] || { echo "no replica processes of $BIN found" >&2; kill "$bench_pid"; exit 1; }
pids="$pids $bench_pid"
perf_pids=()
for pid in $pids; do
  perf record -q -F 599 --call-graph dwarf,16384 -o "$work/perf.$pid.data" -p "$pid" \
    -- sleep "$SECONDS_" >/dev/null 2>&1 &
  perf_pids+=($!)
done
wait "${perf_pids[@]}"
wait "$bench_pid" || { echo "bench failed: $work/bench.log" >&2; exit 1; }
tail -1 "$work/bench/results.csv"
for pid in $pids; do
  perf script -i "$work/perf.$pid.data" 2>/dev/null \
    | python3 bench/perf_top.py >"$work/report.$pid.txt"
  what="replica process"
  [ "$pid" = "$bench_pid" ] && what="bench process (load generator)"
  echo "== $what $pid ($work/report.$pid.txt)"
  head -45 "$work/report.$pid.txt"
done
echo "results: $work" >&2
