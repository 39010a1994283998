#!/usr/bin/env python3
"""Gossip figures from three real fluxgate-host processes on 127.0.0.1.

    python3 bench/cluster.py                      # uses target/release/fluxgate-host
    FLUXGATE_BIN=target/debug/fluxgate-host python3 bench/cluster.py

Prints: time for a registration made on node A to be served by node C (p50/p99 over
BENCH_REGISTRATIONS, default 50), gossip bytes/s per node while idle and while
registering, and the time until B and C withdraw a crashed node's registrations.
Every wait is bounded; every process is stopped at the end.
"""
import json, os, re, signal, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(os.environ.get("FLUXGATE_BIN", os.path.join(ROOT, "target", "release", "fluxgate-host")))
N = int(os.environ.get("BENCH_REGISTRATIONS", "50"))
IDLE_S = float(os.environ.get("BENCH_IDLE_S", "20"))
procs = []


def start(http_port, gossip_port, join=None):
    args = [BIN, "--port", str(http_port), "--gossip-port", str(gossip_port)]
    if join:
        args += ["--join", join]
    cwd = tempfile.mkdtemp()
    p = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    return p


def get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def status(url):
    try:
        return get(url)[0]
    except urllib.error.HTTPError as e:
        return e.code
    except Exception:
        return 0


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=2) as r:
        return r.status


def wait(check, limit, what):
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > limit:
            raise SystemExit(f"timed out: {what}")
        time.sleep(0.01)
    return time.monotonic() - start


def gossip_bytes(port):
    _, text = get(f"http://127.0.0.1:{port}/metrics")
    total = 0
    for line in text.decode().splitlines():
        m = re.match(r'fluxgate_gossip_bytes_total\{direction="(\w+)",transport="(\w+)"\} (\d+)', line)
        if m and m.group(1) == "sent":
            total += int(m.group(3))
    return total


def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    if not os.path.exists(BIN):
        raise SystemExit(f"{BIN} not found: cargo build --release -p fluxgate-host")
    ports = {"A": (18281, 18946), "B": (18282, 18947), "C": (18283, 18948)}
    a = start(*ports["A"])
    wait(lambda: status("http://127.0.0.1:18281/api/v1/health") == 200, 10, "A up")
    start(*ports["B"], join="127.0.0.1:18946")
    start(*ports["C"], join="127.0.0.1:18946")
    for port in (18282, 18283):
        wait(lambda: status(f"http://127.0.0.1:{port}/api/v1/health") == 200, 10, "node up")

    def members(port):
        _, body = get(f"http://127.0.0.1:{port}/api/v1/health")
        return [m for m in json.loads(body)["cluster"]["members"] if m["state"] == "alive"]

    wait(lambda: all(len(members(p)) == 3 for p in (18281, 18282, 18283)), 20, "cluster formed")
    # A tiny backend: node B's own health endpoint stands in for a service instance.
    before = {p: gossip_bytes(p) for p in (18281, 18282, 18283)}
    time.sleep(IDLE_S)
    after = {p: gossip_bytes(p) for p in (18281, 18282, 18283)}
    idle = {p: (after[p] - before[p]) / IDLE_S for p in before}

    lat = []
    t0 = time.monotonic()
    for i in range(N):
        svc = f"svc{i}"
        post("http://127.0.0.1:18281/api/v1/services/register",
             {"id": f"{svc}-1", "service": svc, "address": "127.0.0.1", "port": 18282})
        start_t = time.monotonic()
        wait(lambda: status(f"http://127.0.0.1:18283/{svc}/api/v1/health") == 200, 10, f"{svc} on C")
        lat.append(time.monotonic() - start_t)
    busy_s = time.monotonic() - t0
    busy_after = {p: gossip_bytes(p) for p in (18281, 18282, 18283)}
    busy = {p: (busy_after[p] - after[p]) / busy_s for p in after}

    a.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    def has_svc0(port):
        _, body = get(f"http://127.0.0.1:{port}/api/v1/services")
        return "svc0" in json.loads(body)["services"]

    wait(lambda: not has_svc0(18283) and not has_svc0(18282), 60, "A's registrations withdrawn")
    detect = time.monotonic() - killed

    print(f"registration on A served by C  ({N} registrations): p50 {quantile(lat, 0.5)*1000:.0f} ms  "
          f"p99 {quantile(lat, 0.99)*1000:.0f} ms  max {max(lat)*1000:.0f} ms")
    print("gossip bytes sent per node, idle: " + "  ".join(f"{v:.0f} B/s" for v in idle.values()))
    print("gossip bytes sent per node, while registering: " + "  ".join(f"{v:.0f} B/s" for v in busy.values()))
    print(f"crashed node's registrations withdrawn on B and C after {detect:.2f} s")


try:
    main()
finally:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
