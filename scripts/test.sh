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

# The servers the end-to-end tests start on loopback ports (Debian packages): Redis
# for cluster-wide rate limits, etcd and dnsmasq for discovery, pebble (an ACME CA,
# with pebble-challtestsrv in the same package) for automatic certificates; and the
# tools the dashboard and deploy/ tests use. Installed only when missing; their package
# scripts are told not to start system-wide services.
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v dnsmasq >/dev/null 2>&1 || [[ -x /usr/sbin/dnsmasq ]] || need+=(dnsmasq)
{ command -v pebble && command -v pebble-challtestsrv; } >/dev/null 2>&1 || need+=(pebble)
# Node.js/npm (componentize-js) and Python's venv (componentize-py) build the
# JavaScript and Python plugins; their packages go inside the checkout (see below).
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# Headless Chromium renders the dashboard in its browser test; systemd's
# systemd-analyze verifies deploy/systemd/fluxgate.service.
[[ -x /usr/bin/chromium ]] || need+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The memberlist interop tests (tests/e2e/cluster_interop.rs) build a Go peer against
# HashiCorp memberlist from Debian's packages, offline in GOPATH mode.
command -v go >/dev/null 2>&1 || need+=(golang-go)
[[ -d /usr/share/gocode/src/github.com/hashicorp/memberlist ]] || need+=(golang-github-hashicorp-memberlist-dev)
# The HTTP/2 and gRPC tests (tests/e2e/http2*) run Python scripts with Debian's
# python3-h2 (misbehaving HTTP/2 clients) and python3-grpcio (a real gRPC server and
# client) under /usr/bin/python3.
/usr/bin/python3 -c 'import h2' >/dev/null 2>&1 || need+=(python3-h2)
/usr/bin/python3 -c 'import grpc' >/dev/null 2>&1 || need+=(python3-grpcio)
if (( ${#need[@]} > 0 )); then
    sudo=()
    (( EUID == 0 )) || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1
    if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; then
        "${sudo[@]}" apt-get update -qq >/dev/null
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
fi

cargo fmt --all -- --check
(cd plugins && cargo fmt --all -- --check)

# Plugins: built once for wasm32-wasip2 (the e2e tests load these files), then their
# native unit tests against the SDK's host-free harness.
(cd plugins && cargo build --release --locked --target wasm32-wasip2)
(cd plugins && cargo clippy --all-targets --locked -- -D warnings)
(cd plugins && cargo test --locked)

# JavaScript and Python plugins: the pinned toolchains are installed inside the checkout
# (plugins/js/node_modules by `npm ci` from the committed lock file, plugins/py/.venv
# by pip from requirements.txt), each example built once into plugins/target/lang/
# (the e2e tests load those files), then the helpers' and the examples' own tests.
plugins/build-lang.sh
(cd plugins/js && node --import ./testing/register.js --test test/)
(cd plugins/js-canary && node --import ../js/testing/register.js --test test/)
(cd plugins/py && python3 -m unittest discover -s tests -t . -v)
(cd plugins/py-allowlist && PYTHONPATH=../py python3 -m unittest -v)

cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
