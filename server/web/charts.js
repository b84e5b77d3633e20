// Our own SVG charts: events over time stacked by a field, the severity split, sparklines.
// Every figure drawn is a number the server aggregated (/api/v1/counts, /threats' spark); the
// charts only lay them out. Colours come from classes (style.css), so both themes apply and
// the CSP needs no inline style. Each bar and segment carries its numbers as data-* attributes
// and a <title> (the tooltip), so what is drawn can be read back and checked.

import {h, svg, fmtInt} from "./dom.js";

const HOUR_US = 3600e6;
export const SEVERITY_ORDER = ["high", "medium", "low"];

export function seriesClass(by, value, index) {
  if (by === "severity") return "sev-" + (SEVERITY_ORDER.includes(value) ? value : "other");
  return "series-" + (index % 8);
}

// rows: [{start_us, start, value, events}] for one `by`; the buckets between from_us and to_us
// (hourly: every hour is drawn, empty ones too; daily: the days the server answered, since a
// day is the store's own time zone's).
export function stackedBars(rows, by, bucket, fromUs, toUs) {
  const W = 800, H = 220, PAD_L = 44, PAD_B = 22, PAD_T = 8;
  const buckets = new Map();
  if (bucket === "hour" && toUs > fromUs && (toUs - fromUs) / HOUR_US <= 24 * 62) {
    for (let t = fromUs; t < toUs; t += HOUR_US) buckets.set(t, {start_us: t, start: null, parts: new Map(), total: 0});
  }
  const seriesTotals = new Map();
  for (const r of rows) {
    let b = buckets.get(r.start_us);
    if (!b) { b = {start_us: r.start_us, start: r.start, parts: new Map(), total: 0}; buckets.set(r.start_us, b); }
    b.start = r.start;
    b.parts.set(r.value, (b.parts.get(r.value) || 0) + r.events);
    b.total += r.events;
    seriesTotals.set(r.value, (seriesTotals.get(r.value) || 0) + r.events);
  }
  const list = [...buckets.values()].sort((a, b) => a.start_us - b.start_us);
  let series = [...seriesTotals.keys()].sort();
  if (by === "severity") series = SEVERITY_ORDER.filter((s) => seriesTotals.has(s)).concat(series.filter((s) => !SEVERITY_ORDER.includes(s)));
  const ticks = yTicks(Math.max(0, ...list.map((b) => b.total)));
  const max = ticks[ticks.length - 1];      // the axis' top: bars are scaled to the last tick
  const plotW = W - PAD_L - 4, plotH = H - PAD_B - PAD_T;
  const step = list.length ? plotW / list.length : plotW;
  const barW = Math.max(1, step * 0.8);
  const root = svg("svg", {class: "chart", viewBox: "0 0 " + W + " " + H, role: "img",
                           "aria-label": "events over time by " + by, "data-by": by, "data-bucket": bucket});
  // A horizontal guide at each tick, labelled with its count.
  for (const t of ticks) {
    const y = PAD_T + plotH * (1 - t / max);
    root.appendChild(svg("line", {class: "grid", x1: PAD_L, x2: W - 4, y1: y, y2: y}));
    root.appendChild(svg("text", {class: "axis y-tick", x: PAD_L - 4, y: y + 4, "text-anchor": "end", "data-tick": t}, fmtInt(t)));
  }
  const labelEvery = Math.max(1, Math.ceil(list.length / 8));
  list.forEach((b, i) => {
    const x = PAD_L + i * step + (step - barW) / 2;
    const g = svg("g", {class: "bar", "data-start-us": b.start_us, "data-events": b.total});
    let y = PAD_T + plotH;
    series.forEach((name, si) => {
      const n = b.parts.get(name) || 0;
      if (!n) return;
      const hgt = plotH * n / max;
      y -= hgt;
      g.appendChild(svg("rect", {class: "seg " + seriesClass(by, name, si), x: x.toFixed(1), y: y.toFixed(1),
                                 width: barW.toFixed(1), height: Math.max(hgt, 0.5).toFixed(1),
                                 "data-value": name, "data-events": n},
                        svg("title", {}, label(b) + " " + name + ": " + fmtInt(n))));
    });
    root.appendChild(g);
    if (i % labelEvery === 0) {
      root.appendChild(svg("text", {class: "axis", x: (x + barW / 2).toFixed(1), y: H - 6, "text-anchor": "middle"},
                           shortLabel(b, bucket, list)));
    }
  });
  if (!list.length) root.appendChild(svg("text", {class: "axis", x: W / 2, y: H / 2, "text-anchor": "middle"}, "no events"));
  const legend = h("ul", {class: "legend"}, series.map((name, si) =>
    h("li", {"data-value": name, "data-events": seriesTotals.get(name)},
      h("span", {class: "swatch " + seriesClass(by, name, si)}), name + " ", h("b", {}, fmtInt(seriesTotals.get(name))))));
  return h("div", {class: "chart-wrap"}, root, legend);
}

// The y axis' ticks for a tallest bar of `top` events: 0 and then whole multiples of a step of
// 1, 2 or 5 times a power of ten, the last one at or above `top`, at most five intervals. Counts
// are whole numbers, so a tick between two of them (or two ticks rounding to the same label, as
// 0, 0.5 and 1 did) would say nothing true.
export function yTicks(top) {
  const most = Math.max(1, Math.ceil(top));
  let step = 1;
  for (let p = 1; step * 5 < most; p *= 10) {
    step = [1, 2, 5].map((m) => m * p).find((s) => s * 5 >= most) || 10 * p;
  }
  const ticks = [];
  for (let t = 0; ticks.length === 0 || ticks[ticks.length - 1] < most; t += step) ticks.push(t);
  return ticks;
}

function label(b) {
  const iso = new Date(b.start_us / 1000).toISOString();
  return iso.slice(0, 16).replace("T", " ");
}

function shortLabel(b, bucket, list) {
  const iso = new Date(b.start_us / 1000).toISOString();
  const days = new Set(list.map((x) => new Date(x.start_us / 1000).toISOString().slice(0, 10)));
  if (bucket === "hour" && days.size <= 1) return iso.slice(11, 16);
  if (bucket === "hour") return iso.slice(5, 10) + " " + iso.slice(11, 13) + "h";
  return iso.slice(5, 10);
}

// totals: {high: n, medium: n, low: n}: one horizontal bar split by severity.
export function severitySplit(totals) {
  const W = 400, H = 18;
  const sum = SEVERITY_ORDER.reduce((a, s) => a + (totals[s] || 0), 0);
  const root = svg("svg", {class: "split", viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", role: "img",
                           "aria-label": "severity split"});
  let x = 0;
  for (const s of SEVERITY_ORDER) {
    const n = totals[s] || 0;
    if (!n) continue;
    const w = W * n / sum;
    root.appendChild(svg("rect", {class: "seg sev-" + s, x: x.toFixed(2), y: 0, width: w.toFixed(2), height: H,
                                  "data-value": s, "data-events": n},
                         svg("title", {}, s + ": " + fmtInt(n))));
    x += w;
  }
  if (!sum) root.appendChild(svg("rect", {class: "empty", x: 0, y: 0, width: W, height: H}));
  return root;
}

// values: events per slice (the threat's `spark`), drawn as a line over equal slices.
export function sparkline(values) {
  const W = 80, H = 18;
  if (!Array.isArray(values) || !values.length) return h("span", {class: "muted"}, "");
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? W / (values.length - 1) : W;
  const points = values.map((v, i) => (i * step).toFixed(1) + "," + (H - 1 - (H - 2) * v / max).toFixed(1)).join(" ");
  return svg("svg", {class: "spark", viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none",
                     "aria-label": "events over the range: " + values.join(" ")},
             svg("polyline", {points}));
}
