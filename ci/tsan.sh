#!/usr/bin/env bash
# ThreadSanitizer over the concurrency tests, with std (and so its atomics,
# thread parking and `Arc`) instrumented too (-Zbuild-std).
#
# False positives: TSan does not model standalone fences. crossbeam-epoch's
# build script sees `-Zsanitizer=thread` and sets
# cfg(crossbeam_sanitize_thread), under which it simulates each fence with
# acquire loads; goctx's node teardown uses an Acquire load of the final
# handle count instead of a fence (as std's `Arc` does under TSan), which
# removed the 174 false reports an earlier fence caused. No suppressions:
# every report fails the run.
#
# Time: building std and the dev-dependencies with TSan is most of it. The
# million-sized tests are skipped (they run natively in `cargo test` and
# under ASan): a_million_deadlines_all_expire alone takes ~25 s under TSan.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ci/lib.sh
. ci/lib.sh

need_nightly "TSan" rust-src || exit 0

# The concurrency tests (and the soak), those of them that exist.
read -r -a targets <<<"$(test_targets golang waiting async_done churn deadline after_func soak user_code timer_wheel on_done merge receiver stripes)"
# Also skipped: tests that count process-wide resources, which TSan's slow,
# reordered threads (and background work left by sibling tests) make flaky,
# and which check nothing TSan looks at; they run natively in `cargo test`:
# after_func's stopping_leaves_nothing_behind (live bytes; see ci/asan.sh),
# deadline's dropped_deadline_contexts_are_released (live bytes: once 848464
# above its baseline against a 786432 slack), deadlines_start_no_thread_each
# (threads in /proc/self/task: once 4 before, 5 during) and merge's
# churned_merges_under_a_long_lived_other_use_flat_memory (live bytes).
skips=(
    --skip a_million_deadlines_all_expire
    --skip parked_deadlines_do_not_delay_short_ones
    --skip stopping_leaves_nothing_behind
    --skip dropped_deadline_contexts_are_released
    --skip deadlines_start_no_thread_each
    --skip churned_merges_under_a_long_lived_other_use_flat_memory
)

# `--cfg crossbeam_sanitize`: crossbeam's sanitizer-run setting (tiny garbage
# bags, full collections), so epoch-deferred frees race with more.
export RUSTFLAGS="-Zsanitizer=thread --cfg crossbeam_sanitize"
export TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1 report_signal_unsafe=0"
cargo_tsan=(cargo +nightly test -Zbuild-std --target "$SANITIZER_TARGET" --target-dir target/tsan)

step "TSan build (std included)"
bounded 900 "TSan build" "${cargo_tsan[@]}" "${targets[@]}" --no-run

step "TSan: ${targets[*]} (skipping: ${skips[*]})"
log=target/tsan/run.log
status=0
bounded 600 "TSan test binaries" \
    "${cargo_tsan[@]}" "${targets[@]}" --no-fail-fast -- "${skips[@]}" 2>&1 | tee "$log" || status=$?
# TSan makes a test binary exit non-zero when it reported anything, so the
# status already says it; this just summarises.
reports=$(grep -c '^WARNING: ThreadSanitizer' "$log" || true)
echo "TSan: $reports report(s)"
exit "$status"
