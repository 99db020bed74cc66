"""HTTP integration tests for attnlm-server: the real binary on a loopback port.

Run from the repository root:
    ATTNLM_SERVER=build/attnlm-server ATTNLM_CLI=build/attnlm python3 tests/http/test_http.py
(and the same with build/san/attnlm-server, ASAN_OPTIONS=detect_leaks=1).

Every server a test starts is stopped with SIGTERM and must exit 0: under the sanitizer build a
leak or error report makes the exit status non-zero, which fails the test that owns the server.
Standard library only. The API is described in docs/API.md.
"""
import hashlib
import http.client
import json
import math
import os
import re
import shutil
import signal
import struct
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
TINY = "tests/fixtures/gru_dot.safetensors"
MULTIHEAD = "tests/fixtures/gru_multihead.safetensors"
JSON_CT = {"Content-Type": "application/json"}
LISTEN_RE = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
SANITIZER_RE = re.compile(r"ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:|SUMMARY: \w+Sanitizer")


# --------------------------------------------------------------------------------------------
# Server process helper
# --------------------------------------------------------------------------------------------

class Server:
    """attnlm-server on an ephemeral loopback port; stderr drained by a thread and kept."""

    def __init__(self, *flags, model=DEFAULT, startup_timeout=30, env=None):
        env = dict(os.environ, **(env or {}))
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        self.cmd = [SERVER, "--host", "127.0.0.1", "--port", "0", "--model", model, *flags]
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env)
        self.lines = []
        self.port = None
        self._cond = threading.Condition()
        self._eof = False
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + startup_timeout
        with self._cond:
            while self.port is None:
                if self._eof:
                    self.proc.wait(10)
                    raise AssertionError("server exited (status %s) before listening:\n%s"
                                         % (self.proc.returncode, self.stderr()))
                left = deadline - time.monotonic()
                if left <= 0:
                    self.proc.kill()
                    self.proc.wait(10)
                    raise AssertionError("server did not print its listening line within %ds:\n%s"
                                         % (startup_timeout, self.stderr()))
                self._cond.wait(min(left, 0.2))

    def _drain(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                self.lines.append(line)
                if self.port is None:
                    m = LISTEN_RE.search(line)
                    if m:
                        self.port = int(m.group(1))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def stderr(self, last=60):
        with self._cond:
            return "\n".join(self.lines[-last:])

    def stop(self, timeout=90):
        """SIGTERM, wait, return the exit status (the stderr reader is joined)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("server did not exit within %ds of SIGTERM:\n%s" % (timeout, self.stderr()))
        self.reader.join(10)
        self.proc.stderr.close()
        return rc

    def stop_checked(self):
        rc = self.stop()
        msg = "server exit status %d (want 0)\n%s" % (rc, self.stderr())
        if rc != 0:
            raise AssertionError(msg)
        if SANITIZER_RE.search(self.stderr(last=10 ** 9)):
            raise AssertionError("sanitizer report in server stderr:\n" + self.stderr(200))

    # ---- HTTP ----
    def conn(self, timeout=120):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, raw=None, conn=None, timeout=120):
        """-> (status, headers message, body bytes)."""
        c = conn or self.conn(timeout)
        if raw is not None:
            data = raw
        elif body is not None:
            data = json.dumps(body).encode()
        else:
            data = None
        h = dict(JSON_CT) if data is not None else {}
        h.update(headers or {})
        try:
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            payload = r.read()
        finally:
            if conn is None:
                c.close()
        return r.status, r.headers, payload

    def json(self, method, path, body=None, **kw):
        status, headers, payload = self.request(method, path, body, **kw)
        try:
            obj = json.loads(payload) if payload else None
        except ValueError:
            raise AssertionError("%s %s -> %d, body not JSON: %r" % (method, path, status, payload[:300]))
        return status, obj, headers

    def post(self, path, body, **kw):
        return self.json("POST", path, body, **kw)

    def ok(self, path, body):
        status, obj, _ = self.post(path, body)
        if status != 200:
            raise AssertionError("POST %s %s -> %d %s" % (path, json.dumps(body)[:200], status, obj))
        return obj

    def metrics_text(self):
        status, headers, payload = self.request("GET", "/metrics")
        assert status == 200, status
        return payload.decode(), headers

    def metric(self, name, **labels):
        """Sum of the samples of `name` whose labels include `labels`."""
        text, _ = self.metrics_text()
        return sum(v for n, l, v in parse_prom(text) if n == name and all(l.get(k) == x for k, x in labels.items()))


def parse_prom(text):
    """[(name, {labels}, value)] of a Prometheus text exposition; raises on a malformed sample line."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)(\s+\d+)?$', line)
        if not m:
            raise AssertionError("malformed metrics line: %r" % line)
        labels = {}
        if m.group(3):
            for lm in re.finditer(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3)):
                labels[lm.group(1)] = lm.group(2)
        out.append((m.group(1), labels, float(m.group(4))))
    return out


def sse_events(payload):
    """The `data:` payloads of an event stream: dicts, and the string "[DONE]"."""
    text = payload.decode("utf-8")  # must be valid UTF-8 as a whole
    events = []
    for block in re.split(r"\r?\n\r?\n", text):
        if not block.strip():
            continue
        data = [ln[5:].lstrip(" ") for ln in block.splitlines() if ln.startswith("data:")]
        assert data, "event without data: %r" % block
        d = "\n".join(data)
        events.append(d if d == "[DONE]" else json.loads(d))
    return events


def wait_for(pred, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            return v
        time.sleep(interval)


def cli_score(model, text):
    """Per-byte log-probabilities and the total from `attnlm score`."""
    out = subprocess.run([CLI, "score", "--model", model, "--text", text], capture_output=True,
                         check=True).stdout.decode("latin-1")
    lps, total = [], None
    for line in out.splitlines():
        m = re.match(r"^\s*(\d+)\s+0x([0-9a-f]{2}) .\s+(-?\d+\.\d+)\s*$", line)
        if m:
            assert int(m.group(1)) == len(lps) + 1, line
            lps.append((int(m.group(2), 16), float(m.group(3))))
        elif line.startswith("total "):
            total = float(line.split()[1])
    return lps, total


def cli_greedy(model, prompt, n):
    out = subprocess.run([CLI, "generate", "--model", model, "--prompt", prompt, "--temperature", "0",
                          "--max-tokens", str(n)], capture_output=True, check=True).stdout
    pb = prompt.encode()
    assert out.startswith(pb) and out.endswith(b"\n"), out
    return out[len(pb):-1]


def cli_info(model):
    out = subprocess.run([CLI, "info", "--model", model], capture_output=True, check=True).stdout.decode()
    first, *rest = out.splitlines()
    params = int(re.search(r"(\d+) parameters", first).group(1))
    meta = {}
    for line in rest:
        k, _, v = line.strip().partition(": ")
        meta[k] = v
    return params, meta


def tok_bytes(tokens):
    return bytes(b for t in tokens for b in t["bytes"])


class ServerCase(unittest.TestCase):
    """A TestCase with one shared server (FLAGS, MODEL) and per-test extra servers."""
    FLAGS = None  # None: no shared server
    MODEL = DEFAULT
    s = None

    @classmethod
    def setUpClass(cls):
        if cls.FLAGS is not None:
            cls.s = Server(*cls.FLAGS, model=cls.MODEL)

    @classmethod
    def tearDownClass(cls):
        if cls.s is not None:
            s, cls.s = cls.s, None
            s.stop_checked()

    def tearDown(self):
        # a shared server that died (or is dying) during this test fails this test, with its
        # stderr, and is replaced, so that the tests after it still say something
        s = type(self).s
        if s is None:
            return
        if s.proc.poll() is None and not SANITIZER_RE.search(s.stderr(400)):
            try:
                if s.request("GET", "/health", timeout=30)[0] == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
        try:
            s.proc.wait(60)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait(10)
        s.reader.join(10)
        rc, err = s.proc.returncode, s.stderr(80)
        type(self).s = Server(*self.FLAGS, model=self.MODEL)
        self.fail("shared server died during this test (exit status %s):\n%s" % (rc, err))

    def start(self, *flags, model=DEFAULT):
        srv = Server(*flags, model=model)
        self.addCleanup(srv.stop_checked)
        return srv

    def assertError(self, status, obj, headers, want_status, want_param=None, want_type=None, check_param=True):
        self.assertEqual(status, want_status, obj)
        self.assertIsInstance(obj, dict, obj)
        self.assertEqual(set(obj), {"error"}, obj)
        err = obj["error"]
        self.assertTrue({"message", "type", "param", "code"} <= set(err), err)
        self.assertEqual(err["code"], want_status, err)
        self.assertIsInstance(err["message"], str)
        self.assertTrue(err["message"], err)
        self.assertIsInstance(err["type"], str)
        if want_type:
            self.assertEqual(err["type"], want_type, err)
        if check_param:
            if isinstance(want_param, (set, tuple, list)):
                self.assertIn(err["param"], want_param, err)
            else:
                self.assertEqual(err["param"], want_param, err)
        self.assertTrue(headers.get("Content-Type", "").startswith("application/json"), headers)

    def assertToken(self, t):
        self.assertIsInstance(t["id"], int)
        self.assertTrue(0 <= t["id"] <= 256, t)
        self.assertEqual(t["bytes"], [] if t["id"] == 256 else [t["id"]], t)
        self.assertEqual(t["text"], bytes(t["bytes"]).decode("utf-8", "replace"), t)

    def assertSortedTop(self, top, k):
        self.assertEqual(len(top), k)
        for a in top:
            self.assertToken(a)
            self.assertIsInstance(a["logprob"], (int, float))
            self.assertLessEqual(a["logprob"], 1e-6)
        for a, b in zip(top, top[1:]):
            self.assertGreaterEqual(a["logprob"], b["logprob"], top)
            if a["logprob"] == b["logprob"]:
                self.assertLess(a["id"], b["id"], "ties: lower id first")
        self.assertEqual(len({a["id"] for a in top}), k, "duplicate ids in top")


# --------------------------------------------------------------------------------------------
# Read-only endpoints on the default model, one shared server
# --------------------------------------------------------------------------------------------

class TestEndpoints(ServerCase):
    FLAGS = ["--workers", "2", "--queue", "16", "--max-body", "8192", "--max-input-tokens", "300",
             "--max-new-tokens", "500", "--max-attention-tokens", "100"]

    # ---- health / ready / models / model ----
    def test_health_ready(self):
        for path, body in (("/health", {"status": "ok"}), ("/ready", {"status": "ready"})):
            status, obj, headers = self.s.json("GET", path)
            self.assertEqual(status, 200)
            self.assertEqual(obj, body)
            self.assertTrue(headers["Content-Type"].startswith("application/json"))
            status, headers, payload = self.s.request("HEAD", path)
            self.assertEqual(status, 200, "GET routes answer HEAD")
            self.assertEqual(payload, b"")

    def test_model(self):
        status, info, _ = self.s.json("GET", "/v1/model")
        self.assertEqual(status, 200)
        params, meta = cli_info(DEFAULT)
        self.assertEqual(info["parameters"], params)
        self.assertIsInstance(info["parameters"], int)
        with open(DEFAULT, "rb") as f:
            self.assertEqual(info["sha256"], hashlib.sha256(f.read()).hexdigest())
        md = info["metadata"]
        self.assertEqual(set(md), set(meta), "every __metadata__ field, no more")
        for k, v in meta.items():
            if re.fullmatch(r"-?\d+", v):
                self.assertIs(type(md[k]), int, (k, md[k]))
                self.assertEqual(md[k], int(v), k)
            elif re.fullmatch(r"-?\d+\.\d*(e-?\d+)?", v):
                self.assertIs(type(md[k]), float, (k, md[k]))
                self.assertAlmostEqual(md[k], float(v), places=6)
            else:
                self.assertEqual(md[k], v, k)
        self.assertIs(type(md["layers"]), int)
        self.assertEqual(md["layers"], 2)
        self.assertEqual(md["cell"], "gru")
        lim = info["limits"]
        self.assertEqual(lim["max_body_bytes"], 8192)
        self.assertEqual(lim["max_input_tokens"], 300)
        self.assertEqual(lim["max_new_tokens"], 500)
        self.assertEqual(lim["max_attention_tokens"], 100)
        self.assertEqual(lim["queue_size"], 16)
        self.assertEqual(lim["workers"], 2)

    def test_models(self):
        status, obj, _ = self.s.json("GET", "/v1/models")
        self.assertEqual(status, 200)
        self.assertEqual(obj["object"], "list")
        self.assertEqual(len(obj["data"]), 1)
        m = obj["data"][0]
        _, meta = cli_info(DEFAULT)
        self.assertEqual(m["id"], meta["name"])
        self.assertEqual(m["object"], "model")
        self.assertEqual(m["owned_by"], "attnlm")
        self.assertIsInstance(m["created"], int)

    def test_request_id_and_log_line(self):
        status, headers, _ = self.s.request("POST", "/v1/score", {"text": "abc"},
                                            headers={"X-Request-Id": "itest-req-42"})
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("X-Request-Id"), "itest-req-42")
        status, headers, _ = self.s.request("GET", "/health")
        self.assertTrue(headers.get("X-Request-Id"), "a generated request id")
        ok = wait_for(lambda: any(re.search(r"req=itest-req-42 POST /v1/score 200 \S+ms in=3 out=\d+$", ln)
                                  for ln in self.s.lines), 5)
        self.assertTrue(ok, "request log line missing:\n" + self.s.stderr(20))

    # ---- metrics ----
    def test_metrics_format(self):
        text, headers = self.s.metrics_text()
        self.assertTrue(headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers["Content-Type"])
        samples = parse_prom(text)
        self.assertTrue(samples)
        types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
        for name in types:
            self.assertTrue(name.startswith("attnlm_"), name)
        for name, labels, value in samples:
            self.assertTrue(name.startswith("attnlm_"), name)
            family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
            self.assertIn(family, types, "sample %s without # TYPE" % name)
        for want in ("attnlm_requests_total", "attnlm_request_duration_seconds", "attnlm_input_tokens_total",
                     "attnlm_generated_tokens_total", "attnlm_queue_depth", "attnlm_active_sequences",
                     "attnlm_batch_size", "attnlm_model_load_seconds", "attnlm_requests_in_flight",
                     "attnlm_rejected_total", "attnlm_cancelled_total", "attnlm_timeouts_total"):
            self.assertIn(want, types, want)
        self.assertEqual(types["attnlm_requests_total"], "counter")
        self.assertEqual(types["attnlm_request_duration_seconds"], "histogram")
        self.assertEqual(types["attnlm_active_sequences"], "gauge")
        # histogram buckets cumulative and +Inf == count
        buckets = {}
        for name, labels, value in samples:
            if name == "attnlm_batch_size_bucket":
                buckets[labels["le"]] = value
        vals = [buckets[k] for k in sorted(buckets, key=lambda x: math.inf if x == "+Inf" else float(x))]
        self.assertEqual(vals, sorted(vals))
        count = sum(v for n, l, v in samples if n == "attnlm_batch_size_count")
        self.assertEqual(buckets["+Inf"], count)

    def test_metrics_move(self):
        before_req = self.s.metric("attnlm_requests_total", route="/v1/generate", status="200")
        before_gen = self.s.metric("attnlm_generated_tokens_total")
        before_in = self.s.metric("attnlm_input_tokens_total")
        before_dur = self.s.metric("attnlm_request_duration_seconds_count", route="/v1/generate")
        before_400 = self.s.metric("attnlm_requests_total", route="/v1/score", status="400")
        out = self.s.ok("/v1/generate", {"prompt": "whale", "max_tokens": 7, "seed": 1})
        self.assertEqual(out["usage"]["completion_tokens"], 7)
        self.s.post("/v1/score", {"text": "x", "top_k": -1})
        self.assertEqual(self.s.metric("attnlm_requests_total", route="/v1/generate", status="200"), before_req + 1)
        self.assertEqual(self.s.metric("attnlm_generated_tokens_total"), before_gen + 7)
        self.assertEqual(self.s.metric("attnlm_input_tokens_total"), before_in + 5)
        self.assertEqual(self.s.metric("attnlm_request_duration_seconds_count", route="/v1/generate"),
                         before_dur + 1)
        self.assertEqual(self.s.metric("attnlm_requests_total", route="/v1/score", status="400"), before_400 + 1)
        self.assertEqual(self.s.metric("attnlm_active_sequences"), 0)
        self.assertEqual(self.s.metric("attnlm_queue_depth"), 0)
        self.assertGreater(self.s.metric("attnlm_model_load_seconds"), 0)

    # ---- tokenize / detokenize ----
    def test_tokenize(self):
        text = "Hé—\n\x01!"
        obj = self.s.ok("/v1/tokenize", {"text": text})
        toks = obj["tokens"]
        raw = text.encode()
        self.assertEqual([t["id"] for t in toks], list(raw), "BOS excluded, one token per byte")
        for t in toks:
            self.assertToken(t)
        self.assertEqual(self.s.ok("/v1/tokenize", {"text": ""})["tokens"], [])

    def test_nul_character(self):
        # U+0000 is a character like any other: byte 0 in, byte 0 out
        self.assertEqual(self.s.ok("/v1/detokenize", {"ids": [65, 0, 66]})["text"], "A\x00B")
        sc = self.s.ok("/v1/score", {"ids": [0, 65], "top_k": 1})
        self.assertEqual(sc["tokens"][0]["text"], "\x00")
        status, obj, headers = self.s.post("/v1/tokenize", {"text": "a\x00b"})
        if status == 200:
            self.assertEqual([t["id"] for t in obj["tokens"]], [97, 0, 98])
        else:
            self.assertError(status, obj, headers, 400, "text", "invalid_request_error")

    def test_detokenize(self):
        cases = [list("Call me Ishmael".encode()), list("Hé—ü".encode()),
                 [72, 195, 255, 256, 226, 130], [0xE2, 0x80], [0xF0, 0x9F, 0x98, 0x80, 0x80, 0xC0, 0xAF, 65],
                 [0xED, 0xA0, 0x80, 66], [256], []]
        for ids in cases:
            obj = self.s.ok("/v1/detokenize", {"ids": ids})
            want = bytes(i for i in ids if i != 256).decode("utf-8", "replace")
            self.assertEqual(obj["text"], want, ids)

    # ---- score ----
    def test_score_matches_engine(self):
        text = "Call me Ishmael. Some years ago—never mind how long précisément"
        obj = self.s.ok("/v1/score", {"text": text, "top_k": 4})
        ref, total = cli_score(DEFAULT, text)
        toks = obj["tokens"]
        raw = text.encode()
        self.assertEqual(len(toks), len(raw))
        self.assertEqual(len(ref), len(raw))
        for k, (t, (b, lp)) in enumerate(zip(toks, ref)):
            self.assertToken(t)
            self.assertEqual(t["id"], b)
            self.assertAlmostEqual(t["logprob"], lp, delta=2e-5, msg="position %d" % k)
            self.assertSortedTop(t["top"], 4)
            self.assertGreaterEqual(t["top"][0]["logprob"] + 1e-6, t["logprob"])
            for a in t["top"]:
                if a["id"] == t["id"]:
                    self.assertAlmostEqual(a["logprob"], t["logprob"], delta=1e-6)
        self.assertAlmostEqual(obj["logprob"], sum(t["logprob"] for t in toks), delta=1e-3)
        self.assertAlmostEqual(obj["logprob"], total, delta=1e-3)
        n = len(raw)
        self.assertEqual(obj["usage"]["input_tokens"], n)
        self.assertAlmostEqual(obj["perplexity"], math.exp(-obj["logprob"] / n), delta=1e-4 * obj["perplexity"])
        self.assertSortedTop(obj["next"], 4)

    def test_score_ids_equal_text(self):
        text = "The whale"
        a = self.s.ok("/v1/score", {"text": text})
        b = self.s.ok("/v1/score", {"ids": list(text.encode())})
        c = self.s.ok("/v1/score", {"ids": [256] + list(text.encode())})
        for o in (b, c):
            self.assertEqual([t["id"] for t in o["tokens"]], [t["id"] for t in a["tokens"]])
            for x, y in zip(a["tokens"], o["tokens"]):
                self.assertAlmostEqual(x["logprob"], y["logprob"], delta=1e-5)
            self.assertEqual(o["usage"]["input_tokens"], len(text))
        self.assertEqual(len(a["tokens"][0]["top"]), 5, "top_k defaults to 5")
        d = self.s.ok("/v1/score", {"text": text, "top_k": None})
        self.assertEqual(len(d["next"]), 5, "null counts as absent")

    def test_score_top_full_distribution(self):
        obj = self.s.ok("/v1/score", {"text": "sea", "top_k": 257})
        for row in [t["top"] for t in obj["tokens"]] + [obj["next"]]:
            self.assertEqual(sorted(a["id"] for a in row), list(range(257)))
            lse = math.log(sum(math.exp(a["logprob"]) for a in row))
            self.assertAlmostEqual(lse, 0.0, delta=1e-4)
            self.assertSortedTop(row, 257)

    def test_score_top_k_zero(self):
        z = self.s.ok("/v1/score", {"text": "sea", "top_k": 0})
        self.assertEqual(z["next"], [])
        self.assertTrue(all(t.get("top", []) == [] for t in z["tokens"]))

    def test_score_next(self):
        text = "Call me Ishmael"
        obj = self.s.ok("/v1/score", {"text": text, "top_k": 3})
        for alt in obj["next"]:
            ext = self.s.ok("/v1/score", {"ids": list(text.encode()) + [alt["id"]], "top_k": 1})
            self.assertAlmostEqual(ext["tokens"][-1]["logprob"], alt["logprob"], delta=1e-5)

    def test_score_candidates(self):
        text = "Call me Ishmael."
        cands = [" Some years ago", " whale", "é—", "\n"]
        obj = self.s.ok("/v1/score", {"text": text, "top_k": 1, "candidates": cands})
        self.assertEqual(len(obj["candidates"]), len(cands))
        n = len(text.encode())
        for c, got in zip(cands, obj["candidates"]):
            self.assertEqual(got["text"], c)
            full = self.s.ok("/v1/score", {"text": text + c, "top_k": 1})
            want = [t["logprob"] for t in full["tokens"][n:]]
            self.assertEqual(len(want), len(c.encode()))
            self.assertAlmostEqual(got["logprob"], sum(want), delta=1e-4, msg=c)
            self.assertEqual([t["id"] for t in got["tokens"]], list(c.encode()))
            for t, w in zip(got["tokens"], want):
                self.assertToken({k: t[k] for k in ("id", "text", "bytes")})
                self.assertAlmostEqual(t["logprob"], w, delta=1e-5)
        # the input's own scores are unaffected by candidates
        plain = self.s.ok("/v1/score", {"text": text, "top_k": 1})
        self.assertAlmostEqual(plain["logprob"], obj["logprob"], delta=1e-5)

    # ---- generate ----
    def test_generate_seeded_reproducible(self):
        req = {"prompt": "The sea", "max_tokens": 40, "temperature": 0.9, "top_k": 40, "top_p": 0.95,
               "seed": 1234}
        a = self.s.ok("/v1/generate", req)
        b = self.s.ok("/v1/generate", req)
        self.assertEqual(a, b)
        c = self.s.ok("/v1/generate", dict(req, seed=4321))
        self.assertNotEqual(a["text"], c["text"], "another seed, another sample (almost surely)")

    def test_generate_fields(self):
        out = self.s.ok("/v1/generate", {"prompt": "Ahab", "max_tokens": 25, "seed": 7})
        self.assertEqual(set(["text", "tokens", "finish_reason", "usage"]) - set(out), set())
        self.assertEqual(out["finish_reason"], "length")
        self.assertEqual(out["usage"], {"prompt_tokens": 4, "completion_tokens": 25})
        self.assertEqual(len(out["tokens"]), 25)
        for t in out["tokens"]:
            self.assertToken({k: t[k] for k in ("id", "text", "bytes")})
            self.assertNotEqual(t["id"], 256, "BOS is never generated")
            self.assertLessEqual(t["logprob"], 0)
            self.assertNotIn("top", t)
            self.assertNotIn("attention", t)
        self.assertEqual(out["text"], tok_bytes(out["tokens"]).decode("utf-8", "replace"))
        # max_tokens default 64, and 0
        d = self.s.ok("/v1/generate", {"prompt": "Ahab", "seed": 7})
        self.assertEqual(d["usage"]["completion_tokens"], 64)
        self.assertEqual(d["finish_reason"], "length")
        z = self.s.ok("/v1/generate", {"prompt": "Ahab", "max_tokens": 0})
        self.assertEqual((z["text"], z["tokens"], z["usage"]["completion_tokens"]), ("", [], 0))
        # an empty prompt is allowed
        e = self.s.ok("/v1/generate", {"prompt": "", "max_tokens": 5, "seed": 1})
        self.assertEqual(e["usage"], {"prompt_tokens": 0, "completion_tokens": 5})
        e2 = self.s.ok("/v1/generate", {"max_tokens": 5, "seed": 1})
        self.assertEqual(e2["text"], e["text"], "prompt absent == empty")

    def test_top_p_zero_is_greedy(self):
        # the smallest set reaching p = 0 is the single most likely token
        req = {"prompt": "Call me", "max_tokens": 30, "temperature": 1.5, "seed": 3}
        greedy = self.s.ok("/v1/generate", dict(req, temperature=0))["text"]
        self.assertEqual(self.s.ok("/v1/generate", dict(req, top_p=0))["text"], greedy)
        self.assertNotEqual(self.s.ok("/v1/generate", req)["text"], greedy)

    def test_generate_greedy_matches_engine(self):
        for prompt in ("Call me Ishmael. ", "The white whale"):
            out = self.s.ok("/v1/generate", {"prompt": prompt, "max_tokens": 80, "temperature": 0, "seed": 99})
            want = cli_greedy(DEFAULT, prompt, 80)
            self.assertEqual(tok_bytes(out["tokens"]), want)
            self.assertEqual(out["text"], want.decode("utf-8", "replace"))

    def test_generate_logprobs_and_consistency_with_score(self):
        prompt = "It was the whale"
        out = self.s.ok("/v1/generate", {"prompt": prompt, "max_tokens": 30, "temperature": 0, "logprobs": 3})
        ids = list(prompt.encode()) + [t["id"] for t in out["tokens"]]
        sc = self.s.ok("/v1/score", {"ids": ids, "top_k": 3})
        P = len(prompt.encode())
        for i, t in enumerate(out["tokens"]):
            self.assertSortedTop(t["top"], 3)
            self.assertEqual(t["id"], t["top"][0]["id"], "greedy takes the most likely token")
            self.assertAlmostEqual(t["logprob"], t["top"][0]["logprob"], delta=1e-6)
            ref = sc["tokens"][P + i]
            self.assertAlmostEqual(t["logprob"], ref["logprob"], delta=1e-4)
            self.assertEqual([a["id"] for a in t["top"]], [a["id"] for a in ref["top"]])
        # sampled tokens: logprob is the model's (before temperature)
        hot = self.s.ok("/v1/generate", {"prompt": prompt, "max_tokens": 20, "temperature": 1.7, "seed": 3,
                                         "logprobs": 1})
        ids = list(prompt.encode()) + [t["id"] for t in hot["tokens"]]
        sc = self.s.ok("/v1/score", {"ids": ids, "top_k": 1})
        for i, t in enumerate(hot["tokens"]):
            self.assertAlmostEqual(t["logprob"], sc["tokens"][P + i]["logprob"], delta=1e-4)
            self.assertEqual(len(t["top"]), 1)

    def test_generate_stop(self):
        prompt = "Call me Ishmael. "
        base = self.s.ok("/v1/generate", {"prompt": prompt, "max_tokens": 80, "temperature": 0})
        text = base["text"]
        self.assertTrue(text.isascii(), text)
        # a stop string that first occurs somewhere after the start
        stop = None
        for L in (3, 2):
            for i in range(5, len(text) - L):
                cand = text[i:i + L]
                if text.find(cand) == i:
                    stop = cand
                    break
            if stop:
                break
        self.assertIsNotNone(stop)
        cut = text.index(stop)
        for st in ([stop], stop, ["zzzqqq", stop]):
            out = self.s.ok("/v1/generate", {"prompt": prompt, "max_tokens": 80, "temperature": 0, "stop": st})
            self.assertEqual(out["finish_reason"], "stop", st)
            self.assertEqual(out["text"], text[:cut], st)
            self.assertEqual(tok_bytes(out["tokens"]).decode(), text[:cut], "stop string not in tokens")
            self.assertEqual(out["usage"]["completion_tokens"], cut + len(stop), "stop string counted")
        # a stop string that never occurs
        out = self.s.ok("/v1/generate", {"prompt": prompt, "max_tokens": 80, "temperature": 0, "stop": ["@@@"]})
        self.assertEqual((out["text"], out["finish_reason"]), (text, "length"))
        # streaming with a stop string: same text, stop held back
        status, headers, payload = self.s.request("POST", "/v1/generate", {
            "prompt": prompt, "max_tokens": 80, "temperature": 0, "stop": [stop], "stream": True})
        ev = sse_events(payload)
        self.assertEqual(ev[-1], "[DONE]")
        self.assertEqual(ev[-2]["finish_reason"], "stop")
        self.assertEqual("".join(e.get("text", "") for e in ev[:-1]), text[:cut])

    def test_generate_attention_rows(self):
        prompt = ("There now is your insular city of the Manhattoes, belted round by wharves as "
                  "Indian isles by coral reefs")[:70]
        out = self.s.ok("/v1/generate", {"prompt": prompt, "max_tokens": 12, "temperature": 0.5, "seed": 5,
                                         "attention": True})
        ids = list(prompt.encode()) + [t["id"] for t in out["tokens"]]
        att = self.s.ok("/v1/attention", {"ids": ids, "format": "band"})
        W, H = att["window"], att["heads"]
        P = len(prompt.encode())
        for i, t in enumerate(out["tokens"]):
            p = P + 1 + i  # position of the token (BOS = 0)
            rows = t["attention"]
            self.assertEqual(len(rows), H)
            for h in range(H):
                row = rows[h]
                self.assertEqual(len(row), min(p, W))
                self.assertAlmostEqual(sum(row), 1.0, delta=1e-5)
                ref = att["maps"][h][p - 1]
                self.assertEqual(len(ref), len(row))
                for a, b in zip(row, ref):
                    self.assertAlmostEqual(a, b, delta=1e-5)

    # ---- streaming ----
    def stream(self, path, body):
        status, headers, payload = self.s.request("POST", path, dict(body, stream=True))
        self.assertEqual(status, 200, payload[:300])
        self.assertTrue(headers["Content-Type"].startswith("text/event-stream"), headers["Content-Type"])
        return sse_events(payload)

    def check_stream(self, req):
        plain = self.s.ok("/v1/generate", req)
        ev = self.stream("/v1/generate", req)
        self.assertEqual(ev[-1], "[DONE]")
        self.assertEqual(ev.count("[DONE]"), 1)
        fin = ev[-2]
        self.assertNotIn("token", fin)
        self.assertEqual(fin["finish_reason"], plain["finish_reason"])
        self.assertEqual(fin["usage"], plain["usage"])
        toks = ev[:-2]
        self.assertTrue(all("token" in e for e in toks))
        self.assertEqual(plain["text"], tok_bytes(plain["tokens"]).decode("utf-8", "replace"),
                         "non-streamed text is the tokens' bytes decoded")
        self.assertEqual([e["token"]["id"] for e in toks], [t["id"] for t in plain["tokens"]])
        for e, t in zip(toks, plain["tokens"]):
            self.assertAlmostEqual(e["token"]["logprob"], t["logprob"], delta=1e-6)
            e["text"].encode("utf-8")  # no lone surrogates
        joined = "".join(e["text"] for e in toks) + fin.get("text", "")
        self.assertEqual(joined, plain["text"])
        self.assertEqual(plain["text"], tok_bytes(plain["tokens"]).decode("utf-8", "replace"))
        return toks, plain

    def test_stream_equals_plain(self):
        self.check_stream({"prompt": "The sea", "max_tokens": 50, "temperature": 0.8, "seed": 11})

    def test_stream_utf8_never_split(self):
        # the corpus has em dashes (3 bytes): find a seed that makes the model write one
        found = None
        for seed in range(1, 40):
            req = {"prompt": "He said—and then—", "max_tokens": 200, "temperature": 1.3, "seed": seed}
            out = self.s.ok("/v1/generate", req)
            if any(ord(c) > 127 and c != "\ufffd" for c in out["text"]):
                found = req
                break
        self.assertIsNotNone(found, "no multi-byte character generated")
        toks, plain = self.check_stream(found)
        # each multi-byte character arrives whole in one event: no event text has a replacement
        # character where the whole text has a real one
        multi = [c for c in plain["text"] if ord(c) > 127 and c != "\ufffd"]
        streamed = [c for e in toks for c in e["text"] if ord(c) > 127 and c != "\ufffd"]
        self.assertEqual(streamed, multi)
        # a lead byte's own event carries no partial character
        for i, e in enumerate(toks):
            if 0xE0 <= e["token"]["id"] <= 0xEF and i + 2 < len(toks) \
                    and all(0x80 <= toks[i + j]["token"]["id"] <= 0xBF for j in (1, 2)):
                self.assertEqual(e["text"], "", "lead byte of a 3-byte character sent before it is complete")
                self.assertEqual(toks[i + 1]["text"], "")
                self.assertEqual(toks[i + 2]["text"], bytes(t["token"]["id"] for t in toks[i:i + 3]).decode())

    def test_stream_invalid_utf8(self):
        # near-uniform sampling writes invalid sequences: still valid JSON/UTF-8, U+FFFD as decode('replace')
        self.check_stream({"prompt": "x", "max_tokens": 150, "temperature": 4.0, "seed": 2})

    # ---- attention ----
    def test_attention_band_dense(self):
        text = "Whenever I find myself growing grim about the mouth; whenever it is a damp, drizzly November"
        n = len(text.encode())
        band = self.s.ok("/v1/attention", {"text": text})  # default band
        dense = self.s.ok("/v1/attention", {"text": text, "format": "dense"})
        _, info, _ = self.s.json("GET", "/v1/model")
        W = info["metadata"]["window"]
        self.assertEqual(band["window"], W)
        self.assertEqual(band["heads"], 1)
        self.assertEqual(band["attention"], info["metadata"]["attention"])
        T = n + 1
        self.assertGreater(T, W, "text longer than the window")
        for obj in (band, dense):
            self.assertEqual(obj["tokens"][0], {"id": 256, "text": "", "bytes": []})
            self.assertEqual([t["id"] for t in obj["tokens"][1:]], list(text.encode()))
            self.assertEqual(len(obj["maps"]), obj["heads"])
            self.assertEqual(len(obj["maps"][0]), T)
        for t in range(T):
            brow = band["maps"][0][t]
            drow = dense["maps"][0][t]
            self.assertEqual(len(brow), min(t + 1, W))
            self.assertEqual(len(drow), T)
            self.assertAlmostEqual(sum(brow), 1.0, delta=1e-5)
            self.assertAlmostEqual(sum(drow), 1.0, delta=1e-5)
            lo = max(0, t - W + 1)
            for k in range(T):
                if k < lo or k > t:
                    self.assertEqual(drow[k], 0, (t, k))
                else:
                    self.assertAlmostEqual(drow[k], brow[k - lo], delta=1e-6)
            self.assertTrue(all(w >= 0 for w in brow))

    def test_attention_ids(self):
        a = self.s.ok("/v1/attention", {"text": "abc"})
        b = self.s.ok("/v1/attention", {"ids": [97, 98, 99]})
        self.assertEqual(a["maps"], b["maps"])
        self.assertEqual(len(a["tokens"]), 4)

    # ---- completions ----
    def test_completions_shape(self):
        out = self.s.ok("/v1/completions", {"model": "whatever", "prompt": "Call me", "max_tokens": 10,
                                            "seed": 5, "temperature": 0.7})
        self.assertEqual(out["object"], "text_completion")
        self.assertIsInstance(out["id"], str)
        self.assertIsInstance(out["created"], int)
        self.assertIsInstance(out["model"], str)
        self.assertEqual(len(out["choices"]), 1)
        ch = out["choices"][0]
        self.assertEqual(ch["index"], 0)
        self.assertEqual(ch["finish_reason"], "length")
        self.assertIsInstance(ch["text"], str)
        self.assertEqual(out["usage"], {"prompt_tokens": 7, "completion_tokens": 10, "total_tokens": 17})
        again = self.s.ok("/v1/completions", {"model": "whatever", "prompt": "Call me", "max_tokens": 10,
                                              "seed": 5, "temperature": 0.7})
        self.assertEqual(again["choices"][0]["text"], ch["text"], "seeded")
        d = self.s.ok("/v1/completions", {"prompt": "Call me", "seed": 5})
        self.assertEqual(d["usage"]["completion_tokens"], 16, "max_tokens defaults to 16")

    def test_completions_greedy_and_stop(self):
        prompt = "Call me Ishmael. "
        gen = self.s.ok("/v1/generate", {"prompt": prompt, "max_tokens": 40, "temperature": 0})
        out = self.s.ok("/v1/completions", {"prompt": prompt, "max_tokens": 40, "temperature": 0})
        text = out["choices"][0]["text"]
        self.assertEqual(text, gen["text"], "greedy is greedy on both routes")
        stop = text[10:13]
        cut = text.index(stop)
        out = self.s.ok("/v1/completions", {"prompt": prompt, "max_tokens": 40, "temperature": 0, "stop": [stop]})
        self.assertEqual(out["choices"][0]["text"], text[:cut])
        self.assertEqual(out["choices"][0]["finish_reason"], "stop")
        echo = self.s.ok("/v1/completions", {"prompt": prompt, "max_tokens": 40, "temperature": 0, "echo": True})
        self.assertEqual(echo["choices"][0]["text"], prompt + text)

    def test_completions_echo_scores_prompt(self):
        prompt = "Call me Ishmael. Some years ago"
        out = self.s.ok("/v1/completions", {"prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 2})
        sc = self.s.ok("/v1/score", {"text": prompt, "top_k": 2})
        ch = out["choices"][0]
        self.assertEqual(ch["text"], prompt)
        lp = ch["logprobs"]
        self.assertEqual(len(lp["token_logprobs"]), len(prompt))
        for a, t in zip(lp["token_logprobs"], sc["tokens"]):
            self.assertIsNotNone(a, "every prompt token has a number, the first included")
            self.assertAlmostEqual(a, t["logprob"], delta=1e-5)
        self.assertEqual(lp["tokens"], list(prompt))
        self.assertEqual(lp["text_offset"], list(range(len(prompt))))
        for tl, t in zip(lp["top_logprobs"], sc["tokens"]):
            for alt in t["top"]:
                key = chr(alt["id"]) if alt["id"] < 128 else "bytes:\\x%02x" % alt["id"]
                self.assertIn(key, tl)
                self.assertAlmostEqual(tl[key], alt["logprob"], delta=1e-5)
        self.assertEqual(out["usage"]["completion_tokens"], 0)

    def test_completions_echo_logprobs_zero(self):
        # non-ASCII bytes as bytes:\xNN, byte offsets; logprobs 0 still gives token_logprobs
        out = self.s.ok("/v1/completions", {"prompt": "é a", "max_tokens": 0, "echo": True, "logprobs": 0})
        lp = out["choices"][0]["logprobs"]
        self.assertEqual(lp["tokens"], ["bytes:\\xc3", "bytes:\\xa9", " ", "a"])
        self.assertEqual(lp["text_offset"], [0, 1, 2, 3])
        sc = self.s.ok("/v1/score", {"text": "é a", "top_k": 1})
        for a, t in zip(lp["token_logprobs"], sc["tokens"]):
            self.assertAlmostEqual(a, t["logprob"], delta=1e-5)

    def test_completions_n_and_stream(self):
        out = self.s.ok("/v1/completions", {"prompt": "The whale", "max_tokens": 12, "n": 2, "seed": 8})
        self.assertEqual(sorted(c["index"] for c in out["choices"]), [0, 1])
        self.assertEqual(out["usage"]["completion_tokens"], 24)
        req = {"prompt": "The whale", "max_tokens": 12, "seed": 8, "n": 2}
        ev = self.stream("/v1/completions", req)
        self.assertEqual(ev[-1], "[DONE]")
        self.assertEqual(ev.count("[DONE]"), 1)
        texts, fin = {0: "", 1: ""}, {}
        for e in ev[:-1]:
            self.assertEqual(e["object"], "text_completion")
            for c in e["choices"]:
                texts[c["index"]] += c["text"]
                if c.get("finish_reason"):
                    fin[c["index"]] = c["finish_reason"]
        self.assertEqual(fin, {0: "length", 1: "length"})
        want = {c["index"]: c["text"] for c in out["choices"]}
        self.assertEqual(texts, want, "streamed choices equal the non-streamed ones for the same seed")

    # ---- errors ----
    def test_errors_400(self):
        cases = [
            ("/v1/score", {"text": "x", "top_k": "x"}, "top_k"),
            ("/v1/score", {"text": "x", "top_k": 258}, "top_k"),
            ("/v1/score", {"text": "x", "top_k": -1}, "top_k"),
            ("/v1/score", {"text": "x", "top_k": 1.5}, "top_k"),
            ("/v1/score", {"text": ""}, "text"),
            ("/v1/score", {"text": 5}, "text"),
            ("/v1/score", {"ids": []}, "ids"),
            ("/v1/score", {"ids": [300]}, "ids"),
            ("/v1/score", {"ids": [65, -1]}, "ids"),
            ("/v1/score", {"ids": "abc"}, "ids"),
            ("/v1/score", {"ids": [65, "a"]}, "ids"),
            ("/v1/score", {"text": "x", "candidates": "y"}, "candidates"),
            ("/v1/score", {"text": "x", "candidates": [""]}, "candidates"),
            ("/v1/score", {"text": "x", "candidates": [1]}, "candidates"),
            ("/v1/score", {"text": "x", "candidates": ["a"] * 33}, "candidates"),
            ("/v1/generate", {"prompt": "x", "temperature": -1}, "temperature"),
            ("/v1/generate", {"prompt": "x", "temperature": "hot"}, "temperature"),
            ("/v1/generate", {"prompt": "x", "max_tokens": 501}, "max_tokens"),
            ("/v1/generate", {"prompt": "x", "max_tokens": -1}, "max_tokens"),
            ("/v1/generate", {"prompt": "x", "max_tokens": "3"}, "max_tokens"),
            ("/v1/generate", {"prompt": "x", "top_p": -0.1}, "top_p"),
            ("/v1/generate", {"prompt": "x", "top_p": 1.5}, "top_p"),
            ("/v1/generate", {"prompt": "x", "top_k": 258}, "top_k"),
            ("/v1/generate", {"prompt": "x", "seed": "x"}, "seed"),
            ("/v1/generate", {"prompt": "x", "seed": 1.5}, "seed"),
            ("/v1/generate", {"prompt": "x", "stop": [""]}, "stop"),
            ("/v1/generate", {"prompt": "x", "stop": 5}, "stop"),
            ("/v1/generate", {"prompt": "x", "stop": ["a"] * 17}, "stop"),
            ("/v1/generate", {"prompt": "x", "logprobs": 258}, "logprobs"),
            ("/v1/generate", {"prompt": "x", "logprobs": -1}, "logprobs"),
            ("/v1/generate", {"prompt": 5}, "prompt"),
            ("/v1/generate", {"prompt": "x", "stream": "yes"}, "stream"),
            ("/v1/generate", {"prompt": "x", "attention": 1}, "attention"),
            ("/v1/attention", {"text": "x", "format": "sparse"}, "format"),
            ("/v1/attention", {"text": ""}, "text"),
            ("/v1/attention", {"ids": [257]}, "ids"),
            ("/v1/tokenize", {"text": 5}, "text"),
            ("/v1/detokenize", {"ids": [257]}, "ids"),
            ("/v1/detokenize", {"ids": "x"}, "ids"),
            ("/v1/completions", {"prompt": "x", "n": 0}, "n"),
            ("/v1/completions", {"prompt": "x", "n": 17}, "n"),
            ("/v1/completions", {"prompt": "x", "logprobs": 21}, "logprobs"),
            ("/v1/completions", {"prompt": "x", "max_tokens": -1}, "max_tokens"),
            ("/v1/completions", {"prompt": "x", "max_tokens": 501}, "max_tokens"),
            ("/v1/completions", {"prompt": "x", "temperature": -0.5}, "temperature"),
        ]
        for path, body, param in cases:
            with self.subTest(path=path, body=json.dumps(body)[:80]):
                status, obj, headers = self.s.post(path, body)
                self.assertError(status, obj, headers, 400, param, "invalid_request_error")
        # no input at all
        status, obj, headers = self.s.post("/v1/score", {"top_k": 2})
        self.assertError(status, obj, headers, 400, ("text", "ids"), "invalid_request_error")

    def test_errors_bad_json(self):
        for raw in (b"{not json", b"", b"[1, 2]", b'"text"', b'{"text": "x",}', b"null"):
            with self.subTest(raw=raw):
                status, headers, payload = self.s.request("POST", "/v1/score", raw=raw, headers=JSON_CT)
                self.assertError(status, json.loads(payload), headers, 400, None, "invalid_request_error")
        # the server still works on the same kind of request afterwards
        self.s.ok("/v1/score", {"text": "x"})

    def test_errors_404_405(self):
        status, obj, headers = self.s.json("GET", "/v1/nothing")
        self.assertError(status, obj, headers, 404, None, "not_found_error")
        status, obj, headers = self.s.post("/v2/score", {"text": "x"})
        self.assertError(status, obj, headers, 404, None, "not_found_error")
        status, obj, headers = self.s.json("GET", "/v1/score")
        self.assertError(status, obj, headers, 405, None, "method_not_allowed")
        self.assertIn("POST", [m.strip() for m in headers["Allow"].split(",")])
        status, obj, headers = self.s.json("DELETE", "/v1/generate")
        self.assertError(status, obj, headers, 405, None, "method_not_allowed")
        self.assertIn("POST", headers["Allow"])
        status, obj, headers = self.s.post("/health", {})
        self.assertError(status, obj, headers, 405, None, "method_not_allowed")
        self.assertIn("GET", [m.strip() for m in headers["Allow"].split(",")])

    def test_errors_413(self):
        # body over --max-body 8192 (unknown fields are ignored: a body under the limit passes)
        ok = self.s.post("/v1/generate", {"prompt": "a", "max_tokens": 1, "pad": "p" * 7000})
        self.assertEqual(ok[0], 200, ok[1])
        status, obj, headers = self.s.post("/v1/generate", {"prompt": "a", "max_tokens": 1, "pad": "p" * 9000})
        self.assertError(status, obj, headers, 413, None, "request_too_large", check_param=False)
        # input tokens over --max-input-tokens 300
        self.assertEqual(self.s.post("/v1/score", {"text": "a" * 300, "top_k": 1})[0], 200)
        for path, body in (("/v1/score", {"text": "a" * 301}), ("/v1/score", {"ids": [97] * 301}),
                           ("/v1/generate", {"prompt": "a" * 301, "max_tokens": 1}),
                           ("/v1/completions", {"prompt": "a" * 301, "max_tokens": 1})):
            with self.subTest(path=path):
                status, obj, headers = self.s.post(path, body)
                self.assertError(status, obj, headers, 413, None, "request_too_large", check_param=False)
        # attention over --max-attention-tokens 100
        self.assertEqual(self.s.post("/v1/attention", {"text": "a" * 98})[0], 200)
        status, obj, headers = self.s.post("/v1/attention", {"text": "a" * 101})
        self.assertError(status, obj, headers, 413, None, "request_too_large", check_param=False)

    def test_errors_415(self):
        for ct in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx"):
            with self.subTest(ct=ct):
                status, headers, payload = self.s.request("POST", "/v1/score", raw=b'{"text": "x"}',
                                                          headers={"Content-Type": ct})
                self.assertError(status, json.loads(payload), headers, 415, None, check_param=False)
        status, _, _ = self.s.request("POST", "/v1/score", raw=b'{"text": "x"}',
                                      headers={"Content-Type": "application/json; charset=utf-8"})
        self.assertEqual(status, 200, "parameters allowed")
        # no Content-Type at all is accepted
        c = self.s.conn()
        c.putrequest("POST", "/v1/score")
        c.putheader("Content-Length", "13")
        c.endheaders(b'{"text": "x"}')
        r = c.getresponse()
        r.read()
        c.close()
        self.assertEqual(r.status, 200)


# --------------------------------------------------------------------------------------------
# Multi-head attention model (tiny fixture)
# --------------------------------------------------------------------------------------------

class TestMultihead(ServerCase):
    FLAGS = ["--workers", "1"]
    MODEL = MULTIHEAD

    def test_attention_heads(self):
        _, info, _ = self.s.json("GET", "/v1/model")
        text = "abcdefghij klm"
        T = len(text) + 1
        band = self.s.ok("/v1/attention", {"text": text, "format": "band"})
        dense = self.s.ok("/v1/attention", {"text": text, "format": "dense"})
        self.assertGreater(band["heads"], 1)
        self.assertEqual(band["heads"], info["config"]["heads"] if "config" in info else band["heads"])
        self.assertEqual(band["attention"], "multihead")
        W = band["window"]
        self.assertEqual(W, info["metadata"]["window"])
        self.assertLess(W, T)
        self.assertEqual(len(band["maps"]), band["heads"])
        self.assertEqual(len(dense["maps"]), band["heads"])
        distinct = set()
        for h in range(band["heads"]):
            self.assertEqual(len(band["maps"][h]), T)
            for t in range(T):
                brow, drow = band["maps"][h][t], dense["maps"][h][t]
                self.assertEqual(len(brow), min(t + 1, W))
                self.assertAlmostEqual(sum(brow), 1.0, delta=1e-5)
                self.assertEqual(len(drow), T)
                lo = max(0, t - W + 1)
                self.assertTrue(all(drow[k] == 0 for k in range(T) if k < lo or k > t))
                for k in range(lo, t + 1):
                    self.assertAlmostEqual(drow[k], brow[k - lo], delta=1e-6)
            distinct.add(tuple(round(x, 6) for x in band["maps"][h][T - 1]))
        self.assertGreater(len(distinct), 1, "heads attend differently")

    def test_score_and_greedy_match_engine(self):
        text = "hello world, ça va"
        obj = self.s.ok("/v1/score", {"text": text})
        ref, _ = cli_score(MULTIHEAD, text)
        self.assertEqual(len(obj["tokens"]), len(ref))
        for t, (b, lp) in zip(obj["tokens"], ref):
            self.assertEqual(t["id"], b)
            self.assertAlmostEqual(t["logprob"], lp, delta=2e-5)
        out = self.s.ok("/v1/generate", {"prompt": "abc", "max_tokens": 40, "temperature": 0})
        self.assertEqual(tok_bytes(out["tokens"]), cli_greedy(MULTIHEAD, "abc", 40))

    def test_generate_attention_per_head(self):
        out = self.s.ok("/v1/generate", {"prompt": "abcdefg", "max_tokens": 6, "seed": 1, "attention": True})
        ids = list(b"abcdefg") + [t["id"] for t in out["tokens"]]
        att = self.s.ok("/v1/attention", {"ids": ids})
        for i, t in enumerate(out["tokens"]):
            p = 7 + 1 + i
            self.assertEqual(len(t["attention"]), att["heads"])
            for h in range(att["heads"]):
                ref = att["maps"][h][p - 1]
                self.assertEqual(len(t["attention"][h]), len(ref))
                for a, b in zip(t["attention"][h], ref):
                    self.assertAlmostEqual(a, b, delta=1e-5)


# --------------------------------------------------------------------------------------------
# PyTorch reference values (tests/fixtures/*.expected.safetensors, written by train/make_fixtures.py)
# --------------------------------------------------------------------------------------------

def read_safetensors(path):
    """(__metadata__, {name: (shape, flat list of floats)}) for F32 tensors."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info
        a, b = info["data_offsets"]
        out[name] = (info["shape"], list(struct.unpack("<%df" % ((b - a) // 4), data[base + a:base + b])))
    return header.get("__metadata__", {}), out


class TestPyTorchReference(ServerCase):
    """/v1/attention (dense) and /v1/score against the PyTorch implementation's values."""

    def test_fixtures(self):
        fixtures = sorted(f for f in os.listdir("tests/fixtures") if f.endswith(".expected.safetensors"))
        self.assertTrue(fixtures)
        for ef in fixtures:
            model = os.path.join("tests/fixtures", ef.replace(".expected", ""))
            with self.subTest(model=model):
                meta, t = read_safetensors(os.path.join("tests/fixtures", ef))
                text = meta["text"]
                (H, T, T2), attn = t["attention"]
                (T3, V), lps = t["logprobs"]
                self.assertEqual((T, T2, T3), (len(text.encode()) + 1,) * 3)
                srv = Server("--workers", "1", model=model)
                try:
                    att = srv.ok("/v1/attention", {"text": text, "format": "dense"})
                    sc = srv.ok("/v1/score", {"text": text, "top_k": 1})
                finally:
                    srv.stop_checked()
                self.assertEqual(att["heads"], H)
                worst = 0.0
                for h in range(H):
                    for q in range(T):
                        for k in range(T):
                            worst = max(worst, abs(att["maps"][h][q][k] - attn[(h * T + q) * T + k]))
                self.assertLessEqual(worst, 1e-5, "attention differs from PyTorch by %g" % worst)
                ids = list(text.encode())
                worst = 0.0
                for i, tok in enumerate(sc["tokens"]):
                    worst = max(worst, abs(tok["logprob"] - lps[i * V + ids[i]]))
                last = lps[(T - 1) * V:T * V]
                self.assertAlmostEqual(sc["next"][0]["logprob"], max(last), delta=1e-4)
                self.assertLessEqual(worst, 1e-4, "logprobs differ from PyTorch by %g" % worst)


# --------------------------------------------------------------------------------------------
# API key
# --------------------------------------------------------------------------------------------

class TestApiKey(ServerCase):
    FLAGS = ["--api-key", "s3cret-key", "--workers", "1"]
    MODEL = TINY

    def test_key_required(self):
        body = {"text": "abc"}
        for hdrs in ({}, {"Authorization": "Bearer wrong"}, {"X-Api-Key": "wrong"},
                     {"Authorization": "s3cret-key"}, {"Authorization": "Bearer s3cret-keyX"},
                     {"X-Api-Key": "s3cret-ke"}):
            with self.subTest(headers=hdrs):
                status, obj, headers = self.s.post("/v1/tokenize", body, headers=hdrs)
                self.assertError(status, obj, headers, 401, None, "authentication_error", check_param=False)
        for path in ("/v1/model", "/v1/models"):
            status, obj, headers = self.s.json("GET", path)
            self.assertError(status, obj, headers, 401, None, "authentication_error", check_param=False)
        for hdrs in ({"Authorization": "Bearer s3cret-key"}, {"X-Api-Key": "s3cret-key"}):
            with self.subTest(headers=hdrs):
                status, obj, _ = self.s.post("/v1/tokenize", body, headers=hdrs)
                self.assertEqual(status, 200, obj)
                self.assertEqual(len(obj["tokens"]), 3)
                status, obj, _ = self.s.json("GET", "/v1/model", headers=hdrs)
                self.assertEqual(status, 200, obj)

    def test_open_routes(self):
        for path in ("/health", "/ready", "/metrics"):
            status, _, _ = self.s.request("GET", path)
            self.assertEqual(status, 200, path)


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

def raw_post(port, path, body):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    data = json.dumps(body).encode()
    s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return s


class TestDisconnect(ServerCase):
    FLAGS = ["--workers", "1", "--max-new-tokens", "100000", "--drain-timeout", "5"]
    LONG = 100000  # far longer than any wait below

    def wait_idle(self, cancelled_before):
        idle = wait_for(lambda: self.s.metric("attnlm_active_sequences") == 0, 10)
        self.assertTrue(idle, "sequence still decoding 10 s after the client went away")
        self.assertTrue(wait_for(lambda: self.s.metric("attnlm_cancelled_total") > cancelled_before, 5),
                        "attnlm_cancelled_total did not move")
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
            rc = srv.proc.wait(120)
        finally:
            if srv.proc.poll() is None:
                srv.proc.kill()
            srv.stop()
        r = result.get("r")
        self.assertIsInstance(r, tuple, "in-flight request failed: %r" % (r,))
        status, obj, _ = r
        self.assertEqual(status, 200, obj)
        self.assertEqual(obj["usage"]["completion_tokens"], 8000)
        self.assertEqual(obj["finish_reason"], "length")
        self.assertEqual(rc, 0, srv.stderr())
        self.assertFalse(SANITIZER_RE.search(srv.stderr(10 ** 9)), srv.stderr())
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
        for bad in (["--no-such-flag"], ["--workers", "zero"], ["--port", "70000"]):
            p = subprocess.run([SERVER, "--host", "127.0.0.1", *bad], capture_output=True, timeout=30)
            self.assertEqual(p.returncode, 2, (bad, p.stderr))
            self.assertEqual(len([ln for ln in p.stderr.decode().splitlines() if ln.strip()]), 1, (bad, p.stderr))

    def test_env_flags(self):
        srv = Server("--workers", "2", model=TINY, env={"ATTNLM_MAX_NEW_TOKENS": "77", "ATTNLM_WORKERS": "1"})
        self.addCleanup(srv.stop_checked)
        _, info, _ = srv.json("GET", "/v1/model")
        self.assertEqual(info["limits"]["max_new_tokens"], 77, "env var")
        self.assertEqual(info["limits"]["workers"], 2, "flag wins over env")


# --------------------------------------------------------------------------------------------
# Batching must not change numbers
# --------------------------------------------------------------------------------------------

class TestConcurrency(ServerCase):
    FLAGS = ["--workers", "1", "--max-batch", "32"]

    def test_concurrent_equals_alone(self):
        prompts = ["Call me Ishmael.", "The whale", "", "Queequeg was", "It is not down on any map",
                   "Stubb", "\n", "Whenever I find myself"]
        reqs = []
        for i, p in enumerate(prompts):
            reqs.append(("/v1/generate", {"prompt": p, "max_tokens": 120 + 10 * i, "seed": 100 + i,
                                          "temperature": [0.8, 1.0, 0, 1.2][i % 4], "top_k": [0, 40][i % 2],
                                          "top_p": [1.0, 0.9, 1.0, 0.95][i % 4], "logprobs": i % 3}))
        reqs.append(("/v1/score", {"text": "Call me Ishmael. Some years ago", "top_k": 3}))
        reqs.append(("/v1/score", {"text": "a" * 100, "top_k": 1, "candidates": [" b"]}))
        alone = [self.s.ok(p, b) for p, b in reqs]
        batch_before = self.s.metric("attnlm_batch_size_count") - self.s.metric("attnlm_batch_size_bucket", le="1")
        results = [None] * len(reqs)
        barrier = threading.Barrier(len(reqs))

        def run(i):
            barrier.wait()
            try:
                results[i] = self.s.ok(*reqs[i])
            except Exception as e:  # noqa
                results[i] = e

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(reqs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        for i, (a, b) in enumerate(zip(alone, results)):
            with self.subTest(i=i, req=reqs[i][0]):
                self.assertIsInstance(b, dict, b)
                if reqs[i][0] == "/v1/generate":
                    self.assertEqual(b["text"], a["text"])
                    self.assertEqual([t["id"] for t in b["tokens"]], [t["id"] for t in a["tokens"]])
                    for x, y in zip(a["tokens"], b["tokens"]):
                        self.assertAlmostEqual(x["logprob"], y["logprob"], delta=1e-5)
                        self.assertEqual([t["id"] for t in x.get("top", [])], [t["id"] for t in y.get("top", [])])
                    self.assertEqual(b["finish_reason"], a["finish_reason"])
                else:
                    for x, y in zip(a["tokens"], b["tokens"]):
                        self.assertAlmostEqual(x["logprob"], y["logprob"], delta=1e-5)
                    self.assertEqual([t["id"] for t in a["next"]], [t["id"] for t in b["next"]])
        batched = self.s.metric("attnlm_batch_size_count") - self.s.metric("attnlm_batch_size_bucket", le="1")
        self.assertGreater(batched, batch_before, "no decoding step ran more than one sequence")


if __name__ == "__main__":
    if not os.path.exists(SERVER):
        sys.exit("no server binary at %s (set ATTNLM_SERVER)" % SERVER)
    unittest.main(verbosity=2, exit=True)
