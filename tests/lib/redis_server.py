"""A redis-server of a test's own (Debian's), on a free loopback port, persisting nothing.

    r = RedisServer()          # running and answering PING
    url = r.url                # redis://127.0.0.1:PORT
    r.stop(); r.start()        # take it away and bring it back on the same port
    r.close()                  # stopped for good

Standard library only: it speaks enough RESP for PING, DBSIZE and KEYS.
"""
import os
import shutil
import socket
import subprocess
import tempfile
import time

REDIS = os.environ.get("ATTNLM_REDIS", shutil.which("redis-server") or "/usr/bin/redis-server")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, *args):
        self.port = free_port()
        self.url = "redis://127.0.0.1:%d" % self.port
        self.dir = tempfile.mkdtemp(prefix="attnlm-redis-")
        self.args = list(args)
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen([REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir, *self.args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if self.command("PING") == "PONG":
                    return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise RuntimeError("redis-server did not answer on port %d" % self.port)

    def command(self, *words):
        """One command; its reply as str, int or list (errors raise)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as c:
            c.sendall(b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w.encode()) for w in words))
            f = c.makefile("rb")
            return self._reply(f)

    def _reply(self, f):
        line = f.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else f.read(n + 2)[:-2].decode("latin-1")
        if kind == b"*":
            return [self._reply(f) for _ in range(int(rest))]
        raise RuntimeError("bad reply %r" % line)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
