#!/usr/bin/env bash
# miri (Tree Borrows) over the unit tests and the integration tests listed
# in .ci/miri-tests (each scaled down under cfg(miri)).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup run nightly cargo miri --version >/dev/null 2>&1; then
    echo "SKIPPED miri: no nightly toolchain with miri (see the toolchains step)"
    exit 0
fi
cargo +nightly miri setup >/dev/null
# crossbeam-epoch's global collector is never torn down, so its last
# garbage bags are reported as leaks at exit. crossbeam-epoch casts
# integers to pointers, and goctx's lists rebuild entry pointers from
# exposed provenance (list invariant 8), so miri runs in its default
# (permissive) provenance mode. Tests read the real clock.
export MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-ignore-leaks -Zmiri-disable-isolation"
# shellcheck disable=SC2046 # one word per target
cargo +nightly miri test --lib $(bash .ci/miri-tests)

# List invariant 8: a push whose head CAS succeeds by address after the old
# head was freed and its address reused by a new entry. Several schedules,
# every freed address reused (also across threads) and frequent preemption:
# before the fix, seed 4 of 0..8 failed with these flags, so 0..5 covers it
# (a probabilistic check: which seed fails depends on the code;
# tests/churn.rs above covers the same race on real contexts).
MIRIFLAGS="$MIRIFLAGS -Zmiri-address-reuse-rate=1.0 -Zmiri-address-reuse-cross-thread-rate=1.0 -Zmiri-preemption-rate=0.1 -Zmiri-many-seeds=0..${MIRI_SEEDS:-5}" \
    cargo +nightly miri test --lib list::tests::unit::two_threads_push_and_remove_their_own_entries
