// aiecs page: the History and Usage views (app.js: sign-in, live tasks).
//
// HTTP API (docs/history.md): GET /executions (filters, keyset cursor, newest first),
// GET /executions/{task_id}/{step} (the row and its events, from Redis or the database),
// GET /usage?group_by=day|model, GET /budget. A server without them (404) or with its
// database away (503) gets a note saying so; the rest of the page works on.
// Charts are plain SVG drawn here: the page needs nothing from the network but its server.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const UNAVAILABLE = new Set([404, 405, 501, 502, 503]);
  const PAGE_SIZE = 50;

  const hist = { cursor: null, loaded: false, loading: false, usageLoaded: false };

  const api = (...args) => window.aiecs.api(...args);

  function note(id, text, kind = "info") {
    const el = $(id);
    el.textContent = text || "";
    el.hidden = !text;
    el.dataset.kind = kind;
  }

  // an error answer as the note a user reads: a missing route is "not available"
  function unavailable(what, route, e) {
    if (UNAVAILABLE.has(e.status)) {
      const why = e.status === 503 ? "the server cannot reach its store right now"
        : "this server does not offer it";
      return `${what} is not available: ${why} (${route} answered ${e.status}). `
        + "Live tasks still show under Run.";
    }
    if (e.status === 401) return "Your sign-in has expired: sign in again.";
    return `${what} could not be loaded: ${e.message}`;
  }

  // ---- formatting --------------------------------------------------------------------
  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

  function money(v) {
    const n = num(v);
    if (n === null) return "—";
    return `$${n.toFixed(n === 0 || n >= 0.1 ? 2 : 4)}`;
  }

  function count(v) {
    const n = num(v);
    return n === null ? "—" : n.toLocaleString("en-US");
  }

  // a time of the API (ISO-8601, or UNIX seconds) in UTC, to the second or the minute
  function when(t, short = false) {
    if (t === null || t === undefined || t === "") return "—";
    const d = new Date(typeof t === "number" ? t * 1000 : t);
    if (Number.isNaN(d.getTime())) return String(t);
    const text = d.toISOString().replace("T", " ");
    return short ? text.slice(0, 16) : `${text.slice(0, 19)} UTC`;
  }

  // a date input's day as an ISO instant (its start; "until" is the end of the day)
  function dayStart(value, plusDays = 0) {
    if (!value) return null;
    const d = new Date(`${value}T00:00:00Z`);
    d.setUTCDate(d.getUTCDate() + plusDays);
    return d.toISOString();
  }

  function pick(row, ...names) {
    for (const n of names) if (row[n] !== undefined && row[n] !== null) return row[n];
    return null;
  }

  function statusBadge(status) {
    const s = document.createElement("span");
    s.className = "status";
    s.dataset.status = status || "";
    s.textContent = status || "?";
    return s;
  }

  // ---- History list -----------------------------------------------------------------
  function filters() {
    const form = $("history-filters");
    const q = new URLSearchParams();
    for (const name of ["status", "service", "operation", "model", "template", "batch_id",
                        "workflow_id"]) {
      const v = form.elements[name].value.trim();
      if (v) q.set(name, v);
    }
    const since = dayStart(form.elements.since.value);
    const until = dayStart(form.elements.until.value, 1);
    if (since) q.set("since", since);
    if (until) q.set("until", until);
    q.set("limit", String(PAGE_SIZE));
    return q;
  }

  async function loadHistory(reset) {
    if (hist.loading) return;
    hist.loading = true;
    const q = filters();
    if (!reset && hist.cursor) q.set("cursor", hist.cursor);
    const table = $("history-table");
    try {
      const page = await api("GET", `/executions?${q}`);
      note("history-note", "");
      const body = $("history-rows");
      if (reset) body.replaceChildren();
      for (const row of page.items || []) body.append(historyRow(row));
      hist.cursor = page.next_cursor || null;
      table.hidden = !body.children.length;
      $("history-empty").hidden = body.children.length > 0;
      $("history-more").hidden = !hist.cursor;
      $("view-history").dataset.state = "loaded";
    } catch (e) {
      table.hidden = true;
      $("history-empty").hidden = true;
      $("history-more").hidden = true;
      note("history-note", unavailable("History", "GET /executions", e), "warn");
      $("view-history").dataset.state = "unavailable";
    } finally {
      hist.loading = false;
      hist.loaded = true;
    }
  }

  function historyRow(row) {
    const tr = document.createElement("tr");
    const taskId = pick(row, "task_id") || "";
    const step = pick(row, "step") ?? 1;
    tr.dataset.taskId = taskId;
    tr.dataset.step = String(step);
    tr.dataset.status = pick(row, "status") || "";
    tr.tabIndex = 0;
    const service = [pick(row, "mode"), pick(row, "service")].filter(Boolean).join("/");
    const cells = [
      when(pick(row, "finished_at", "updated_at", "created_at"), true),
      statusBadge(pick(row, "status")),
      `${service} · ${pick(row, "operation", "task_name") || "?"}`,
      pick(row, "model") || "—",
      `${count(pick(row, "input_tokens"))} / ${count(pick(row, "output_tokens"))}`,
      money(pick(row, "cost")),
      step > 1 ? `${taskId} · ${step}` : taskId,
    ];
    const labels = ["Finished", "Status", "Service", "Model", "Tokens", "Cost", "Task"];
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      td.dataset.label = labels[i];
      if (i === 4 || i === 5) td.className = "num";
      if (i === 6) td.className = "id";
      if (c instanceof Node) td.append(c);
      else td.textContent = c;
      tr.append(td);
    });
    const open = () => showDetail(taskId, step, row);
    tr.addEventListener("click", open);
    tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter") open(); });
    return tr;
  }

  // every execution matching the filters, as NDJSON (the route streams them), saved as a file
  async function exportHistory() {
    const q = filters();
    q.delete("limit");
    q.set("format", "ndjson");
    const button = $("history-export");
    button.disabled = true;
    try {
      const resp = await fetch(`/executions?${q}`,
        { headers: { Authorization: `Bearer ${window.aiecs.state.token}` } });
      if (!resp.ok) {
        const e = new Error(`${resp.status} ${resp.statusText}`);
        e.status = resp.status;
        throw e;
      }
      const url = URL.createObjectURL(await resp.blob());
      const a = document.createElement("a");
      a.href = url;
      a.download = `aiecs-history-${new Date().toISOString().slice(0, 10)}.ndjson`;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) {
      note("history-note", unavailable("The export", "GET /executions?format=ndjson", e), "warn");
    } finally {
      button.disabled = false;
    }
  }

  // ---- one execution: its row and its events ----------------------------------------
  const HIDDEN_FIELDS = new Set(["id", "user_id"]);

  // listed: the row of the list it was opened from (the database's), whose facts fill
  // what a live record (Redis: the request is gone once it ended) does not hold
  async function showDetail(taskId, step, listed = {}) {
    const panel = $("detail");
    panel.hidden = false;
    panel.dataset.taskId = taskId;
    panel.dataset.step = String(step);
    panel.dataset.state = "loading";
    $("detail-title").textContent = `${taskId} · step ${step}`;
    $("detail-source").textContent = "";
    $("detail-fields").replaceChildren();
    $("detail-follow").hidden = true;
    $("detail-events").replaceChildren();
    note("detail-note", "Loading...");
    try {
      const out = await api("GET",
        `/executions/${encodeURIComponent(taskId)}/${encodeURIComponent(step)}`);
      const row = { ...listed };
      for (const [k, v] of Object.entries(out.execution || {})) {
        if (v !== null && v !== undefined) row[k] = v;
      }
      $("detail-follow").hidden = out.source !== "redis";
      const service = [pick(row, "mode"), pick(row, "service")].filter(Boolean).join("/");
      $("detail-title").textContent =
        `${service} · ${pick(row, "operation", "task_name") || "?"} · ${taskId} · step ${step}`;
      $("detail-source").textContent = out.source === "redis"
        ? "live record (Redis)" : "from the history database";
      const dl = $("detail-fields");
      for (const [k, v] of Object.entries(row)) {
        if (v === null || v === undefined || v === "" || HIDDEN_FIELDS.has(k)) continue;
        const dt = document.createElement("dt");
        dt.textContent = k;
        const dd = document.createElement("dd");
        dd.textContent = fieldText(k, v);
        dl.append(dt, dd);
      }
      const events = out.events || [];
      $("detail-events").replaceChildren(...events.map(eventItem));
      note("detail-note", events.length ? "" : "No events kept for this execution.");
      panel.dataset.state = "loaded";
    } catch (e) {
      panel.dataset.state = "error";
      note("detail-note", e.status === 404
        ? "Not found: this execution is neither live nor in the history."
        : unavailable("This execution", "GET /executions/{task_id}/{step}", e), "warn");
    }
    panel.scrollIntoView({ block: "nearest" });
  }

  function fieldText(name, v) {
    if (typeof v === "object") return JSON.stringify(v);
    if (name === "cost") return money(v);
    if (name.endsWith("_at")) return when(v);
    if (name.endsWith("_tokens")) return count(v);
    if (name.endsWith("_ms")) return `${count(v)} ms`;
    return String(v);
  }

  function eventItem(e) {
    const li = document.createElement("li");
    li.dataset.type = e.type || "";
    li.dataset.status = e.status || "";
    const t = typeof e.timestamp === "number" ? new Date(e.timestamp * 1000) : null;
    const head = `#${e.seq ?? "?"} ${t ? t.toISOString().slice(11, 23) : ""} ${e.type || ""}`;
    let body = "";
    if (e.type === "stream") body = JSON.stringify(e.delta || "");
    else if (e.type === "progress") {
      body = [typeof e.progress === "number" ? `${Math.round(e.progress * 100)}%` : "",
              e.message || ""].filter(Boolean).join(" ");
    } else {
      // the error once: its message only when the error's does not already say it
      const error = e.error ? `${e.error.type}: ${e.error.message}` : "";
      const message = e.message && !(e.error && String(e.error.message).includes(e.message))
        ? e.message : "";
      body = [e.status, message, error].filter(Boolean).join(" · ");
    }
    const code = document.createElement("code");
    code.textContent = head.trim();
    li.append(code, document.createTextNode(` ${body}`));
    return li;
  }

  // ---- Usage: budget and spend charts -------------------------------------------------
  function periodName(b) {
    return `${b.period === "day" ? "Daily" : b.period === "month" ? "Monthly" : b.period} `
      + `${b.kind === "tokens" ? "token" : "USD"} budget`;
  }

  async function loadBudget() {
    const box = $("budgets");
    box.replaceChildren();
    try {
      const out = await api("GET", "/budget");
      const budgets = out.budgets || [];
      note("budget-note", budgets.length ? "" : "No budget is set for you: spending is not capped.");
      for (const b of budgets) box.append(budgetItem(b));
    } catch (e) {
      note("budget-note", unavailable("Your budget", "GET /budget", e), "warn");
    }
  }

  function budgetItem(b) {
    const fmt = b.kind === "tokens" ? (v) => `${count(v)} tokens` : money;
    const div = document.createElement("div");
    div.className = "budget";
    div.dataset.period = b.period;
    div.dataset.kind = b.kind;
    const cap = num(b.hard) ?? num(b.soft);
    const used = (num(b.spent) || 0) + (num(b.reserved) || 0);
    const h = document.createElement("h3");
    h.textContent = periodName(b);
    const meter = document.createElement("meter");
    meter.min = 0;
    meter.max = cap || 1;
    meter.value = cap ? Math.min(used, cap) : 0;
    if (num(b.soft) !== null) meter.high = b.soft;
    meter.optimum = 0;
    const p = document.createElement("p");
    p.className = "budget-line";
    const parts = [`spent ${fmt(b.spent)}`];
    if (num(b.reserved)) parts.push(`reserved ${fmt(b.reserved)}`);
    if (num(b.hard) !== null) parts.push(`hard limit ${fmt(b.hard)}`);
    if (num(b.soft) !== null) parts.push(`warning at ${fmt(b.soft)}`);
    p.textContent = parts.join(" · ");
    const r = document.createElement("p");
    r.className = "remaining";
    r.textContent = num(b.remaining) === null ? "No hard limit."
      : `${fmt(b.remaining)} remaining` + (b.resets_at ? `, resets ${when(b.resets_at)}` : "");
    div.append(h, meter, p, r);
    return div;
  }

  async function loadUsage() {
    const form = $("usage-filters");
    if (!form.elements.since.value) {
      const d = new Date(Date.now() - 29 * 86400e3);
      form.elements.since.value = d.toISOString().slice(0, 10);
    }
    const q = new URLSearchParams();
    const since = dayStart(form.elements.since.value);
    const until = dayStart(form.elements.until.value, 1);
    if (since) q.set("since", since);
    if (until) q.set("until", until);
    try {
      const [days, models] = await Promise.all([
        api("GET", `/usage?group_by=day&${q}`), api("GET", `/usage?group_by=model&${q}`)]);
      $("usage-charts").hidden = false;
      note("usage-note", totalLine(days.total));
      chart($("chart-day"), fillDays(days.groups || [], form), "day");
      chart($("chart-model"), (models.groups || []).slice()
        .sort((a, b) => measure(b) - measure(a)).slice(0, 12), "model");
      $("view-usage").dataset.state = "loaded";
    } catch (e) {
      for (const id of ["chart-day", "chart-model"]) $(id).replaceChildren();
      $("usage-charts").hidden = true;
      note("usage-note", unavailable("Usage", "GET /usage", e), "warn");
      $("view-usage").dataset.state = "unavailable";
    }
  }

  function totalLine(t) {
    if (!t) return "";
    return `In this period: ${count(t.executions)} executions, `
      + `${count(t.input_tokens)} input and ${count(t.output_tokens)} output tokens, `
      + (num(t.cost) === null ? "no priced calls (prices: AIECS_PRICES)."
        : `cost ${money(t.cost)}.`);
  }

  // one bar per day of the range, days without executions at zero
  function fillDays(groups, form) {
    const byDay = new Map(groups.map((g) => [String(g.key).slice(0, 10), g]));
    const first = form.elements.since.value || (groups[0] && String(groups[0].key).slice(0, 10));
    const last = form.elements.until.value || new Date().toISOString().slice(0, 10);
    if (!first) return groups;
    const out = [];
    for (let d = new Date(`${first}T00:00:00Z`); out.length < 370; d.setUTCDate(d.getUTCDate() + 1)) {
      const key = d.toISOString().slice(0, 10);
      if (key > last) break;
      out.push(byDay.get(key) || { key, executions: 0, input_tokens: 0, output_tokens: 0,
                                   cost: 0 });
    }
    return out;
  }

  // cost when the server priced the calls, else tokens
  let useCost = true;
  const measure = (g) => (useCost ? num(g.cost) || 0
    : (num(g.input_tokens) || 0) + (num(g.output_tokens) || 0));

  function el(name, attrs = {}, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // a bar chart in plain SVG: columns per day, rows per model
  function chart(box, groups, kind) {
    box.replaceChildren();
    box.dataset.bars = String(groups.length);
    if (!groups.length || groups.every((g) => !num(g.executions))) {
      const p = document.createElement("p");
      p.className = "hint";
      p.textContent = "Nothing in this period.";
      box.append(p);
      return;
    }
    useCost = groups.some((g) => num(g.cost));
    const unit = useCost ? money : (v) => `${count(v)} tok`;
    const max = Math.max(...groups.map(measure), 1e-9);
    const width = Math.max(280, box.clientWidth || 600);
    let svg;
    if (kind === "day") {
      const height = 180;
      const pad = { l: 8, r: 8, t: 20, b: 26 };
      const bw = (width - pad.l - pad.r) / groups.length;
      svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
                        "aria-label": `spend per day (${useCost ? "USD" : "tokens"})` });
      svg.append(el("line", { x1: pad.l, x2: width - pad.r, y1: height - pad.b,
                              y2: height - pad.b, class: "axis" }));
      const every = Math.ceil(groups.length / Math.max(1, Math.floor(width / 70)));
      groups.forEach((g, i) => {
        const h = ((height - pad.t - pad.b) * measure(g)) / max;
        const x = pad.l + i * bw;
        const bar = el("rect", { x: x + bw * 0.12, y: height - pad.b - h, width: bw * 0.76,
                                 height: Math.max(h, measure(g) ? 1 : 0), class: "bar" });
        bar.dataset.key = g.key;
        bar.append(el("title", {}, `${String(g.key).slice(0, 10)}: ${unit(measure(g))}, `
          + `${count(g.executions)} executions`));
        svg.append(bar);
        if (i % every === 0) {
          svg.append(el("text", { x: Math.max(x + bw / 2, pad.l + 14), y: height - 8,
                                  class: "tick", "text-anchor": "middle" },
                        String(g.key).slice(5, 10)));
        }
      });
      svg.append(el("text", { x: pad.l, y: 12, class: "tick" }, `max ${unit(max)}`));
    } else {
      const row = 26;
      const labelW = Math.min(170, width * 0.38);
      const valueW = 78;
      const height = groups.length * row + 6;
      svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
                        "aria-label": `spend per model (${useCost ? "USD" : "tokens"})` });
      groups.forEach((g, i) => {
        const y = i * row + 4;
        const w = ((width - labelW - valueW) * measure(g)) / max;
        const name = String(g.key ?? "unknown");
        const room = Math.floor((labelW - 8) / 7); // characters of 12 px text that fit
        const bar = el("rect", { x: labelW, y, width: Math.max(w, 1), height: row - 8,
                                 class: "bar" });
        svg.append(el("text", { x: labelW - 6, y: y + 15, class: "label", "text-anchor": "end" },
          name.length > room ? `${name.slice(0, room - 1)}…` : name));
        bar.dataset.key = name;
        bar.append(el("title", {}, `${name}: ${unit(measure(g))}, `
          + `${count(g.executions)} executions`));
        svg.append(bar, el("text", { x: labelW + w + 4, y: y + 15, class: "tick" },
                                   unit(measure(g))));
      });
    }
    box.append(svg);
  }

  // ---- wiring --------------------------------------------------------------------------
  function show(view) {
    if (view === "history" && !hist.loaded) loadHistory(true);
    if (view === "usage") {
      loadBudget();
      loadUsage();
    }
  }

  function reset() {
    hist.cursor = null;
    hist.loaded = false;
    $("history-rows").replaceChildren();
    $("detail").hidden = true;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("history-filters").addEventListener("submit", (ev) => {
      ev.preventDefault();
      $("detail").hidden = true;
      loadHistory(true);
    });
    $("history-more").addEventListener("click", () => loadHistory(false));
    $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
    $("history-export").addEventListener("click", exportHistory);
    // the execution's card on Run: live events, or its log replayed while Redis keeps it
    $("detail-follow").addEventListener("click", () => {
      window.aiecs.trackTask($("detail").dataset.taskId);
      location.hash = "#run";
    });
    $("usage-filters").addEventListener("submit", (ev) => {
      ev.preventDefault();
      loadUsage();
    });
    window.aiecsHistory = { show, reset, showDetail, loadHistory };
  });
})();
