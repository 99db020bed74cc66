// api.js -- the server's public API as the page uses it: JSON calls with the
// API key (kept in sessionStorage only), and server-sent events read from a
// fetch body.  Paths are relative, so the page works under any prefix a
// proxy gives it.

const KEY = "attnlm-api-key";

export function getKey() { return sessionStorage.getItem(KEY) || ""; }
export function setKey(k) { if (k) sessionStorage.setItem(KEY, k); else sessionStorage.removeItem(KEY); }

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const k = getKey();
  if (k) h["Authorization"] = "Bearer " + k;
  return h;
}

export class ApiError extends Error {
  constructor(status, body) {
    const e = body && body.error;
    super(e ? e.message + (e.param ? " (" + e.param + ")" : "") : "HTTP " + status);
    this.status = status;
    this.param = e ? e.param : null;
  }
}

async function answer(res) {
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}

export async function get(path) {
  return answer(await fetch(path, { headers: headers(false) }));
}

export async function post(path, body, signal) {
  return answer(await fetch(path, { method: "POST", headers: headers(true), body: JSON.stringify(body), signal }));
}

// POSTs body and calls onEvent with each event's parsed data until [DONE];
// resolves when the stream ends.  signal (an AbortController's) stops it.
export async function stream(path, body, onEvent, signal) {
  const res = await fetch(path, { method: "POST", headers: headers(true), body: JSON.stringify(body), signal });
  if (!res.ok) await answer(res);
  const reader = res.body.getReader(), dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      const ev = JSON.parse(data);
      if (ev.error) throw new ApiError(ev.error.code, ev);
      onEvent(ev);
    }
  }
}
