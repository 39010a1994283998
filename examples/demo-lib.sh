# Shared by the demo scripts (sourced, not run): cleanup of started processes, step
# headings, bounded waits, and the release build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# wait_http URL: until it answers 2xx, at most 10 s.
wait_http() {
    for _ in $(seq 1 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "no answer from $1" >&2
    exit 1
}

# build_gateway: builds the release binary and sets BIN.
build_gateway() {
    step "building fluxgate-host (release; the first build takes several minutes)"
    (cd "$ROOT" && cargo build --release -p fluxgate-host)
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/fluxgate-host"
}

# start_backend PORT FILE TEXT: python3 http.server on 127.0.0.1:PORT serving FILE.
start_backend() {
    mkdir -p "$WORK/site" && echo "$3" >"$WORK/site/$2"
    (cd "$WORK/site" && exec python3 -m http.server "$1" --bind 127.0.0.1) >"$WORK/backend.log" 2>&1 &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$1/$2"
}
