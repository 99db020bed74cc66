"""Refusals: every malformed request with its status, error type and offending field
(400, 404, 405, 413, 415), and the API key (401) with the routes that stay open."""
import json
import unittest

from servercase import ENDPOINT_FLAGS, JSON_CT, TINY, ServerCase


class TestErrors(ServerCase):
    FLAGS = ENDPOINT_FLAGS

    def test_errors_400(self):
        cases = [
            ("/v1/score", {"text": "x", "top_k": "x"}, "top_k"),
            ("/v1/score", {"text": "x", "top_k": 258}, "top_k"),
            ("/v1/score", {"text": "x", "top_k": -1}, "top_k"),
            ("/v1/score", {"text": "x", "top_k": 1.5}, "top_k"),
            ("/v1/score", {"text": ""}, "text"),
            ("/v1/score", {"text": 5}, "text"),
            ("/v1/score", {"ids": []}, "ids"),
            ("/v1/score", {"ids": [300]}, "ids"),
            ("/v1/score", {"ids": [65, -1]}, "ids"),
            ("/v1/score", {"ids": "abc"}, "ids"),
            ("/v1/score", {"ids": [65, "a"]}, "ids"),
            ("/v1/score", {"text": "x", "candidates": "y"}, "candidates"),
            ("/v1/score", {"text": "x", "candidates": [""]}, "candidates"),
            ("/v1/score", {"text": "x", "candidates": [1]}, "candidates"),
            ("/v1/score", {"text": "x", "candidates": ["a"] * 33}, "candidates"),
            ("/v1/generate", {"prompt": "x", "temperature": -1}, "temperature"),
            ("/v1/generate", {"prompt": "x", "temperature": "hot"}, "temperature"),
            ("/v1/generate", {"prompt": "x", "max_tokens": 501}, "max_tokens"),
            ("/v1/generate", {"prompt": "x", "max_tokens": -1}, "max_tokens"),
            ("/v1/generate", {"prompt": "x", "max_tokens": "3"}, "max_tokens"),
            ("/v1/generate", {"prompt": "x", "top_p": -0.1}, "top_p"),
            ("/v1/generate", {"prompt": "x", "top_p": 1.5}, "top_p"),
            ("/v1/generate", {"prompt": "x", "top_k": 258}, "top_k"),
            ("/v1/generate", {"prompt": "x", "seed": "x"}, "seed"),
            ("/v1/generate", {"prompt": "x", "seed": 1.5}, "seed"),
            ("/v1/generate", {"prompt": "x", "stop": [""]}, "stop"),
            ("/v1/generate", {"prompt": "x", "stop": 5}, "stop"),
            ("/v1/generate", {"prompt": "x", "stop": ["a"] * 17}, "stop"),
            ("/v1/generate", {"prompt": "x", "logprobs": 258}, "logprobs"),
            ("/v1/generate", {"prompt": "x", "logprobs": -1}, "logprobs"),
            ("/v1/generate", {"prompt": 5}, "prompt"),
            ("/v1/generate", {"prompt": "x", "stream": "yes"}, "stream"),
            ("/v1/generate", {"prompt": "x", "attention": 1}, "attention"),
            ("/v1/attention", {"text": "x", "format": "sparse"}, "format"),
            ("/v1/attention", {"text": ""}, "text"),
            ("/v1/attention", {"ids": [257]}, "ids"),
            ("/v1/tokenize", {"text": 5}, "text"),
            ("/v1/detokenize", {"ids": [257]}, "ids"),
            ("/v1/detokenize", {"ids": "x"}, "ids"),
            ("/v1/completions", {"prompt": "x", "n": 0}, "n"),
            ("/v1/completions", {"prompt": "x", "n": 17}, "n"),
            ("/v1/completions", {"prompt": "x", "logprobs": 21}, "logprobs"),
            ("/v1/completions", {"prompt": "x", "max_tokens": -1}, "max_tokens"),
            ("/v1/completions", {"prompt": "x", "max_tokens": 501}, "max_tokens"),
            ("/v1/completions", {"prompt": "x", "temperature": -0.5}, "temperature"),
        ]
        for path, body, param in cases:
            with self.subTest(path=path, body=json.dumps(body)[:80]):
                status, obj, headers = self.s.post(path, body)
                self.assertError(status, obj, headers, 400, param, "invalid_request_error")
        # no input at all
        status, obj, headers = self.s.post("/v1/score", {"top_k": 2})
        self.assertError(status, obj, headers, 400, ("text", "ids"), "invalid_request_error")

    def test_errors_bad_json(self):
        for raw in (b"{not json", b"", b"[1, 2]", b'"text"', b'{"text": "x",}', b"null"):
            with self.subTest(raw=raw):
                status, headers, payload = self.s.request("POST", "/v1/score", raw=raw, headers=JSON_CT)
                self.assertError(status, json.loads(payload), headers, 400, None, "invalid_request_error")
        # the server still works on the same kind of request afterwards
        self.s.ok("/v1/score", {"text": "x"})

    def test_errors_404_405(self):
        status, obj, headers = self.s.json("GET", "/v1/nothing")
        self.assertError(status, obj, headers, 404, None, "not_found_error")
        status, obj, headers = self.s.post("/v2/score", {"text": "x"})
        self.assertError(status, obj, headers, 404, None, "not_found_error")
        status, obj, headers = self.s.json("GET", "/v1/score")
        self.assertError(status, obj, headers, 405, None, "method_not_allowed")
        self.assertEqual(headers["Allow"], "POST")
        status, obj, headers = self.s.json("DELETE", "/v1/generate")
        self.assertError(status, obj, headers, 405, None, "method_not_allowed")
        self.assertIn("POST", headers["Allow"])
        status, obj, headers = self.s.post("/health", {})
        self.assertError(status, obj, headers, 405, None, "method_not_allowed")
        self.assertIn("GET", [m.strip() for m in headers["Allow"].split(",")])

    def test_errors_413(self):
        # body over --max-body 8192 (padded with JSON whitespace: a body under the limit passes)
        body = json.dumps({"prompt": "a", "max_tokens": 1}).encode()
        status, _, payload = self.s.request("POST", "/v1/generate", raw=body + b" " * 7000, headers=JSON_CT)
        self.assertEqual(status, 200, payload)
        status, headers, payload = self.s.request("POST", "/v1/generate", raw=body + b" " * 9000, headers=JSON_CT)
        self.assertError(status, json.loads(payload), headers, 413, None, "request_too_large")
        # input tokens over --max-input-tokens 300: the field that holds them is named
        self.assertEqual(self.s.post("/v1/score", {"text": "a" * 300, "top_k": 1})[0], 200)
        for path, body, param in (("/v1/score", {"text": "a" * 301}, "text"), ("/v1/score", {"ids": [97] * 301}, "ids"),
                                  ("/v1/generate", {"prompt": "a" * 301, "max_tokens": 1}, "prompt"),
                                  ("/v1/completions", {"prompt": "a" * 301, "max_tokens": 1}, "prompt")):
            with self.subTest(path=path, param=param):
                status, obj, headers = self.s.post(path, body)
                self.assertError(status, obj, headers, 413, param, "request_too_large")
        # attention over --max-attention-tokens 100
        self.assertEqual(self.s.post("/v1/attention", {"text": "a" * 98})[0], 200)
        status, obj, headers = self.s.post("/v1/attention", {"text": "a" * 101})
        self.assertError(status, obj, headers, 413, "text", "request_too_large")

    def test_errors_415(self):
        for ct in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx"):
            with self.subTest(ct=ct):
                status, headers, payload = self.s.request("POST", "/v1/score", raw=b'{"text": "x"}',
                                                          headers={"Content-Type": ct})
                self.assertError(status, json.loads(payload), headers, 415, None, check_param=False)
        status, _, _ = self.s.request("POST", "/v1/score", raw=b'{"text": "x"}',
                                      headers={"Content-Type": "application/json; charset=utf-8"})
        self.assertEqual(status, 200, "parameters allowed")
        # no Content-Type at all is accepted
        c = self.s.conn()
        c.putrequest("POST", "/v1/score")
        c.putheader("Content-Length", "13")
        c.endheaders(b'{"text": "x"}')
        r = c.getresponse()
        r.read()
        c.close()
        self.assertEqual(r.status, 200)


# --------------------------------------------------------------------------------------------
# API key
# --------------------------------------------------------------------------------------------

class TestApiKey(ServerCase):
    FLAGS = ["--api-key", "s3cret-key", "--workers", "1"]
    MODEL = TINY

    def test_key_required(self):
        body = {"text": "abc"}
        for hdrs in ({}, {"Authorization": "Bearer wrong"}, {"X-Api-Key": "wrong"},
                     {"Authorization": "s3cret-key"}, {"Authorization": "Bearer s3cret-keyX"},
                     {"X-Api-Key": "s3cret-ke"}):
            with self.subTest(headers=hdrs):
                status, obj, headers = self.s.post("/v1/tokenize", body, headers=hdrs)
                self.assertError(status, obj, headers, 401, None, "authentication_error", check_param=False)
        for path in ("/v1/model", "/v1/models"):
            status, obj, headers = self.s.json("GET", path)
            self.assertError(status, obj, headers, 401, None, "authentication_error", check_param=False)
        for hdrs in ({"Authorization": "Bearer s3cret-key"}, {"X-Api-Key": "s3cret-key"}):
            with self.subTest(headers=hdrs):
                status, obj, _ = self.s.post("/v1/tokenize", body, headers=hdrs)
                self.assertEqual(status, 200, obj)
                self.assertEqual(len(obj["tokens"]), 3)
                status, obj, _ = self.s.json("GET", "/v1/model", headers=hdrs)
                self.assertEqual(status, 200, obj)

    def test_open_routes(self):
        for path in ("/health", "/ready", "/metrics"):
            status, _, _ = self.s.request("GET", path)
            self.assertEqual(status, 200, path)




if __name__ == "__main__":
    unittest.main(verbosity=2)
