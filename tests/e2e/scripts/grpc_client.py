#!/usr/bin/python3
"""A real gRPC client (python3-grpcio) for tests/e2e/http2.rs: one call to the gateway
over TLS + HTTP/2 (trusting the test CA) or h2c, reported as one JSON object.

    grpc_client.py --target 127.0.0.1:PORT [--ca CA.pem --server-name NAME]
                   [--metadata k=v ...] [--timeout S] unary|stream METHOD
                   [--payload TEXT | --size N]

Output: {"code": "OK", "details": ..., "messages": [lengths], "echo_ok": bool,
"initial": {...}, "trailing": {...}} (binary metadata values as hex).
"""

import argparse
import json

import grpc


def metadata_dict(md):
    out = {}
    for key, value in md or ():
        out[key] = value.hex() if isinstance(value, bytes) else value
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--ca")
    parser.add_argument("--server-name", default="gw.test")
    parser.add_argument("--metadata", action="append", default=[])
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--payload")
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("kind", choices=["unary", "stream"])
    parser.add_argument("method")
    args = parser.parse_args()
    if not args.target.startswith("127.0.0.1:"):
        raise SystemExit("loopback targets only")

    big = 16 * 1024 * 1024
    options = [
        ("grpc.max_receive_message_length", big),
        ("grpc.max_send_message_length", big),
        # Straight to the gateway, whatever proxy the environment names.
        ("grpc.enable_http_proxy", 0),
        # One attempt: the test reads the gateway's own answer, not a retry's.
        ("grpc.enable_retries", 0),
    ]
    if args.ca:
        with open(args.ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        options.append(("grpc.ssl_target_name_override", args.server_name))
        channel = grpc.secure_channel(args.target, creds, options=options)
    else:
        channel = grpc.insecure_channel(args.target, options=options)

    if args.payload is not None:
        request = args.payload.encode()
    else:
        request = bytes((i * 7) % 251 for i in range(args.size))
    metadata = [tuple(m.split("=", 1)) for m in args.metadata]
    report = {"code": "OK", "details": None, "messages": [], "echo_ok": None,
              "initial": {}, "trailing": {}}
    with channel:
        if args.kind == "unary":
            call_fn = channel.unary_unary(args.method)
            try:
                response, call = call_fn.with_call(request, metadata=metadata, timeout=args.timeout)
                report["messages"] = [len(response)]
                report["echo_ok"] = response == request
                report["initial"] = metadata_dict(call.initial_metadata())
                report["trailing"] = metadata_dict(call.trailing_metadata())
            except grpc.RpcError as e:
                report["code"] = e.code().name
                report["details"] = e.details()
                report["initial"] = metadata_dict(e.initial_metadata())
                report["trailing"] = metadata_dict(e.trailing_metadata())
        else:
            call = channel.unary_stream(args.method)(request, metadata=metadata, timeout=args.timeout)
            try:
                for message in call:
                    report["messages"].append(len(message))
            except grpc.RpcError:
                pass
            report["code"] = call.code().name
            report["details"] = call.details() or None
            report["initial"] = metadata_dict(call.initial_metadata())
            report["trailing"] = metadata_dict(call.trailing_metadata())
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
