"""HTTP integration tests: the real attnlm-server on a loopback port.

Run from the repository root:
    ATTNLM_SERVER=build/attnlm-server ATTNLM_CLI=build/attnlm python3 tests/http/test_service.py
Every server a test starts is stopped with SIGTERM and must exit 0 (under the
sanitizer build, a leak or error report makes the exit status non-zero).
"""
import hashlib
import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

SERVER = os.environ.get("ATTNLM_SERVER", "build/attnlm-server")
CLI = os.environ.get("ATTNLM_CLI", "build/attnlm")
DEFAULT = "models/default.safetensors"
FIXTURE = "tests/fixtures/gru_dot.safetensors"
MULTIHEAD = "tests/fixtures/lstm_multihead.safetensors"
JSON_CT = {"Content-Type": "application/json"}


class Server:
    """attnlm-server on an ephemeral loopback port, stderr collected."""

    def __init__(self, *flags, model=DEFAULT, env=None):
        cmd = [SERVER, "--host", "127.0.0.1", "--port", "0", "--model", model, *flags]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines = []
        self.port = None
        deadline = time.time() + 60
        while self.port is None:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError("server exited: " + "".join(self.lines))
            self.lines.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
            if time.time() > deadline:
                raise AssertionError("server did not start")
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def conn(self, timeout=60):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, raw=None):
        c = self.conn()
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        h = dict(JSON_CT if data is not None else {})
        h.update(headers or {})
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        payload = r.read()
        c.close()
        return r.status, dict(r.getheaders()), payload

    def json(self, method, path, body=None, headers=None, raw=None):
        status, headers, payload = self.request(method, path, body, headers, raw)
        return status, headers, json.loads(payload) if payload else None

    def metric(self, name):
        _, _, text = self.request("GET", "/metrics")
        total = 0.0
        for line in text.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self.reader.join(5)
        self.proc.stderr.close()
        return rc


def sse_events(payload):
    events = []
    for block in payload.decode().split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[6:]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def cli_scores(model, text):
    out = subprocess.run([CLI, "score", "--model", model, "--text", text], capture_output=True,
                         text=True, check=True).stdout
    return [float(line.split()[-1]) for line in out.splitlines()
            if re.match(r"^\s*\d+\s+0x", line)]


class Shared(unittest.TestCase):
    """One server on the default model for the read-only checks."""

    @classmethod
    def setUpClass(cls):
        cls.s = Server("--workers", "2", "--max-body", "4096", "--max-input-tokens", "300",
                       "--max-new-tokens", "500", "--max-attention-tokens", "40")

    @classmethod
    def tearDownClass(cls):
        rc = cls.s.stop()
        assert rc == 0, "server exit %d\n%s" % (rc, "".join(cls.s.lines[-30:]))

    def error(self, status, body, want_status, want_param, path="/v1/score"):
        self.assertEqual(status, want_status, body)
        err = body["error"]
        self.assertEqual(err["code"], want_status)
        self.assertEqual(err["param"], want_param, err)
        self.assertTrue(err["message"])
        self.assertIsInstance(err["type"], str)

    def test_health_ready_models(self):
        self.assertEqual(self.s.json("GET", "/health")[2], {"status": "ok"})
        self.assertEqual(self.s.json("GET", "/ready")[2], {"status": "ready"})
        _, _, models = self.s.json("GET", "/v1/models")
        self.assertEqual(models["object"], "list")
        self.assertEqual(models["data"][0]["id"], "moby-gru2x384-dot")

    def test_model_info(self):
        _, _, info = self.s.json("GET", "/v1/model")
        with open(DEFAULT, "rb") as f:
            self.assertEqual(info["sha256"], hashlib.sha256(f.read()).hexdigest())
        self.assertEqual(info["metadata"]["layers"], 2)
        self.assertEqual(info["metadata"]["cell"], "gru")
        self.assertEqual(info["parameters"], 1816129)
        self.assertEqual(info["limits"]["max_body_bytes"], 4096)
        self.assertEqual(info["limits"]["max_input_tokens"], 300)
        self.assertEqual(info["limits"]["workers"], 2)

    def test_tokenize_detokenize(self):
        _, _, t = self.s.json("POST", "/v1/tokenize", {"text": "Hé"})
        self.assertEqual([x["id"] for x in t["tokens"]], [72, 195, 169])
        self.assertEqual(t["tokens"][1]["text"], "\ufffd")
        ids = [104, 0xE2, 0x82, 0x41, 0xFF, 256]
        _, _, d = self.s.json("POST", "/v1/detokenize", {"ids": ids})
        self.assertEqual(d["text"], bytes([104, 0xE2, 0x82, 0x41, 0xFF]).decode("utf-8", "replace"))

    def test_score_equals_engine(self):
        text = "It was the best of times, it was the worst of times."
        _, _, r = self.s.json("POST", "/v1/score", {"text": text, "top_k": 3})
        want = cli_scores(DEFAULT, text)
        got = [t["logprob"] for t in r["tokens"]]
        self.assertEqual(len(got), len(text))
        for a, b in zip(got, want):
            self.assertAlmostEqual(a, b, delta=2e-5)
        self.assertAlmostEqual(r["logprob"], sum(got), delta=1e-3)
        self.assertAlmostEqual(r["perplexity"], math.exp(-r["logprob"] / len(text)), delta=1e-3)
        for t in r["tokens"]:
            lps = [x["logprob"] for x in t["top"]]
            self.assertEqual(lps, sorted(lps, reverse=True))
            self.assertGreaterEqual(lps[0], t["logprob"])
        self.assertEqual(len(r["next"]), 3)

    def test_candidates_equal_joined_scoring(self):
        _, _, r = self.s.json("POST", "/v1/score", {"text": "The whale", "candidates": [" swam", "!"]})
        _, _, j = self.s.json("POST", "/v1/score", {"text": "The whale swam"})
        want = sum(t["logprob"] for t in j["tokens"][len("The whale"):])
        self.assertAlmostEqual(r["candidates"][0]["logprob"], want, delta=1e-4)

    def test_generate_reproducible_and_matches_cli_greedy(self):
        req = {"prompt": "Call me Ishmael. ", "max_tokens": 50, "temperature": 0.8, "seed": 9}
        a = self.s.json("POST", "/v1/generate", req)[2]
        b = self.s.json("POST", "/v1/generate", req)[2]
        self.assertEqual(a["text"], b["text"])
        self.assertEqual(a["usage"], {"prompt_tokens": 17, "completion_tokens": 50})
        g = self.s.json("POST", "/v1/generate", {"prompt": "Call me", "max_tokens": 40,
                                                 "temperature": 0})[2]
        out = subprocess.run([CLI, "generate", "--model", DEFAULT, "--prompt", "Call me",
                              "--max-tokens", "40", "--temperature", "0"],
                             capture_output=True, check=True).stdout
        self.assertEqual(g["text"].encode(), out[len(b"Call me"):].rstrip(b"\n")[:len(g["text"].encode())])

    def test_stream_equals_plain(self):
        req = {"prompt": "The sea ", "max_tokens": 40, "seed": 3, "logprobs": 2}
        plain = self.s.json("POST", "/v1/generate", req)[2]
        status, headers, payload = self.s.request("POST", "/v1/generate", {**req, "stream": True})
        self.assertEqual(status, 200)
        self.assertTrue(headers["Content-Type"].startswith("text/event-stream"))
        ev = sse_events(payload)
        self.assertEqual(ev[-1], "[DONE]")
        self.assertEqual(ev[-2]["finish_reason"], "length")
        tokens = [e for e in ev[:-2]]
        self.assertEqual(len(tokens), 40)
        self.assertEqual("".join(e["text"] for e in ev[:-1]), plain["text"])
        self.assertEqual([e["token"]["id"] for e in tokens], [t["id"] for t in plain["tokens"]])

    def test_stop_string(self):
        base = self.s.json("POST", "/v1/generate", {"prompt": "Call me", "max_tokens": 60,
                                                    "temperature": 0})[2]["text"]
        stop = base[10:13]
        r = self.s.json("POST", "/v1/generate", {"prompt": "Call me", "max_tokens": 60,
                                                 "temperature": 0, "stop": [stop]})[2]
        self.assertEqual(r["finish_reason"], "stop")
        self.assertEqual(r["text"], base[:base.index(stop)])

    def test_attention_band_dense_and_generation_rows(self):
        text = "Call me Ishmael."
        band = self.s.json("POST", "/v1/attention", {"text": text})[2]
        dense = self.s.json("POST", "/v1/attention", {"text": text, "format": "dense"})[2]
        T = len(text) + 1
        self.assertEqual(band["tokens"][0]["id"], 256)
        for t in range(T):
            self.assertAlmostEqual(sum(band["maps"][0][t]), 1.0, delta=1e-5)
            self.assertEqual(len(band["maps"][0][t]), min(t + 1, band["window"]))
            self.assertEqual(len(dense["maps"][0][t]), T)
            self.assertEqual(dense["maps"][0][t][:t + 1][-len(band["maps"][0][t]):], band["maps"][0][t])
        g = self.s.json("POST", "/v1/generate", {"prompt": text[:-1], "max_tokens": 1,
                                                 "temperature": 0, "attention": True})[2]
        row = g["tokens"][0]["attention"][0]
        self.assertEqual(len(row), len(band["maps"][0][T - 2]))
        for a, b in zip(row, band["maps"][0][T - 2]):
            self.assertAlmostEqual(a, b, delta=1e-5)

    def test_completions(self):
        r = self.s.json("POST", "/v1/completions", {"model": "x", "prompt": "Call me Ishmael.",
                                                    "max_tokens": 0, "echo": True, "logprobs": 1})[2]
        sc = self.s.json("POST", "/v1/score", {"text": "Call me Ishmael."})[2]
        lp = r["choices"][0]["logprobs"]["token_logprobs"]
        self.assertEqual(len(lp), 16)
        for a, t in zip(lp, sc["tokens"]):
            self.assertAlmostEqual(a, t["logprob"], delta=1e-5)
        r = self.s.json("POST", "/v1/completions", {"prompt": "a", "max_tokens": 5, "n": 2, "seed": 4})[2]
        self.assertEqual(r["object"], "text_completion")
        self.assertEqual(len(r["choices"]), 2)
        self.assertEqual(r["usage"]["completion_tokens"], 10)
        _, _, payload = self.s.request("POST", "/v1/completions", {"prompt": "a", "max_tokens": 5,
                                                                  "stream": True})
        ev = sse_events(payload)
        self.assertEqual(ev[-1], "[DONE]")
        self.assertEqual(ev[-2]["choices"][0]["finish_reason"], "length")

    def test_errors(self):
        st, _, b = self.s.json("POST", "/v1/score", raw="{not json")
        self.error(st, b, 400, None)
        st, _, b = self.s.json("POST", "/v1/score", {"text": "a", "top_k": "x"})
        self.error(st, b, 400, "top_k")
        st, _, b = self.s.json("POST", "/v1/generate", {"temperature": -1})
        self.error(st, b, 400, "temperature")
        st, _, b = self.s.json("POST", "/v1/generate", {"max_tokens": 501})
        self.error(st, b, 400, "max_tokens")
        st, _, b = self.s.json("POST", "/v1/score", {"ids": [1, 999]})
        self.error(st, b, 400, "ids")
        st, _, b = self.s.json("GET", "/v1/nothing")
        self.error(st, b, 404, None)
        st, h, b = self.s.json("GET", "/v1/score")
        self.error(st, b, 405, None)
        self.assertEqual(h["Allow"], "POST")
        st, _, b = self.s.json("POST", "/v1/score", raw=json.dumps({"text": "x" * 5000}))
        self.error(st, b, 413, None)
        st, _, b = self.s.json("POST", "/v1/score", {"text": "x" * 301})
        self.error(st, b, 413, "text")
        st, _, b = self.s.json("POST", "/v1/attention", {"text": "x" * 41})
        self.error(st, b, 413, "text")
        st, _, b = self.s.json("POST", "/v1/score", raw='{"text":"a"}', headers={"Content-Type": "text/plain"})
        self.error(st, b, 415, None)

    def test_metrics_move(self):
        before = self.s.metric("attnlm_generated_tokens_total")
        self.s.json("POST", "/v1/generate", {"max_tokens": 7})
        self.assertEqual(self.s.metric("attnlm_generated_tokens_total") - before, 7)
        _, h, _ = self.s.request("GET", "/metrics")
        self.assertTrue(h["Content-Type"].startswith("text/plain; version=0.0.4"))
        self.assertGreater(self.s.metric('attnlm_requests_total{route="/v1/generate",status="200"}'), 0)

    def test_concurrent_generations_equal_alone(self):
        reqs = [{"prompt": "p%d" % i, "max_tokens": 30 + i, "seed": i, "temperature": 0.9} for i in range(8)]
        alone = [self.s.json("POST", "/v1/generate", r)[2]["text"] for r in reqs]
        together = [None] * 8

        def run(i):
            together[i] = self.s.json("POST", "/v1/generate", reqs[i])[2]["text"]
        th = [threading.Thread(target=run, args=(i,)) for i in range(8)]
        [t.start() for t in th]
        [t.join() for t in th]
        self.assertEqual(together, alone)


class Lifecycle(unittest.TestCase):
    def stop_ok(self, s):
        rc = s.stop()
        self.assertEqual(rc, 0, "".join(s.lines[-30:]))

    def test_api_key(self):
        s = Server("--api-key", "sekret", model=FIXTURE)
        try:
            st, h, b = s.json("POST", "/v1/score", {"text": "a"})
            self.assertEqual(st, 401)
            self.assertEqual(b["error"]["type"], "authentication_error")
            self.assertEqual(s.json("POST", "/v1/score", {"text": "a"},
                                    {"Authorization": "Bearer wrong"})[0], 401)
            self.assertEqual(s.json("POST", "/v1/score", {"text": "a"},
                                    {"Authorization": "Bearer sekret"})[0], 200)
            self.assertEqual(s.json("POST", "/v1/score", {"text": "a"}, {"X-Api-Key": "sekret"})[0], 200)
            for path in ("/health", "/ready", "/metrics"):
                self.assertEqual(s.request("GET", path)[0], 200)
        finally:
            self.stop_ok(s)

    def test_queue_full_503(self):
        s = Server("--workers", "1", "--queue", "1", "--max-new-tokens", "100000")
        try:
            results = []

            def run():
                results.append(s.json("POST", "/v1/generate", {"max_tokens": 4000})[:3:2])
            th = [threading.Thread(target=run) for _ in range(5)]
            for t in th:
                t.start()
                time.sleep(0.05)
            [t.join() for t in th]
            codes = sorted(r[0] for r in results)
            self.assertIn(503, codes)
            self.assertIn(200, codes)
            busy = [b for c, b in results if c == 503][0]
            self.assertEqual(busy["error"]["type"], "overloaded_error")
        finally:
            self.stop_ok(s)

    def test_disconnects_free_their_sequences(self):
        s = Server("--max-new-tokens", "100000")
        try:
            for stream in (True, False):
                before = s.metric("attnlm_cancelled_total")
                sock = socket.create_connection(("127.0.0.1", s.port))
                body = json.dumps({"max_tokens": 50000, "stream": stream}).encode()
                sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                if stream:
                    got = b""
                    while got.count(b"data: ") < 3:
                        got += sock.recv(4096)
                else:
                    deadline = time.time() + 10
                    while s.metric("attnlm_active_sequences") < 1 and time.time() < deadline:
                        time.sleep(0.01)
                self.assertEqual(s.metric("attnlm_active_sequences"), 1)
                sock.close()
                deadline = time.time() + 10
                while s.metric("attnlm_active_sequences") > 0 and time.time() < deadline:
                    time.sleep(0.02)
                self.assertEqual(s.metric("attnlm_active_sequences"), 0)
                self.assertEqual(s.metric("attnlm_cancelled_total") - before, 1)
        finally:
            self.stop_ok(s)

    def test_timeout_504(self):
        s = Server("--timeout", "0.5", "--max-new-tokens", "100000")
        try:
            st, _, b = s.json("POST", "/v1/generate", {"max_tokens": 50000})
            self.assertEqual(st, 504)
            self.assertEqual(b["error"]["type"], "timeout_error")
        finally:
            self.stop_ok(s)

    def test_sigterm_drains_in_flight_generation(self):
        s = Server("--max-new-tokens", "100000")
        result = {}

        def run():
            result["r"] = s.json("POST", "/v1/generate", {"max_tokens": 6000, "seed": 1})
        t = threading.Thread(target=run)
        t.start()
        deadline = time.time() + 10
        while s.metric("attnlm_active_sequences") < 1 and time.time() < deadline:
            time.sleep(0.01)
        keep = s.conn()
        keep.request("GET", "/health")
        keep.getresponse().read()
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        keep.request("GET", "/ready")
        ready = keep.getresponse()
        ready.read()
        self.assertEqual(ready.status, 503)
        t.join(60)
        status, _, body = result["r"]
        self.assertEqual(status, 200)
        self.assertEqual(body["usage"]["completion_tokens"], 6000)
        keep.close()
        self.stop_ok(s)

    def test_bad_model_refused_before_listening(self):
        with tempfile.TemporaryDirectory() as d:
            cut = os.path.join(d, "cut.safetensors")
            with open(FIXTURE, "rb") as f:
                data = f.read()
            with open(cut, "wb") as f:
                f.write(data[: len(data) // 2])
            for path in (cut, os.path.join(d, "missing.safetensors")):
                p = subprocess.run([SERVER, "--port", "0", "--model", path], capture_output=True, text=True,
                                   timeout=30)
                self.assertEqual(p.returncode, 1)
                lines = p.stderr.strip().splitlines()
                self.assertEqual(len(lines), 1, p.stderr)
                self.assertIn(path, lines[0])
                self.assertNotIn("listening", p.stderr)

    def test_health_flag_probes_a_running_server(self):
        s = Server(model=FIXTURE)
        try:
            port = str(s.port)
            p = subprocess.run([SERVER, "--health", "--port", port], capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 0, p.stderr)
            # the container's way: settings from the environment, a wildcard host means loopback
            env = dict(os.environ, ATTNLM_HOST="0.0.0.0", ATTNLM_PORT=port)
            p = subprocess.run([SERVER, "--health"], capture_output=True, text=True, timeout=30, env=env)
            self.assertEqual(p.returncode, 0, p.stderr)
        finally:
            self.stop_ok(s)
        p = subprocess.run([SERVER, "--health", "--port", port], capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 1)
        self.assertIn("cannot connect to 127.0.0.1:" + port, p.stderr)

    def test_multihead_attention_heads(self):
        s = Server(model=MULTIHEAD)
        try:
            r = s.json("POST", "/v1/attention", {"text": "abcdefgh"})[2]
            self.assertGreater(r["heads"], 1)
            self.assertEqual(len(r["maps"]), r["heads"])
            for h in r["maps"]:
                for row in h:
                    self.assertAlmostEqual(sum(row), 1.0, delta=1e-5)
        finally:
            self.stop_ok(s)


if __name__ == "__main__":
    unittest.main(verbosity=2)
