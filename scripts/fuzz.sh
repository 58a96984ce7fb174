#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time and prints, per
# target, the executions run and the findings (crash/timeout/leak files).
#
#   scripts/fuzz.sh                      # 60 s per target
#   FUZZ_SECONDS=120 scripts/fuzz.sh     # longer
#   FUZZ_TARGETS="path_classify" scripts/fuzz.sh
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain for
# the sanitizer flags; without nightly it uses the stable compiler with
# RUSTC_BOOTSTRAP=1. The corpus grows in fuzz/corpus/<target> (seeded from
# fuzz/seeds/<target>); findings land in fuzz/artifacts/<target>. Exits 1 if
# any target found something.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-"path_classify host_resolve header_checks config_parse fast_head chunked_end judged_forwarded"}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi

mkdir -p logs
status=0
printf '%-15s %8s %14s %10s %8s %s\n' target seconds executions exec/s corpus findings > logs/summary.txt
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    extra=()
    [ -f "dicts/${t%%_*}.dict" ] && extra+=("-dict=dicts/${t%%_*}.dict")
    echo "== $t: ${secs}s"
    stamp=$(mktemp)
    "${fuzz[@]}" build --release "$t" >/dev/null 2>&1 || { echo "build of $t failed"; "${fuzz[@]}" build --release "$t"; exit 2; }
    "${fuzz[@]}" run --release "$t" "corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 "${extra[@]}" \
        >"logs/$t.log" 2>&1
    rc=$?
    execs=$(grep -m1 'stat::number_of_executed_units' "logs/$t.log" | awk '{print $2}')
    rate=$(grep -m1 'stat::average_exec_per_sec' "logs/$t.log" | awk '{print $2}')
    corpus=$(find "corpus/$t" -type f | wc -l)
    # Findings of this run only (older ones stay for reference).
    found=$(find "artifacts/$t" -type f -newer "$stamp" \( -name 'crash-*' -o -name 'timeout-*' -o -name 'leak-*' -o -name 'oom-*' \) | wc -l)
    rm -f "$stamp"
    [ "$rc" -ne 0 ] && [ "$found" -eq 0 ] && found="exit $rc (see fuzz/logs/$t.log)"
    [ "$rc" -ne 0 ] && status=1
    printf '%-15s %8s %14s %10s %8s %s\n' "$t" "$secs" "${execs:-?}" "${rate:-?}" "$corpus" "$found" | tee -a logs/summary.txt
done
echo
cat logs/summary.txt
exit $status
