"""Sessions: a text's state kept on the server.  Appending scores the new bytes exactly as
/v1/score scores them at the end of the whole text; a session is read, deleted, exported as
signed bytes and imported again (here or on a server sharing the secret); tampered, cut,
unsigned, foreign or oversized states are refused and store nothing; the store's limits
(count, bytes, time to live) answer with clear errors; sessions belong to their API key."""
import json
import os
import socket
import tempfile
import time
import urllib.parse

from servercase import DEFAULT, FIXTURES, ServerCase, sse_events

OTHER = FIXTURES + "/long_elman_cosine_cont.safetensors"  # a window of 80: appends cross it
TEXT = ("Call me Ishmael. Some years ago - never mind how long precisely - having little or no money "
        "in my purse, and nothing particular to interest me on shore, ")
PARTS = ["I thought I would sail", " about a little and see the watery part of the world.", " It", "s"]
OCTETS = {"Content-Type": "application/octet-stream"}


def sse_data(payload):
    """The JSON payloads of a stream's events, [DONE] left out."""
    return [e for e in sse_events(payload) if e != "[DONE]"]


def secret_file(case, data=b"correct horse battery staple, twice over\n"):
    fd, path = tempfile.mkstemp(prefix="attnlm-secret-")
    os.write(fd, data)
    os.close(fd)
    case.addCleanup(os.unlink, path)
    return path


def declared_import(srv, length):
    """POST /v1/sessions/import announcing a body of length bytes, none sent: (status, answer, headers)."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as c:
        c.sendall(b"POST /v1/sessions/import HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
                  b"Content-Length: %d\r\n\r\n" % length)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 20:
            more = c.recv(65536)
            if not more:
                break
            data += more
    head, _, body = data.partition(b"\r\n\r\n")
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line)
    return int(head.split()[1]), json.loads(body[body.index(b"{"):body.rindex(b"}") + 1]), headers


class SessionCase(ServerCase):
    def create(self, srv, body, status=200):
        st, obj, _ = srv.post("/v1/sessions", body)
        self.assertEqual(st, status, obj)
        return obj

    def export(self, srv, sid):
        st, headers, data = srv.request("GET", "/v1/sessions/%s/state" % sid)
        self.assertEqual(st, 200, data[:300])
        self.assertEqual(headers["Content-Type"], "application/octet-stream")
        return data

    def sessions_held(self, srv):
        return srv.metric("attnlm_sessions"), srv.metric("attnlm_session_bytes")


class TestSessions(SessionCase):
    FLAGS = ["--workers", "2", "--model", OTHER]  # after the default model

    def check_append_matches_score(self, model):
        """Each append's tokens equal the tail of /v1/score over everything so far."""
        made = self.create(self.s, {"text": TEXT, "model": model, "top_k": 3})
        sid, text = made["id"], TEXT
        self.assertTrue(sid.startswith("sess_"), made)
        self.assertEqual(made["token_count"], len(TEXT))
        whole = self.s.ok("/v1/score", {"text": TEXT, "model": model, "top_k": 3})
        self.assertEqual([t["id"] for t in made["next"]], [t["id"] for t in whole["next"]])
        for a, b in zip(made["next"], whole["next"]):
            self.assertAlmostEqual(a["logprob"], b["logprob"], delta=1e-5)
        for part in PARTS:
            got = self.s.ok("/v1/sessions/%s/append" % sid, {"text": part, "top_k": 2})
            text += part
            want = self.s.ok("/v1/score", {"text": text, "model": model, "top_k": 2})
            tail = want["tokens"][-len(part):]
            self.assertEqual(got["usage"]["input_tokens"], len(part))
            self.assertEqual(got["token_count"], len(text))
            self.assertEqual([t["id"] for t in got["tokens"]], [t["id"] for t in tail])
            for a, b in zip(got["tokens"], tail):
                self.assertAlmostEqual(a["logprob"], b["logprob"], delta=1e-5)
                self.assertEqual([x["id"] for x in a["top"]], [x["id"] for x in b["top"]])
            self.assertEqual([t["id"] for t in got["next"]], [t["id"] for t in want["next"]])
            self.assertAlmostEqual(got["logprob"], sum(t["logprob"] for t in tail), delta=1e-4)
        # ids append like text
        got = self.s.ok("/v1/sessions/%s/append" % sid, {"ids": [33, 10]})
        want = self.s.ok("/v1/score", {"text": text + "!\n", "model": model})
        for a, b in zip(got["tokens"], want["tokens"][-2:]):
            self.assertAlmostEqual(a["logprob"], b["logprob"], delta=1e-5)
        info = self.s.json("GET", "/v1/sessions/" + sid)[1]
        self.assertEqual(info["token_count"], len(text) + 2)
        self.assertEqual(info["model"], self.s.json("GET", "/v1/model?model=" + urllib.parse.quote(model))[1]["id"])
        return sid

    def test_append_scores_as_the_whole_text(self):
        for served in self.s.json("GET", "/v1/models")[1]["data"]:
            with self.subTest(model=served["id"]):
                self.check_append_matches_score(served["id"])

    def test_empty_session_then_appends(self):
        made = self.create(self.s, {"text": ""})
        self.assertEqual(made["token_count"], 0)
        got = self.s.ok("/v1/sessions/%s/append" % made["id"], {"text": TEXT})
        want = self.s.ok("/v1/score", {"text": TEXT})
        for a, b in zip(got["tokens"], want["tokens"]):
            self.assertAlmostEqual(a["logprob"], b["logprob"], delta=1e-5)

    def test_generation_continues_a_session(self):
        """"session" on both generation routes: the answer equals one for the whole text as the
        prompt (greedy and seeded sampling, streamed or not), and the session stays as it was."""
        sid = self.create(self.s, {"text": TEXT})["id"]
        for prompt in ("", "I", "I thought"):
            for body in ({"max_tokens": 24, "temperature": 0}, {"max_tokens": 16, "seed": 7, "top_k": 20},
                         {"max_tokens": 8, "seed": 3, "stream": True}):
                with self.subTest(prompt=prompt, body=body):
                    if body.get("stream"):
                        st, _, got = self.s.request("POST", "/v1/generate", dict(body, session=sid, prompt=prompt))
                        st2, _, want = self.s.request("POST", "/v1/generate", dict(body, prompt=TEXT + prompt))
                        self.assertEqual((st, st2), (200, 200))
                        got_text = "".join(e.get("text", "") for e in sse_data(got))
                        want_text = "".join(e.get("text", "") for e in sse_data(want))
                        self.assertEqual(got_text, want_text)
                        continue
                    got = self.s.ok("/v1/generate", dict(body, session=sid, prompt=prompt))
                    want = self.s.ok("/v1/generate", dict(body, prompt=TEXT + prompt))
                    self.assertEqual(got["text"], want["text"])
                    self.assertEqual(got["usage"]["prompt_tokens"], len(prompt))
                    for a, b in zip(got["tokens"], want["tokens"]):
                        self.assertAlmostEqual(a["logprob"], b["logprob"], delta=1e-4)
        got = self.s.ok("/v1/completions", {"session": sid, "prompt": " I", "max_tokens": 12, "n": 2, "seed": 5,
                                            "echo": True, "logprobs": 1})
        want = self.s.ok("/v1/completions", {"prompt": TEXT + " I", "max_tokens": 12, "n": 2, "seed": 5,
                                             "logprobs": 1})
        self.assertEqual([c["text"] for c in got["choices"]], [" I" + c["text"] for c in want["choices"]])
        echoed = self.s.ok("/v1/completions", {"prompt": TEXT + " I", "max_tokens": 0, "echo": True, "logprobs": 1})
        lps = got["choices"][0]["logprobs"]["token_logprobs"]
        self.assertAlmostEqual(lps[0], echoed["choices"][0]["logprobs"]["token_logprobs"][-2], delta=1e-5)
        self.assertAlmostEqual(lps[1], echoed["choices"][0]["logprobs"]["token_logprobs"][-1], delta=1e-5)
        self.assertEqual(self.s.json("GET", "/v1/sessions/" + sid)[1]["token_count"], len(TEXT))
        for path, body, status, param in (
                ("/v1/generate", {"session": "sess_00", "prompt": "a"}, 404, "session"),
                ("/v1/generate", {"session": 5}, 400, "session"),
                ("/v1/completions", {"session": sid, "prompt": ["a", "b"]}, 400, "session"),
                ("/v1/completions", {"session": sid, "model": self.s.json("GET", "/v1/models")[1]["data"][1]["id"]},
                 400, "model")):
            st, obj, h = self.s.post(path, body)
            self.assertError(st, obj, h, status, param)

    def test_get_and_delete(self):
        sid = self.create(self.s, {"text": "whale"})["id"]
        st, info, _ = self.s.json("GET", "/v1/sessions/" + sid)
        self.assertEqual(st, 200)
        self.assertEqual({"id", "object", "model", "token_count", "created", "last_used", "expires_in",
                          "state_bytes"} - set(info), set())
        self.assertEqual((info["id"], info["object"], info["token_count"]), (sid, "session", 5))
        st, gone, _ = self.s.json("DELETE", "/v1/sessions/" + sid)
        self.assertEqual((st, gone), (200, {"id": sid, "object": "session", "deleted": True}))
        for method, path, body in (("GET", "/v1/sessions/" + sid, None), ("DELETE", "/v1/sessions/" + sid, None),
                                   ("POST", "/v1/sessions/%s/append" % sid, {"text": "a"}),
                                   ("GET", "/v1/sessions/%s/state" % sid, None),
                                   ("GET", "/v1/sessions/sess_0123456789abcdef0123456789abcdef", None),
                                   ("GET", "/v1/sessions/..%2f..%2fetc", None),
                                   ("GET", "/v1/sessions/" + "a" * 300, None)):
            with self.subTest(method=method, path=path[:60]):
                st, obj, h = self.s.json(method, path, body)
                # a path that is not /v1/sessions/{id} at all names no field
                self.assertError(st, obj, h, 404, "session", check_param="%2f" not in path)

    def test_methods_and_media_types(self):
        sid = self.create(self.s, {"text": "whale"})["id"]
        for method, path, allow in (("PUT", "/v1/sessions/" + sid, "GET, HEAD, DELETE"),
                                    ("GET", "/v1/sessions", "POST"), ("GET", "/v1/sessions/import", "POST"),
                                    ("DELETE", "/v1/sessions/%s/state" % sid, "GET, HEAD")):
            st, obj, h = self.s.json(method, path)
            self.assertError(st, obj, h, 405)
            self.assertEqual(h["Allow"], allow)
        st, obj, h = self.s.json("POST", "/v1/sessions/import", {"state": "x"})
        self.assertError(st, obj, h, 415)
        st, obj, h = self.s.json("POST", "/v1/sessions/%s/append" % sid, raw=b"abc", headers=OCTETS)
        self.assertError(st, obj, h, 415)

    def test_bad_requests_name_the_field(self):
        sid = self.create(self.s, {"text": "whale"})["id"]
        cases = [("/v1/sessions", {"text": 5}, 400, "text"), ("/v1/sessions", {"text": "a", "ids": [1]}, 400, None),
                 ("/v1/sessions", {"model": "nope"}, 404, "model"), ("/v1/sessions", {"top_k": -1}, 400, "top_k"),
                 ("/v1/sessions", {"text": "a", "stream": True}, 400, "stream"),
                 ("/v1/sessions", {"text": "a" * 5000}, 413, "text"),
                 ("/v1/sessions/%s/append" % sid, {}, 400, "text"),
                 ("/v1/sessions/%s/append" % sid, {"text": ""}, 400, "text"),
                 ("/v1/sessions/%s/append" % sid, {"ids": [300]}, 400, "ids"),
                 ("/v1/sessions/%s/append" % sid, {"text": "a", "model": ""}, 400, "model")]
        for path, body, status, param in cases:
            with self.subTest(body=body):
                st, obj, h = self.s.post(path, body)
                self.assertError(st, obj, h, status, param, check_param=param is not None)
        # nothing of that changed the session
        self.assertEqual(self.s.json("GET", "/v1/sessions/" + sid)[1]["token_count"], 5)


class TestPortableState(SessionCase):
    FLAGS = None

    def test_export_import_moves_a_session(self):
        secret = secret_file(self)
        a = self.start("--session-secret-file", secret)
        b = self.start("--session-secret-file", secret)
        sid = self.create(a, {"text": TEXT})["id"]
        state = self.export(a, sid)
        self.assertEqual(state[:8], b"ATLMSESS")
        st, moved, _ = b.post("/v1/sessions/import", None, raw=state, headers=OCTETS)
        self.assertEqual(st, 200, moved)
        self.assertEqual(moved["token_count"], len(TEXT))
        self.assertNotEqual(moved["id"], sid)
        here = a.ok("/v1/sessions/%s/append" % sid, {"text": PARTS[0]})
        there = b.ok("/v1/sessions/%s/append" % moved["id"], {"text": PARTS[0]})
        self.assertEqual(here["tokens"], there["tokens"])
        self.assertEqual(here["next"], there["next"])

    def test_bad_states_are_refused_and_store_nothing(self):
        secret = secret_file(self)
        a = self.start("--session-secret-file", secret)
        other_secret = self.start("--session-secret-file", secret_file(self, b"another secret of enough length"))
        other_model = self.start("--session-secret-file", secret, model=OTHER)
        small = self.export(other_model, self.create(other_model, {"text": TEXT})["id"])
        bf16 = self.start("--session-secret-file", secret, "--precision", "bf16")
        sid = self.create(a, {"text": TEXT})["id"]
        state = self.export(a, sid)
        flipped = bytearray(state)
        flipped[len(state) // 2] ^= 1
        header_flip = bytearray(state)
        header_flip[90] ^= 1  # the position
        cases = [("tampered state", a, bytes(flipped), 400), ("tampered header", a, bytes(header_flip), 400),
                 ("cut short", a, state[:-100], 400), ("unsigned", a, state[:-32], 400),
                 ("empty", a, b"", 400), ("not a state", a, b"x" * 5000, 400),
                 ("another secret", other_secret, state, 400), ("another model", a, small, 400),
                 ("other precision", bf16, state, 400)]
        for what, srv, data, status in cases:
            with self.subTest(what=what):
                before = self.sessions_held(srv)
                st, obj, h = srv.post("/v1/sessions/import", None, raw=data, headers=OCTETS)
                self.assertError(st, obj, h, status, "state")
                self.assertEqual(self.sessions_held(srv), before)
        # longer than any state of the served models: refused before it is read
        self.assertError(*declared_import(other_model, len(state)), 413)
        self.assertError(*declared_import(a, len(state) + 64), 413)
        # the good one still imports
        st, obj, _ = a.post("/v1/sessions/import", None, raw=state, headers=OCTETS)
        self.assertEqual(st, 200, obj)

    def test_secret_file_must_be_usable(self):
        from servercase import Server
        for data in (b"short\n", b"x" * 5000):
            path = secret_file(self, data)
            with self.assertRaises(Exception):
                Server("--session-secret-file", path)


class TestStoreLimits(SessionCase):
    FLAGS = None

    def test_count_limit(self):
        srv = self.start("--max-sessions", "2", model=OTHER)
        ids = [self.create(srv, {"text": "a"})["id"] for _ in range(2)]
        full = self.create(srv, {"text": "b"}, status=503)
        self.assertIn("session store", full["error"]["message"])
        self.assertEqual(self.sessions_held(srv)[0], 2)
        self.assertEqual(srv.json("DELETE", "/v1/sessions/" + ids[0])[0], 200)
        self.create(srv, {"text": "c"})

    def test_byte_limit(self):
        srv = self.start("--session-memory", "1")  # the default model's state is about 1.8 MB
        full = self.create(srv, {"text": "a"}, status=503)
        self.assertIn("session store", full["error"]["message"])
        self.assertEqual(self.sessions_held(srv), (0, 0))

    def test_idle_sessions_expire(self):
        srv = self.start("--session-ttl", "1", model=OTHER)
        sid = self.create(srv, {"text": "a"})["id"]
        self.assertEqual(srv.json("GET", "/v1/sessions/" + sid)[0], 200)
        time.sleep(1.5)
        st, obj, h = srv.json("GET", "/v1/sessions/" + sid)
        self.assertError(st, obj, h, 404, "session")

    def test_sessions_off(self):
        srv = self.start("--max-sessions", "0", model=OTHER)
        st, obj, h = srv.post("/v1/sessions", {"text": "a"})
        self.assertError(st, obj, h, 404)


class TestSessionKeys(SessionCase):
    FLAGS = None

    def test_sessions_belong_to_their_key(self):
        keys = secret_file(self, b"alpha-key\n# a comment\n\nbeta-key\n")
        srv = self.start("--api-key-file", keys, model=OTHER)
        alpha, beta = {"Authorization": "Bearer alpha-key"}, {"X-Api-Key": "beta-key"}
        st, made, _ = srv.post("/v1/sessions", {"text": "whale"}, headers=alpha)
        self.assertEqual(st, 200, made)
        sid = made["id"]
        self.assertEqual(srv.json("GET", "/v1/sessions/" + sid, headers=alpha)[0], 200)
        for method, path, body in (("GET", "/v1/sessions/" + sid, None),
                                   ("POST", "/v1/sessions/%s/append" % sid, {"text": "a"}),
                                   ("GET", "/v1/sessions/%s/state" % sid, None),
                                   ("DELETE", "/v1/sessions/" + sid, None)):
            st, obj, h = srv.json(method, path, body, headers=beta)
            self.assertError(st, obj, h, 404, "session")
        st, obj, h = srv.json("GET", "/v1/sessions/" + sid, headers={"Authorization": "Bearer gamma"})
        self.assertError(st, obj, h, 401)
        self.assertEqual(srv.json("DELETE", "/v1/sessions/" + sid, headers=alpha)[0], 200)

    def test_key_file_reread_on_sighup(self):
        import signal
        keys = secret_file(self, b"alpha-key\n")
        srv = self.start("--api-key-file", keys, "--api-key", "fixed-key", model=OTHER)
        ask = lambda key: srv.post("/v1/score", {"text": "a"}, headers={"X-Api-Key": key})[0]
        self.assertEqual((ask("alpha-key"), ask("beta-key"), ask("fixed-key")), (200, 401, 200))
        with open(keys, "w") as f:
            f.write("beta-key\n")
        os.kill(srv.proc.pid, signal.SIGHUP)
        deadline = time.time() + 10
        while ask("beta-key") != 200 and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual((ask("alpha-key"), ask("beta-key"), ask("fixed-key")), (401, 200, 200))
        # a file that holds no key leaves the keys before, and says so
        with open(keys, "w") as f:
            f.write("# nothing\n")
        os.kill(srv.proc.pid, signal.SIGHUP)
        deadline = time.time() + 10
        while "holds no key" not in srv.stderr() and time.time() < deadline:
            time.sleep(0.05)
        self.assertIn("holds no key", srv.stderr())
        self.assertEqual((ask("alpha-key"), ask("beta-key")), (401, 200))
        # at start, such a file is refused
        from servercase import Server
        with self.assertRaises(Exception):
            Server("--api-key-file", keys, model=OTHER)
