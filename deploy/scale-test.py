#!/usr/bin/env python3
"""make scale-test: three attnlm-server replicas behind Debian's nginx, on loopback.

    python3 deploy/scale-test.py SERVER_BINARY

nginx runs deploy/nginx.conf itself, with the lines marked @upstream-servers and @listen
replaced by the replicas' and its own loopback addresses (and logs and temporary files moved
to a scratch directory).  Phases:
  1. a few hundred requests through nginx: all answered 200, and every replica's own
     /metrics shows it served some of them, adding up to what was sent;
  2. streaming through the proxy: events arrive one by one (the first long before the last),
     the streamed text equals the plain answer, OpenAI streams end with [DONE];
  3. kill -9 of one replica under load: the only failures are requests that had started
     before the kill (answers already streaming from it); every later request succeeds;
  4. the killed replica restarted, then SIGTERM to another under load: no failure at all
     (it drains; nginx sends what it refuses to the others);
  5. kill -9 of a replica with 30 seeded streams in flight: every stream it cut is sent again
     through nginx with Last-Event-ID and continues on another replica from the checkpoints in
     the shared Redis (Debian's redis-server, started here): 0 events lost, 0 repeated, every
     stream equal to its uninterrupted run.
Every process started is stopped; each replica stopped by SIGTERM must exit 0.
Only counts and equalities are asserted, never speed.
"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
from attnlm_server import Server, StartError, StopError, parse_prom  # noqa: E402
from redis_server import RedisServer  # noqa: E402

MODEL = os.path.join(ROOT, "models", "default.safetensors")
CONF = os.path.join(ROOT, "deploy", "nginx.conf")
WORK_ROUTES = ("/v1/score", "/v1/generate", "/v1/completions")


class Failed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failed(msg)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    """One attnlm-server (tests/lib/attnlm_server.py starts it), its stderr appended to
    replicaN.log: a restarted replica appends to the same log, on the same port."""

    def __init__(self, binary, work, index, store, secret, port=0):
        self.index = index
        try:
            self.server = Server("--workers", "1", "--drain-timeout", "20", "--session-store", store,
                                 "--session-secret-file", secret, "--checkpoint-every", "16", binary=binary,
                                 model=MODEL, port=port, log_path=os.path.join(work, "replica%d.log" % index),
                                 startup_timeout=30)
        except StartError as e:
            raise Failed("replica %d did not start: %s" % (index, e))
        self.port = self.server.port

    def tail(self, n=15):
        return self.server.stderr(last=n)

    def served(self):
        """Requests this replica answered on the model routes, from its own /metrics."""
        text, _ = self.server.metrics_text()
        return int(sum(v for name, labels, v in parse_prom(text)
                       if name == "attnlm_requests_total" and labels.get("route") in WORK_ROUTES))

    def stop(self, timeout=60):
        """SIGTERM; returns the exit status ("hung" if it had to be killed)."""
        try:
            return self.server.stop(timeout)
        except StopError:
            return "hung"

    def kill(self):
        self.server.kill()


class Nginx:
    def __init__(self, work, replicas):
        self.port = free_port()
        prefix = os.path.join(work, "nginx")
        for d in ("", "/body", "/proxy", "/fastcgi", "/uwsgi", "/scgi"):
            os.makedirs(prefix + d, exist_ok=True)
            os.chmod(prefix + d, 0o777)  # workers run as nobody when the master is root
        with open(CONF) as f:
            conf = f.read()
        servers = "\n".join("        server 127.0.0.1:%d max_fails=1 fail_timeout=2s;" % r.port for r in replicas)
        conf, n1 = re.subn(r"^[ \t]*server [^\n]*# @upstream-servers[^\n]*$", servers, conf, flags=re.M)
        conf, n2 = re.subn(r"^([ \t]*)listen [^\n]*# @listen[^\n]*$", r"\1listen 127.0.0.1:%d;" % self.port,
                           conf, flags=re.M)
        conf, n3 = re.subn(r"^([ \t]*)access_log [^\n]*$", r"\1access_log %s/access.log;" % prefix, conf, flags=re.M)
        conf, n4 = re.subn(r"^([ \t]*)error_log [^\n]*$", r"\1error_log %s/error.log warn;" % prefix, conf,
                           flags=re.M)
        check(n1 == 1 and n2 == 1 and n3 == 1 and n4 == 1, "deploy/nginx.conf lacks a marked line (%d %d %d %d)"
              % (n1, n2, n3, n4))
        # Here workers run as nobody with temporary files in the scratch directory.
        conf = re.sub(r"^user [^\n]*\n", "", conf, flags=re.M)
        temp = "".join("    %s_temp_path %s/%s;\n" % (k, prefix, d) for k, d in
                       (("client_body", "body"), ("proxy", "proxy"), ("fastcgi", "fastcgi"), ("uwsgi", "uwsgi"),
                        ("scgi", "scgi")))
        conf = conf.replace("http {\n", "http {\n" + temp, 1)
        self.conf_path = os.path.join(prefix, "nginx.conf")
        with open(self.conf_path, "w") as f:
            f.write(conf)
        self.error_log = os.path.join(prefix, "error.log")
        self.proc = subprocess.Popen(
            ["nginx", "-p", prefix, "-c", self.conf_path, "-g",
             "daemon off; pid %s/nginx.pid; error_log %s/error.log warn;" % (prefix, prefix)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            try:
                if request(self.port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise Failed("nginx did not start: %s\n%s" % (self.proc.stderr.read().decode() if self.proc.poll()
                                                             is not None else "timeout", self.errors()))
            time.sleep(0.05)

    def errors(self):
        try:
            with open(self.error_log) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def request(port, method, path, body=None, timeout=120):
    """One request; returns (status, payload bytes).  Raises OSError/HTTPException on I/O errors."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        c.request(method, path, json.dumps(body).encode() if body is not None else None, headers)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def stream(port, path, body, timeout=120):
    """A streamed request: (status, events as parsed JSON or "[DONE]", arrival times)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            return r.status, [r.read()], []
        events, times, buf = [], [], b""
        while True:
            chunk = r.read1(65536)
            if not chunk:
                break
            buf += chunk
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                for line in ev.split(b"\n"):  # "id: ..." then "data: ..."
                    if line.startswith(b"data: "):
                        data = line[6:].decode()
                        events.append(data if data == "[DONE]" else json.loads(data))
                        times.append(time.monotonic())
        return r.status, events, times
    finally:
        c.close()


def raw_stream(port, path, body, last=None, timeout=120):
    """A stream's events as (id, data) pairs, as far as they arrived whole, and whether it ended
    with [DONE]; a connection cut midway ends the list early (no exception)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    out, buf = [], b""
    try:
        headers = {"Content-Type": "application/json"}
        if last:
            headers["Last-Event-ID"] = last
        c.request("POST", path, json.dumps(body).encode(), headers)
        r = c.getresponse()
        if r.status != 200:
            return r.status, out, False
        while True:
            try:
                chunk = r.read1(65536)
            except (OSError, http.client.HTTPException):
                break
            if not chunk:
                break
            buf += chunk
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                fields = dict(line.split(": ", 1) for line in ev.decode().split("\n") if ": " in line)
                # the final event's timings measure the run, not the stream: left out of the comparison
                data = re.sub(r',"timings":\{[^{}]*\}', "", fields.get("data") or "")
                out.append((fields.get("id"), data if fields.get("data") is not None else None))
        return 200, out, bool(out) and out[-1][1] == "[DONE]"
    except (OSError, http.client.HTTPException):
        return 0, out, False
    finally:
        c.close()


def stream_ok(status, events):
    """Whether a streamed answer is complete: 200, no error event, ends with [DONE]."""
    return (status == 200 and events and events[-1] == "[DONE]"
            and not any(isinstance(e, dict) and "error" in e for e in events))


def run_load(port, threads, seconds, mix, events=()):
    """threads clients sending requests back to back for `seconds`.  events: (at_second, fn)
    run from the main thread.  Returns [(start, end, kind, ok, detail)] and the event times."""
    results, lock = [], threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(i):
        n = 0
        while time.monotonic() < stop_at:
            kind = mix[(i + n) % len(mix)]
            n += 1
            t0 = time.monotonic()
            try:
                if kind == "score":
                    st, payload = request(port, "POST", "/v1/score", {"text": "Call me Ishmael. " * (1 + i % 4)})
                    ok, detail = st == 200, st
                elif kind == "generate":
                    st, payload = request(port, "POST", "/v1/generate",
                                          {"prompt": "The sea", "max_tokens": 60, "seed": i * 1000 + n})
                    ok = st == 200 and json.loads(payload)["usage"]["completion_tokens"] == 60
                    detail = st
                else:
                    st, evs, _ = stream(port, "/v1/generate", {"prompt": "The whale", "max_tokens": 300,
                                                               "seed": i * 1000 + n, "stream": True})
                    ok, detail = stream_ok(st, evs), (st if st != 200 else "stream cut")
            except (OSError, http.client.HTTPException, ValueError) as e:
                ok, detail = False, type(e).__name__
            with lock:
                results.append((t0, time.monotonic(), kind, ok, detail))

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    begin = time.monotonic()
    for w in workers:
        w.start()
    fired = []
    for at, fn in events:
        time.sleep(max(0.0, begin + at - time.monotonic()))
        fired.append(time.monotonic())
        fn()
    for w in workers:
        w.join(300)
    return results, fired


def main():
    if len(sys.argv) != 2:
        print("usage: scale-test.py SERVER_BINARY", file=sys.stderr)
        return 2
    binary = os.path.abspath(sys.argv[1])
    check(shutil.which("nginx"), "nginx is not installed (apt-get install nginx-light)")
    work = tempfile.mkdtemp(prefix="attnlm-scale-")
    os.chmod(work, 0o755)
    replicas, nginx, redis = [], None, None
    try:
        redis = RedisServer()
        secret = os.path.join(work, "session-secret")
        with open(secret, "wb") as f:
            f.write(os.urandom(32).hex().encode())
        store = redis.url
        replicas = [Replica(binary, work, i, store, secret) for i in range(3)]
        nginx = Nginx(work, replicas)
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
        print("%s on 127.0.0.1:%d -> replicas on ports %s" % (out, nginx.port, [r.port for r in replicas]))

        # ---- 1. spread ----------------------------------------------------------------
        print("\n== 1. 300 /v1/score + 60 /v1/generate through nginx, 16 clients")
        before = [r.served() for r in replicas]
        jobs = [("/v1/score", {"text": "It was a cold grey morning. " * (1 + i % 5)}) for i in range(300)]
        jobs += [("/v1/generate", {"prompt": "Call me", "max_tokens": 40, "seed": i}) for i in range(60)]
        statuses, lock, it = [], threading.Lock(), iter(jobs)

        def send():
            while True:
                with lock:
                    job = next(it, None)
                if job is None:
                    return
                st = request(nginx.port, "POST", *job)[0]
                with lock:
                    statuses.append(st)

        ts = [threading.Thread(target=send) for _ in range(16)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(300)
        check(statuses.count(200) == len(jobs), "not all answered 200: %s" % {s: statuses.count(s) for s in set(statuses)})
        served = [r.served() - b for r, b in zip(replicas, before)]
        for r, n in zip(replicas, served):
            print("replica %d (port %d): %d requests" % (r.index, r.port, n))
        check(all(n > 0 for n in served), "a replica served nothing: %s" % served)
        check(sum(served) == len(jobs), "replicas served %d requests, %d were sent" % (sum(served), len(jobs)))
        print("ok   %d/%d answered 200; every replica served traffic" % (len(jobs), len(jobs)))
        check(request(nginx.port, "GET", "/metrics")[0] == 404, "nginx publishes /metrics")
        check(request(replicas[0].port, "GET", "/metrics")[0] == 200, "a replica's /metrics does not answer")
        print("ok   /metrics is not published through nginx; each replica still answers it")

        # ---- 2. streaming ----------------------------------------------------------------
        print("\n== 2. streaming through nginx")
        req = {"prompt": "Call me Ishmael.", "max_tokens": 2000, "seed": 7, "temperature": 0.8}
        plain = json.loads(request(nginx.port, "POST", "/v1/generate", req)[1])
        t0 = time.monotonic()
        st, events, times = stream(nginx.port, "/v1/generate", dict(req, stream=True))
        check(stream_ok(st, events), "stream failed: %s %s" % (st, events[-2:]))
        tokens = [e for e in events if isinstance(e, dict) and "token" in e]
        text = "".join(e.get("text", "") for e in events if isinstance(e, dict))
        first, total = times[0] - t0, times[-1] - t0
        check(len(tokens) == 2000, "%d token events for 2000 tokens" % len(tokens))
        check(text == plain["text"], "streamed text differs from the plain answer")
        # Buffered by the proxy, every event would arrive together at the end.
        check(first < total / 4, "first event after %.3f s of %.3f s: the proxy buffers" % (first, total))
        distinct = len({round(t, 3) for t in times})
        check(distinct > 20, "events arrived in only %d bursts" % distinct)
        print("ok   2000 token events, first after %.1f ms, last after %.0f ms, %d distinct arrival ms; "
              "text equals the plain answer" % (first * 1e3, total * 1e3, distinct))
        st, events, _ = stream(nginx.port, "/v1/completions",
                               {"prompt": "The sea", "max_tokens": 30, "stream": True, "seed": 1})
        check(st == 200 and events and events[-1] == "[DONE]", "OpenAI stream did not end with [DONE]")
        check(events[-2]["choices"][0]["finish_reason"] == "length", "no finish_reason before [DONE]")
        print("ok   /v1/completions stream: %d chunks, finish_reason length, then [DONE]" % (len(events) - 1))

        # ---- the inspector page -----------------------------------------------------------
        print("\n== the inspector page through nginx")
        got = {}
        for path in ("/", "/ui/app.js", "/ui/style.css"):
            c = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=30)
            try:
                c.request("GET", path)
                r = c.getresponse()
                body, etag, csp = r.read(), r.getheader("ETag"), r.getheader("Content-Security-Policy") or ""
                c.request("GET", path, headers={"If-None-Match": etag or ""})
                r2 = c.getresponse()
                r2.read()
            finally:
                c.close()
            check(r.status == 200 and body and "default-src 'self'" in csp, "%s through nginx: %s" % (path, r.status))
            check(r2.status == 304, "%s with its ETag through nginx: %s, want 304" % (path, r2.status))
            got[path] = len(body)
        print("ok   %s answered with their CSP, and 304 for their ETags" % ", ".join("%s (%d bytes)" % kv for kv in got.items()))

        mix = ["score", "generate", "stream", "score", "generate"]

        # ---- 3. kill -9 ------------------------------------------------------------------------
        victim = replicas[0]
        print("\n== 3. kill -9 replica %d (port %d) under load: 12 clients for 6 s, kill at 2 s" % (victim.index,
                                                                                            victim.port))
        before = [r.served() for r in replicas]
        results, (killed_at,) = run_load(nginx.port, 12, 6.0, mix, [(2.0, victim.kill)])
        failures = [r for r in results if not r[3]]
        in_flight = [r for r in results if r[0] < killed_at < r[1]]
        late = [r for r in failures if r[0] >= killed_at]
        after = [r.served() - b for r, b in zip(replicas[1:], before[1:])]
        print("%d requests, %d in flight at the kill, %d failed (%s); survivors served %s" % (
            len(results), len(in_flight), len(failures),
            ", ".join("%s %s" % (f[2], f[4]) for f in failures) or "none", after))
        # Under the sanitizers a replica decodes about twenty times slower (the 2,000-token stream
        # above takes some 6 s instead of 0.3), so there the load asks two requests per client.
        least = 24 if "san" in os.path.basename(os.path.dirname(binary)).split("-") else 50
        check(len(results) > least, "only %d requests in the load (want more than %d)" % (len(results), least))
        check(not late, "%d requests started after the kill failed: %s" % (len(late), late[:3]))
        check(all(r in in_flight for r in failures), "a failure that was not in flight at the kill")
        check(all(n > 0 for n in after), "a surviving replica served nothing")
        print("ok   failures only among requests in flight at the kill (%d of %d)" % (len(failures), len(in_flight)))

        # ---- 4. SIGTERM ------------------------------------------------------------------------
        replicas[0] = Replica(binary, work, 0, store, secret, port=victim.port)
        time.sleep(2.5)  # nginx tries a failed server again after fail_timeout (2 s here)
        leaving = replicas[1]
        print("\n== 4. SIGTERM replica %d (port %d) under load: 12 clients for 6 s, SIGTERM at 2 s (replica 0 "
              "restarted)" % (leaving.index, leaving.port))
        rc = {}
        stopper = threading.Thread(target=lambda: rc.setdefault("rc", leaving.stop()))
        before = [r.served() for r in replicas]
        results, _ = run_load(nginx.port, 12, 6.0, mix, [(2.0, stopper.start)])
        stopper.join(60)
        failures = [r for r in results if not r[3]]
        after = [replicas[0].served() - before[0], replicas[2].served() - before[2]]
        print("%d requests, %d failed; replica %d exit status %s; replicas 0 and 2 served %s" % (
            len(results), len(failures), leaving.index, rc.get("rc"), after))
        check(not failures, "failures during a graceful stop: %s" % failures[:5])
        check(rc.get("rc") == 0, "replica %d exited with %s after SIGTERM:\n%s" % (leaving.index, rc.get("rc"),
                                                                                   leaving.tail()))
        check(after[0] > 0, "the restarted replica took no traffic")
        print("ok   no failures; the stopped replica drained and exited 0")

        # ---- 5. kill -9 with streams in flight, resumed elsewhere -------------------------
        replicas[1] = Replica(binary, work, 1, store, secret, port=leaving.port)
        time.sleep(2.5)
        victim = replicas[2]
        bodies = [{"prompt": "The whale", "max_tokens": 240, "seed": 500 + i, "stream": True,
                   **({"temperature": 0.7, "top_p": 0.95} if i % 2 else {"top_k": 40})} for i in range(30)]
        print("\n== 5. 30 seeded streams of 240 tokens through nginx; kill -9 replica %d (port %d) while they "
              "run; the cut ones resume with Last-Event-ID" % (victim.index, victim.port))
        reference = [None] * len(bodies)

        def uninterrupted(i):
            st, evs, done = raw_stream(nginx.port, "/v1/generate", bodies[i])
            reference[i] = evs if st == 200 and done else None

        ts = [threading.Thread(target=uninterrupted, args=(i,)) for i in range(len(bodies))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(300)
        check(all(reference), "%d uninterrupted streams failed" % sum(r is None for r in reference))
        redis.command("FLUSHALL")  # no checkpoint of those runs may stand in for the next ones
        joined, resumed, attempts = [None] * len(bodies), [0] * len(bodies), [0]
        lock = threading.Lock()

        def chaos(i):
            got, last = [], None
            for _ in range(5):
                st, evs, done = raw_stream(nginx.port, "/v1/generate", bodies[i], last=last)
                if st not in (0, 200):
                    break
                got += [e for e in evs if e[0] is not None]
                if done:
                    joined[i] = got
                    return
                with lock:
                    resumed[i] += 1
                    attempts[0] += 1
                last = got[-1][0] if got else None
                time.sleep(0.2)
            joined[i] = got

        ts = [threading.Thread(target=chaos, args=(i,)) for i in range(len(bodies))]
        for t in ts:
            t.start()
        # kill it once it is decoding several of them, some way in
        deadline = time.monotonic() + 60
        while victim.server.metric("attnlm_active_sequences") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        victim.kill()
        for t in ts:
            t.join(300)
        cut = sum(1 for n in resumed if n)
        lost = sum(max(0, len(r) - len(j or [])) for r, j in zip(reference, joined))
        repeated = sum(max(0, len(j or []) - len(r)) for r, j in zip(reference, joined))
        differ = [i for i, (r, j) in enumerate(zip(reference, joined)) if r != j]
        print("%d streams, %d cut by the kill and resumed (%d attempts); %d events lost, %d repeated, %d streams "
              "differ from their uninterrupted run" % (len(bodies), cut, attempts[0], lost, repeated, len(differ)))
        check(cut > 0, "the kill cut no stream: nothing was resumed")
        check(not differ, "streams %s differ from their uninterrupted runs" % differ[:5])
        print("ok   every stream equals its uninterrupted run, events and text, byte for byte")

        # ---- end ---------------------------------------------------------------------------
        for r in (replicas[0], replicas[1]):
            status = r.stop()
            check(status == 0, "replica %d exited with %s:\n%s" % (r.index, status, r.tail()))
        print("\nscale-test passed")
        return 0
    except Failed as e:
        print("scale-test: FAILED: %s" % e, file=sys.stderr)
        if nginx:
            print("nginx error log:\n%s" % nginx.errors(), file=sys.stderr)
        return 1
    finally:
        if nginx:
            nginx.stop()
        for r in replicas:
            r.kill()
        if redis:
            redis.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
