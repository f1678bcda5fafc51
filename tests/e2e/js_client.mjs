// The official JavaScript Socket.IO client against the aiecs progress server.
//
// usage: node js_client.mjs '{"url", "token", "task_id", "drop_after"?, "origin"?,
//                             "timeout_ms"?, "wait_connect_only"?}'
// Prints one JSON object per line: {"kind": "connect" | "connect_error" | "applied" |
// "live" | "ack" | "resync" | "final" | "timeout", ...}. Follows the client contract of
// aiecs_worker/server/realtime.py: subscribe with the last applied seq on every
// (re)connect and on "resync", apply events in seq order, each once.
import { io } from "socket.io-client";

const TERMINAL = new Set(["completed", "failed", "timed_out", "cancelled"]);
const opts = JSON.parse(process.argv[2]);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

let applied = 0;
const held = new Map();
let liveCount = 0;
let dropped = false;

function offer(e) {
  if (!e || e.task_id !== opts.task_id || e.seq <= applied || held.has(e.seq)) return;
  held.set(e.seq, e);
  drain();
}

function drain() {
  while (held.has(applied + 1)) {
    applied += 1;
    const ev = held.get(applied);
    held.delete(applied);
    out({ kind: "applied", seq: ev.seq, type: ev.type, status: ev.status, delta: ev.delta,
          user_id: ev.user_id, result: ev.result });
    if (ev.type === "status" && TERMINAL.has(ev.status)) finish(ev);
  }
}

function finish(ev) {
  out({ kind: "final", status: ev.status, seq: ev.seq });
  socket.disconnect();
  process.exit(0);
}

const extraHeaders = opts.origin ? { Origin: opts.origin } : undefined;
const socket = io(opts.url, {
  auth: opts.token === null ? undefined : { token: opts.token },
  transports: ["websocket"],
  extraHeaders,
  reconnectionDelay: 200,
  reconnectionDelayMax: 1000,
});

function subscribe() {
  socket.timeout(20000).emit("subscribe", { task_id: opts.task_id, after_seq: applied },
    (err, ack) => {
      if (err) return;
      out({ kind: "ack", ack });
      if (ack && ack.ok) {
        // holes below replayed_to are permanent (trimmed): apply what was held past them
        while (held.size && Math.min(...held.keys()) <= ack.replayed_to) {
          applied = Math.min(...held.keys()) - 1;
          drain();
        }
      }
    });
}

socket.on("connect", () => {
  out({ kind: "connect", recovered: socket.recovered });
  if (opts.wait_connect_only) {
    socket.disconnect();
    process.exit(0);
  }
  subscribe();
});
socket.on("connect_error", (err) => {
  out({ kind: "connect_error", message: err.message, data: err.data ?? null });
  if (!socket.active) process.exit(0); // refused by the server: no retry
});
socket.on("resync", () => {
  out({ kind: "resync" });
  subscribe();
});
socket.on("task_event", (e) => {
  liveCount += 1;
  out({ kind: "live", seq: e.seq, task_id: e.task_id, user_id: e.user_id });
  if (opts.drop_after && !dropped && liveCount >= opts.drop_after) {
    dropped = true;
    out({ kind: "drop" });
    socket.io.engine.close(); // as a network drop: the client reconnects by itself
  }
  offer(e);
});
socket.on("task_events", (batch) => {
  for (const e of batch.events) offer(e);
});

setTimeout(() => {
  out({ kind: "timeout", applied });
  process.exit(2);
}, opts.timeout_ms ?? 60000);
