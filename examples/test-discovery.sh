#!/usr/bin/env bash
# Distributed discovery: two FluxGate nodes gossip; a service registered on the first
# is served by the second.
#
#   examples/test-discovery.sh     (node 1: :8080 + gossip 7946, node 2: :8081 + gossip 7947)
#
# Everything runs on 127.0.0.1 and is stopped when the script ends. Exits non-zero if
# the second node does not serve the service within 10 s.
# shellcheck source=examples/demo-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/demo-lib.sh"
BACKEND_PORT="${BACKEND_PORT:-8002}"

build_gateway

step "backend on 127.0.0.1:$BACKEND_PORT (python3 http.server)"
start_backend "$BACKEND_PORT" api "served by the backend"

step "node 1: fluxgate-host --port 8080 --gossip-port 7946"
mkdir -p "$WORK/n1" "$WORK/n2"
(cd "$WORK/n1" && exec "$BIN" --port 8080 --gossip-port 7946) >"$WORK/n1.log" 2>&1 &
PIDS+=($!)
step "node 2: fluxgate-host --port 8081 --gossip-port 7947 --join localhost:7946"
(cd "$WORK/n2" && exec "$BIN" --port 8081 --gossip-port 7947 --join localhost:7946) >"$WORK/n2.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:8080/api/v1/health"
wait_http "http://127.0.0.1:8081/api/v1/health"

step "register my-service on node 1"
curl -sS -X POST http://127.0.0.1:8080/api/v1/services/register \
  -d "{\"id\":\"my-service-1\",\"service\":\"my-service\",\"address\":\"127.0.0.1\",\"port\":$BACKEND_PORT}"
echo

step "GET /my-service/api on node 2"
for _ in $(seq 1 100); do
    if body="$(curl -fsS http://127.0.0.1:8081/my-service/api 2>/dev/null)"; then
        echo "$body"
        step "cluster members seen by node 2"
        curl -sS http://127.0.0.1:8081/api/v1/health; echo
        exit 0
    fi
    sleep 0.1
done
echo "node 2 did not serve my-service within 10 s" >&2
tail -n 20 "$WORK/n1.log" "$WORK/n2.log" >&2
exit 1
