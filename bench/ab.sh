#!/usr/bin/env bash
# A/B comparison of two shieldwall builds under `shieldwall bench`: runs OLD then NEW,
# alternating, ROUNDS times each, with the same bench arguments, and prints the last line of
# each run's results.csv prefixed with label,build,round. Alternating runs in the same minutes
# is how docs/benchmarks.md compares builds on this VM, whose speed drifts over hours.
# Usage: bench/ab.sh OLD_BINARY NEW_BINARY ROUNDS LABEL -- BENCH_ARGS...
# Example:
#   git worktree add /tmp/old HEAD~1 && (cd /tmp/old && cargo build --release -p shieldwall)
#   cargo build --release -p shieldwall
#   cp /tmp/old/target/release/shieldwall /tmp/sw-old; cp target/release/shieldwall /tmp/sw-new
#   bench/ab.sh /tmp/sw-old /tmp/sw-new 5 byz1x1 -- --auth mac --clients 1 --depth 1 --duration 5s
# Copy the binaries out of target/ first: bench starts the replicas from its own executable,
# and a rebuild during the runs would change it. Results go to $BENCH_DIR (default /var/tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 5 ] && [ "$5" = "--" ] || { sed -n 2,14p "$0" >&2; exit 2; }
OLD=$1 NEW=$2 ROUNDS=$3 LABEL=$4
shift 5
. bench/lib.sh
need_tools "$OLD" "$NEW"
work=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}" ab.XXXXXX)
echo "columns: label,build,round, then those of results.csv" >&2
for round in $(seq 1 "$ROUNDS"); do
  for build in old new; do
    bin=$OLD
    [ "$build" = new ] && bin=$NEW
    out="$work/$LABEL-$build-$round"
    "$bin" bench --out "$out" "$@" >"$out.log" 2>&1 || { echo "run failed: $out.log" >&2; exit 1; }
    echo "$LABEL,$build,$round,$(tail -1 "$out/results.csv")"
  done
done
echo "results: $work" >&2
