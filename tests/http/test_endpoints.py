"""The read-only endpoints on the default model, one shared server: health, readiness and
models, /v1/model, request ids and the log line, /metrics, tokenize and detokenize, scoring
and attention maps, each checked field by field and against the engine (`attnlm`)."""
import hashlib
import math
import re
import unittest

from servercase import (DEFAULT, ENDPOINT_FLAGS, FIXTURES, ServerCase, cli_info, cli_score, parse_prom,
                        read_safetensors, wait_for)


class TestEndpoints(ServerCase):
    FLAGS = ENDPOINT_FLAGS

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
        _, tensors = read_safetensors(DEFAULT)
        self.assertEqual(info["parameters"], sum(len(values) for _, values in tensors.values()))
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
        self.assertTrue(m["id"].startswith("moby-"), m["id"])
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
        ok = wait_for(lambda: any(re.search(r"req=itest-req-42 POST /v1/score 200 \S+ms in=3 out=\d+ "
                                            r"trace=[0-9a-f]{32} model=\S", ln)
                                  for ln in self.s.lines), 5)
        self.assertTrue(ok, "request log line missing:\n" + self.s.stderr(20))

    # ---- metrics ----
    def test_metrics_format(self):
        text, headers = self.s.metrics_text()
        self.assertTrue(headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers["Content-Type"])
        samples = parse_prom(text)
        self.assertTrue(samples)
        types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
        # attnlm's own, OpenTelemetry's GenAI server histograms, and the process's memory
        own = ("attnlm_", "gen_ai_server_", "process_resident_memory_bytes")
        for name in types:
            self.assertTrue(name.startswith(own), name)
        for name, labels, value in samples:
            self.assertTrue(name.startswith(own), name)
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
                 [0xED, 0xA0, 0x80, 66], [104, 0xE2, 0x82, 0x41, 0xFF, 256], [256], []]
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

    # ---- attention ----
    def test_attention_band_dense(self):
        text = "Whenever I find myself growing grim about the mouth; whenever it is a damp, drizzly November"
        n = len(text.encode())
        srv = self.start("--workers", "1", model=FIXTURES + "/gru_dot_cont.safetensors")  # window 5
        band = srv.ok("/v1/attention", {"text": text})  # default band
        dense = srv.ok("/v1/attention", {"text": text, "format": "dense"})
        _, info, _ = srv.json("GET", "/v1/model")
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



if __name__ == "__main__":
    unittest.main(verbosity=2)
