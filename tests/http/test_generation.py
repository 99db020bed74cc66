"""Generation on the default model: /v1/generate plain and streamed, stop strings, sampling
settings, per-token attention, the OpenAI /v1/completions route, and concurrent requests
that must get the answers they get alone."""
import threading
import unittest

from servercase import (DEFAULT, ENDPOINT_FLAGS, ServerCase, cli_greedy, sse_events, tok_bytes,
                        without_timings)


class TestGeneration(ServerCase):
    FLAGS = ENDPOINT_FLAGS

    # ---- generate ----
    def test_generate_seeded_reproducible(self):
        req = {"prompt": "The sea", "max_tokens": 40, "temperature": 0.9, "top_k": 40, "top_p": 0.95,
               "seed": 1234}
        a = self.s.ok("/v1/generate", req)
        b = self.s.ok("/v1/generate", req)
        self.assertEqual(without_timings(a), without_timings(b))
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
            self.assertEqual([a["id"] for a in e["token"].get("top", [])], [a["id"] for a in t.get("top", [])])
            e["text"].encode("utf-8")  # no lone surrogates
        joined = "".join(e["text"] for e in toks) + fin.get("text", "")
        self.assertEqual(joined, plain["text"])
        self.assertEqual(plain["text"], tok_bytes(plain["tokens"]).decode("utf-8", "replace"))
        return toks, plain

    def test_stream_equals_plain(self):
        toks, _ = self.check_stream({"prompt": "The sea", "max_tokens": 50, "temperature": 0.8, "seed": 11,
                                     "logprobs": 2})
        self.assertEqual(len(toks), 50)
        self.assertTrue(all(len(e["token"]["top"]) == 2 for e in toks))

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


    # ---- completions ----
    def test_completions_shape(self):
        name = self.s.json("GET", "/v1/models")[1]["data"][0]["id"]
        out = self.s.ok("/v1/completions", {"model": name, "prompt": "Call me", "max_tokens": 10,
                                            "seed": 5, "temperature": 0.7})
        self.assertEqual(out["object"], "text_completion")
        self.assertIsInstance(out["id"], str)
        self.assertIsInstance(out["created"], int)
        self.assertEqual(out["model"], name)
        self.assertEqual(len(out["choices"]), 1)
        ch = out["choices"][0]
        self.assertEqual(ch["index"], 0)
        self.assertEqual(ch["finish_reason"], "length")
        self.assertIsInstance(ch["text"], str)
        self.assertEqual(out["usage"], {"prompt_tokens": 7, "completion_tokens": 10, "total_tokens": 17})
        again = self.s.ok("/v1/completions", {"model": name, "prompt": "Call me", "max_tokens": 10,
                                              "seed": 5, "temperature": 0.7})
        self.assertEqual(again["choices"][0]["text"], ch["text"], "seeded")
        d = self.s.ok("/v1/completions", {"prompt": "Call me", "seed": 5})
        self.assertEqual(d["usage"]["completion_tokens"], 16, "max_tokens defaults to 16")
        status, err, _ = self.s.json("POST", "/v1/completions", {"model": "whatever", "prompt": "x"})
        self.assertEqual((status, err["error"]["param"], err["error"]["type"]), (404, "model", "not_found_error"))

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


class TestConcurrencyTwoWorkers(TestConcurrency):
    """The same with two workers, each decoding its share of the requests in batches."""
    FLAGS = ["--workers", "2", "--max-batch", "32"]


if __name__ == "__main__":
    unittest.main(verbosity=2)
