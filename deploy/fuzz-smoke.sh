#!/usr/bin/env bash
# Run every cargo-fuzz target of fuzz/ for N seconds each, one after another, and end with one
# line "N passed, N failed": a target passes if libFuzzer ran it for the whole time without a
# crash, panic, leak or timeout. Not part of deploy/test.sh (CI may call it separately).
#
#   bash deploy/fuzz-smoke.sh [SECONDS]          default 60 per target
#   TAS_FUZZ_TARGETS="wire_tcp shm_desc" bash deploy/fuzz-smoke.sh 30
#
# Toolchain: cargo-fuzz needs nightly features (-Zsanitizer). By default this runs the default
# (stable) toolchain with RUSTC_BOOTSTRAP=1, which unlocks them; TAS_FUZZ_TOOLCHAIN=nightly uses
# `cargo +nightly` instead. cargo-fuzz itself is installed from crates.io if missing.
# Corpora grow in fuzz/corpus/TARGET (kept between runs, ignored by git); a crash leaves its
# reproducer in fuzz/artifacts/TARGET/ and this script prints the command that replays it.
# Each target's libFuzzer log is kept in $TAS_FUZZ_LOGS (default /tmp/tas-fuzz-logs).
set -uo pipefail

cd "$(dirname "$0")/../fuzz" || exit 2
SECS=${1:-60}
case "$SECS" in '' | *[!0-9]*) echo "fuzz-smoke: SECONDS must be a whole number, got '$SECS'" >&2; exit 2 ;; esac
LOGS=${TAS_FUZZ_LOGS:-/tmp/tas-fuzz-logs}
mkdir -p "$LOGS"

if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz-smoke: installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked || { echo "fuzz-smoke: cargo install cargo-fuzz failed" >&2; exit 2; }
fi
if [ -n "${TAS_FUZZ_TOOLCHAIN:-}" ]; then
    FUZZ=(cargo "+$TAS_FUZZ_TOOLCHAIN" fuzz)
else
    export RUSTC_BOOTSTRAP=1
    FUZZ=(cargo fuzz)
fi

targets=${TAS_FUZZ_TARGETS:-$("${FUZZ[@]}" list)}
echo "fuzz-smoke: building ${targets//$'\n'/ }"
if ! "${FUZZ[@]}" build -O; then
    echo "fuzz-smoke: the fuzz targets did not build" >&2
    echo "0 passed, 1 failed"
    exit 1
fi

passed=0 failed=0
for t in $targets; do
    mkdir -p "corpus/$t"
    log=$LOGS/$t.log
    printf 'fuzz-smoke: %-18s %ss ... ' "$t" "$SECS"
    "${FUZZ[@]}" run -O "$t" "corpus/$t" -- -max_total_time="$SECS" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
        echo "ok (${execs:-?} executions, ${cov:-cov: ?}, corpus $(ls "corpus/$t" | wc -l))"
    else
        failed=$((failed + 1))
        echo "FAILED (exit $rc, ${execs:-?} executions); log: $log"
        crash=$(grep -o 'artifacts/[^ ]*' "$log" | tail -n 1)
        grep -m 1 -E "panicked at|ERROR: libFuzzer|SUMMARY:" "$log" | sed 's/^/    /'
        [ -n "$crash" ] && echo "    reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O $t $crash)"
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
