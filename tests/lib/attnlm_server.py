"""Start attnlm-server and talk to it: the one launcher of the HTTP tests and the deploy checks.

    from attnlm_server import Server
    s = Server("--workers", "1")          # 127.0.0.1, --port 0, the default model
    status, obj, headers = s.post("/v1/score", {"text": "Call me"})
    s.stop_checked()                      # SIGTERM; exit 0, no sanitizer report, port file gone

The server learns nothing from its startup line here: it is started with `--port-file` (or
`ATTNLM_PORT_FILE`) in a temporary directory and the port is read from that file, which the
server writes once it listens (through a rename, so never half of it) and removes when it exits
cleanly.  Standard library only.
"""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVER = os.environ.get("ATTNLM_SERVER", os.path.join(ROOT, "build", "attnlm-server"))
DEFAULT_MODEL = os.path.join(ROOT, "models", "default.safetensors")
JSON_CT = {"Content-Type": "application/json"}
SANITIZER_RE = re.compile(r"ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:|SUMMARY: \w+Sanitizer")


class StartError(AssertionError):
    """The server exited, or did not write its port file in time."""


class StopError(AssertionError):
    """The server did not exit in time after SIGTERM (it has been killed)."""


def read_port_file(path, proc, timeout, admin=False):
    """The port `proc` wrote to `path` (--port-file), waiting for it (with admin, the admin port
    on the file's second line, or None without one); None if proc exits first or `timeout`
    seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path) as f:
                text = f.read()
            if text.endswith("\n"):
                lines = text.split()
                if admin:
                    return int(lines[1]) if len(lines) > 1 else None
                return int(lines[0])
        except FileNotFoundError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.01)


class Server:
    """attnlm-server on an ephemeral port (or `port`), started with a port file.

    host, port and model become --host, --port and --model unless None (then the server takes
    them from `env` or its defaults).  stderr is drained by a thread into `lines`, or, with
    `log_path`, appended to that file.  `port_file_env` passes the port file as ATTNLM_PORT_FILE
    instead of --port-file."""

    def __init__(self, *flags, model=DEFAULT_MODEL, binary=None, host="127.0.0.1", port=0, env=None,
                 log_path=None, port_file_env=False, startup_timeout=60):
        full_env = dict(os.environ, **(env or {}))
        full_env.setdefault("OPENBLAS_NUM_THREADS", "1")
        self.dir = tempfile.mkdtemp(prefix="attnlm-server-")
        os.chmod(self.dir, 0o755)
        self.port_file = os.path.join(self.dir, "port")
        cmd = [binary or SERVER]
        for flag, value in (("--host", host), ("--port", port), ("--model", model)):
            if value is not None:
                cmd += [flag, str(value)]
        cmd += flags
        if port_file_env:
            full_env["ATTNLM_PORT_FILE"] = self.port_file
        else:
            cmd += ["--port-file", self.port_file]
        self.cmd = cmd
        self.lines = []
        self.port = None
        self.returncode = None
        self.port_file_left = None
        self._lock = threading.Lock()
        self.log_path = log_path
        if log_path:
            self._log = open(log_path, "ab")
            self._log_start = self._log.tell()  # a restarted server appends to its log
            stderr = self._log
        else:
            self._log = None
            stderr = subprocess.PIPE
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                     env=full_env)
        self.reader = None
        if not log_path:
            self.reader = threading.Thread(target=self._drain, daemon=True)
            self.reader.start()
        self.port = read_port_file(self.port_file, self.proc, startup_timeout)
        self.admin_port = read_port_file(self.port_file, self.proc, 1, admin=True) if self.port else None
        if self.port is None:
            if self.proc.poll() is None:
                self.proc.kill()
                why = "did not write its port file within %ds" % startup_timeout
            else:
                why = "exited (status %s) before listening" % self.proc.returncode
            self._finish()
            raise StartError("%s %s:\n%s" % (" ".join(cmd), why, self.stderr()))

    def _drain(self):
        for raw in self.proc.stderr:
            with self._lock:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def stderr(self, last=60):
        """The last lines the server wrote to stderr."""
        if self.log_path:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                lines = f.read().decode("utf-8", "replace").splitlines()
        else:
            with self._lock:
                lines = list(self.lines)
        return "\n".join(lines[-last:])

    def sanitizer_report(self):
        return SANITIZER_RE.search(self.stderr(last=10 ** 9)) is not None

    def _finish(self):
        """After the process is gone: joins the reader, closes the log, removes the directory."""
        self.proc.wait()
        self.returncode = self.proc.returncode
        if self.reader is not None:
            self.reader.join(10)
            self.proc.stderr.close()
            self.reader = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.dir is not None:
            self.port_file_left = os.path.exists(self.port_file)
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def stop(self, timeout=90):
        """SIGTERM (if still running), wait; returns the exit status.  Raises StopError, after
        SIGKILL, if the server has not exited within `timeout` seconds."""
        if self.dir is None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self._finish()
            raise StopError("server did not exit within %ds of SIGTERM:\n%s" % (timeout, self.stderr()))
        self._finish()
        return self.returncode

    def stop_checked(self, timeout=90):
        """stop(), then assert exit status 0, no sanitizer report, and the port file removed."""
        rc = self.stop(timeout)
        if rc != 0:
            raise AssertionError("server exit status %s (want 0)\n%s" % (rc, self.stderr()))
        if self.sanitizer_report():
            raise AssertionError("sanitizer report in server stderr:\n" + self.stderr(200))
        if self.port_file_left:
            raise AssertionError("the server exited 0 but left its port file behind")

    def kill(self):
        """SIGKILL (if still running) and clean up."""
        if self.proc.poll() is None:
            self.proc.kill()
        self._finish()

    # ---- HTTP ----
    def conn(self, timeout=120):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, raw=None, conn=None, timeout=120):
        """-> (status, headers message, body bytes).  body is sent as JSON, raw as is."""
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
        """-> (status, parsed body or None, headers)."""
        status, headers, payload = self.request(method, path, body, **kw)
        try:
            obj = json.loads(payload) if payload else None
        except ValueError:
            raise AssertionError("%s %s -> %d, body not JSON: %r" % (method, path, status, payload[:300]))
        return status, obj, headers

    def post(self, path, body, **kw):
        return self.json("POST", path, body, **kw)

    def ok(self, path, body):
        """POST that must answer 200; the parsed body."""
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


def proc_memory(pid, field):
    """A /proc/PID/status memory figure in bytes: "VmRSS" now, "VmHWM" the peak."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


def parse_prom(text):
    """[(name, {labels}, value)] of a Prometheus text exposition; raises on a malformed sample line."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        # label values are quoted strings, which may hold braces
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{((?:[^}"]|"(?:[^"\\]|\\.)*")*)\})?\s+(\S+)(\s+\d+)?$', line)
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
        # SSE lines end only at CR or LF; str.splitlines would also split at U+0085 or U+2028,
        # which JSON strings carry as they are.
        data = [ln[5:].lstrip(" ") for ln in re.split(r"\r\n|\r|\n", block) if ln.startswith("data:")]
        assert data, "event without data: %r" % block
        d = "\n".join(data)
        events.append(d if d == "[DONE]" else json.loads(d))
    return events


def without_timings(obj):
    """An answer without its "timings" (at any depth): they measure one run, so answers
    compared across runs leave them out."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k != "timings"}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def wait_for(pred, timeout, interval=0.05):
    """pred()'s first true value within `timeout` seconds, else its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)
