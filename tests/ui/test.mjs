// The inspector page in a real browser (Debian's chromium driven by
// playwright-core) against real attnlm-server processes, each started with
// --port 0 --port-file and stopped with SIGTERM (exit 0 required).
//
//   node test.mjs SERVER_BINARY      (from tests/ui/run.sh)
//
// Fails on any console error, any uncaught page error and any request to
// another origin.  Timings are printed, never asserted.  Env:
//   CHROMIUM            the browser (default /usr/bin/chromium)
//   ATTNLM_UI_SCREENSHOT where the README's screenshot goes (default build/ui/inspector.png)
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "../..");
const SERVER = path.resolve(ROOT, process.argv[2] || "build/attnlm-server");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOT = path.resolve(ROOT, process.env.ATTNLM_UI_SCREENSHOT || "build/ui/inspector.png");
const DEFAULT_MODEL = path.join(ROOT, "models/default.safetensors");
const FIX_A = path.join(ROOT, "tests/fixtures/wide_gru_multihead.safetensors"); // 4 heads
const FIX_B = path.join(ROOT, "tests/fixtures/gru_dot.safetensors");
const MOBY = "Call me Ishmael. Some years ago\u2014never mind how long precisely\u2014having little or no money in my " +
  "purse, and nothing particular to interest me on shore, I thought I would sail about a little and see the watery " +
  "part of the world.";
const TIMEOUT = 120000;

let passed = 0, failed = 0;
const timings = [];
function check(cond, msg, detail) {
  if (cond) { passed++; console.log("ok   " + msg); }
  else { failed++; console.log("FAIL " + msg + (detail !== undefined ? ": " + JSON.stringify(detail).slice(0, 400) : "")); }
  return cond;
}
const timing = (msg) => { timings.push(msg); console.log("time " + msg); };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- servers --------------------------------------------------------------

async function startServer(models, flags = []) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "attnlm-ui-"));
  const portFile = path.join(dir, "port");
  const args = ["--host", "127.0.0.1", "--port", "0", "--port-file", portFile, ...models.flatMap((m) => ["--model", m]), ...flags];
  const proc = spawn(SERVER, args, { env: { ...process.env, OPENBLAS_NUM_THREADS: "1" }, stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  proc.stderr.on("data", (d) => { log += d; });
  const exited = new Promise((r) => proc.on("exit", (code, sig) => r(code === null ? sig : code)));
  for (let i = 0; ; i++) {
    try {
      const t = fs.readFileSync(portFile, "utf8");
      if (t.endsWith("\n")) {
        const port = Number(t);
        return { port, base: `http://127.0.0.1:${port}`, proc, exited, log: () => log, dir };
      }
    } catch (_) { /* not yet */ }
    if (proc.exitCode !== null || i > 1200) throw new Error(`server did not start: ${log}`);
    await sleep(50);
  }
}

async function stopServer(s) {
  s.proc.kill("SIGTERM");
  const code = await s.exited;
  const sanitizer = /ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:/.test(s.log());
  check(code === 0 && !sanitizer, "server exits 0 after SIGTERM" + (sanitizer ? " (sanitizer report)" : ""), code);
  fs.rmSync(s.dir, { recursive: true, force: true });
}

async function api(s, method, p, body, key) {
  const headers = body ? { "Content-Type": "application/json" } : {};
  if (key) headers.Authorization = "Bearer " + key;
  const r = await fetch(s.base + p, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${p} -> ${r.status} ${text.slice(0, 200)}`);
  return p === "/metrics" ? text : JSON.parse(text);
}

async function metric(s, name) {
  const text = await api(s, "GET", "/metrics");
  const m = text.match(new RegExp("^" + name + " (\\S+)$", "m"));
  return m ? Number(m[1]) : NaN;
}

const bytesOf = (text) => Array.from(new TextEncoder().encode(text));

// ---- the browser ----------------------------------------------------------

async function browser() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "attnlm-chromium-"));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    acceptDownloads: true,
    viewport: { width: 1360, height: 1000 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  ctx.setDefaultTimeout(TIMEOUT);
  return { ctx, close: async () => { await ctx.close(); fs.rmSync(profile, { recursive: true, force: true }); } };
}

// A page watched for console errors, page errors and requests elsewhere.
async function watchedPage(ctx, origin, allowConsole = () => false) {
  const page = await ctx.newPage();
  const w = { page, errors: [], foreign: [] };
  page.on("console", (m) => { if (m.type() === "error" && !allowConsole(m.text())) w.errors.push(m.text()); });
  page.on("pageerror", (e) => w.errors.push("page error: " + e.message));
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith("data:") && !u.startsWith("blob:") && new URL(u).origin !== origin) w.foreign.push(u);
  });
  return w;
}

// The drawn matrix of panel k and what the page holds.
const drawn = (page, k = 0) => page.evaluate((k) => {
  const p = window.attnlmInspector.panels[k], m = p.drawn;
  return { rows: m.rows, cols: m.cols, head: m.head, dense: m.dense, values: Array.from(m.values, (x) => (Number.isNaN(x) ? null : x)),
    ids: p.a.ids, model: p.a.model, sel: p.sel, canvas: { ...p.heat.dataset } };
}, k);

// Compares a drawn matrix with /v1/attention's maps (band, or dense) of head h (-1: the mean).
function sameAsApi(m, att, h, dense) {
  // The band view has a column per look-back distance the text can have: min(window, T).
  const T = att.tokens.length, W = Math.min(att.window, T), heads = h < 0 ? [...Array(att.heads).keys()] : [h];
  if (m.rows !== T || m.cols !== (dense ? T : W)) return `shape ${m.rows}x${m.cols}, want ${T}x${dense ? T : W}`;
  let worst = 0;
  for (let t = 0; t < T; t++)
    for (let c = 0; c < m.cols; c++) {
      let want = 0;
      for (const k of heads) {
        const row = att.maps[k][t];
        want += (dense ? row[c] : c < row.length ? row[row.length - 1 - c] : NaN) / heads.length;
      }
      const got = m.values[t * m.cols + c];
      if (Number.isNaN(want)) { if (got !== null) return `cell ${t},${c}: ${got}, want blank`; continue; }
      worst = Math.max(worst, Math.abs(got - want));
    }
  return worst <= 1e-6 ? null : `largest difference ${worst}`;
}

async function ready(page) {
  await page.waitForFunction(() => window.attnlmInspector);
  await page.evaluate(() => window.attnlmInspector.ready);
}

async function analyse(page, text) {
  await page.fill("#text", text);
  const want = bytesOf(text).length + 1;
  await page.click("#analyse");
  await page.waitForFunction((n) => {
    const p = window.attnlmInspector.panels[0];
    return p && p.a && p.a.ids.length === n && p.drawn && p.drawn.rows === n;
  }, want);
}

async function downloaded(page, selector) {
  const [d] = await Promise.all([page.waitForEvent("download"), page.click(selector)]);
  return { name: d.suggestedFilename(), data: fs.readFileSync(await d.path()) };
}

// ---- run 1: the default model, behind an API key ---------------------------

async function runDefault(b) {
  const KEY = "ui-test-key";
  const s = await startServer([DEFAULT_MODEL], ["--workers", "2", "--api-key", KEY, "--max-new-tokens", "100000", "--max-attention-tokens", "2048"]);
  try {
    // Without the key the page says so (the browser reports the refused call: allowed here only).
    const w = await watchedPage(b.ctx, s.base, (t) => /401/.test(t));
    const { page } = w;
    const t0 = Date.now();
    await page.goto(s.base + "/");
    await ready(page);
    check(/API key/.test(await page.textContent("#status")), "without a key the page asks for one",
      await page.textContent("#status"));
    await page.fill("#key", KEY);
    await page.press("#key", "Tab");
    await page.waitForFunction(() => document.querySelector("#model").options.length > 0);
    check(await page.evaluate(() => sessionStorage.getItem("attnlm-api-key")) === "ui-test-key",
      "the key is kept in sessionStorage");
    check(await page.evaluate(() => localStorage.length === 0 && document.cookie === ""), "and nowhere else");
    const card = await api(s, "GET", "/v1/model", null, KEY);
    await page.waitForFunction(() => document.querySelector("#card-body table"));
    check((await page.textContent("#card-body")).includes(card.sha256), "the model card shows /v1/model (sha256)");
    const consoleBefore = w.errors.length;

    // Score a text: the heatmap is /v1/attention's band map.
    await analyse(page, MOBY);
    const ids = bytesOf(MOBY);
    const att = await api(s, "POST", "/v1/attention", { text: MOBY, summary: true }, KEY);
    let m = await drawn(page);
    check(m.ids.length === ids.length + 1 && m.ids.slice(1).every((x, i) => x === ids[i]), "the page analysed the text's bytes");
    check(sameAsApi(m, att, 0, false) === null, "heatmap cells are /v1/attention's band weights", sameAsApi(m, att, 0, false));
    check(m.canvas.rows === String(ids.length + 1) && m.canvas.cols === String(Math.min(att.window, ids.length + 1)),
      "the canvas says what it drew", m.canvas);
    const shown = await page.evaluate(() => document.querySelector(".panel canvas.heatmap").getBoundingClientRect().width);
    check(shown >= 2 * m.cols, "every look-back column is at least 2 pixels wide on screen (long windows scroll)",
      { shown, cols: m.cols });
    const renderMs = Number(await page.getAttribute(".panel", "data-render-ms"));
    timing(`default model, ${ids.length + 1} positions x 1 head, band: panel drawn in ${renderMs.toFixed(1)} ms`);
    const pageSummary = await page.evaluate(() => window.attnlmInspector.panels[0].a.summary);
    check(JSON.stringify(pageSummary) === JSON.stringify(att.summary), "tracks and distance chart read the API's summary");

    // Characters: the em dashes are one character of three bytes each.
    const spans = await page.$$eval(".textview span[data-p0]", (ss) => ss.map((s) => [s.textContent, Number(s.dataset.p0), Number(s.dataset.p1)]));
    const dash = spans.find((x) => x[0] === "\u2014");
    check(spans.length === [...MOBY].length + 1 && dash && dash[2] - dash[1] === 2, "text shown as characters (UTF-8 bytes grouped)", spans.length);
    const colours = await page.$$eval(".textview span[data-p0]", (ss) => new Set(ss.slice(1).map((s) => s.style.backgroundColor)).size);
    check(colours > 5, "characters coloured by surprisal", colours);

    // Attention gain: the page holds /v1/score's gains, draws them as a track and can colour the text by them.
    const gained = await api(s, "POST", "/v1/score", { text: MOBY, top_k: 0, attention_gain: true }, KEY);
    const pageGain = await page.evaluate(() => window.attnlmInspector.panels[0].a.gain.slice(1));
    check(pageGain.length === gained.tokens.length && pageGain.every((g, i) => Math.abs(g - gained.tokens[i].gain) < 1e-6),
      "the page's attention gains are /v1/score's", pageGain.slice(0, 5));
    await page.selectOption("#textcolour", "gain");
    await page.waitForFunction(() => /attention gain/.test(document.querySelector(".panel .legend").textContent));
    const gainColours = await page.$$eval(".textview span[data-p0]", (ss) => ss.slice(1).map((s) => s.style.backgroundColor));
    const gainTinted = gainColours.filter((c) => c && c !== "transparent").length;
    const big = gained.tokens.filter((t) => Math.abs(t.gain) >= 0.02).length;
    check(gainTinted > 0 && /colour=gain/.test(page.url()), "the text coloured by attention gain, kept in the address", { gainTinted, big });
    await page.selectOption("#textcolour", "surprisal");

    // A phone's width: the page fits without sideways scrolling.
    await page.setViewportSize({ width: 390, height: 844 });
    await page.evaluate(() => window.attnlmInspector.render());
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 0, "at 390 pixels wide the page does not scroll sideways", overflow);
    await page.setViewportSize({ width: 1360, height: 1000 });
    await page.evaluate(() => window.attnlmInspector.render());

    // Hover: the likeliest alternatives of a position, from /v1/score.
    const score = await api(s, "POST", "/v1/score", { text: MOBY, top_k: 5 }, KEY);
    await page.hover(".textview span[data-p0='9']");
    await page.waitForSelector("#tip:not([hidden])");
    const tip = await page.textContent("#tip");
    const alt = score.tokens[8].top[0];
    const altPct = (Math.exp(alt.logprob) * 100).toFixed(alt.logprob > Math.log(0.1) ? 1 : 2) + "%";
    check(tip.includes("position 9") && tip.includes("likeliest") && tip.includes(altPct), "hover shows the alternatives", tip);

    // Click a position: its attention over the text and its row.
    const target = spans.find((x) => x[0] === "I" && x[1] > 80)[1]; // the "I" of "I thought"
    await page.click(`.textview span[data-p0='${target}']`);
    await page.waitForFunction((t) => window.attnlmInspector.panels[0].sel === t, target);
    const shaded = await page.$$eval(".textview span[data-p0]", (ss, t) => ss.filter((s) => Number(s.dataset.p0) <= t && s.style.backgroundColor).length, target);
    const after = await page.$$eval(".textview span[data-p0]", (ss, t) => ss.filter((s) => Number(s.dataset.p0) > t && s.style.backgroundColor).length, target);
    check(shaded > 0 && after === 0, "a clicked position shades the positions it attends to, and none after it", [shaded, after]);
    check(/Attention of position/.test(await page.textContent(".panel .legend")), "the text's legend says so");
    check(page.url().includes("pos=" + target), "the selection is in the address", page.url());
    await page.selectOption("#scale", "log");
    await page.waitForFunction(() => /log scale/.test(document.querySelector(".panel").textContent));
    await page.mouse.move(0, 0);
    await page.waitForSelector("#tip", { state: "hidden" });
    check(page.url().includes("scale=log"), "the colour scale is in the address");
    await page.screenshot({ path: SHOT, fullPage: false });
    console.log("info screenshot " + path.relative(ROOT, SHOT));

    // Occlusion attribution of that position.
    await page.click(".panel button");
    await page.waitForFunction(() => /Target/.test(document.querySelector(".attrib").textContent));
    const ref = await api(s, "POST", "/v1/attribution", { ids, target }, KEY);
    const got = await page.evaluate(() => window.attnlmInspector.panels[0].attrib);
    // "timings" measure each run, so the two answers are compared without them
    const untimed = (o) => (o ? Object.fromEntries(Object.entries(o).filter(([k]) => k !== "timings")) : o);
    check(JSON.stringify(untimed(got)) === JSON.stringify(untimed(ref)), "attribution shown is /v1/attribution's",
          got && got.usage);
    const tinted = await page.$$eval(".textview span[data-p0]", (ss) => ss.filter((s) => /rgba\((47|217)/.test(s.style.backgroundColor)).length);
    check(tinted > 3, "occluded positions tinted by their change", tinted);

    // Exports: JSON and CSV are the API's maps; the PNG is the heatmap.
    const json = await downloaded(page, "#export-json");
    const ex = JSON.parse(json.data.toString()).panels[0];
    const same = ex.maps[0].every((row, t) => row.length === att.maps[0][t].length && row.every((x, j) => Math.abs(x - att.maps[0][t][j]) <= 1e-7));
    check(same && ex.tokens.length === att.tokens.length && ex.window === att.window, "exported JSON holds /v1/attention's maps", json.name);
    const csv = (await downloaded(page, "#export-csv")).data.toString().trim().split("\n");
    const cells = att.maps[0].reduce((n, r) => n + r.length, 0);
    const last = csv[csv.length - 1].split(",");
    const T = att.tokens.length, lastRow = att.maps[0][T - 1];
    check(csv.length === cells + 1 && Number(last[3]) === T - 1 && Number(last[5]) === 0 &&
      Math.abs(Number(last[6]) - lastRow[lastRow.length - 1]) <= 1e-7, "exported CSV has one line per weight", csv.length);
    const png = (await downloaded(page, "#export-png")).data;
    const canvasSize = await page.evaluate(() => [window.attnlmInspector.panels[0].heat.width, window.attnlmInspector.panels[0].heat.height]);
    check(png.subarray(1, 4).toString() === "PNG" && png.readUInt32BE(16) === canvasSize[0] && png.readUInt32BE(20) === canvasSize[1],
      "exported PNG is the heatmap", canvasSize);

    // The address reproduces the view (dense, selected position).
    await page.check("#dense");
    await page.waitForFunction(() => window.attnlmInspector.panels[0].drawn.dense);
    m = await drawn(page);
    const denseAtt = await api(s, "POST", "/v1/attention", { text: MOBY, format: "dense" }, KEY);
    check(sameAsApi(m, denseAtt, 0, true) === null, "dense heatmap cells are /v1/attention's dense weights", sameAsApi(m, denseAtt, 0, true));
    await page.click("#export-link");
    const link = await page.inputValue("#link");
    const w2 = await watchedPage(b.ctx, s.base);
    await w2.page.addInitScript((k) => sessionStorage.setItem("attnlm-api-key", k), KEY);
    await w2.page.goto(link);
    await ready(w2.page);
    const m2 = await drawn(w2.page);
    check(m2.dense && m2.sel === target && JSON.stringify(m2.values) === JSON.stringify(m.values) &&
      (await w2.page.inputValue("#text")) === MOBY, "a link opens the same view", { dense: m2.dense, sel: m2.sel });
    check(w2.errors.length === 0 && w2.foreign.length === 0, "no console error or foreign request on the linked page", w2);
    await w2.page.close();
    await page.uncheck("#dense");

    // 512 positions (the server's default limit).
    const long = ("It was the whale. " + MOBY.replace(/\u2014/g, "--")).repeat(4).slice(0, 511); // 511 bytes
    await analyse(page, long);
    m = await drawn(page);
    const longAtt = await api(s, "POST", "/v1/attention", { text: long }, KEY);
    check(sameAsApi(m, longAtt, 0, false) === null, "512 positions drawn as the API's", sameAsApi(m, longAtt, 0, false));
    timing(`default model, 512 positions x 1 head (window 64), band: panel drawn in ${Number(await page.getAttribute(".panel", "data-render-ms")).toFixed(1)} ms`);

    // Live generation, stopped: rows arrive as tokens do; the server counts the cancel.
    const cancelled = await metric(s, "attnlm_cancelled_total");
    await page.fill("#prompt", "The whale ");
    await page.fill("#max-tokens", "100000"); // long enough to be stopped on any machine
    await page.evaluate(() => { window.attnlmInspector.app.seed = 11; });
    await page.click("#generate");
    await page.waitForFunction(() => { const l = window.attnlmInspector.app.live; return l && l.frames >= 3; });
    await page.click("#stop");
    const frames = await page.evaluate(() => window.attnlmInspector.app.live.rows);
    check(frames.length >= 3 && frames.every((n, i) => i === 0 || n > frames[i - 1]), "rows appear as tokens arrive, frame by frame",
      frames.slice(0, 8));
    await page.waitForFunction(() => window.attnlmInspector.app.live.done);
    const live = await page.evaluate(() => {
      const { app } = window.attnlmInspector, a = app.liveAnalysis;
      return { stopped: app.live.stopped, tokens: app.live.tokens, ids: a.ids, rows: a.rows[0].map((r) => (r ? Array.from(r) : null)) };
    });
    check(live.stopped && live.tokens < 100000, "stop ends the generation early", live.tokens);
    let counted = cancelled;
    for (let i = 0; i < 200 && counted === cancelled; i++) { await sleep(50); counted = await metric(s, "attnlm_cancelled_total"); }
    check(counted === cancelled + 1, "the server counted the cancel in attnlm_cancelled_total", [cancelled, counted]);
    // Rows of a prefix do not depend on what follows: the first 2048 positions are checked.
    const fits = live.ids.length <= 2049, prefix = live.ids.slice(1, 2049);
    const liveAtt = await api(s, "POST", "/v1/attention", { ids: prefix }, KEY);
    let worst = 0, known = 0;
    live.rows.slice(0, prefix.length + 1).forEach((r, t) => {
      if (r) { known++; r.forEach((x, j) => { worst = Math.max(worst, Math.abs(x - liveAtt.maps[0][t][j])); }); }
    });
    check(known >= Math.min(live.ids.length - 1, prefix.length + 1) && worst < 1e-4, "live rows are the attention of the generated text",
      { known, worst, tokens: live.tokens });
    m = await drawn(page);
    if (fits) check(m.rows === live.ids.length && sameAsApi(m, liveAtt, 0, false) === null, "after the stop the whole text is analysed");
    else check(m.rows === live.ids.length && /attention limit/.test(await page.textContent("#status")),
      "after the stop, a text over the attention limit keeps its streamed rows", live.ids.length);

    // Keep-up: generations to their end, drawn as they stream, each followed by the same stream
    // read bare in the same page; three pairs, medians reported (the machine may be busy).
    await page.fill("#max-tokens", "1500");
    const pairs = [];
    for (let k = 0; k < 3; k++) {
      await page.click("#generate");
      await page.waitForFunction(() => window.attnlmInspector.app.live.done);
      const st = await page.evaluate(() => window.attnlmInspector.app.live);
      check(st.tokens === 1500 && !st.stopped, "a generation runs to its end while drawn", st.tokens);
      const bare = await page.evaluate(async (k) => {
        const t0 = performance.now();
        const r = await fetch("v1/generate", { method: "POST", headers: { "Content-Type": "application/json", Authorization: "Bearer " + k },
          body: JSON.stringify({ prompt: "The whale ", max_tokens: 1500, temperature: 0.7, seed: 11, stream: true, attention: true, logprobs: 5 }) });
        const rd = r.body.getReader();
        for (;;) { const { done } = await rd.read(); if (done) break; }
        return performance.now() - t0;
      }, KEY);
      pairs.push({ drawn: st.end - st.start, bare, frames: st.frames, mean: st.renderMs / st.frames, longest: st.maxRenderMs,
        busy: st.renderMs / (st.end - st.start) });
    }
    const med = (f) => pairs.map(f).sort((x, y) => x - y)[1];
    timing(`live generation, 1500 tokens, median of 3: drawn as it streams ${(med((p) => p.drawn) / 1000).toFixed(2)} s ` +
      `(${(1500 / (med((p) => p.drawn) / 1000)).toFixed(0)} tokens/s, ${med((p) => p.frames)} frames of ${med((p) => p.mean).toFixed(1)} ms, ` +
      `longest ${med((p) => p.longest).toFixed(1)} ms; drawing took ${(100 * med((p) => p.busy)).toFixed(0)}% of the stream's time), the same stream read bare ${(med((p) => p.bare) / 1000).toFixed(2)} s ` +
      `(${(1500 / (med((p) => p.bare) / 1000)).toFixed(0)} tokens/s); each pair: ` +
      pairs.map((p) => `${(p.drawn / 1000).toFixed(2)}/${(p.bare / 1000).toFixed(2)}`).join(", "));

    // Synthetic 512 x 4 heads, window 64: the drawing alone.
    const synth = await page.evaluate(() => {
      const { panels } = window.attnlmInspector, T = 512, N = 4, W = 64, out = {};
      const rows = [];
      for (let h = 0; h < N; h++) {
        rows.push([]);
        for (let t = 0; t < T; t++) {
          const n = Math.min(t + 1, W), r = new Float32Array(n);
          let s = 0;
          for (let j = 0; j < n; j++) s += (r[j] = Math.random() ** 4);
          for (let j = 0; j < n; j++) r[j] /= s;
          rows[h].push(r);
        }
      }
      const a = { model: "synthetic", ids: [256, ...Array(T - 1).fill(97)], N, W, mechanism: "multihead", rows,
        lp: Array(T).fill(-1), top: Array(T).fill(null), summary: null, live: false };
      const st = window.attnlmInspector.state;
      for (const dense of [false, true]) {
        st.dense = dense;
        const t0 = performance.now();
        panels[0].set(a);
        out[dense ? "dense" : "band"] = performance.now() - t0;
      }
      st.dense = false;
      return out;
    });
    timing(`synthetic 512 positions x 4 heads (window 64): whole panel (text, tracks, heatmap, 5 thumbnails, chart, summary computed in the page) ` +
      `${synth.band.toFixed(1)} ms band, ${synth.dense.toFixed(1)} ms dense`);

    check(w.errors.length === consoleBefore, "no console error once the key is in", w.errors.slice(consoleBefore));
    check(w.foreign.length === 0, "no request to another origin", w.foreign);
    timing(`run 1 took ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    await page.close();
  } finally {
    await stopServer(s);
  }
}

// ---- run 2: two models, comparison --------------------------------------------

async function runTwoModels(b) {
  const s = await startServer([FIX_A, FIX_B], ["--workers", "2"]);
  try {
    const t0 = Date.now();
    const list = (await api(s, "GET", "/v1/models")).data.map((x) => x.id);
    const w = await watchedPage(b.ctx, s.base);
    const { page } = w;
    await page.goto(s.base + "/");
    await ready(page);
    const options = await page.$$eval("#model option", (os) => os.map((o) => o.value));
    check(JSON.stringify(options) === JSON.stringify(list) && list.length === 2, "the model list is /v1/models", options);

    const text = "It is not down on any map; true places never are.";
    await analyse(page, text);
    const att = await api(s, "POST", "/v1/attention", { text, model: list[0] });
    check(att.heads === 4, "first fixture has 4 heads", att.heads);
    const heads = await page.$$eval("#head option", (os) => os.map((o) => o.value));
    check(heads.join() === "-1,0,1,2,3", "head selector: the mean and each head", heads);
    for (const h of [2, -1]) {
      await page.selectOption("#head", String(h));
      await page.waitForFunction((h) => window.attnlmInspector.panels[0].drawn.head === h, h);
      const m = await drawn(page);
      check(sameAsApi(m, att, h, false) === null, `heatmap of ${h < 0 ? "the head mean" : "head " + h} is the API's`, sameAsApi(m, att, h, false));
    }
    check((await page.$$(".thumbs figure")).length === 5, "a thumbnail per head and the mean");
    await page.click(".thumbs figure:nth-child(2)");
    await page.waitForFunction(() => window.attnlmInspector.panels[0].drawn.head === 0);
    check((await page.inputValue("#head")) === "0", "a thumbnail selects its head");

    // Compare: one text under both models.
    await page.selectOption("#mode", "models");
    await page.waitForFunction(() => window.attnlmInspector.panels.length === 2 && window.attnlmInspector.panels[1].a);
    await page.selectOption("#model2", list[1]);
    await page.waitForFunction((id) => { const p = window.attnlmInspector.panels[1]; return p.a && p.a.model === id; }, list[1]);
    const attB = await api(s, "POST", "/v1/attention", { text, model: list[1] });
    const [m0, m1] = [await drawn(page, 0), await drawn(page, 1)];
    check(m0.model === list[0] && m1.model === list[1], "two panels, one per model", [m0.model, m1.model]);
    check(sameAsApi(m0, att, 0, false) === null && sameAsApi(m1, attB, 0, false) === null, "each panel draws its model's maps");
    const boxes = await page.$$eval(".panel", (ps) => ps.map((p) => p.getBoundingClientRect()).map((r) => [r.left, r.top]));
    check(boxes[1][0] > boxes[0][0] && Math.abs(boxes[1][1] - boxes[0][1]) < 2, "side by side", boxes);
    await page.click(".panel[data-panel='0'] .textview span[data-p0='10']");
    await page.waitForFunction(() => window.attnlmInspector.panels[1].sel === 10);
    check(true, "a position clicked in one panel is selected in both");
    await page.screenshot({ path: path.join(ROOT, "build/ui/inspector-compare.png") });

    // Compare: two texts under one model.
    const text2 = "Whenever I find myself growing grim about the mouth";
    await page.selectOption("#mode", "texts");
    await page.fill("#text2", text2);
    await page.click("#analyse");
    await page.waitForFunction((n) => { const p = window.attnlmInspector.panels[1]; return p && p.a && p.a.ids.length === n; }, bytesOf(text2).length + 1);
    const att2 = await api(s, "POST", "/v1/attention", { text: text2, model: list[0] });
    const m2 = await drawn(page, 1);
    check(m2.model === list[0] && sameAsApi(m2, att2, 0, false) === null, "second text under the first model");
    check(/mode=texts/.test(page.url()) && page.url().includes("text2="), "the comparison is in the address");

    // 512 positions x 4 heads of real data, dense.
    const long = (text + " ").repeat(11).slice(0, 511);
    await page.selectOption("#mode", "single");
    await analyse(page, long);
    await page.selectOption("#head", "-1");
    await page.check("#dense");
    await page.waitForFunction(() => window.attnlmInspector.panels[0].drawn.dense);
    const denseAtt = await api(s, "POST", "/v1/attention", { text: long, model: list[0], format: "dense" });
    check(sameAsApi(await drawn(page), denseAtt, -1, true) === null, "512 x 512 dense mean of 4 heads is the API's");
    timing(`fixture, 512 positions x 4 heads (window 5), dense mean with thumbnails: panel drawn in ${Number(await page.getAttribute(".panel", "data-render-ms")).toFixed(1)} ms`);

    check(w.errors.length === 0, "no console error", w.errors);
    check(w.foreign.length === 0, "no request to another origin", w.foreign);
    timing(`run 2 took ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    await page.close();
  } finally {
    await stopServer(s);
  }
}

async function main() {
  fs.mkdirSync(path.dirname(SHOT), { recursive: true });
  const t0 = Date.now();
  const b = await browser();
  try {
    for (const run of [runDefault, runTwoModels]) {
      try { await run(b); } catch (e) { check(false, run.name + " ran to its end", e.stack || String(e)); }
    }
  } finally {
    await b.close();
  }
  timing(`browser test took ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  console.log(`ui: ${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

main();
