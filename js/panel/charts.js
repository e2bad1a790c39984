// Small inline-SVG charts (loss curve, generation times). Geometry is computed by pure functions
// (unit-tested by tests/js/charts.test.mjs); the element builders take the `document` to draw in,
// so nothing here touches the DOM at import time. Colours come from CSS (classes in panel.css).

const SVG_NS = "http://www.w3.org/2000/svg";

/** Exponential moving average (bias-corrected) of a list of numbers, same length. */
export function ema(values, beta = 0.9) {
  const out = [];
  let avg = 0;
  values.forEach((v, i) => {
    avg = beta * avg + (1 - beta) * v;
    out.push(avg / (1 - beta ** (i + 1)));
  });
  return out;
}

/** At most `max` points: consecutive points averaged per bucket (x and y), order kept. */
export function downsample(points, max) {
  if (points.length <= max) return points;
  const out = [];
  const size = points.length / max;
  for (let b = 0; b < max; b += 1) {
    const chunk = points.slice(Math.floor(b * size), Math.floor((b + 1) * size));
    if (!chunk.length) continue;
    const x = chunk.reduce((s, p) => s + p[0], 0) / chunk.length;
    const y = chunk.reduce((s, p) => s + p[1], 0) / chunk.length;
    out.push([x, y]);
  }
  return out;
}

/** [lo, hi] of finite numbers, widened when flat so a scale never divides by zero. */
export function extent(values) {
  const xs = values.filter((v) => Number.isFinite(v));
  if (!xs.length) return [0, 1];
  let lo = Math.min(...xs);
  let hi = Math.max(...xs);
  if (lo === hi) {
    const pad = Math.abs(lo) * 0.05 || 0.5;
    lo -= pad;
    hi += pad;
  }
  return [lo, hi];
}

/**
 * An SVG path ("M x y L x y …") for [x, y] points scaled into a box of `width` × `height`
 * (y grows downwards in SVG, so larger values are drawn higher). Non-finite points are skipped.
 */
export function linePath(points, width, height, xDomain, yDomain) {
  const pts = points.filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
  if (!pts.length) return "";
  const [x0, x1] = xDomain || extent(pts.map((p) => p[0]));
  const [y0, y1] = yDomain || extent(pts.map((p) => p[1]));
  const sx = (x) => ((x - x0) / (x1 - x0 || 1)) * width;
  const sy = (y) => height - ((y - y0) / (y1 - y0 || 1)) * height;
  return pts.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)} ${sy(p[1]).toFixed(1)}`).join(" ");
}

/**
 * Bars for `values` in a `width` × `height` box from 0 to max(values): [{x, y, w, h, value}].
 * Each bar's slot is at most `maxSlot` wide (a few bars do not fill the whole chart).
 */
export function barLayout(values, width, height, gap = 1, maxSlot = Infinity) {
  const n = values.length;
  if (!n) return [];
  const max = Math.max(...values.filter((v) => Number.isFinite(v)), 0) || 1;
  const w = Math.min(width / n, maxSlot);
  return values.map((v, i) => {
    const h = Number.isFinite(v) ? (Math.max(0, v) / max) * height : 0;
    return { x: i * w + gap / 2, y: height - h, w: Math.max(0.5, w - gap), h, value: v };
  });
}

function el(doc, name, attrs = {}, text) {
  const node = doc.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * A loss chart: raw points (thin) and their moving average (thick), with the last values as text.
 * `points`: [[step, loss], ...]. Returns an <svg> with role="img" and a text alternative.
 */
export function lossChart(doc, points, { width = 320, height = 120, label = "Training loss" } = {}) {
  const pad = { l: 4, r: 4, t: 6, b: 14 };
  const w = width - pad.l - pad.r;
  const h = height - pad.t - pad.b;
  const pts = downsample(
    points.filter((p) => Array.isArray(p) && Number.isFinite(p[1])),
    400,
  );
  const last = pts.length ? points[points.length - 1] : null;
  const svg = el(doc, "svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    class: "podkit-chart",
    "aria-label": last
      ? `${label}: ${pts.length} points, last ${Number(last[1]).toPrecision(4)} at step ${last[0]}`
      : `${label}: no data yet`,
  });
  svg.appendChild(el(doc, "title", {}, svg.getAttribute("aria-label")));
  const g = el(doc, "g", { transform: `translate(${pad.l} ${pad.t})` });
  g.appendChild(el(doc, "rect", { class: "podkit-chart-frame", x: 0, y: 0, width: w, height: h }));
  if (pts.length) {
    const xd = extent(pts.map((p) => p[0]));
    const yd = extent(pts.map((p) => p[1]));
    g.appendChild(el(doc, "path", { class: "podkit-chart-raw", d: linePath(pts, w, h, xd, yd) }));
    const smooth = ema(pts.map((p) => p[1])).map((y, i) => [pts[i][0], y]);
    g.appendChild(el(doc, "path", { class: "podkit-chart-line", d: linePath(smooth, w, h, xd, yd) }));
    g.appendChild(el(doc, "text", { class: "podkit-chart-axis", x: 0, y: h + 11 }, `step ${Math.round(xd[0])}`));
    g.appendChild(
      el(
        doc,
        "text",
        { class: "podkit-chart-axis", x: w, y: h + 11, "text-anchor": "end" },
        `step ${Math.round(xd[1])}`,
      ),
    );
    g.appendChild(el(doc, "text", { class: "podkit-chart-axis", x: 3, y: 10 }, yd[1].toPrecision(3)));
  } else {
    g.appendChild(
      el(
        doc,
        "text",
        { class: "podkit-chart-axis", x: w / 2, y: h / 2, "text-anchor": "middle" },
        "no loss reported yet",
      ),
    );
  }
  svg.appendChild(g);
  return svg;
}

/**
 * Generation wall times as bars (oldest left), with p50/p95 lines. `records`: newest first, as
 * the Monitor keeps them; `marks`: {p50, p95} in seconds (optional).
 */
export function generationChart(doc, records, marks = {}, { width = 320, height = 110 } = {}) {
  const pad = { l: 4, r: 4, t: 6, b: 4 };
  const w = width - pad.l - pad.r;
  const h = height - pad.t - pad.b;
  const chrono = records.slice(0, 60).reverse();
  const values = chrono.map((r) => r.wall_s);
  const svg = el(doc, "svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    class: "podkit-chart",
    "aria-label": values.length ? `Wall time of the last ${values.length} generations` : "No generations yet",
  });
  svg.appendChild(el(doc, "title", {}, svg.getAttribute("aria-label")));
  const g = el(doc, "g", { transform: `translate(${pad.l} ${pad.t})` });
  g.appendChild(el(doc, "rect", { class: "podkit-chart-frame", x: 0, y: 0, width: w, height: h }));
  const bars = barLayout(values, w, h, 1, 16);
  const max = Math.max(...values.filter((v) => Number.isFinite(v)), 0) || 1;
  bars.forEach((b, i) => {
    const rect = el(doc, "rect", { class: "podkit-chart-bar", x: b.x, y: b.y, width: b.w, height: b.h });
    const r = chrono[i];
    rect.appendChild(
      el(
        doc,
        "title",
        {},
        `${Number(r.wall_s).toFixed(2)} s${r.family ? ` · ${r.family}` : ""}${r.width ? ` · ${r.width}×${r.height}` : ""}`,
      ),
    );
    g.appendChild(rect);
  });
  let lastLabelY = null;
  for (const [name, v] of [
    ["p50", marks.p50],
    ["p95", marks.p95],
  ]) {
    if (!Number.isFinite(v) || !values.length) continue;
    const y = h - (Math.min(v, max) / max) * h;
    g.appendChild(el(doc, "line", { class: `podkit-chart-mark podkit-chart-${name}`, x1: 0, x2: w, y1: y, y2: y }));
    const ly = Math.max(9, y - 2);
    if (lastLabelY !== null && Math.abs(ly - lastLabelY) < 10) continue; // p95 on p50: one label is enough
    lastLabelY = ly;
    g.appendChild(el(doc, "text", { class: "podkit-chart-axis", x: w - 2, y: ly, "text-anchor": "end" }, name));
  }
  if (!values.length) {
    g.appendChild(
      el(
        doc,
        "text",
        { class: "podkit-chart-axis", x: w / 2, y: h / 2, "text-anchor": "middle" },
        "no generations yet",
      ),
    );
  }
  svg.appendChild(g);
  return svg;
}
