// aiecs page: submit tasks and watch their progress live (history.js: history, usage, budget).
//
// Client contract (see aiecs_worker/server/realtime.py): connect with {auth: {token}};
// every event of this user's tasks arrives as "task_event"; for each task shown, emit
// "subscribe" {task_id, after_seq: last applied seq} (on every (re)connect) and apply the
// replayed "task_events" batches and live events in seq order, each once; subscribe
// again on "resync" and when events wait behind a hole.
//
// One card per id followed. What an id is decides what its card shows:
// - a task: its highest step (a task resubmitted under the same id runs step 2, 3, ...),
//   the status GET /tasks/{id} reports;
// - a workflow (several steps of one id, GET /workflows/{id} answers): the workflow's own
//   state, as GET /workflows/{id} computes it (running until every step ended, then
//   completed only if all completed, else failed), every step listed, and the stream of
//   the step running now;
// - a batch (its events are step 0, task_name "batch"): the items' counts.
"use strict";

(() => {
  const TERMINAL = new Set(["completed", "failed", "timed_out", "cancelled"]);
  const GAP_TIMEOUT_MS = 1500;
  const STORE_TOKEN = "aiecs.token";
  const STORE_TASKS = "aiecs.tasks";
  const $ = (id) => document.getElementById(id);

  const state = {
    config: { dev: false },
    token: sessionStorage.getItem(STORE_TOKEN),
    user: null,
    socket: null,
    services: [],
    tasks: new Map(), // task_id -> Task
  };

  // ---- ordering: apply each task's events in seq order, once -------------------------
  class Sequencer {
    constructor(applied = 0) {
      this.applied = applied;
      this.held = new Map();
    }
    offer(event) {
      const seq = event.seq;
      if (!Number.isInteger(seq) || seq <= this.applied || this.held.has(seq)) return [];
      this.held.set(seq, event);
      return this.drain();
    }
    drain() {
      const out = [];
      while (this.held.has(this.applied + 1)) {
        this.applied += 1;
        out.push(this.held.get(this.applied));
        this.held.delete(this.applied);
      }
      return out;
    }
    // give up on holes below `upto`: the log replayed later events but not those
    skipGap(upto) {
      const out = [];
      while (this.held.size && Math.min(...this.held.keys()) <= upto) {
        this.applied = Math.min(...this.held.keys()) - 1;
        out.push(...this.drain());
      }
      return out;
    }
    get waiting() {
      return this.held.size > 0;
    }
  }

  // ---- one card per task, workflow or batch -------------------------------------------
  let tick = 0; // orders the steps' latest events

  function newStep(n) {
    return { n, status: "pending", name: "", text: "", progress: 0, message: "",
             result: undefined, error: null, at: 0, restarted: false };
  }

  // the workflow's status from its steps' (the rule of GET /workflows/{id})
  function workflowStatus(steps) {
    const all = [...steps.values()];
    if (all.some((s) => !TERMINAL.has(s.status))) {
      return all.some((s) => s.status !== "pending") ? "running" : "pending";
    }
    return all.every((s) => s.status === "completed") ? "completed" : "failed";
  }

  class Task {
    // info: {title, kind ("task" | "workflow" | "batch"), submitted (we just sent it)}
    constructor(taskId, info = {}) {
      this.id = taskId;
      this.seq = new Sequencer(0);
      this.kind = info.kind || null;
      this.title = info.title || "";
      // a template's execution: "name@version" (its events say which version ran),
      // "name:label" until the first event arrives
      this.template = info.template || "";
      this.steps = new Map(); // step -> its state (steps > 0)
      this.batch = null; // a batch's latest event (step 0)
      this.status = info.submitted ? "pending" : "checking";
      this.known = Boolean(info.submitted); // the server has something under this id
      this.el = $("task-template").content.firstElementChild.cloneNode(true);
      this.el.dataset.taskId = taskId;
      this.el.querySelector(".task-id").textContent = taskId;
      this.el.querySelector(".cancel").addEventListener("click", () => cancelTask(this));
      $("tasks").prepend(this.el);
      $("tasks-panel").hidden = false;
      this.render();
    }
    offer(event) {
      for (const e of this.seq.offer(event)) this.apply(e);
      this.watchGap();
    }
    skipGap(upto) {
      for (const e of this.seq.skipGap(upto)) this.apply(e);
      this.watchGap();
    }
    // events held behind a hole for a while: ask the log for what is missing
    watchGap() {
      if (!this.seq.waiting) {
        clearTimeout(this.gapTimer);
        this.gapTimer = null;
      } else if (!this.gapTimer) {
        this.gapTimer = setTimeout(() => {
          this.gapTimer = null;
          if (this.seq.waiting) subscribe(this);
        }, GAP_TIMEOUT_MS);
      }
    }
    notFound() {
      if (this.known) return;
      this.status = "unknown";
      this.render();
    }
    apply(e) {
      this.known = true;
      this.el.dataset.lastSeq = String(e.seq);
      if (e.step === 0) {
        this.kind = "batch";
        this.batch = e;
      } else {
        let st = this.steps.get(e.step);
        if (!st) {
          st = newStep(e.step);
          this.steps.set(e.step, st);
          if (this.steps.size === 2 && !this.kind) identify(this);
        }
        if (!this.title && TERMINAL.has(e.status)) nameFromHistory(this, e.step);
        st.name = e.task_name || st.name;
        if (e.template && e.template.name) {
          this.template = `${e.template.name}@${e.template.version}`;
        }
        st.at = ++tick;
        if (e.type === "status") {
          if (e.status === "running" && (st.text || st.status === "running")) {
            // redelivered after its worker was lost: the output starts over
            Object.assign(st, { text: "", progress: 0, restarted: true });
          }
          st.status = e.status;
          st.message = e.message || "";
          if (e.status === "completed") {
            st.progress = 1;
            st.result = e.result;
          }
          if (TERMINAL.has(e.status)) st.error = e.error || null;
        } else if (e.type === "progress") {
          if (typeof e.progress === "number") st.progress = e.progress;
          if (e.message) st.message = e.message;
          if (st.status === "pending") st.status = e.status;
        } else if (e.type === "stream" && e.delta) {
          st.text += e.delta;
        }
      }
      this.render();
      persistTasks();
    }
    // the step whose output the card shows: a task's highest; a workflow's running step
    // (the latest to say something), else its latest completed one
    focus() {
      const all = [...this.steps.values()];
      if (!all.length) return null;
      if (this.kind !== "workflow") return all.reduce((a, b) => (b.n > a.n ? b : a));
      const latest = (list) => list.reduce((a, b) => (b.at > a.at ? b : a));
      const running = all.filter((s) => s.status === "running");
      if (running.length) return latest(running);
      const done = all.filter((s) => s.status === "completed");
      return latest(done.length ? done : all);
    }
    computeStatus() {
      if (this.kind === "batch") return this.batch.status;
      if (!this.steps.size) return this.status;
      if (this.kind === "workflow") return workflowStatus(this.steps);
      return this.focus().status;
    }
    titleText(focus) {
      if (this.kind === "batch") {
        const c = (this.batch && this.batch.result) || {};
        return `batch · ${c.done ?? 0} of ${c.total ?? "?"} items ended`;
      }
      if (this.kind === "workflow") {
        return `${this.title || "workflow"} · ${this.steps.size} steps`;
      }
      const name = this.title || (focus && focus.name) || "";
      return focus && focus.n > 1 ? `${name} · step ${focus.n}` : name;
    }
    render() {
      const el = this.el;
      const focus = this.kind === "batch" ? null : this.focus();
      this.setStatus(this.computeStatus());
      el.dataset.kind = this.kind || "";
      el.querySelector(".task-name").textContent = this.titleText(focus);
      const tpl = el.querySelector(".task-template");
      tpl.hidden = !this.template;
      tpl.textContent = this.template ? `template ${this.template}` : "";
      el.dataset.template = this.template;

      // a workflow's steps, each with its state
      const list = el.querySelector(".steps");
      list.hidden = !(this.kind === "workflow" || this.steps.size > 1);
      if (!list.hidden) {
        list.replaceChildren(...[...this.steps.values()].sort((a, b) => a.n - b.n).map((s) => {
          const li = document.createElement("li");
          li.dataset.step = String(s.n);
          li.dataset.status = s.status;
          const why = TERMINAL.has(s.status) && s.status !== "completed"
            ? ` (${(s.error && s.error.message) || s.message || ""})` : "";
          li.textContent = `step ${s.n}: ${s.status}${why}${s.name ? ` · ${s.name}` : ""}`;
          return li;
        }));
      }

      const progress = el.querySelector("progress");
      const message = el.querySelector(".message");
      const stream = el.querySelector(".stream");
      const label = el.querySelector(".stream-label");
      const result = el.querySelector(".result");
      const error = el.querySelector(".task-error");
      if (this.status === "unknown") {
        message.textContent = "Not found: no task, workflow or batch with this id "
          + "(or it has expired).";
        return;
      }
      if (this.kind === "batch") {
        progress.value = this.batch.progress ?? 0;
        message.textContent = this.batch.message || "";
        stream.textContent = "";
        label.hidden = true;
        result.hidden = error.hidden = true;
        return;
      }
      if (!focus) {
        message.textContent = this.status === "checking" ? "Looking this id up..." : "";
        return;
      }
      progress.value = this.kind === "workflow" && TERMINAL.has(this.status) ? 1 : focus.progress;
      stream.textContent = focus.text;
      label.hidden = !(this.kind === "workflow" && focus.text);
      label.textContent = `step ${focus.n}${focus.name ? ` · ${focus.name}` : ""}`
        + (focus.status === "running" ? " (running)" : "");
      result.hidden = focus.result === undefined;
      if (!result.hidden) result.textContent = JSON.stringify(focus.result, null, 2);

      // the error once: in red, with its type; the message only when it adds something
      const failed = this.kind === "workflow"
        ? [...this.steps.values()].find((s) => s.error && s.status !== "cancelled")
        : (focus.error && focus.status !== "cancelled" ? focus : null);
      error.hidden = !failed;
      if (failed) {
        const where = this.kind === "workflow" ? `step ${failed.n}: ` : "";
        error.textContent = `${where}${failed.error.type}: ${failed.error.message}`;
      }
      let text = focus.restarted && focus.status === "running" ? "restarted" : focus.message;
      if (focus.status === "cancelled") {
        const why = (focus.error && focus.error.message) || focus.message;
        text = why ? `Cancelled: ${why}` : "Cancelled";
      } else if (failed && text && failed.error.message.includes(text)) {
        text = "";
      } else if (!text && TERMINAL.has(focus.status) && !failed) {
        text = focus.status;
      }
      if (this.kind === "workflow" && TERMINAL.has(this.status)) {
        const n = (st) => [...this.steps.values()].filter((s) => s.status === st).length;
        text = [`${n("completed")} of ${this.steps.size} steps completed`,
                 n("failed") && `${n("failed")} failed`,
                 n("timed_out") && `${n("timed_out")} timed out`,
                 n("cancelled") && `${n("cancelled")} cancelled`].filter(Boolean).join(", ");
      }
      if (!this.cancelNote || TERMINAL.has(this.status)) message.textContent = text;
    }
    setStatus(status) {
      this.status = status;
      const badge = this.el.querySelector(".status");
      badge.textContent = status === "unknown" ? "not found" : status;
      badge.dataset.status = status;
      this.el.dataset.status = status;
      this.el.querySelector(".cancel").disabled = !this.known || TERMINAL.has(status)
        || this.el.dataset.cancel === "sending";
    }
    get done() {
      return TERMINAL.has(this.status);
    }
  }

  // a task with several steps: a workflow, or one task id run again (GET /workflows says)
  async function identify(task) {
    try {
      const view = await api("GET", `/workflows/${encodeURIComponent(task.id)}`);
      task.kind = "workflow";
      const first = view.steps && view.steps[0];
      if (first && !task.title) {
        const services = new Set(view.steps.map((s) => `${s.mode}/${s.service}`));
        task.title = services.size === 1 ? `workflow · ${[...services][0]}` : "workflow";
      }
    } catch (e) {
      if (e.status === 404) task.kind = task.kind || "task";
      else return; // not known yet: the card keeps following its highest step
    }
    task.render();
  }

  // a task followed or seen live without its submission: its service from the history
  // (GET /executions/{id}/{step}, Redis first); nothing when the server has no history
  async function nameFromHistory(task, step) {
    if (task.named || task.title || !state.config.history) return;
    task.named = true; // asked once
    try {
      const out = await api("GET", `/executions/${encodeURIComponent(task.id)}/${step}`);
      const row = (out && out.execution) || {};
      if (row.mode && row.service && !task.title && task.kind !== "workflow") {
        task.title = `${row.mode}/${row.service} ${row.operation || row.task_name || ""}`.trim();
        task.render();
        persistTasks();
      }
    } catch {
      // no history here, or not recorded yet: the card keeps the operation's name
    }
  }

  function trackTask(taskId, info = {}) {
    let task = state.tasks.get(taskId);
    if (!task) {
      task = new Task(taskId, info);
      state.tasks.set(taskId, task);
      persistTasks();
      subscribe(task);
    } else if (info.title && !task.title) {
      // its first event came on the socket before the POST's answer: name it now
      task.title = info.title;
      task.template = task.template || info.template || "";
      task.kind = task.kind || info.kind || null;
      task.known = task.known || Boolean(info.submitted);
      task.render();
      persistTasks();
    }
    return task;
  }

  function persistTasks() {
    const kept = [...state.tasks.values()].slice(-50)
      .map((t) => ({ id: t.id, title: t.title, kind: t.kind, template: t.template }));
    sessionStorage.setItem(STORE_TASKS, JSON.stringify(kept));
  }

  // ---- HTTP --------------------------------------------------------------------------
  async function api(method, path, body) {
    const headers = {};
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await resp.json().catch(() => null);
    if (!resp.ok) {
      const err = (data && data.error) || {};
      const e = new Error(err.message || `${resp.status} ${resp.statusText}`);
      e.status = resp.status;
      e.type = err.type;
      throw e;
    }
    return data;
  }

  // ---- Socket.IO ---------------------------------------------------------------------
  function setConn(text, cls) {
    const el = $("conn");
    el.textContent = text;
    el.className = `conn ${cls}`;
    el.dataset.state = cls.replace("conn-", "");
  }

  function connect() {
    if (state.socket) state.socket.disconnect();
    setConn("connecting", "conn-wait");
    const socket = io({
      auth: (cb) => cb({ token: state.token }),
      transports: ["websocket", "polling"],
      reconnectionDelay: 500,
      reconnectionDelayMax: 5000,
    });
    state.socket = socket;
    window.aiecs.socket = socket;
    socket.on("connect", () => {
      setConn("live", "conn-on");
      $("auth-error").textContent = "";
      signedIn(); // the server accepted the token: only now say who we are
      for (const task of state.tasks.values()) subscribe(task);
    });
    socket.on("disconnect", (reason) => setConn(`offline (${reason})`, "conn-off"));
    socket.io.on("reconnect_attempt", () => setConn("reconnecting", "conn-wait"));
    socket.on("connect_error", async (err) => {
      const unauthorized = err.data && err.data.type === "unauthorized";
      if (!unauthorized) {
        setConn("reconnecting", "conn-wait");
        return; // network trouble: Socket.IO retries by itself
      }
      setConn("refused", "conn-off");
      if (state.config.dev && state.user && !state.devRetried) {
        state.devRetried = true; // once: a server that refuses its own dev tokens won't change
        await devLogin(state.user); // dev tokens are cheap: get a fresh one
      } else {
        signedOut();
        $("auth-error").textContent = `Token refused: ${err.message}. Paste a new token.`;
      }
    });
    socket.on("session_expired", async () => {
      if (state.config.dev && state.user) {
        await devLogin(state.user);
      } else {
        signedOut();
        $("auth-error").textContent = "Your token expired. Paste a new one.";
      }
    });
    socket.on("task_event", (e) => {
      if (e && typeof e.task_id === "string") trackTask(e.task_id).offer(e);
    });
    socket.on("task_events", (batch) => {
      const task = batch && state.tasks.get(batch.task_id);
      if (task) for (const e of batch.events || []) task.offer(e);
    });
    // the server's Redis listener was away: live events may be missing, the log has them
    socket.on("resync", () => {
      for (const task of state.tasks.values()) subscribe(task);
    });
    socket.on("request_error", (e) => console.warn("server refused a message", e));
  }

  const RETRYABLE = new Set(["unavailable", "too_many_replays", "rate_limited"]);

  function subscribe(task) {
    const socket = state.socket;
    if (!socket || !socket.connected) return; // the next "connect" subscribes
    const sent = task.seq.applied;
    socket.timeout(30000).emit(
      "subscribe", { task_id: task.id, after_seq: sent },
      (err, ack) => {
        if (err) return; // disconnected meanwhile: "connect" will resubscribe
        if (ack && ack.ok && ack.last_seq < sent) {
          // ahead of the log (it was lost, e.g. Redis flushed): start over from it.
          // Compared with what was sent: live events applied while the subscribe was
          // answered are newer than the server's reading, not a lost log.
          task.seq = new Sequencer(0);
          subscribe(task);
        } else if (ack && ack.ok) {
          task.skipGap(ack.replayed_to);
          if (!ack.exists) task.notFound();
        } else if (ack && ack.error && RETRYABLE.has(ack.error.type)) {
          // Redis down, or over the replay limits: try again after the server's hint
          const wait = Math.min(30, Number(ack.error.retry_after) || 1);
          setTimeout(() => subscribe(task), wait * 1000);
        }
      },
    );
  }

  // ---- auth --------------------------------------------------------------------------
  function decodeUser(token) {
    try {
      const b64 = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(b64)).sub;
    } catch {
      return null;
    }
  }

  // A token is only "signed in" once the server accepted it (the Socket.IO connection is
  // authenticated); until then the page says it is checking, and a refused token signs out.
  async function useToken(token) {
    state.token = token;
    state.user = decodeUser(token);
    state.accepted = false;
    $("whoami").textContent = "Checking the token...";
    $("whoami").dataset.state = "checking";
    $("auth-error").textContent = "";
    connect();
  }

  function signedIn() {
    if (state.accepted) return;
    state.accepted = true;
    state.devRetried = false;
    sessionStorage.setItem(STORE_TOKEN, state.token);
    $("whoami").textContent = state.user ? `Signed in as ${state.user}.` : "Signed in.";
    $("whoami").dataset.state = "signed-in";
    // signed in: the sign-in panel gives way to the user's name and a way out
    $("auth").hidden = true;
    $("user-name").textContent = state.user || "signed in";
    $("user-chip").hidden = false;
    $("nav").hidden = false;
    $("submit").hidden = false;
    showView(viewFromHash());
    if (window.aiecsTemplates) window.aiecsTemplates.signedIn();
    loadServices().catch((e) => {
      $("submit-error").textContent = `Could not list the services: ${e.message}`;
    });
  }

  function signedOut() {
    if (state.socket) state.socket.disconnect();
    state.socket = null;
    state.token = null;
    state.accepted = false;
    sessionStorage.removeItem(STORE_TOKEN);
    $("whoami").textContent = "Not signed in.";
    $("whoami").dataset.state = "signed-out";
    $("auth").hidden = false;
    $("user-chip").hidden = true;
    $("nav").hidden = true;
    $("submit").hidden = true;
    for (const v of document.querySelectorAll(".view")) v.hidden = true;
  }

  // the user asked to leave: forget the token and the cards (another user may sign in)
  function signOut() {
    signedOut();
    state.user = null;
    for (const task of state.tasks.values()) {
      clearTimeout(task.gapTimer);
      task.el.remove();
    }
    state.tasks.clear();
    sessionStorage.removeItem(STORE_TASKS);
    $("tasks-panel").hidden = true;
    setConn("offline", "conn-off");
    if (window.aiecsHistory) window.aiecsHistory.reset();
    if (window.aiecsTemplates) window.aiecsTemplates.reset();
  }

  async function devLogin(user) {
    try {
      const out = await api("POST", "/dev/token", { user_id: user });
      await useToken(out.token);
    } catch (e) {
      $("auth-error").textContent = `Sign-in failed: ${e.message}`;
    }
  }

  // ---- views (Run, History, Usage) ---------------------------------------------------
  const VIEWS = ["run", "history", "usage"];

  function viewFromHash() {
    const name = location.hash.replace("#", "");
    return VIEWS.includes(name) ? name : "run";
  }

  function showView(name) {
    if (!state.accepted) return;
    for (const v of VIEWS) $(`view-${v}`).hidden = v !== name;
    for (const a of document.querySelectorAll("#nav a")) {
      a.classList.toggle("active", a.dataset.view === name);
      if (a.dataset.view === name) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    document.body.dataset.view = name;
    if (name !== "run" && window.aiecsHistory) window.aiecsHistory.show(name);
  }

  // ---- services and submit -----------------------------------------------------------
  async function loadServices() {
    const listing = await api("GET", "/services");
    state.services = listing.services;
    const select = $("service");
    const before = select.value;
    select.replaceChildren();
    for (const s of state.services) {
      select.append(new Option(`${s.mode}/${s.service}`, `${s.mode}/${s.service}`));
    }
    if (before && currentServiceBy(before)) select.value = before;
    onServiceChange();
  }

  function currentServiceBy(key) {
    return state.services.find((s) => `${s.mode}/${s.service}` === key);
  }

  function currentService() {
    return currentServiceBy($("service").value);
  }

  function onServiceChange() {
    const svc = currentService();
    const select = $("operation");
    select.replaceChildren();
    if (!svc) return;
    for (const name of Object.keys(svc.operations)) select.append(new Option(name, name));
    onOperationChange();
  }

  function exampleFor(op) {
    if (!op) return {};
    if (op.example && typeof op.example === "object") return op.example;
    const schema = op.input_schema || {};
    const out = window.aiecsSample({ ...schema, examples: undefined }, schema) || {};
    return typeof out === "object" && !Array.isArray(out) ? out : {};
  }

  function onOperationChange() {
    const svc = currentService();
    const op = svc && svc.operations[$("operation").value];
    $("op-description").textContent = op
      ? `${op.description || ""} (declared queue: ${op.heavy ? "heavy" : "fast"})` : "";
    $("input-json").value = JSON.stringify(exampleFor(op), null, 2);
    $("submit-error").textContent = "";
  }

  async function onSubmit(ev) {
    ev.preventDefault();
    $("submit-error").textContent = "";
    const svc = currentService();
    if (!svc) {
      $("submit-error").textContent = "No service to run: the server lists none.";
      return;
    }
    let input;
    try {
      input = JSON.parse($("input-json").value || "{}");
    } catch (e) {
      $("submit-error").textContent = `Input is not valid JSON: ${e.message}`;
      return;
    }
    const body = {
      mode: svc.mode, service: svc.service, task_name: $("operation").value, input_data: input,
    };
    const queue = $("queue").value;
    if (queue) body.heavy = queue === "heavy";
    try {
      const out = await api("POST", "/tasks", body);
      trackTask(out.task_id, { title: `${svc.mode}/${svc.service} ${body.task_name}`,
                               kind: "task", submitted: true });
    } catch (e) {
      $("submit-error").textContent = `Refused: ${e.message}`;
      if (e.status === 401 && state.config.dev && state.user) await devLogin(state.user);
    }
  }

  async function cancelTask(task) {
    const button = task.el.querySelector(".cancel");
    button.disabled = true;
    task.el.dataset.cancel = "sending";
    const path = task.kind === "batch" ? "batches" : task.kind === "workflow" ? "workflows"
      : "tasks";
    try {
      await api("DELETE", `/${path}/${encodeURIComponent(task.id)}`);
      // the CANCELLED event may have arrived before this answer: never overwrite it
      if (!TERMINAL.has(task.status)) {
        task.cancelNote = true;
        task.el.querySelector(".message").textContent = "cancelling...";
      }
    } catch (e) {
      task.cancelNote = true;
      task.el.querySelector(".message").textContent = `Cancel refused: ${e.message}`;
    } finally {
      task.el.dataset.cancel = "sent";
      task.setStatus(task.status);
    }
  }

  // ---- start -------------------------------------------------------------------------
  async function main() {
    window.aiecs = { state, Sequencer, api, trackTask, showView, TERMINAL, devLogin };
    state.config = await api("GET", "/config");
    // the dev sign-in form exists only on a development server ([hidden] wins in the CSS)
    $("dev-login").hidden = !state.config.dev;
    $("dev-login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      state.user = $("dev-user").value.trim();
      devLogin(state.user);
    });
    $("token-login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const token = $("token-input").value.trim();
      if (token) useToken(token);
    });
    $("sign-out").addEventListener("click", signOut);
    $("service").addEventListener("change", onServiceChange);
    $("operation").addEventListener("change", onOperationChange);
    $("reset-example").addEventListener("click", onOperationChange);
    $("submit-form").addEventListener("submit", onSubmit);
    $("follow-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const id = $("follow-id").value.trim();
      if (id) trackTask(id);
    });
    window.addEventListener("hashchange", () => showView(viewFromHash()));
    let kept = [];
    try {
      kept = JSON.parse(sessionStorage.getItem(STORE_TASKS) || "[]");
    } catch {
      kept = [];
    }
    for (const t of kept) {
      if (typeof t === "string") trackTask(t);
      else if (t && typeof t.id === "string") {
        trackTask(t.id, { title: t.title, kind: t.kind, template: t.template });
      }
    }
    if (state.token) await useToken(state.token);
    document.body.dataset.ready = "true";
  }

  document.addEventListener("DOMContentLoaded", () => {
    main().catch((e) => {
      $("auth-error").textContent = `The page could not start: ${e.message}`;
    });
  });
})();
