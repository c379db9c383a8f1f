# shellcheck shell=bash
# Shared helpers for the ci/*.sh scripts (sourced, not run).

step() { printf '\n=== %s (%ss since start)\n' "$*" "$SECONDS"; }

# The target the sanitizers are run for. They need an explicit --target (so
# that RUSTFLAGS reach only target code, not build scripts or proc-macros),
# and goctx's CI machines are x86_64 Linux.
SANITIZER_TARGET=x86_64-unknown-linux-gnu

# need_nightly WHAT [COMPONENT...]: makes sure a nightly toolchain (and the
# components) is there, installing what is missing. Returns non-zero after a
# loud SKIP NOTICE when nightly itself cannot be had, or lacks a required
# component that cannot be added.
need_nightly() {
    local what=$1
    shift
    local host
    host=$(rustc -vV | sed -n 's/^host: //p')
    if [ "$host" != "$SANITIZER_TARGET" ]; then
        echo "SKIP NOTICE: $what needs an $SANITIZER_TARGET host, this is $host; $what SKIPPED"
        return 1
    fi
    if ! rustup run nightly rustc --version >/dev/null 2>&1; then
        echo "nightly toolchain not installed: trying 'rustup toolchain install nightly --profile minimal'"
        if ! rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
            echo "SKIP NOTICE: no nightly toolchain (none installed, and rustup could not install one); $what (-Zsanitizer) SKIPPED"
            return 1
        fi
    fi
    local component
    for component in "$@"; do
        if ! rustup component add --toolchain nightly "$component" >/dev/null 2>&1; then
            echo "SKIP NOTICE: the nightly toolchain lacks '$component' and rustup could not add it; $what SKIPPED"
            return 1
        fi
    done
    rustup run nightly rustc --version
}

# test_targets NAME...: prints `--test NAME` for each tests/NAME.rs present.
test_targets() {
    local t
    for t in "$@"; do
        [ -f "tests/$t.rs" ] && printf -- '--test %s ' "$t"
    done
    echo
}

# bounded SECONDS LABEL COMMAND...: runs COMMAND under timeout(1) (its whole
# process group: cargo and the test binary it started), so no hang can eat
# the CI budget. On expiry it says which LABEL (a binary, a step) hung and
# returns 124.
bounded() {
    local limit=$1 label=$2
    shift 2
    local status=0
    timeout --kill-after=30 "$limit" "$@" || status=$?
    if [ "$status" = 124 ] || [ "$status" = 137 ]; then
        echo "TIMEOUT: $label did not finish within ${limit}s (killed)" >&2
        return 124
    fi
    return "$status"
}
