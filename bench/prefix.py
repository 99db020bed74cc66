#!/usr/bin/env python3
"""make bench-prefix: what the prefix-state cache saves, over HTTP, on this machine.

    bench/prefix.py SERVER_BIN MODEL [ROUNDS]

One server with its default flags (--prefix-cache 64, one worker so that requests do not
overlap).  POST /v1/score of an OPENING-byte opening plus 20 new bytes, one request at a time:
  miss   every request has an opening never seen (the cache cannot help)
  hit    every request repeats one opening with different new bytes
for top_k 0 and the default top_k 5 (whose alternatives are most of the answer's bytes).
Prints the median and best latency of ROUNDS (default 15) requests each, and the ratio;
reported, not asserted.
"""
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "lib"))
sys.path.insert(0, HERE)

from attnlm_server import Server  # noqa: E402
from hostile import cpu  # noqa: E402

OPENING = 2000


def text(seed, n):
    """n bytes of lower-case words, different for each seed."""
    x, out = seed * 2654435761 + 1, []
    while len(out) < n:
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append("etaoinshrdlucmfwyp "[(x >> 33) % 19])
    return "".join(out)


def timed(srv, body):
    t = time.perf_counter()
    status, _, payload = srv.request("POST", "/v1/score", body)
    ms = (time.perf_counter() - t) * 1e3
    assert status == 200, payload[:300]
    return ms, len(payload)


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    binary, model = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) == 4 else 15
    print("== machine")
    print("cpu:  " + cpu())
    print("load: %s (load average at start)" % " ".join(open("/proc/loadavg").read().split()[:3]))
    srv = Server("--workers", "1", binary=binary, model=model)
    try:
        results = {}
        shared = text(0, OPENING)
        for top_k in (0, 5):
            timed(srv, {"text": shared + text(1, 20), "top_k": top_k})  # the opening's states, cached
            for kind in ("miss", "hit"):
                times, size = [], 0
                for r in range(rounds):
                    suffix = text(1000 + r, 20)
                    opening = shared if kind == "hit" else text(100 * top_k + r + 2, OPENING)
                    ms, size = timed(srv, {"text": opening + suffix, "top_k": top_k})
                    times.append(ms)
                results[kind, top_k] = (statistics.median(times), min(times), size)
        hits = srv.metric("attnlm_prefix_cache_hits_total")
        reused = srv.metric("attnlm_prefix_cache_reused_tokens_total")
    finally:
        srv.stop_checked()
    print("\n== POST /v1/score, %d-byte opening + 20 new bytes, one at a time, %d requests each" % (OPENING, rounds))
    print(" %-7s %-6s %12s %10s %12s" % ("top_k", "cache", "median ms", "best ms", "answer bytes"))
    for top_k in (0, 5):
        for kind in ("miss", "hit"):
            med, best, size = results[kind, top_k]
            print(" %-7d %-6s %12.1f %10.1f %12d" % (top_k, kind, med, best, size))
        print(" %-7d %-6s %11.1fx" % (top_k, "ratio", results["miss", top_k][0] / results["hit", top_k][0]))
    print(" server metrics: %d hits, %d tokens not run again" % (hits, reused))


if __name__ == "__main__":
    main()
