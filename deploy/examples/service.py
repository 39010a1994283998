#!/usr/bin/env python3
"""An example service that registers itself with FluxGate and keeps its registration
alive: register with a TTL, heartbeat well within it, register again when the gateway
no longer knows the instance (a restarted gateway). Standard library only.

Environment: SERVICE_NAME, SERVICE_PORT, SERVICE_ADDRESS (how the gateway reaches
this container), GATEWAY_URL, FLUXGATE_ADMIN_TOKEN.
"""

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ.get("SERVICE_NAME", "example")
PORT = int(os.environ.get("SERVICE_PORT", "8001"))
ADDRESS = os.environ.get("SERVICE_ADDRESS", socket.gethostname())
GATEWAY = os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080").rstrip("/")
TOKEN = os.environ.get("FLUXGATE_ADMIN_TOKEN", "")
INSTANCE = f"{NAME}-{socket.gethostname()}"
TTL_S = 30


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({
            "service": NAME,
            "instance": INSTANCE,
            "path": self.path,
            "request_id": self.headers.get("x-request-id"),
            "traceparent": self.headers.get("traceparent"),
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


def call(method, path, payload=None):
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(GATEWAY + path, data=data, method=method)
    request.add_header("content-type", "application/json")
    if TOKEN:
        request.add_header("authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status


def register():
    return call("POST", "/api/v1/services/register", {
        "id": INSTANCE,
        "service": NAME,
        "address": ADDRESS,
        "port": PORT,
        "ttl_s": TTL_S,
        "check": {"path": "/health", "interval_ms": 5000},
    })


def keep_registered():
    registered = False
    delay = 1
    while True:
        try:
            if registered:
                call("POST", f"/api/v1/services/heartbeat?id={INSTANCE}")
            else:
                register()
                registered = True
                print(f"{INSTANCE}: registered at {GATEWAY}/{NAME}/*", flush=True)
            delay = 1
            time.sleep(TTL_S / 3)
        except urllib.error.HTTPError as error:
            # 404: the gateway does not know us (it restarted): register again.
            registered = registered and error.code != 404
            print(f"{INSTANCE}: gateway answered {error.code}", flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 30)
        except OSError as error:
            print(f"{INSTANCE}: gateway unreachable: {error}", flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 30)


if __name__ == "__main__":
    threading.Thread(target=keep_registered, daemon=True).start()
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
