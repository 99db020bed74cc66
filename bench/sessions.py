#!/usr/bin/env python3
"""make bench-sessions: what sessions and resumable streams cost and save, over HTTP, here.

    bench/sessions.py SERVER_BIN [ROUNDS]

  1. state size: a session's state_bytes per shipped model and precision (what a session
     holds, what an export carries, what a checkpoint holds per choice);
  2. append vs rescoring: a session of a 10,000-byte text; POST .../append of 1 byte against
     POST /v1/score of the whole 10,001 bytes, one request at a time, ROUNDS each (median, best);
  3. checkpoint cost: one 1,000-token stream at a time with --checkpoint-every 32 (the default),
     8, and 0 (none), each on its own server: time per streamed token and checkpoint bytes per token;
  4. resume latency, time to the first event sent: a fresh request; a 1,000-token stream whose
     client hung up after event 500 and resumes at once with Last-Event-ID (the latest
     checkpoint at or before it restored, the tokens since decoded again); and the finished
     stream resumed after event 500, older than its two latest checkpoints, so from its first
     one (500 tokens decoded again, the worst case).
Servers run one worker and the default model (a window of 1,024) unless said; numbers are
medians of ROUNDS (default 15).  Reported, not asserted.
"""
import glob
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
sys.path.insert(0, HERE)

from attnlm_server import Server  # noqa: E402
from hostile import cpu  # noqa: E402
from prefix import text  # noqa: E402

DEFAULT = os.path.join(ROOT, "models", "default.safetensors")


def ms(f):
    t = time.perf_counter()
    out = f()
    return (time.perf_counter() - t) * 1e3, out


def median_best(xs):
    return "median %8.2f ms, best %8.2f ms" % (statistics.median(xs), min(xs))


def ok(srv, path, body):
    status, obj, _ = srv.post(path, body)
    assert status == 200, (path, status, obj)
    return obj


def first_event_ms(srv, body, last=None):
    """Time to the first event of a stream (and the whole stream's events, for checks)."""
    c = srv.conn()
    headers = {"Content-Type": "application/json"}
    if last:
        headers["Last-Event-ID"] = last
    t = time.perf_counter()
    c.request("POST", "/v1/generate", json.dumps(body).encode(), headers)
    r = c.getresponse()
    assert r.status == 200, r.read()[:300]
    first, buf, ids = None, b"", []
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        if first is None:
            first = (time.perf_counter() - t) * 1e3
        buf += chunk
    total = (time.perf_counter() - t) * 1e3
    c.close()
    for block in buf.decode().split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("id: "):
                ids.append(line[4:])
    return first, total, ids


def cut_at(srv, body, n):
    """Reads a stream until its event n has come whole, then hangs up; that event's id."""
    import socket
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as c:
        c.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(data) + data)
        got = b""
        while True:
            got += c.recv(65536)
            ids = [line[4:] for line in got.decode("latin-1").split("\n") if line.startswith("id: ")]
            if len(ids) > n:  # event n's data line is complete once event n+1 has begun
                return ids[n - 1]


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    binary = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) == 3 else 15
    print("== machine")
    print("cpu:  " + cpu())
    print("load: %s (load average at start)" % " ".join(open("/proc/loadavg").read().split()[:3]))

    print("\n== 1. state size per session (bytes), by model and precision")
    models = [DEFAULT] + sorted(m for m in glob.glob(os.path.join(ROOT, "models", "*.safetensors")) if m != DEFAULT)
    print("%-32s %12s %12s %12s" % ("model", "f32", "bf16", "int8"))
    for m in models:
        sizes = []
        for prec in ("f32", "bf16", "int8"):
            srv = Server("--workers", "1", "--precision", prec, binary=binary, model=m)
            try:
                sizes.append(ok(srv, "/v1/sessions", {"text": "a"})["state_bytes"])
            finally:
                srv.stop_checked()
        print("%-32s %12d %12d %12d" % (os.path.basename(m), *sizes))

    print("\n== 2. append 1 byte to a 10,000-byte session vs /v1/score of the whole text (default model)")
    srv = Server("--workers", "1", "--max-input-tokens", "16384", "--prefix-cache", "0", binary=binary,
                 model=DEFAULT)
    try:
        base = text(3, 10000)
        sid = ok(srv, "/v1/sessions", {"text": base, "top_k": 0})["id"]
        append, score = [], []
        for i in range(rounds):
            append.append(ms(lambda: ok(srv, "/v1/sessions/%s/append" % sid, {"text": "e", "top_k": 0}))[0])
        for i in range(rounds):
            score.append(ms(lambda: ok(srv, "/v1/score", {"text": base + "e", "top_k": 0}))[0])
        print("append 1 byte          %s" % median_best(append))
        print("score 10,001 bytes     %s" % median_best(score))
        print("ratio (medians)        %.0fx" % (statistics.median(score) / statistics.median(append)))
    finally:
        srv.stop_checked()

    print("\n== 3. checkpoint cost: one 1,000-token stream at a time (default model)")
    body = {"prompt": "The whale", "max_tokens": 1000, "seed": 1, "stream": True}
    rows = []
    for every in ("0", "32", "8"):
        srv = Server("--workers", "1", "--checkpoint-every", every, binary=binary, model=DEFAULT)
        try:
            first_event_ms(srv, body)  # warm
            before = srv.metric("attnlm_stream_checkpoint_bytes_total")
            totals = [first_event_ms(srv, dict(body, seed=i))[1] for i in range(max(3, rounds // 3))]
            per_token_bytes = (srv.metric("attnlm_stream_checkpoint_bytes_total") - before) / (len(totals) * 1000)
            rows.append((every, statistics.median(totals) / 1000 * 1e3, per_token_bytes))
        finally:
            srv.stop_checked()
    base_us = rows[0][1]
    for every, us, b in rows:
        print("--checkpoint-every %-3s %7.1f us per token (%+6.1f us against none), %9.0f checkpoint bytes per token"
              % (every, us, us - base_us, b))

    print("\n== 4. resume latency: a 1,000-token stream resumed with Last-Event-ID (default model)")
    srv = Server("--workers", "1", binary=binary, model=DEFAULT)
    try:
        fresh, cut, old = [], [], []
        for i in range(rounds):
            b = dict(body, seed=100 + i)
            last = cut_at(srv, b, 500)
            r, _, rest = first_event_ms(srv, b, last=last)
            cut.append(r)
            f, _, ids = first_event_ms(srv, b)
            fresh.append(f)
            assert rest == ids[500:], "the resumed stream differs"
            r, _, rest = first_event_ms(srv, b, last=ids[499])
            assert rest == ids[500:]
            old.append(r)
        print("first event, fresh request               %s" % median_best(fresh))
        print("first event, resumed after a cut at 500  %s" % median_best(cut))
        print("first event, finished stream, after 500  %s" % median_best(old))
    finally:
        srv.stop_checked()


if __name__ == "__main__":
    main()
