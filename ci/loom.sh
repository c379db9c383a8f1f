#!/usr/bin/env bash
# The loom models (loom-tests/), in release with a bounded preemption count
# so the step stays within the CI budget.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom --cfg crossbeam_loom" LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
cargo test --release -p goctx-loom-tests --target-dir target/loom -- --nocapture 2>&1 \
    | grep -v '^$'
# The list's own models (in the crate: src/list/tests/models.rs).
cargo test --release --lib --target-dir target/loom list:: -- --nocapture 2>&1 \
    | grep -v '^$'
