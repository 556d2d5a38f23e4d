// resilient dashboard: follows /api/events and keeps the page equal to the fleet.
// Plain JS, no build step. Every value from the server goes in through textContent
// (never innerHTML): breaker names and reasons come from Redis.
"use strict";

const ORDER = { open: 0, forced_open: 1, half_open: 2, disabled: 3, closed: 4 };
const LABEL = { open: "open", forced_open: "forced open", half_open: "half-open",
  disabled: "disabled", closed: "closed" };
const PLOT_SECONDS = 300;

const rows = new Map();        // name -> {data, tr, receivedAt}
let ordered = [];              // the entries in table order (worst first, then by name)
const latency = new Map();     // name -> [[t, p50, p99, p999], ...] seen while the page is open
let transitions = [];
let selected = null;
let controlsEnabled = false;

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(0) + "%"; }
function ms(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const v = seconds * 1000;
  return v >= 1000 ? (v / 1000).toFixed(2) + " s" : v >= 10 ? v.toFixed(0) + " ms" : v.toFixed(1) + " ms";
}
function ago(epoch) {
  if (!epoch) return "–";
  const s = Math.max(0, Date.now() / 1000 - epoch);
  if (s < 60) return s.toFixed(0) + " s ago";
  if (s < 3600) return (s / 60).toFixed(0) + " min ago";
  if (s < 86400) return (s / 3600).toFixed(1) + " h ago";
  return (s / 86400).toFixed(1) + " d ago";
}
function procs(d) {  // processes sharing the breaker, and those on local state for it
  if (d.processes === undefined || d.processes === null) return "–";
  return d.processes_degraded ? d.processes + " (" + d.processes_degraded + " degraded)" : String(d.processes);
}
function clock(epoch) { return epoch ? new Date(epoch * 1000).toLocaleTimeString() : "–"; }
function badge(state) { return el("span", "state s-" + state, LABEL[state] || state); }

// ------------------------------------------------------------------ the table

function makeRow(name) {
  const tr = el("tr");
  tr.dataset.name = name;
  for (let i = 0; i < 12; i++) tr.appendChild(el("td"));
  const cells = tr.children;
  for (const i of [2, 3, 4, 5, 6, 7, 8]) cells[i].className = "num";
  cells[10].className = "why";
  tr.addEventListener("click", () => select(name));
  return tr;
}

function fillRow(entry) {
  const d = entry.data, c = entry.tr.children;
  entry.tr.hidden = !visible(d);
  entry.tr.dataset.state = d.state;
  entry.tr.classList.toggle("stale", !!d.stale);
  c[0].replaceChildren(badge(d.state));
  c[1].textContent = d.name;
  c[2].textContent = d.calls;
  c[3].textContent = pct(d.failure_rate);
  c[4].textContent = pct(d.slow_call_rate);
  c[5].textContent = ms(d.p50);
  c[6].textContent = ms(d.p99);
  c[7].textContent = ms(d.p999);
  c[8].textContent = procs(d);
  c[8].classList.toggle("degraded", !!d.processes_degraded);
  c[8].title = d.processes_degraded
    ? d.processes_degraded + " of them on local state (degraded, or silent: cannot reach Redis)" : "";
  c[9].textContent = openUntil(entry);
  const why = d.manual_reason ? d.manual_reason + (d.manual_by ? " (" + d.manual_by + ")" : "") : d.reason;
  c[10].textContent = why || "–";
  c[11].textContent = ago(d.changed_at);
}

function openUntil(entry) {
  const d = entry.data;
  if (d.state === "forced_open") return "until reset";
  if (d.retry_after === null || d.retry_after === undefined) return "–";
  const left = Math.max(0, d.retry_after - (Date.now() - entry.receivedAt) / 1000);
  return left > 0 ? "probes in " + left.toFixed(1) + " s" : "probing";
}

function visible(d) {
  const f = $("filter").value.trim().toLowerCase();
  if (f && !d.name.toLowerCase().includes(f)) return false;
  if ($("only-trouble").checked && d.state === "closed") return false;
  return true;
}

function before(a, b) {  // does entry a belong above entry b?
  const sa = ORDER[a.data.state] ?? 9, sb = ORDER[b.data.state] ?? 9;
  return sa !== sb ? sa < sb : a.data.name < b.data.name;
}

// Put one entry where it belongs: one DOM move, not a thousand (a state changed, or it is new).
function place(entry) {
  const at = ordered.indexOf(entry);
  if (at >= 0) ordered.splice(at, 1);
  let lo = 0, hi = ordered.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (before(ordered[mid], entry)) lo = mid + 1; else hi = mid;
  }
  ordered.splice(lo, 0, entry);
  const next = ordered[lo + 1];
  document.querySelector("#breakers tbody").insertBefore(entry.tr, next ? next.tr : null);
}

function refilter() {
  for (const e of ordered) e.tr.hidden = !visible(e.data);
  render();
}

function render() {
  let shown = 0;
  for (const e of ordered) if (!e.tr.hidden) shown++;
  $("shown").textContent = shown === ordered.length ? ordered.length + " breakers"
    : shown + " of " + ordered.length + " breakers";
  $("empty").hidden = ordered.length > 0;
  summary(ordered);
}

function summary(list) {
  const counts = {};
  for (const e of list) counts[e.data.state] = (counts[e.data.state] || 0) + 1;
  const box = $("summary");
  box.replaceChildren();
  for (const s of Object.keys(ORDER)) {
    if (!counts[s] && s !== "closed") continue;
    const chip = el("span", "chip s-" + s, (counts[s] || 0) + " " + LABEL[s]);
    chip.dataset.state = s;
    box.appendChild(chip);
  }
  const trouble = (counts.open || 0) + (counts.forced_open || 0);
  document.title = (trouble ? "(" + trouble + " open) " : "") + "resilient dashboard";
}

// ------------------------------------------------------------------ updates

function apply(doc) {
  const now = Date.now();
  if (doc.full) {
    for (const e of rows.values()) e.tr.remove();
    rows.clear();
    ordered = [];
    transitions = [];
  }
  $("namespace").textContent = doc.namespace;
  controlsEnabled = !!doc.controls;
  for (const d of doc.breakers) {
    let e = rows.get(d.name);
    const moved = !e || e.data.state !== d.state;
    if (!e) {
      e = { tr: makeRow(d.name) };
      rows.set(d.name, e);
    }
    e.data = d;
    e.receivedAt = now;
    fillRow(e);
    if (moved) place(e);
    if (d.p99 !== undefined && d.p99 !== null) {
      const series = latency.get(d.name) || [];
      series.push([now / 1000, d.p50, d.p99, d.p999]);
      while (series.length && series[0][0] < now / 1000 - PLOT_SECONDS) series.shift();
      latency.set(d.name, series);
    }
  }
  for (const name of doc.removed || []) {
    const e = rows.get(name);
    if (e) {
      e.tr.remove();
      rows.delete(name);
      ordered.splice(ordered.indexOf(e), 1);
    }
  }
  if (doc.transitions && doc.transitions.length) {
    const key = (t) => t.name + "#" + t.generation;
    const fresh = new Map(doc.transitions.map((t) => [key(t), t]));
    transitions = transitions.filter((t) => !fresh.has(key(t))).concat([...fresh.values()]);
    transitions = transitions.slice(-200);
    renderTransitions();
  }
  if (doc.redis) renderRedis(doc.redis);
  if ("config" in doc) renderConfig(doc.config);
  render();
  if (selected) renderDetail();
}

function renderRedis(r) {
  const banner = $("banner");
  if (r.up === false) {
    banner.hidden = false;
    banner.textContent = "Redis at " + r.where + " is unreachable (" + (r.error || "no answer")
      + "): showing the last states known, greyed. Breakers decide locally meanwhile.";
  } else {
    banner.hidden = true;
  }
}

function renderTransitions() {
  const ol = $("transitions");
  ol.replaceChildren();
  for (const t of transitions.slice(-50).reverse()) {
    const li = el("li");
    li.appendChild(el("span", "muted", clock(t.at) + " "));
    li.appendChild(badge(t.state));
    li.appendChild(document.createTextNode(" " + t.name + (t.reason ? " · " + t.reason : "")));
    ol.appendChild(li);
  }
}

function renderConfig(cfg) {
  if (!cfg) return;
  $("config-source").textContent = cfg.prefix + " at " + cfg.source + " · revision "
    + (cfg.revision ?? "not loaded yet") + (cfg.connected ? "" : " · etcd unreachable")
    + " · " + cfg.breakers + " breaker keys";
  const ol = $("rejected");
  ol.replaceChildren();
  for (const r of [...cfg.rejected].reverse()) {
    ol.appendChild(el("li", "", clock(r.at) + " " + r.key + " (revision " + r.revision + "): " + r.reason));
  }
  if (!cfg.rejected.length) ol.appendChild(el("li", "muted", "none"));
}

// ------------------------------------------------------------------ the selected breaker

function select(name) {
  for (const e of rows.values()) e.tr.classList.toggle("selected", e.data.name === name);
  selected = name;
  $("control-result").textContent = "";
  renderDetail();
}

function renderDetail() {
  const e = rows.get(selected);
  if (!e) { $("detail-name").textContent = selected + " (gone)"; return; }
  const d = e.data;
  $("detail-name").textContent = d.name;
  const state = $("detail-state");
  state.replaceChildren(badge(d.state));
  const facts = [" trips " + d.trips, " calls " + d.calls, " fail " + pct(d.failure_rate),
    " slow " + pct(d.slow_call_rate)];
  if (d.manual_reason) facts.push(" manual: " + d.manual_reason);
  state.appendChild(document.createTextNode(facts.join(" ·")));
  $("controls").hidden = !controlsEnabled;
  const hist = $("history");
  hist.replaceChildren();
  for (const t of [...(d.history || [])].reverse()) {
    const li = el("li");
    li.appendChild(el("span", "muted", clock(t.at) + " "));
    li.appendChild(badge(t.state));
    if (t.reason) li.appendChild(document.createTextNode(" " + t.reason));
    hist.appendChild(li);
  }
  if (d.config) {
    const lines = Object.entries(d.config.fields).map(([k, v]) =>
      k + ": " + JSON.stringify(v) + (d.config.own.includes(k) ? "" : "   (defaults)"));
    if (d.config.refused) lines.push("", "REFUSED: " + d.config.refused);
    $("detail-config").textContent = lines.join("\n") || "(all defaults)";
  }
  plot(d.name);
}

function plot(name) {
  const canvas = $("latency");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const series = latency.get(name) || [];
  if (series.length < 1) {
    $("latency-note").textContent = "no fleet latency reported for " + name + " yet";
    return;
  }
  const now = Date.now() / 1000, t0 = now - PLOT_SECONDS;
  let top = 0;
  for (const p of series) top = Math.max(top, p[3] || p[2] || 0);
  top = top > 0 ? top * 1.15 : 1;
  const x = (t) => 40 + (w - 50) * (t - t0) / PLOT_SECONDS;
  const y = (v) => h - 20 - (h - 30) * v / top;
  ctx.strokeStyle = "#2a313b"; ctx.fillStyle = "#8b95a3"; ctx.font = "11px system-ui";
  for (let i = 0; i <= 4; i++) {
    const v = top * i / 4;
    ctx.beginPath(); ctx.moveTo(40, y(v)); ctx.lineTo(w - 10, y(v)); ctx.stroke();
    ctx.fillText(ms(v), 2, y(v) + 4);
  }
  ctx.fillText("−5 min", 40, h - 5); ctx.fillText("now", w - 30, h - 5);
  const lines = [[1, "#2f9e5a", "p50"], [2, "#f5a524", "p99"], [3, "#e5484d", "p999"]];
  lines.forEach(([i, colour, label], k) => {
    ctx.strokeStyle = colour; ctx.lineWidth = 2; ctx.beginPath();
    series.forEach((p, j) => { if (p[i] === null) return; j ? ctx.lineTo(x(p[0]), y(p[i])) : ctx.moveTo(x(p[0]), y(p[i])); });
    ctx.stroke(); ctx.fillStyle = colour; ctx.fillText(label, 60 + 45 * k, 12);
  });
  const last = series[series.length - 1];
  $("latency-note").textContent = "fleet p50 " + ms(last[1]) + " · p99 " + ms(last[2]) + " · p999 " + ms(last[3]);
}

// ------------------------------------------------------------------ controls

async function control(action) {
  const out = $("control-result");
  const token = $("token").value;
  sessionStorage.setItem("resilient-token", token);
  out.className = "";
  out.textContent = action + " " + selected + "…";
  try {
    const response = await fetch("/api/breakers/" + encodeURIComponent(selected) + "/" + action, {
      method: "POST",
      headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" },
      body: JSON.stringify({ reason: $("reason").value }),
    });
    const body = await response.json().catch(() => ({}));
    if (response.ok && body.audited === false) {
      out.className = "error";
      out.textContent = action + " " + selected + ": done, fleet-wide, NOT audited: " + body.warning;
    } else if (response.ok) {
      out.textContent = action + " " + selected + ": done, fleet-wide (audited)";
    } else {
      out.className = "error";
      out.textContent = "refused (" + response.status + "): " + (body.error || response.statusText);
    }
  } catch (err) {
    out.className = "error";
    out.textContent = "failed: " + err;
  }
}

// ------------------------------------------------------------------ the stream

function connect() {
  const live = $("live");
  const source = new EventSource("/api/events");
  source.addEventListener("update", (ev) => {
    live.className = "live ok";
    live.textContent = "live";
    apply(JSON.parse(ev.data));
  });
  source.onerror = () => {
    live.className = "live down";
    live.textContent = "reconnecting…";
  };
}

document.addEventListener("DOMContentLoaded", () => {
  $("filter").addEventListener("input", refilter);
  $("only-trouble").addEventListener("change", refilter);
  $("token").value = sessionStorage.getItem("resilient-token") || "";
  for (const b of document.querySelectorAll("#controls button")) {
    b.addEventListener("click", () => control(b.dataset.action));
  }
  setInterval(() => {  // countdowns and "ago" move between updates
    for (const e of rows.values()) if (!e.tr.hidden) {
      e.tr.children[9].textContent = openUntil(e);
      e.tr.children[11].textContent = ago(e.data.changed_at);
    }
  }, 1000);
  connect();
});
