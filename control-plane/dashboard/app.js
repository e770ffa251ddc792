// The Serin dashboard: the live traffic graph (server-sent events from /api/stream), the
// release panel of one service (/api/services/NAME), with weight, promote and rollback actions,
// and the detail panel of one edge (from the graph itself: traffic, and whether its callers came
// over mTLS and with which SPIFFE IDs; a padlock marks mTLS edges in the graph).
// Plain JavaScript and SVG, no dependencies: it is embedded in serin-control and works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
const GROUP_W = 240, HEADER_H = 38, ROW_H = 30, ROW_GAP = 4, COL_GAP = 190, GROUP_GAP = 30, MARGIN = 30;
const LABEL_LIMIT = 80; // edges with a permanent label (the busiest); the rest on hover

const state = {
  graph: null,
  window: "10s",
  namespace: "",
  selected: null, // {namespace, service}
  selectedEdge: null, // edgeId() of the edge whose detail panel is open
  detail: null,
  structure: { services: new Set(), edges: new Set() }, // every service link seen this session
  layoutKey: "",
  layout: null,
  view: { k: 1, x: 0, y: 0, user: false },
  source: null,
  lastUpdate: 0,
  updates: 0,
};

// ---------------------------------------------------------------------------------------------
// formatting

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function fmtRate(x) {
  if (x >= 1000) return (x / 1000).toFixed(1) + "k";
  if (x >= 100) return x.toFixed(0);
  if (x >= 10) return x.toFixed(1);
  return x.toFixed(2);
}
function fmtPct(f) {
  const p = f * 100;
  if (p === 0) return "0%";
  if (p < 0.1) return "<0.1%";
  return (p < 10 ? p.toFixed(1) : p.toFixed(0)) + "%";
}
function fmtMs(ms) {
  if (ms == null) return "–";
  if (ms >= 1000) return (ms / 1000).toFixed(2) + "s";
  if (ms >= 10) return ms.toFixed(0) + "ms";
  return ms.toFixed(1) + "ms";
}
function fmtBytes(b) {
  if (b >= 1e6) return (b / 1e6).toFixed(1) + " MB/s";
  if (b >= 1e3) return (b / 1e3).toFixed(1) + " kB/s";
  return b.toFixed(0) + " B/s";
}
function healthClass(e) {
  if (e.mirror) return "mirror";
  if (e.protocol === "tcp" && e.requests === 0) return "tcp";
  if (e.error_rate >= 0.05) return "bad";
  if (e.error_rate >= 0.01) return "warn";
  return "ok";
}
const COLORS = { ok: "#3fb950", warn: "#d29922", bad: "#f85149", tcp: "#58a6ff", mirror: "#bc8cff" };

function serviceKey(node) { return node.namespace + "/" + node.service; }
// One edge of the graph: caller, callee, protocol and mirror flag (the API's edge key).
function edgeId(e) { return `${e.source}>${e.destination}>${e.protocol}${e.mirror ? ">mirror" : ""}`; }
// "mtls" (every request over mTLS), "partial", or "" (plaintext, or not known).
function security(e) {
  if (e.mtls) return "mtls";
  return (e.mtls_fraction || 0) > 0 ? "partial" : "";
}
// A padlock (10 × 11) at x, y in the graph; `id` is its edge's.
const LOCK_SHAPE = `<path d="M2.5,5.2 V3.6 a2.5,2.5 0 0 1 5,0 V5.2"></path><rect x="1" y="5" width="8" height="6" rx="1.3"></rect>`;
function lockMarker(x, y, id, level) {
  return `<g class="lock ${level}" data-edge-lock="${esc(id)}" data-edge-id="${esc(id)}" transform="translate(${x.toFixed(1)},${y.toFixed(1)})">${LOCK_SHAPE}</g>`;
}
// The same padlock inline in HTML.
function lockIcon(level) {
  return `<svg class="lock ${level}" width="10" height="11" viewBox="0 0 10 11" aria-hidden="true">${LOCK_SHAPE}</svg>`;
}
function nodeName(id) {
  if (id === "unknown/unknown/unknown") return "outside the mesh";
  const [, service, version] = id.split("/");
  return version ? `${service} ${version}` : service;
}

// ---------------------------------------------------------------------------------------------
// layout: services in columns by call depth (longest path from the callers), versions stacked
// inside their service. Positions depend only on which services call which (remembered for the
// session), never on the numbers, so the picture holds still while traffic changes.

function computeLayout(graph) {
  const groups = new Map();
  for (const n of graph.nodes) {
    const k = serviceKey(n);
    if (!groups.has(k)) groups.set(k, { key: k, namespace: n.namespace, service: n.service, external: n.external, versions: [] });
    groups.get(k).versions.push(n);
  }
  for (const g of groups.values()) g.versions.sort((a, b) => a.version.localeCompare(b.version, undefined, { numeric: true }));
  const nodeGroup = new Map(graph.nodes.map((n) => [n.id, serviceKey(n)]));
  const preds = new Map([...groups.keys()].map((k) => [k, new Set()]));
  for (const link of state.structure.edges) {
    const [a, b] = link.split("→");
    if (preds.has(a) && preds.has(b) && a !== b) preds.get(b).add(a);
  }
  const depth = new Map();
  const onStack = new Set();
  const depthOf = (k) => {
    if (depth.has(k)) return depth.get(k);
    if (groups.get(k).external) { depth.set(k, 0); return 0; }
    onStack.add(k);
    let d = 0;
    for (const p of [...preds.get(k)].sort()) {
      if (!onStack.has(p)) d = Math.max(d, depthOf(p) + 1);
    }
    onStack.delete(k);
    depth.set(k, d);
    return d;
  };
  const keys = [...groups.keys()].sort();
  keys.forEach(depthOf);
  const columns = [];
  for (const k of keys) {
    const d = depth.get(k);
    (columns[d] = columns[d] || []).push(groups.get(k));
  }
  // Order each column by the mean position of its callers (fewer crossings), then by name.
  const order = new Map();
  const pos = new Map();
  let maxY = 0;
  columns.forEach((col, ci) => {
    if (!col) return;
    for (const g of col) {
      const ps = [...preds.get(g.key)].filter((p) => order.has(p));
      g.bary = ps.length ? ps.reduce((s, p) => s + order.get(p), 0) / ps.length : Infinity;
    }
    col.sort((a, b) => (a.bary - b.bary) || a.key.localeCompare(b.key));
    let y = MARGIN;
    col.forEach((g, i) => {
      order.set(g.key, i);
      g.x = MARGIN + ci * (GROUP_W + COL_GAP);
      g.y = y;
      g.h = HEADER_H + g.versions.length * (ROW_H + ROW_GAP) + 6;
      g.versions.forEach((n, vi) => {
        pos.set(n.id, { x: g.x + 8, y: g.y + HEADER_H + vi * (ROW_H + ROW_GAP), w: GROUP_W - 16, h: ROW_H });
      });
      y += g.h + GROUP_GAP;
    });
    maxY = Math.max(maxY, y);
  });
  const n = columns.length;
  return { groups: [...groups.values()], pos, width: MARGIN * 2 + n * GROUP_W + Math.max(0, n - 1) * COL_GAP, height: maxY + MARGIN - GROUP_GAP, nodeGroup };
}

function remember(graph) {
  let changed = false;
  const byId = new Map(graph.nodes.map((n) => [n.id, n]));
  for (const n of graph.nodes) {
    const k = serviceKey(n);
    if (!state.structure.services.has(k)) { state.structure.services.add(k); changed = true; }
  }
  for (const e of graph.edges) {
    const s = byId.get(e.source), d = byId.get(e.destination);
    if (!s || !d) continue;
    const link = serviceKey(s) + "→" + serviceKey(d);
    if (!state.structure.edges.has(link)) { state.structure.edges.add(link); changed = true; }
  }
  return changed;
}

// ---------------------------------------------------------------------------------------------
// drawing

function edgeGeometry(a, b, offset) {
  const x1 = a.x + a.w, y1 = a.y + a.h / 2 + offset;
  const x2 = b.x, y2 = b.y + b.h / 2 + offset;
  let c1x, c2x;
  if (x2 > x1 + 10) {
    const dx = Math.max(50, (x2 - x1) / 2);
    c1x = x1 + dx; c2x = x2 - dx;
  } else {
    // Same column or backwards: loop out to the right and back in from the left.
    c1x = x1 + 120; c2x = x2 - 120;
  }
  const d = `M${x1.toFixed(1)},${y1.toFixed(1)} C${c1x.toFixed(1)},${y1.toFixed(1)} ${c2x.toFixed(1)},${y2.toFixed(1)} ${x2.toFixed(1)},${y2.toFixed(1)}`;
  // A point of the cubic at t.
  const at = (t) => {
    const u = 1 - t;
    return {
      x: u * u * u * x1 + 3 * u * u * t * c1x + 3 * u * t * t * c2x + t * t * t * x2,
      y: u * u * u * y1 + 3 * u * u * t * y1 + 3 * u * t * t * y2 + t * t * t * y2,
    };
  };
  return { d, at };
}

function edgeLabel(e) {
  const parts = [fmtRate(e.rps) + (e.protocol === "tcp" && e.requests === 0 ? " conn/s" : " rps")];
  if (e.requests > 0) parts.push(fmtPct(e.error_rate));
  if (e.p99_ms != null) parts.push("p99 " + fmtMs(e.p99_ms));
  if (e.mirror) parts.unshift("mirror");
  return parts.join(" · ");
}

function edgeTitle(e) {
  const codes = Object.entries(e.response_codes).map(([c, n]) => `${c === "0" ? "no response" : c}: ${n}`).join(", ");
  const grpc = Object.entries(e.grpc_statuses).map(([c, n]) => `${c}: ${n}`).join(", ");
  return [
    `${e.source} → ${e.destination}${e.mirror ? " (mirror)" : ""}`,
    `${e.protocol}, from ${e.reported_by} reports`,
    `${fmtRate(e.rps)} rps, ${e.requests} requests, errors ${fmtPct(e.error_rate)}`,
    `p50 ${fmtMs(e.p50_ms)}  p95 ${fmtMs(e.p95_ms)}  p99 ${fmtMs(e.p99_ms)}`,
    `in ${fmtBytes(e.received_bytes_per_second)}, out ${fmtBytes(e.sent_bytes_per_second)}`,
    codes ? `HTTP: ${codes}` : "",
    grpc ? `gRPC status: ${grpc}` : "",
    e.version_fallbacks ? `fallbacks: ${e.version_fallbacks}` : "",
    e.active_connections ? `open connections: ${e.active_connections}` : "",
    Object.keys(e.mirror_outcomes).length ? "mirror: " + Object.entries(e.mirror_outcomes).map(([k, n]) => `${k} ${n}`).join(", ") : "",
    securityText(e),
  ].filter(Boolean).join("\n");
}

function securityText(e) {
  const principals = e.source_principals || [];
  const who = principals.length ? ` from ${principals.join(", ")}` : "";
  switch (security(e)) {
    case "mtls": return `mTLS${who}`;
    case "partial": return `mTLS for ${fmtPct(e.mtls_fraction)}${who}, the rest plaintext`;
    default: return e.reported_by === "inbound" ? "plaintext" : "";
  }
}

function render() {
  const graph = state.graph;
  if (!graph) return;
  const structural = remember(graph);
  const key = graph.nodes.map((n) => n.id).join("|");
  if (structural || key !== state.layoutKey || !state.layout) {
    state.layout = computeLayout(graph);
    state.layoutKey = key;
    if (!state.view.user) fitView();
  }
  const L = state.layout;
  $("empty").hidden = graph.nodes.length > 0;

  const inbound = new Map();
  const mirrored = new Map();
  for (const e of graph.edges) {
    const m = e.mirror ? mirrored : inbound;
    m.set(e.destination, (m.get(e.destination) || 0) + e.rps);
  }
  const maxRps = Math.max(1e-9, ...graph.edges.map((e) => e.rps));
  const labelled = new Set([...graph.edges].sort((a, b) => b.rps - a.rps).slice(0, LABEL_LIMIT));

  const out = [];
  // Groups and version rows first, edges above them.
  for (const g of L.groups) {
    const sel = state.selected && state.selected.namespace === g.namespace && state.selected.service === g.service;
    const total = g.versions.reduce((s, n) => s + (inbound.get(n.id) || 0), 0);
    out.push(`<g class="group${sel ? " selected" : ""}${g.external ? " external" : ""}" data-service="${esc(g.key)}">`);
    out.push(`<rect class="box" x="${g.x}" y="${g.y}" width="${GROUP_W}" height="${g.h}"></rect>`);
    out.push(`<text class="title" x="${g.x + 12}" y="${g.y + 17}">${esc(g.external ? "outside the mesh" : g.service)}</text>`);
    out.push(`<text class="ns" x="${g.x + 12}" y="${g.y + 31}">${esc(g.external ? "no sidecar" : g.namespace)}</text>`);
    if (total > 0) out.push(`<text class="ns" text-anchor="end" x="${g.x + GROUP_W - 12}" y="${g.y + 17}">${fmtRate(total)} rps in</text>`);
    for (const n of g.versions) {
      const p = L.pos.get(n.id);
      const rps = inbound.get(n.id) || 0;
      const idle = !n.external && n.ready_endpoints === 0;
      out.push(`<g class="node${idle ? " idle" : ""}" data-node="${esc(n.id)}">`);
      out.push(`<rect x="${p.x}" y="${p.y}" width="${p.w}" height="${p.h}"></rect>`);
      const label = n.external ? "callers" : (n.version || "(unversioned)");
      const pillW = Math.max(30, 8 + label.length * 7);
      out.push(`<rect class="pill" x="${p.x + 6}" y="${p.y + 6}" width="${pillW}" height="${p.h - 12}" fill="${n.external ? "#30363d" : "#1f6feb33"}" stroke="${n.external ? "#484f58" : "#1f6feb"}"></rect>`);
      out.push(`<text x="${p.x + 6 + pillW / 2}" y="${p.y + 19}" text-anchor="middle">${esc(label)}</text>`);
      const meta = n.external ? "" : `${n.ready_endpoints} ready`;
      out.push(`<text class="meta" x="${p.x + pillW + 14}" y="${p.y + 19}">${meta}</text>`);
      const shadow = mirrored.get(n.id) || 0;
      if (rps > 0) out.push(`<text x="${p.x + p.w - 8}" y="${p.y + 19}" text-anchor="end">${fmtRate(rps)} rps</text>`);
      else if (shadow > 0) out.push(`<text x="${p.x + p.w - 8}" y="${p.y + 19}" text-anchor="end" fill="${COLORS.mirror}">${fmtRate(shadow)} rps mirror</text>`);
      out.push(`<title>${esc(n.id)}\n${n.ready_endpoints} ready endpoints, ${n.proxies} connected proxies</title></g>`);
    }
    out.push(`</g>`);
  }
  // Parallel edges between the same rows are fanned out a little.
  const seen = new Map();
  const labels = [];
  // Labels stay off the nodes and each other.
  const placed = L.groups.map((g) => ({ x: g.x, y: g.y, w: GROUP_W, h: g.h }));
  for (const e of graph.edges) {
    const a = L.pos.get(e.source), b = L.pos.get(e.destination);
    if (!a || !b) continue;
    const pair = e.source + ">" + e.destination;
    const i = seen.get(pair) || 0;
    seen.set(pair, i + 1);
    const geo = edgeGeometry(a, b, (i % 2 ? 1 : -1) * Math.ceil(i / 2) * 6);
    const cls = healthClass(e);
    const width = 1.5 + 7 * Math.sqrt(e.rps / maxRps);
    const id = edgeId(e);
    const secured = security(e);
    const chosen = state.selectedEdge === id ? " selected" : "";
    out.push(`<path class="edge${e.mirror ? " mirror" : ""}${secured ? " " + secured : ""}${chosen}" data-edge="${esc(pair)}" data-edge-id="${esc(id)}" d="${geo.d}" stroke="${COLORS[cls]}" stroke-width="${width.toFixed(2)}" marker-end="url(#arrow)"><title>${esc(edgeTitle(e))}</title></path>`);
    let locked = false;
    if (labelled.has(e)) {
      const text = edgeLabel(e);
      // Room for the padlock at the label's left.
      const pad = secured ? 14 : 0;
      const w = text.length * 5.9 + 12 + pad;
      // The first free spot along the edge, middle first; a label with no room shows on hover.
      const spot = [0.5, 0.38, 0.62, 0.28, 0.72].flatMap((t) => {
        const p = geo.at(t);
        return [0, -11, 11].map((dy) => ({ x: p.x - w / 2, y: p.y - 8.5 + dy, w, h: 17 }));
      }).find((r) => !placed.some((o) => r.x < o.x + o.w && o.x < r.x + r.w && r.y < o.y + o.h && o.y < r.y + r.h));
      if (spot) {
        placed.push(spot);
        // The padlock has no text: the label's textContent starts with the rate.
        const lock = secured ? lockMarker(spot.x + 4, spot.y + 3, id, secured) : "";
        locked = Boolean(secured);
        labels.push(`<g class="label" data-edge-label="${esc(pair)}${e.mirror ? " mirror" : ""}" data-edge-id="${esc(id)}"><rect x="${spot.x.toFixed(1)}" y="${spot.y.toFixed(1)}" width="${w.toFixed(1)}" height="17"></rect><text x="${(spot.x + pad + (w - pad) / 2).toFixed(1)}" y="${(spot.y + 12.5).toFixed(1)}" text-anchor="middle"${e.mirror ? ` fill="${COLORS.mirror}"` : ""}>${esc(text)}</text>${lock}<title>${esc(edgeTitle(e))}</title></g>`);
      }
    }
    // An mTLS edge without a label still shows its padlock, on the edge's middle.
    if (secured && !locked) {
      const p = geo.at(0.5);
      labels.push(lockMarker(p.x - 5, p.y - 5.5, id, secured));
    }
  }
  $("viewport").innerHTML = out.join("") + labels.join("");
  applyView();
  if (state.selectedEdge) renderEdgePanel();

  // Totals.
  const primary = graph.edges.filter((e) => !e.mirror);
  const rps = primary.reduce((s, e) => s + e.rps, 0);
  const req = primary.reduce((s, e) => s + e.requests, 0);
  const err = primary.reduce((s, e) => s + e.error_rate * e.requests, 0);
  const services = new Set(graph.nodes.filter((n) => !n.external).map(serviceKey)).size;
  $("totals").innerHTML = `<span><b>${services}</b> services</span><span><b>${graph.nodes.length}</b> versions</span><span><b>${graph.edges.length}</b> edges</span><span><b>${fmtRate(rps)}</b> rps</span><span><b>${req ? fmtPct(err / req) : "0%"}</b> errors</span>`;

  // Namespaces seen.
  const sel = $("namespace");
  const have = new Set([...sel.options].map((o) => o.value));
  for (const ns of [...new Set(graph.nodes.map((n) => n.namespace))].sort()) {
    if (!have.has(ns) && ns !== "unknown") sel.add(new Option(ns, ns));
  }
}

// ---------------------------------------------------------------------------------------------
// zoom and pan

function applyView() {
  const v = state.view;
  $("viewport").setAttribute("transform", `translate(${v.x.toFixed(1)},${v.y.toFixed(1)}) scale(${v.k.toFixed(4)})`);
}
function fitView() {
  const L = state.layout;
  if (!L) return;
  const box = $("graph").getBoundingClientRect();
  const k = Math.min(1, Math.max(0.15, Math.min(box.width / L.width, (box.height - 50) / L.height)));
  state.view.k = k;
  state.view.x = Math.max(0, (box.width - L.width * k) / 2);
  state.view.y = Math.max(0, (box.height - 50 - L.height * k) / 2);
  applyView();
}
(function zoomAndPan() {
  const svg = $("graph");
  svg.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const r = svg.getBoundingClientRect();
    const mx = ev.clientX - r.left, my = ev.clientY - r.top;
    const v = state.view;
    const k = Math.min(4, Math.max(0.1, v.k * Math.exp(-ev.deltaY * 0.0015)));
    v.x = mx - (mx - v.x) * (k / v.k);
    v.y = my - (my - v.y) * (k / v.k);
    v.k = k;
    v.user = true;
    applyView();
  }, { passive: false });
  let drag = null;
  svg.addEventListener("mousedown", (ev) => { drag = { x: ev.clientX, y: ev.clientY, vx: state.view.x, vy: state.view.y, moved: false }; });
  window.addEventListener("mousemove", (ev) => {
    if (!drag) return;
    const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; svg.classList.add("dragging"); }
    if (drag.moved) { state.view.x = drag.vx + dx; state.view.y = drag.vy + dy; state.view.user = true; applyView(); }
  });
  window.addEventListener("mouseup", () => { setTimeout(() => { drag = null; }, 0); svg.classList.remove("dragging"); });
  svg.addEventListener("click", (ev) => {
    if (drag && drag.moved) return;
    const edge = ev.target.closest("[data-edge-id]");
    if (edge) { selectEdge(edge.getAttribute("data-edge-id")); return; }
    const g = ev.target.closest("[data-service]");
    if (!g) return;
    const [namespace, ...rest] = g.getAttribute("data-service").split("/");
    const service = rest.join("/");
    if (namespace === "unknown" && service === "unknown") return;
    select({ namespace, service });
  });
  window.addEventListener("resize", () => { if (!state.view.user) fitView(); });
})();

// ---------------------------------------------------------------------------------------------
// live updates

// ---------------------------------------------------------------------------------------------
// admin credentials: the control plane may want a token (401) or a write token (403). The page
// asks once and keeps it in sessionStorage; writes send it in the Authorization header, reads
// also as a cookie (EventSource cannot send a header; the server never takes a cookie for writes).

const TOKEN_KEY = "serin-token";
function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
function keepToken(t) {
  sessionStorage.setItem(TOKEN_KEY, t);
  document.cookie = `serin-token=${t}; path=/api; SameSite=Strict`;
}
if (token()) keepToken(token());
function askToken(why) {
  const t = window.prompt(`${why}\n\nEnter an admin token (the admin-tokens file in serin-control's store; serinctl up prints where it is):`, "");
  if (!t || !t.trim()) return false;
  keepToken(t.trim());
  return true;
}
async function api(url, init) {
  const send = () => {
    const headers = { ...((init && init.headers) || {}) };
    if (token()) headers.authorization = `Bearer ${token()}`;
    return fetch(url, { ...(init || {}), headers });
  };
  let r = await send();
  if (r.status === 401 || r.status === 403) {
    const why = r.status === 401 ? "This needs an admin token." : "This change needs a token with role write.";
    if (askToken(why)) r = await send();
  }
  return r;
}

async function connect() {
  if (state.source) state.source.close();
  const q = new URLSearchParams({ window: state.window, namespace: state.namespace });
  // The stream cannot show a 401: make sure the reads are allowed (asking for a token) first.
  const probe = await api("/api/topology?" + q).catch(() => null);
  if (probe && (probe.status === 401 || probe.status === 403)) {
    $("live").className = "live off";
    $("live").textContent = "needs an admin token: reload to enter one";
    return;
  }
  const src = new EventSource("/api/stream?" + q);
  state.source = src;
  src.addEventListener("topology", (ev) => {
    state.graph = JSON.parse(ev.data);
    state.lastUpdate = Date.now();
    state.updates += 1;
    render();
    // The release panel follows the same updates (at most every 2 s), so its numbers match the graph's.
    if (state.selected && Date.now() - (state.panelAt || 0) >= 1900) refreshPanel();
  });
  src.onerror = () => { $("live").className = "live off"; $("live").textContent = "reconnecting…"; };
}
setInterval(() => {
  const el = $("live");
  if (!state.lastUpdate) return;
  const age = (Date.now() - state.lastUpdate) / 1000;
  el.className = age < 5 ? "live" : "live off";
  el.textContent = age < 5 ? `live · ${state.window} window` : `no update for ${age.toFixed(0)} s`;
}, 500);
$("window").addEventListener("change", (ev) => { state.window = ev.target.value; connect(); refreshPanel(); });
$("namespace").addEventListener("change", (ev) => {
  state.namespace = ev.target.value;
  state.structure = { services: new Set(), edges: new Set() };
  state.layout = null; state.view.user = false;
  connect();
});

// ---------------------------------------------------------------------------------------------
// the release panel

function select(sel) {
  state.selected = sel;
  state.selectedEdge = null;
  state.detail = null;
  state.editKey = "";
  $("panel").hidden = false;
  $("panel-title").textContent = sel.service;
  $("panel-sub").textContent = sel.namespace;
  $("panel-body").innerHTML = `<div class="note">loading…</div>`;
  render();
  refreshPanel();
  if (!state.layoutFitPending && !state.view.user) setTimeout(fitView, 0);
}
$("panel-close").addEventListener("click", () => { state.selected = null; state.selectedEdge = null; $("panel").hidden = true; render(); if (!state.view.user) setTimeout(fitView, 0); });

// ---------------------------------------------------------------------------------------------
// the edge panel: drawn from the graph on every update, no request of its own

function selectEdge(id) {
  state.selected = null;
  state.detail = null;
  state.selectedEdge = id;
  $("panel").hidden = false;
  render();
  if (!state.view.user) setTimeout(fitView, 0);
}

function renderEdgePanel() {
  const id = state.selectedEdge;
  const [source, destination, protocol, mirror] = id.split(">");
  const e = state.graph && state.graph.edges.find((x) => edgeId(x) === id);
  $("panel-title").textContent = `${nodeName(source)} → ${nodeName(destination)}`;
  $("panel-sub").textContent = `${protocol}${mirror ? " · mirror" : ""}${e ? ` · from ${e.reported_by} reports` : ""}`;
  if (!e) {
    $("panel-body").innerHTML = `<div class="note" id="edge-detail">No traffic on this edge in the ${esc(state.window)} window.</div>`;
    return;
  }
  const level = security(e);
  const principals = e.source_principals || [];
  let badge;
  if (level === "mtls") badge = `<span class="badge ok">${lockIcon("mtls")} mTLS</span> <span class="muted">every request, client certificates verified</span>`;
  else if (level === "partial") badge = `<span class="badge warn">${lockIcon("partial")} partly mTLS</span> <span class="muted">${fmtPct(e.mtls_fraction)} over mTLS, the rest plaintext</span>`;
  else if (e.reported_by === "inbound") badge = `<span class="badge">plaintext</span>`;
  else badge = `<span class="badge">not known</span><div class="note">Only the caller's sidecar reports this edge: mTLS is seen by the callee's sidecar.</div>`;
  const who = principals.length
    ? `<div class="barlabel">Client principals (verified SPIFFE IDs)</div><ul class="plain" id="edge-principals">${principals.map((p) => `<li class="mono" data-principal="${esc(p)}">${esc(p)}</li>`).join("")}</ul>`
    : "";
  const codes = Object.entries(e.response_codes).map(([c, n]) => `${c === "0" ? "no response" : esc(c)}: ${n}`).join(", ");
  const rows = [
    ["rate", `${fmtRate(e.rps)} ${e.protocol === "tcp" && e.requests === 0 ? "conn/s" : "rps"}`],
    ["requests", `${e.requests}`],
    ["errors", fmtPct(e.error_rate)],
    ["latency", `p50 ${fmtMs(e.p50_ms)} · p95 ${fmtMs(e.p95_ms)} · p99 ${fmtMs(e.p99_ms)}`],
    ["bytes", `in ${fmtBytes(e.received_bytes_per_second)} · out ${fmtBytes(e.sent_bytes_per_second)}`],
    codes ? ["HTTP", codes] : null,
    e.active_connections ? ["open connections", `${e.active_connections}`] : null,
    e.version_fallbacks ? ["fallbacks", `${e.version_fallbacks}`] : null,
  ].filter(Boolean).map(([k, v]) => `<tr><td class="muted">${k}</td><td>${v}</td></tr>`).join("");
  $("panel-body").innerHTML = `<div id="edge-detail" data-edge-detail="${esc(id)}">
    <h3 style="margin-top:0">Security</h3><div id="edge-security" data-security="${level || "none"}">${badge}</div>${who}
    <h3>Traffic · ${state.graph.window_seconds} s window</h3><table class="split">${rows}</table></div>`;
}

async function refreshPanel() {
  const sel = state.selected;
  if (!sel) return;
  state.panelAt = Date.now();
  const q = new URLSearchParams({ namespace: sel.namespace, window: state.window });
  try {
    const r = await api(`/api/services/${encodeURIComponent(sel.service)}?${q}`);
    const body = await r.json();
    if (state.selected !== sel) return;
    if (!r.ok) { $("panel-body").innerHTML = `<div class="note">${esc(body.error || r.statusText)}</div>`; return; }
    state.detail = body;
    renderPanel(body);
  } catch (e) {
    // The next refresh retries.
  }
}
// Without live updates (stream down) the panel still refreshes.
setInterval(() => { if (Date.now() - (state.panelAt || 0) >= 4000) refreshPanel(); }, 1000);

function routeText(route) {
  if (!route || !route.length) return "–";
  const total = route.reduce((s, w) => s + w.weight, 0) || 1;
  return route.map((w) => `${esc(w.version)} ${Math.round((100 * w.weight) / total)}%`).join(", ");
}
function matchText(blocks) {
  if (!blocks || !blocks.length) return "every request";
  return blocks.map((b) => {
    const parts = [];
    const m = (kind, name, v) => {
      const op = Object.keys(v).find((k) => k !== "ignoreCase" && v[k] !== undefined && v[k] !== null);
      parts.push(`${kind} ${name} ${op} ${JSON.stringify(v[op])}`);
    };
    for (const [k, v] of Object.entries(b.headers || {})) m("header", k, v);
    for (const [k, v] of Object.entries(b.cookies || {})) m("cookie", k, v);
    for (const [k, v] of Object.entries(b.query || {})) m("query", k, v);
    if (b.uri) m("uri", "", b.uri);
    if (b.method) parts.push("method " + b.method);
    if (b.os) parts.push("os " + b.os.join("|"));
    return parts.join(" and ") || "every request";
  }).join(" <b>or</b> ");
}

function renderPanel(d) {
  const p = d.policy;
  const nacked = d.proxies.list.some((x) => !x.in_sync && x.nack);
  const sync = d.proxies.total > 0 && d.proxies.in_sync === d.proxies.total ? "ok" : nacked ? "bad" : "warn";
  const status = `<div class="actions" style="margin-top:0">
      <span class="badge ${sync}" id="sync">proxies in sync ${d.proxies.in_sync}/${d.proxies.total}</span>
      <span class="badge">${p ? `policy ${esc(p.name)} · generation ${p.generation}` : "no policy: balanced over ready versions"}</span>
      <span class="badge">${fmtRate(d.observed_rps)} rps in</span></div>`;
  const rows = d.versions.map((v) => `<tr data-version="${esc(v.version)}">
      <td><b>${esc(v.version || "(unversioned)")}</b><div class="barlabel">${v.ready_endpoints}/${v.total_endpoints} ready</div></td>
      <td class="bars">
        <div class="barlabel">configured ${v.configured_percent.toFixed(0)}%</div><div class="bar conf"><i style="width:${v.configured_percent}%"></i></div>
        <div class="barlabel">observed ${v.observed_percent == null ? "–" : v.observed_percent.toFixed(1) + "%"}</div><div class="bar obs"><i style="width:${v.observed_percent || 0}%"></i></div>
      </td>
      <td>${fmtRate(v.rps)} rps<div class="barlabel">${fmtPct(v.error_rate)} err · p99 ${fmtMs(v.p99_ms_max)}</div></td>
    </tr>`).join("");
  const split = `<h3>Split per version · ${d.window_seconds} s window</h3>
    <table class="split"><tr><th>version</th><th>configured vs observed</th><th>traffic</th></tr>${rows}</table>
    <div class="note">Observed: requests that reached each version (every caller, rules included), from the sidecars' telemetry.</div>`;

  const editKey = `${d.namespace}/${d.service}@${p ? p.generation : 0}:${d.versions.map((v) => v.version).join(",")}`;
  const editing = document.activeElement && document.activeElement.classList.contains("weight");
  let edit = $("p-edit") ? $("p-edit").outerHTML : "";
  if (editKey !== state.editKey && !editing) {
    state.editKey = editKey;
    const inputs = d.versions.map((v) => `<tr><td>${esc(v.version)}</td>
        <td><input class="weight" type="number" min="0" max="1000" step="1" data-weight="${esc(v.version)}" value="${v.weight}"></td>
        <td><button data-promote="${esc(v.version)}" ${v.ready_endpoints ? "" : "title=\"no ready endpoints\""}>Take over</button></td></tr>`).join("");
    edit = `<div id="p-edit"><h3>Change the release</h3>
      <table class="split"><tr><th>version</th><th>weight</th><th></th></tr>${inputs}</table>
      <div class="actions"><button class="primary" id="apply-weights">Apply weights</button>
      <button class="danger" id="rollback" ${p && p.generation > 1 ? "" : "disabled"}>Roll back</button></div>
      <div class="note">Weights are relative; rules, mirror and stickiness are kept. Take over sends 100% to one version and removes rules and mirror. Roll back restores the previous generation.</div></div>`;
  }

  // Rules and the default route with their hits: what each route's split chose per version,
  // next to its configured weights (the sidecars' counts for this generation, in the window).
  const hitsOf = (h, rule) => {
    if (!h || !h.total) return `<div class="barlabel hits" data-hits="${esc(rule)}" data-total="0">hits: none in the window</div>`;
    const rows = h.versions.map((v) => `<tr data-hit-version="${esc(v.version)}"><td>${esc(v.version)}</td><td>${v.hits}</td>
        <td class="bars"><div class="barlabel">configured ${v.configured_percent.toFixed(0)}% · observed ${v.observed_percent == null ? "–" : v.observed_percent.toFixed(1) + "%"}</div>
        <div class="bar conf"><i style="width:${v.configured_percent}%"></i></div><div class="bar obs"><i style="width:${v.observed_percent || 0}%"></i></div></td></tr>`).join("");
    return `<div class="barlabel hits" data-hits="${esc(rule)}" data-total="${h.total}">hits: ${h.total}</div>
      <table class="split"><tr><th>version</th><th>hits</th><th>configured vs observed</th></tr>${rows}</table>`;
  };
  const rules = p && p.rules.length ? p.rules.map((r, i) => `<div class="rule" data-rule="${esc(r.name)}"><span class="name">${i + 1}. ${esc(r.name)}</span> → ${routeText(r.route)}
      <div class="mono">${matchText(r.match)}</div>${hitsOf(r.hits, r.name)}</div>`).join("")
    : `<div class="note">No rules: every request takes the default split.</div>`;
  const defaultRoute = p ? `<div class="rule" data-rule=""><span class="name">default</span> → ${routeText(p.default)}
      <div class="mono">requests no rule takes</div>${hitsOf(p.default_hits, "")}</div>` : "";
  const rulesSec = p ? `<h3>Rules and hits · generation ${p.generation}</h3>${rules}${defaultRoute}
      <div class="note">Hits: requests each route's split chose a version for (before any fallback), counted by the callers' sidecars over the window, this generation only.</div>` : "";
  const mirror = p && p.mirror
    ? `<div>${esc(p.mirror.version)} gets a copy of ${p.mirror.percent}% of requests · observed ${fmtRate(d.mirror_observed_rps)} rps</div>`
    : `<div class="note">No mirroring configured${d.mirror_observed_rps > 0 ? ` (observed ${fmtRate(d.mirror_observed_rps)} rps of mirror traffic)` : ""}.</div>`;
  const sticky = p && p.stickiness ? `<div class="note">Sticky by ${p.stickiness.cookie ? "cookie " + esc(p.stickiness.cookie) : "header " + esc(p.stickiness.header)}.</div>` : "";
  const proxies = d.proxies.list.length ? `<ul class="plain">${d.proxies.list.map((x) => `<li><span class="badge ${x.in_sync ? "ok" : x.nack ? "bad" : "warn"}">${x.in_sync ? "in sync" : x.nack ? "NACK" : "pushing"}</span> ${esc(x.pod)} <span class="muted">${esc(x.version)}</span>${x.nack ? `<div class="note">${esc(x.nack)}</div>` : ""}</li>`).join("")}</ul>` : `<div class="note">No proxy of this service is connected.</div>`;
  const history = p ? `<ul class="plain">${p.history.map((h) => `<li><b>g${h.generation}</b> ${esc(h.cause.replace("_", " "))}${h.restored_generation ? " of g" + h.restored_generation : ""} · ${routeText(h.default)} <span class="muted">${new Date(h.time_ms).toLocaleTimeString()}</span></li>`).join("")}</ul>` : "";

  $("panel-body").innerHTML = status + split + edit + rulesSec + `<h3>Mirror</h3>${mirror}${sticky}<h3>Proxies</h3>${proxies}` + (p ? `<h3>History</h3>${history}` : "");
}

// Remember typed weights across panel refreshes.
const typed = new Map();
document.addEventListener("input", (ev) => {
  if (ev.target.classList && ev.target.classList.contains("weight")) typed.set(ev.target.getAttribute("data-weight"), ev.target.value);
});
const observer = new MutationObserver(() => {
  for (const el of document.querySelectorAll("input.weight")) {
    const v = typed.get(el.getAttribute("data-weight"));
    if (v !== undefined && el.value !== v) el.value = v;
  }
});
observer.observe($("panel-body"), { childList: true, subtree: true });

function confirmAction(title, text) {
  return new Promise((resolve) => {
    $("modal-title").textContent = title;
    $("modal-text").textContent = text;
    $("modal").hidden = false;
    const done = (ok) => { $("modal").hidden = true; $("confirm-ok").onclick = null; $("confirm-cancel").onclick = null; resolve(ok); };
    $("confirm-ok").onclick = () => done(true);
    $("confirm-cancel").onclick = () => done(false);
    $("confirm-ok").focus();
  });
}
let toastTimer = 0;
function toast(text, error) {
  const t = $("toast");
  t.textContent = text;
  t.className = "toast" + (error ? " error" : "");
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, 6000);
}

async function post(action, body) {
  const sel = state.selected;
  const q = new URLSearchParams({ namespace: sel.namespace });
  const r = await api(`/api/services/${encodeURIComponent(sel.service)}/${action}?${q}`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  });
  const answer = await r.json();
  if (!r.ok) {
    toast(`${action} failed: ${answer.error}${r.status === 409 ? " (reload the panel and retry)" : ""}`, true);
    return;
  }
  typed.clear();
  state.editKey = "";
  const warn = (answer.warnings || []).map((w) => w.message).join("; ");
  toast(`${sel.service}: generation ${answer.generation} stored · ${routeText(answer.default)}${warn ? " · " + warn : ""}`);
  refreshPanel();
}

$("panel-body").addEventListener("click", async (ev) => {
  const d = state.detail;
  if (!d) return;
  const generation = d.policy ? d.policy.generation : 0;
  const ifGen = d.policy ? generation : undefined;
  if (ev.target.id === "apply-weights") {
    const weights = [...document.querySelectorAll("input.weight")].map((el) => ({ version: el.getAttribute("data-weight"), weight: Math.max(0, Math.round(Number(el.value) || 0)) }));
    const total = weights.reduce((s, w) => s + w.weight, 0);
    if (!total) { toast("at least one weight must be above 0", true); return; }
    const text = weights.map((w) => `${w.version}: ${Math.round((100 * w.weight) / total)}%`).join("\n");
    if (await confirmAction(`Change the split of ${d.service}?`, text + "\n\nRules, mirror and stickiness are kept.")) post("weights", { weights, if_generation: ifGen });
  } else if (ev.target.dataset && ev.target.dataset.promote) {
    const v = ev.target.dataset.promote;
    if (await confirmAction(`${v} takes over ${d.service}?`, `100% of ${d.service}'s traffic goes to ${v}; its rules and mirror are removed.`)) post("promote", { version: v, if_generation: ifGen });
  } else if (ev.target.id === "rollback") {
    if (await confirmAction(`Roll back ${d.service}?`, `Restores the policy as it was before generation ${generation}, as a new generation.`)) post("rollback", { if_generation: ifGen });
  }
});

connect();
