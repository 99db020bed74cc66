"""The prefix-state cache: answers are the same with it and without it (--prefix-cache 0),
for scoring, completions with echoed log-probabilities and generation; its metrics count
hits, misses and reused tokens per model; a zero limit turns it off."""
from servercase import MULTIHEAD, ServerCase

# Long enough for several 64-token chunks; the second text shares the first one's opening.
BASE = ("Call me Ishmael. Some years ago - never mind how long precisely - having little or no money "
        "in my purse, and nothing particular to interest me on shore, I thought I would sail about a "
        "little and see the watery part of the world. It is a way I have of driving off the spleen, "
        "and regulating the circulation. ")
MORE = "Whenever I find myself growing grim about the mouth; whenever it is a damp, drizzly November"


def without_ids(obj):
    """An answer without the fields that differ between any two requests."""
    if isinstance(obj, dict):
        return {k: without_ids(v) for k, v in obj.items() if k not in ("id", "created", "timings")}
    if isinstance(obj, list):
        return [without_ids(v) for v in obj]
    return obj


class TestPrefixCache(ServerCase):
    FLAGS = ["--workers", "2"]

    def setUp(self):
        self.plain = self.start("--workers", "2", "--prefix-cache", "0")

    def same(self, path, body):
        """The cached server's answer, checked equal to the uncached server's."""
        got = self.s.ok(path, body)
        self.assertEqual(without_ids(got), without_ids(self.plain.ok(path, body)), (path, body))
        return got

    def counters(self, model):
        return tuple(self.s.metric("attnlm_prefix_cache_%s_total" % k, model=model)
                     for k in ("hits", "misses", "reused_tokens"))

    def test_answers_match_uncached(self):
        name = self.s.json("GET", "/v1/model")[1]["name"]
        hits0, misses0, reused0 = self.counters(name)
        first = self.same("/v1/score", {"text": BASE, "top_k": 5})
        hits1, misses1, _ = self.counters(name)
        self.assertEqual(hits1, hits0, "a first input cannot hit")
        self.assertGreater(misses1, misses0)
        # the same opening again: from a cached state, the same numbers
        again = self.same("/v1/score", {"text": BASE + MORE, "top_k": 5})
        # a row's numbers do not depend on what follows it (to rounding: the products' blocking
        # may differ with the number of rows)
        for a, b in zip(again["tokens"], first["tokens"]):
            self.assertEqual(a["id"], b["id"])
            self.assertAlmostEqual(a["logprob"], b["logprob"], delta=1e-5)
        hits2, _, reused2 = self.counters(name)
        self.assertGreater(hits2, hits1)
        self.assertGreaterEqual(reused2 - reused0, 64 * (len(BASE) // 64))
        self.same("/v1/score", {"texts": [BASE + "and", BASE + MORE, "short"], "top_k": 0})
        self.same("/v1/completions", {"prompt": [BASE + "The", BASE + MORE], "max_tokens": 0, "echo": True,
                                      "logprobs": 1})
        self.same("/v1/completions", {"prompt": BASE + MORE, "max_tokens": 0, "echo": True, "logprobs": 3})
        self.same("/v1/completions", {"prompt": BASE + "Call", "max_tokens": 12, "temperature": 0,
                                      "logprobs": 2})
        self.same("/v1/generate", {"prompt": BASE + MORE, "max_tokens": 20, "seed": 3, "logprobs": 2,
                                   "attention": True})
        self.assertGreater(self.counters(name)[0], hits2)

    def test_other_model_and_zero_limit(self):
        _, plain_info, _ = self.plain.json("GET", "/v1/model")
        self.assertEqual(plain_info["limits"]["prefix_cache_bytes"], 0)
        _, info, _ = self.s.json("GET", "/v1/model")
        self.assertEqual(info["limits"]["prefix_cache_bytes"], 64 << 20)
        self.assertEqual(self.plain.metric("attnlm_prefix_cache_limit_bytes"), 0)
        for _ in range(2):
            self.plain.ok("/v1/score", {"text": BASE})
        self.assertEqual(self.plain.metric("attnlm_prefix_cache_hits_total"), 0)
        self.assertEqual(self.plain.metric("attnlm_prefix_cache_entries"), 0)
        # a state of one model is never another's: the multi-head fixture next to the default
        two = self.start("--workers", "1", "--prefix-cache", "8", "--model", MULTIHEAD)
        names = [m["id"] for m in two.json("GET", "/v1/models")[1]["data"]]
        self.assertEqual(len(names), 2)
        answers = [two.ok("/v1/score", {"text": BASE, "model": n, "top_k": 0}) for n in names]
        again = [two.ok("/v1/score", {"text": BASE, "model": n, "top_k": 0}) for n in names]
        self.assertEqual(without_ids(answers), without_ids(again))
        # the answers' timings say what the cache saved
        self.assertEqual([a["timings"]["cached_tokens"] for a in answers], [0, 0])
        self.assertEqual([a["timings"]["cached_tokens"] for a in again], [64 * (len(BASE) // 64)] * 2)
        self.assertNotEqual(answers[0]["tokens"], answers[1]["tokens"])
        for n in names:
            self.assertGreater(two.metric("attnlm_prefix_cache_hits_total", model=n), 0)
        self.assertEqual(two.metric("attnlm_prefix_cache_limit_bytes"), 8 << 20)
        self.assertGreater(two.metric("attnlm_prefix_cache_bytes"), 0)
        self.assertLessEqual(two.metric("attnlm_prefix_cache_bytes"), 8 << 20)
