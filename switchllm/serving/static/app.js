// switchllm dashboard: reads GET /v1/stats and draws it with plain SVG. No build step, no
// dependencies, no eval and no inline code (the page is served with a strict CSP). Data from
// the log (router and model names, prompts) is only ever set as textContent.
"use strict";

const KEY_ITEM = "switchllm.apiKey";
const REFRESH_MS = 5000;
const SVG_NS = "http://www.w3.org/2000/svg";
const MODEL_COLORS = ["#d9480f", "#1c7ed6", "#2f9e44", "#ae3ec9", "#f59f00", "#0c8599",
                      "#e64980", "#5c940d"];
const W = 520, H = 220, PAD = { left: 56, right: 12, top: 10, bottom: 24 };

let timer = null;
let firstRender = true;
const modelColor = new Map();

function $(id) { return document.getElementById(id); }

function setText(id, text) { $(id).textContent = text; }

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
function fmtInt(n) { return integer.format(n); }
function fmtPct(x) { return (100 * x).toFixed(1) + "%"; }
function fmtUsd(x) {
  const digits = Math.abs(x) >= 100 ? 2 : Math.abs(x) >= 1 ? 3 : 4;
  return "$" + x.toFixed(digits);
}
function fmtMs(x) { return x === null || x === undefined ? "–" : x < 10 ? x.toFixed(2) : x.toFixed(0); }
function fmtRate(x) { return x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2); }
function fmtTime(t, withDate) {
  const d = new Date(t * 1000);
  const hm = d.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
  return withDate ? d.toLocaleDateString("en-GB", { month: "short", day: "numeric" }) + " " + hm : hm;
}

// ---- fetching -----------------------------------------------------------------------------
async function refresh() {
  clearTimeout(timer);
  const key = sessionStorage.getItem(KEY_ITEM);
  const headers = key ? { Authorization: "Bearer " + key } : {};
  const url = "/v1/stats?window=" + encodeURIComponent($("window").value) + "&buckets=60&latest=15";
  try {
    const response = await fetch(url, { headers, cache: "no-store" });
    if (response.status === 401) {
      showKeyForm(key ? "The key was refused: enter a valid client API key." : null);
      return;
    }
    const body = await response.json();
    if (!response.ok) {
      throw new Error(body && body.error ? body.error.message : "HTTP " + response.status);
    }
    render(body);
    setText("status", "updated " + new Date().toLocaleTimeString("en-GB"));
    $("status").className = "muted";
  } catch (error) {
    setText("status", "could not load statistics: " + error.message);
    $("status").className = "bad";
  }
  schedule();
}

function schedule() {
  clearTimeout(timer);
  if ($("auto-refresh").checked && !document.hidden) timer = setTimeout(refresh, REFRESH_MS);
}

function showKeyForm(message) {
  $("content").hidden = true;
  $("key-form").hidden = false;
  if (message) setText("key-message", message);
  setText("status", "API key needed");
  $("key").focus();
}

// ---- rendering ----------------------------------------------------------------------------
function render(stats) {
  $("key-form").hidden = true;
  $("content").hidden = false;
  $("forget-key").hidden = !sessionStorage.getItem(KEY_ITEM);
  const t = stats.totals, s = stats.series;
  setText("total-requests", fmtInt(t.requests));
  setText("requests-per-s", fmtRate(t.requests_per_s));
  const last = s.requests.length - 1;
  // "now": the last complete bucket (the open one has only just started)
  const nowIndex = last > 0 ? last - 1 : last;
  setText("requests-per-s-now", last >= 0 ? fmtRate(s.requests[nowIndex] / s.seconds[nowIndex]) : "–");
  setText("strong-share", fmtPct(t.strong_share));
  setText("strong-count", fmtInt(t.strong));
  setText("ok-count", fmtInt(t.ok));
  setText("saving-usd", fmtUsd(t.saving_usd));
  setText("saving-share", fmtPct(t.saving_share));
  setText("cost-usd", fmtUsd(t.cost_usd));
  setText("always-strong-cost-usd", fmtUsd(t.always_strong_cost_usd));
  setText("fallbacks", fmtInt(t.fallbacks));
  setText("errors", fmtInt(t.errors));
  setText("error-statuses", stats.errors.length
    ? stats.errors.map(e => "HTTP " + e.status + ": " + fmtInt(e.count)).join(" · ")
    : "no errors");
  for (const kind of ["routing", "upstream"]) {
    const p = stats.latency_ms[kind];
    setText(kind + "-p50", fmtMs(p.p50));
    setText(kind + "-p95", fmtMs(p.p95));
    setText(kind + "-p99", fmtMs(p.p99));
  }
  drawRate(stats);
  drawShare(stats);
  drawCost(stats);
  fillRouters(stats.routers);
  fillLatest(stats.latest);
  if (firstRender) {
    firstRender = false;
    performance.mark("switchllm:stats-rendered");  // read by bench/dashboard.py
  }
}

function svgEl(tag, attrs, parent) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (parent) parent.appendChild(node);
  return node;
}

function niceMax(x) {
  if (!(x > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(x)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}

// Axes and grid; returns x(i) and y(v) mapping functions.
function frame(svg, stats, yMax, yFormat) {
  svg.replaceChildren();
  const n = stats.series.t.length;
  const x = i => PAD.left + (n > 1 ? i / (n - 1) : 0.5) * (W - PAD.left - PAD.right);
  const y = v => H - PAD.bottom - (v / yMax) * (H - PAD.top - PAD.bottom);
  for (let k = 0; k <= 4; k++) {
    const v = (yMax * k) / 4;
    svgEl("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: k ? "grid" : "axis" }, svg);
    svgEl("text", { x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end" }, svg).textContent = yFormat(v);
  }
  const withDate = stats.window.seconds > 86400;
  const ticks = Math.min(6, n);
  for (let k = 0; k < ticks; k++) {
    const i = Math.round((k * (n - 1)) / Math.max(ticks - 1, 1));
    svgEl("text", { x: x(i), y: H - 6, "text-anchor": k === 0 ? "start" : k === ticks - 1 ? "end" : "middle" },
          svg).textContent = fmtTime(stats.series.t[i], withDate);
  }
  return { x, y };
}

function path(points) {
  return points.map((p, i) => (i ? "L" : "M") + p[0].toFixed(1) + " " + p[1].toFixed(1)).join(" ");
}

function drawRate(stats) {
  const s = stats.series;
  const rate = s.requests.map((n, i) => n / s.seconds[i]);
  const errors = s.errors.map((n, i) => n / s.seconds[i]);
  const yMax = niceMax(Math.max(...rate, 0));
  const { x, y } = frame($("chart-rate"), stats, yMax, v => fmtRate(v));
  const svg = $("chart-rate");
  const area = [[x(0), y(0)], ...rate.map((v, i) => [x(i), y(v)]), [x(rate.length - 1), y(0)]];
  svgEl("path", { d: path(area) + " Z", fill: "#1c7ed6", "fill-opacity": "0.12", stroke: "none" }, svg);
  svgEl("path", { d: path(rate.map((v, i) => [x(i), y(v)])), fill: "none", stroke: "#1c7ed6", "stroke-width": 2 }, svg);
  svgEl("path", { d: path(errors.map((v, i) => [x(i), y(v)])), fill: "none", stroke: "#cf222e", "stroke-width": 1.5 }, svg);
}

function colorOf(model) {
  if (!modelColor.has(model)) modelColor.set(model, MODEL_COLORS[modelColor.size % MODEL_COLORS.length]);
  return modelColor.get(model);
}

function drawShare(stats) {
  const s = stats.series, svg = $("chart-share");
  const { x, y } = frame(svg, stats, 1, v => Math.round(v * 100) + "%");
  // stack models by overall volume, strong model first when known
  const models = stats.models.map(m => m.model).filter(m => s.models[m]);
  const base = s.ok.map(() => 0);
  const key = $("model-key");
  key.replaceChildren();
  for (const model of models) {
    const counts = s.models[model];
    const lower = base.slice();
    counts.forEach((c, i) => { base[i] += s.ok[i] ? c / s.ok[i] : 0; });
    const top = base.map((v, i) => [x(i), y(v)]);
    const bottom = lower.map((v, i) => [x(i), y(v)]).reverse();
    svgEl("path", { d: path([...top, ...bottom]) + " Z", fill: colorOf(model), "fill-opacity": "0.75",
                    stroke: "none" }, svg);
    const swatch = document.createElement("i");
    swatch.className = "sw";
    swatch.style.background = colorOf(model);
    key.append(swatch, document.createTextNode(model));
  }
}

function drawCost(stats) {
  const s = stats.series, svg = $("chart-cost");
  let a = 0, b = 0;
  const cost = s.cost_usd.map(v => (a += v));
  const strong = s.always_strong_cost_usd.map(v => (b += v));
  const yMax = niceMax(Math.max(b, a));
  const { x, y } = frame(svg, stats, yMax, v => "$" + (v >= 10 ? v.toFixed(0) : v.toPrecision(2)));
  const gap = [...strong.map((v, i) => [x(i), y(v)]), ...cost.map((v, i) => [x(i), y(v)]).reverse()];
  svgEl("path", { d: path(gap) + " Z", fill: "#2f9e44", "fill-opacity": "0.12", stroke: "none" }, svg);
  svgEl("path", { d: path(strong.map((v, i) => [x(i), y(v)])), fill: "none", stroke: "#d9480f", "stroke-width": 2 }, svg);
  svgEl("path", { d: path(cost.map((v, i) => [x(i), y(v)])), fill: "none", stroke: "#2f9e44", "stroke-width": 2 }, svg);
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    td.textContent = cell;
    tr.appendChild(td);
  }
  return tr;
}

function fillRouters(routers) {
  $("routers").tBodies[0].replaceChildren(...routers.map(r => row([
    r.router, fmtInt(r.requests), fmtInt(r.errors), fmtInt(r.fallbacks), fmtPct(r.strong_share),
    r.cost_usd.toFixed(4), r.always_strong_cost_usd.toFixed(4), r.saving_usd.toFixed(4)])));
}

function fillLatest(latest) {
  $("latest").tBodies[0].replaceChildren(...latest.map(d => row([
    fmtTime(d.ts, false) + ":" + String(new Date(d.ts * 1000).getSeconds()).padStart(2, "0"),
    d.route_group ? d.router + " → " + d.route_group : (d.router || "(direct)"),
    d.win_rate === null ? "–" : d.win_rate.toFixed(3),
    d.threshold === null ? "–" : d.threshold.toFixed(3),
    (d.model || d.routed_model || "–") + (d.fallback ? " (fallback)" : ""),
    String(d.status), fmtMs(d.latency_ms),
    d.cost_usd === null ? "–" : d.cost_usd.toFixed(5),
    d.prompt === undefined ? "" : d.prompt])));
}

// ---- wiring -------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", event => {
    event.preventDefault();
    sessionStorage.setItem(KEY_ITEM, $("key").value.trim());
    $("key").value = "";
    refresh();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_ITEM);
    showKeyForm(null);
  });
  $("window").addEventListener("change", () => {
    setText("status", "loading…");  // a window not shown before is aggregated once (~1 s)
    refresh();
  });
  $("auto-refresh").addEventListener("change", schedule);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  refresh();
});
