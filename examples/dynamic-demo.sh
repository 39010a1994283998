#!/usr/bin/env bash
# Dynamic registry demo: start a gateway, start a backend, register it, call it through
# the gateway at /my-api/*, deregister it, and see the route go away.
#
#   examples/dynamic-demo.sh            (ports: gateway 8080, backend 8001)
#
# Everything runs on 127.0.0.1 and is stopped when the script ends.
# shellcheck source=examples/demo-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/demo-lib.sh"
GW_PORT="${GW_PORT:-8080}"
BACKEND_PORT="${BACKEND_PORT:-8001}"

build_gateway

step "backend on 127.0.0.1:$BACKEND_PORT (python3 http.server)"
start_backend "$BACKEND_PORT" health "hello from my-api"

step "starting FluxGate on :$GW_PORT (no config)"
(cd "$WORK" && exec "$BIN" --port "$GW_PORT") >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$GW_PORT/api/v1/health"

step "registering my-api-1 -> 127.0.0.1:$BACKEND_PORT"
curl -sS -X POST "http://127.0.0.1:$GW_PORT/api/v1/services/register" \
  -H 'Content-Type: application/json' \
  -d "{\"id\":\"my-api-1\",\"service\":\"my-api\",\"address\":\"127.0.0.1\",\"port\":$BACKEND_PORT,\"metadata\":{\"version\":\"1.0\"}}"
echo

step "GET /my-api/health through the gateway"
curl -sS "http://127.0.0.1:$GW_PORT/my-api/health"

step "GET /api/v1/services"
curl -sS "http://127.0.0.1:$GW_PORT/api/v1/services"; echo

step "deregistering my-api-1"
curl -sS -X DELETE "http://127.0.0.1:$GW_PORT/api/v1/services/deregister?id=my-api-1"; echo

step "GET /my-api/health again (the route is gone: 404)"
curl -sS -w '\nHTTP %{http_code}\n' "http://127.0.0.1:$GW_PORT/my-api/health"
