#!/usr/bin/env bash
# Recovery time of a durable 4-replica cluster against state size. For each size (MB of KV data):
# start four `shieldwall node` processes (durable) and a RESP gateway, load SIZE MB as 4000-byte
# values through `redis-cli --pipe`, then
#   1. kill -9 every replica, restart them, and time until the last written key reads back;
#   2. kill -9 replica 3, delete its log and snapshots, restart it, and time until it has executed
#      as far as the others (state transfer of the snapshot plus the batches after it).
# Prints CSV: size_mb,keys,timed_out_writes,load_s,load_mb_per_s,restart_all_s,rejoin_wiped_s,
# replica_rss_mb
# Usage: bench/recovery.sh [SIZE_MB ...]   (default: 10 100)
# PROTOCOL="checkpoint_interval=512 watermark_window=2048" sets protocol settings (keygen
# --protocol): every checkpoint serializes, hashes and saves the whole state, so large states
# want them rarer.
# Needs redis-cli (apt-get install redis-tools), python3 and a release build
# (cargo build --release -p shieldwall). Every process it starts is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/target/release/shieldwall
. bench/lib.sh
need_tools redis-cli python3 "$BIN"
SIZES=("$@")
[ $# -eq 0 ] && SIZES=(10 100)
now() { date +%s.%N; }
work=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}")
declare -A node_pid
gw_pid=""
cleanup() {
  for p in "${node_pid[@]}" $gw_pid; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

status_json() { "$BIN" status --config "$dir/cluster.toml" --json 2>/dev/null || true; }
executed() { # replica id -> last executed, or -1
  status_json | python3 -c "
import json,sys
for line in sys.stdin:
    v=json.loads(line)
    if v.get('reachable') and v['status']['id']==$1: print(v['status']['last_executed']); break
else: print(-1)"
}
max_executed() {
  status_json | python3 -c "
import json,sys
print(max([json.loads(l)['status']['last_executed'] for l in sys.stdin if json.loads(l).get('reachable')] or [-1]))"
}
start_node() {
  "$BIN" node --config "$dir/cluster.toml" --id "$1" --data "$dir/data-$1" >>"$dir/node-$1.log" 2>&1 &
  node_pid[$1]=$!
}
wait_for() { # timeout_s command...
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out: $*" >&2; exit 1; }
    sleep 0.1
  done
}

echo "size_mb,keys,timed_out_writes,load_s,load_mb_per_s,restart_all_s,rejoin_wiped_s,replica_rss_mb"
for size in "${SIZES[@]}"; do
  dir=$work/c$size
  ports=(); http=()
  for i in 0 1 2 3; do ports+=("127.0.0.1:$(free_port)"); http+=("127.0.0.1:$(free_port)"); done
  protocol=()
  for p in ${PROTOCOL:-}; do protocol+=(--protocol "$p"); done
  "$BIN" keygen --replicas 4 --fault-model byzantine --durability durable --out "$dir" "${protocol[@]}" \
    --addresses "$(IFS=,; echo "${ports[*]}")" --http-addresses "$(IFS=,; echo "${http[*]}")" >/dev/null
  for i in 0 1 2 3; do start_node "$i"; done
  gport=$(free_port)
  "$BIN" kv-gateway --config "$dir/cluster.toml" --listen "127.0.0.1:$gport" >"$dir/gw.log" 2>&1 &
  gw_pid=$!
  ping() { redis-cli -p "$gport" ping >/dev/null 2>&1; }
  wait_for 60 ping
  keys=$(( size * 1000000 / 4000 ))
  t0=$(now)
  python3 - "$keys" <<'PY' | redis-cli -p "$gport" --pipe >"$dir/pipe.log"
import sys
keys = int(sys.argv[1])
value = b"v" * 4000
out = sys.stdout.buffer
for i in range(keys):
    k = b"key:%d" % i
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$4000\r\n%s\r\n" % (len(k), k, value))
PY
  t1=$(now)
  # A write can time out at the gateway ("may or may not have executed") while the replicas
  # change view under the load; the last key is written again until acknowledged, and the
  # number of such writes is reported.
  failed=$(grep -c '^ERR\|^-ERR' "$dir/pipe.log" || true)
  last="key:$((keys - 1))"
  value=$(head -c 4000 /dev/zero | tr '\0' v)
  rewrite() { [ "$(redis-cli -p "$gport" set "$last" "$value" 2>/dev/null)" = OK ]; }
  wait_for 120 rewrite
  [ "$(redis-cli -p "$gport" strlen "$last")" = 4000 ] || { echo "load failed" >&2; cat "$dir/pipe.log" >&2; exit 1; }
  rss=$(ps -o rss= -p "${node_pid[0]}" | awk '{printf "%d", $1/1024}')

  # 1. Every replica killed at once, restarted from its disk.
  for i in 0 1 2 3; do kill -9 "${node_pid[$i]}"; wait "${node_pid[$i]}" 2>/dev/null || true; done
  t2=$(now)
  for i in 0 1 2 3; do start_node "$i"; done
  served() { [ "$(redis-cli -p "$gport" strlen "$last" 2>/dev/null)" = 4000 ]; }
  wait_for 600 served
  t3=$(now)

  # 2. Replica 3 loses its data directory and rejoins by state transfer.
  target=$(max_executed)
  kill -9 "${node_pid[3]}"; wait "${node_pid[3]}" 2>/dev/null || true
  # Its log and snapshots go; the marker that says it ran before stays (amnesia recovery: it
  # polls its peers at once, as a replica restored from an empty disk image would).
  rm -rf "$dir/data-3/wal" "$dir/data-3/snapshots"
  t4=$(now)
  start_node 3
  rejoined() { [ "$(executed 3)" -ge "$target" ]; }
  wait_for 600 rejoined
  t5=$(now)

  python3 -c "print('%d,%d,%d,%.1f,%.1f,%.2f,%.2f,%s' % ($size, $keys, $failed, $t1-$t0, $size/($t1-$t0), $t3-$t2, $t5-$t4, '$rss'))"
  for i in 0 1 2 3; do kill "${node_pid[$i]}" 2>/dev/null || true; done
  kill "$gw_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  node_pid=(); gw_pid=""
  rm -rf "$dir"
done
