"""Resumable streams: every event of a stream has an id; the same request sent again with
Last-Event-ID continues right after that event from the stream's checkpoint, so the events before
and after it join into exactly the uninterrupted stream (no event lost, none repeated), for both
generation routes, several choices, stop strings, penalties and sessions; a cut connection
resumes the same way; an id of another request or key, a request that does not stream, or a
server without checkpoints is refused."""
import json
import re
import socket

from servercase import FIXTURES, ServerCase

OTHER = FIXTURES + "/long_elman_cosine_cont.safetensors"
BODIES = [
    ("/v1/generate", {"prompt": "The sea", "max_tokens": 40, "seed": 2, "stream": True, "logprobs": 2}),
    ("/v1/generate", {"prompt": "Call me", "max_tokens": 60, "seed": 9, "stream": True, "stop": ["sea,", "\n\n"],
                      "repetition_penalty": 1.3, "penalty_last_n": 16}),
    ("/v1/completions", {"prompt": "It was", "max_tokens": 30, "n": 3, "seed": 4, "stream": True, "logprobs": 1,
                         "stream_options": {"include_usage": True}, "frequency_penalty": 0.5}),
    ("/v1/completions", {"prompt": "Whale", "max_tokens": 25, "temperature": 0, "stream": True, "echo": True}),
]


TIMINGS = re.compile(r',"timings":\{[^{}]*\}')


def events(payload):
    """(id, data) of each event of a stream, in order, the final event's "timings" (which
    measure this run, not the stream) left out."""
    out = []
    for block in re.split(r"\n\n", payload.decode()):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["id"], TIMINGS.sub("", lines["data"])))
    return out


class TestResume(ServerCase):
    FLAGS = ["--workers", "2", "--checkpoint-every", "4"]

    def stream(self, path, body, last=None, headers=None, srv=None):
        h = dict(headers or {})
        if last is not None:
            h["Last-Event-ID"] = last
        st, _, payload = (srv or self.s).request("POST", path, body, headers=h)
        self.assertEqual(st, 200, payload[:300])
        return events(payload)

    def test_every_cut_point_joins_exactly(self):
        for path, body in BODIES:
            with self.subTest(path=path, body=body):
                full = self.stream(path, body)
                self.assertGreater(len(full), 5)
                ids = [i for i, _ in full]
                tag = ids[0].rsplit(".", 1)[0]
                self.assertEqual(ids, ["%s.%d" % (tag, n) for n in range(1, len(full) + 1)])
                self.assertEqual(full[-1][1], "[DONE]")
                for n in sorted({1, 2, 3, 5, 8, len(full) // 2, len(full) - 2, len(full) - 1}):
                    rest = self.stream(path, body, last="%s.%d" % (tag, n))
                    self.assertEqual(full[:n] + rest, full, "resumed after event %d" % n)
                self.assertEqual(self.stream(path, body, last="%s.%d" % (tag, len(full))), [])

    def test_a_cut_connection_resumes(self):
        path, body = BODIES[1]
        full = self.stream(path, body)
        for keep in (1, 4, 11):
            with socket.create_connection(("127.0.0.1", self.s.port), timeout=30) as c:
                data = json.dumps(body).encode()
                c.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(data) + data)
                got = b""
                while len(re.findall(rb"id: [0-9a-f]+\.\d+\n", got)) < keep:  # keep ids, then hang up
                    more = c.recv(1)
                    self.assertTrue(more)
                    got += more
            seen = re.findall(rb"id: ([0-9a-f]+\.\d+)\n", got)[:keep]
            last = seen[-1].decode()
            n = int(last.rsplit(".", 1)[1])
            rest = self.stream(path, body, last=last)
            self.assertEqual(full[:n] + rest, full)

    def test_session_streams_resume(self):
        sid = self.s.ok("/v1/sessions", {"text": "Call me Ishmael. Some years ago"})["id"]
        body = {"session": sid, "prompt": "", "max_tokens": 20, "seed": 5, "stream": True}
        full = self.stream("/v1/generate", body)
        tag = full[0][0].rsplit(".", 1)[0]
        rest = self.stream("/v1/generate", body, last="%s.7" % tag)
        self.assertEqual(full[:7] + rest, full)

    def test_foreign_ids_are_refused(self):
        path, body = BODIES[0]
        full = self.stream(path, body)
        last = full[3][0]
        other = dict(body, seed=3)
        for p, b, last_id in ((path, other, last), ("/v1/completions", body, last), (path, body, "nonsense"),
                              (path, body, last.rsplit(".", 1)[0] + ".-1"),
                              (path, dict(body, stream=False), last)):
            with self.subTest(body=b, last=last_id):
                st, obj, h = self.s.post(p, b, headers={"Last-Event-ID": last_id})
                self.assertError(st, obj, h, 400, "Last-Event-ID")

    def test_checkpoints_counted(self):
        before = self.s.metric("attnlm_stream_checkpoints_total", result="stored")
        resumed = self.s.metric("attnlm_streams_resumed_total")
        path, body = BODIES[0]
        full = self.stream(path, dict(body, seed=77))
        self.assertGreaterEqual(self.s.metric("attnlm_stream_checkpoints_total", result="stored") - before,
                                1 + 40 // 4)
        self.stream(path, dict(body, seed=77), last=full[10][0])
        self.assertEqual(self.s.metric("attnlm_streams_resumed_total"), resumed + 1)


class TestResumeKeysAndOff(ServerCase):
    FLAGS = None

    def test_another_key_cannot_resume(self):
        import os
        import tempfile
        fd, keys = tempfile.mkstemp()
        os.write(fd, b"alpha\nbeta\n")
        os.close(fd)
        self.addCleanup(os.unlink, keys)
        srv = self.start("--api-key-file", keys, model=OTHER)
        path, body = BODIES[0]
        st, _, payload = srv.request("POST", path, body, headers={"X-Api-Key": "alpha"})
        full = events(payload)
        st, obj, h = srv.post(path, body, headers={"X-Api-Key": "beta", "Last-Event-ID": full[2][0]})
        self.assertError(st, obj, h, 400, "Last-Event-ID")
        st, _, payload = srv.request("POST", path, body, headers={"X-Api-Key": "alpha",
                                                                 "Last-Event-ID": full[2][0]})
        self.assertEqual(full[:3] + events(payload), full)

    def test_no_checkpoints(self):
        srv = self.start("--checkpoint-every", "0", model=OTHER)
        path, body = BODIES[0]
        st, _, payload = srv.request("POST", path, body)
        first = events(payload)[0][0]
        st, obj, h = srv.post(path, body, headers={"Last-Event-ID": first})
        self.assertError(st, obj, h, 400, "Last-Event-ID")
