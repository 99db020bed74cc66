// panel.js -- every view of one analysis (a model and a text): the text
// coloured by surprisal or by the selected position's attention, the
// per-position tracks, the heatmap with its heads, the weight by distance
// and occlusion attribution.  Two panels side by side make a comparison.

import * as D from "./data.js";
import * as G from "./draw.js";

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

const pct = (lp) => (Math.exp(lp) * 100).toFixed(lp > Math.log(0.1) ? 1 : 2) + "%";

export class Panel {
  constructor(parent, app, index) {
    this.app = app;
    this.index = index;
    this.a = null;
    this.sel = -1;
    this.attrib = null;
    this.drawn = null;
    this.lastRenderMs = 0;
    const root = (this.el = el("section", "panel"));
    root.dataset.panel = String(index);
    this.title = root.appendChild(el("h2"));
    this.stats = root.appendChild(el("div", "stats"));
    // Two columns when the panel is wide (one panel): the text and its figures, and the heatmap.
    const cols = root.appendChild(el("div", "cols"));
    const left = (this.left = cols.appendChild(el("div"))), right = (this.right = cols.appendChild(el("div")));
    left.appendChild(el("h3", null, "Text"));
    this.textLegend = left.appendChild(el("div", "legend"));
    this.text = left.appendChild(el("div", "textview"));
    left.appendChild(el("h3", null, "Per position"));
    this.tracks = left.appendChild(el("canvas", "tracks"));
    this.heatTitle = right.appendChild(el("h3"));
    this.thumbs = right.appendChild(el("div", "thumbs"));
    const wrap = right.appendChild(el("div", "heatwrap"));
    this.heat = wrap.appendChild(el("canvas", "heatmap"));
    const leg = right.appendChild(el("div", "legend"));
    const bar = el("canvas");
    G.legend(bar);
    this.scaleNote = el("span");
    leg.append(bar, this.scaleNote);
    left.appendChild(el("h3", null, "Mean weight by distance"));
    this.dist = left.appendChild(el("canvas", "dist"));
    this.distLegend = left.appendChild(el("div", "legend"));
    left.appendChild(el("h3", null, "Occlusion attribution"));
    const row = left.appendChild(el("div", "row"));
    this.attribButton = row.appendChild(el("button", null, "Attribute the selected position"));
    this.attribButton.disabled = true;
    this.attribInfo = left.appendChild(el("div", "attrib"));
    parent.appendChild(root);

    this.attribButton.addEventListener("click", () => this.attribute());
    this.text.addEventListener("click", (ev) => {
      const s = ev.target.closest("span[data-p0]");
      if (s) this.app.select(this, Number(s.dataset.p1));
    });
    this.text.addEventListener("mouseover", (ev) => {
      const s = ev.target.closest("span[data-p0]");
      if (s) this.app.tip(ev, this.charTip(Number(s.dataset.p0), Number(s.dataset.p1)));
    });
    this.text.addEventListener("mouseleave", () => this.app.tip(null));
    this.heat.addEventListener("mousemove", (ev) => {
      const c = this.cellAt(ev);
      this.app.tip(c ? ev : null, c && this.cellTip(c));
    });
    this.heat.addEventListener("mouseleave", () => this.app.tip(null));
    this.heat.addEventListener("click", (ev) => {
      const c = this.cellAt(ev);
      if (c) this.app.select(this, c.t);
    });
  }

  set(a) {
    this.a = a;
    this.attrib = null;
    if (this.sel >= a.ids.length) this.sel = -1;
    this.render();
  }

  // Everything, timed (the page keeps the last figure in lastRenderMs).
  render() {
    const t0 = performance.now();
    const a = this.a;
    if (!a) return;
    const head = Math.min(this.app.state.head, a.N - 1), sum = D.summary(a);
    const series = head < 0 ? sum.average : sum.heads[head];
    this.title.textContent = a.model;
    const lps = a.lp.filter((x) => !Number.isNaN(x));
    const mean = lps.length ? -lps.reduce((s, x) => s + x, 0) / lps.length : NaN;
    this.stats.textContent = `${a.ids.length - 1} tokens \u00b7 ${a.mechanism} attention, ${a.N} head${a.N > 1 ? "s" : ""}, ` +
      `window ${a.W} \u00b7 ${Number.isNaN(mean) ? "" : `surprisal ${mean.toFixed(3)} nats/byte (${(mean / Math.LN2).toFixed(2)} bits) \u00b7 `}` +
      `mean look-back ${series.mean.lookback.toFixed(2)}` + (a.live ? " \u00b7 generating\u2026" : "");
    this.renderText(head);
    const width = Math.max(300, this.left.clientWidth - 2), heatWidth = Math.max(300, this.right.clientWidth - 4);
    G.tracks(this.tracks, { ...series, surprisal: a.lp.map((x) => -x), gain: a.gain }, a.ids.length, width, this.sel);
    this.renderHeat(head, heatWidth);
    G.distanceChart(this.dist, sum, width);
    this.distLegend.replaceChildren(...sum.heads.map((_, k) => {
      const s = el("span", null, "\u25a0 head " + k);
      s.style.color = G.HEAD_COLOURS[k % G.HEAD_COLOURS.length];
      return s;
    }), ...(a.N > 1 ? [el("span", null, "\u25a0 mean of the heads")] : []));
    this.attribButton.disabled = this.sel < 1 || a.live;
    this.lastRenderMs = performance.now() - t0;
    this.el.dataset.renderMs = this.lastRenderMs.toFixed(2);
  }

  renderText(head) {
    const a = this.a, chars = D.characters(a.ids), sel = this.sel;
    const at = this.attrib && this.attrib.target.position === sel ? this.attrib : null;
    let maxDelta = 0;
    const delta = new Map();
    if (at) for (const p of at.positions) { delta.set(p.position, p.delta); maxDelta = Math.max(maxDelta, Math.abs(p.delta)); }
    const spans = [];
    for (const c of chars) {
      const s = el("span", c.kind || null, c.show);
      s.dataset.p0 = c.p0; s.dataset.p1 = c.p1;
      if (at) {
        let d = 0;
        for (let p = c.p0; p <= c.p1; p++) d += delta.get(p) || 0;
        const x = maxDelta ? Math.min(1, Math.abs(d) / maxDelta) : 0;
        if (x > 0) s.style.backgroundColor = d < 0 ? `rgba(47,91,211,${0.12 + 0.75 * x})` : `rgba(217,45,32,${0.12 + 0.75 * x})`;
      } else if (sel >= 0) {
        let w = 0;
        for (let p = c.p0; p <= c.p1; p++) if (p <= sel) w += D.weight(a, head, sel, p) || 0;
        const x = G.weightIndex(w) / 255;
        if (w > 0) s.style.backgroundColor = `rgba(47,91,211,${x.toFixed(3)})`;
        if (x > 0.55) s.style.color = "#fff";
      } else if (c.kind !== "bos" && this.app.state.textColour === "gain") {
        let d = 0;
        for (let p = c.p0; p <= c.p1; p++) d += a.gain[p];
        s.style.backgroundColor = G.gainColour(d);
      } else if (c.kind !== "bos") {
        let sur = 0;
        for (let p = c.p0; p <= c.p1; p++) sur -= a.lp[p];
        s.style.backgroundColor = G.surprisalColour(sur);
      }
      if (sel >= c.p0 && sel <= c.p1) s.classList.add("sel");
      spans.push(s);
      if (c.newline) spans.push(document.createTextNode("\n"));
    }
    this.text.replaceChildren(...spans);
    this.textLegend.textContent = at
      ? `Occluding a position (with ${JSON.stringify(at.baseline.text)}) changes the log-probability of position ${sel}: blue where it drops (the position supported the prediction), red where it rises.`
      : sel >= 0 ? `Attention of position ${sel} (${head < 0 ? "mean of the heads" : "head " + head}) on the positions before it. Click it again to go back to surprisal.`
      : this.app.state.textColour === "gain"
      ? "Background: attention gain of each character, its log-probability minus the one without attention (green: attention helped, red: it hurt). Click to see a position's attention."
      : "Background: surprisal of each character (pale: expected, red: surprising). Hover for the likeliest alternatives; click to see a position's attention.";
  }

  renderHeat(head, width) {
    const a = this.a, dense = this.app.state.dense, T = a.ids.length;
    const m = (this.drawn = D.matrix(a, head, dense, this.app.state.span));
    // At least 2 pixels a column: a long window scrolls sideways in its frame rather than shrinking away.
    this.cw = Math.max(2, Math.min(14, Math.floor(width / m.cols)));
    this.ch = Math.max(1, Math.min(12, Math.floor(640 / Math.max(1, T))));
    G.heatmap(this.heat, m, this.cw, this.ch);
    this.scaleNote.textContent = (G.scale === "log" ? "weight 1e-4 \u2026 1, log scale" : "weight 0 \u2026 1, colour \u221d \u221aweight") +
      "; rows: positions; click a row or a character to see its attention";
    Object.assign(this.heat.dataset, { rows: m.rows, cols: m.cols, head: String(head), dense: String(dense) });
    if (this.sel >= 0) {
      const g = this.heat.getContext("2d");
      g.strokeStyle = "#d92d20"; g.lineWidth = 1;
      g.strokeRect(0.5, this.sel * this.ch + 0.5, this.heat.width - 1, Math.max(1, this.ch - 1));
    }
    this.heatTitle.textContent = `Attention, ${head < 0 ? "mean of the heads" : "head " + head} \u2014 columns: ` +
      (dense ? "positions" : `look-back 0 \u2026 ${m.cols - 1}` + (m.cols < a.W ? ` (window ${a.W})` : ""));
    if (a.N > 1) {
      const figs = [];
      for (let h = -1; h < a.N; h++) {
        const f = el("figure", h === head ? "on" : null), c = el("canvas");
        G.heatmap(c, D.matrix(a, h, false), 1, 1);
        c.style.width = "56px"; c.style.height = "72px";
        f.append(c, el("figcaption", null, h < 0 ? "mean" : "head " + h));
        f.addEventListener("click", () => this.app.setHead(h));
        figs.push(f);
      }
      this.thumbs.replaceChildren(...figs);
    } else this.thumbs.replaceChildren();
  }

  cellAt(ev) {
    if (!this.drawn) return null;
    const r = this.heat.getBoundingClientRect(), sx = this.heat.width / r.width, sy = this.heat.height / r.height;
    const c = Math.floor(((ev.clientX - r.left) * sx) / this.cw), t = Math.floor(((ev.clientY - r.top) * sy) / this.ch);
    if (t < 0 || t >= this.drawn.rows || c < 0 || c >= this.drawn.cols) return null;
    const i = this.drawn.dense ? c : t - c;
    return { t, i, w: this.drawn.values[t * this.drawn.cols + c] };
  }

  cellTip(c) {
    const a = this.a, tip = el("div");
    tip.append(el("b", null, `position ${c.t} \u2192 ${c.i}`), ` (distance ${c.t - c.i})`, el("br"));
    tip.append(`${D.byteLabel(a.ids[c.t])} \u2192 ${c.i >= 0 ? D.byteLabel(a.ids[c.i]) : "\u2014"} \u00b7 weight ` +
      (Number.isNaN(c.w) ? "\u2014" : c.w.toPrecision(4)));
    return tip;
  }

  charTip(p0, p1) {
    const a = this.a, tip = el("div");
    if (p0 === 0) { tip.append(el("b", null, "BOS"), " position 0: where every sequence starts"); return tip; }
    let sur = 0;
    for (let p = p0; p <= p1; p++) sur -= a.lp[p];
    const bytes = a.ids.slice(p0, p1 + 1).map((b) => "0x" + b.toString(16).padStart(2, "0")).join(" ");
    tip.append(el("b", null, p0 === p1 ? `position ${p0}` : `positions ${p0}\u2013${p1}`), ` \u00b7 ${bytes}`, el("br"));
    if (!Number.isNaN(sur)) tip.append(`surprisal ${sur.toFixed(3)} nats (${(sur / Math.LN2).toFixed(2)} bits)`);
    let gain = 0;
    for (let p = p0; p <= p1; p++) gain += a.gain[p];
    if (!Number.isNaN(gain)) tip.append(el("br"), `attention gain ${gain >= 0 ? "+" : ""}${gain.toFixed(3)} nats`);
    const top = a.top[p0];
    if (top && top.length) {
      const t = el("table");
      for (const alt of top) {
        const r = t.insertRow();
        r.insertCell().textContent = D.byteLabel(alt.id);
        r.insertCell().textContent = pct(alt.logprob);
        if (alt.id === a.ids[p0]) r.insertCell().textContent = "\u2190 actual";
      }
      tip.append(el("br"), `likeliest at position ${p0}:`, t);
    }
    return tip;
  }

  select(pos) {
    this.sel = this.sel === pos ? -1 : pos;
    this.render();
  }

  async attribute() {
    const a = this.a, sel = this.sel;
    if (sel < 1) return;
    this.attribInfo.textContent = "running\u2026";
    try {
      const r = await this.app.post("v1/attribution", { ids: a.ids.slice(1), target: sel, model: a.model });
      this.attrib = r;
      const best = [...r.positions].sort((x, y) => x.delta - y.delta).slice(0, 3);
      this.attribInfo.textContent = `Target ${D.byteLabel(r.target.id)} at position ${sel}: log-probability ` +
        `${r.target.logprob.toFixed(3)}; ${r.positions.length} positions occluded (${r.usage.variants} variants). ` +
        `Most supporting: ` + best.map((p) => `${D.byteLabel(p.id)}@${p.position} (${p.delta.toFixed(2)})`).join(", ");
      this.render();
    } catch (e) {
      this.attribInfo.textContent = e.message;
    }
  }
}
