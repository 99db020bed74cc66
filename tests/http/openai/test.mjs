// The official openai npm client against a running attnlm-server.
// Usage: node test.mjs BASE_URL API_KEY [SERVER_KEY]
//   BASE_URL ends in /v1; API_KEY is what the client sends; SERVER_KEY is the
//   key the server was started with (absent: the server has no key).
// Prints one line per check and a summary; exits 1 if any check failed.
import OpenAI from 'openai';

const [baseURL, apiKey, serverKey = ''] = process.argv.slice(2);
if (!baseURL || !apiKey) {
  console.error('usage: node test.mjs BASE_URL API_KEY [SERVER_KEY]');
  process.exit(2);
}
const root = baseURL.replace(/\/v1\/?$/, '');
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60_000 });
const mode = serverKey ? 'api key' : 'no key';
let passed = 0, failed = 0;

async function check(name, fn) {
  try {
    const note = await fn();
    passed++;
    console.log(`ok   [${mode}] ${name}${note ? ` (${note})` : ''}`);
  } catch (e) {
    failed++;
    console.log(`FAIL [${mode}] ${name}: ${e && e.stack ? e.stack.split('\n').slice(0, 3).join(' | ') : e}`);
  }
}
function assert(cond, msg) { if (!cond) throw new Error(msg); }
const json = (x) => JSON.stringify(x);
const isCount = (x) => Number.isInteger(x) && x >= 0;

// Direct calls for what the client has no method for (/v1/score, /v1/model).
async function post(path, body) {
  const res = await fetch(root + path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${apiKey}` },
    body: json(body),
  });
  if (res.status !== 200) throw new Error(`${path}: HTTP ${res.status} ${await res.text()}`);
  return res.json();
}

// The model asked for by name, as OpenAI clients always do: ATTNLM_TEST_MODEL, else the first served.
const listed = await fetch(root + '/v1/models', { headers: { Authorization: `Bearer ${apiKey}` } }).then((r) => r.json());
const modelId = process.env.ATTNLM_TEST_MODEL || listed.data[0].id;

// One request that, with the same seed, the plain and the streamed check both make.
const prompt = 'Call me Ishmael. Some years ago';
const params = { model: modelId, prompt, max_tokens: 40, temperature: 0.8, seed: 1234 };
let plain = null;

await check('(a) completions.create: text_completion shape, length, usage', async () => {
  plain = await client.completions.create(params);
  assert(plain.object === 'text_completion', `object ${plain.object}`);
  assert(typeof plain.id === 'string' && plain.id.length > 0, `id ${plain.id}`);
  assert(Number.isInteger(plain.created), `created ${plain.created}`);
  assert(plain.model === modelId, `model ${plain.model}, asked for ${modelId}`);
  assert(Array.isArray(plain.choices) && plain.choices.length === 1, `${plain.choices.length} choices`);
  const c = plain.choices[0];
  assert(c.index === 0, `index ${c.index}`);
  assert(typeof c.text === 'string', `text ${typeof c.text}`);
  assert(c.finish_reason === 'length', `finish_reason ${c.finish_reason}`);
  // One token is one byte; only U+FFFD (an incomplete UTF-8 sequence replaced) changes the count.
  const bytes = Buffer.byteLength(c.text);
  if (!c.text.includes('\uFFFD'))
    assert(bytes === params.max_tokens, `${bytes} bytes of text for ${params.max_tokens} tokens: ${json(c.text)}`);
  const u = plain.usage;
  assert(u && isCount(u.prompt_tokens) && isCount(u.completion_tokens) && isCount(u.total_tokens), `usage ${json(u)}`);
  assert(u.prompt_tokens === Buffer.byteLength(prompt), `prompt_tokens ${u.prompt_tokens} for ${Buffer.byteLength(prompt)} bytes`);
  assert(u.completion_tokens === params.max_tokens, `completion_tokens ${u.completion_tokens}`);
  assert(u.total_tokens === u.prompt_tokens + u.completion_tokens, `total_tokens ${u.total_tokens}`);
  const again = await client.completions.create(params);
  assert(again.choices[0].text === c.text, 'same seed and request, different text');
  return `${bytes} bytes: ${json(c.text.slice(0, 30))}...`;
});

await check('(b) completions.create stream: same text as (a), finish_reason last', async () => {
  assert(plain, 'needs (a)');
  const stream = await client.completions.create({ ...params, stream: true });
  let text = '', chunks = 0, last = null, finishes = 0;
  for await (const chunk of stream) {
    assert(chunk.object === 'text_completion', `chunk object ${chunk.object}`);
    assert(chunk.choices.length === 1 && typeof chunk.choices[0].text === 'string', `chunk ${json(chunk)}`);
    text += chunk.choices[0].text;
    if (chunk.choices[0].finish_reason != null) finishes++;
    last = chunk;
    chunks++;
  }
  assert(chunks >= 2, `only ${chunks} chunks`);
  assert(last.choices[0].finish_reason === 'length', `last chunk finish_reason ${last.choices[0].finish_reason}`);
  assert(finishes === 1, `${finishes} chunks carry a finish_reason`);
  assert(text === plain.choices[0].text, `streamed ${json(text)} != ${json(plain.choices[0].text)}`);
  return `${chunks} chunks`;
});

// A prompt with multi-byte characters: one logprob per byte, not per character.
const scored = 'It was the best of times \u2014 a na\u00efve whale, and the worst.';
for (const logprobs of [0, 1]) {
  await check(`(c) echo + logprobs ${logprobs} + max_tokens 0 scores the prompt like /v1/score`, async () => {
    const r = await client.completions.create({ model: modelId, prompt: scored, max_tokens: 0, echo: true, logprobs });
    const c = r.choices[0];
    assert(c.text === scored, `echoed ${json(c.text)}`);
    const lp = c.logprobs;
    const n = Buffer.byteLength(scored);
    assert(lp && Array.isArray(lp.token_logprobs), `logprobs ${json(lp)}`);
    assert(lp.token_logprobs.length === n, `${lp.token_logprobs.length} token_logprobs for ${n} bytes`);
    assert(lp.tokens.length === n && lp.text_offset.length === n, `${lp.tokens.length} tokens, ${lp.text_offset.length} offsets`);
    assert(lp.token_logprobs.every((x) => typeof x === 'number' && Number.isFinite(x) && x <= 0),
      `not all finite: ${json(lp.token_logprobs)}`);
    assert(r.usage.prompt_tokens === n && r.usage.completion_tokens === 0, `usage ${json(r.usage)}`);
    const score = await post('/v1/score', { model: modelId, text: scored });
    const sum = lp.token_logprobs.reduce((a, b) => a + b, 0);
    assert(Math.abs(sum - score.logprob) <= 1e-4, `sum ${sum} vs /v1/score ${score.logprob}`);
    return `${n} bytes, sum ${sum.toFixed(6)}, /v1/score ${score.logprob}`;
  });
}

await check('(d) models.list returns the model id (and models.retrieve finds it)', async () => {
  const model = await fetch(root + '/v1/model?model=' + encodeURIComponent(modelId), {
    headers: { Authorization: `Bearer ${apiKey}` },
  }).then((r) => r.json());
  const list = await client.models.list();
  const ids = list.data.map((m) => m.id);
  assert(ids.length >= 1 && ids.includes(modelId), `models ${json(ids)} should include ${modelId}`);
  assert(model.id === modelId, `/v1/model?model=${modelId} answered ${model.id}`);
  assert(list.data.every((m) => m.object === 'model'), `objects ${json(list.data)}`);
  const one = await client.models.retrieve(modelId);
  assert(one.id === modelId, `retrieve ${json(one)}`);
  let err = null;
  try {
    await client.models.retrieve('no-such-model');
  } catch (e) {
    err = e;
  }
  assert(err instanceof OpenAI.NotFoundError && err.status === 404, `retrieve of an unknown model: ${err}`);
  return ids[0];
});

await check('(e) temperature -1 rejects with a 400 APIError', async () => {
  let err = null;
  try {
    await client.completions.create({ ...params, temperature: -1 });
  } catch (e) {
    err = e;
  }
  assert(err, 'temperature -1 was accepted');
  assert(err instanceof OpenAI.APIError, `${err}`);
  assert(err instanceof OpenAI.BadRequestError && err.status === 400, `status ${err.status}: ${err}`);
  assert(err.type === 'invalid_request_error', `type ${err.type}`);
  assert(err.param === 'temperature', `param ${err.param}`);
  return err.message;
});

await check('(f) a wrong key rejects with a 401 AuthenticationError (any key passes without --api-key)', async () => {
  if (!serverKey) {
    const any = new OpenAI({ baseURL, apiKey: 'anything', maxRetries: 0 });
    const r = await any.completions.create({ ...params, max_tokens: 1 });
    assert(r.choices.length === 1, `${json(r)}`);
    return 'server has no key';
  }
  const bad = new OpenAI({ baseURL, apiKey: serverKey + '-wrong', maxRetries: 0 });
  let err = null;
  try {
    await bad.completions.create(params);
  } catch (e) {
    err = e;
  }
  assert(err, 'a wrong key was accepted');
  assert(err instanceof OpenAI.AuthenticationError && err.status === 401, `${err}`);
  assert(err.type === 'authentication_error', `type ${err.type}`);
  let listErr = null;
  try {
    await bad.models.list();
  } catch (e) {
    listErr = e;
  }
  assert(listErr instanceof OpenAI.AuthenticationError, `models.list with a wrong key: ${listErr}`);
  const open = await fetch(root + '/health');
  assert(open.status === 200, `/health without a key: ${open.status}`);
});

// Sampling controls web backends send: a penalty or a bias visibly changes what comes back.
const greedy = { model: modelId, prompt: 'Call me Ishmael. ', max_tokens: 200, temperature: 0 };
const repeated = (text) => {
  const seen = new Set();
  let n = 0;
  for (const b of Buffer.from(text)) {
    if (seen.has(b)) n++;
    seen.add(b);
  }
  return n;
};

await check('(g) logit_bias banning the greedy next byte changes the greedy text', async () => {
  const plain = (await client.completions.create(greedy)).choices[0].text;
  const first = Buffer.from(plain)[0];
  const r = await client.completions.create({ ...greedy, logit_bias: { [String(first)]: -100 } });
  const text = r.choices[0].text;
  assert(text !== plain, 'the same text with its first byte banned');
  assert(!Buffer.from(text).includes(first), `banned byte ${first} in ${json(text)}`);
  let err = null;
  try {
    await client.completions.create({ ...greedy, logit_bias: { 50256: -100 } });
  } catch (e) {
    err = e;
  }
  assert(err instanceof OpenAI.BadRequestError && err.param === 'logit_bias', `an id out of range: ${err}`);
  return `${json(plain.slice(0, 12))} -> ${json(text.slice(0, 12))}`;
});

await check('(h) frequency_penalty 2 repeats fewer bytes in a greedy 200-byte completion than 0', async () => {
  const plain = (await client.completions.create({ ...greedy, frequency_penalty: 0 })).choices[0].text;
  const pen = (await client.completions.create({ ...greedy, frequency_penalty: 2 })).choices[0].text;
  assert(repeated(pen) < repeated(plain), `${repeated(pen)} repeated bytes with the penalty, ${repeated(plain)} without`);
  return `${repeated(plain)} -> ${repeated(pen)} repeated bytes`;
});

await check('(i) an array of 3 prompts with n 2: 6 choices in order, each the single-prompt call', async () => {
  const prompts = ['Call me Ishmael.', 'The whale', 'It is not down on any map'];
  const req = { model: modelId, max_tokens: 24, n: 2, seed: 77, temperature: 0.9 };
  const r = await client.completions.create({ ...req, prompt: prompts });
  assert(r.choices.length === 6, `${r.choices.length} choices`);
  assert(json(r.choices.map((c) => c.index)) === json([0, 1, 2, 3, 4, 5]), `indices ${json(r.choices.map((c) => c.index))}`);
  let prompt_tokens = 0;
  for (const [p, prompt] of prompts.entries()) {
    const alone = await client.completions.create({ ...req, prompt });
    prompt_tokens += alone.usage.prompt_tokens;
    for (const j of [0, 1])
      assert(r.choices[p * 2 + j].text === alone.choices[j].text,
        `choice ${p * 2 + j}: ${json(r.choices[p * 2 + j].text)} != ${json(alone.choices[j].text)}`);
  }
  assert(r.usage.prompt_tokens === prompt_tokens && r.usage.completion_tokens === 6 * 24, `usage ${json(r.usage)}`);
  const ids = await client.completions.create({ ...req, prompt: [[...Buffer.from('The whale')]], n: 1 });
  assert(ids.choices[0].text === r.choices[2].text, 'token-id prompt differs from its text');
  return `${json(r.choices[0].text.slice(0, 16))}...`;
});

await check('(j) a field the route does not take rejects with a 400 naming it', async () => {
  let err = null;
  try {
    await client.completions.create({ ...greedy, max_tokens: 1, min_p: 0.1 });
  } catch (e) {
    err = e;
  }
  assert(err instanceof OpenAI.BadRequestError && err.param === 'min_p', `min_p: ${err}`);
  const ok = await client.completions.create({ ...greedy, max_tokens: 1, user: 'user-1', best_of: 1 });
  assert(ok.choices.length === 1, 'user and best_of 1 refused');
  return err.message;
});

console.log(`[${mode}] ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
