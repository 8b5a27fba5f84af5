#!/usr/bin/env bash
# redis-benchmark against the RESP front of a local cluster in memory mode and in durable mode
# (write-ahead log with group commit, fsync on this machine's disk), in the same run. Prints CSV:
#   durability,test,pipeline,requests,rps,p50_ms
# Usage: bench/durable-vs-memory.sh [requests per test (default 20000)] [replicas (default 4)]
# Needs redis-cli and redis-benchmark (Debian: apt-get install redis-tools) and a release build
# (cargo build --release -p shieldwall). Every process it starts is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
REPLICAS=${2:-4}
BIN=target/release/shieldwall
. bench/lib.sh
need_tools redis-cli redis-benchmark "$BIN"
work=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}")
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

echo "durability,test,pipeline,requests,rps,p50_ms"
for mode in memory durable; do
  port=$(free_port)
  "$BIN" local --replicas "$REPLICAS" --durability "$mode" --resp "127.0.0.1:$port" --for 900s \
    --data "$work/$mode" >"$work/$mode.log" 2>&1 &
  pid=$!
  for _ in $(seq 1200); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
  for pipe in 1 16; do
    redis-benchmark -p "$port" -t set,get -d 64 -c 50 -n "$N" -P "$pipe" -r 100000 --csv 2>/dev/null |
      tail -n +2 | tr -d '"' | awk -F, -v m="$mode" -v p="$pipe" -v n="$N" \
        '{ printf "%s,%s,%s,%s,%s,%s\n", m, $1, p, n, $2, $4 }'
  done
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true; pid=""
done
