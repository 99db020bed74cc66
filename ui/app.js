// app.js -- the inspector page: controls, the view's state (kept in the
// address's hash, so a link reproduces it), analysis through the public API,
// live generation, comparison, export and the model card.  Nothing is loaded
// from anywhere but this server.

import * as api from "./api.js";
import * as D from "./data.js";
import * as G from "./draw.js";
import { Panel } from "./panel.js";

const $ = (id) => document.getElementById(id);
const FRAME_MS = 120; // live generation: the shortest time between two drawings
const DEFAULT_TEXT = "Call me Ishmael. Some years ago\u2014never mind how long precisely\u2014having little or no money in my purse, and nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of the world.";

const state = { text: DEFAULT_TEXT, text2: "", model: "", model2: "", mode: "single", head: 0, dense: false, scale: "sqrt", pos: -1,
  span: 0, textColour: "surprisal" };
const panels = [];
let models = [], generation = null, runs = 0, analysed;

const app = {
  state,
  post: (path, body, signal) => api.post(path, body, signal),
  select(panel, pos) {
    for (const p of panels) if (p === panel || (state.mode === "models" && p.a && p.a.ids.length > pos)) p.select(pos);
    state.pos = panels[0].sel;
    saveHash();
  },
  setHead(h) { state.head = h; $("head").value = String(h); renderAll(); saveHash(); },
  tip(ev, content) {
    const tip = $("tip");
    if (!ev || !content) { tip.hidden = true; return; }
    tip.replaceChildren(content);
    tip.hidden = false;
    const x = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    const y = ev.clientY + 16 + tip.offsetHeight > window.innerHeight ? ev.clientY - tip.offsetHeight - 10 : ev.clientY + 16;
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  },
};

function status(msg, error) {
  const s = $("status");
  s.textContent = msg || "";
  s.classList.toggle("error", !!error);
}

// ---- state in the address ------------------------------------------------

function saveHash() {
  const q = new URLSearchParams();
  q.set("text", state.text);
  if (state.model) q.set("model", state.model);
  if (state.mode !== "single") q.set("mode", state.mode);
  if (state.mode === "models" && state.model2) q.set("model2", state.model2);
  if (state.mode === "texts") q.set("text2", state.text2);
  if (state.head !== 0) q.set("head", String(state.head));
  if (state.dense) q.set("dense", "1");
  if (state.scale !== "sqrt") q.set("scale", state.scale);
  if (state.pos >= 0) q.set("pos", String(state.pos));
  if (state.span > 0) q.set("span", String(state.span));
  if (state.textColour !== "surprisal") q.set("colour", state.textColour);
  history.replaceState(null, "", "#" + q.toString());
}

function loadHash() {
  const q = new URLSearchParams(location.hash.slice(1));
  if (q.has("text")) state.text = q.get("text");
  state.text2 = q.get("text2") || "";
  state.model = q.get("model") || "";
  state.model2 = q.get("model2") || "";
  state.mode = ["models", "texts"].includes(q.get("mode")) ? q.get("mode") : "single";
  state.head = Number.parseInt(q.get("head") || "0", 10) || 0;
  state.dense = q.get("dense") === "1";
  state.scale = q.get("scale") === "log" ? "log" : "sqrt";
  G.setScale(state.scale);
  state.pos = q.has("pos") ? Number.parseInt(q.get("pos"), 10) : -1;
  state.span = Math.max(0, Number.parseInt(q.get("span") || "0", 10) || 0);
  state.textColour = q.get("colour") === "gain" ? "gain" : "surprisal";
  return q.has("text");
}

function syncControls() {
  $("text").value = state.text;
  $("text2").value = state.text2;
  $("mode").value = state.mode;
  $("dense").checked = state.dense;
  $("scale").value = state.scale;
  $("span").value = String(state.span);
  if ($("span").value !== String(state.span)) $("span").add(new Option(String(state.span), String(state.span), true, true));
  $("textcolour").value = state.textColour;
  if (state.model) $("model").value = state.model;
  if (state.model2) $("model2").value = state.model2;
  $("model2-box").hidden = state.mode !== "models";
  $("text2-box").hidden = state.mode !== "texts";
}

// ---- models ---------------------------------------------------------------

async function loadModels() {
  const list = await api.get("v1/models");
  models = list.data.map((m) => m.id);
  for (const id of ["model", "model2"]) $(id).replaceChildren(...models.map((m) => new Option(m, m)));
  if (!models.includes(state.model)) state.model = models[0];
  if (!models.includes(state.model2)) state.model2 = models[1] || models[0];
  syncControls();
  await loadCard();
}

async function loadCard() {
  const m = await api.get("v1/model?model=" + encodeURIComponent(state.model));
  app.limits = m.limits;
  const t = document.createElement("table");
  const row = (k, v) => { const r = t.insertRow(); r.insertCell().textContent = k; r.insertCell().textContent = v; };
  const c = m.config;
  row("model", m.id);
  row("architecture", `${c.layers}-layer ${c.cell}, hidden ${c.hidden}, embedding ${c.embed_dim}; ${c.attention} attention` +
    `${c.heads > 1 ? ", " + c.heads + " heads" : ""}, window ${c.window}`);
  row("parameters", m.parameters.toLocaleString("en"));
  row("sha256", m.sha256);
  for (const [k, v] of Object.entries(m.metadata)) if (!["name"].includes(k)) row(k, typeof v === "string" ? v : JSON.stringify(v));
  row("limits", Object.entries(m.limits).map(([k, v]) => `${k} ${v}`).join(", "));
  $("card-body").replaceChildren(t);
}

// ---- analysis -------------------------------------------------------------

async function analyse(model, ids) {
  const body = { ids: ids.slice(1), model };
  const [score, att] = await Promise.all([
    api.post("v1/score", { ...body, top_k: 5, attention_gain: true }),
    api.post("v1/attention", { ...body, summary: true }),
  ]);
  return D.fromApi(model, ids, score, att);
}

function layout(n) {
  while (panels.length > n) panels.pop().el.remove();
  while (panels.length < n) panels.push(new Panel($("panels"), app, panels.length));
  $("panels").classList.toggle("one", n === 1);
}

function headOptions(N) {
  const opts = [new Option("mean of the heads", "-1")];
  for (let h = 0; h < N; h++) opts.push(new Option("head " + h, String(h)));
  $("head").replaceChildren(...opts);
  if (state.head >= N) state.head = 0;
  $("head").value = String(state.head);
}

function renderAll() { for (const p of panels) p.render(); }

async function run() {
  stopGeneration();
  state.text = $("text").value;
  state.text2 = $("text2").value;
  if (!state.text) { status("Type a text to analyse.", true); return; }
  // A new text starts without a selection (a link's first analysis keeps its own).
  const key = [state.mode, state.model, state.model2, state.text, state.text2].join("\u0000");
  if (analysed !== undefined && analysed.split("\u0000")[3] !== state.text) state.pos = -1;
  analysed = key;
  const run = ++runs;
  const jobs = [[state.model, state.text]];
  if (state.mode === "models") jobs.push([state.model2, state.text]);
  if (state.mode === "texts") jobs.push([state.model, state.text2 || state.text]);
  status("analysing\u2026");
  try {
    const t0 = performance.now();
    const results = await Promise.all(jobs.map(([m, text]) => analyse(m, [D.BOS, ...D.utf8(text)])));
    const fetched = performance.now() - t0;
    if (run !== runs) return; // a later analysis or generation took over
    layout(results.length);
    headOptions(Math.max(...results.map((a) => a.N)));
    const pos = state.pos;
    results.forEach((a, i) => { panels[i].sel = pos < a.ids.length ? pos : -1; panels[i].set(a); });
    const ms = panels.map((p) => p.lastRenderMs.toFixed(1)).join(" + ");
    status(`${results.map((a) => a.ids.length - 1).join(" and ")} tokens: fetched in ${fetched.toFixed(0)} ms, drawn in ${ms} ms`);
    saveHash();
  } catch (e) {
    status(e.message, true);
  }
}

// ---- live generation ------------------------------------------------------

function stopGeneration() {
  if (generation) generation.abort();
}

async function generate() {
  stopGeneration();
  const prompt = $("prompt").value;
  if (!prompt) { status("Type a prompt to generate from.", true); return; }
  const ctl = (generation = new AbortController()), run = ++runs;
  $("stop").disabled = false;
  $("generate").disabled = true;
  state.mode = "single";
  syncControls();
  const stats = (app.live = { tokens: 0, frames: 0, rows: [], renderMs: 0, maxRenderMs: 0, start: performance.now(), end: 0, stopped: false });
  // Drawn at most every FRAME_MS: reading the stream shares the thread with drawing,
  // and a whole panel redrawn per token would fall behind the server.
  let a = null, pending = false, streaming = true, last = 0;
  const frame = () => {
    pending = false;
    if (!streaming || run !== runs) return;
    last = performance.now();
    panels[0].set(a);
    stats.frames++;
    stats.rows.push(a.ids.length);
    stats.renderMs += panels[0].lastRenderMs;
    stats.maxRenderMs = Math.max(stats.maxRenderMs, panels[0].lastRenderMs);
  };
  try {
    a = await analyse(state.model, [D.BOS, ...D.utf8(prompt)]);
    a.live = true;
    app.liveAnalysis = a;
    layout(1);
    headOptions(a.N);
    panels[0].sel = -1;
    panels[0].set(a);
    status("generating\u2026");
    stats.start = performance.now();
    const body = { ids: a.ids.slice(1), model: state.model, max_tokens: Number($("max-tokens").value) || 200,
      temperature: Number($("temperature").value), stream: true, attention: true, logprobs: 5,
      ...(app.seed !== undefined ? { seed: app.seed } : {}) };
    await api.stream("v1/generate", body, (ev) => {
      if (!ev.token) return;
      D.appendToken(a, ev.token);
      stats.tokens++;
      if (!pending) {
        pending = true;
        setTimeout(() => requestAnimationFrame(frame), Math.max(0, FRAME_MS - (performance.now() - last)));
      }
    }, ctl.signal);
    stats.end = performance.now();
    streaming = false;
  } catch (e) {
    stats.end = performance.now();
    streaming = false;
    if (e.name !== "AbortError") { status(e.message, true); finishGeneration(ctl); return; }
    stats.stopped = true;
  }
  finishGeneration(ctl);
  if (!a || run !== runs) return;
  const secs = (stats.end - stats.start) / 1000;
  const how = `${stats.stopped ? "stopped" : "done"}: ${stats.tokens} tokens in ${secs.toFixed(2)} s ` +
    `(${(stats.tokens / secs).toFixed(0)} tokens/s), ${stats.frames} frames drawn, longest ${stats.maxRenderMs.toFixed(1)} ms`;
  state.text = new TextDecoder().decode(new Uint8Array(a.ids.slice(1).filter((b) => b < 256)));
  $("text").value = state.text;
  if (app.limits && a.ids.length - 1 > app.limits.max_attention_tokens) {
    // Longer than the server maps at once: the streamed rows stay (the last position has none).
    a.live = false;
    panels[0].set(a);
    status(how + `; longer than the server's ${app.limits.max_attention_tokens}-token attention limit, so the streamed rows are shown`);
    stats.done = true;
    return;
  }
  // The finished text analysed whole: the rows of its last position and the server's summary.
  try {
    const full = await analyse(state.model, a.ids);
    if (run !== runs) return;
    panels[0].set(full);
    status(how);
    stats.done = true;
    saveHash();
  } catch (e) {
    status(e.message, true);
  }
}

function finishGeneration(ctl) {
  if (generation === ctl) generation = null;
  $("stop").disabled = true;
  $("generate").disabled = false;
}

// ---- export -----------------------------------------------------------------

function download(name, blob) {
  const url = URL.createObjectURL(blob), link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

const slug = (s) => s.replace(/[^A-Za-z0-9._-]+/g, "_");

function exportJSON() {
  const out = panels.filter((p) => p.a).map((p) => {
    const a = p.a;
    return {
      model: a.model, window: a.W, heads: a.N, attention: a.mechanism, format: "band",
      tokens: a.ids.map((id) => ({ id, bytes: id < 256 ? [id] : [] })),
      logprobs: a.lp.map((x) => (Number.isNaN(x) ? null : x)),
      maps: a.rows.map((h) => h.map((r) => (r ? Array.from(r) : null))),
      summary: D.summary(a),
    };
  });
  download(`attention-${slug(state.model)}.json`, new Blob([JSON.stringify({ panels: out }, null, 1)], { type: "application/json" }));
}

function exportCSV() {
  const lines = ["panel,model,head,position,key_position,distance,weight"];
  panels.forEach((p, k) => {
    const a = p.a;
    if (!a) return;
    a.rows.forEach((rows, h) => rows.forEach((r, t) => {
      if (!r) return;
      const lo = t + 1 - r.length;
      r.forEach((w, j) => lines.push(`${k},"${a.model.replace(/"/g, '""')}",${h},${t},${lo + j},${t - lo - j},${w}`));
    }));
  });
  download(`attention-${slug(state.model)}.csv`, new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
}

function exportPNG() {
  if (!panels[0] || !panels[0].a) return;
  panels[0].heat.toBlob((b) => download(`attention-${slug(state.model)}-${state.head < 0 ? "mean" : "head" + state.head}.png`, b));
}

// ---- start ----------------------------------------------------------------

function wire() {
  $("key").value = api.getKey();
  $("key").addEventListener("change", async () => {
    api.setKey($("key").value.trim());
    try { await loadModels(); status("key accepted"); } catch (e) { status(e.message, true); }
  });
  $("analyse").addEventListener("click", run);
  $("text").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run(); });
  $("model").addEventListener("change", async () => { state.model = $("model").value; await loadCard().catch(() => {}); run(); });
  $("model2").addEventListener("change", () => { state.model2 = $("model2").value; run(); });
  $("mode").addEventListener("change", () => {
    state.mode = $("mode").value;
    if (state.mode === "texts" && !$("text2").value) $("text2").value = "It is not down on any map; true places never are.";
    syncControls();
    run();
  });
  $("head").addEventListener("change", () => app.setHead(Number($("head").value)));
  $("dense").addEventListener("change", () => { state.dense = $("dense").checked; renderAll(); saveHash(); });
  $("scale").addEventListener("change", () => { state.scale = $("scale").value; G.setScale(state.scale); renderAll(); saveHash(); });
  $("span").addEventListener("change", () => { state.span = Number($("span").value); renderAll(); saveHash(); });
  $("textcolour").addEventListener("change", () => { state.textColour = $("textcolour").value; renderAll(); saveHash(); });
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", stopGeneration);
  $("export-json").addEventListener("click", exportJSON);
  $("export-csv").addEventListener("click", exportCSV);
  $("export-png").addEventListener("click", exportPNG);
  $("export-link").addEventListener("click", () => {
    saveHash();
    const l = $("link");
    l.hidden = false;
    l.value = location.href;
    l.select();
  });
  window.addEventListener("hashchange", () => { loadHash(); syncControls(); run(); });
  let resize = 0;
  window.addEventListener("resize", () => { clearTimeout(resize); resize = setTimeout(renderAll, 150); });
}

async function start() {
  wire();
  loadHash();
  $("prompt").value = "The whale ";
  try {
    await loadModels();
  } catch (e) {
    status(e.status === 401 ? "This server needs an API key: type it above." : e.message, true);
    syncControls();
    return;
  }
  await run();
}

// For tests and the curious: the panels, their drawn matrices and timings.
window.attnlmInspector = { app, state, panels, analyse, render: renderAll, ready: start() };
