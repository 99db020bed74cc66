// data.js -- one analysis of a token sequence as the views read it: the
// tokens (BOS first), each position's log-probability and alternatives
// and attention gain (/v1/score), the attention rows per head (/v1/attention, band form) and
// their summary; rows can also arrive one by one from a live generation.
// Positions are attention positions: BOS is 0, the text's bytes 1 .. T-1.

export const BOS = 256;
export const FIGURES = ["entropy", "normalized_entropy", "lookback", "self", "bos"];

export function utf8(text) { return Array.from(new TextEncoder().encode(text)); }

// An analysis from the answers of /v1/score (may be null: nothing scored) and /v1/attention.
export function fromApi(model, ids, score, att) {
  const a = {
    model, ids: ids.slice(), N: att.heads, W: att.window, mechanism: att.attention,
    rows: att.maps.map((h) => h.map((r) => Float32Array.from(r))),
    lp: ids.map(() => NaN), gain: ids.map(() => NaN), top: ids.map(() => null), summary: att.summary || null,
    live: false,
  };
  if (score) score.tokens.forEach((t, i) => {
    a.lp[i + 1] = t.logprob; a.top[i + 1] = t.top || null; a.gain[i + 1] = t.gain ?? NaN;
  });
  return a;
}

// Appends a generated token (a /v1/generate stream event's "token"): its
// attention rows belong to the position before it, which predicted it.
export function appendToken(a, tok) {
  const q = a.ids.length - 1;
  a.ids.push(tok.id);
  a.lp.push(tok.logprob);
  a.gain.push(NaN);
  a.top.push(tok.top || null);
  if (tok.attention) tok.attention.forEach((row, h) => { a.rows[h][q] = Float32Array.from(row); });
  a.summary = null;
}

export function rowCount(a) { return a.ids.length; }

// The weight head h (-1: the mean of the heads) puts from position t on
// position i; NaN when row t is not known yet, 0 outside its window.
export function weight(a, h, t, i) {
  if (h < 0) {
    let s = 0;
    for (let k = 0; k < a.N; k++) s += weight(a, k, t, i);
    return s / a.N;
  }
  const row = a.rows[h][t];
  if (!row) return NaN;
  const lo = t + 1 - row.length;
  return i < lo || i > t ? 0 : row[i - lo];
}

// Columns of the band heatmap: look-back distances 0 .. C-1, no more than
// the window, the text (no row looks further back than its start) or span.
export function bandColumns(a, span) {
  const C = Math.min(a.W, a.ids.length);
  return span > 0 ? Math.min(C, span) : C;
}

// The matrix a heatmap draws: rows are positions; columns are look-back
// distances 0 .. bandColumns-1 (band; NaN past a row's start) or positions (dense).
export function matrix(a, h, dense, span = 0) {
  const T = a.ids.length, C = dense ? T : bandColumns(a, span), v = new Float32Array(T * C).fill(NaN);
  const heads = h < 0 ? [...Array(a.N).keys()] : [h];
  for (let t = 0; t < T; t++) {
    if (!a.rows[heads[0]][t]) continue;
    const n = a.rows[heads[0]][t].length, lo = t + 1 - n, o = t * C;
    if (dense) for (let i = 0; i < T; i++) v[o + i] = 0;
    for (const k of heads) {
      const row = a.rows[k][t];
      for (let j = 0; j < n; j++) {
        const c = dense ? lo + j : t - (lo + j);
        if (c >= C) continue;
        v[o + c] = (k === heads[0] ? 0 : v[o + c]) + row[j] / heads.length;
      }
    }
  }
  return { rows: T, cols: C, head: h, dense, values: v };
}

// The API's summary figures (docs/API.md) computed here, for rows that
// arrived live; unknown rows give NaN.
function summarizeHead(a, h) {
  const T = a.ids.length, D = Math.min(a.W, T), out = {};
  for (const f of FIGURES) out[f] = new Array(T).fill(NaN);
  const dist = new Array(D).fill(0), cnt = new Array(D).fill(0);
  for (let t = 0; t < T; t++) {
    const row = a.rows[h][t];
    if (!row) continue;
    const n = row.length, lo = t + 1 - n;
    let H = 0, look = 0;
    for (let j = 0; j < n; j++) {
      const w = row[j], d = t - (lo + j);
      if (w > 0) H -= w * Math.log(w);
      look += w * d;
      dist[d] += w;
      cnt[d]++;
    }
    out.entropy[t] = H;
    out.normalized_entropy[t] = n > 1 ? H / Math.log(n) : 0;
    out.lookback[t] = look;
    out.self[t] = row[n - 1];
    out.bos[t] = lo === 0 ? row[0] : 0;
  }
  out.by_distance = dist.map((s, d) => (cnt[d] ? s / cnt[d] : NaN));
  out.mean = {};
  for (const f of FIGURES) {
    const known = out[f].filter((x) => !Number.isNaN(x));
    out.mean[f] = known.length ? known.reduce((s, x) => s + x, 0) / known.length : NaN;
  }
  return out;
}

export function summary(a) {
  if (a.summary) return a.summary;
  const heads = [];
  for (let h = 0; h < a.N; h++) heads.push(summarizeHead(a, h));
  const average = { mean: {} };
  for (const f of [...FIGURES, "by_distance"])
    average[f] = heads[0][f].map((_, i) => heads.reduce((s, x) => s + x[f][i], 0) / a.N);
  for (const f of FIGURES) average.mean[f] = heads.reduce((s, x) => s + x.mean[f], 0) / a.N;
  return { heads, average };
}

// The text as characters: UTF-8 bytes grouped, each with its positions
// p0 .. p1 and what to show (control characters as their Unicode pictures,
// bytes that are not part of a well-formed character as \xNN).
export function characters(ids) {
  const out = [{ p0: 0, p1: 0, show: "BOS", kind: "bos" }];
  const dec = new TextDecoder("utf-8", { fatal: true });
  for (let p = 1; p < ids.length;) {
    const b = ids[p];
    if (b === BOS) { out.push({ p0: p, p1: p, show: "BOS", kind: "bos" }); p++; continue; }
    const need = b < 0x80 ? 1 : b >= 0xc2 && b < 0xe0 ? 2 : b >= 0xe0 && b < 0xf0 ? 3 : b >= 0xf0 && b < 0xf5 ? 4 : 0;
    let ch = null;
    if (need && p + need <= ids.length) {
      const bytes = ids.slice(p, p + need);
      if (bytes.every((x) => x < 256)) try { ch = dec.decode(new Uint8Array(bytes)); } catch (_) { ch = null; }
    }
    if (ch === null) { out.push({ p0: p, p1: p, show: "\\x" + b.toString(16).padStart(2, "0"), kind: "bad" }); p++; continue; }
    const c = ch.codePointAt(0);
    if (c < 0x20) out.push({ p0: p, p1: p, show: String.fromCodePoint(0x2400 + c), kind: "ctl", newline: c === 10 });
    else if (c === 0x7f) out.push({ p0: p, p1: p, show: "\u2421", kind: "ctl" });
    else out.push({ p0: p, p1: p + need - 1, show: ch, kind: "" });
    p += need;
  }
  return out;
}

export function byteLabel(id) {
  if (id === BOS) return "BOS";
  if (id < 0x20) return String.fromCodePoint(0x2400 + id);
  if (id === 0x20) return "\u2423";
  if (id === 0x7f) return "\u2421";
  if (id < 0x80) return String.fromCharCode(id);
  return "\\x" + id.toString(16).padStart(2, "0");
}
