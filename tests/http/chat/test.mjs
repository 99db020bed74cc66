// Chat clients against attnlm-server's /v1/chat/completions: the openai client (plain, streamed
// with usage, logprobs), LangChain.js ChatOpenAI (invoke and stream) and the AI SDK's
// openai-compatible chatModel (generateText and streamText).  Each answer is checked against the
// server's own: the same request with a seed gives the same text through every client.
//   node test.mjs BASE_URL MODEL
import OpenAI from "openai";
import { ChatOpenAI } from "@langchain/openai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { generateText, streamText } from "ai";

const [base, model] = process.argv.slice(2);
let failures = 0;
function check(ok, what) {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) failures++;
}

async function raw(body) {
  const r = await fetch(`${base}/chat/completions`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  return [r.status, await r.json()];
}

const messages = [{ role: "system", content: "The sea." }, { role: "user", content: "Where is the whale?" }];
const client = new OpenAI({ baseURL: base, apiKey: "none" });

// ---- openai: plain, with logprobs -------------------------------------------------
const plain = await client.chat.completions.create({ model, messages, max_tokens: 24, seed: 5, logprobs: true,
                                                      top_logprobs: 3 });
const [, direct] = await raw({ model, messages, max_tokens: 24, seed: 5 });
check(plain.object === "chat.completion" && plain.choices[0].message.role === "assistant",
      "openai chat: a chat.completion with an assistant message");
check(plain.choices[0].message.content === direct.choices[0].message.content,
      `openai chat: the same text as the server's own answer (${JSON.stringify(plain.choices[0].message.content)})`);
const lp = plain.choices[0].logprobs.content;
check(lp.length === plain.usage.completion_tokens && lp.every((t) => t.top_logprobs.length === 3 && t.logprob <= 0),
      `openai chat: logprobs.content has ${lp.length} tokens with 3 alternatives each`);
check(plain.usage.total_tokens === plain.usage.prompt_tokens + plain.usage.completion_tokens,
      "openai chat: usage adds up");

// ---- openai: streamed, with usage -------------------------------------------------------
const stream = await client.chat.completions.create({ model, messages, max_tokens: 24, seed: 5, stream: true,
                                                       stream_options: { include_usage: true } });
let text = "", usage = null, firstRole = null, finish = null, chunks = 0;
for await (const ch of stream) {
  chunks++;
  if (ch.usage) usage = ch.usage;
  const c = ch.choices[0];
  if (!c) continue;
  if (firstRole === null) firstRole = c.delta.role ?? "";
  text += c.delta.content ?? "";
  if (c.finish_reason) finish = c.finish_reason;
}
check(firstRole === "assistant", "openai stream: the role comes first");
check(text === direct.choices[0].message.content, `openai stream: the same text in ${chunks} chunks`);
check(finish === direct.choices[0].finish_reason && usage && usage.completion_tokens === plain.usage.completion_tokens,
      `openai stream: finish_reason ${finish} and a usage chunk`);

// ---- LangChain.js ChatOpenAI -----------------------------------------------------------
const lc = new ChatOpenAI({ model, apiKey: "none", configuration: { baseURL: base }, maxTokens: 24, temperature: 0 });
const [, greedy] = await raw({ model, messages: [{ role: "user", content: "Call me" }], max_tokens: 24, temperature: 0 });
const invoked = await lc.invoke("Call me");
check(invoked.content === greedy.choices[0].message.content,
      `LangChain ChatOpenAI invoke: ${JSON.stringify(invoked.content)}`);
let lcText = "";
for await (const ch of await lc.stream("Call me")) lcText += ch.content;
check(lcText === greedy.choices[0].message.content, "LangChain ChatOpenAI stream: the same text");

// ---- AI SDK openai-compatible chatModel ------------------------------------------------------
const provider = createOpenAICompatible({ name: "attnlm", baseURL: base, apiKey: "none" });
const g = await generateText({ model: provider.chatModel(model), prompt: "Call me", maxOutputTokens: 24,
                               temperature: 0 });
check(g.text === greedy.choices[0].message.content, `AI SDK generateText: ${JSON.stringify(g.text)}`);
const st = streamText({ model: provider.chatModel(model), prompt: "Call me", maxOutputTokens: 24, temperature: 0 });
let aiText = "";
for await (const d of st.textStream) aiText += d;
check(aiText === greedy.choices[0].message.content, "AI SDK streamText: the same text");

// ---- a field it cannot honour --------------------------------------------------------------
try {
  await client.chat.completions.create({ model, messages, tools: [{ type: "function", function: { name: "f" } }] });
  check(false, "tools refused");
} catch (e) {
  check(e.status === 400 && /tools/.test(e.message), "openai chat with tools: 400 naming tools");
}
process.exit(failures ? 1 : 0);
