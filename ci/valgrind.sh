#!/usr/bin/env bash
# valgrind memcheck over the unit and integration test binaries: no invalid
# read/write, no use of uninitialised memory, and zero bytes "definitely
# lost" (--errors-for-leak-kinds=definite; "possibly lost" and "still
# reachable" are the timer/worker threads and the epoch collector, which live
# for the whole process by design).
#
# Uses the ordinary debug test build (the one `cargo test` makes, so after
# .ci/run's `cargo test` nothing is rebuilt). valgrind runs threads one at a
# time and ~30x slower, so the million-sized tests are skipped here (they run
# natively in `cargo test` and under ASan); see SKIPS below.
# (--track-origins=yes says where uninitialised values come from; it is
# left out for time: add it when diagnosing a report.)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ci/lib.sh
. ci/lib.sh

if ! command -v valgrind >/dev/null 2>&1; then
    echo "valgrind not found: installing it (apt-get)"
    apt-get update -qq >/dev/null && apt-get install -y -qq valgrind >/dev/null
fi
valgrind --version

# Test-name filters (libtest `--skip`, substring match) per binary; the other
# tests of each binary still run.
# - million-sized (minutes under valgrind): scale's five `million_*` tests
#   (10^6-deep chains, 10^6 children), churn's 10^6 create/drop cycles,
#   deadline's 10^6 deadlines, timer_wheel's 10^6 parked deadlines (it also
#   compares timer lateness, which valgrind's serialised scheduler distorts);
# - deadline's cancel_and_expiry_first_one_wins assumes `cancel()` runs
#   within 30 ms of `with_timeout_cause(30 ms)`; under valgrind's serialised
#   scheduler the thread can be descheduled longer, and the expiry then
#   legitimately wins;
# - deadline's dropped_deadline_contexts_are_released checks memory
#   *accounting* (live bytes back within a slack once the timer thread has
#   caught up), which a serialised timer thread misses (once 1492208 bytes
#   against a 786432 slack); it runs natively in `cargo test`;
# - merge's churned_merges_under_a_long_lived_other_use_flat_memory: 2*10^5
#   merges in a debug build, and live-bytes accounting, as above.
declare -A SKIPS=(
    [scale]="--skip million_"
    [churn]="--skip million_child_cycles_from_two_threads"
    [deadline]="--skip a_million_deadlines_all_expire --skip cancel_and_expiry_first_one_wins --skip dropped_deadline_contexts_are_released"
    [timer_wheel]="--skip parked_deadlines_do_not_delay_short_ones"
    [merge]="--skip churned_merges_under_a_long_lived_other_use_flat_memory"
)

# The test executables of this build, as "name<TAB>path" (a failed build
# fails the script here).
json=$(cargo test --tests --no-run --message-format=json)
mapfile -t bins < <(
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"] + "\t" + m["executable"])
' <<<"$json"
)
[ "${#bins[@]}" -gt 0 ] || { echo "valgrind: no test binaries found" >&2; exit 1; }

logdir=target/valgrind
mkdir -p "$logdir"
failed=()
for entry in "${bins[@]}"; do
    name=${entry%%$'\t'*}
    exe=${entry#*$'\t'}
    # shellcheck disable=SC2086 # the skips are separate words
    set -- ${SKIPS[$name]:-}
    start=$SECONDS
    status=0
    # --fair-sched=yes: valgrind runs one thread at a time, and its default
    # lock hand-over is unfair, so a thread spinning without a system call
    # can starve the one it waits for (async_done once ran 17 minutes).
    # Each binary is bounded (VALGRIND_BINARY_SECONDS): a hang fails with
    # the binary's name instead of eating the CI budget.
    bounded "${VALGRIND_BINARY_SECONDS:-420}" "valgrind $name" \
        valgrind --tool=memcheck --fair-sched=yes --leak-check=full \
        --errors-for-leak-kinds=definite \
        --show-leak-kinds=definite --error-exitcode=101 \
        --log-file="$logdir/$name.log" \
        "$exe" --test-threads=2 "$@" >"$logdir/$name.out" 2>&1 || status=$?
    result=$(grep -E '^test result:' "$logdir/$name.out" | tail -1 || true)
    definitely=$(grep -Eo 'definitely lost: [0-9,]+ bytes' "$logdir/$name.log" | tail -1 || true)
    errors=$(grep -Eo 'ERROR SUMMARY: [0-9]+ errors' "$logdir/$name.log" | tail -1 || true)
    printf 'valgrind %-18s %4ss  %s; %s; %s %s\n' "$name" "$((SECONDS - start))" \
        "${result:-no result line}" "${definitely:-definitely lost: 0 bytes}" "$errors" \
        "${*:+(filters: $*)}"
    if [ "$status" != 0 ]; then
        failed+=("$name")
        echo "--- $name: exit $status; test output:"
        tail -40 "$logdir/$name.out"
        echo "--- $name: valgrind report:"
        cat "$logdir/$name.log"
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "valgrind: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "valgrind: ${#bins[@]} test binaries clean (no memory errors, 0 bytes definitely lost)"
