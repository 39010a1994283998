#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit tests, the plugins' own
# tests, and end-to-end tests (real gateway, real upstreams, real wasm plugins).
# Installs the toolchain pieces it needs; safe to run on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

# The memberlist interop tests (tests/e2e/cluster_interop.rs) build a Go peer against
# HashiCorp memberlist from Debian's packages, offline in GOPATH mode.
GO_PACKAGES="golang-go golang-github-hashicorp-memberlist-dev"
if ! command -v go >/dev/null 2>&1 || [ ! -d /usr/share/gocode/src/github.com/hashicorp/memberlist ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    if ! $SUDO apt-get install -y -qq --no-install-recommends $GO_PACKAGES >/dev/null 2>&1; then
        $SUDO apt-get update -qq >/dev/null
        $SUDO apt-get install -y -qq --no-install-recommends $GO_PACKAGES >/dev/null
    fi
fi

cargo fmt --all -- --check
(cd plugins && cargo fmt --all -- --check)

# Plugins: built once for wasm32-wasip2 (the e2e tests load these files), then their
# native unit tests against the SDK's host-free harness.
(cd plugins && cargo build --release --locked --target wasm32-wasip2)
(cd plugins && cargo clippy --all-targets --locked -- -D warnings)
(cd plugins && cargo test --locked)

cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
