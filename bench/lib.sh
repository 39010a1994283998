# Shared by bench/run.sh and bench/ab.sh (sourced, not run): ports, the request header,
# and config rendering, so both scripts benchmark the same setup.

UPSTREAM_PORT="${BENCH_UPSTREAM_PORT:-18081}"
NGINX_PORT="${BENCH_NGINX_PORT:-18082}"
FLUXGATE_PORT="${BENCH_FLUXGATE_PORT:-18083}"
REDIS_PORT="${BENCH_REDIS_PORT:-18084}"

# Every request carries an API key (the api-key-auth setup needs it; others ignore it).
API_KEY_HEADER="x-api-key: bench-key"

# render TEMPLATE DEST key=value...: copies TEMPLATE to DEST with each @key@ replaced.
render() {
    local tmpl="$1" dest="$2" expr=() kv
    shift 2
    for kv in "$@"; do
        expr+=(-e "s|@${kv%%=*}@|${kv#*=}|g")
    done
    sed "${expr[@]}" "$tmpl" >"$dest"
}
