#!/usr/bin/env bash
# The loom models (loom-tests/), in release with a bounded preemption count
# so the step stays within the CI budget.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom --cfg crossbeam_loom" LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
# Clippy sees the models only under these flags (the workspace's clippy
# step builds loom-tests empty): a `drop()` of a `pin!`ned future, which
# drops only the `Pin<&mut _>`, once weakened a model unnoticed.
cargo clippy --release -p goctx-loom-tests --tests --target-dir target/loom -- -D warnings
cargo test --release -p goctx-loom-tests --target-dir target/loom -- --nocapture 2>&1 \
    | grep -v '^$'
# The list's own models (in the crate: src/list/tests/models.rs).
cargo test --release --lib --target-dir target/loom list:: -- --nocapture 2>&1 \
    | grep -v '^$'
