// budgetwarden dashboard: polls the worker's JSON API every 2 s and redraws in place.
// Plain JS, hand-written SVG, no dependencies (works offline).
"use strict";

const POLL_MS = 2000;
const SVG_NS = "http://www.w3.org/2000/svg";
const state = { topBy: "agent", busy: false, burn: null, seen: new Set() };

// formatting --------------------------------------------------------------------------------
const num = new Intl.NumberFormat("en-US");
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const dollars = (v) => (typeof v === "string" ? parseFloat(v) : Number(v || 0));
const fromNano = (n) => Number(n || 0) / 1e9;

function usd(value) {
  const n = dollars(value);
  const a = Math.abs(n);
  if (a >= 10000) return "$" + (n / 1000).toFixed(1) + "k";
  if (a >= 100) return "$" + num.format(Math.round(n));
  if (a >= 1) return "$" + n.toFixed(2);
  if (a >= 0.01) return "$" + n.toFixed(3);
  if (a === 0) return "$0";
  return "$" + n.toPrecision(2);
}

function tokens(n) {
  n = Number(n || 0);
  if (n >= 1e9) return (n / 1e9).toFixed(2) + "B";
  if (n >= 1e6) return (n / 1e6).toFixed(2) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return num.format(n);
}

// A decision's message as the processor wrote it carries exact figures ("1003942 tokens",
// "$0.520477500"); people read "1,003,942 tokens" and "$0.52" (the exact text stays in the title).
const money = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
function humanize(text) {
  return String(text ?? "")
    .replace(/\$(\d+(?:\.\d+)?)/g, (_, v) => {
      const n = parseFloat(v);
      return "$" + (n === 0 || n >= 0.01 ? money.format(n) : n.toPrecision(2));
    })
    .replace(/(?<![\w.,$-])(\d{4,})(?![\w.,-])/g, (m) => num.format(Number(m)));
}

const pct = (p) => (p == null ? "–" : (p >= 100 ? Math.round(p) : p.toFixed(p < 10 ? 1 : 0)) + "%");
const clock = (ms) => new Date(ms).toISOString().slice(11, 19);

function ago(ms, now) {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m ago";
  return Math.floor(s / 3600) + "h ago";
}

function setText(id, text, value) {
  const el = document.getElementById(id);
  if (el.textContent !== text) {
    el.textContent = text;
    el.classList.remove("flash");
    void el.offsetWidth; // restart the flash animation
    el.classList.add("flash");
  }
  if (value !== undefined) el.dataset.value = String(value);
}

// Replace a panel's markup only when it changed (no flicker, animations only for news).
const rendered = new Map();
function setHTML(id, html) {
  if (rendered.get(id) !== html) {
    document.getElementById(id).innerHTML = html;
    rendered.set(id, html);
  }
}

// API token --------------------------------------------------------------------------------
// The worker prints a one-time link `http://127.0.0.1:PORT/#token=...`: the fragment never
// reaches a server; the token moves to sessionStorage (this tab only) and leaves the address
// bar and the history. Every API call sends it as a Bearer header.
const TOKEN_KEY = "budgetwarden.api-token";

function takeTokenFromUrl() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (!m) return;
  let token = "";
  try { token = decodeURIComponent(m[1]).trim(); } catch (err) { token = ""; }
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  history.replaceState(null, "", location.pathname + location.search);
}

const apiToken = () => sessionStorage.getItem(TOKEN_KEY) || "";

function askForToken(refused) {
  document.body.classList.add("locked");
  document.getElementById("auth").hidden = false;
  document.getElementById("auth-error").hidden = !refused;
  setHTML("updated", `<i class="dot off"></i>API token needed`);
  document.getElementById("auth-token").focus();
}

document.getElementById("auth").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = document.getElementById("auth-token");
  const token = input.value.trim();
  input.value = "";
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  document.getElementById("auth").hidden = true;
  document.body.classList.remove("locked");
  refresh();
});

class Unauthorized extends Error {}

async function getJSON(path) {
  const resp = await fetch(path, { cache: "no-store", credentials: "omit", headers: { Authorization: "Bearer " + apiToken() } });
  if (resp.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    throw new Unauthorized(path + ": the API token was refused");
  }
  if (!resp.ok) throw new Error(path + ": HTTP " + resp.status);
  return resp.json();
}

// budgets -----------------------------------------------------------------------------------
function level(p) {
  if (p == null) return "none";
  if (p >= 100) return "over";
  if (p >= 90) return "bad";
  if (p >= 70) return "warn";
  return "ok";
}

function barRow({ name, kind, percent, tags, detail, attrs }) {
  const width = percent == null ? 0 : Math.min(100, percent);
  const overflow = percent != null && percent > 100 ? `<span class="overflow" title="over the limit">+${Math.round(percent - 100)}%</span>` : "";
  return `<div class="bar ${level(percent)}" ${attrs || ""}>
    <div class="name"><span class="kind">${esc(kind)}</span>${esc(name)}${tags}</div>
    <div class="track"><div class="fill" style="width:${width.toFixed(2)}%"></div><i class="mark m70"></i><i class="mark m90"></i>${overflow}</div>
    <div class="pct">${pct(percent)}</div>
    <div class="detail">${detail}</div>
  </div>`;
}

// This week's and month's use of a subject with weekly or monthly limits (live.*.periods): one row each.
function periodRows(periods, name, kind, attrs) {
  return Object.entries(periods || {}).map(([period, p]) => {
    const limits = [p.limit_tokens ? `${tokens(p.tokens)} / ${tokens(p.limit_tokens)} tok` : "",
                    p.limit_nano_usd ? `${usd(fromNano(p.nano_usd))} / ${usd(fromNano(p.limit_nano_usd))}` : ""].filter(Boolean);
    return barRow({ name, kind: kind ? `${kind} · ${period}` : period, percent: p.percent, tags: "",
                    detail: `${limits.join(" · ")} this ${period}`, attrs: `${attrs} data-window="${period}"` });
  });
}

function worst(s) {
  return Math.max(s.percent ?? -1, ...Object.values(s.periods || {}).map((p) => p.percent ?? -1));
}

function renderBudgets(live) {
  const agents = Object.entries(live.agents || {});
  agents.sort((a, b) => worst(b[1]) - worst(a[1]) || a[0].localeCompare(b[0]));
  const rows = agents.flatMap(([id, a]) => {
    const killed = (a.killed_tasks || []).length;
    let tags = "";
    if (a.criticality === "critical") tags += `<span class="tag critical">critical</span>`;
    if (a.paused) tags += `<span class="tag paused">paused</span>`;
    if (killed) tags += `<span class="tag killed">${killed} task${killed > 1 ? "s" : ""} killed</span>`;
    const limit = a.daily_tokens ? ` / ${tokens(a.daily_tokens)}` : a.daily_nano_usd ? ` / ${usd(fromNano(a.daily_nano_usd))}` : "";
    return [barRow({
      name: id, kind: "", percent: a.percent, tags,
      detail: `${tokens(a.tokens_today)}${a.daily_tokens ? limit : ""} tok · ${usd(fromNano(a.nano_usd_today))}${a.daily_nano_usd && !a.daily_tokens ? limit : ""}`,
      attrs: `data-agent="${esc(id)}" data-paused="${a.paused ? 1 : 0}" data-killed="${killed}" data-critical="${a.criticality === "critical" ? 1 : 0}"`,
    }), ...periodRows(a.periods, id, "", `data-agent-period="${esc(id)}"`)];
  });
  setHTML("budgets", rows.join("") || `<p class="empty">No agent has reported usage today yet.</p>`);

  const dims = Object.entries(live.dimensions || {}).filter(([, d]) => d.percent != null || Object.keys(d.periods || {}).length);
  dims.sort((a, b) => (a[0] === "global" ? -1 : b[0] === "global" ? 1 : worst(b[1]) - worst(a[1])));
  setHTML("scopes", dims.flatMap(([key, d]) => {
    const [scope, subject] = key.includes(":") ? [key.slice(0, key.indexOf(":")), key.slice(key.indexOf(":") + 1)] : [key, "all agents"];
    const limit = d.daily_nano_usd ? `${usd(fromNano(d.nano_usd_today))} / ${usd(fromNano(d.daily_nano_usd))}` : `${tokens(d.tokens_today)} / ${tokens(d.daily_tokens)} tok`;
    const today = d.percent == null ? [] : [barRow({ name: subject, kind: scope, percent: d.percent, tags: "", detail: limit, attrs: `data-scope="${esc(key)}"` })];
    return [...today, ...periodRows(d.periods, subject, scope, `data-scope-period="${esc(key)}"`)];
  }).join("") || `<p class="empty">No user, team or global budget is set.</p>`);
}

// burn chart --------------------------------------------------------------------------------
function niceMax(v) {
  if (v <= 0) return 0.01;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function renderBurn(burn) {
  const box = document.getElementById("burn");
  const series = burn.minutes || [];
  const W = Math.max(320, box.clientWidth || 900), H = 230;
  const pad = { l: 54, r: 12, t: 12, b: 24 };
  const values = series.map((m) => fromNano(m.nano_usd));
  const max = niceMax(Math.max(0, ...values));
  const x = (i) => pad.l + ((i + 0.5) / Math.max(1, series.length)) * (W - pad.l - pad.r);
  const y = (v) => pad.t + (1 - v / max) * (H - pad.t - pad.b);
  let grid = "";
  for (let k = 0; k <= 4; k++) {
    const v = (max * k) / 4;
    grid += `<line class="grid" x1="${pad.l}" x2="${W - pad.r}" y1="${y(v)}" y2="${y(v)}"/><text class="axis" x="${pad.l - 8}" y="${y(v) + 4}" text-anchor="end">${usd(v)}</text>`;
  }
  series.forEach((m, i) => {
    if (i % 10 === 0 || i === series.length - 1) {
      const label = i === series.length - 1 ? "now" : `-${series.length - 1 - i}m`;
      grid += `<text class="axis" x="${x(i)}" y="${H - 6}" text-anchor="middle">${label}</text>`;
    }
  });
  // One bar per minute; the current (partial) minute is drawn lighter.
  const slot = (W - pad.l - pad.r) / Math.max(1, series.length);
  const bars = values.map((v, i) => {
    const h = Math.max(v > 0 ? 1.5 : 0, y(0) - y(v));
    const cls = i === values.length - 1 ? "col now" : "col";
    return `<rect class="${cls}" x="${(pad.l + i * slot + slot * 0.14).toFixed(1)}" y="${(y(0) - h).toFixed(1)}" width="${(slot * 0.72).toFixed(1)}" height="${h.toFixed(1)}" rx="2"/>`;
  }).join("");
  box.innerHTML = `<svg xmlns="${SVG_NS}" viewBox="0 0 ${W} ${H}" role="img" aria-label="USD per minute, last hour">
    <defs><linearGradient id="burnfill" x1="0" x2="0" y1="0" y2="1"><stop offset="0" stop-color="#79c0ff"/><stop offset="1" stop-color="#1f6feb" stop-opacity=".55"/></linearGradient></defs>
    ${grid}${bars}<line class="cursor" x1="0" x2="0" y1="${pad.t}" y2="${H - pad.b}" visibility="hidden"/></svg><div class="tip" hidden></div>`;
  state.burn = { series, x, pad, W, H };
  const active = values.filter((v) => v > 0).length;
  const last = values.length ? values[values.length - 1] : 0;
  document.getElementById("burn-stats").innerHTML =
    `<div><label>this minute</label><b>${usd(last)}</b></div>` +
    `<div><label>avg / active min</label><b>${usd(active ? fromNano(burn.total_nano_usd) / active : 0)}</b></div>` +
    `<div><label>last hour</label><b>${usd(burn.total_usd)}</b></div>`;
}

function onBurnHover(ev) {
  const b = state.burn;
  const box = document.getElementById("burn");
  const svg = box.querySelector("svg");
  if (!b || !svg || !b.series.length) return;
  const rect = svg.getBoundingClientRect();
  const vx = ((ev.clientX - rect.left) / rect.width) * b.W;
  const i = Math.max(0, Math.min(b.series.length - 1, Math.floor(((vx - b.pad.l) / (b.W - b.pad.l - b.pad.r)) * b.series.length)));
  const m = b.series[i];
  const cursor = svg.querySelector(".cursor");
  cursor.setAttribute("x1", b.x(i)); cursor.setAttribute("x2", b.x(i)); cursor.setAttribute("visibility", "visible");
  const tip = box.querySelector(".tip");
  tip.hidden = false;
  tip.innerHTML = `<b>${usd(m.usd)}</b> · ${tokens(m.tokens)} tok · ${num.format(m.events)} calls<br><span>${clock(m.minute_ms).slice(0, 5)} UTC</span>`;
  tip.style.left = Math.min(rect.width - 180, Math.max(0, ((b.x(i) / b.W) * rect.width) + 10)) + "px";
}

// decisions ---------------------------------------------------------------------------------
const ACTION_LABEL = {
  kill_task: "killed", pause_agent: "paused", pause_noncritical: "paused", throttle: "throttled",
  downgrade_model: "downgraded", investigate: "investigate", notify: "notify", allow: "allow",
};

function renderDecisions(list, now) {
  // The same rule firing for the same agent (a loop killed task after task) folds into one
  // line at its newest occurrence, with a count.
  const groups = new Map();
  for (const d of list) {
    const key = d.agent_id ? `${d.rule}|${d.action}|${d.agent_id}` : d.decision_id;
    const g = groups.get(key);
    if (g) g.count += 1; else groups.set(key, { d, count: 1 });
  }
  setHTML("decisions", [...groups.values()].slice(0, 40).map(({ d, count }) => {
    const who = d.agent_id || (d.scope === "global" ? "global" : `${d.scope} ${d.subject}`);
    const times = count > 1 ? `<span class="count">×${count}</span>` : "";
    const fresh = !state.seen.has(d.decision_id);
    state.seen.add(d.decision_id);
    return `<li class="act-${esc(d.action)}${fresh ? " new" : ""}" data-action="${esc(d.action)}" data-agent="${esc(d.agent_id)}" data-rule="${esc(d.rule)}">
      <span class="badge ${esc(d.action)}">${esc(ACTION_LABEL[d.action] || d.action)}</span>
      <div class="body"><div class="head"><b>${esc(who)}</b> <span class="rule">${esc(d.rule)}</span>${times}<span class="sev ${esc(d.severity)}">${esc(d.severity)}</span></div>
      <div class="msg" title="${esc(d.message)}">${esc(humanize(d.message))}</div></div>
      <time title="${esc(new Date(d.ts_ms).toISOString())}">${ago(d.ts_ms, now)}</time></li>`;
  }).join("") || `<li class="empty">No decisions yet: every agent is within its budget.</li>`);
}

// top spenders ------------------------------------------------------------------------------
// By agent the API answers with inclusive cost (the agent's own calls plus its sub-agents'):
// the bar and the figure are inclusive, the share is of the own (direct) spend, which sums to 100%.
function topQuery(by) {
  return `api/top?by=${by}&period=day&limit=7${by === "agent" ? "&inclusive=1" : ""}`;
}

function renderTop(rows) {
  const cost = (r) => dollars(r.inclusive_usd ?? r.usd);
  const max = Math.max(1e-12, ...rows.map(cost));
  const total = rows.reduce((s, r) => s + dollars(r.usd), 0);
  setHTML("top", rows.map((r, i) => {
    const v = cost(r), own = dollars(r.usd);
    const subs = r.subagents ? ` · own ${usd(own)} + ${num.format(r.subagents)} sub-agent${r.subagents > 1 ? "s" : ""}` : "";
    return `<div class="rank" data-key="${esc(r.key)}" data-direct="${esc(r.usd)}" data-inclusive="${esc(r.inclusive_usd ?? r.usd)}"><span class="pos">${i + 1}</span>
      <div class="who"><div class="k">${esc(r.key || "(none)")}</div>
      <div class="meter"><div style="width:${((100 * v) / max).toFixed(1)}%"></div></div>
      <div class="sub">${num.format(r.events)} calls · ${tokens(r.tokens)} tok${r.cache_read_tokens ? ` · ${tokens(r.cache_read_tokens)} cached` : ""}${subs}</div></div>
      <div class="cost"><b>${usd(v)}</b><span title="share of today's own spend">${total ? Math.round((100 * own) / total) : 0}%</span></div></div>`;
  }).join("") || `<p class="empty">Nothing spent today.</p>`);
}

// cost per task -----------------------------------------------------------------------------
function renderTasks(t, worst) {
  const marks = [["p50", t.p50_usd], ["p90", t.p90_usd], ["p99", t.p99_usd], ["max", t.max_usd]].map(([k, v]) => [k, dollars(v)]);
  const tiles = marks.map(([k, v]) => `<div><label>${k}</label><b>${usd(v)}</b></div>`).join("");
  const W = Math.max(280, document.getElementById("tasks").clientWidth || 400), H = 64, l = 14, r = 14;
  const positive = marks.map(([, v]) => v).filter((v) => v > 0);
  let svg = "";
  if (positive.length) {
    const lo = Math.log10(Math.min(...positive)) - 0.3, hi = Math.log10(Math.max(...positive)) + 0.1;
    const x = (v) => l + ((Math.log10(Math.max(v, 10 ** lo)) - lo) / Math.max(1e-9, hi - lo)) * (W - l - r);
    // Each mark keeps its own label; labels that would overlap are pushed apart (left to right,
    // then back from the right edge) and a leader line joins a moved label to its mark.
    const items = marks.map(([k, v], i) => ({ k, i, at: x(v), w: k.length * 6.6 + 8 }));
    let edge = -Infinity;
    for (const it of items) { it.cx = Math.max(it.at, edge + it.w / 2); edge = it.cx + it.w / 2; }
    edge = W;
    for (const it of [...items].reverse()) { it.cx = Math.min(it.cx, edge - it.w / 2); edge = it.cx - it.w / 2; }
    const dots = marks.map(([, v], i) => `<g class="q q${i}"><line x1="${x(v)}" x2="${x(v)}" y1="14" y2="40"/><circle cx="${x(v)}" cy="27" r="5"/></g>`).join("");
    const texts = items.map((it) => (Math.abs(it.cx - it.at) > 1 ? `<line class="leader" x1="${it.at}" y1="40" x2="${it.cx}" y2="48"/>` : "")
      + `<text x="${it.cx}" y="58" text-anchor="middle" class="t${it.i}">${it.k}</text>`).join("");
    svg = `<svg xmlns="${SVG_NS}" viewBox="0 0 ${W} ${H}" class="ladder"><defs><linearGradient id="tail" x1="0" x2="1"><stop offset="0" stop-color="var(--ok)"/><stop offset=".6" stop-color="var(--warn)"/><stop offset="1" stop-color="var(--bad)"/></linearGradient></defs>
      <rect x="${l}" y="24" width="${W - l - r}" height="6" rx="3" fill="url(#tail)" opacity=".55"/>${dots}${texts}</svg>`;
  }
  const share = Math.round(100 * (t.top1pct_share || 0));
  setHTML("tasks", `<div class="stats four">${tiles}</div>${svg}
    <p class="note"><b>${num.format(t.tasks || 0)}</b> tasks cost <b>${usd(t.total_usd)}</b> today; the most expensive 1%
    (${num.format(t.top1pct_tasks || 0)} task${t.top1pct_tasks === 1 ? "" : "s"}) took <b class="${share >= 20 ? "neg" : ""}">${share}%</b> of it${share >= 20 ? " — a fat tail usually means loops" : ""}.</p>
    <h3>Most expensive tasks</h3><table class="worst">${worst.map((r) => `<tr><td>${esc(r.key)}</td><td>${num.format(r.events)} calls</td><td>${tokens(r.tokens)} tok</td><td><b>${usd(r.usd)}</b></td></tr>`).join("")}</table>`);
}

// cache -------------------------------------------------------------------------------------
function cacheRows(rows, attr) {
  return rows.map((r) => {
    const hit = Math.round(100 * r.hit_rate);
    return `<tr ${attr}="${esc(r.key)}"><td>${esc(r.key)}</td>
      <td><span class="hitpct" style="--hit:${hit}%">${hit}%</span></td>
      <td class="pos">${usd(r.savings_usd)}</td><td>${usd(r.write_premium_usd)}</td>
      <td class="${r.paid_off ? "pos" : "neg"}"><b>${dollars(r.net_usd) >= 0 ? "+" : ""}${usd(r.net_usd)}</b></td></tr>`;
  }).join("") || `<tr><td colspan="5" class="empty">No prompt caching seen today.</td></tr>`;
}

function renderCache(c) {
  const cached = (r) => r.cache_read_tokens || r.cache_write_tokens || r.cache_write_1h_tokens;
  const models = (c.by_model || []).filter(cached);
  const net = models.reduce((s, r) => s + dollars(r.net_usd), 0);
  setHTML("cache-net", models.length ? `net <b class="${net >= 0 ? "pos" : "neg"}">${net >= 0 ? "+" : ""}${usd(net)}</b>` : "");
  setHTML("cache", cacheRows(models, "data-model"));
  setHTML("cache-agents", cacheRows((c.by_agent || []).filter(cached), "data-cache-agent"));
}

// headline ----------------------------------------------------------------------------------
function renderHeadline(live, dayBurn) {
  const agents = Object.values(live.agents || {});
  // Summed over agents (each agent's state is complete; the global counter can trail it).
  const nano = agents.reduce((s, a) => s + a.nano_usd_today, 0);
  const toks = agents.reduce((s, a) => s + a.tokens_today, 0);
  const events = agents.reduce((s, a) => s + (a.events || 0), 0);
  const kills = agents.reduce((s, a) => s + (a.killed_tasks || []).length, 0);
  const paused = agents.filter((a) => a.paused).length;
  setText("kpi-cost", usd(fromNano(nano)), nano);
  setText("kpi-forecast", dayBurn ? usd(dayBurn.day_forecast_usd) : "–", dayBurn ? dayBurn.day_forecast_nano_usd : 0);
  setText("kpi-tokens", tokens(toks), toks);
  setText("kpi-events", num.format(events), events);
  setText("kpi-kills", num.format(kills), kills);
  setText("kpi-paused", num.format(paused), paused);
  document.getElementById("kpi-kills").parentElement.classList.toggle("alert", kills > 0);
  document.getElementById("kpi-paused").parentElement.classList.toggle("alert", paused > 0);
}

// polling -----------------------------------------------------------------------------------
async function settle(promise, render, ...extra) {
  try { render(await promise, ...extra); return true; } catch (err) { console.warn(err); return false; }
}

async function refresh() {
  if (state.busy) return;
  if (!apiToken()) {
    if (document.getElementById("auth").hidden) askForToken(false);
    return;
  }
  state.busy = true;
  try {
    // The live state is the heartbeat; every other panel fails on its own without blanking the page.
    const live = await getJSON("api/live");
    const now = live.ts_ms || Date.now();
    renderBudgets(live);
    await Promise.all([
      settle(getJSON("api/burn").catch(() => null), (dayBurn) => renderHeadline(live, dayBurn)),
      settle(getJSON("api/burn/minutes?minutes=60"), renderBurn),
      settle(getJSON("api/decisions?limit=200"), (list) => renderDecisions(list.length ? list : [...(live.recent_decisions || [])].reverse(), now)),
      settle(getJSON(topQuery(state.topBy)), renderTop),
      settle(Promise.all([getJSON("api/tasks/distribution?period=day"), getJSON("api/top?by=task&period=day&limit=4")]), ([t, worst]) => renderTasks(t, worst)),
      settle(getJSON("api/cache?period=day"), renderCache),
    ]);
    document.body.classList.remove("stale");
    setHTML("updated", `<i class="dot"></i>live · ${clock(now)} UTC · policy v${esc(live.policy_version)}`);
  } catch (err) {
    if (err instanceof Unauthorized) { askForToken(true); return; }
    document.body.classList.add("stale");
    setHTML("updated", `<i class="dot off"></i>worker unreachable (${esc(err.message)}) — retrying`);
  } finally {
    state.busy = false;
  }
}

document.getElementById("top-tabs").addEventListener("click", (ev) => {
  const by = ev.target.dataset && ev.target.dataset.by;
  if (!by) return;
  state.topBy = by;
  for (const b of document.querySelectorAll("#top-tabs button")) b.classList.toggle("on", b.dataset.by === by);
  settle(getJSON(topQuery(by)), renderTop);
});
document.getElementById("burn").addEventListener("mousemove", onBurnHover);
document.getElementById("burn").addEventListener("mouseleave", () => {
  const tip = document.querySelector("#burn .tip");
  const cursor = document.querySelector("#burn .cursor");
  if (tip) tip.hidden = true;
  if (cursor) cursor.setAttribute("visibility", "hidden");
});

takeTokenFromUrl();
refresh();
setInterval(refresh, POLL_MS);
