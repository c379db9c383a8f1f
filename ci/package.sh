#!/usr/bin/env bash
# Publishing hygiene: rustdoc without warnings or broken intra-doc links,
# `cargo package` (which builds the packaged crate), then the packaged
# crate's own test suite, compiled and run from the unpacked .crate file —
# what a user who downloads it from crates.io gets.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ci/lib.sh
. ci/lib.sh

# The documented surface is what docs.rs builds (Cargo.toml:
# package.metadata.docs.rs): the `futures` and `crossbeam-channel`
# features, not the fuzzing hooks.
step "cargo doc -D warnings -D rustdoc::broken_intra_doc_links"
RUSTDOCFLAGS="-D warnings -D rustdoc::broken_intra_doc_links" \
    cargo doc --no-deps --features futures,crossbeam-channel -p goctx

step "cargo package"
# --allow-dirty: CI's clone is clean, a developer's tree may not be.
cargo package -p goctx --allow-dirty
crate=$(ls -t target/package/goctx-*.crate | head -1)
tar tzf "$crate" | sed 's/^/  /'

step "the packaged crate's tests"
unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
tar xzf "$crate" -C "$unpacked"
dir=$(ls -d "$unpacked"/goctx-*)
# A target dir of its own inside this tree's target/ (dependencies are
# reused between runs; the unpacked crate has no workspace of its own).
(cd "$dir" && CARGO_TARGET_DIR="$OLDPWD/target/packaged" cargo test)
