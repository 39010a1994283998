#!/usr/bin/python3
"""Misbehaving HTTP/2 clients for the gateway's abuse limits (tests/e2e/http2.rs).

Speaks HTTP/2 frame by frame (hyperframe + hpack, the parts python3-h2 is built on) so
it can break the rules a well-behaved client library enforces: more streams than the
server allows, oversized header lists, HEADERS + RST_STREAM floods (CVE-2023-44487),
endless CONTINUATION frames (CVE-2024-27316 class).

It talks to 127.0.0.1 only, and every phase is bounded in count and time. It prints one
JSON object: what it sent and what the server answered (responses, stream resets,
GOAWAY, whether and when the connection was closed).

    h2_abuse.py --port P [--tls-ca CA.pem --server-name NAME] MODE [--count N] ...

Modes:
    streams        open --count streams at once (GET --path), ignoring the server's
                   SETTINGS_MAX_CONCURRENT_STREAMS
    headers        one request whose header list is --bytes long (split into
                   CONTINUATION frames as needed)
    rapid-reset    --count pairs of HEADERS + RST_STREAM(CANCEL), in batches of
                   --batch; with --pace-ms, each batch's HEADERS, then that long
                   later its RST_STREAMs
    continuation   HEADERS without END_HEADERS, then up to --count CONTINUATION frames
                   of --frame-bytes, never ending the header block
"""

import argparse
import json
import socket
import ssl
import sys
import time

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Error codes by number (RFC 9113 section 7).
ERRORS = {
    0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
    4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR",
    7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR",
    11: "ENHANCE_YOUR_CALM", 12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED",
}
# No single blocking socket call may take longer than this.
IO_TIMEOUT_S = 5.0


class Peer:
    """One HTTP/2 connection to the server and everything seen on it."""

    def __init__(self, args):
        raw = socket.create_connection(("127.0.0.1", args.port), timeout=IO_TIMEOUT_S)
        # Every write leaves at once, as an attacker's would (no Nagle coalescing).
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if args.tls_ca:
            ctx = ssl.create_default_context(cafile=args.tls_ca)
            ctx.set_alpn_protocols(["h2"])
            raw = ctx.wrap_socket(raw, server_hostname=args.server_name)
            if raw.selected_alpn_protocol() != "h2":
                raise SystemExit("the server did not choose h2 by ALPN")
        self.sock = raw
        self.sock.settimeout(IO_TIMEOUT_S)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buf = b""
        self.started = time.monotonic()
        self.report = {
            "sent_frames": 0,
            "sent_bytes": 0,
            "write_error": None,
            "responses": {},
            "resets": {},
            "goaway": None,
            "closed": False,
            "closed_after_ms": None,
            "server_settings": {},
        }

    def send(self, frames):
        """Writes frames; a server that closed or stopped reading ends the writing."""
        data = b"".join(f.serialize() for f in frames)
        try:
            self.sock.sendall(data)
        except (OSError, socket.timeout) as e:
            self.report["write_error"] = type(e).__name__
            return False
        self.report["sent_frames"] += len(frames)
        self.report["sent_bytes"] += len(data)
        return True

    def handshake(self):
        """Preface and SETTINGS; waits for the server's SETTINGS and acknowledges them,
        so its limits are in force before anything else is sent."""
        self.sock.sendall(PREFACE + SettingsFrame(0).serialize())
        deadline = time.monotonic() + IO_TIMEOUT_S
        while time.monotonic() < deadline:
            frame = self.read_frame(deadline)
            if frame is None:
                raise SystemExit("no SETTINGS from the server")
            if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                self.report["server_settings"] = {str(k): v for k, v in frame.settings.items()}
                self.sock.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
                return
        raise SystemExit("no SETTINGS from the server in time")

    def headers_block(self, path, extra=()):
        fields = [(":method", "GET"), (":scheme", "http"), (":path", path),
                  (":authority", "gw.test")] + list(extra)
        return self.encoder.encode(fields)

    def read_frame(self, deadline):
        """The next frame, or None once the connection is closed or `deadline` passed."""
        while True:
            if len(self.buf) >= 9:
                length = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + length:
                    frame, _ = Frame.parse_frame_header(memoryview(self.buf[:9]))
                    frame.parse_body(memoryview(self.buf[9:9 + length]))
                    self.buf = self.buf[9 + length:]
                    self.note(frame)
                    return frame
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(min(left, IO_TIMEOUT_S))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return None
            except OSError:
                chunk = b""
            if not chunk:
                self.closed()
                return None
            self.buf += chunk

    def closed(self):
        if not self.report["closed"]:
            self.report["closed"] = True
            self.report["closed_after_ms"] = int((time.monotonic() - self.started) * 1000)

    def note(self, frame):
        if isinstance(frame, GoAwayFrame) and self.report["goaway"] is None:
            self.report["goaway"] = {
                "error": ERRORS.get(frame.error_code, str(frame.error_code)),
                "last_stream_id": frame.last_stream_id,
                "debug": frame.additional_data.decode("utf-8", "replace"),
            }
        elif isinstance(frame, RstStreamFrame):
            self.report["resets"][str(frame.stream_id)] = ERRORS.get(
                frame.error_code, str(frame.error_code))
        elif isinstance(frame, HeadersFrame):
            try:
                fields = dict(self.decoder.decode(frame.data))
            except Exception:  # a later block may depend on one we could not read
                fields = {}
            status = fields.get(":status") or fields.get(b":status")
            if status is not None and str(frame.stream_id) not in self.report["responses"]:
                if isinstance(status, bytes):
                    status = status.decode()
                self.report["responses"][str(frame.stream_id)] = int(status)
        elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
            # Answer keep-alive PINGs so only the abuse under test closes the connection.
            try:
                self.sock.sendall(PingFrame(0, opaque_data=frame.opaque_data,
                                            flags=["ACK"]).serialize())
            except OSError:
                pass

    def drain(self, seconds, until=None):
        """Reads what the server sends for up to `seconds`, or until `until()` holds."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.report["closed"]:
            if until is not None and until():
                return
            self.read_frame(deadline)

    def done(self):
        self.report["elapsed_ms"] = int((time.monotonic() - self.started) * 1000)
        print(json.dumps(self.report), flush=True)
        try:
            self.sock.close()
        except OSError:
            pass


def many_streams(peer, args):
    frames = []
    for i in range(args.count):
        block = peer.headers_block(args.path)
        frames.append(HeadersFrame(1 + 2 * i, data=block, flags=["END_HEADERS", "END_STREAM"]))
    peer.send(frames)
    answered = lambda: len(peer.report["responses"]) + len(peer.report["resets"]) >= args.count
    peer.drain(args.read_for, until=answered)


def big_headers(peer, args):
    # Headers of 1000-byte values until the list (name + value + 32 each) is --bytes.
    extra, size, i = [], 0, 0
    while size < args.bytes:
        name = f"x-pad-{i}"
        extra.append((name, "a" * 1000))
        size += len(name) + 1000 + 32
        i += 1
    block = peer.headers_block(args.path, extra)
    limit = 16384
    first, rest = block[:limit], block[limit:]
    frames = [HeadersFrame(1, data=first, flags=["END_STREAM"] + ([] if rest else ["END_HEADERS"]))]
    while rest:
        chunk, rest = rest[:limit], rest[limit:]
        frames.append(ContinuationFrame(1, data=chunk, flags=[] if rest else ["END_HEADERS"]))
    peer.send(frames)
    peer.drain(args.read_for, until=lambda: "1" in peer.report["responses"] or "1" in peer.report["resets"])
    # The connection is still usable afterwards: a small request on it.
    peer.send([HeadersFrame(3, data=peer.headers_block(args.path), flags=["END_HEADERS", "END_STREAM"])])
    peer.drain(args.read_for, until=lambda: "3" in peer.report["responses"] or "3" in peer.report["resets"])


def rapid_reset(peer, args):
    stream_id, sent = 1, 0
    while sent < args.count and not peer.report["closed"]:
        opened, frames = [], []
        for _ in range(min(args.batch, args.count - sent)):
            block = peer.headers_block(args.path)
            frames.append(HeadersFrame(stream_id, data=block, flags=["END_HEADERS", "END_STREAM"]))
            opened.append(stream_id)
            stream_id += 2
            sent += 1
        resets = [RstStreamFrame(i, error_code=8) for i in opened]
        if args.pace_ms:
            # Paced: the server accepts the streams and starts on them before they are
            # cancelled (what h2's count of streams reset before acceptance misses);
            # what it says meanwhile is read (a GOAWAY ends the flood).
            if not peer.send(frames):
                break
            peer.drain(args.pace_ms / 1000.0)
            if not peer.send(resets):
                break
        else:
            # Each HEADERS followed at once by its RST_STREAM.
            pairs = [f for pair in zip(frames, resets) for f in pair]
            if not peer.send(pairs):
                break
    peer.report["pairs_sent"] = sent
    peer.drain(args.read_for)


def continuation_flood(peer, args):
    # Every fragment is complete literal header fields, so the server really decodes
    # (and would keep) them if nothing stopped it.
    def fragment(i):
        out = b""
        j = 0
        while len(out) < args.frame_bytes - 1100:
            out += peer.encoder.encode([(f"x-flood-{i}-{j}", "b" * 1000)], huffman=False)
            j += 1
        return out

    first = peer.headers_block(args.path)
    if not peer.send([HeadersFrame(1, data=first, flags=["END_STREAM"])]):
        peer.drain(args.read_for)
        return
    sent = 0
    deadline = time.monotonic() + args.read_for
    while sent < args.count and time.monotonic() < deadline:
        if not peer.send([ContinuationFrame(1, data=fragment(sent))]):
            break
        sent += 1
    peer.report["continuations_sent"] = sent
    peer.drain(args.read_for)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-ca")
    parser.add_argument("--server-name", default="gw.test")
    parser.add_argument("--path", default="/echo")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--pace-ms", type=int, default=0)
    parser.add_argument("--bytes", type=int, default=20000)
    parser.add_argument("--frame-bytes", type=int, default=16000)
    parser.add_argument("--read-for", type=float, default=5.0)
    parser.add_argument("mode", choices=["streams", "headers", "rapid-reset", "continuation"])
    args = parser.parse_args()
    # Bounded whatever happens: at most 10 000 frames or pairs, 20 s of reading.
    args.count = min(args.count, 10000)
    args.read_for = min(args.read_for, 20.0)
    peer = Peer(args)
    peer.handshake()
    {
        "streams": many_streams,
        "headers": big_headers,
        "rapid-reset": rapid_reset,
        "continuation": continuation_flood,
    }[args.mode](peer, args)
    peer.done()


if __name__ == "__main__":
    sys.exit(main())
