#!/usr/bin/env bash
# The goctx-tower member (the tower layers): its tests (unit, in-process,
# real hyper sockets on 127.0.0.1, the 10,000-request leak check), its docs,
# and the hops demo built and run (client -> A -> B on loopback; it exits
# non-zero if a hop misses the hang-up).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ci/lib.sh
. ci/lib.sh

step "cargo test -p goctx-tower"
cargo test -p goctx-tower

step "cargo doc -p goctx-tower -D warnings"
RUSTDOCFLAGS="-D warnings -D rustdoc::broken_intra_doc_links" \
    cargo doc --no-deps -p goctx-tower

step "example hops (release)"
cargo build --release -p goctx-tower --example hops
bounded 120 "example hops" cargo run --release --quiet -p goctx-tower --example hops
