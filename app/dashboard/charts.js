// Small SVG charts, drawn by hand: a time series, horizontal bars, and intervals (lift with its 95%
// interval as error bars). Every text goes in through textContent, never as markup: action ids and reasons
// come from the catalogue.

const SVG = "http://www.w3.org/2000/svg";

export const PALETTE = [
  "#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2",
  "#ca8a04", "#db2777", "#4b5563", "#65a30d", "#7c3aed", "#0d9488",
];

function svg(name, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (parent) parent.appendChild(node);
  return node;
}

function html(name, attrs = {}, parent = null, text = null) {
  const node = document.createElement(name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== null) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

function text(parent, x, y, content, attrs = {}) {
  const node = svg("text", { x, y, ...attrs }, parent);
  node.textContent = content;
  return node;
}

/** Round numbers for an axis from 0 to at least `max`: [top, step]; whole steps for counts. */
export function niceScale(max, ticks = 4, integer = false) {
  if (!(max > 0)) return integer ? [ticks, 1] : [1, 0.25];
  const raw = max / ticks;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  if (integer) step = Math.max(1, Math.round(step));
  return [step * Math.ceil(max / step - 1e-9), step];
}

// Time ticks: the first of these steps (seconds) that gives at most six ticks over the span.
const TIME_STEPS = [5, 10, 15, 30, 60, 120, 180, 300, 600, 900, 1800, 3600];

function clockLabel(t, withSeconds) {
  const d = new Date(t * 1000);
  const two = (n) => String(n).padStart(2, "0");
  const hm = `${two(d.getHours())}:${two(d.getMinutes())}`;
  return withSeconds ? `${hm}:${two(d.getSeconds())}` : hm;
}

function chartBox(container) {
  return { width: Math.max(280, Math.floor(container.clientWidth || 600)) };
}

/** Replaces the chart with a sentence saying why there is nothing to draw. */
export function emptyState(container, message) {
  const figure = container.closest("figure");
  if (figure) figure.dataset.state = "empty";
  container.replaceChildren(html("p", { class: "empty" }, null, message));
}

export function errorState(container, message) {
  const figure = container.closest("figure");
  if (figure) figure.dataset.state = "error";
  container.replaceChildren(html("p", { class: "empty error" }, null, message));
}

function ready(container, ...nodes) {
  const figure = container.closest("figure");
  if (figure) figure.dataset.state = "ready";
  container.replaceChildren(...nodes);
  for (const node of nodes) fitLabels(node);
}

/** A row's label, anchored at its right end, `room` px wide at most (see fitLabels). */
function label(parent, x, y, content, room) {
  const attrs = { "text-anchor": "end", class: "label", "data-room": Math.floor(room) };
  const node = text(parent, x, y, content, attrs);
  svg("title", {}, node).textContent = content;
  return node;
}

/**
 * Labels longer than their room (an action id with " · own holdout", say) are shortened in the middle
 * with "…", which keeps both ends readable; the whole label stays in its tooltip. Measured as drawn, once
 * in the page (a chart in a hidden tab measures 0 and is left whole).
 */
function fitLabels(root) {
  if (!root.querySelectorAll) return;
  for (const node of root.querySelectorAll("text.label[data-room]")) {
    const room = Number(node.dataset.room);
    if (node.getComputedTextLength() <= room) continue;
    const shown = node.firstChild; // the text (a label that overflows has some); its <title> comes after
    const whole = shown.data;
    let lo = 0; // characters kept that fit
    let hi = whole.length - 1;
    const cut = (k) =>
      `${whole.slice(0, Math.ceil(k / 2))}…${whole.slice(whole.length - Math.floor(k / 2))}`;
    while (lo < hi) {
      const k = Math.ceil((lo + hi) / 2);
      shown.data = cut(k);
      if (node.getComputedTextLength() <= room) lo = k;
      else hi = k - 1;
    }
    shown.data = cut(lo);
  }
}

/**
 * A time series: `series` = [{name, color, values: [{t, v}]}] (v null: a gap). `xDomain` = [t0, t1] in
 * unix seconds; `format(v)` labels the axis, the legend and the readout.
 */
export function lineChart(container, { series, xDomain, format = String, height = 190, integer = false }) {
  const { width } = chartBox(container);
  const m = { left: 54, right: 14, top: 10, bottom: 24 };
  const w = width - m.left - m.right;
  const h = height - m.top - m.bottom;
  const [t0, t1] = xDomain;
  const span = Math.max(1, t1 - t0);
  const highest = Math.max(0, ...series.flatMap((s) => s.values.map((p) => p.v ?? 0)));
  const [top, step] = niceScale(highest, 4, integer);
  const x = (t) => m.left + ((t - t0) / span) * w;
  const y = (v) => m.top + h - (v / top) * h;

  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  const grid = svg("g", { class: "grid" }, root);
  for (let v = 0; v <= top + 1e-9; v += step) {
    svg("line", { x1: m.left, x2: m.left + w, y1: y(v), y2: y(v) }, grid);
    text(grid, m.left - 6, y(v) + 4, format(v), { "text-anchor": "end", class: "axis" });
  }
  const every = TIME_STEPS.find((s) => span / s <= 6) || TIME_STEPS[TIME_STEPS.length - 1];
  for (let t = Math.ceil(t0 / every) * every; t <= t1; t += every) {
    svg("line", { x1: x(t), x2: x(t), y1: m.top + h, y2: m.top + h + 4, class: "tick" }, grid);
    text(grid, x(t), height - 6, clockLabel(t, every < 60), { "text-anchor": "middle", class: "axis" });
  }

  const legend = html("div", { class: "legend" });
  for (const s of series) {
    let d = "";
    let pen = false;
    const drawn = s.values.filter((p) => p.v !== null && p.v !== undefined);
    for (const p of s.values) {
      if (p.v === null || p.v === undefined) {
        pen = false;
        continue;
      }
      d += `${pen ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`;
      pen = true;
    }
    if (d) svg("path", { d, class: "series", stroke: s.color, fill: "none", "data-series": s.name }, root);
    for (const p of drawn) {
      // Isolated points (between gaps) would be invisible as paths: a dot for each.
      svg("circle", { cx: x(p.t).toFixed(1), cy: y(p.v).toFixed(1), r: 1.8, fill: s.color }, root);
    }
    const item = html("span", { class: "item" }, legend);
    html("i", { class: "swatch", "data-color": s.color }, item).style.background = s.color;
    const last = drawn.length ? drawn[drawn.length - 1].v : null;
    html("span", {}, item, `${s.name} ${last === null ? "–" : format(last)}`);
  }

  // A readout that follows the pointer: the values of the nearest sample time.
  const cursor = svg("line", { class: "cursor", y1: m.top, y2: m.top + h, visibility: "hidden" }, root);
  const readout = html("div", { class: "readout", hidden: "" });
  const times = [...new Set(series.flatMap((s) => s.values.map((p) => p.t)))].sort((a, b) => a - b);
  root.addEventListener("pointermove", (event) => {
    if (!times.length) return;
    const box = root.getBoundingClientRect();
    const t = t0 + ((event.clientX - box.left - m.left) / w) * span;
    const near = times.reduce((best, u) => (Math.abs(u - t) < Math.abs(best - t) ? u : best), times[0]);
    cursor.setAttribute("x1", x(near));
    cursor.setAttribute("x2", x(near));
    cursor.setAttribute("visibility", "visible");
    const parts = series.map((s) => {
      const p = s.values.find((u) => u.t === near);
      return `${s.name} ${p && p.v !== null && p.v !== undefined ? format(p.v) : "–"}`;
    });
    readout.textContent = `${new Date(near * 1000).toLocaleTimeString()} · ${parts.join(" · ")}`;
    readout.hidden = false;
  });
  root.addEventListener("pointerleave", () => {
    cursor.setAttribute("visibility", "hidden");
    readout.hidden = true;
  });
  ready(container, legend, root, readout);
}

/** Horizontal bars: `rows` = [{label, value, color, note}], largest first. */
export function barChart(container, { rows, format = String, color = PALETTE[0] }) {
  const { width } = chartBox(container);
  const rowHeight = 22;
  const labelWidth = Math.min(190, Math.floor(width * 0.4));
  // Room on the right for the longest value and note (about 6.5 px a character at 11 px).
  const longest = Math.max(0, ...rows.map((r) => `${format(r.value)}  ${r.note || ""}`.length));
  const valueWidth = Math.min(Math.floor(width * 0.4), 16 + longest * 6.5);
  const height = rows.length * rowHeight + 6;
  const w = width - labelWidth - valueWidth - 8;
  const highest = Math.max(0, ...rows.map((r) => r.value));
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  rows.forEach((row, i) => {
    const y = 3 + i * rowHeight;
    label(root, labelWidth - 6, y + 15, row.label, labelWidth - 8);
    const length = highest > 0 ? Math.max(row.value > 0 ? 2 : 0, (row.value / highest) * w) : 0;
    const bar = svg("rect", {
      x: labelWidth, y: y + 3, width: length.toFixed(1), height: rowHeight - 7, rx: 2,
      fill: row.color || color, class: "bar", "data-value": row.value,
    }, root);
    svg("title", {}, bar).textContent = `${row.label}: ${format(row.value)}${row.note ? ` (${row.note})` : ""}`;
    text(root, labelWidth + length + 6, y + 15, `${format(row.value)}${row.note ? `  ${row.note}` : ""}`, {
      class: "value",
    });
  });
  ready(container, root);
}

/**
 * Estimates with their intervals, around a zero line (a forest plot): `rows` = [{label, value, lo, hi,
 * note}]. Green when the whole interval is above zero, red when below, grey when it spans zero.
 */
export function intervalChart(container, { rows, format = String }) {
  const { width } = chartBox(container);
  const rowHeight = 26;
  const labelWidth = Math.min(170, Math.floor(width * 0.35));
  const noteWidth = 150;
  const axis = 22;
  const height = rows.length * rowHeight + axis + 4;
  const w = width - labelWidth - noteWidth - 16;
  const reach = Math.max(1e-9, ...rows.flatMap((r) => [Math.abs(r.lo ?? r.value), Math.abs(r.hi ?? r.value)]));
  const [top, step] = niceScale(reach, 2);
  const x = (v) => labelWidth + 8 + ((v + top) / (2 * top)) * w;
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  const grid = svg("g", { class: "grid" }, root);
  for (let v = -top; v <= top + 1e-9; v += step) {
    svg("line", { x1: x(v), x2: x(v), y1: 2, y2: height - axis, class: v === 0 ? "zero" : "" }, grid);
    text(grid, x(v), height - 6, format(v), { "text-anchor": "middle", class: "axis" });
  }
  rows.forEach((row, i) => {
    const y = 4 + i * rowHeight + rowHeight / 2;
    label(root, labelWidth, y + 4, row.label, labelWidth - 2);
    const lo = row.lo ?? row.value;
    const hi = row.hi ?? row.value;
    const tone = lo > 0 ? "up" : hi < 0 ? "down" : "flat";
    const g = svg("g", { class: `interval ${tone}`, "data-value": row.value }, root);
    svg("path", {
      d: `M${x(lo).toFixed(1)},${y}H${x(hi).toFixed(1)}M${x(lo).toFixed(1)},${y - 5}v10M${x(hi).toFixed(1)},${y - 5}v10`,
      class: "errorbar",
    }, g);
    svg("circle", { cx: x(row.value).toFixed(1), cy: y, r: 4.5, class: "estimate" }, g);
    svg("title", {}, g).textContent =
      `${row.label}: ${format(row.value)} [${format(lo)}, ${format(hi)}]${row.note ? ` · ${row.note}` : ""}`;
    text(root, width - noteWidth, y + 4, row.note || "", { class: "value" });
  });
  ready(container, root);
}
