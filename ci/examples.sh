#!/usr/bin/env bash
# Runs every example a user would copy (each finishes in about a second and
# exits non-zero if what it demonstrates went wrong).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ci/lib.sh
. ci/lib.sh
cargo build --release --examples
for example in examples/*.rs; do
    name=$(basename "$example" .rs)
    step "example $name"
    bounded 120 "example $name" cargo run --release --quiet --example "$name"
done
