#!/usr/bin/env python3
"""Measures how the server holds up against clients that abuse it, with default flags.

usage: hostile.py SERVER_BINARY [MODEL]   (make bench-hostile)

1. memory: three of the largest requests at once (two /v1/score of 4,095 ids with top_k 257, a
   2,048-token generation with logprobs 257 and attention): peak RSS, and RSS a second after;
2. streams that never read: 200 streaming generations (logprobs 257, attention) whose clients
   read nothing: RSS while they sit there, and how long another client's /v1/score takes;
3. trickling headers: 1,100 connections sending a header byte a second: the slowest /health on
   the admin port while they do, and how long a fresh client on the main port waits.
Prints the figures with the machine they ran on; asserts nothing.
"""
import json
import os
import platform
import random
import resource
import socket
import sys
import threading
import time
import http.client

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "lib"))
from attnlm_server import Server, proc_memory  # noqa: E402

MB = 1024 * 1024


def cpu():
    info = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
    return "%s (family %s, model %s), %d cores" % (info.get("model name"), info.get("cpu family"), info.get("model"),
                                                  os.cpu_count())


def post(port, path, body, timeout=600):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    n = len(r.read())
    c.close()
    return r.status, n


def get(port, path, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


def large_answers(binary, model):
    srv = Server(binary=binary, model=model)
    try:
        rnd = random.Random(1)
        score = {"ids": [rnd.randrange(256) for _ in range(4095)], "top_k": 257}
        gen = {"prompt": "Call me", "max_tokens": 2048, "logprobs": 257, "attention": True, "seed": 1}
        idle = proc_memory(srv.proc.pid, "VmRSS")
        out = []
        ts = [threading.Thread(target=lambda a: out.append(post(srv.port, *a)), args=(a,)) for a in
              (("/v1/score", score), ("/v1/score", score), ("/v1/generate", gen))]
        t0 = time.monotonic()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        took = time.monotonic() - t0
        peak = proc_memory(srv.proc.pid, "VmHWM")
        time.sleep(1)
        after = proc_memory(srv.proc.pid, "VmRSS")
        print("1. three largest answers (%s, %.1f MB total) in %.1f s: RSS idle %.0f MB, peak %.0f MB, "
              "a second after %.0f MB" % ([s for s, _ in out], sum(n for _, n in out) / MB, took, idle / MB,
                                           peak / MB, after / MB))
    finally:
        srv.stop()


def silent_streams(binary, model, n=200):
    srv = Server(binary=binary, model=model)
    socks = []
    try:
        body = json.dumps({"prompt": "Call me", "max_tokens": 2048, "logprobs": 257, "attention": True,
                           "stream": True}).encode()
        for _ in range(n):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", srv.port))
            s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            socks.append(s)
        time.sleep(5)
        rss = proc_memory(srv.proc.pid, "VmRSS")
        lat = []
        for _ in range(5):
            t0 = time.monotonic()
            status, _ = post(srv.port, "/v1/score", {"text": "Call me Ishmael. Some years ago"})
            lat.append((time.monotonic() - t0, status))
        peak = proc_memory(srv.proc.pid, "VmHWM")
        print("2. %d streams that never read: RSS %.0f MB after 5 s (peak %.0f MB); /v1/score meanwhile: %s" % (
            n, rss / MB, peak / MB, ", ".join("%d in %.0f ms" % (st, t * 1e3) for t, st in lat)))
    finally:
        for s in socks:
            s.close()
        srv.stop()


def trickling(binary, model, n=1100, seconds=30):
    srv = Server("--admin-port", "0", binary=binary, model=model)
    stop = threading.Event()
    socks = []
    lock = threading.Lock()
    try:
        def attack():
            while not stop.is_set():
                with lock:
                    live = list(socks)
                for s in live:
                    try:
                        s.send(b"X")
                    except OSError:
                        with lock:
                            socks.remove(s)
                while len(socks) < n and not stop.is_set():
                    try:
                        s = socket.create_connection(("127.0.0.1", srv.port), timeout=1)
                        s.setblocking(False)
                        s.send(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    except OSError:
                        break
                    with lock:
                        socks.append(s)
                stop.wait(1)

        t = threading.Thread(target=attack, daemon=True)
        t.start()
        time.sleep(3)
        worst, fresh = 0.0, None
        t_start = time.monotonic()
        while time.monotonic() - t_start < seconds:
            t0 = time.monotonic()
            ok = get(srv.admin_port, "/health", timeout=10) == 200
            worst = max(worst, time.monotonic() - t0 if ok else 10.0)
            if fresh is None:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
                    c.request("GET", "/health")
                    if c.getresponse().status == 200:
                        fresh = time.monotonic() - t_start
                    c.close()
                except (OSError, http.client.HTTPException):
                    pass
            time.sleep(0.2)
        cut = srv.metric("attnlm_connections_cut_total", reason="header")
        print("3. %d connections trickling a header byte a second for %d s: slowest admin /health %.0f ms; "
              "a fresh client on the main port served after %s; %d connections cut at the header deadline" % (
                  n, seconds, worst * 1e3, "%.1f s" % fresh if fresh is not None else "never", cut))
    finally:
        stop.set()
        for s in socks:
            s.close()
        srv.stop()


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__.strip())
    binary = sys.argv[1]
    model = sys.argv[2] if len(sys.argv) == 3 else "models/default.safetensors"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    print("machine: %s; %s; load %s" % (cpu(), platform.platform(), os.getloadavg()))
    print("server: %s, model %s, default flags" % (binary, model))
    large_answers(binary, model)
    silent_streams(binary, model)
    trickling(binary, model)


if __name__ == "__main__":
    main()
