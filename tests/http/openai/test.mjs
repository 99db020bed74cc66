// The official openai client against a running attnlm-server.
// Usage: node test.mjs BASE_URL API_KEY   (BASE_URL ends in /v1)
import OpenAI from 'openai';

const [baseURL, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
let failures = 0;

async function check(name, fn) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}: ${e.stack || e}`);
  }
}
function assert(cond, msg) { if (!cond) throw new Error(msg); }

const params = { model: 'default', prompt: 'Call me Ishmael. ', max_tokens: 40, temperature: 0.8, seed: 5 };
let plain;

await check('models.list and models.retrieve', async () => {
  const list = await client.models.list();
  assert(list.data.length === 1 && typeof list.data[0].id === 'string', JSON.stringify(list.data));
  const one = await client.models.retrieve(list.data[0].id);
  assert(one.id === list.data[0].id && one.object === 'model', JSON.stringify(one));
  try {
    await client.models.retrieve('no-such-model');
    throw new Error('found a model that does not exist');
  } catch (e) {
    assert(e instanceof OpenAI.NotFoundError, `${e}`);
  }
});

await check('completions.create', async () => {
  plain = await client.completions.create(params);
  assert(plain.object === 'text_completion', plain.object);
  const c = plain.choices[0];
  assert(c.finish_reason === 'length', c.finish_reason);
  assert(Buffer.byteLength(c.text) >= 1, 'empty text');
  assert(plain.usage.prompt_tokens === 17 && plain.usage.completion_tokens === 40, JSON.stringify(plain.usage));
  assert(plain.usage.total_tokens === 57, 'total_tokens');
  const again = await client.completions.create(params);
  assert(again.choices[0].text === c.text, 'same seed, different text');
});

await check('completions.create stream', async () => {
  const stream = await client.completions.create({ ...params, stream: true });
  let text = '', last = null, chunks = 0;
  for await (const chunk of stream) {
    text += chunk.choices[0].text;
    last = chunk.choices[0].finish_reason ?? last;
    chunks++;
  }
  assert(chunks >= 40, `only ${chunks} chunks`);
  assert(last === 'length', `finish_reason ${last}`);
  assert(text === plain.choices[0].text, `streamed ${JSON.stringify(text)} != ${JSON.stringify(plain.choices[0].text)}`);
});

await check('echo + logprobs + max_tokens 0 scores the prompt', async () => {
  const prompt = 'It was the best of times.';
  const r = await client.completions.create({ model: 'default', prompt, max_tokens: 0, echo: true, logprobs: 1 });
  const lp = r.choices[0].logprobs;
  assert(r.choices[0].text === prompt, r.choices[0].text);
  assert(lp.token_logprobs.length === prompt.length, `${lp.token_logprobs.length} logprobs`);
  assert(lp.token_logprobs.every((x) => Number.isFinite(x) && x <= 0), 'non-finite logprob');
  const res = await fetch(baseURL.replace(/\/v1$/, '') + '/v1/score', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${apiKey}` },
    body: JSON.stringify({ text: prompt }),
  });
  const score = await res.json();
  const sum = lp.token_logprobs.reduce((a, b) => a + b, 0);
  assert(Math.abs(sum - score.logprob) < 1e-3, `sum ${sum} vs /v1/score ${score.logprob}`);
});

await check('bad request is a 400 APIError', async () => {
  try {
    await client.completions.create({ ...params, temperature: -1 });
    throw new Error('accepted temperature -1');
  } catch (e) {
    assert(e instanceof OpenAI.APIError && e.status === 400, `${e}`);
  }
});

await check('wrong key is a 401 AuthenticationError', async () => {
  const bad = new OpenAI({ baseURL, apiKey: apiKey + 'x', maxRetries: 0 });
  try {
    await bad.completions.create(params);
    if (apiKey !== 'unused') throw new Error('accepted a wrong key');
  } catch (e) {
    assert(e instanceof OpenAI.AuthenticationError && e.status === 401, `${e}`);
  }
});

console.log(failures ? `${failures} check(s) failed` : 'all checks passed');
process.exit(failures ? 1 : 0);
