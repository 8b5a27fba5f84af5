#!/usr/bin/env bash
# redis-benchmark against the RESP front of a local shieldwall cluster and against an
# unreplicated redis-server on the same machine, in the same run. Prints CSV:
#   target,test,pipeline,requests,rps,p50_ms
# Usage: bench/resp-vs-redis.sh [requests per test (default 50000)] [replicas (default 4)]
# Needs redis-server and redis-benchmark (Debian: apt-get install redis-server redis-tools) and a
# release build (cargo build --release -p shieldwall). Every process it starts is stopped by PID.
# PROTOCOL="request_macs=true pipeline_window=2" passes protocol settings to the cluster (with
# request_macs=true the RESP front authenticates requests with MACs).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-50000}
REPLICAS=${2:-4}
BIN=target/release/shieldwall
. bench/lib.sh
need_tools redis-server redis-benchmark "$BIN"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

run() { # target port pipeline
  local target=$1 port=$2 pipe=$3
  redis-benchmark -p "$port" -t set,get -d 64 -c 50 -n "$N" -P "$pipe" --csv 2>/dev/null |
    tail -n +2 | tr -d '"' | awk -F, -v t="$target" -v p="$pipe" -v n="$N" \
      '{ printf "%s,%s,%s,%s,%s,%s\n", t, $1, p, n, $2, $4 }'
}

echo "target,test,pipeline,requests,rps,p50_ms"
rport=$(free_port)
redis-server --port "$rport" --save "" --appendonly no --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.05; done
for pipe in 1 16; do run redis-server "$rport" "$pipe"; done
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true; pids=()

sport=$(free_port)
protocol_args=()
for setting in ${PROTOCOL:-}; do protocol_args+=(--protocol "$setting"); done
"$BIN" local --replicas "$REPLICAS" --resp "127.0.0.1:$sport" --for 600s --dir "$work/cluster" \
  "${protocol_args[@]}" >"$work/local.log" 2>&1 &
pids+=($!)
for _ in $(seq 600); do redis-cli -p "$sport" ping >/dev/null 2>&1 && break; sleep 0.05; done
for pipe in 1 16; do run "shieldwall-$REPLICAS" "$sport" "$pipe"; done
