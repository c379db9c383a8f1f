#!/usr/bin/env bash
# Fuzzing: installs cargo-fuzz if missing, builds the fuzz targets in fuzz/
# (a workspace of its own) and runs each for a bounded time under
# AddressSanitizer, printing execs/s. FUZZ_SECONDS sets the time per target
# (default 60). Fails if a target finds a failing input, and says how to
# reproduce and keep it. Without a nightly toolchain (after trying to
# install one) the targets are only type-checked on stable and fuzzing is
# skipped with a notice. The targets' bodies also run on stable, over the
# committed regression corpus, in `cargo test --test fuzz_regressions`.
#
# LeakSanitizer: libFuzzer checks each input that allocates more than it
# frees for leaks (how the after-func reference cycle pinned in
# tests/fuzz_regressions.rs was found). The check LSan runs at exit is
# off (leak_check_at_exit=0): after long runs of the `concurrent` target it
# reported objects of std's thread machinery only (spawn closures, `Packet`,
# `Thread` handles, glibc TLS-destructor entries of after-func workers and
# of the harness's scoped threads), attributed to no input and reproducible
# neither per input nor by replaying the whole corpus in one ASan process
# (idle gaps included): threads still starting or exiting when `exit()` ran.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ci/lib.sh
. ci/lib.sh

seconds="${FUZZ_SECONDS:-60}"
targets=(ops concurrent list list_threads)

if ! need_nightly "fuzzing"; then
    step "fuzz targets: type-check on stable"
    cargo check --manifest-path fuzz/Cargo.toml --lib --bins
    echo "SKIPPED fuzzing: cargo-fuzz needs a nightly toolchain (-Zsanitizer)"
    exit 0
fi

step "cargo-fuzz"
if ! cargo fuzz --version >/dev/null 2>&1; then
    bounded 900 "cargo install cargo-fuzz" cargo install cargo-fuzz --locked
fi
cargo fuzz --version

step "fuzz build (every target)"
bounded 900 "fuzz build" cargo +nightly fuzz build

export LSAN_OPTIONS="leak_check_at_exit=0"
failed=()
for target in "${targets[@]}"; do
    step "fuzz run: $target for ${seconds}s"
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    log="$(mktemp)"
    # The committed regression corpus seeds the run (read-only: new inputs
    # go to the git-ignored fuzz/corpus/). -timeout turns a hang (a lost
    # wake-up, a deadlock) into a failure; the harness itself waits for
    # anything asynchronous at most 10 s.
    status=0
    bounded "$((seconds + 240))" "fuzz target $target" \
        cargo +nightly fuzz run "$target" "$corpus" "tests/fuzz/regressions/$target" -- \
        -max_total_time="$seconds" -timeout=60 -print_final_stats=1 >"$log" 2>&1 || status=$?
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)"
    echo "$target: ${execs:-?} execs in ${seconds}s, ${rate:-?} execs/s, corpus $(find "$corpus" -type f | wc -l) inputs"
    if [ "$status" != 0 ]; then
        failed+=("$target")
        echo "FAILED: the $target target found a failing input (exit $status):"
        # The panic message first (the tail is mostly the sanitizer's stack).
        grep -m 3 -A 4 -e "panicked at" -e "ERROR: AddressSanitizer" -e "ERROR: LeakSanitizer" "$log" | cut -c1-400 || true
        tail -n 60 "$log"
        echo "Reproduce: cargo +nightly fuzz run $target fuzz/artifacts/$target/<file>"
        echo "Minimize:  cargo +nightly fuzz tmin $target fuzz/artifacts/$target/<file>"
        echo "Keep it:   copy it into tests/fuzz/regressions/$target/ and name a test after it"
        echo "           in tests/fuzz_regressions.rs"
    fi
    rm -f "$log"
done

step "fuzz: done"
if [ "${#failed[@]}" != 0 ]; then
    echo "fuzzing failed: ${failed[*]}"
    exit 1
fi
