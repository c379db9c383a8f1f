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
# garbage bags are reported as leaks at exit. goctx's own tagged pointers
# keep their provenance, but crossbeam-epoch's casts integers to pointers,
# so miri runs in its default (permissive) provenance mode. Tests read the
# real clock.
export MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-ignore-leaks -Zmiri-disable-isolation"
# shellcheck disable=SC2046 # one word per target
cargo +nightly miri test --lib $(bash .ci/miri-tests)
