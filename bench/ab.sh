#!/usr/bin/env bash
# A/B of two fluxgate binaries (say, main against a change): alternating wrk runs on the
# same setup as bench/run.sh, so the noise of a shared VM hits both alike.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY            # 3 rounds of: nginx proxy, A, B
#   BENCH_ROUNDS=5 BENCH_CONFIG=bench/out/fg-auth-rewrite.toml bench/ab.sh A B
#
# Per run it prints requests/s, p99, and CPU time per request of the process under test
# (utime + stime over the run, divided by requests). Needs nginx and wrk (run
# bench/run.sh once to install them); all traffic stays on 127.0.0.1.
#
# Environment:
#   BENCH_ROUNDS     rounds (default 3)
#   BENCH_DURATION   measured seconds per run (default 8; each run has a 2 s warm-up)
#   BENCH_CONNS      wrk connections (default 50)
#   BENCH_*_PORT     ports, as in bench/run.sh
#   BENCH_CONFIG     gateway config for both binaries (default: bench/fluxgate.toml.tmpl
#                    rendered for these ports; a config written by bench/run.sh, e.g.
#                    bench/out/fg-auth-rewrite.toml, compares plugin chains)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/bench"
OUT="$BENCH/out/ab"
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"
A="${1:?usage: bench/ab.sh BINARY_A BINARY_B}"
B="${2:?usage: bench/ab.sh BINARY_A BINARY_B}"
ROUNDS="${BENCH_ROUNDS:-3}"
DURATION="${BENCH_DURATION:-8}"
CONNS="${BENCH_CONNS:-50}"

for bin in "$A" "$B"; do
    [[ -x "$bin" ]] || { echo "ab: $bin is not an executable" >&2; exit 2; }
done
command -v wrk >/dev/null && command -v nginx >/dev/null ||
    { echo "ab: needs wrk and nginx (bench/run.sh installs them)" >&2; exit 2; }

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# wait_port PORT: until something answers HTTP there (at most ~10 s).
wait_port() {
    local i
    for ((i = 0; i < 100; i++)); do
        curl -fsS --max-time 1 -H "$API_KEY_HEADER" "http://127.0.0.1:$1/" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "ab: nothing answers on 127.0.0.1:$1" >&2
    exit 1
}

rm -rf "$OUT" && mkdir -p "$OUT"
for name in upstream proxy; do mkdir -p "$OUT/$name/logs" "$OUT/$name/tmp"; done
render "$BENCH/nginx-upstream.conf.tmpl" "$OUT/upstream/nginx.conf" PREFIX="$OUT/upstream" PORT="$UPSTREAM_PORT"
render "$BENCH/nginx-proxy.conf.tmpl" "$OUT/proxy/nginx.conf" \
    PREFIX="$OUT/proxy" PORT="$NGINX_PORT" UPSTREAM_PORT="$UPSTREAM_PORT"
CONFIG="${BENCH_CONFIG:-}"
if [[ -z "$CONFIG" ]]; then
    CONFIG="$OUT/fluxgate.toml"
    render "$BENCH/fluxgate.toml.tmpl" "$CONFIG" PORT="$FLUXGATE_PORT" UPSTREAM_PORT="$UPSTREAM_PORT"
fi
taskset -c 1 nginx -p "$OUT/upstream" -e "$OUT/upstream/error.log" -c "$OUT/upstream/nginx.conf" &
PIDS+=($!)
taskset -c 0 nginx -p "$OUT/proxy" -e "$OUT/proxy/error.log" -c "$OUT/proxy/nginx.conf" &
PIDS+=($!)
wait_port "$UPSTREAM_PORT"
wait_port "$NGINX_PORT"
# The nginx worker on core 0 (the master only forwards signals).
NGINX_WORKER="$(pgrep -P "${PIDS[1]}" | head -n 1)"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# measure PID PORT: one measured wrk run against PORT, charged to PID's CPU time.
measure() {
    local pid="$1" url="http://127.0.0.1:$2/" before after out
    taskset -c 1 wrk -t1 -c"$CONNS" -d2s -H "$API_KEY_HEADER" "$url" >/dev/null
    before="$(cpu_ticks "$pid")"
    out="$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "$API_KEY_HEADER" "$url")"
    after="$(cpu_ticks "$pid")"
    echo "$out" | awk -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" '
        /requests in/ { n = $1 } /Requests\/sec/ { r = $2 } $1 == "99%" { p = $2 }
        END { printf "%9.0f req/s  p99 %8s  cpu/request %6.2f us\n", r, p, ticks / hz * 1e6 / n }'
}

# run_binary BIN: starts it on core 0, measures, stops it.
run_binary() {
    taskset -c 0 "$1" --config "$CONFIG" >"$OUT/fluxgate.log" 2>&1 &
    local pid=$!
    wait_port "$FLUXGATE_PORT"
    measure "$pid" "$FLUXGATE_PORT"
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
}

echo "# A = $A"
echo "# B = $B"
for ((round = 1; round <= ROUNDS; round++)); do
    echo "nginx  $(measure "$NGINX_WORKER" "$NGINX_PORT")"
    echo "A      $(run_binary "$A")"
    echo "B      $(run_binary "$B")"
done
