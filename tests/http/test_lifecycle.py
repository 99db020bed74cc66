"""The server's life: admission (a full queue answers 503), clients that leave, deadlines,
the drain on SIGTERM, model files refused before listening, flags and environment,
`--health` and `--port-file`."""
import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest

from servercase import SERVER, TINY, Server, ServerCase, raw_post, sse_events, wait_for


# --------------------------------------------------------------------------------------------
# Admission: a full queue answers 503
# --------------------------------------------------------------------------------------------

class TestQueueFull(ServerCase):
    FLAGS = ["--workers", "1", "--queue", "1", "--max-new-tokens", "3000"]

    def test_queue_full_503(self):
        # one request runs (a batch holds at most --queue sequences), then four arrive
        # together: one takes the single queue place, three are refused
        n = 5
        results = [None] * n
        barrier = threading.Barrier(n - 1)

        def run(i):
            if i > 0:
                barrier.wait()
            try:
                results[i] = self.s.request("POST", "/v1/generate",
                                            {"prompt": "Call me", "max_tokens": 3000, "seed": i})
            except Exception as e:  # noqa
                results[i] = e

        rejected_before = self.s.metric("attnlm_rejected_total")
        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        threads[0].start()
        self.assertTrue(wait_for(lambda: self.s.metric("attnlm_active_sequences") == 1, 10),
                        "the first request did not start")
        for t in threads[1:]:
            t.start()
        for t in threads:
            t.join(300)
        statuses = []
        for r in results:
            self.assertIsInstance(r, tuple, r)
            status, headers, payload = r
            statuses.append(status)
            self.assertIn(status, (200, 503), payload[:300])
            obj = json.loads(payload)
            if status == 503:
                self.assertError(status, obj, headers, 503, None, "overloaded_error", check_param=False)
                self.assertTrue(headers.get("Retry-After"), "503 without Retry-After")
                self.assertTrue(headers["Retry-After"].strip().isdigit())
            else:
                self.assertEqual(obj["usage"]["completion_tokens"], 3000)
        self.assertEqual(statuses[0], 200, statuses)
        self.assertEqual(sorted(statuses[1:]), [200, 503, 503, 503], "one waits, three refused: %s" % statuses)
        self.assertEqual(self.s.metric("attnlm_rejected_total"), rejected_before + statuses.count(503))
        self.assertEqual(self.s.metric("attnlm_queue_depth"), 0)
        self.assertEqual(self.s.post("/v1/score", {"text": "ok"})[0], 200, "serves again afterwards")


# --------------------------------------------------------------------------------------------
# Client disconnects and deadlines
# --------------------------------------------------------------------------------------------

class TestDisconnect(ServerCase):
    FLAGS = ["--workers", "1", "--max-new-tokens", "100000", "--drain-timeout", "5"]
    LONG = 100000  # far longer than any wait below

    def wait_idle(self, cancelled_before):
        idle = wait_for(lambda: self.s.metric("attnlm_active_sequences") == 0, 10)
        self.assertTrue(idle, "sequence still decoding 10 s after the client went away")
        self.assertTrue(wait_for(lambda: self.s.metric("attnlm_cancelled_total") > cancelled_before, 5),
                        "attnlm_cancelled_total did not move")
        self.assertEqual(self.s.metric("attnlm_cancelled_total"), cancelled_before + 1, "one client, one cancel")
        self.assertTrue(wait_for(lambda: self.s.metric("attnlm_requests_in_flight") == 1, 5),
                        "the cancelled request is still in flight (1 = the /metrics request itself)")
        # the server is fine afterwards
        out = self.s.ok("/v1/generate", {"prompt": "x", "max_tokens": 5, "seed": 1})
        self.assertEqual(out["usage"]["completion_tokens"], 5)

    def test_stream_disconnect(self):
        cancelled = self.s.metric("attnlm_cancelled_total")
        s = raw_post(self.s.port, "/v1/generate", {"prompt": "The sea", "max_tokens": self.LONG,
                                                   "stream": True, "seed": 1})
        buf = b""
        while buf.count(b"data: ") < 5:
            chunk = s.recv(4096)
            self.assertTrue(chunk, "server closed the stream early: %r" % buf[:300])
            buf += chunk
        self.assertIn(b"200", buf.split(b"\r\n", 1)[0])
        self.assertIn(b"text/event-stream", buf)
        self.assertEqual(self.s.metric("attnlm_active_sequences"), 1)
        s.close()
        self.wait_idle(cancelled)

    def test_nonstream_disconnect(self):
        cancelled = self.s.metric("attnlm_cancelled_total")
        s = raw_post(self.s.port, "/v1/generate", {"prompt": "The sea", "max_tokens": self.LONG, "seed": 1})
        started = wait_for(lambda: self.s.metric("attnlm_active_sequences") == 1, 10)
        self.assertTrue(started, "generation did not start")
        time.sleep(0.2)
        s.close()
        self.wait_idle(cancelled)


class TestTimeout(ServerCase):
    FLAGS = ["--workers", "1", "--timeout", "1", "--max-new-tokens", "100000", "--drain-timeout", "5"]

    def test_timeout_504(self):
        before = self.s.metric("attnlm_timeouts_total")
        t0 = time.monotonic()
        status, obj, headers = self.s.post("/v1/generate", {"prompt": "x", "max_tokens": 100000, "seed": 1})
        took = time.monotonic() - t0
        self.assertError(status, obj, headers, 504, None, "timeout_error", check_param=False)
        self.assertLess(took, 10, "deadline 1 s")
        self.assertGreaterEqual(took, 0.9)
        self.assertEqual(self.s.metric("attnlm_timeouts_total"), before + 1)
        self.assertTrue(wait_for(lambda: self.s.metric("attnlm_active_sequences") == 0, 5))
        # short requests are unaffected
        self.assertEqual(self.s.post("/v1/generate", {"prompt": "x", "max_tokens": 3})[0], 200)

    def test_timeout_stream(self):
        status, headers, payload = self.s.request("POST", "/v1/generate", {
            "prompt": "x", "max_tokens": 100000, "seed": 1, "stream": True})
        self.assertEqual(status, 200)
        ev = sse_events(payload)
        self.assertEqual(ev[-1], "[DONE]")
        self.assertIn("error", ev[-2], ev[-2])
        self.assertEqual(ev[-2]["error"]["code"], 504)
        self.assertEqual(ev[-2]["error"]["type"], "timeout_error")
        self.assertGreater(len(ev), 3)


# --------------------------------------------------------------------------------------------
# Lifecycle: drain on SIGTERM, load failures, flags
# --------------------------------------------------------------------------------------------

class TestLifecycle(ServerCase):

    def test_sigterm_drains_in_flight(self):
        srv = Server("--workers", "1", "--max-new-tokens", "8000", "--drain-timeout", "60")
        try:
            ka1, ka2 = srv.conn(), srv.conn()
            self.assertEqual(srv.request("GET", "/health", conn=ka1)[0], 200)
            self.assertEqual(srv.request("GET", "/health", conn=ka2)[0], 200)
            req = {"prompt": "Call me Ishmael.", "max_tokens": 8000, "seed": 3, "temperature": 0.8}
            result = {}

            def run():
                try:
                    result["r"] = srv.json("POST", "/v1/generate", req, timeout=300)
                except Exception as e:  # noqa
                    result["r"] = e

            th = threading.Thread(target=run)
            th.start()
            self.assertTrue(wait_for(lambda: srv.metric("attnlm_active_sequences") == 1, 10), "did not start")
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            ready = drain_score = None
            try:
                st, obj, _ = srv.json("GET", "/ready", conn=ka1)
                ready = (st, obj)
            except Exception as e:  # noqa
                ready = e
            try:
                drain_score = srv.json("POST", "/v1/score", {"text": "x"}, conn=ka2)
            except Exception as e:  # noqa
                drain_score = e
            # no new connections: refused, or answered 503
            try:
                late = srv.request("GET", "/ready", timeout=10)[0]
            except (ConnectionError, OSError, http.client.HTTPException):
                late = "refused"
            still_running = th.is_alive()
            th.join(300)
            ka1.close()
            ka2.close()
            srv.proc.wait(120)
        finally:
            if srv.proc.poll() is None:
                srv.proc.kill()
            rc = srv.stop()
        r = result.get("r")
        self.assertIsInstance(r, tuple, "in-flight request failed: %r" % (r,))
        status, obj, _ = r
        self.assertEqual(status, 200, obj)
        self.assertEqual(obj["usage"]["completion_tokens"], 8000)
        self.assertEqual(obj["finish_reason"], "length")
        self.assertEqual(rc, 0, srv.stderr())
        self.assertFalse(srv.sanitizer_report(), srv.stderr())
        self.assertFalse(srv.port_file_left, "port file left after a clean exit")
        self.assertTrue(still_running, "generation finished before the drain checks; make it longer")
        self.assertIsInstance(ready, tuple, "/ready on an open connection during drain: %r" % (ready,))
        self.assertEqual(ready[0], 503, ready)
        self.assertIsInstance(drain_score, tuple, "request on an open connection during drain: %r" % (drain_score,))
        st, obj, headers = drain_score
        self.assertError(st, obj, headers, 503, None, "overloaded_error", check_param=False)
        self.assertTrue(headers.get("Retry-After"))
        self.assertIn(late, ("refused", 503), "a new connection during the drain")

    def expect_load_failure(self, path, why):
        env = dict(os.environ)
        p = subprocess.run([SERVER, "--host", "127.0.0.1", "--port", "0", "--model", path],
                           capture_output=True, timeout=60, env=env)
        err = p.stderr.decode("utf-8", "replace")
        self.assertEqual(p.returncode, 1, "%s: exit %d\n%s" % (why, p.returncode, err))
        self.assertNotIn("listening", err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        self.assertEqual(len(lines), 1, "%s: want one stderr line, got:\n%s" % (why, err))
        self.assertTrue(lines[0].startswith("attnlm: cannot load " + path + ": "), lines[0])
        self.assertGreater(len(lines[0]), len("attnlm: cannot load " + path + ": "), "reason given")

    def test_model_load_failures(self):
        tmp = tempfile.mkdtemp(prefix="attnlm-http-")
        self.addCleanup(shutil.rmtree, tmp)
        with open(TINY, "rb") as f:
            data = f.read()
        trunc = os.path.join(tmp, "truncated.safetensors")
        with open(trunc, "wb") as f:
            f.write(data[:len(data) // 2])
        self.expect_load_failure(trunc, "truncated file")
        tiny = os.path.join(tmp, "tiny.safetensors")
        with open(tiny, "wb") as f:
            f.write(data[:5])
        self.expect_load_failure(tiny, "5-byte file")
        garbage = os.path.join(tmp, "garbage.safetensors")
        with open(garbage, "wb") as f:
            f.write(b"\xff" * 8 + b"not a safetensors header at all" * 10)
        self.expect_load_failure(garbage, "garbage header")
        self.expect_load_failure(os.path.join(tmp, "does-not-exist.safetensors"), "missing file")
        self.expect_load_failure(tmp, "a directory")

    def test_flags(self):
        p = subprocess.run([SERVER, "--help"], capture_output=True, timeout=30)
        self.assertEqual(p.returncode, 0)
        self.assertIn(b"--max-attention-tokens", p.stdout + p.stderr)
        for bad in (["--no-such-flag"], ["--workers", "zero"], ["--port", "70000"], ["--precision", "fp8"],
                    ["--kernels", "sse9"]):
            p = subprocess.run([SERVER, "--host", "127.0.0.1", *bad], capture_output=True, timeout=30)
            self.assertEqual(p.returncode, 2, (bad, p.stderr))
            self.assertEqual(len([ln for ln in p.stderr.decode().splitlines() if ln.strip()]), 1, (bad, p.stderr))

    def test_env_flags(self):
        # the port file named by ATTNLM_PORT_FILE, the way a container is configured
        srv = self.start("--workers", "2", model=TINY, port_file_env=True,
                         env={"ATTNLM_MAX_NEW_TOKENS": "77", "ATTNLM_WORKERS": "1"})
        _, info, _ = srv.json("GET", "/v1/model")
        self.assertEqual(info["limits"]["max_new_tokens"], 77, "env var")
        self.assertEqual(info["limits"]["workers"], 2, "flag wins over env")

    def test_port_file(self):
        srv = Server("--workers", "1", model=TINY)
        try:
            with open(srv.port_file) as f:
                self.assertEqual(f.read(), "%d\n" % srv.port)
            self.assertEqual(os.listdir(srv.dir), ["port"], "nothing left beside it (the temporary file is renamed)")
            self.assertEqual(srv.request("GET", "/health")[0], 200, "listening once the file is there")
        finally:
            rc = srv.stop()
        self.assertEqual(rc, 0, srv.stderr())
        self.assertFalse(srv.port_file_left, "removed at a clean exit")
        # a port file that cannot be written: refused, the server does not stay up
        bad = os.path.join(tempfile.gettempdir(), "attnlm-no-such-directory", "port")
        p = subprocess.run([SERVER, "--host", "127.0.0.1", "--port", "0", "--model", TINY, "--port-file", bad],
                           capture_output=True, timeout=60)
        err = p.stderr.decode("utf-8", "replace")
        self.assertEqual(p.returncode, 1, err)
        self.assertIn("cannot write --port-file " + bad, err)
        self.assertNotIn("listening", err)

    def test_health_flag_probes_a_running_server(self):
        srv = Server(model=TINY)
        try:
            port = str(srv.port)
            p = subprocess.run([SERVER, "--health", "--port", port], capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 0, p.stderr)
            # the container's way: settings from the environment, a wildcard host means loopback
            env = dict(os.environ, ATTNLM_HOST="0.0.0.0", ATTNLM_PORT=port)
            p = subprocess.run([SERVER, "--health"], capture_output=True, text=True, timeout=30, env=env)
            self.assertEqual(p.returncode, 0, p.stderr)
        finally:
            srv.stop_checked()
        p = subprocess.run([SERVER, "--health", "--port", port], capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 1)
        self.assertIn("cannot connect to 127.0.0.1:" + port, p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
