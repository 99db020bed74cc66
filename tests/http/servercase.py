"""What the HTTP test modules share: paths, the command-line reference (`attnlm`), and
ServerCase, a TestCase with one shared server per class and assertions on answers."""
import http.client
import json
import os
import re
import socket
import struct
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib"))

from attnlm_server import (JSON_CT, SERVER, Server, parse_prom, sse_events,  # noqa: E402,F401
                           wait_for, without_timings)

CLI = os.environ.get("ATTNLM_CLI", "build/attnlm")
DEFAULT = "models/default.safetensors"
TINY = "tests/fixtures/gru_dot.safetensors"
MULTIHEAD = "tests/fixtures/gru_multihead.safetensors"
FIXTURES = "tests/fixtures"

# The endpoint suites' server: limits small enough to reach in a test.
ENDPOINT_FLAGS = ["--workers", "2", "--queue", "16", "--max-body", "8192", "--max-input-tokens", "300",
                  "--max-new-tokens", "500", "--max-attention-tokens", "100"]


def cli_score(model, text, precision="f32"):
    """Per-byte (byte, log-probability) and the total from `attnlm score`."""
    out = subprocess.run([CLI, "score", "--model", model, "--text", text, "--precision", precision],
                         capture_output=True, check=True).stdout.decode("latin-1")
    lps, total = [], None
    for line in out.splitlines():
        m = re.match(r"^\s*(\d+)\s+0x([0-9a-f]{2}) .\s+(-?\d+\.\d+)\s*$", line)
        if m:
            assert int(m.group(1)) == len(lps) + 1, line
            lps.append((int(m.group(2), 16), float(m.group(3))))
        elif line.startswith("total "):
            total = float(line.split()[1])
    return lps, total


def cli_greedy(model, prompt, n, precision="f32"):
    out = subprocess.run([CLI, "generate", "--model", model, "--prompt", prompt, "--temperature", "0",
                          "--max-tokens", str(n), "--precision", precision], capture_output=True, check=True).stdout
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


def raw_post(port, path, body):
    """A POST on a bare socket, left open: the caller reads what it wants and closes it."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    data = json.dumps(body).encode()
    s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return s


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


class ServerCase(unittest.TestCase):
    """A TestCase with one shared server (FLAGS, MODEL) and per-test extra servers (start())."""
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
        if s.proc.poll() is None and not s.sanitizer_report():
            try:
                if s.request("GET", "/health", timeout=30)[0] == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
        try:
            s.proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        s.kill()
        rc, err = s.returncode, s.stderr(80)
        type(self).s = Server(*self.FLAGS, model=self.MODEL)
        self.fail("shared server died during this test (exit status %s):\n%s" % (rc, err))

    def start(self, *flags, model=DEFAULT, **kw):
        """A server of this test's own, stopped (and checked) when the test ends."""
        srv = Server(*flags, model=model, **kw)
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
