"""What web backends expect of a completions server, on the default model: presence, frequency
and repetition penalties and logit_bias on both generation routes (the numbers reported stay the
model's own), top_k on /v1/completions, arrays of inputs (/v1/score texts and id lists,
/v1/completions prompt arrays) equal to single calls, --max-inputs, and the fields each route
takes (any other refused, naming it)."""
import json
import unittest

from servercase import ServerCase, sse_events

PROMPT = "Call me Ishmael. "


def repeats(ids):
    """How many tokens of ids had already appeared before them."""
    seen, n = set(), 0
    for i in ids:
        n += i in seen
        seen.add(i)
    return n


class TestWebApi(ServerCase):
    FLAGS = ["--workers", "2", "--max-inputs", "4", "--max-input-tokens", "300", "--max-new-tokens", "500"]

    def greedy(self, path, **extra):
        body = dict({"prompt": PROMPT, "max_tokens": 200, "temperature": 0}, **extra)
        if path == "/v1/generate":
            out = self.s.ok(path, body)
            return [t["id"] for t in out["tokens"]], out
        out = self.s.ok(path, body)
        return list(out["choices"][0]["text"].encode()), out

    # ---- penalties ----
    def test_frequency_penalty_reduces_repeats(self):
        for path in ("/v1/generate", "/v1/completions"):
            with self.subTest(path=path):
                plain, _ = self.greedy(path)
                pen, _ = self.greedy(path, frequency_penalty=2)
                self.assertEqual(len(plain), 200)
                self.assertLess(repeats(pen), repeats(plain) - 10, (bytes(plain), bytes(pen)))

    def test_each_penalty_changes_greedy(self):
        plain, _ = self.greedy("/v1/generate")
        for extra in ({"presence_penalty": 1.5}, {"repetition_penalty": 1.3}, {"frequency_penalty": 0.5},
                      {"repetition_penalty": 1.3, "penalty_last_n": -1}):
            with self.subTest(**extra):
                ids, _ = self.greedy("/v1/generate", **extra)
                self.assertNotEqual(ids, plain)
                self.assertEqual(self.greedy("/v1/completions", **extra)[0], ids, "the same on both routes")
        # A negative penalty favours what was generated: greedy text repeats no less (a model
        # whose greedy text already loops keeps it as it is).
        ids, _ = self.greedy("/v1/generate", presence_penalty=-2)
        self.assertGreaterEqual(repeats(ids), repeats(plain))
        self.assertLessEqual(len(set(ids)), len(set(plain)))
        self.assertEqual(self.greedy("/v1/completions", presence_penalty=-2)[0], ids, "the same on both routes")
        # penalty_last_n 0: the repetition penalty has nothing to act on; 1 = off
        self.assertEqual(self.greedy("/v1/generate", repetition_penalty=1.3, penalty_last_n=0)[0], plain)
        self.assertEqual(self.greedy("/v1/generate", repetition_penalty=1, presence_penalty=0,
                                     frequency_penalty=0)[0], plain)
        # the window counts the prompt: with a window of the prompt alone, penalizing its bytes
        # changes the very first token when that byte is in the prompt
        self.assertNotEqual(self.greedy("/v1/generate", repetition_penalty=3, penalty_last_n=len(PROMPT),
                                        max_tokens=1)[0][:1], plain[:1])

    def test_logprobs_stay_the_model(self):
        # penalized, biased and sampled: every reported log-probability is what /v1/score gives
        out = self.s.ok("/v1/generate", {"prompt": PROMPT, "max_tokens": 60, "temperature": 0.8, "seed": 11,
                                         "frequency_penalty": 1, "repetition_penalty": 1.2,
                                         "logit_bias": {"101": -100, "32": 3}, "logprobs": 2})
        ids = [t["id"] for t in out["tokens"]]
        self.assertNotIn(101, ids)
        sc = self.s.ok("/v1/score", {"ids": list(PROMPT.encode()) + ids, "top_k": 2})
        for t, s in zip(out["tokens"], sc["tokens"][len(PROMPT):]):
            self.assertEqual(t["id"], s["id"])
            self.assertAlmostEqual(t["logprob"], s["logprob"], delta=1e-4)
            self.assertEqual([a["id"] for a in t["top"]], [a["id"] for a in s["top"]])

    # ---- logit_bias ----
    def test_logit_bias_bans_greedy_byte(self):
        for path in ("/v1/generate", "/v1/completions"):
            with self.subTest(path=path):
                plain, _ = self.greedy(path, max_tokens=40)
                banned, _ = self.greedy(path, max_tokens=40, logit_bias={str(plain[0]): -100})
                self.assertNotEqual(banned[0], plain[0])
                self.assertNotIn(plain[0], banned)
                # a bias that is not a ban only shifts: +100 on a byte makes it the greedy choice
                forced, _ = self.greedy(path, max_tokens=5, logit_bias={"122": 100})
                self.assertEqual(bytes(forced), b"zzzzz")
        # sampled, at a high temperature, a banned byte never appears (and without the ban it does)
        req = {"prompt": PROMPT, "max_tokens": 300, "temperature": 1.5, "seed": 5}
        ids = [t["id"] for t in self.s.ok("/v1/generate", dict(req, logit_bias={"32": -100, "101": -100}))["tokens"]]
        self.assertEqual(len(ids), 300)
        self.assertFalse({32, 101} & set(ids), bytes(ids))
        ids = [t["id"] for t in self.s.ok("/v1/generate", req)["tokens"]]
        self.assertTrue({32, 101} <= set(ids))

    def test_logit_bias_banning_every_byte(self):
        # the bans cancel out, as the same -100 added to every logit would: the text is unbiased
        every = {str(t): -100 for t in range(257)}
        for body in ({"prompt": PROMPT, "max_tokens": 30, "seed": 3},
                     {"prompt": PROMPT, "max_tokens": 30, "temperature": 0}):
            with self.subTest(body=body):
                a = self.s.ok("/v1/generate", body)
                b = self.s.ok("/v1/generate", dict(body, logit_bias=every))
                self.assertEqual([t["id"] for t in a["tokens"]], [t["id"] for t in b["tokens"]])

    def test_logit_bias_errors(self):
        for lb in ({"300": 1}, {"50256": -100}, {"-1": 1}, {"a": 1}, {"1.0": 1}, {"": 1}, {"5": 101},
                   {"5": -100.5}, {"5": "1"}, {"5": True}, {"5": 1, "005": 1}, [[5, 1]], "5"):
            with self.subTest(logit_bias=lb):
                for path in ("/v1/generate", "/v1/completions"):
                    status, obj, headers = self.s.post(path, {"prompt": "x", "logit_bias": lb})
                    self.assertError(status, obj, headers, 400, "logit_bias", "invalid_request_error")
                    if isinstance(lb, dict):
                        self.assertIn(json.dumps(next(iter(lb)))[1:-1] if len(lb) == 1 else "twice",
                                      obj["error"]["message"])

    def test_penalty_errors(self):
        cases = [({"presence_penalty": 2.1}, "presence_penalty"), ({"presence_penalty": "1"}, "presence_penalty"),
                 ({"frequency_penalty": -3}, "frequency_penalty"), ({"repetition_penalty": 0}, "repetition_penalty"),
                 ({"repetition_penalty": -1}, "repetition_penalty"),
                 ({"repetition_penalty": 101}, "repetition_penalty"), ({"penalty_last_n": -2}, "penalty_last_n"),
                 ({"penalty_last_n": 0.5}, "penalty_last_n"), ({"top_k": -2}, "top_k"), ({"top_k": 258}, "top_k")]
        for body, param in cases:
            for path in ("/v1/generate", "/v1/completions"):
                with self.subTest(path=path, body=body):
                    status, obj, headers = self.s.post(path, dict(body, prompt="x"))
                    self.assertError(status, obj, headers, 400, param, "invalid_request_error")

    def test_top_k_on_completions(self):
        # top_k 1 is greedy at any temperature, on both routes, and -1 is off like 0
        req = {"prompt": PROMPT, "max_tokens": 30, "temperature": 1.5, "seed": 2}
        greedy = self.s.ok("/v1/completions", dict(req, temperature=0))["choices"][0]["text"]
        self.assertEqual(self.s.ok("/v1/completions", dict(req, top_k=1))["choices"][0]["text"], greedy)
        self.assertEqual(self.s.ok("/v1/generate", dict(req, top_k=1))["text"], greedy)
        sampled = self.s.ok("/v1/completions", req)["choices"][0]["text"]
        self.assertNotEqual(sampled, greedy)
        self.assertEqual(self.s.ok("/v1/completions", dict(req, top_k=-1))["choices"][0]["text"], sampled)
        self.assertEqual(self.s.ok("/v1/generate", dict(req, top_k=0))["text"], sampled, "same sampling on both routes")

    # ---- arrays of inputs ----
    def assertScoreClose(self, a, b):
        self.assertEqual(set(a) - {"timings"}, set(b) - {"timings"})
        self.assertEqual([t["id"] for t in a["tokens"]], [t["id"] for t in b["tokens"]])
        for x, y in zip(a["tokens"], b["tokens"]):
            self.assertAlmostEqual(x["logprob"], y["logprob"], delta=1e-5)
            self.assertEqual([t["id"] for t in x["top"]], [t["id"] for t in y["top"]])
        self.assertEqual([t["id"] for t in a["next"]], [t["id"] for t in b["next"]])
        self.assertAlmostEqual(a["logprob"], b["logprob"], delta=1e-4)
        self.assertEqual(a["usage"], b["usage"])
        for x, y in zip(a.get("candidates", []), b.get("candidates", [])):
            self.assertEqual(x["text"], y["text"])
            self.assertAlmostEqual(x["logprob"], y["logprob"], delta=1e-4)

    def test_score_texts_equal_single_calls(self):
        texts = ["Call me Ishmael.", "The whale", "x", "It is not down on any map; true places never are."]
        common = {"top_k": 3, "candidates": [" Some", "!"]}
        out = self.s.ok("/v1/score", dict(common, texts=texts))
        self.assertEqual(set(out), {"results", "usage", "timings"})
        self.assertEqual(len(out["results"]), 4)
        for t, r in zip(texts, out["results"]):
            self.assertScoreClose(r, self.s.ok("/v1/score", dict(common, text=t)))
        self.assertEqual(out["usage"], {"input_tokens": sum(len(t) for t in texts)})
        # the same inputs as id lists (one with byte 0) answer alike
        ids = [list(t.encode()) for t in texts[:3]] + [[0, 10, 255]]
        by_ids = self.s.ok("/v1/score", dict(common, ids=ids))
        for a, b in zip(out["results"][:3], by_ids["results"]):
            self.assertScoreClose(a, b)
        self.assertScoreClose(by_ids["results"][3], self.s.ok("/v1/score", dict(common, ids=[0, 10, 255])))

    def test_array_limits(self):
        # --max-inputs 4, --max-input-tokens 300 shared by the inputs
        self.assertEqual(self.s.json("GET", "/v1/model")[1]["limits"]["max_inputs"], 4)
        for path, body, param in (
                ("/v1/score", {"texts": ["a"] * 5}, "texts"),
                ("/v1/score", {"ids": [[97]] * 5}, "ids"),
                ("/v1/score", {"texts": ["a" * 150, "b" * 151]}, "texts"),
                ("/v1/completions", {"prompt": ["a"] * 5, "max_tokens": 1}, "prompt"),
                ("/v1/completions", {"prompt": [[97] * 200, "b" * 101], "max_tokens": 1}, "prompt")):
            with self.subTest(path=path, param=param):
                status, obj, headers = self.s.post(path, body)
                self.assertError(status, obj, headers, 413, param, "request_too_large")
        self.assertEqual(len(self.s.ok("/v1/score", {"texts": ["a" * 150, "b" * 150], "top_k": 0})["results"]), 2)
        for path, body, param in (
                ("/v1/score", {"texts": []}, "texts"), ("/v1/score", {"texts": ["a", ""]}, "texts"),
                ("/v1/score", {"texts": ["a", 1]}, "texts"), ("/v1/score", {"texts": "a"}, "texts"),
                ("/v1/score", {"texts": ["a"], "text": "b"}, "texts"), ("/v1/score", {"ids": [[97], 98]}, "ids"),
                ("/v1/score", {"ids": [[97], [300]]}, "ids"), ("/v1/completions", {"prompt": []}, "prompt"),
                ("/v1/completions", {"prompt": ["a", None]}, "prompt"),
                ("/v1/completions", {"prompt": [[97], [257]]}, "prompt"),
                ("/v1/generate", {"prompt": ["a", "b"]}, "prompt")):
            with self.subTest(path=path, body=body):
                status, obj, headers = self.s.post(path, body)
                self.assertError(status, obj, headers, 400, param, "invalid_request_error")

    def test_completions_prompt_array_equals_single_calls(self):
        prompts = ["Call me Ishmael.", "The whale", [84, 104, 101, 32, 115, 101, 97]]
        req = {"max_tokens": 24, "n": 2, "seed": 42, "temperature": 0.9}
        out = self.s.ok("/v1/completions", dict(req, prompt=prompts))
        self.assertEqual([c["index"] for c in out["choices"]], list(range(6)))
        prompt_tokens = 0
        for p, prompt in enumerate(prompts):
            alone = self.s.ok("/v1/completions", dict(req, prompt=prompt))
            prompt_tokens += alone["usage"]["prompt_tokens"]
            for j in range(2):
                self.assertEqual(out["choices"][p * 2 + j]["text"], alone["choices"][j]["text"], (p, j))
        self.assertEqual(out["usage"], {"prompt_tokens": prompt_tokens, "completion_tokens": 6 * 24,
                                        "total_tokens": prompt_tokens + 6 * 24})
        # a single prompt of token ids is the same as its text
        a = self.s.ok("/v1/completions", dict(req, prompt="The sea"))
        b = self.s.ok("/v1/completions", dict(req, prompt=list(b"The sea")))
        self.assertEqual([c["text"] for c in a["choices"]], [c["text"] for c in b["choices"]])
        # streamed, with echo: each choice's chunks carry its index and add up to its text
        status, headers, payload = self.s.request("POST", "/v1/completions", dict(req, prompt=prompts, echo=True,
                                                                                  stream=True))
        self.assertEqual(status, 200)
        texts = {}
        for e in sse_events(payload)[:-1]:
            for c in e["choices"]:
                texts[c["index"]] = texts.get(c["index"], "") + c["text"]
        for k in range(6):
            p = prompts[k // 2]
            echoed = p if isinstance(p, str) else bytes(p).decode()
            self.assertEqual(texts[k], echoed + out["choices"][k]["text"])


class TestFields(ServerCase):
    FLAGS = ["--workers", "1"]

    def test_unknown_fields_refused(self):
        cases = [("/v1/score", "temperature"), ("/v1/score", "user"), ("/v1/score", "stream"),
                 ("/v1/attention", "top_k"), ("/v1/tokenize", "ids"), ("/v1/detokenize", "text"),
                 ("/v1/generate", "n"), ("/v1/generate", "echo"), ("/v1/generate", "user"),
                 ("/v1/generate", "min_p"), ("/v1/generate", "stream_options"),
                 ("/v1/completions", "attention"), ("/v1/completions", "min_p"), ("/v1/completions", "texts"),
                 ("/v1/completions", "Temperature")]
        for path, field in cases:
            with self.subTest(path=path, field=field):
                body = {"text": "x"} if path in ("/v1/score", "/v1/attention", "/v1/tokenize") else {}
                if path == "/v1/detokenize":
                    body = {"ids": [65]}
                status, obj, headers = self.s.post(path, dict(body, **{field: 1}))
                self.assertError(status, obj, headers, 400, field, "invalid_request_error")
                self.assertIn(path, obj["error"]["message"])

    def test_openai_defaults_accepted(self):
        # what OpenAI-style clients send by default, where it changes nothing
        req = {"prompt": PROMPT, "max_tokens": 20, "seed": 9, "n": 2}
        plain = self.s.ok("/v1/completions", req)
        full = self.s.ok("/v1/completions", dict(req, model=self.s.json("GET", "/v1/models")[1]["data"][0]["id"],
                                                 user="user-1", best_of=2, suffix="", logit_bias={},
                                                 presence_penalty=0, frequency_penalty=0, logprobs=None, echo=False,
                                                 stop=None, stream=False, top_p=1, temperature=1))
        self.assertEqual([c["text"] for c in full["choices"]], [c["text"] for c in plain["choices"]])
        for body, param in (({"best_of": 3}, "best_of"), ({"suffix": "the end"}, "suffix"), ({"user": 5}, "user")):
            with self.subTest(body=body):
                status, obj, headers = self.s.post("/v1/completions", dict(req, **body))
                self.assertError(status, obj, headers, 400, param, "invalid_request_error")


class TestMaxInputsFromEnvironment(ServerCase):
    def test_env(self):
        s = self.start("--workers", "1", env={"ATTNLM_MAX_INPUTS": "2"})
        self.assertEqual(s.json("GET", "/v1/model")[1]["limits"]["max_inputs"], 2)
        status, obj, headers = s.post("/v1/score", {"texts": ["a", "b", "c"]})
        self.assertError(status, obj, headers, 413, "texts", "request_too_large")
        self.assertEqual(len(s.ok("/v1/score", {"texts": ["a", "b"]})["results"]), 2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
