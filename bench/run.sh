#!/usr/bin/env bash
# FluxGate proxy benchmark: direct upstream vs nginx reverse proxy vs fluxgate.
#
#   bench/run.sh                         # 50 connections, 10 s per setup
#   BENCH_CONNS=200 BENCH_DURATION=30 bench/run.sh
#
# Layout (2-core machine): the proxy under test is pinned to core 0; wrk and the
# upstream nginx share core 1. All traffic stays on 127.0.0.1. Everything the script
# writes goes to bench/out/ (gitignored); the table is also saved to bench/out/results.txt.
#
# Environment:
#   BENCH_CONNS            wrk connections                       (default 50)
#   BENCH_DURATION         measured run, seconds                 (default 10)
#   BENCH_WARMUP           warm-up run, seconds                  (default 2)
#   BENCH_PATH             request path                          (default /)
#   BENCH_UPSTREAM_PORT    upstream nginx port                   (default 18081)
#   BENCH_NGINX_PORT       nginx reverse proxy port              (default 18082)
#   BENCH_FLUXGATE_PORT    fluxgate port                         (default 18083)
#   BENCH_SETUPS           which setups to run, space-separated
#                          (default "direct nginx fluxgate fg-rewrite fg-auth-rewrite":
#                          fg-rewrite = fluxgate + header-rewrite plugin,
#                          fg-auth-rewrite = fluxgate + api-key-auth + header-rewrite;
#                          also available: fg-limits = fluxgate + route and per-user
#                          token-bucket limits that never refuse; fg-cluster-limits = the
#                          same limits with scope = "cluster", counted in a local
#                          redis-server; run both to get the cluster/node ratio, e.g.
#                          BENCH_SETUPS="fg-limits fg-cluster-limits"; fg-flood = the
#                          plain route of a gateway that also has a `spin` plugin route
#                          (a plugin that never returns) and a header-rewrite route, first
#                          alone, then while BENCH_FLOOD_CONNS (default 200) connections
#                          flood the spin route, and the rewrite route under the flood)
#                          TLS: nginx-https / fg-https = TLS 1.3 with keep-alive (wrk, HTTP/1.1),
#                          nginx-h2 / fg-h2 = HTTP/2 over TLS (h2load, BENCH_H2_CONNS
#                          connections x BENCH_H2_STREAMS streams); both proxies get the same
#                          ECDSA P-256 certificate (made with openssl in bench/out/tls/) and
#                          one worker on core 0, e.g.
#                          BENCH_SETUPS="nginx-https fg-https nginx-h2 fg-h2")
#                          Tracing: fg-trace-1 / fg-trace-001 = fluxgate with spans
#                          exported over OTLP/HTTP (to the upstream nginx, which accepts
#                          and drops them) at sampling 1.0 / 0.01; fg-trace-off = request
#                          ids and trace context turned off too (plain `fluxgate` has
#                          them on, without an exporter), e.g.
#                          BENCH_SETUPS="fluxgate fg-trace-off fg-trace-1 fg-trace-001"
#   BENCH_REDIS_PORT       redis-server port for fg-cluster-limits   (default 18084)
#   BENCH_TLS_PORT         TLS port of the proxy under test          (default 18085)
#   BENCH_H2_CONNS         h2load connections                        (default 10)
#   BENCH_H2_STREAMS       h2load concurrent streams per connection  (default 10)
#   BENCH_FLUXGATE_BIN     the fluxgate binary to run (default: the release build; a
#                          debug binary is fine for a smoke run of the script itself)
#   BENCH_SKIP_BUILD=1     use the existing release binary instead of running cargo build
#   BENCH_PERF=1           perf record fluxgate during its measured run (bench/out/fluxgate.perf.txt);
#                          fluxgate then writes /tmp/perf-PID.map (FLUXGATE_PERF_MAP) so samples
#                          inside plugins are named (build plugins with CARGO_PROFILE_RELEASE_STRIP=false
#                          to see their function names)
#   BENCH_PERF_CALLGRAPH   perf's --call-graph mode (default dwarf: the release binary has no
#                          frame pointers, so "fp" only shows leaf functions)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/bench"
OUT="$BENCH/out"
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

CONNS="${BENCH_CONNS:-50}"
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
REQ_PATH="${BENCH_PATH:-/}"
SETUPS="${BENCH_SETUPS:-direct nginx fluxgate fg-rewrite fg-auth-rewrite}"
FLOOD_CONNS="${BENCH_FLOOD_CONNS:-200}"
TLS_PORT="${BENCH_TLS_PORT:-18085}"
H2_CONNS="${BENCH_H2_CONNS:-10}"
H2_STREAMS="${BENCH_H2_STREAMS:-10}"
SKIP_BUILD="${BENCH_SKIP_BUILD:-0}"
PERF="${BENCH_PERF:-0}"
PERF_CALLGRAPH="${BENCH_PERF_CALLGRAPH:-dwarf}"
[[ "$PERF" == 1 ]] && export FLUXGATE_PERF_MAP=1
FLUXGATE_BIN="${BENCH_FLUXGATE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/fluxgate-host}"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

for v in CONNS DURATION WARMUP UPSTREAM_PORT NGINX_PORT FLUXGATE_PORT TLS_PORT H2_CONNS H2_STREAMS; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
(( CONNS >= 1 && DURATION >= 1 )) || die "BENCH_CONNS and BENCH_DURATION must be >= 1"

# ---------------------------------------------------------------- cleanup -------------
PIDS=()
cleanup() {
    local pid i
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Stops one process started by this script (and removes it from PIDS).
stop_pid() {
    local pid="$1" i p keep=()
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

# ---------------------------------------------------------------- dependencies --------
SUDO=()
if (( EUID != 0 )); then
    command -v sudo >/dev/null 2>&1 && SUDO=(sudo)
fi

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* manually"
    log "installing: $*"
    if ! DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y "$@"; then
        log "install failed; running apt-get update and retrying"
        "${SUDO[@]}" apt-get update
        DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y "$@"
    fi
}

ensure_tools() {
    local missing=() nginx_bin
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    nginx_bin="$(command -v nginx 2>/dev/null || true)"
    [[ -n "$nginx_bin" || -x /usr/sbin/nginx ]] || missing+=(nginx)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
    if [[ " $SETUPS " == *" fg-cluster-limits "* ]]; then
        command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    fi
    if [[ " $SETUPS " == *"-https "* || " $SETUPS " == *"-h2 "* ]]; then
        command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    fi
    if [[ " $SETUPS " == *"-h2 "* ]]; then
        command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
    fi
    if (( ${#missing[@]} > 0 )); then
        apt_install "${missing[@]}"
    fi
    NGINX="$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)"
    [[ -x "$NGINX" ]] || die "nginx not found after install"
    command -v wrk >/dev/null 2>&1 || die "wrk not found after install"
    command -v cargo >/dev/null 2>&1 || [[ "$SKIP_BUILD" == 1 ]] || die "cargo not found (install a Rust toolchain first)"
    if (( $(nproc) < 2 )); then
        log "warning: fewer than 2 cores; the core pinning (0 = proxy, 1 = wrk + upstream) will overlap"
    fi
}

# ---------------------------------------------------------------- helpers -------------
port_in_use() {
    timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# start NAME CMD...: starts CMD in the background, logging to out/NAME.log; sets STARTED_PID.
start() {
    local name="$1"
    shift
    "$@" >"$OUT/$name.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    log "started $name (pid $STARTED_PID): $*"
}

# wait_ready NAME PID PORT [SCHEME]: polls until the server answers 200 "ok" (at most
# ~10 s); https is not verified (the benchmark's certificate is self-signed).
wait_ready() {
    local name="$1" pid="$2" port="$3" scheme="${4:-http}" i body
    for ((i = 0; i < 100; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$OUT/$name.log" >&2 || true
            die "$name exited during startup (log: $OUT/$name.log)"
        fi
        if body="$(curl -kfsS --max-time 1 -H "$API_KEY_HEADER" "$scheme://127.0.0.1:$port$REQ_PATH" 2>/dev/null)"; then
            [[ "$body" == "ok" ]] || die "$name answered with an unexpected body: '$body'"
            log "$name ready on 127.0.0.1:$port"
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$OUT/$name.log" >&2 || true
    die "$name did not answer on 127.0.0.1:$port within 10 s"
}

nginx_prefix() {
    local name="$1"
    rm -rf "${OUT:?}/$name"
    mkdir -p "$OUT/$name/logs" "$OUT/$name/tmp"
    echo "$OUT/$name"
}

# Converts a wrk latency ("850.00us", "1.23ms", "1.02s", "1.50m") to milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        else if (u != "ms") { print "?"; exit }
        printf "%.3f", n }'
}


# plugin_quantiles SETUP PORT: p50/p99 of each plugin hook call, from the gateway's own
# fluxgate_plugin_call_duration_seconds histogram (measured on the request path).
plugin_quantiles() {
    local setup="$1" port="$2"
    curl -fsS --max-time 2 "http://127.0.0.1:$port/metrics" >"$OUT/$setup.metrics.txt" || return 0
    python3 - "$OUT/$setup.metrics.txt" <<'PY' | tee -a "$OUT/plugin-calls.txt"
import re, sys
buckets = {}
for line in open(sys.argv[1]):
    m = re.match(r'fluxgate_plugin_call_duration_seconds_bucket\{hook="([^"]+)",plugin="([^"]+)",le="([^"]+)"\} (\d+)', line)
    if m:
        hook, plugin, le, n = m.groups()
        buckets.setdefault((plugin, hook), []).append((float('inf') if le == '+Inf' else float(le), int(n)))
def quantile(bs, q):
    bs.sort()
    total = bs[-1][1]
    if total == 0:
        return None
    want, prev_le, prev_n = q * total, 0.0, 0
    for le, n in bs:
        if n >= want:
            if le == float('inf'):
                return prev_le
            return prev_le + (le - prev_le) * (want - prev_n) / max(n - prev_n, 1)
        prev_le, prev_n = le, n
for (plugin, hook), bs in sorted(buckets.items()):
    total = max(n for _, n in bs)
    if total == 0:
        continue
    p50, p99 = quantile(bs, 0.5), quantile(bs, 0.99)
    print(f"  plugin {plugin:15} {hook:12} calls {total:9}  p50 {p50*1e6:7.2f} us  p99 {p99*1e6:7.2f} us")
PY
}

ROWS=()
# run_wrk SETUP PORT [PID-to-profile [SCHEME]]
run_wrk() {
    local setup="$1" port="$2" prof_pid="${3:-}" url="${4:-http}://127.0.0.1:$2$REQ_PATH" out perf_pid=""
    out="$OUT/$setup.wrk.txt"
    log "$setup: warm-up ${WARMUP}s"
    if (( WARMUP > 0 )); then
        taskset -c 1 wrk -t1 -c"$CONNS" -d"${WARMUP}s" -H "$API_KEY_HEADER" "$url" >"$OUT/$setup.warmup.txt" 2>&1
    fi
    if [[ "$PERF" == 1 && -n "$prof_pid" ]]; then
        if command -v perf >/dev/null 2>&1; then
            perf record -F 999 --call-graph "$PERF_CALLGRAPH" -p "$prof_pid" -o "$OUT/$setup.perf.data" -- sleep "$DURATION" \
                >"$OUT/$setup.perf.log" 2>&1 &
            perf_pid=$!
            PIDS+=("$perf_pid")
        else
            log "perf not found; skipping profile"
        fi
    fi
    log "$setup: measuring -c$CONNS -d${DURATION}s $url"
    taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "$API_KEY_HEADER" "$url" >"$out" 2>&1
    if [[ -n "$perf_pid" ]]; then
        wait "$perf_pid" 2>/dev/null || true
        stop_pid "$perf_pid"
        perf report -i "$OUT/$setup.perf.data" --no-children --percent-limit 0.5 --stdio \
            >"$OUT/$setup.perf.txt" 2>/dev/null || true
        log "$setup: profile in $OUT/$setup.perf.txt"
    fi

    local rps p50 p99 non2xx sockerr
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    p50="$(awk '$1 == "50%" {print $2}' "$out")"
    p99="$(awk '$1 == "99%" {print $2}' "$out")"
    non2xx="$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")"
    sockerr="$(awk -F'Socket errors: ' '/Socket errors:/ {print $2}' "$out")"
    [[ -n "$rps" && -n "$p50" && -n "$p99" ]] || { cat "$out" >&2; die "$setup: cannot parse wrk output"; }
    ROWS+=("$setup|$rps|$(to_ms "$p50")|$(to_ms "$p99")|${non2xx:-0}|${sockerr:-none}")
}

# run_h2load SETUP PORT: HTTP/2 over TLS; req/s from h2load, p50/p99 from its per-request log.
run_h2load() {
    local setup="$1" port="$2" url="https://127.0.0.1:$2$REQ_PATH" out="$OUT/$1.h2load.txt"
    log "$setup: h2load -c$H2_CONNS -m$H2_STREAMS warm-up ${WARMUP}s, measuring ${DURATION}s $url"
    taskset -c 1 h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" --warm-up-time="${WARMUP}s" -D"$DURATION" \
        -H "$API_KEY_HEADER" --log-file="$OUT/$setup.h2load.log" "$url" >"$out" 2>&1 ||
        { cat "$out" >&2; die "$setup: h2load failed"; }
    local rps non2xx p50 p99
    rps="$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$out")"
    non2xx="$(awk '/^status codes:/ {gsub(",", ""); print $5 + $7 + $9}' "$out")"
    read -r p50 p99 < <(python3 - "$OUT/$setup.h2load.log" <<'PY'
import sys
times = sorted(int(line.split("\t")[2]) for line in open(sys.argv[1]) if line.count("\t") >= 2)
pick = lambda q: times[min(len(times) - 1, int(q * len(times)))] / 1000 if times else float("nan")
print(f"{pick(0.50):.3f} {pick(0.99):.3f}")
PY
)
    [[ -n "$rps" ]] || { cat "$out" >&2; die "$setup: cannot parse h2load output"; }
    ROWS+=("$setup|$rps|$p50|$p99|${non2xx:-0}|h2load")
}

# tls_cert: the benchmark's ECDSA P-256 certificate (self-signed, made once).
tls_cert() {
    TLS_DIR="$OUT/tls"
    if [[ ! -s "$TLS_DIR/cert.pem" ]]; then
        mkdir -p "$TLS_DIR"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
            -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test,IP:127.0.0.1" \
            -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" >"$OUT/openssl.log" 2>&1 ||
            { cat "$OUT/openssl.log" >&2; die "openssl could not make the certificate"; }
    fi
}

# run_tls SETUP: nginx-https, fg-https (wrk, HTTP/1.1 keep-alive), nginx-h2, fg-h2 (h2load).
run_tls() {
    local setup="$1" http2=false pid
    [[ "$setup" == *-h2 ]] && http2=true
    tls_cert
    case "$setup" in
        nginx-*)
            prefix="$(nginx_prefix "$setup")"
            local h2_word=""
            [[ "$http2" == true ]] && h2_word="http2"
            render "$BENCH/nginx-tls.conf.tmpl" "$prefix/nginx.conf" PREFIX="$prefix" PORT="$TLS_PORT" \
                UPSTREAM_PORT="$UPSTREAM_PORT" CERT="$TLS_DIR/cert.pem" KEY="$TLS_DIR/key.pem" HTTP2="$h2_word"
            start "$setup" taskset -c 0 "$NGINX" -p "$prefix" -e "$prefix/error.log" -c "$prefix/nginx.conf"
            ;;
        fg-*)
            render "$BENCH/fluxgate-tls.toml.tmpl" "$OUT/$setup.toml" PORT="$FLUXGATE_PORT" TLS_PORT="$TLS_PORT" \
                UPSTREAM_PORT="$UPSTREAM_PORT" CERT="$TLS_DIR/cert.pem" KEY="$TLS_DIR/key.pem" HTTP2="$http2"
            start "$setup" taskset -c 0 "$FLUXGATE_BIN" --config "$OUT/$setup.toml"
            ;;
    esac
    pid="$STARTED_PID"
    wait_ready "$setup" "$pid" "$TLS_PORT" https
    if [[ "$http2" == true ]]; then
        run_h2load "$setup" "$TLS_PORT"
    else
        run_wrk "$setup" "$TLS_PORT" "$pid" https
    fi
    stop_pid "$pid"
}

# ---------------------------------------------------------------- main ----------------
ensure_tools
mkdir -p "$OUT"
cd "$ROOT"

if [[ " $SETUPS " == *" fg-rewrite "* || " $SETUPS " == *" fg-auth-rewrite "* || " $SETUPS " == *" fg-flood "* ]]; then
    log "building the plugins (wasm32-wasip2, release)"
    rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
    [[ "${BENCH_SKIP_PLUGIN_BUILD:-0}" == 1 ]] || (cd "$ROOT/plugins" && cargo build --release --target wasm32-wasip2)
    PLUGIN_DIR="$OUT/plugins.d"
    rm -rf "$PLUGIN_DIR" && mkdir -p "$PLUGIN_DIR"
    cp "$ROOT/plugins/target/wasm32-wasip2/release/header_rewrite.wasm" "$PLUGIN_DIR/header-rewrite.wasm"
    cp "$ROOT/plugins/target/wasm32-wasip2/release/api_key_auth.wasm" "$PLUGIN_DIR/api-key-auth.wasm"
    cp "$ROOT/plugins/target/wasm32-wasip2/release/spin.wasm" "$PLUGIN_DIR/spin.wasm"
fi
: >"$OUT/plugin-calls.txt"
: >"$OUT/trace-spans.txt"

if [[ " $SETUPS " == *" f"* ]]; then
    if [[ "$SKIP_BUILD" == 1 ]]; then
        log "BENCH_SKIP_BUILD=1: using existing $FLUXGATE_BIN"
    else
        log "building fluxgate-host (release)"
        cargo build --release -p fluxgate-host
    fi
    [[ -x "$FLUXGATE_BIN" ]] || die "$FLUXGATE_BIN not found"
fi

for p in "$UPSTREAM_PORT" "$NGINX_PORT" "$FLUXGATE_PORT" "$REDIS_PORT" "$TLS_PORT"; do
    port_in_use "$p" && die "port $p is already in use on 127.0.0.1 (set BENCH_*_PORT)"
done

# Upstream: nginx on core 1 (shared with wrk).
prefix="$(nginx_prefix upstream)"
render "$BENCH/nginx-upstream.conf.tmpl" "$prefix/nginx.conf" PREFIX="$prefix" PORT="$UPSTREAM_PORT"
start upstream taskset -c 1 "$NGINX" -p "$prefix" -e "$prefix/error.log" -c "$prefix/nginx.conf"
wait_ready upstream "$STARTED_PID" "$UPSTREAM_PORT"

for setup in $SETUPS; do
    case "$setup" in
        direct)
            run_wrk direct "$UPSTREAM_PORT"
            ;;
        nginx)
            prefix="$(nginx_prefix nginx-proxy)"
            render "$BENCH/nginx-proxy.conf.tmpl" "$prefix/nginx.conf" \
                PREFIX="$prefix" PORT="$NGINX_PORT" UPSTREAM_PORT="$UPSTREAM_PORT"
            start nginx-proxy taskset -c 0 "$NGINX" -p "$prefix" -e "$prefix/error.log" -c "$prefix/nginx.conf"
            pid="$STARTED_PID"
            wait_ready nginx-proxy "$pid" "$NGINX_PORT"
            run_wrk nginx "$NGINX_PORT"
            stop_pid "$pid"
            ;;
        fluxgate)
            render "$BENCH/fluxgate.toml.tmpl" "$OUT/fluxgate.toml" \
                PORT="$FLUXGATE_PORT" UPSTREAM_PORT="$UPSTREAM_PORT"
            start fluxgate taskset -c 0 "$FLUXGATE_BIN" --config "$OUT/fluxgate.toml"
            pid="$STARTED_PID"
            wait_ready fluxgate "$pid" "$FLUXGATE_PORT"
            run_wrk fluxgate "$FLUXGATE_PORT" "$pid"
            stop_pid "$pid"
            ;;
        fg-trace-1 | fg-trace-001 | fg-trace-off)
            ratio=1.0 context=true export="otlp_endpoint = \"http://127.0.0.1:$UPSTREAM_PORT\""
            [[ "$setup" == fg-trace-001 ]] && ratio=0.01
            [[ "$setup" == fg-trace-off ]] && context=false export=""
            render "$BENCH/fluxgate-trace.toml.tmpl" "$OUT/$setup.toml" \
                PORT="$FLUXGATE_PORT" UPSTREAM_PORT="$UPSTREAM_PORT" RATIO="$ratio" \
                TRACE_CONTEXT="$context" EXPORT="$export"
            start "$setup" taskset -c 0 "$FLUXGATE_BIN" --config "$OUT/$setup.toml"
            pid="$STARTED_PID"
            wait_ready "$setup" "$pid" "$FLUXGATE_PORT"
            run_wrk "$setup" "$FLUXGATE_PORT" "$pid"
            curl -fsS --max-time 2 "http://127.0.0.1:$FLUXGATE_PORT/metrics" 2>/dev/null |
                grep '^fluxgate_trace_spans' | sed "s/^/$setup: /" >>"$OUT/trace-spans.txt" || true
            stop_pid "$pid"
            ;;
        fg-limits)
            render "$BENCH/fluxgate-limits.toml.tmpl" "$OUT/fg-limits.toml" \
                PORT="$FLUXGATE_PORT" UPSTREAM_PORT="$UPSTREAM_PORT"
            start fg-limits taskset -c 0 "$FLUXGATE_BIN" --config "$OUT/fg-limits.toml"
            pid="$STARTED_PID"
            wait_ready fg-limits "$pid" "$FLUXGATE_PORT"
            run_wrk fg-limits "$FLUXGATE_PORT" "$pid"
            stop_pid "$pid"
            ;;
        fg-cluster-limits)
            # Redis shares core 1 with wrk and the upstream (the gateway keeps core 0), at
            # a higher priority so a saturating wrk cannot starve it into timeouts.
            start redis taskset -c 1 nice -n -10 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
                --save "" --appendonly no --daemonize no
            redis_pid="$STARTED_PID"
            for ((i = 0; i < 100; i++)); do
                [[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]] && break
                sleep 0.1
            done
            [[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]] || die "redis-server did not start"
            render "$BENCH/fluxgate-cluster-limits.toml.tmpl" "$OUT/fg-cluster-limits.toml" \
                PORT="$FLUXGATE_PORT" UPSTREAM_PORT="$UPSTREAM_PORT" REDIS_PORT="$REDIS_PORT"
            start fg-cluster-limits taskset -c 0 "$FLUXGATE_BIN" --config "$OUT/fg-cluster-limits.toml"
            pid="$STARTED_PID"
            wait_ready fg-cluster-limits "$pid" "$FLUXGATE_PORT"
            # The gateway connects to Redis in the background: wait until it has.
            for ((i = 0; i < 100; i++)); do
                curl -fsS --max-time 1 "http://127.0.0.1:$FLUXGATE_PORT/metrics" 2>/dev/null \
                    | grep -q '^fluxgate_cluster_redis_up 1' && break
                sleep 0.1
            done
            run_wrk fg-cluster-limits "$FLUXGATE_PORT" "$pid"
            curl -fsS --max-time 2 "http://127.0.0.1:$FLUXGATE_PORT/metrics" 2>/dev/null \
                | grep -E '^fluxgate_(cluster_redis_calls_total|rate_limit_fallback_total|cluster_redis_up)' \
                >"$OUT/fg-cluster-limits.redis.txt" || true
            stop_pid "$pid"
            stop_pid "$redis_pid"
            ;;
        fg-rewrite | fg-auth-rewrite)
            rewrite='{ name = "header-rewrite", config = { request = { set = { x-bench = "1" } }, response = { set = { x-served-by = "fluxgate" } } } }'
            auth='{ name = "api-key-auth", config = { keys = { "bench-key" = "bench" } } }'
            chain="$rewrite"
            [[ "$setup" == fg-auth-rewrite ]] && chain="$auth, $rewrite"
            render "$BENCH/fluxgate-plugins.toml.tmpl" "$OUT/$setup.toml" \
                PORT="$FLUXGATE_PORT" UPSTREAM_PORT="$UPSTREAM_PORT" PLUGIN_DIR="$PLUGIN_DIR" CHAIN="$chain"
            start "$setup" taskset -c 0 "$FLUXGATE_BIN" --config "$OUT/$setup.toml"
            pid="$STARTED_PID"
            wait_ready "$setup" "$pid" "$FLUXGATE_PORT"
            run_wrk "$setup" "$FLUXGATE_PORT" "$pid"
            echo "$setup:" >>"$OUT/plugin-calls.txt"
            plugin_quantiles "$setup" "$FLUXGATE_PORT"
            stop_pid "$pid"
            ;;
        fg-flood)
            render "$BENCH/fluxgate-flood.toml.tmpl" "$OUT/fg-flood.toml" \
                PORT="$FLUXGATE_PORT" UPSTREAM_PORT="$UPSTREAM_PORT" PLUGIN_DIR="$PLUGIN_DIR"
            start fg-flood taskset -c 0 "$FLUXGATE_BIN" --config "$OUT/fg-flood.toml"
            pid="$STARTED_PID"
            wait_ready fg-flood "$pid" "$FLUXGATE_PORT"
            run_wrk fg-plain-alone "$FLUXGATE_PORT" "$pid"
            flood_secs=$((WARMUP + DURATION + 3))
            log "fg-flood: flooding /spin/ with ${FLOOD_CONNS} connections for ${flood_secs}s"
            taskset -c 1 wrk -t1 -c"$FLOOD_CONNS" -d"${flood_secs}s" \
                "http://127.0.0.1:$FLUXGATE_PORT/spin/x" >"$OUT/fg-flood.spin.wrk.txt" 2>&1 &
            flood_pid=$!
            PIDS+=("$flood_pid")
            sleep 1
            run_wrk fg-plain-flooded "$FLUXGATE_PORT" "$pid"
            REQ_PATH_SAVED="$REQ_PATH"
            REQ_PATH="/rewrite/x"
            run_wrk fg-rewrite-flooded "$FLUXGATE_PORT" "$pid"
            REQ_PATH="$REQ_PATH_SAVED"
            wait "$flood_pid" 2>/dev/null || true
            stop_pid "$flood_pid"
            echo "fg-flood (after the flood):" >>"$OUT/plugin-calls.txt"
            curl -fsS --max-time 2 "http://127.0.0.1:$FLUXGATE_PORT/metrics" |
                grep -E '^fluxgate_plugin_(errors_total|breaker_state)' | sed 's/^/  /' \
                >>"$OUT/plugin-calls.txt" || true
            stop_pid "$pid"
            ;;
        nginx-https | fg-https | nginx-h2 | fg-h2)
            run_tls "$setup"
            ;;
        *)
            die "unknown setup '$setup' (expected direct, nginx, fluxgate, fg-trace-1, fg-trace-001, fg-trace-off, fg-limits, fg-cluster-limits, fg-rewrite, fg-auth-rewrite, fg-flood, nginx-https, fg-https, nginx-h2, fg-h2)"
            ;;
    esac
done

# ---------------------------------------------------------------- report --------------
{
    printf '# %s  conns=%s duration=%ss warmup=%ss path=%s  commit=%s\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$CONNS" "$DURATION" "$WARMUP" "$REQ_PATH" \
        "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    printf '%-16s %12s %10s %10s %9s  %s\n' setup 'req/s' 'p50(ms)' 'p99(ms)' 'non-2xx' 'socket errors'
    for row in "${ROWS[@]}"; do
        IFS='|' read -r s rps p50 p99 non2xx sockerr <<<"$row"
        printf '%-16s %12s %10s %10s %9s  %s\n' "$s" "$rps" "$p50" "$p99" "$non2xx" "$sockerr"
    done
    node_rps="" cluster_rps=""
    for row in "${ROWS[@]}"; do
        IFS='|' read -r s rps _ <<<"$row"
        [[ "$s" == fg-limits ]] && node_rps="$rps"
        [[ "$s" == fg-cluster-limits ]] && cluster_rps="$rps"
    done
    if [[ -n "$node_rps" && -n "$cluster_rps" ]]; then
        awk -v c="$cluster_rps" -v n="$node_rps" 'BEGIN {
            printf "cluster-scoped / node-scoped limits: %.1f%% of the throughput (target >= 85%%)\n", 100 * c / n }'
    fi
    if [[ -s "$OUT/fg-cluster-limits.redis.txt" ]]; then
        echo "fg-cluster-limits Redis use:"
        sed 's/^/  /' "$OUT/fg-cluster-limits.redis.txt"
    fi
    if [[ -s "$OUT/trace-spans.txt" ]]; then
        echo "spans (exported / dropped) of the fg-trace-* setups:"
        sed 's/^/  /' "$OUT/trace-spans.txt"
    fi
    if [[ -s "$OUT/plugin-calls.txt" ]]; then
        echo "plugin hook calls (gateway histogram, includes instance checkout/return):"
        cat "$OUT/plugin-calls.txt"
    fi
} | tee "$OUT/results.txt"
log "raw wrk output: $OUT/*.wrk.txt; table: $OUT/results.txt"
