"""The attention inspector: the page the server carries (its files, headers, conditional GETs,
--no-ui, the API key), the attention summary against the maps it summarises, and occlusion
attribution against scoring the occluded texts."""
import math
import re

from servercase import MULTIHEAD, TINY, ServerCase

PAGE_LIMIT = 300 * 1024  # every file of the page together


class TestPage(ServerCase):
    FLAGS = ["--workers", "1"]

    def get(self, path, headers=None, method="GET"):
        return self.s.request(method, path, headers=headers)

    def assets(self):
        """{path: (headers, body)} of the page and every file it loads, followed from index.html."""
        seen, to_fetch = {}, ["/"]
        while to_fetch:
            path = to_fetch.pop()
            if path in seen:
                continue
            status, headers, body = self.get(path)
            self.assertEqual(status, 200, path)
            seen[path] = (headers, body)
            text = body.decode("utf-8")
            if path == "/":
                refs = re.findall(r'(?:src|href)="([^"]+)"', text)
                to_fetch += ["/" + r for r in refs]
            elif path.endswith(".js"):
                to_fetch += ["/ui/" + m for m in re.findall(r'from "\./([^"]+)"', text)]
        return seen

    def test_page_and_files(self):
        files = self.assets()
        self.assertIn("/ui/app.js", files)
        self.assertIn("/ui/style.css", files)
        types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".svg": "image/svg+xml"}
        total = 0
        for path, (headers, body) in files.items():
            total += len(body)
            want = "text/html; charset=utf-8" if path == "/" else types[path[path.rindex("."):]]
            self.assertEqual(headers["Content-Type"], want, path)
            csp = headers["Content-Security-Policy"]
            for d in ("default-src 'self'", "script-src 'self'", "connect-src 'self'", "img-src 'self' data: blob:",
                      "frame-ancestors 'none'"):
                self.assertIn(d, csp, path)
            self.assertNotIn("unsafe-inline", csp)
            self.assertEqual(headers["X-Content-Type-Options"], "nosniff", path)
            self.assertEqual(headers["Cache-Control"], "no-cache", path)
            self.assertRegex(headers["ETag"], r'^"[0-9a-f]{32}"$', path)  # strong
            self.assertEqual(int(headers["Content-Length"]), len(body))
            # Nothing the page loads or calls is on another origin.
            # (an SVG names its XML namespace by a URL, which is never fetched)
            self.assertIsNone(re.search(rb"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/",
                                        body.replace(b'xmlns="http://www.w3.org/2000/svg"', b"")), path)
        self.assertLessEqual(total, PAGE_LIMIT)
        html = files["/"][1].decode()
        self.assertNotRegex(html, r"<script(?![^>]*\bsrc=)", "no inline script")
        self.assertNotIn("style=", html)
        # Distinct files have distinct ETags.
        self.assertEqual(len({h["ETag"] for h, _ in files.values()}), len(files))

    def test_conditional_get_head_and_methods(self):
        status, headers, body = self.get("/ui/app.js")
        etag = headers["ETag"]
        status, h2, body2 = self.get("/ui/app.js", {"If-None-Match": etag})
        self.assertEqual((status, body2), (304, b""))
        self.assertEqual(h2["ETag"], etag)
        self.assertEqual(self.get("/ui/app.js", {"If-None-Match": '"x", W/%s' % etag})[0], 304)
        self.assertEqual(self.get("/ui/app.js", {"If-None-Match": '"0123"'})[0], 200)
        self.assertEqual(self.get("/", {"If-None-Match": etag})[0], 200, "another file's ETag")
        status, h3, body3 = self.get("/", method="HEAD")
        self.assertEqual((status, body3), (200, b""))
        self.assertEqual(h3["ETag"], self.get("/")[1]["ETag"])
        status, obj, headers = self.s.post("/", {"text": "x"})
        self.assertError(status, obj, headers, 405)
        self.assertEqual(headers["Allow"], "GET, HEAD")
        status, obj, headers = self.s.json("GET", "/ui/nothing.js")
        self.assertError(status, obj, headers, 404)
        # The API's own 404s are unchanged.
        self.assertEqual(self.s.json("GET", "/v2/score")[0], 404)
        self.assertGreater(self.s.metric("attnlm_requests_total", route="other", status="200"), 0)

    def test_api_key_leaves_the_page_open(self):
        srv = self.start("--workers", "1", "--api-key", "k3y")
        for path in ("/", "/ui/app.js"):
            self.assertEqual(srv.request("GET", path)[0], 200, path)
        self.assertEqual(srv.json("GET", "/v1/model")[0], 401)
        self.assertEqual(srv.json("GET", "/v1/model", headers={"Authorization": "Bearer k3y"})[0], 200)

    def test_no_ui(self):
        for srv in (self.start("--workers", "1", "--no-ui"), self.start("--workers", "1", env={"ATTNLM_UI": "0"}),
                    self.start("--workers", "1", "--ui=off")):
            for path in ("/", "/ui/app.js"):
                status, obj, headers = srv.json("GET", path)
                self.assertError(status, obj, headers, 404)
            self.assertEqual(srv.json("GET", "/health")[0], 200)
        # The flag wins over the variable.
        srv = self.start("--workers", "1", "--ui", env={"ATTNLM_UI": "0"})
        self.assertEqual(srv.request("GET", "/")[0], 200)

    def test_bad_ui_setting_is_refused(self):
        import subprocess
        from servercase import SERVER
        out = subprocess.run([SERVER, "--model", TINY, "--port", "0"], env={"ATTNLM_UI": "maybe"},
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 2, out.stderr)
        self.assertIn("ATTNLM_UI", out.stderr)
        out = subprocess.run([SERVER, "--help"], capture_output=True, text=True, timeout=60)
        self.assertRegex(out.stdout, r"--ui\s+ATTNLM_UI\s+default 1")
        self.assertIn("--no-ui", out.stdout)


def entropy(row):
    return -sum(a * math.log(a) for a in row if a > 0)


class TestSummary(ServerCase):
    FLAGS = ["--workers", "1"]
    MODEL = MULTIHEAD

    def test_summary_matches_maps(self):
        text = "It is not down on any map; true places never are."
        band = self.s.ok("/v1/attention", {"text": text, "summary": True})
        only = self.s.ok("/v1/attention", {"text": text, "summary": True, "maps": False})
        self.assertNotIn("maps", only)
        self.assertNotIn("format", only)
        self.assertEqual(only["summary"], band["summary"])
        self.assertEqual(only["tokens"], band["tokens"])
        N, W, T = band["heads"], band["window"], len(band["tokens"])
        self.assertGreater(N, 1)
        self.assertLess(W, T)
        close = dict(delta=2e-5)
        heads = band["summary"]["heads"]
        self.assertEqual(len(heads), N)
        for h in range(N):
            s = heads[h]
            dist_sum, mean = [0.0] * min(W, T), {}
            for t in range(T):
                row = band["maps"][h][t]
                lo, n = max(0, t - W + 1), len(row)
                self.assertAlmostEqual(s["entropy"][t], entropy(row), **close)
                self.assertAlmostEqual(s["normalized_entropy"][t], entropy(row) / math.log(n) if n > 1 else 0, **close)
                self.assertAlmostEqual(s["lookback"][t], sum(a * (t - i) for i, a in enumerate(row, lo)), **close)
                self.assertAlmostEqual(s["self"][t], row[-1], **close)
                self.assertAlmostEqual(s["bos"][t], row[0] if lo == 0 else 0, **close)
                for d in range(n):
                    dist_sum[d] += row[n - 1 - d]
            for d, v in enumerate(s["by_distance"]):
                self.assertAlmostEqual(v, dist_sum[d] / (T - d), **close)
            self.assertEqual(len(s["by_distance"]), W)
            for k in ("entropy", "normalized_entropy", "lookback", "self", "bos"):
                self.assertAlmostEqual(s["mean"][k], sum(s[k]) / T, delta=1e-5)
        avg = band["summary"]["average"]
        for k in ("entropy", "normalized_entropy", "lookback", "self", "bos", "by_distance"):
            for i, v in enumerate(avg[k]):
                self.assertAlmostEqual(v, sum(heads[h][k][i] for h in range(N)) / N, **close)
        self.assertAlmostEqual(avg["by_distance"][0], avg["mean"]["self"], delta=1e-6)  # every row reaches 0

    def test_summary_errors(self):
        for body, param in (({"text": "a", "maps": False}, "maps"), ({"text": "a", "summary": 1}, "summary")):
            status, obj, headers = self.s.post("/v1/attention", body)
            self.assertError(status, obj, headers, 400, param)


class TestAttribution(ServerCase):
    FLAGS = ["--workers", "1", "--max-attention-tokens", "100"]
    MODEL = TINY

    def test_deltas_are_scores_of_occluded_texts(self):
        text = "The whale, the white whale!"
        obj = self.s.ok("/v1/attribution", {"text": text, "target": 20, "range": 12})
        ids = list(text.encode())  # position p holds ids[p - 1]
        target = obj["target"]
        self.assertEqual((target["position"], target["id"]), (20, ids[19]))
        ref = self.s.ok("/v1/score", {"text": text})["tokens"]
        self.assertAlmostEqual(target["logprob"], ref[19]["logprob"], delta=1e-4)
        self.assertEqual([p["position"] for p in obj["positions"]], list(range(8, 20)))
        for p in obj["positions"]:
            self.assertEqual(p["id"], ids[p["position"] - 1])
            changed = list(ids)
            changed[p["position"] - 1] = 32
            want = self.s.ok("/v1/score", {"ids": changed[:20]})["tokens"][19]["logprob"]
            self.assertAlmostEqual(p["logprob"], want, delta=1e-4)
            self.assertAlmostEqual(p["delta"], p["logprob"] - target["logprob"], delta=1e-5)
            if p["id"] == 32:
                self.assertEqual(p["delta"], 0)
        self.assertTrue(any(abs(p["delta"]) > 1e-3 for p in obj["positions"]), "occlusion changes something")
        self.assertEqual(obj["usage"]["input_tokens"], len(ids))
        spaces = sum(1 for p in obj["positions"] if p["id"] == 32)
        self.assertEqual(obj["usage"]["variants"], 12 - spaces + 1)
        self.assertEqual(obj["usage"]["forward_tokens"], obj["usage"]["variants"] * 20)

    def test_defaults_and_limits(self):
        obj = self.s.ok("/v1/attribution", {"text": "abcdefghijkl", "baseline": 0})
        W = self.s.ok("/v1/attention", {"text": "a"})["window"]
        self.assertEqual(obj["target"]["position"], 12)
        self.assertEqual(obj["range"], W)
        self.assertEqual([p["position"] for p in obj["positions"]], list(range(12 - W, 12)))
        self.assertEqual(obj["baseline"]["id"], 0)
        self.assertEqual(obj["baseline"]["text"], "\u0000")
        for body, status, param in (({"text": "abc", "target": 4}, 400, "target"),
                                    ({"text": "abc", "target": 0}, 400, "target"),
                                    ({"text": "abc", "range": 101}, 400, "range"),
                                    ({"text": "abc", "baseline": -1}, 400, "baseline"),
                                    ({"text": "x" * 101}, 413, "text"),
                                    ({"ids": [1] * 101}, 413, "ids"),
                                    ({"text": "abc", "model": "none"}, 404, "model")):
            st, o, headers = self.s.post("/v1/attribution", body)
            self.assertError(st, o, headers, status, param)
        status, obj, headers = self.s.json("GET", "/v1/attribution")
        self.assertError(status, obj, headers, 405)
        self.assertGreater(self.s.metric("attnlm_requests_total", route="/v1/attribution", status="200"), 0)
