"""What a hostile or careless client, or an operator's hand on the model file, must not do to
a running server: memory bounded per request and per stream, the file pulled away, a reload,
slow connections, the admin port, and the HTTP details a strict client or proxy relies on.

Memory figures are read from /proc/PID/status: VmHWM (the peak) and VmRSS.  Under the
sanitizer build (ATTNLM_SAN=1) the bounds are four times as wide: the sanitizers keep
quarantined and shadow memory of their own.
"""
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import http.client

from servercase import FIXTURES, TINY, ServerCase, raw_post, sse_events, wait_for, without_timings
from attnlm_server import proc_memory

SAN = os.environ.get("ATTNLM_SAN") == "1"
MB = 1024 * 1024


def bound(nbytes):
    return nbytes * (4 if SAN else 1)


def raw_exchange(port, data, timeout=10):
    """Sends raw bytes, reads until the server closes or `timeout`; -> (bytes, closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    out, closed = b"", False
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
            out += chunk
    except socket.timeout:
        pass
    s.close()
    return out, closed


def read_stream(s, timeout, until=None):
    """What a raw socket receives until the server closes it (or `until` appears near the end)."""
    data = b""
    s.settimeout(timeout)
    while not (until and until in data[-64:]):
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    s.close()
    return data


def status_of(raw):
    m = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    assert m, raw[:200]
    return int(m.group(1))


def body_of(raw):
    return raw.split(b"\r\n\r\n", 1)[1]


class TestMemory(ServerCase):
    FLAGS = []

    def test_three_large_answers_stay_bounded(self):
        """4,095 random ids with every alternative (61 MB of JSON each) and a 2,048-token
        generation with all alternatives and attention rows, three at once: peak <= 300 MB, and
        <= 120 MB a second after."""
        import random
        rnd = random.Random(1)
        score = {"ids": [rnd.randrange(256) for _ in range(4095)], "top_k": 257}
        gen = {"prompt": "Call me", "max_tokens": 2048, "logprobs": 257, "attention": True, "seed": 1}
        results = []

        def one(path, body):
            c = self.s.conn(300)
            c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            r = c.getresponse()
            results.append((r.status, len(r.read())))
            c.close()

        threads = [threading.Thread(target=one, args=a) for a in
                   (("/v1/score", score), ("/v1/score", score), ("/v1/generate", gen))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        self.assertEqual(sorted(r[0] for r in results), [200, 200, 200], results)
        self.assertGreater(min(r[1] for r in results), 20 * MB, results)
        peak = proc_memory(self.s.proc.pid, "VmHWM")
        time.sleep(1)
        after = proc_memory(self.s.proc.pid, "VmRSS")
        self.assertLessEqual(peak, bound(300 * MB), "peak RSS %.0f MB" % (peak / MB))
        self.assertLessEqual(after, bound(120 * MB), "RSS a second after %.0f MB" % (after / MB))


class TestBackpressure(ServerCase):
    def test_streams_that_nobody_reads(self):
        """Streaming clients that never read stop being decoded once their unsent output passes the
        bound; memory stays bounded, other clients are answered, and after --timeout seconds
        without reading the streams are ended and logged as such."""
        srv = self.start("--timeout", "10")
        body = {"prompt": "Call me", "max_tokens": 2048, "logprobs": 257, "attention": True, "stream": True}
        socks = []
        for _ in range(20):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel holds little for it
            s.connect(("127.0.0.1", srv.port))
            data = json.dumps(body).encode()
            s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
            socks.append(s)
        try:
            # They block: the tokens generated stop growing well short of 20 x 2048.
            def settled():
                a = srv.metric("attnlm_generated_tokens_total")
                time.sleep(0.5)
                return srv.metric("attnlm_generated_tokens_total") == a
            self.assertTrue(wait_for(settled, 30), "generation did not pause")
            generated = srv.metric("attnlm_generated_tokens_total")
            self.assertLess(generated, 20 * 2048 / 2, generated)
            self.assertLessEqual(proc_memory(srv.proc.pid, "VmRSS"), bound(300 * MB))
            status, obj, _ = srv.post("/v1/score", {"text": "Call me Ishmael."})
            self.assertEqual(status, 200, obj)
            # Unread for --timeout: ended, counted, logged with the reason.
            self.assertTrue(wait_for(lambda: srv.metric("attnlm_stalled_total") >= 20, 120),
                            srv.metrics_text()[0][-2000:])
        finally:
            for s in socks:
                s.close()
        self.assertTrue(wait_for(lambda: sum("POST /v1/generate 408" in ln and "client stopped reading" in ln
                                             for ln in srv.lines) >= 20, 30), srv.stderr(30))


def serve_a_copy(case, *flags):
    """A server of the test's own on a copy of the tiny model in a directory of its own; -> (server, path)."""
    d = tempfile.mkdtemp()
    case.addCleanup(shutil.rmtree, d)
    path = os.path.join(d, "m.safetensors")
    shutil.copy(TINY, path)
    return case.start(*flags, model=path), path


class TestModelFile(ServerCase):
    def test_file_changes_do_not_reach_the_server(self):
        srv, path = serve_a_copy(self)
        want = without_timings(srv.ok("/v1/score", {"text": "Whales!"}))
        sha = srv.json("GET", "/v1/model")[1]["sha256"]
        os.truncate(path, 0)
        self.assertEqual(without_timings(srv.ok("/v1/score", {"text": "Whales!"})), want)
        with open(path, "wb") as f:
            f.write(b"\xff" * 100000)
        self.assertEqual(without_timings(srv.ok("/v1/score", {"text": "Whales!"})), want)
        os.unlink(path)
        self.assertEqual(without_timings(srv.ok("/v1/score", {"text": "Whales!"})), want)
        self.assertEqual(srv.json("GET", "/v1/model")[1]["sha256"], sha)


class TestReload(ServerCase):
    def test_sighup_reloads_and_keeps_what_is_in_flight(self):
        srv, path = serve_a_copy(self, "--max-new-tokens", "400000")
        before = srv.json("GET", "/v1/model")[1]
        old_score = srv.ok("/v1/score", {"text": "Whales!"})
        # A long stream on the old weights, read slowly so it is still in flight at the reload.
        s = raw_post(srv.port, "/v1/generate", {"prompt": "a", "max_tokens": 300000, "stream": True, "seed": 3})
        self.assertIn(b"200 OK", s.recv(4096))
        other = os.path.join(FIXTURES, "lstm_additive.safetensors")
        shutil.copy(other, path + ".new")
        os.rename(path + ".new", path)
        time.sleep(1.1)  # a distinct loaded_at second
        os.kill(srv.proc.pid, signal.SIGHUP)
        self.assertTrue(wait_for(lambda: srv.json("GET", "/v1/models")[1]["data"][0]["id"] != before["id"], 30),
                        srv.stderr(10))
        after = srv.json("GET", "/v1/model")[1]
        self.assertNotEqual(after["sha256"], before["sha256"])
        self.assertGreater(after["loaded_at"], before["loaded_at"])
        self.assertEqual(after["config"]["cell"], "lstm")
        self.assertNotEqual(srv.ok("/v1/score", {"text": "Whales!"})["logprob"], old_score["logprob"])
        # The stream goes on to its end on the old model.
        data = read_stream(s, 120, until=b"data: [DONE]")
        self.assertIn(b"\"finish_reason\":\"length\"", data)
        self.assertIn(b"data: [DONE]", data)
        # A broken file: the reload fails, is logged and counted, and the model serves on.
        with open(path, "wb") as f:
            f.write(b"\x10\x00")
        os.kill(srv.proc.pid, signal.SIGHUP)
        self.assertTrue(wait_for(lambda: any("reload failed" in ln for ln in srv.lines), 30), srv.stderr(10))
        self.assertEqual(srv.json("GET", "/v1/model")[1]["sha256"], after["sha256"])
        self.assertEqual(srv.ok("/v1/score", {"text": "x"})["usage"]["input_tokens"], 1)
        self.assertEqual(srv.metric("attnlm_model_reloads_total", result="ok"), 1)
        self.assertEqual(srv.metric("attnlm_model_reloads_total", result="failed"), 1)


class TestSlowClients(ServerCase):
    def test_trickling_headers_do_not_lock_out(self):
        """Connections that send a header byte a second: the admin port answers throughout, they
        are cut at --header-timeout, and a fresh client on the main port is served."""
        srv = self.start("--header-timeout", "1", "--max-connections", "40", "--admin-port", "0")
        self.assertIsNotNone(srv.admin_port)
        stop = threading.Event()
        socks = []

        def trickle():
            while not stop.is_set():
                for s in list(socks):
                    try:
                        s.send(b"X")
                    except OSError:
                        socks.remove(s)
                while len(socks) < 60 and not stop.is_set():
                    try:
                        s = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
                        s.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                        socks.append(s)
                    except OSError:
                        break
                stop.wait(0.5)

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        try:
            time.sleep(0.5)
            admin_ok = 0
            for _ in range(6):
                c = http.client.HTTPConnection("127.0.0.1", srv.admin_port, timeout=5)
                c.request("GET", "/health")
                admin_ok += c.getresponse().status == 200
                c.close()
                time.sleep(0.3)
            self.assertEqual(admin_ok, 6)

            def fresh():
                try:
                    return srv.request("GET", "/health", timeout=5)[0] == 200
                except (OSError, http.client.HTTPException):
                    return False
            self.assertTrue(wait_for(fresh, 20, interval=0.2), "a fresh client was not served")
        finally:
            stop.set()
            t.join(5)
            for s in socks:
                s.close()
        self.assertGreaterEqual(srv.metric("attnlm_connections_cut_total", reason="header"), 40)

    def test_slow_body_is_cut(self):
        srv = self.start("--header-timeout", "1", "--min-body-rate", "1000")
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 5000\r\n\r\n{")
        cut = False
        for _ in range(40):
            try:
                s.send(b" ")
                time.sleep(0.2)
                if s.recv(1, socket.MSG_DONTWAIT) == b"":
                    cut = True
                    break
            except BlockingIOError:
                continue
            except OSError:
                cut = True
                break
        s.close()
        self.assertTrue(cut, "the slow body was not cut")
        self.assertTrue(wait_for(lambda: srv.metric("attnlm_connections_cut_total", reason="body") >= 1, 10))


class TestAdminPort(ServerCase):
    def test_admin_routes(self):
        srv = self.start("--admin-port", "0", "--api-key", "k")
        for path, want in (("/health", 200), ("/ready", 200), ("/metrics", 200), ("/v1/model", 404), ("/", 404)):
            c = http.client.HTTPConnection("127.0.0.1", srv.admin_port, timeout=10)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            self.assertEqual(r.status, want, path)
            c.close()
        # --health probes the admin port when there is one.
        rc = subprocess.run([srv.cmd[0], "--health", "--port", str(srv.port), "--admin-port", str(srv.admin_port)],
                            capture_output=True).returncode
        self.assertEqual(rc, 0)


class TestHygiene(ServerCase):
    FLAGS = ["--api-key", "k"]
    MODEL = TINY

    def raw(self, data, **kw):
        return raw_exchange(self.s.port, data, **kw)

    def test_invalid_utf8_json_string(self):
        body = b"{\"text\": \"\xff\xfe\xc3\"}"
        out, _ = self.raw(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nConnection: close\r\n"
                          b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.assertEqual(status_of(out), 400)
        self.assertEqual(json.loads(body_of(out))["error"]["param"], "text")

    def test_404_body_is_utf8(self):
        out, _ = self.raw(b"GET /v1/\xff\xfe\xc3 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                          b"Connection: close\r\n\r\n")
        self.assertEqual(status_of(out), 404)
        body = body_of(out).decode("utf-8")  # raises if not UTF-8
        self.assertIn("\ufffd", json.loads(body)["error"]["message"])

    def test_log_line_escapes_what_the_client_sent(self):
        self.raw(b"GET /\x1b[31mred HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(wait_for(lambda: any("\\x1b[31mred" in ln for ln in self.s.lines), 5), self.s.stderr(5))
        self.assertFalse(any("\x1b" in ln for ln in self.s.lines))

    def test_bearer_scheme_any_case(self):
        status, obj, _ = self.s.post("/v1/score", {"text": "a"}, headers={"Authorization": "bearer k"})
        self.assertEqual(status, 200, obj)

    def test_routes_not_listed_without_a_key(self):
        self.assertEqual(self.s.request("GET", "/no/such/route")[0], 401)
        self.assertEqual(self.s.request("GET", "/v1/score")[0], 401)
        self.assertEqual(self.s.request("GET", "/no/such/route", headers={"X-Api-Key": "k"})[0], 404)
        self.assertEqual(self.s.request("GET", "/metrics")[0], 200)

    def test_http11_without_host(self):
        out, closed = self.raw(b"GET /health HTTP/1.1\r\n\r\n")
        self.assertEqual(status_of(out), 400)
        self.assertTrue(closed)

    def test_ambiguous_body_length_closes(self):
        for head in (b"Content-Length: 2\r\nContent-Length: 3\r\n",
                     b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n"):
            out, closed = self.raw(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                                   b"Content-Type: application/json\r\n" + head + b"\r\n{}", timeout=5)
            self.assertEqual(status_of(out), 400, head)
            self.assertTrue(closed, head)

    def test_nul_in_path(self):
        out, closed = self.raw(b"GET /health%00/../x HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(status_of(out), 400)
        self.assertTrue(closed)

    def test_client_leaving_is_not_an_internal_error(self):
        n = len(self.s.lines)
        s = raw_post(self.s.port, "/v1/generate", {"prompt": "a", "max_tokens": 500})
        s.close()  # no Authorization: 401 at once; now one that runs
        s = socket.create_connection(("127.0.0.1", self.s.port))
        data = json.dumps({"text": "x" * 250}).encode()
        s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
        s.close()
        time.sleep(1)
        self.assertFalse(any("internal error" in ln for ln in self.s.lines[n:]), self.s.stderr(10))


class TestStreamEndsAreLogged(ServerCase):
    def test_deadline_and_shutdown(self):
        srv = self.start("--timeout", "1", "--max-new-tokens", "1000000", "--drain-timeout", "0.5", model=TINY)
        status, _, body = srv.request("POST", "/v1/generate",
                                      {"prompt": "a", "max_tokens": 1000000, "stream": True})
        self.assertEqual(status, 200)
        events = sse_events(body)
        self.assertEqual(events[-2]["error"]["code"], 504)
        self.assertTrue(wait_for(lambda: any("POST /v1/generate 504" in ln for ln in srv.lines), 5), srv.stderr(5))

        srv2 = self.start("--max-new-tokens", "1000000", "--drain-timeout", "0.5", model=TINY)
        s = raw_post(srv2.port, "/v1/generate", {"prompt": "a", "max_tokens": 1000000, "stream": True})
        s.recv(100)
        srv2.proc.send_signal(signal.SIGTERM)
        data = read_stream(s, 60)
        self.assertIn(b"\"code\":503", data)
        self.assertTrue(wait_for(lambda: any("POST /v1/generate 503" in ln for ln in srv2.lines), 30),
                        srv2.stderr(5))


class TestTLS(ServerCase):
    def test_https_with_a_certificate_the_test_makes(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)
        srv = self.start("--tls-cert", cert, "--tls-key", key, "--api-key", "k", model=TINY)
        out = subprocess.run(["curl", "-sS", "--cacert", cert, "-H", "Authorization: Bearer k",
                              "-H", "Content-Type: application/json", "-d", '{"text": "abc"}',
                              "https://127.0.0.1:%d/v1/score" % srv.port], capture_output=True, check=True)
        self.assertEqual(json.loads(out.stdout)["usage"]["input_tokens"], 3)
        ctx = ssl.create_default_context(cafile=cert)
        c = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=10)
        c.request("GET", "/health")
        self.assertEqual(c.getresponse().status, 200)
        c.close()
        # Plain HTTP to the TLS port gets no answer.
        plain = subprocess.run(["curl", "-s", "-m", "5", "http://127.0.0.1:%d/health" % srv.port],
                               capture_output=True)
        self.assertNotEqual(plain.returncode, 0)


class TestCorsAndTrace(ServerCase):
    FLAGS = ["--cors-origin", "https://app.example"]
    MODEL = TINY

    def test_cors(self):
        status, headers, _ = self.s.request("OPTIONS", "/v1/generate", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization"})
        self.assertEqual(status, 204)
        self.assertEqual(headers["Access-Control-Allow-Origin"], "https://app.example")
        for h in ("Authorization", "Content-Type", "X-Request-Id", "traceparent"):
            self.assertIn(h, headers["Access-Control-Allow-Headers"])
        self.assertIn("POST", headers["Access-Control-Allow-Methods"])
        origin = {"Origin": "https://app.example"}
        for path, body, want in (("/v1/score", {"text": "a"}, 200), ("/v1/score", {"text": 5}, 400),
                                 ("/v1/generate", {"prompt": "a", "max_tokens": 3, "stream": True}, 200)):
            status, headers, _ = self.s.request("POST", path, body, headers=origin)
            self.assertEqual(status, want)
            self.assertEqual(headers["Access-Control-Allow-Origin"], "https://app.example", path)
        status, headers, _ = self.s.request("POST", "/v1/score", {"text": "a"}, headers={"Origin": "https://evil.example"})
        self.assertIsNone(headers.get("Access-Control-Allow-Origin"))

    def test_no_cors_by_default(self):
        srv = self.start(model=TINY)
        status, headers, _ = srv.request("POST", "/v1/score", {"text": "a"}, headers={"Origin": "https://app.example"})
        self.assertIsNone(headers.get("Access-Control-Allow-Origin"))
        self.assertEqual(srv.request("OPTIONS", "/v1/score")[0], 405)

    def test_trace_context(self):
        given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        _, headers, _ = self.s.request("POST", "/v1/score", {"text": "a"}, headers={"traceparent": given})
        tp = headers["traceparent"].split("-")
        self.assertEqual((tp[0], tp[1], tp[3]), ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01"))
        self.assertRegex(tp[2], "^[0-9a-f]{16}$")
        self.assertNotEqual(tp[2], "00f067aa0ba902b7")
        self.assertTrue(wait_for(lambda: any("trace=4bf92f3577b34da6a3ce929d0e0e4736" in ln for ln in self.s.lines), 5))
        for bad in (None, "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "garbage"):
            h = {"traceparent": bad} if bad else {}
            _, headers, _ = self.s.request("GET", "/health", headers=h)
            self.assertRegex(headers["traceparent"], "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
            self.assertNotIn("00000000000000000000000000000000", headers["traceparent"])


class TestJsonLogs(ServerCase):
    def test_one_object_per_line(self):
        srv = self.start("--log-format", "json", model=TINY)
        srv.request("POST", "/v1/score", {"text": "abc"}, headers={"X-Request-Id": "json-1"})
        self.assertTrue(wait_for(lambda: any("json-1" in ln for ln in srv.lines), 5))
        srv.stop_checked()
        for ln in srv.lines:
            obj = json.loads(ln)
            self.assertIn("time", obj)
            self.assertIn(obj["level"], ("info", "warn", "error"))
        req = [json.loads(ln) for ln in srv.lines if "json-1" in ln][0]
        for k in ("request_id", "trace_id", "method", "path", "status", "duration_ms", "tokens_in", "tokens_out",
                  "model"):
            self.assertIn(k, req)
        self.assertEqual((req["method"], req["path"], req["status"], req["tokens_in"]), ("POST", "/v1/score", 200, 3))
