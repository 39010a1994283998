#!/usr/bin/env bash
# The cost of plugins per language: component size, compile time, instantiation time and
# memory per instance (from `fluxgate-host plugin check --instances N`), and hook p50/p99
# on the request path (the gateway's fluxgate_plugin_call_duration_seconds histogram
# after a short wrk run per route). Rust: header-rewrite; JavaScript: js-canary; Python:
# py-allowlist. Short and quiet: one run of each; everything on 127.0.0.1.
#   bench/plugin-langs.sh          # builds what is missing (release gateway, plugins)
# Env: BENCH_DURATION (s, default 5), BENCH_CONNS (default 8), BENCH_INSTANCES (20).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=$PWD/bench
source "$BENCH/lib.sh"
DURATION=${BENCH_DURATION:-5}
CONNS=${BENCH_CONNS:-8}
INSTANCES=${BENCH_INSTANCES:-20}
OUT=$BENCH/out/plugin-langs
rm -rf "$OUT" && mkdir -p "$OUT/plugins.d" "$OUT/nginx/logs" "$OUT/nginx/tmp"

cargo build --release -q -p fluxgate-host
(cd plugins && cargo build --release -q --locked --target wasm32-wasip2 -p header-rewrite)
plugins/build-lang.sh
BIN=$PWD/target/release/fluxgate-host
cp plugins/target/wasm32-wasip2/release/header_rewrite.wasm "$OUT/plugins.d/header-rewrite.wasm"
cp plugins/target/lang/js-canary.wasm plugins/target/lang/py-allowlist.wasm "$OUT/plugins.d/"

RUST_CONFIG='{"request":{"set":{"x-env":"bench"}},"response":{"set":{"x-served-by":"fg"}}}'
JS_CONFIG='{"share":0.5}'
PY_CONFIG='{"allow":["127.0.0.0/8"]}'

echo "== plugin check --instances $INSTANCES"
for p in header-rewrite:"$RUST_CONFIG" js-canary:"$JS_CONFIG" py-allowlist:"$PY_CONFIG"; do
    name=${p%%:*}
    "$BIN" plugin check "$OUT/plugins.d/$name.wasm" --config "${p#*:}" --instances "$INSTANCES" \
        | tee "$OUT/$name.check.txt" | sed "s/^/  $name: /" | grep -E "component|compiled|init |instances|on-"
done

echo "== gateway resident memory with one plugin file loaded (no route uses it: no instance)"
for only in none header-rewrite js-canary py-allowlist; do
    rm -rf "$OUT/one" && mkdir -p "$OUT/one/plugins.d"
    [[ $only == none ]] || cp "$OUT/plugins.d/$only.wasm" "$OUT/one/plugins.d/"
    printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = 1\n[plugins]\ndir = "plugins.d"\n' "$FLUXGATE_PORT" >"$OUT/one/gateway.toml"
    "$BIN" --config "$OUT/one/gateway.toml" --log-level warn >"$OUT/one/gateway.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 1200); do
        health=$(curl -fsS "http://127.0.0.1:$FLUXGATE_PORT/api/v1/health" 2>/dev/null || true)
        [[ -n $health && ($only == none || $health == *"\"$only\""*) ]] && break
        sleep 0.1
    done
    sleep 1
    echo "  $only: $(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$pid/status") MiB"
    kill "$pid" && wait "$pid" 2>/dev/null || true
done

render "$BENCH/nginx-upstream.conf.tmpl" "$OUT/nginx/nginx.conf" PREFIX="$OUT/nginx" PORT="$UPSTREAM_PORT"
nginx -p "$OUT/nginx" -e "$OUT/nginx/error.log" -c "$OUT/nginx/nginx.conf" &
NGINX_PID=$!
cat >"$OUT/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$FLUXGATE_PORT"
workers = 1
access_log = false
[plugins]
dir = "plugins.d"
[upstreams.u]
targets = [{ url = "http://127.0.0.1:$UPSTREAM_PORT" }]
[[routes]]
path = "/rust/*"
upstream = "u"
plugins = [{ name = "header-rewrite", config = { request = { set = { x-env = "bench" } }, response = { set = { x-served-by = "fg" } } } }]
[[routes]]
path = "/js/*"
upstream = "u"
plugins = [{ name = "js-canary", config = { share = 0.5 } }]
[[routes]]
path = "/py/*"
upstream = "u"
plugins = [{ name = "py-allowlist", config = { allow = ["127.0.0.0/8"] } }]
TOML
"$BIN" --config "$OUT/gateway.toml" --log-level warn >"$OUT/gateway.log" 2>&1 &
GW_PID=$!
trap 'kill $GW_PID $NGINX_PID 2>/dev/null || true' EXIT
# Every route answers once its plugin is compiled (the JavaScript and Python ones take
# seconds): wait for all three, at most 120 s.
for _ in $(seq 1 1200); do
    ready=0
    for route in rust js py; do
        curl -fsS -o /dev/null "http://127.0.0.1:$FLUXGATE_PORT/$route/x" 2>/dev/null && ready=$((ready + 1))
    done
    (( ready == 3 )) && break
    sleep 0.1
done
(( ready == 3 )) || { echo "the gateway did not serve the three routes" >&2; exit 1; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$GW_PID/status"; }
echo "== gateway RSS with the three plugins loaded, one instance each: $(( $(rss_kib) / 1024 )) MiB"
for route in rust js py; do
    wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$FLUXGATE_PORT/$route/x" >"$OUT/$route.wrk.txt"
    echo "  /$route/: $(grep -E 'Requests/sec' "$OUT/$route.wrk.txt")"
done
echo "== gateway RSS after the runs: $(( $(rss_kib) / 1024 )) MiB"
curl -fsS "http://127.0.0.1:$FLUXGATE_PORT/metrics" >"$OUT/metrics.txt"
echo "== hook calls on the request path (fluxgate_plugin_call_duration_seconds)"
python3 - "$OUT/metrics.txt" <<'PY'
import re, sys
buckets = {}
for line in open(sys.argv[1]):
    m = re.match(r'fluxgate_plugin_call_duration_seconds_bucket\{hook="([^"]+)",plugin="([^"]+)",le="([^"]+)"\} (\d+)', line)
    if m:
        hook, plugin, le, n = m.groups()
        buckets.setdefault((plugin, hook), []).append((float('inf') if le == '+Inf' else float(le), int(n)))
def quantile(bs, q):
    bs.sort()
    want, prev_le, prev_n = q * bs[-1][1], 0.0, 0
    for le, n in bs:
        if n >= want:
            return prev_le if le == float('inf') else prev_le + (le - prev_le) * (want - prev_n) / max(n - prev_n, 1)
        prev_le, prev_n = le, n
for (plugin, hook), bs in sorted(buckets.items()):
    total = max(n for _, n in bs)
    if total:
        print(f"  {plugin:15} {hook:12} calls {total:8}  p50 {quantile(bs, .5)*1e6:8.1f} us  p99 {quantile(bs, .99)*1e6:8.1f} us")
PY
