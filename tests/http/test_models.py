"""Other architectures and several models at once: a multi-head attention model in detail,
every fixture's attention weights and scores against the PyTorch implementation's values (all
fixtures served by one server, each chosen by name), what serving several models means for each
endpoint, and bf16 and int8 weights."""
import json
import os
import subprocess
import sys
import unittest

from servercase import (CLI, FIXTURES, MULTIHEAD, Server, ServerCase, cli_greedy, cli_score, read_safetensors,
                        tok_bytes, without_timings)


def cli_eval(model, path, precision):
    """attnlm eval's held-out loss (nats/byte) of the text file at path."""
    out = subprocess.run([CLI, "eval", "--model", model, "--text", path, "--precision", precision], check=True,
                         capture_output=True, text=True).stdout
    return float(out.split(": ", 1)[1].split()[0])


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


def fixture_models():
    """(name, model path, expected path) of every fixture with a PyTorch dump."""
    out = []
    for ef in sorted(f for f in os.listdir(FIXTURES) if f.endswith(".expected.safetensors")):
        model = os.path.join(FIXTURES, ef.replace(".expected", ""))
        meta, _ = read_safetensors(model)
        out.append((meta["name"], model, os.path.join(FIXTURES, ef)))
    return out


MAX_MODELS = 16  # models one server serves


class TestPyTorchReference(ServerCase):
    """/v1/attention (dense) and /v1/score (with attention gains) against the PyTorch
    implementation's values, the fixtures served 16 to a server and chosen by their names."""

    def test_fixtures(self):
        fixtures = fixture_models()
        self.assertGreaterEqual(len(fixtures), 24)
        for first in range(0, len(fixtures), MAX_MODELS):
            self.check_served(fixtures[first:first + MAX_MODELS])

    def check_served(self, fixtures):
        flags = ["--workers", "1"]
        for _, model, _ in fixtures:
            flags += ["--model", model]
        srv = self.start(*flags, model=None)
        listed = [m["id"] for m in srv.json("GET", "/v1/models")[1]["data"]]
        self.assertEqual(listed, [name for name, _, _ in fixtures])
        for name, model, expected in fixtures:
            with self.subTest(model=name):
                meta, t = read_safetensors(expected)
                text = meta["text"]
                (H, T, T2), attn = t["attention"]
                (T3, V), lps = t["logprobs"]
                _, own = t["logprobs_self"]
                self.assertEqual((T, T2, T3), (len(text.encode()) + 1,) * 3)
                att = srv.ok("/v1/attention", {"model": name, "text": text, "format": "dense"})
                sc = srv.ok("/v1/score", {"model": name, "text": text, "top_k": 1, "attention_gain": True})
                self.assertEqual(att["heads"], H)
                worst = 0.0
                for h in range(H):
                    for q in range(T):
                        for k in range(T):
                            worst = max(worst, abs(att["maps"][h][q][k] - attn[(h * T + q) * T + k]))
                self.assertLessEqual(worst, 1e-5, "attention differs from PyTorch by %g" % worst)
                ids = list(text.encode())
                worst = worst_gain = 0.0
                for i, tok in enumerate(sc["tokens"]):
                    worst = max(worst, abs(tok["logprob"] - lps[i * V + ids[i]]))
                    want_gain = lps[i * V + ids[i]] - own[i * V + ids[i]]
                    worst_gain = max(worst_gain, abs(tok["gain"] - want_gain))
                last = lps[(T - 1) * V:T * V]
                self.assertAlmostEqual(sc["next"][0]["logprob"], max(last), delta=1e-4)
                self.assertLessEqual(worst, 1e-4, "logprobs differ from PyTorch by %g" % worst)
                self.assertLessEqual(worst_gain, 2e-4, "attention gains differ from PyTorch by %g" % worst_gain)


class TestSeveralModels(ServerCase):
    """Three models in one server: each endpoint on each model answers what a server of that
    model alone answers."""
    NAMES = ["gru_dot", "lstm_multihead", "elman_cosine"]
    PATHS = [os.path.join(FIXTURES, n + ".safetensors") for n in NAMES]
    FLAGS = ["--workers", "2", "--model", PATHS[1], "--model", PATHS[2]]
    MODEL = PATHS[0]

    def test_each_model_as_if_alone(self):
        listed = [m["id"] for m in self.s.json("GET", "/v1/models")[1]["data"]]
        self.assertEqual(listed, ["fixture " + n for n in self.NAMES])
        reqs = [("/v1/score", {"text": "Whales and ships", "top_k": 3, "candidates": [" sail"]}),
                ("/v1/attention", {"text": "Whales and ships", "format": "band"}),
                ("/v1/generate", {"prompt": "Call", "max_tokens": 20, "temperature": 0.9, "seed": 4,
                                  "logprobs": 2, "attention": True}),
                ("/v1/completions", {"prompt": "Call", "max_tokens": 10, "seed": 4, "n": 2, "logprobs": 1})]
        for name, path in zip(listed, self.PATHS):
            alone = self.start("--workers", "1", model=path)
            for route, body in reqs:
                with self.subTest(model=name, route=route):
                    got = self.s.ok(route, dict(body, model=name))
                    want = alone.ok(route, body)
                    for k in ("id", "created", "timings"):
                        got.pop(k, None)
                        want.pop(k, None)
                    self.assertEqual(got, want)
            info = self.s.json("GET", "/v1/model?model=" + name.replace(" ", "%20"))[1]
            self.assertEqual((info["id"], info["file"]), (name, path))
            self.assertEqual(self.s.json("GET", "/v1/models/" + name.replace(" ", "%20"))[1]["id"], name)

    def test_first_model_by_default_and_unknown_names(self):
        first = without_timings(self.s.ok("/v1/score", {"text": "abc"}))
        self.assertEqual(without_timings(self.s.ok("/v1/score", {"text": "abc", "model": "fixture gru_dot"})), first)
        for route, body in (("/v1/score", {"text": "a"}), ("/v1/generate", {}), ("/v1/attention", {"text": "a"}),
                            ("/v1/completions", {"prompt": "a"}), ("/v1/tokenize", {"text": "a"}),
                            ("/v1/detokenize", {"ids": [97]})):
            status, obj, headers = self.s.post(route, dict(body, model="fixture nope"))
            self.assertError(status, obj, headers, 404, "model", "not_found_error")
        status, obj, headers = self.s.json("GET", "/v1/model?model=nope")
        self.assertError(status, obj, headers, 404, "model", "not_found_error")

    def test_metrics_by_model(self):
        before = self.s.metric("attnlm_input_tokens_total", model="fixture elman_cosine")
        self.s.ok("/v1/score", {"text": "12345", "model": "fixture elman_cosine"})
        self.assertEqual(self.s.metric("attnlm_input_tokens_total", model="fixture elman_cosine"), before + 5)
        text, _ = self.s.metrics_text()
        for n in self.NAMES:
            self.assertIn('attnlm_model_parameters{model="fixture %s"}' % n, text)
            self.assertIn('attnlm_model_reloads_total{model="fixture %s",result="ok"} 0' % n, text)

    def test_models_from_the_environment_and_one_name_twice(self):
        env = {"ATTNLM_MODEL": ",".join(self.PATHS[:2])}
        srv = self.start(model=None, env=env)
        self.assertEqual(len(srv.json("GET", "/v1/models")[1]["data"]), 2)
        p = subprocess.run([srv.cmd[0], "--port", "0", "--model", self.PATHS[0], "--model", self.PATHS[0]],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 1)
        self.assertIn('both named "fixture gru_dot"', p.stderr)


class TestShippedModels(ServerCase):
    """The models in models/: one per mechanism and the default, served together as make run-all does."""
    FLAGS = None

    def test_run_all(self):
        files = ["models/default.safetensors"] + ["models/gru-%s.safetensors" % m
                                                  for m in ("additive", "dot", "cosine", "multihead")]
        flags = ["--workers", "1"]
        for f in files[1:]:
            flags += ["--model", f]
        srv = self.start(*flags, model=files[0])
        listed = [m["id"] for m in srv.json("GET", "/v1/models")[1]["data"]]
        self.assertEqual(len(listed), len(files))
        self.assertEqual(len(set(listed)), len(files), "names are distinct")
        text = "It was the whale, the white whale."
        for f, name in zip(files, listed):
            _, info, _ = srv.json("GET", "/v1/model?model=" + name)
            self.assertEqual(info["file"], f)
            if "gru-" in f:
                self.assertEqual(info["attention"], f.rsplit("-", 1)[1].split(".")[0])
            self.assertLessEqual(os.path.getsize(f), 8.5e6, f)
            self.assertLessEqual(float(info["val_loss"]), 1.45, f)
            obj = srv.ok("/v1/score", {"text": text, "model": name, "top_k": 0})
            ref, _ = cli_score(f, text)
            for t, (b, lp) in zip(obj["tokens"], ref):
                self.assertEqual(t["id"], b)
                self.assertAlmostEqual(t["logprob"], lp, delta=2e-5)
        _, first, _ = srv.json("GET", "/v1/model")
        self.assertEqual(first["name"], listed[0], "the default model is the first")

    def test_default_copies_from_its_window(self):
        """The default model predicts a random string's second copy from its first, near and far
        (and cannot know the first): the copy probe of docs/ATTENTION.md, on two fixed strings."""
        srv = self.start("--workers", "1", model="models/default.safetensors")
        passage = ("It was the whale, the white whale, that they had come for, and every man aboard knew "
                   "it as well as he knew his own name; yet none would say it aloud, not even the mate. ")
        for word, gap, bound in (("qzvkwjdplxmfrtbhyngcsoea", passage[:40], 1.0),
                                 ("mbtqrxlwzkjpvhfdsgycnoua", passage * 2, 1.5)):
            text = "And so " + word + " " + gap + word + " was written in the log."
            obj = srv.ok("/v1/score", {"text": text, "top_k": 0, "attention_gain": True})
            lps = [t["logprob"] for t in obj["tokens"]]
            gains = [t["gain"] for t in obj["tokens"]]
            first = text.index(word)
            second = text.index(word, first + len(word))
            loss = lambda at: -sum(lps[at:at + len(word)]) / len(word)  # noqa: E731
            with self.subTest(distance=second - first - len(word)):
                self.assertGreater(loss(first), 3.0, "the first copy cannot be predicted")
                self.assertLessEqual(loss(second), bound, "the second copy is predicted from the first")
                self.assertGreater(sum(gains[second:second + len(word)]) / len(word), 1.0,
                                   "the attention is what predicts it")

    def test_reduced_precision_loss(self):
        """Every shipped model's loss on a held-out passage at bf16 and int8 stays within a hair of f32's."""
        files = ["models/default.safetensors"] + ["models/gru-%s.safetensors" % m
                                                  for m in ("additive", "dot", "cosine", "multihead")]
        for f in files:
            loss = {p: cli_eval(f, "bench/text_1000.txt", p) for p in ("f32", "bf16", "int8")}
            with self.subTest(model=f, loss=loss):
                self.assertLess(loss["f32"], 1.6)
                self.assertLessEqual(abs(loss["bf16"] - loss["f32"]), 0.005)
                self.assertLessEqual(abs(loss["int8"] - loss["f32"]), 0.01)


class TestBf16Conversion(ServerCase):
    """tools/to_bf16.py, which makes the container image's BF16 copies of the mechanism models."""
    FLAGS = None

    def test_rounding_and_serving(self):
        import struct
        import tempfile
        src = "tests/fixtures/wide_gru_multihead.safetensors"
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "m.safetensors")
            subprocess.run([sys.executable, "tools/to_bf16.py", src, out], check=True)
            with open(out, "rb") as f:
                data = f.read()
            n = struct.unpack("<Q", data[:8])[0]
            header = json.loads(data[8:8 + n])
            meta, tensors = read_safetensors(src)
            self.assertEqual(header.pop("__metadata__"), meta)
            self.assertEqual(set(header), set(tensors))
            for name, (shape, values) in tensors.items():
                e = header[name]
                self.assertEqual((e["dtype"], e["shape"]), ("BF16", shape))
                a, b = e["data_offsets"]
                got = struct.unpack("<%dH" % len(values), data[8 + n + a:8 + n + b])
                for x, g in zip(values, got):
                    u = struct.unpack("<I", struct.pack("<f", x))[0]
                    lower, rest = u >> 16, u & 0xFFFF
                    want = lower + (rest > 0x8000 or (rest == 0x8000 and lower & 1))
                    self.assertEqual(g, want, (name, x))
            # the engine reads it, and scores near the F32 file
            text = "It was the whale."
            near, _ = cli_score(src, text)
            lps, _ = cli_score(out, text)
            for (b1, l1), (b2, l2) in zip(near, lps):
                self.assertEqual(b1, b2)
                self.assertAlmostEqual(l1, l2, delta=0.05)
            self.assertNotEqual(near, lps, "the weights were rounded")


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
