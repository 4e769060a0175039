// lode's search page: plain JavaScript over the server's /api/v1/*
// endpoints (query, histogram, top, tail), with no build step. The page's
// state (query, range, live) is kept in the URL, so a view can be shared.
"use strict";

const LEVELS = ["fatal", "error", "warn", "info", "debug", "trace"];
const PAGE = 100;
const MAX_SHOWN = 2000;
const PRESETS = { "15m": 15 * 60e3, "1h": 3600e3, "6h": 6 * 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
const WIDTHS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800]
  .map((s) => s * 1e3);
const BARS = 80;

const $ = (id) => document.getElementById(id);
const state = { q: "", range: "1h", from: null, to: null, cursor: null, live: null, generation: 0 };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// --- The URL and the form ---------------------------------------------

function readUrl() {
  const p = new URLSearchParams(location.search);
  state.q = p.get("q") || "";
  state.from = p.get("from");
  state.to = p.get("to");
  state.range = state.from || state.to ? "custom" : p.get("range") || "1h";
  $("q").value = state.q;
  $("range").value = state.range;
  $("live").checked = p.get("live") === "1";
  showAbsolute();
}

function writeUrl() {
  const p = new URLSearchParams();
  if (state.q) p.set("q", state.q);
  if (state.range === "custom") {
    if (state.from) p.set("from", state.from);
    if (state.to) p.set("to", state.to);
  } else if (state.range !== "1h") {
    p.set("range", state.range);
  }
  if ($("live").checked) p.set("live", "1");
  const url = p.toString() ? `?${p}` : location.pathname;
  history.replaceState(null, "", url);
}

function showAbsolute() {
  const custom = state.range === "custom";
  $("absolute").hidden = !custom;
  if (custom) {
    $("from").value = (state.from || "").slice(0, 19);
    $("to").value = (state.to || "").slice(0, 19);
  }
}

// The range as the API takes it: RFC 3339 times (UTC), either end open.
function bounds() {
  if (state.range === "custom") return { since: state.from, until: state.to };
  if (state.range === "all") return { since: null, until: null };
  const now = Date.now();
  return { since: new Date(now - PRESETS[state.range]).toISOString(), until: new Date(now).toISOString() };
}

function params(extra) {
  const p = new URLSearchParams();
  if (state.q) p.set("q", state.q);
  const b = bounds();
  if (b.since) p.set("since", b.since);
  if (b.until) p.set("until", b.until);
  for (const [k, v] of Object.entries(extra || {})) if (v !== null && v !== undefined) p.set(k, v);
  return p;
}

function within(query, filter) {
  return query.trim() ? `(${query}) AND ${filter}` : filter;
}

// --- Calls ----------------------------------------------------------------

class ApiError extends Error {}

// A server that asks for credentials answers 401: the page asks for a
// token once and keeps it for this tab only (session storage).
const TOKEN_KEY = "lode-token";

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function call(url, options) {
  for (let attempt = 0; ; attempt++) {
    const sent = sessionStorage.getItem(TOKEN_KEY);
    const response = await fetch(url, { ...options, headers: authHeaders() });
    if (response.status !== 401 || attempt >= 2) return response;
    // Several calls may be refused at once: only one asks, the others
    // find the token it was given.
    if (sessionStorage.getItem(TOKEN_KEY) !== sent) continue;
    const token = window.prompt(
      "This lode server asks for a token with the read scope (`lode token create --scope read ...`; the first admin token is in DATA/auth/admin.token):",
    );
    if (!token) return response;
    sessionStorage.setItem(TOKEN_KEY, token.trim());
  }
}

async function api(path, p) {
  const response = await call(`${path}?${p}`);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (body.error && body.error.message) || body.message || `${response.status} ${response.statusText}`;
    throw new ApiError(message);
  }
  return body;
}

function showError(error) {
  const box = $("error");
  const caret = $("caret");
  if (!error) {
    box.hidden = true;
    caret.hidden = true;
    $("q").classList.remove("bad");
    return;
  }
  box.hidden = false;
  box.textContent = error.message;
  const at = /column (\d+)/.exec(error.message);
  if (at) {
    caret.hidden = false;
    caret.textContent = " ".repeat(Math.max(0, Number(at[1]) - 1)) + "^";
    $("q").classList.add("bad");
  }
}

// --- Records --------------------------------------------------------------

function recordItem(r, fresh) {
  const level = LEVELS.includes(r.level) ? r.level : "other";
  const details = el("dl", {});
  const fields = [["seq", r.seq], ["ts", r.ts], ["level", r.level], ["service", r.service], ["host", r.host]];
  for (const [k, v] of fields.concat(Object.entries(r.attrs || {}))) {
    if (v === undefined || v === null || v === "") continue;
    details.append(el("dt", {}, k), el("dd", {}, String(v)));
  }
  const item = el(
    "li",
    { class: `record ${level}${fresh ? " new" : ""}`, title: "click for the attributes" },
    el(
      "div",
      { class: "line" },
      el("time", { datetime: r.ts }, r.ts.replace("T", " ").replace("Z", "")),
      el("span", { class: "level" }, r.level || "-"),
      el("span", { class: "service" }, r.service || ""),
      el("span", { class: "message" }, r.message),
    ),
    details,
  );
  item.addEventListener("click", (e) => {
    if (!window.getSelection().toString()) item.classList.toggle("open");
    e.stopPropagation();
  });
  return item;
}

async function loadRecords(generation, more) {
  const page = await api("/api/v1/query", params({ limit: PAGE, cursor: more ? state.cursor : null }));
  if (generation !== state.generation) return;
  const list = $("records");
  if (!more) list.replaceChildren();
  for (const r of page.records) list.append(recordItem(r, false));
  state.cursor = page.next_cursor || null;
  $("more").hidden = !state.cursor;
  $("status").textContent = list.children.length ? "" : "No records match in this range.";
}

// --- The volume histogram -------------------------------------------------

function niceWidth(spanMs) {
  const want = spanMs / BARS;
  return WIDTHS.find((w) => w >= want) || Math.ceil(want / 86400e3) * 86400e3;
}

async function loadVolume(generation) {
  const b = bounds();
  const extra = {};
  if (b.since && b.until) extra.width = String(niceWidth(Date.parse(b.until) - Date.parse(b.since)) * 1e6);
  const total = await api("/api/v1/histogram", params(extra));
  if (!total.buckets.length) return drawVolume(generation, total, []);
  const levels = await api("/api/v1/top", params({ field: "level", k: 10 }));
  // Each level's histogram over the same buckets: the first bucket's start
  // and the same width and end.
  const same = { since: total.buckets[0].start, width: String(total.width_ns) };
  const named = levels.values.map((v) => v.value).filter((v) => v);
  const stacks = await Promise.all(
    named.map(async (level) => {
      const p = params(same);
      p.set("q", within(state.q, `level:${level}`));
      if (b.until) p.set("until", b.until);
      const h = await api("/api/v1/histogram", p);
      return { level, counts: h.buckets.map((x) => x.count) };
    }),
  );
  drawVolume(generation, total, stacks);
}

function drawVolume(generation, total, stacks) {
  if (generation !== state.generation) return;
  const chart = $("chart");
  chart.replaceChildren();
  const buckets = total.buckets;
  const sum = buckets.reduce((n, x) => n + x.count, 0);
  $("total").textContent = `${sum.toLocaleString()} records`;
  const width = chart.clientWidth || 800;
  const height = 120;
  const n = Math.max(buckets.length, 1);
  const slot = width / n;
  const max = Math.max(1, ...buckets.map((x) => x.count));
  const order = LEVELS.filter((l) => stacks.some((s) => s.level === l));
  const others = stacks.filter((s) => !LEVELS.includes(s.level)).map((s) => s.level);
  const colour = (l) => `var(--${LEVELS.includes(l) ? l : "other"})`;
  buckets.forEach((bucket, i) => {
    let y = height;
    let placed = 0;
    const put = (count, level) => {
      if (count <= 0) return;
      const h = (count / max) * (height - 4);
      y -= h;
      placed += count;
      const bar = svg("rect", {
        class: "bar", x: i * slot + 0.5, y, width: Math.max(slot - 1, 1), height: h,
        fill: colour(level), "data-level": level, "data-count": count,
      });
      bar.append(svg("title", {}));
      bar.firstChild.textContent = `${bucket.start}  ${level}: ${count}`;
      chart.append(bar);
    };
    for (const level of order.concat(others)) put((stacks.find((s) => s.level === level) || { counts: [] }).counts[i] || 0, level);
    put(bucket.count - placed, "other");
  });
  const legend = $("legend");
  legend.replaceChildren();
  for (const level of order.concat(others, ["other"])) {
    legend.append(el("span", {}, el("i", { style: `background:${colour(level)}` }), level));
  }
  const first = buckets.length ? Date.parse(buckets[0].start) : 0;
  const span = n * (total.width_ns / 1e6);
  chart.dataset.from = first;
  chart.dataset.to = first + span;
  $("axis-from").textContent = buckets.length ? new Date(first).toISOString() : "";
  $("axis-to").textContent = buckets.length ? new Date(first + span).toISOString() : "";
}

// Dragging across the chart zooms into that range.
function zoomByDrag() {
  const chart = $("chart");
  let start = null;
  let box = null;
  const x = (e) => e.clientX - chart.getBoundingClientRect().left;
  chart.addEventListener("mousedown", (e) => {
    start = x(e);
    box = svg("rect", { class: "selection", x: start, y: 0, width: 0, height: 120 });
    chart.append(box);
  });
  chart.addEventListener("mousemove", (e) => {
    if (start === null) return;
    const now = x(e);
    box.setAttribute("x", Math.min(start, now));
    box.setAttribute("width", Math.abs(now - start));
  });
  window.addEventListener("mouseup", (e) => {
    if (start === null) return;
    const end = x(e);
    const [a, b] = [Math.min(start, end), Math.max(start, end)];
    start = null;
    box.remove();
    if (b - a < 4 || !chart.dataset.to) return;
    const from = Number(chart.dataset.from);
    const perPx = (Number(chart.dataset.to) - from) / chart.clientWidth;
    state.range = "custom";
    state.from = new Date(from + a * perPx).toISOString();
    state.to = new Date(from + b * perPx).toISOString();
    $("range").value = "custom";
    showAbsolute();
    search();
  });
}

// --- Facets ---------------------------------------------------------------

async function loadFacets(generation) {
  const fields = ["level", "service", "host"];
  const tops = await Promise.all(fields.map((field) => api("/api/v1/top", params({ field, k: 8 }))));
  if (generation !== state.generation) return;
  const box = $("facets");
  box.replaceChildren();
  tops.forEach((top, i) => {
    const field = fields[i];
    const values = top.values.filter((v) => v.value);
    if (!values.length) return;
    box.append(el("h3", {}, field));
    for (const v of values) {
      const filter = field === "level" ? `level:${v.value}` : `${field}:"${v.value.replace(/["\\]/g, "\\$&")}"`;
      box.append(
        el(
          "button",
          {
            class: "facet", type: "button", "data-field": field, "data-value": v.value, title: `add ${filter}`,
            onclick: () => {
              state.q = within(state.q, filter);
              $("q").value = state.q;
              search();
            },
          },
          el("span", {}, v.value),
          el("span", {}, v.count.toLocaleString()),
        ),
      );
    }
  });
}

// --- Live tail ------------------------------------------------------------

function stopLive() {
  if (state.live) state.live.abort();
  state.live = null;
}

async function startLive() {
  stopLive();
  const controller = new AbortController();
  state.live = controller;
  const p = new URLSearchParams();
  if (state.q) p.set("q", state.q);
  let response;
  try {
    response = await call(`/api/v1/tail?${p}`, { signal: controller.signal });
  } catch (e) {
    return;
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    showError(new ApiError((body.error && body.error.message) || response.statusText));
    return;
  }
  $("status").textContent = "Live: new records appear at the top.";
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (e) {
      return;
    }
    if (chunk.done) return;
    pending += decoder.decode(chunk.value, { stream: true });
    const lines = pending.split("\n");
    pending = lines.pop();
    const list = $("records");
    for (const line of lines) {
      if (!line.trim()) continue;
      const r = JSON.parse(line);
      if (r.error) return showError(new ApiError(r.error));
      list.prepend(recordItem(r, true));
      while (list.children.length > MAX_SHOWN) list.lastChild.remove();
    }
  }
}

// --- Search ---------------------------------------------------------------

async function search() {
  state.generation += 1;
  const generation = state.generation;
  writeUrl();
  showError(null);
  $("status").textContent = "Searching…";
  try {
    await Promise.all([loadRecords(generation, false), loadVolume(generation), loadFacets(generation)]);
  } catch (e) {
    if (generation !== state.generation) return;
    $("status").textContent = "";
    $("records").replaceChildren();
    $("chart").replaceChildren();
    $("facets").replaceChildren();
    $("more").hidden = true;
    showError(e);
    return;
  }
  if ($("live").checked) startLive();
  else stopLive();
}

function main() {
  readUrl();
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.q = $("q").value.trim();
    search();
  });
  $("range").addEventListener("change", () => {
    state.range = $("range").value;
    if (state.range === "custom" && !state.from) {
      state.from = new Date(Date.now() - 3600e3).toISOString();
      state.to = new Date().toISOString();
    }
    showAbsolute();
    search();
  });
  for (const id of ["from", "to"]) {
    $(id).addEventListener("change", () => {
      const v = $(id).value;
      state[id] = v ? new Date(`${v}Z`).toISOString() : null;
      search();
    });
  }
  $("live").addEventListener("change", () => {
    writeUrl();
    if ($("live").checked) startLive();
    else {
      stopLive();
      $("status").textContent = "";
    }
  });
  $("more").addEventListener("click", () => loadRecords(state.generation, true).catch(showError));
  zoomByDrag();
  search();
}

main();
