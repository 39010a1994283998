// The FluxGate dashboard: polls /api/v1/dashboard and renders it with plain DOM and
// SVG (no library, no outside request). Data is written with textContent only.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "fluxgate-admin-token";
const SVG = "http://www.w3.org/2000/svg";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function stateCell(state) {
  const value = state === null || state === undefined ? "-" : String(state);
  return el("td", value, "state-" + value.replace(/[^a-z_]/g, "_"));
}

function fill(tableId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = el("tr");
    const td = el("td", "none", "empty");
    td.colSpan = 8;
    tr.append(td);
    body.append(tr);
    return;
  }
  for (const cells of rows) {
    const tr = el("tr");
    for (const cell of cells) tr.append(cell instanceof Node ? cell : el("td", cell));
    body.append(tr);
  }
}

function num(value, digits) {
  const td = el("td", value === null || value === undefined ? "-" : Number(value).toFixed(digits), "num");
  return td;
}

function duration(seconds) {
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds / 3600) % 24;
  const m = Math.floor(seconds / 60) % 60, s = seconds % 60;
  return (d ? d + "d " : "") + (h ? h + "h " : "") + (m ? m + "m " : "") + s + "s";
}

function polyline(points, key, max, width, height, cls) {
  const line = document.createElementNS(SVG, "polyline");
  const step = width / Math.max(points.length - 1, 1);
  const coords = points.map((p, i) => {
    const v = p[key] === null || p[key] === undefined ? 0 : p[key];
    return (i * step).toFixed(1) + "," + (height - (v / max) * (height - 4) - 2).toFixed(1);
  });
  line.setAttribute("points", coords.join(" "));
  line.setAttribute("class", cls);
  return line;
}

function chart(route, points) {
  const box = el("div", null, "chart");
  const last = points[points.length - 1] || {};
  box.append(el("h3", route));
  const width = 360, height = 120;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const maxRps = Math.max(1, ...points.map((p) => p.rps));
  const maxP99 = Math.max(1, ...points.map((p) => p.p99_ms || 0));
  svg.append(polyline(points, "rps", maxRps, width, height, "rps"));
  svg.append(polyline(points, "p99_ms", maxP99, width, height, "p99"));
  box.append(svg);
  const p99 = last.p99_ms === null || last.p99_ms === undefined ? "-" : last.p99_ms.toFixed(2) + " ms";
  box.append(el("div", "req/s now " + (last.rps || 0).toFixed(1) + " (max " + maxRps.toFixed(1) +
    ") · p99 now " + p99 + " (max " + maxP99.toFixed(2) + " ms) · last " + points.length + " s", "legend"));
  return box;
}

function render(data) {
  document.getElementById("node").textContent = data.node;
  document.getElementById("version").textContent = data.version;
  document.getElementById("uptime").textContent = duration(data.uptime_s);
  document.getElementById("generation").textContent = "generation " + data.config.generation;
  const reload = data.config.last_reload;
  const reloadCell = document.getElementById("reload");
  if (!reload) {
    reloadCell.textContent = "none since start";
    reloadCell.className = "";
  } else {
    const at = new Date(reload.at_ms).toLocaleTimeString();
    reloadCell.textContent = reload.ok ? "ok at " + at + " (generation " + reload.generation + ")" : "error at " + at + ": " + reload.error;
    reloadCell.className = reload.ok ? "state-ok" : "state-error";
  }

  const charts = document.getElementById("charts");
  charts.replaceChildren();
  const series = Object.entries(data.history || {});
  if (series.length === 0) charts.append(el("p", "collecting…", "empty"));
  for (const [route, points] of series) charts.append(chart(route, points));

  fill("routes", data.routes.map((r) => [
    r.path, r.methods.join(", "), r.upstream, r.policies.join(", ") || "-", r.plugins.join(" → ") || "-", r.source,
  ]));

  const targets = [];
  for (const group of data.upstreams || []) {
    for (const t of group.targets) {
      targets.push([group.name, t.url, stateCell(t.health), stateCell(t.breaker || "none"),
        t.ejected_for_ms ? Math.ceil(t.ejected_for_ms / 1000) + " s" : "-",
        num(t.in_flight, 0), num(t.rps, 1), num(t.errors_per_s, 1)]);
    }
  }
  fill("targets", targets);

  const services = [];
  for (const [service, instances] of Object.entries(data.services || {})) {
    for (const i of instances) {
      const health = i.stale ? "stale" : i.healthy === false ? "unhealthy" : i.healthy === true ? "healthy" : "unknown";
      services.push([service, i.id, i.url, stateCell(health), i.node || i.provider || i.owner]);
    }
  }
  fill("services", services);

  fill("plugins", (data.plugins || []).map((p) => [
    p.name, "v" + p.version, stateCell(p.breaker), num(p.calls, 0), num(p.errors, 0),
    p.p99_ms === null || p.p99_ms === undefined ? "-" : p.p99_ms.toFixed(3) + " ms",
  ]));

  const members = (data.cluster && data.cluster.members) || [];
  fill("members", members.length ? members.map((m) => [m.name, m.addr, stateCell(m.state)])
    : [[data.node, data.listen, stateCell("alive")]]);
}

async function refresh() {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const status = document.getElementById("status");
  try {
    const response = await fetch("/api/v1/dashboard", { headers, cache: "no-store" });
    if (response.status === 401 || response.status === 403) {
      document.getElementById("login").hidden = false;
      document.getElementById("content").hidden = true;
      status.textContent = token ? "the admin token was refused" : "admin token needed";
      return;
    }
    if (!response.ok) throw new Error("HTTP " + response.status);
    const data = await response.json();
    document.getElementById("login").hidden = true;
    document.getElementById("content").hidden = false;
    render(data);
    status.textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = "true";
  } catch (error) {
    status.textContent = "cannot reach the gateway: " + error.message;
  }
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value);
  document.getElementById("token").value = "";
  refresh();
});

refresh();
setInterval(refresh, REFRESH_MS);
