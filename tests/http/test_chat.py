"""/v1/chat/completions and /v1/chat/render: messages rendered through the chat template (the
built-in transcript, or --chat-template FILE, refused at start when malformed) and generated as
/v1/completions generates the same text; OpenAI's chat shapes, plain and streamed (the role first,
then content, then finish_reason, then usage), n choices, logprobs, stop strings across chunk
borders, max_completion_tokens, the harmless defaults clients send and refusals naming the field,
timings and the GenAI metrics under gen_ai_operation_name="chat"."""
import os
import tempfile

from servercase import ServerCase, sse_events

MESSAGES = [{"role": "system", "content": "The sea."}, {"role": "user", "content": "Where is the whale?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Far"}, {"type": "text", "text": " off."}]},
            {"role": "user", "content": "And Ahab?"}]
RENDERED = "The sea.\n\nUser: Where is the whale?\nAssistant: Far off.\nUser: And Ahab?\nAssistant: "


class TestChat(ServerCase):
    FLAGS = ["--workers", "2"]

    def test_render_and_generation_equal_completions(self):
        r = self.s.ok("/v1/chat/render", {"messages": MESSAGES})
        self.assertEqual(r, {"prompt": RENDERED, "stop": ["\nUser:"], "prompt_tokens": len(RENDERED)})
        for body in ({"max_tokens": 40, "seed": 3}, {"max_completion_tokens": 30, "temperature": 0},
                     {"max_tokens": 25, "seed": 9, "top_k": 20, "frequency_penalty": 0.5, "stop": ["e"]}):
            with self.subTest(body=body):
                chat = self.s.ok("/v1/chat/completions", dict(body, messages=MESSAGES))
                mt = body.get("max_tokens", body.get("max_completion_tokens"))
                comp_body = {k: v for k, v in body.items() if k != "max_completion_tokens"}
                comp = self.s.ok("/v1/completions", dict(comp_body, prompt=RENDERED, max_tokens=mt,
                                                         stop=body.get("stop", []) + ["\nUser:"]))
                self.assertEqual(chat["object"], "chat.completion")
                self.assertTrue(chat["id"].startswith("chatcmpl-"))
                c = chat["choices"][0]
                self.assertEqual((c["index"], c["message"]["role"]), (0, "assistant"))
                self.assertEqual(c["message"]["content"], comp["choices"][0]["text"])
                self.assertEqual(c["finish_reason"], comp["choices"][0]["finish_reason"])
                self.assertEqual(chat["usage"], comp["usage"])
                self.assertEqual(chat["timings"]["prompt_tokens"], len(RENDERED))

    def test_stream_order_and_equality(self):
        body = {"messages": MESSAGES, "max_tokens": 30, "seed": 4, "n": 2, "stream": True,
                "stream_options": {"include_usage": True}, "stop": ["the"]}
        plain = self.s.ok("/v1/chat/completions", dict(body, stream=False, stream_options=None))
        st, headers, payload = self.s.request("POST", "/v1/chat/completions", body)
        self.assertEqual(st, 200)
        events = sse_events(payload)
        self.assertEqual(events[-1], "[DONE]")
        chunks = events[:-1]
        self.assertTrue(all(c["object"] == "chat.completion.chunk" for c in chunks))
        usage = chunks[-1]
        self.assertEqual((usage["choices"], usage["usage"]), ([], plain["usage"]))
        for k in (0, 1):
            mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == k]
            self.assertEqual(mine[0]["delta"], {"role": "assistant", "content": ""}, "the role first")
            self.assertTrue(all("role" not in m["delta"] for m in mine[1:]))
            self.assertEqual(mine[-1]["delta"], {})
            self.assertEqual(mine[-1]["finish_reason"], plain["choices"][k]["finish_reason"])
            self.assertTrue(all(m["finish_reason"] is None for m in mine[:-1]))
            text = "".join(m["delta"].get("content", "") for m in mine)
            self.assertEqual(text, plain["choices"][k]["message"]["content"])
            self.assertNotIn("the", text, "a stop string never reaches the text, even across chunks")

    def test_logprobs(self):
        a = self.s.ok("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 12, "seed": 1, "logprobs": True,
                                               "top_logprobs": 3})
        content = a["choices"][0]["logprobs"]["content"]
        self.assertEqual(len(content), a["usage"]["completion_tokens"])
        for t in content:
            self.assertEqual(set(t), {"token", "logprob", "bytes", "top_logprobs"})
            self.assertEqual(len(t["top_logprobs"]), 3)
            self.assertGreaterEqual(t["top_logprobs"][0]["logprob"], t["logprob"])
        b = self.s.ok("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 12, "seed": 1})
        self.assertIsNone(b["choices"][0]["logprobs"])
        self.assertEqual(a["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"])

    def test_harmless_defaults_and_refusals(self):
        ok = {"messages": MESSAGES, "max_tokens": 3, "tools": [], "tool_choice": "none", "parallel_tool_calls": True,
              "response_format": {"type": "text"}, "user": "u", "store": False, "metadata": {}, "modalities": ["text"]}
        self.assertEqual(self.s.post("/v1/chat/completions", ok)[0], 200)
        bad = [({"messages": []}, 400, "messages"), ({}, 400, "messages"),
               ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages"),
               ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400, "messages"),
               ({"messages": [{"role": "assistant", "content": None, "tool_calls": []}]}, 400, "messages"),
               ({"messages": MESSAGES, "tools": [{"type": "function"}]}, 400, "tools"),
               ({"messages": MESSAGES, "tool_choice": "required"}, 400, "tool_choice"),
               ({"messages": MESSAGES, "response_format": {"type": "json_object"}}, 400, "response_format"),
               ({"messages": MESSAGES, "audio": {}}, 400, "audio"),
               ({"messages": MESSAGES, "functions": []}, 400, "functions"),
               ({"messages": MESSAGES, "max_tokens": 5, "max_completion_tokens": 5}, 400, "max_tokens"),
               ({"messages": MESSAGES, "top_logprobs": 2}, 400, "top_logprobs"),
               ({"messages": MESSAGES, "top_logprobs": 21, "logprobs": True}, 400, "top_logprobs"),
               ({"messages": MESSAGES, "logprobs": 1}, 400, "logprobs"),
               ({"messages": [{"role": "user", "content": "x" * 5000}]}, 413, "messages"),
               ({"messages": MESSAGES, "model": "nope"}, 404, "model")]
        for body, status, param in bad:
            with self.subTest(body=str(body)[:80]):
                st, obj, h = self.s.post("/v1/chat/completions", body)
                self.assertError(st, obj, h, status, param)
        st, obj, h = self.s.post("/v1/chat/render", {"messages": MESSAGES, "max_tokens": 1})
        self.assertError(st, obj, h, 400, "max_tokens")

    def test_session_holds_the_conversation_so_far(self):
        sid = self.s.ok("/v1/sessions", {"text": "The sea.\n\n"})["id"]
        rest = [{"role": "user", "content": "Where is the whale?"}]
        got = self.s.ok("/v1/chat/completions", {"session": sid, "messages": rest, "max_tokens": 20, "seed": 6})
        want = self.s.ok("/v1/chat/completions", {"messages": MESSAGES[:2], "max_tokens": 20, "seed": 6})
        self.assertEqual(got["choices"][0]["message"]["content"], want["choices"][0]["message"]["content"])
        self.assertEqual(got["timings"]["cached_tokens"], len("The sea.\n\n"))

    def test_metrics_count_chat(self):
        before = self.s.metric("gen_ai_server_request_duration_seconds_count", gen_ai_operation_name="chat")
        self.s.ok("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 4})
        self.assertEqual(self.s.metric("gen_ai_server_request_duration_seconds_count", gen_ai_operation_name="chat"),
                         before + 1)
        self.assertGreater(self.s.metric("gen_ai_server_time_to_first_token_seconds_count",
                                         gen_ai_operation_name="chat"), 0)


class TestChatTemplate(ServerCase):
    FLAGS = None

    def template(self, text):
        fd, path = tempfile.mkstemp(suffix=".chat")
        os.write(fd, text.encode())
        os.close(fd)
        self.addCleanup(os.unlink, path)
        return path

    def test_template_file(self):
        path = self.template('# a template\nsystem_prefix = "<s>"\nuser_prefix = "Q: "\nuser_suffix = "\\n"\n'
                             'assistant_prefix = "A: "\ngeneration_prompt = "A:"\nstop = "\\nQ:"\nstop = "##"\n')
        srv = self.start("--chat-template", path)
        r = srv.ok("/v1/chat/render", {"messages": MESSAGES[:2]})
        self.assertEqual(r["prompt"], "<s>The sea.\n\nQ: Where is the whale?\nA:")
        self.assertEqual(r["stop"], ["\nQ:", "##"])

    def test_bad_templates_refused_at_start(self):
        from servercase import Server
        for text, why in (('user_prefix = Q\n', "JSON string"), ('speaker = "x"\n', "expected"),
                          ('stop = ""\n', "stop"), ('stop = "a"\n' * 5, "at most 4"), ('user_prefix "x"\n', "expected")):
            with self.subTest(text=text):
                with self.assertRaises(Exception) as cm:
                    Server("--chat-template", self.template(text))
                self.assertIn(why, str(cm.exception))
        with self.assertRaises(Exception) as cm:
            Server("--chat-template", "/nonexistent/template")
        self.assertIn("cannot read --chat-template", str(cm.exception))
