"""Other architectures: a multi-head attention model in detail, every fixture's attention
weights and scores against the PyTorch implementation's values, and bf16 and int8 weights."""
import os
import unittest

from servercase import (FIXTURES, MULTIHEAD, Server, ServerCase, cli_greedy, cli_score, read_safetensors,
                        tok_bytes)


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


class TestPyTorchReference(ServerCase):
    """/v1/attention (dense) and /v1/score against the PyTorch implementation's values."""

    def test_fixtures(self):
        fixtures = sorted(f for f in os.listdir(FIXTURES) if f.endswith(".expected.safetensors"))
        self.assertTrue(fixtures)
        for ef in fixtures:
            model = os.path.join(FIXTURES, ef.replace(".expected", ""))
            with self.subTest(model=model):
                meta, t = read_safetensors(os.path.join(FIXTURES, ef))
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


class TestPrecision(ServerCase):
    """--precision (or ATTNLM_PRECISION): what /v1/model reports, and scores and greedy text
    equal to the command-line tool's at the same precision."""

    def test_bf16_and_int8(self):
        text = "hello world, ça va"
        for precision, how in (("bf16", ["--precision", "bf16"]), ("int8", [])):
            with self.subTest(precision=precision):
                env = {} if how else {"ATTNLM_PRECISION": precision}
                srv = self.start("--workers", "1", *how, model=MULTIHEAD, env=env)
                _, info, _ = srv.json("GET", "/v1/model")
                self.assertIn(precision, info["kernels"])
                obj = srv.ok("/v1/score", {"text": text})
                ref, _ = cli_score(MULTIHEAD, text, precision)
                full, _ = cli_score(MULTIHEAD, text)
                self.assertEqual(len(obj["tokens"]), len(ref))
                for t, (b, lp), (_, lp32) in zip(obj["tokens"], ref, full):
                    self.assertEqual(t["id"], b)
                    self.assertAlmostEqual(t["logprob"], lp, delta=2e-5)
                    self.assertAlmostEqual(t["logprob"], lp32, delta=0.5)
                self.assertNotEqual([lp for _, lp in ref], [lp for _, lp in full])
                out = srv.ok("/v1/generate", {"prompt": "abc", "max_tokens": 40, "temperature": 0})
                self.assertEqual(tok_bytes(out["tokens"]), cli_greedy(MULTIHEAD, "abc", 40, precision))


if __name__ == "__main__":
    unittest.main(verbosity=2)
