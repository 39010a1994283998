#!/usr/bin/python3
"""A real gRPC server (python3-grpcio) for tests/e2e/http2.rs, over h2c or TLS.

Generic handlers with raw-bytes messages: no .proto, no generated code. Service
`fluxgate.test.Echo`:

    Unary   answers the request bytes as they are; initial metadata `x-initial: yes`,
            trailing metadata `x-trailer: kept` and `x-blob-bin: 00 01 fe ff`
    Stream  request JSON {"count": N, "size": S, "code": C, "message": M}: N messages
            of S bytes, then status C (default OK) with message M and the trailers
            above: an error status after data, carried in real trailers
    Fail    request JSON {"code": C, "message": M}: status C at once, no message: a
            trailers-only answer
    Slow    request JSON {"ms": N}: answers b"late" after N ms

It binds 127.0.0.1 on a free port and prints `PORT <n>` once serving. It stops when its
standard input closes (the test that started it is gone) or after --lifetime seconds.

    grpc_server.py [--tls-cert CERT.pem --tls-key KEY.pem] [--lifetime S]
"""

import argparse
import json
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "fluxgate.test.Echo"
TRAILERS = (("x-trailer", "kept"), ("x-blob-bin", b"\x00\x01\xfe\xff"))


def code_named(name):
    return getattr(grpc.StatusCode, name or "OK")


def unary(request, context):
    context.send_initial_metadata((("x-initial", "yes"),))
    context.set_trailing_metadata(TRAILERS)
    return request


def stream(request, context):
    spec = json.loads(request)
    context.set_trailing_metadata(TRAILERS)
    for i in range(min(int(spec.get("count", 1)), 10000)):
        yield bytes([65 + i % 26]) * int(spec.get("size", 1))
    code = code_named(spec.get("code"))
    if code != grpc.StatusCode.OK:
        context.abort(code, spec.get("message", ""))


def fail(request, context):
    spec = json.loads(request)
    context.abort(code_named(spec.get("code")), spec.get("message", ""))


def slow(request, context):
    spec = json.loads(request)
    time.sleep(min(int(spec.get("ms", 0)), 30000) / 1000.0)
    return b"late"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--lifetime", type=float, default=300.0)
    args = parser.parse_args()
    big = 16 * 1024 * 1024
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        options=[("grpc.max_receive_message_length", big), ("grpc.max_send_message_length", big)],
    )
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if args.tls_cert:
        with open(args.tls_cert, "rb") as c, open(args.tls_key, "rb") as k:
            creds = grpc.ssl_server_credentials(((k.read(), c.read()),))
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    stdin_closed = threading.Event()

    def watch_stdin():
        try:
            sys.stdin.read()
        finally:
            stdin_closed.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    stdin_closed.wait(timeout=args.lifetime)
    server.stop(grace=0)


if __name__ == "__main__":
    main()
