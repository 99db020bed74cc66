// draw.js -- canvas drawing: the colour scales, heatmaps (one pixel per cell
// in an image, scaled without smoothing), per-position tracks and the
// weight-by-distance chart.

// Viridis, from five stops; t in [0, 1].
const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
export const LUT = (() => {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * (STOPS.length - 1), k = Math.min(STOPS.length - 2, Math.floor(x)), f = x - k;
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = STOPS[k][c] + (STOPS[k + 1][c] - STOPS[k][c]) * f;
  }
  return lut;
})();

// Colour index of a weight on a scale: "sqrt" spreads the small weights that
// attention is mostly made of; "log" shows 1e-4 .. 1 evenly.
export let scale = "sqrt";
export function setScale(s) { scale = s === "log" ? "log" : "sqrt"; }
export function weightIndex(w) {
  const x = scale === "log" ? (w > 0 ? 1 + Math.log10(w) / 4 : 0) : Math.sqrt(w);
  return Math.max(0, Math.min(255, Math.round(x * 255)));
}

export function cssColour(i) { return `rgb(${LUT[i * 3]},${LUT[i * 3 + 1]},${LUT[i * 3 + 2]})`; }

// Surprisal (nats) as a background: pale below 1 nat, red from 8 up.
export function surprisalColour(s) {
  if (!(s >= 0)) return "transparent";
  const x = Math.min(1, s / 8);
  return `hsl(${Math.round(55 - 55 * x)}, 95%, ${Math.round(94 - 36 * x)}%)`;
}

// Draws matrix m (data.js) into canvas: every cell cw x ch pixels.
export function heatmap(canvas, m, cw, ch) {
  const img = new ImageData(m.cols, m.rows), px = img.data, v = m.values;
  for (let k = 0; k < v.length; k++) {
    const w = v[k], o = k * 4;
    if (Number.isNaN(w)) { px[o] = px[o + 1] = px[o + 2] = 246; px[o + 3] = 255; continue; }
    const i = weightIndex(w) * 3;
    px[o] = LUT[i]; px[o + 1] = LUT[i + 1]; px[o + 2] = LUT[i + 2]; px[o + 3] = 255;
  }
  const src = document.createElement("canvas");
  src.width = m.cols; src.height = m.rows;
  if (m.cols && m.rows) src.getContext("2d").putImageData(img, 0, 0);
  canvas.width = Math.max(1, m.cols * cw);
  canvas.height = Math.max(1, m.rows * ch);
  const g = canvas.getContext("2d");
  g.imageSmoothingEnabled = false;
  g.drawImage(src, 0, 0, canvas.width, canvas.height);
}

// The colour scale as a small bar.
export function legend(canvas) {
  canvas.width = 120; canvas.height = 10;
  const g = canvas.getContext("2d");
  for (let x = 0; x < 120; x++) { g.fillStyle = cssColour(Math.round((x / 119) * 255)); g.fillRect(x, 0, 1, 10); }
}

const TRACK_H = 26, LABEL_W = 92;
export const TRACKS = [
  ["surprisal", "surprisal (nats)"], ["entropy", "attn. entropy"], ["lookback", "mean look-back"],
  ["self", "weight on self"], ["bos", "weight on BOS"], ["gain", "attention gain"],
];
const SIGNED = new Set(["gain"]);

// Attention gain (nats) as a background: green where attention raised the
// token's probability, red where it lowered it, saturating at 2 nats.
export function gainColour(d) {
  if (Number.isNaN(d) || Math.abs(d) < 0.02) return "transparent";
  const x = Math.min(1, Math.abs(d) / 2);
  return d > 0 ? `rgba(18,128,92,${(0.12 + 0.7 * x).toFixed(3)})` : `rgba(217,45,32,${(0.12 + 0.7 * x).toFixed(3)})`;
}

// Per-position tracks: rows of bars, one column per position; sel marks a position.
export function tracks(canvas, series, T, width, sel) {
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(TRACKS.length * TRACK_H * dpr);
  canvas.style.width = width + "px";
  canvas.style.height = TRACKS.length * TRACK_H + "px";
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.font = "11px system-ui, sans-serif";
  const plotW = width - LABEL_W, bw = plotW / Math.max(1, T);
  TRACKS.forEach(([key, label], r) => {
    const y0 = r * TRACK_H, vals = series[key] || [];
    const signed = SIGNED.has(key);
    let max = 0;
    for (const x of vals) if (Math.abs(x) > max && (signed || x > 0)) max = Math.abs(x);
    if (key === "self" || key === "bos") max = 1;
    g.fillStyle = r % 2 ? "#fafbfc" : "#f2f4f7";
    g.fillRect(LABEL_W, y0, plotW, TRACK_H);
    g.fillStyle = "#667085";
    g.fillText(label, 2, y0 + 12);
    g.fillText(max ? "max " + (max < 10 ? max.toFixed(2) : max.toFixed(1)) : "", 2, y0 + 23);
    g.fillStyle = ["#d92d20", "#2f5bd3", "#12805c", "#b54708", "#6941c6", "#12805c"][r];
    const mid = y0 + TRACK_H / 2;
    for (let t = 0; t < T; t++) {
      const x = vals[t];
      if (!max || Number.isNaN(x) || x === undefined || (!signed && !(x > 0))) continue;
      const w = Math.max(1, bw - (bw > 3 ? 1 : 0));
      if (signed) { // up for a gain, down for a loss, from the middle line
        const h = (Math.abs(x) / max) * (TRACK_H / 2 - 2);
        g.fillStyle = x >= 0 ? "#12805c" : "#d92d20";
        g.fillRect(LABEL_W + t * bw, x >= 0 ? mid - h : mid, w, h);
        continue;
      }
      const h = (x / max) * (TRACK_H - 4);
      g.fillRect(LABEL_W + t * bw, y0 + TRACK_H - 2 - h, w, h);
    }
  });
  if (sel >= 0) {
    g.fillStyle = "rgba(217,45,32,.35)";
    g.fillRect(LABEL_W + sel * bw, 0, Math.max(1.5, bw), TRACKS.length * TRACK_H);
  }
  return { labelW: LABEL_W, bw };
}

export const HEAD_COLOURS = ["#2f5bd3", "#d92d20", "#12805c", "#b54708", "#6941c6", "#0e9384", "#c11574", "#4e5ba6"];

// Each head's mean weight at each distance, on a log scale, and the heads' mean in black.
export function distanceChart(canvas, sum, width) {
  const H = 170, L = 44, B = 22, dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * dpr); canvas.height = Math.round(H * dpr);
  canvas.style.width = width + "px"; canvas.style.height = H + "px";
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.font = "11px system-ui, sans-serif";
  const D = sum.average.by_distance.length, pw = width - L - 8, ph = H - B - 8;
  const lo = -4, y = (w) => 8 + ph * (1 - (Math.log10(Math.max(w, 1e-4)) - lo) / -lo);
  const x = (d) => L + (D > 1 ? (d / (D - 1)) * pw : pw / 2);
  g.strokeStyle = "#e4e7ec"; g.fillStyle = "#667085";
  for (let e = 0; e >= lo; e--) {
    g.beginPath(); g.moveTo(L, y(10 ** e)); g.lineTo(L + pw, y(10 ** e)); g.stroke();
    g.fillText(e === 0 ? "1" : "1e" + e, 4, y(10 ** e) + 4);
  }
  const axis = `distance \u2192 ${D - 1}`, room = L + pw - g.measureText(axis).width - 14;
  for (let d = 0; d < D; d += Math.max(1, Math.ceil(D / 8))) if (x(d) < room) g.fillText(String(d), x(d) - 3, H - 6);
  g.textAlign = "right";
  g.fillText(axis, L + pw, H - 6);
  g.textAlign = "left";
  const line = (vals, colour, lw) => {
    g.strokeStyle = colour; g.lineWidth = lw; g.beginPath();
    vals.forEach((w, d) => (d ? g.lineTo(x(d), y(w)) : g.moveTo(x(d), y(w))));
    g.stroke();
  };
  sum.heads.forEach((h, k) => line(h.by_distance, HEAD_COLOURS[k % HEAD_COLOURS.length], 1.5));
  if (sum.heads.length > 1) line(sum.average.by_distance, "#1d2230", 2.5);
  g.lineWidth = 1;
}
