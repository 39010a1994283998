#!/usr/bin/env bash
# Builds the JavaScript and Python example plugins into components, once: the toolchains
# go inside the checkout (plugins/js/node_modules from the committed package-lock.json,
# plugins/py/.venv from requirements.txt, both pinned), the components into
# plugins/target/lang/. A component newer than its sources and the toolchain is kept,
# so scripts/test.sh and the e2e tests (tests/e2e/support/wasm.rs) build each plugin
# once per run.
#   plugins/build-lang.sh            # both
#   plugins/build-lang.sh js-canary  # one
set -euo pipefail
cd "$(dirname "$0")"
out=target/lang
root=$(cd .. && pwd)
mkdir -p "$out"

python=${PYTHON:-python3}

js_toolchain() {
    if [[ ! -x js/node_modules/.bin/componentize-js || js/package-lock.json -nt js/node_modules/.package-lock.json ]]; then
        (cd js && npm ci --no-audit --no-fund --loglevel=error)
    fi
}

py_toolchain() {
    if [[ ! -x py/.venv/bin/componentize-py || py/requirements.txt -nt py/.venv/bin/componentize-py ]]; then
        rm -rf py/.venv
        "$python" -m venv py/.venv
        py/.venv/bin/pip install --quiet --disable-pip-version-check -r py/requirements.txt
        touch py/.venv/bin/componentize-py
    fi
}

# fresh OUT FILE...: OUT exists and is newer than every FILE.
fresh() {
    local target=$1
    shift
    [[ -f $target ]] || return 1
    local f
    for f in "$@"; do
        [[ $target -nt $f ]] || return 1
    done
}

build_js() { # NAME ENTRY
    local name=$1 entry=$2
    js_toolchain
    local wasm=$out/$name.wasm
    if fresh "$wasm" "$name"/*.js js/fluxgate.js ../wit/plugin.wit js/package-lock.json; then
        return
    fi
    js/node_modules/.bin/componentize-js --wit "$root/wit" --world-name plugin --disable http fetch-event \
        -o "$wasm.tmp" "$name/$entry" >/dev/null
    mv "$wasm.tmp" "$wasm"
    echo "built $wasm"
}

build_py() { # NAME MODULE
    local name=$1 module=$2
    py_toolchain
    local wasm=$out/$name.wasm
    if fresh "$wasm" "$name"/*.py py/fluxgate_plugin.py ../wit/plugin.wit py/requirements.txt; then
        return
    fi
    py/.venv/bin/componentize-py -d ../wit -w plugin componentize "$module" \
        -p "$name" -p py -o "$wasm.tmp" >/dev/null
    mv "$wasm.tmp" "$wasm"
    echo "built $wasm"
}

targets=("$@")
(( ${#targets[@]} > 0 )) || targets=(js-canary py-allowlist)
for target in "${targets[@]}"; do
    case $target in
        js-canary) build_js js-canary canary.js ;;
        py-allowlist) build_py py-allowlist app ;;
        *) echo "unknown plugin $target" >&2; exit 2 ;;
    esac
done
