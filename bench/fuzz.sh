#!/usr/bin/env bash
# Fuzzes consentry's parsers of untrusted input (issue 15) for a bounded time each.
#
# What it does: builds every cargo-fuzz target of fuzz/ (fuzz/fuzz_targets/*.rs; each file's
# header says which library functions it exercises and what it asserts), then runs them one
# after the other, one job at a time, each for FUZZ_SECONDS (libFuzzer's -max_total_time),
# starting from the committed seeds (fuzz/seeds/<target>/, read-only) and the corpus kept
# from earlier runs (fuzz/corpus/<target>/, git-ignored). It prints, per target, the inputs
# run, the coverage reached (libFuzzer's `cov` edges and `ft` features), the corpus size and
# the crashes; a crash's input is saved under fuzz/artifacts/<target>/ (minimise it with
# `cargo +nightly fuzz tmin -s none -a <target> <file>`, keep it under
# fuzz/regressions/<target>/). Exits 1 if any target crashed, timed out or ran out of memory.
#
# Needs: a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
#
# Run:   bench/fuzz.sh                      # every target, 60 s each
#        FUZZ_SECONDS=300 bench/fuzz.sh     # longer
#        bench/fuzz.sh phone_number webhooks
#        bench/fuzz.sh --regressions        # only replay fuzz/regressions/ (no fuzzing)
#
# Settings (environment):
#   FUZZ_SECONDS      time per target (default 60)
#   FUZZ_SANITIZER    none (default: the library is safe Rust, and it is faster) or address
#   FUZZ_MAX_LEN      the longest input libFuzzer makes (default 4096)
#   FUZZ_KEEP_GOING   1: keep fuzzing after a crash (libFuzzer -fork=1 -ignore_crashes=1)
#   CARGO_BUILD_JOBS  build parallelism (default 1: the build is heavy)
#   FUZZ_LOG_DIR      where each target's libFuzzer log goes (default fuzz/artifacts/logs)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz_dir="$root/fuzz"
seconds="${FUZZ_SECONDS:-60}"
sanitizer="${FUZZ_SANITIZER:-none}"
max_len="${FUZZ_MAX_LEN:-4096}"
log_dir="${FUZZ_LOG_DIR:-$fuzz_dir/artifacts/logs}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
flags=(-s "$sanitizer" -a) # debug assertions and overflow checks on: an overflow is a finding

cd "$fuzz_dir"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked (and rustup toolchain install nightly)" >&2
    exit 2
fi

regressions_only=0
if [[ "${1:-}" == "--regressions" ]]; then
    regressions_only=1
    shift
fi
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

echo "== building ${#targets[@]} targets (sanitizer $sanitizer, $CARGO_BUILD_JOBS job(s))"
cargo +nightly fuzz build "${flags[@]}" >/dev/null
mkdir -p "$log_dir"

failed=0
# Replays every kept reproducer: each must no longer crash once its bug is fixed.
for target in "${targets[@]}"; do
    dir="regressions/$target"
    [[ -d "$dir" ]] || continue
    for file in "$dir"/*; do
        [[ -f "$file" ]] || continue
        replay_log="$log_dir/$target.$(basename "$file").log"
        if cargo +nightly fuzz run "${flags[@]}" "$target" "$file" -- -runs=1 \
            >"$replay_log" 2>&1; then
            echo "regression $file: passes"
        else
            echo "regression $file: still crashes (see $replay_log)"
            failed=1
        fi
    done
done
if [[ $regressions_only == 1 ]]; then
    exit "$failed"
fi

printf '\n%-16s %10s %8s %8s %8s %8s  %s\n' target runs cov ft corpus crashes status
for target in "${targets[@]}"; do
    corpus="corpus/$target"
    seeds="seeds/$target"
    mkdir -p "$corpus" "artifacts/$target"
    [[ -d "$seeds" ]] || seeds=""
    before=$(find "artifacts/$target" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \) | wc -l)
    extra=()
    if [[ "${FUZZ_KEEP_GOING:-0}" == 1 ]]; then
        extra=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
    fi
    log="$log_dir/$target.log"
    marker="$log_dir/.started-$target"
    touch "$marker"
    status=ok
    # shellcheck disable=SC2086 # $seeds is one folder or nothing
    if ! cargo +nightly fuzz run "${flags[@]}" "$target" "$corpus" $seeds -- \
        -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "${extra[@]}" >"$log" 2>&1; then
        status=failed
        failed=1
    fi
    after=$(find "artifacts/$target" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \) | wc -l)
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    if [[ -z "$runs" ]]; then # fork mode, or a crash before the final stats: the last status line
        runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
    fi
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)
    ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)
    corp=$(find "$corpus" -type f | wc -l)
    crashes=$((after - before))
    if [[ $crashes -gt 0 ]]; then
        mapfile -t found < <(find "artifacts/$target" -maxdepth 1 -type f -newer "$marker" \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \))
        status="CRASH: ${found[*]:0:3}"
        failed=1
    fi
    printf '%-16s %10s %8s %8s %8s %8s  %s\n' "$target" "${runs:-?}" "${cov:-?}" "${ft:-?}" "$corp" "$crashes" "$status"
done
echo "logs: $log_dir"
exit "$failed"
