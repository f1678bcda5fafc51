// aiecs page: submit tasks and watch their progress live.
//
// Client contract (see aiecs_worker/server/realtime.py): connect with {auth: {token}};
// every event of this user's tasks arrives as "task_event"; for each task shown, emit
// "subscribe" {task_id, after_seq: last applied seq} (on every (re)connect) and apply the
// replayed "task_events" batches and live events in seq order, each once; subscribe
// again on "resync" and when events wait behind a hole.
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

  // ---- one card per task -------------------------------------------------------------
  class Task {
    constructor(taskId, taskName) {
      this.id = taskId;
      this.seq = new Sequencer(0);
      this.step = null;
      this.status = "pending";
      this.text = "";
      this.steps = new Map(); // step -> its latest status event (a workflow's steps)
      this.el = $("task-template").content.firstElementChild.cloneNode(true);
      this.el.dataset.taskId = taskId;
      this.el.querySelector(".task-id").textContent = taskId;
      this.el.querySelector(".task-name").textContent = taskName || "";
      this.el.querySelector(".cancel").addEventListener("click", () => cancelTask(this));
      $("tasks").prepend(this.el);
      $("tasks-panel").hidden = false;
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
    reset(step) {
      this.step = step;
      this.text = "";
      this.el.querySelector(".stream").textContent = "";
      this.el.querySelector(".result").hidden = true;
      this.el.querySelector(".task-error").hidden = true;
      this.el.querySelector("progress").value = 0;
      this.el.querySelector(".message").textContent = "";
    }
    // every step's state, listed when the task has several (a workflow)
    noteStep(e) {
      this.steps.set(e.step, e);
      const list = this.el.querySelector(".steps");
      list.hidden = this.steps.size < 2;
      list.replaceChildren(...[...this.steps.keys()].sort((a, b) => a - b).map((n) => {
        const ev = this.steps.get(n);
        const li = document.createElement("li");
        li.dataset.step = String(n);
        li.dataset.status = ev.status;
        const why = TERMINAL.has(ev.status) && ev.status !== "completed"
          ? ` (${(ev.error && ev.error.message) || ev.message || ""})` : "";
        li.textContent = `step ${n}: ${ev.status}${why}`;
        return li;
      }));
    }
    apply(e) {
      if (e.type === "status" && e.step > 0) this.noteStep(e);
      if (this.step === null || e.step > this.step) this.reset(e.step);
      else if (e.step < this.step) return; // an older step's event, already superseded
      this.el.querySelector(".task-name").textContent = `${e.task_name} · step ${e.step}`;
      this.el.dataset.lastSeq = String(e.seq);
      if (e.type === "status") {
        if (e.status === "running" && this.text) {
          // redelivered after its worker was lost: the output starts over
          this.reset(e.step);
          this.el.querySelector(".message").textContent = "restarted";
        }
        this.setStatus(e.status);
        if (e.message || TERMINAL.has(e.status)) {
          this.el.querySelector(".message").textContent = e.message || e.status;
        }
        if (e.status === "completed") {
          this.el.querySelector("progress").value = 1;
          const pre = this.el.querySelector(".result");
          pre.textContent = JSON.stringify(e.result, null, 2);
          pre.hidden = false;
        } else if (e.status === "cancelled") {
          // asked for, not a failure: say so in the card's message, never as a red error
          const why = (e.error && e.error.message) || e.message;
          this.el.querySelector(".message").textContent = why ? `Cancelled: ${why}` : "Cancelled";
        } else if (TERMINAL.has(e.status) && e.error) {
          const p = this.el.querySelector(".task-error");
          p.textContent = `${e.error.type}: ${e.error.message}`;
          p.hidden = false;
        }
      } else if (e.type === "progress") {
        if (typeof e.progress === "number") this.el.querySelector("progress").value = e.progress;
        if (e.message) this.el.querySelector(".message").textContent = e.message;
        if (this.status === "pending") this.setStatus(e.status);
      } else if (e.type === "stream" && e.delta) {
        this.text += e.delta;
        this.el.querySelector(".stream").textContent = this.text;
      }
      persistTasks();
    }
    setStatus(status) {
      this.status = status;
      const badge = this.el.querySelector(".status");
      badge.textContent = status;
      badge.dataset.status = status;
      this.el.dataset.status = status;
      this.el.querySelector(".cancel").disabled = TERMINAL.has(status);
    }
    get done() {
      return TERMINAL.has(this.status);
    }
  }

  function trackTask(taskId, taskName) {
    let task = state.tasks.get(taskId);
    if (!task) {
      task = new Task(taskId, taskName);
      state.tasks.set(taskId, task);
      persistTasks();
      subscribe(task);
    }
    return task;
  }

  function persistTasks() {
    sessionStorage.setItem(STORE_TASKS, JSON.stringify([...state.tasks.keys()].slice(-50)));
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
      if (e && typeof e.task_id === "string") trackTask(e.task_id, e.task_name).offer(e);
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
          if (!ack.exists) task.el.querySelector(".message").textContent = "unknown task";
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
    $("submit").hidden = false;
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
    $("submit").hidden = true;
  }

  async function devLogin(user) {
    try {
      const out = await api("POST", "/dev/token", { user_id: user });
      await useToken(out.token);
    } catch (e) {
      $("auth-error").textContent = `Sign-in failed: ${e.message}`;
    }
  }

  // ---- services and submit -----------------------------------------------------------
  async function loadServices() {
    const listing = await api("GET", "/services");
    state.services = listing.services;
    const select = $("service");
    select.replaceChildren();
    for (const s of state.services) {
      select.append(new Option(`${s.mode}/${s.service}`, `${s.mode}/${s.service}`));
    }
    onServiceChange();
  }

  function currentService() {
    return state.services.find((s) => `${s.mode}/${s.service}` === $("service").value);
  }

  function onServiceChange() {
    const svc = currentService();
    const select = $("operation");
    select.replaceChildren();
    if (!svc) return;
    for (const name of Object.keys(svc.operations)) select.append(new Option(name, name));
    onOperationChange();
  }

  function exampleFor(schema) {
    const out = {};
    const props = (schema && schema.properties) || {};
    for (const name of (schema && schema.required) || []) {
      const p = props[name] || {};
      const type = p.type || (p.anyOf && p.anyOf[0] && p.anyOf[0].type);
      out[name] = type === "integer" || type === "number" ? 1
        : type === "boolean" ? false
        : type === "array" ? []
        : type === "object" ? {}
        : "Hello from the aiecs page! This text streams back in chunks.";
    }
    if ("chunks" in props) out.chunks = 8;
    if ("delay" in props) out.delay = 0.25;
    return out;
  }

  function onOperationChange() {
    const svc = currentService();
    const op = svc && svc.operations[$("operation").value];
    $("op-description").textContent = op
      ? `${op.description || ""} (declared queue: ${op.heavy ? "heavy" : "fast"})` : "";
    $("input-json").value = JSON.stringify(op ? exampleFor(op.input_schema) : {}, null, 2);
  }

  async function onSubmit(ev) {
    ev.preventDefault();
    $("submit-error").textContent = "";
    const svc = currentService();
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
      trackTask(out.task_id, body.task_name);
    } catch (e) {
      $("submit-error").textContent = `Refused: ${e.message}`;
      if (e.status === 401 && state.config.dev && state.user) await devLogin(state.user);
    }
  }

  async function cancelTask(task) {
    const button = task.el.querySelector(".cancel");
    button.disabled = true;
    task.el.dataset.cancel = "sending";
    try {
      await api("DELETE", `/tasks/${encodeURIComponent(task.id)}`);
      // the CANCELLED event may have arrived before this answer: never overwrite it
      if (!TERMINAL.has(task.status)) task.el.querySelector(".message").textContent = "cancelling...";
    } catch (e) {
      task.el.querySelector(".message").textContent = `Cancel refused: ${e.message}`;
      button.disabled = TERMINAL.has(task.status);
    } finally {
      task.el.dataset.cancel = "sent";
    }
  }

  // ---- start -------------------------------------------------------------------------
  async function main() {
    window.aiecs = { state, Sequencer };
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
    $("service").addEventListener("change", onServiceChange);
    $("operation").addEventListener("change", onOperationChange);
    $("submit-form").addEventListener("submit", onSubmit);
    $("follow-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const id = $("follow-id").value.trim();
      if (id) trackTask(id, "");
    });
    for (const id of JSON.parse(sessionStorage.getItem(STORE_TASKS) || "[]")) trackTask(id, "");
    if (state.token) await useToken(state.token);
    document.body.dataset.ready = "true";
  }

  document.addEventListener("DOMContentLoaded", () => {
    main().catch((e) => {
      $("auth-error").textContent = `The page could not start: ${e.message}`;
    });
  });
})();
