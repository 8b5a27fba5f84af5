#!/usr/bin/env bash
# Smoke-fuzz every target: build them all, replay the saved regressions, then fuzz each target
# for N seconds (default 10), one after the other.
#
#   fuzz/smoke.sh [SECONDS]
#
# Exits non-zero if a target fails to build, a regression input still crashes, or fuzzing finds
# a crash, leak, timeout or out-of-memory (libFuzzer's reproducer is then in
# fuzz/artifacts/<target>/). Prints one line per target: seconds, executions, executions per
# second, corpus entries added.
#
# Environment:
#   FUZZ_SANITIZER  address (default) or none
#   CARGO_TARGET_DIR  where to build (a separate directory avoids waiting on other builds)
#
# The toolchain is stable (rust-toolchain.toml); cargo-fuzz passes -Z flags, so
# RUSTC_BOOTSTRAP=1 is set here. Installs cargo-fuzz if it is missing.
set -euo pipefail

seconds="${1:-10}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS]" >&2
    exit 2
fi
sanitizer="${FUZZ_SANITIZER:-address}"
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

echo "== building every target (sanitizer: $sanitizer)"
build_start=$SECONDS
cargo fuzz build -s "$sanitizer"
echo "== built in $((SECONDS - build_start)) s"

dict_of() {
    case "$1" in
        resp_*) echo dicts/resp.dict ;;
        cluster_file) echo dicts/cluster_file.dict ;;
        *) echo "" ;;
    esac
}

# What went wrong, from a failed run's log: the panic or sanitizer report and the input.
report() {
    grep -E -A2 "panicked at|^==[0-9]+==ERROR" "$1" | head -n 20 || true
    grep -E "^(SUMMARY|Running: |Test unit written to|Base64: )|^\s+(cargo fuzz run .*)?artifacts/" "$1" || true
}

mapfile -t targets < <(cargo fuzz list)
failed=()
summary=()
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

for target in "${targets[@]}"; do
    log="$logs/$target.log"
    regressions=(regressions/"$target"/*)
    if [[ -e "${regressions[0]}" ]]; then
        echo "== $target: replaying ${#regressions[@]} regression input(s)"
        if ! cargo fuzz run -s "$sanitizer" "$target" "${regressions[@]}" -- -runs=1 >"$log" 2>&1; then
            report "$log"
            failed+=("$target (regression)")
            summary+=("$(printf '%-22s a saved regression input still fails: not fuzzed' "$target")")
            continue
        fi
    fi

    echo "== $target: fuzzing for $seconds s"
    mkdir -p "corpus/$target"
    args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    dict="$(dict_of "$target")"
    [[ -n "$dict" ]] && args+=(-dict="$dict")
    corpora=("corpus/$target")
    [[ -d "seeds/$target" ]] && corpora+=("seeds/$target")
    if cargo fuzz run -s "$sanitizer" "$target" "${corpora[@]}" -- "${args[@]}" >"$log" 2>&1; then
        status=ok
    else
        status=CRASH
        failed+=("$target")
        report "$log"
    fi
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
    added="$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -n 1)"
    summary+=("$(printf '%-22s %4ss %12s execs %9s/s %6s new  %s' \
        "$target" "$seconds" "${runs:-?}" "${rate:-?}" "${added:-?}" "$status")")
done

echo "== summary"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
    echo "== FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "== no crashes"
