"""Sessions and stream checkpoints in Redis (--session-store redis://...), a redis-server of the
test's own: the session and resume suites pass against it unchanged; replicas sharing the store
and the secret see each other's sessions and resume each other's streams, a killed one's too;
Redis taken away makes the session routes answer 503 quickly while every other route is
unaffected, and the server reconnects by itself when Redis is back; keys expire with the TTL."""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib"))

import test_resume  # noqa: E402
import test_sessions  # noqa: E402
from redis_server import RedisServer  # noqa: E402
from servercase import ServerCase  # noqa: E402


def shared_secret(case):
    fd, path = tempfile.mkstemp(prefix="attnlm-secret-")
    os.write(fd, b"a secret two replicas share, long enough\n")
    os.close(fd)
    case.addCleanup(os.unlink, path)
    return path


class RedisCase:
    """Starts redis-server before the class's shared server, which uses it."""
    redis = None

    @classmethod
    def setUpClass(cls):
        cls.redis = RedisServer()
        cls.FLAGS = list(cls.BASE_FLAGS) + ["--session-store", cls.redis.url]
        try:
            super().setUpClass()
        except Exception:
            cls.redis.close()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.redis.close()


class TestSessionsInRedis(RedisCase, test_sessions.TestSessions):
    BASE_FLAGS = test_sessions.TestSessions.FLAGS


class TestResumeInRedis(RedisCase, test_resume.TestResume):
    BASE_FLAGS = test_resume.TestResume.FLAGS


class TestReplicas(ServerCase):
    FLAGS = None

    def setUp(self):
        self.redis = RedisServer()
        self.addCleanup(self.redis.close)

    def replicas(self, n=2, *flags, doomed=0):
        """n replicas sharing the store and the secret; the first `doomed` of them are to be
        killed by the test, so only the others are checked for a clean exit."""
        from servercase import Server
        secret = shared_secret(self)
        out = []
        for i in range(n):
            args = ("--session-store", self.redis.url, "--session-secret-file", secret) + flags
            if i < doomed:
                srv = Server(*args)
                self.addCleanup(srv.kill)
            else:
                srv = self.start(*args)
            out.append(srv)
        return out

    def test_sessions_are_shared(self):
        a, b = self.replicas()
        sid = a.ok("/v1/sessions", {"text": "Call me Ishmael."})["id"]
        got = b.ok("/v1/sessions/%s/append" % sid, {"text": " Some"})
        want = a.ok("/v1/score", {"text": "Call me Ishmael. Some"})
        for x, y in zip(got["tokens"], want["tokens"][-5:]):
            self.assertAlmostEqual(x["logprob"], y["logprob"], delta=1e-5)
        self.assertEqual(a.json("GET", "/v1/sessions/" + sid)[1]["token_count"], len("Call me Ishmael. Some"))
        ttl = self.redis.command("TTL", [k for k in self.redis.command("KEYS", "attnlm:s:*")][0])
        self.assertTrue(0 < ttl <= 900, ttl)
        self.assertEqual(b.json("DELETE", "/v1/sessions/" + sid)[0], 200)
        st, obj, h = a.json("GET", "/v1/sessions/" + sid)
        self.assertError(st, obj, h, 404, "session")

    def test_keys_expire(self):
        a, = self.replicas(1, "--session-ttl", "1")
        sid = a.ok("/v1/sessions", {"text": "a"})["id"]
        time.sleep(2.2)
        st, obj, h = a.json("GET", "/v1/sessions/" + sid)
        self.assertError(st, obj, h, 404, "session")

    def test_a_killed_replicas_stream_resumes_on_another(self):
        a, b = self.replicas(2, "--checkpoint-every", "8", doomed=1)
        body = {"prompt": "The whale", "max_tokens": 120, "seed": 11, "stream": True}
        full = test_resume.events(b.request("POST", "/v1/generate", body)[2])
        import socket
        import json
        import re
        with socket.create_connection(("127.0.0.1", a.port), timeout=30) as c:
            data = json.dumps(body).encode()
            c.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(data) + data)
            got = b""
            while len(re.findall(rb"id: [0-9a-f]+\.\d+\n", got)) < 40:
                more = c.recv(4096)
                self.assertTrue(more)
                got += more
            a.kill()  # kill -9, mid-stream
        last = re.findall(rb"id: ([0-9a-f]+\.\d+)\n", got)[38].decode()
        n = int(last.rsplit(".", 1)[1])
        rest = test_resume.events(b.request("POST", "/v1/generate", body, headers={"Last-Event-ID": last})[2])
        self.assertEqual(full[:n] + rest, full)

    def test_redis_away_and_back(self):
        a, = self.replicas(1)
        sid = a.ok("/v1/sessions", {"text": "whale"})["id"]
        self.redis.stop()
        for method, path, body in (("POST", "/v1/sessions", {"text": "a"}), ("GET", "/v1/sessions/" + sid, None),
                                   ("POST", "/v1/sessions/%s/append" % sid, {"text": "a"})):
            t0 = time.time()
            st, obj, h = a.json(method, path, body)
            self.assertLess(time.time() - t0, 3.0)
            self.assertError(st, obj, h, 503)
            self.assertIn("session store", obj["error"]["message"])
        # everything else goes on, streams included (their checkpoints are skipped)
        self.assertEqual(a.post("/v1/score", {"text": "whale"})[0], 200)
        st, _, payload = a.request("POST", "/v1/generate", {"prompt": "a", "max_tokens": 10, "stream": True})
        self.assertEqual(st, 200)
        self.assertIn(b"[DONE]", payload)
        self.assertGreater(a.metric("attnlm_stream_checkpoints_total", result="failed"), 0)
        self.redis.start()  # empty: a fresh Redis
        deadline = time.time() + 10
        while time.time() < deadline:
            st, obj, _ = a.post("/v1/sessions", {"text": "again"})
            if st == 200:
                break
            time.sleep(0.2)
        self.assertEqual(st, 200, obj)

    def test_bad_store_url_refused_at_start(self):
        from servercase import Server
        for url in ("redis://", "redis://host:0", "redis://h:1/x", "memcached://h:1", "redis://h:99999"):
            with self.subTest(url=url):
                with self.assertRaises(Exception):
                    Server("--session-store", url)
