#!/usr/bin/env bash
# The toolchains CI needs: stable's rustfmt and clippy, and a nightly with
# miri and rust-src (miri, TSan's -Zbuild-std, cargo-fuzz). Without nightly
# the nightly steps print a SKIP NOTICE each and are skipped.
set -euo pipefail
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo --version
if rustup run nightly rustc --version >/dev/null 2>&1 \
    || rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
    if rustup component add --toolchain nightly miri rust-src >/dev/null 2>&1; then
        rustup run nightly rustc --version
        exit 0
    fi
fi
echo "SKIP NOTICE: no nightly toolchain with miri could be installed; miri steps will be skipped"
