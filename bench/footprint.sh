#!/usr/bin/env bash
# Memory footprint of the gateway (VmRSS from /proc), for watching it over time:
#
#   bench/footprint.sh            # builds the release binary and the plugins first
#   BENCH_SKIP_BUILD=1 FLUXGATE_BIN=path/to/fluxgate-host bench/footprint.sh
#
# Prints one `name value` line per figure (MB):
#   idle_none            no config, no plugins
#   idle_rewrite         one route with header-rewrite
#   idle_chain           one route with api-key-auth + header-rewrite (before any request)
#   idle_chain_plus_one  the chain plus one more small plugin on the route
#   per_extra_plugin     idle_chain_plus_one - idle_chain
#   load_chain           the chain under wrk load (peak VmRSS sampled during the run)
#   load_ratio           load_chain / idle_chain
# Needs wrk and nginx (an upstream on 127.0.0.1; bench/run.sh installs them). Everything
# listens on 127.0.0.1; every process started here is stopped by PID.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/bench"
OUT="$BENCH/out/footprint"
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"
BIN="${FLUXGATE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/fluxgate-host}"
LOAD_SECS="${BENCH_DURATION:-8}"
SETTLE_SECS="${BENCH_SETTLE:-3}"

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
    cargo build --release -p fluxgate-host >&2
    (cd "$ROOT/plugins" && cargo build --release --target wasm32-wasip2) >&2
fi
command -v wrk >/dev/null && command -v nginx >/dev/null ||
    { echo "footprint: needs wrk and nginx (bench/run.sh installs them)" >&2; exit 2; }
WASM="$ROOT/plugins/target/wasm32-wasip2/release"

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

rss_mb() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

wait_port() {
    local i
    for ((i = 0; i < 100; i++)); do
        curl -fsS --max-time 1 -H "$API_KEY_HEADER" "http://127.0.0.1:$1/" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "footprint: nothing answers on 127.0.0.1:$1" >&2
    exit 1
}

rm -rf "$OUT" && mkdir -p "$OUT/upstream/logs" "$OUT/upstream/tmp"
render "$BENCH/nginx-upstream.conf.tmpl" "$OUT/upstream/nginx.conf" PREFIX="$OUT/upstream" PORT="$UPSTREAM_PORT"
taskset -c 1 nginx -p "$OUT/upstream" -e "$OUT/upstream/error.log" -c "$OUT/upstream/nginx.conf" &
PIDS+=($!)
wait_port "$UPSTREAM_PORT"

REWRITE='{ name = "header-rewrite", config = { request = { set = { x-bench = "1" } }, response = { set = { x-served-by = "fluxgate" } } } }'
AUTH='{ name = "api-key-auth", config = { keys = { "bench-key" = "bench" } } }'

# setup NAME CHAIN PLUGIN-FILES...: a config folder with those plugins and one route.
setup() {
    local name="$1" chain="$2" dir="$OUT/$1" file
    shift 2
    mkdir -p "$dir/plugins.d"
    for file in "$@"; do cp "$WASM/${file%%:*}.wasm" "$dir/plugins.d/${file#*:}.wasm"; done
    cat >"$dir/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$FLUXGATE_PORT"
workers = 1
access_log = false
[plugins]
dir = "plugins.d"
[upstreams.bench]
targets = [{ url = "http://127.0.0.1:$UPSTREAM_PORT" }]
[[routes]]
path = "/*"
upstream = "bench"
plugins = [$chain]
EOF
}

# idle NAME: RSS of the gateway on NAME's config, SETTLE_SECS after it answers.
idle() {
    taskset -c 0 "$BIN" --config "$OUT/$1/gateway.toml" >"$OUT/$1.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$FLUXGATE_PORT"
    sleep "$SETTLE_SECS"
    rss_mb "$pid"
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
}

setup none ""
setup rewrite "$REWRITE" header_rewrite:header-rewrite
setup chain "$AUTH, $REWRITE" header_rewrite:header-rewrite api_key_auth:api-key-auth
setup chain-plus-one "$AUTH, \"tagger\", $REWRITE" header_rewrite:header-rewrite api_key_auth:api-key-auth tagger_a:tagger

none="$(idle none)"
rewrite="$(idle rewrite)"
chain="$(idle chain)"
plus_one="$(idle chain-plus-one)"

taskset -c 0 "$BIN" --config "$OUT/chain/gateway.toml" >"$OUT/chain-load.log" 2>&1 &
pid=$!
PIDS+=("$pid")
wait_port "$FLUXGATE_PORT"
taskset -c 1 wrk -t1 -c50 -d"${LOAD_SECS}s" -H "$API_KEY_HEADER" "http://127.0.0.1:$FLUXGATE_PORT/" >"$OUT/wrk.txt" 2>&1 &
wrk_pid=$!
PIDS+=("$wrk_pid")
peak=0
for ((i = 0; i < LOAD_SECS * 4; i++)); do
    sleep 0.25
    now="$(rss_mb "$pid")"
    peak="$(awk -v a="$peak" -v b="$now" 'BEGIN { print (b > a) ? b : a }')"
done
wait "$wrk_pid" 2>/dev/null || true
kill -TERM "$pid"
wait "$pid" 2>/dev/null || true

echo "idle_none $none"
echo "idle_rewrite $rewrite"
echo "idle_chain $chain"
echo "idle_chain_plus_one $plus_one"
awk -v a="$plus_one" -v b="$chain" 'BEGIN { printf "per_extra_plugin %.1f\n", a - b }'
echo "load_chain $peak"
awk -v a="$peak" -v b="$chain" 'BEGIN { printf "load_ratio %.2f\n", a / b }'
echo "load_requests_per_s $(awk '/^Requests\/sec:/ {print $2}' "$OUT/wrk.txt")"
