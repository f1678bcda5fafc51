"""The recorder: the outbox (``aiecs:outbox``; one per shard on a sharded Redis Cluster,
read in turn, a batch from one of them) -> the history database.

One loop per process (``aiecs recorder``; ``aiecs dev`` starts one); several may run:

1. read up to AIECS_RECORDER_BATCH entries in the consumer group ``recorders`` (consumer
   ``host:pid``), waiting at most AIECS_RECORDER_WAIT_MS for a batch to fill;
2. build their rows (:mod:`.rows`), read each execution's event log from Redis (one
   pipeline) and compact it;
3. write them in one transaction, idempotently (``ON CONFLICT DO NOTHING`` on the identity);
4. after the commit, ``XACK`` + ``XDEL`` them (one pipeline).

:meth:`Recorder.run` overlaps the steps: while one batch is written and acknowledged (a
writer thread; the driver waits on the database without the GIL), the next is read and
built. At most one batch is being written and one more is ready, so at most two batches
are pending under this consumer; the one waiting keeps its claim fresh like the one being
written. :meth:`Recorder.step` does the same steps one after the other (tests, tools).

A crash between 3 and 4 leaves the entries pending: another recorder claims them
(``XAUTOCLAIM`` once idle AIECS_RECORDER_CLAIM_IDLE) and writes them again, adding nothing.
A database that does not answer slows no task: the recorder retries with backoff (keeping
its claim on the entries fresh), the outbox grows (``aiecs_outbox_backlog``) and it catches
up afterwards. The retention job (:mod:`.retention`) runs in whichever recorder holds its
Redis lock.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import redis

from ..settings import Settings, get_settings
from ..store.connection import sync_client
from ..store.keys import OUTBOX_GROUP, SHARD_PREFIXES, TaskKeys, outbox_key, schedule_key
from . import require
from .metrics import RecorderMetrics
from .retention import RetentionJob
from .rows import Record, build, compact_events_json, decode_entry

__all__ = ["Recorder", "consumer_name"]

log = logging.getLogger("aiecs.recorder")


def consumer_name() -> str:
    """This process's consumer name in the group: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Recorder:
    """Reads the outbox and writes the history database (see the module's docstring)."""

    def __init__(self, settings: Settings | None = None, *, database_url: str | None = None,
                 redis_url: str | None = None, consumer: str | None = None,
                 metrics: RecorderMetrics | None = None, retention: bool = True):
        self.settings = s = settings or get_settings()
        require()
        # deferred: a worker-only install has no aiecs_history (see history.require)
        from aiecs_history import db, writes

        self._db = db
        self._writes = writes
        self.database_url = database_url or s.database_url
        self.engine = db.connect(self.database_url)
        self.redis = sync_client(redis_url or s.state_redis_url, settings=s, socket_timeout=10)
        # the event logs as Redis sends them ([id, [field, value, ...]] per entry): redis-py's
        # XRANGE callback builds a dict per entry, a third of the recorder's CPU per row
        self.redis.set_response_callback("XRANGE", _raw)
        self.redis.set_response_callback("XREADGROUP", _raw)
        self.consumer = consumer or consumer_name()
        #: the outbox of every shard; each batch comes from one, taken in turn
        self.streams = [outbox_key(shard) for shard in SHARD_PREFIXES]
        self._turn = 0
        self._last_claims: dict[str, float] = {}
        self.metrics = metrics or RecorderMetrics()
        self.retention = (RetentionJob(self.engine, self.redis, s, self.metrics,
                                       owner=self.consumer) if retention else None)
        self.stop_event = threading.Event()
        self._last_gauges = 0.0

    # -- set-up -------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Bring the database schema up to date and make sure the consumer group exists."""
        self._db.upgrade(self.engine)
        for stream in self.streams:
            try:
                self.redis.xgroup_create(stream, OUTBOX_GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # -- the loop -----------------------------------------------------------------------------
    def run(self, prepare: bool = True) -> None:
        """Record until :meth:`stop` (or SIGTERM through the CLI); ``prepare``: first
        :meth:`prepare` (unless the caller did)."""
        if prepare:
            self.prepare()
        log.info("recorder %s: outbox %s -> %s", self.consumer, ", ".join(self.streams),
                 self.engine.url.render_as_string(hide_password=True))
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aiecs-recorder-write")
        writing: Future[int] | None = None
        try:
            while not self.stop_event.is_set():
                try:
                    batch = self._next_batch()
                    if writing is not None and (batch is not None or writing.done()):
                        self._finish(writing, batch)
                        writing = None
                    if batch is not None and not self.stop_event.is_set():
                        writing = writer.submit(self._commit, *batch)
                except redis.RedisError as exc:  # Redis away: wait for it
                    log.warning("recorder: Redis unreachable (%s); retrying", exc)
                    self.stop_event.wait(1.0)
            if writing is not None:
                self._finish(writing, None)
        finally:
            writer.shutdown(wait=True)
            self.engine.dispose()

    def stop(self) -> None:
        self.stop_event.set()

    def step(self) -> int:
        """One round: retention when due, claim idle entries when due, read and record a
        batch. Returns the number of entries acknowledged."""
        batch = self._next_batch()
        return 0 if batch is None else self._commit(*batch)

    def _next_batch(self) -> tuple[list[Record], list[str], str] | None:
        """Retention when due, claim idle entries when due, read a batch from the next
        shard's outbox and build its records (``(records, entry ids, outbox)``); None
        when there is nothing to record."""
        if self.retention is not None:
            self.retention.maybe_run()
        stream = self.streams[self._turn % len(self.streams)]
        self._turn += 1
        entries = self._claim_idle(stream) or self._read(stream)
        self._gauges()
        if not entries:
            return None
        return self._build(entries), [e[0] for e in entries], stream

    def _finish(self, writing: Future[int], ready: tuple[list[Record], list[str], str] | None
                ) -> None:
        """Wait for the batch being written; meanwhile keep the claim on the ``ready``
        batch's entries fresh (a slow database must not let another recorder take them
        over while they wait here). A failure to acknowledge leaves the entries pending
        (written again later, adding nothing): logged."""
        touch = self.settings.aiecs_recorder_claim_idle / 3
        while True:
            try:
                writing.result(timeout=touch)
                return
            except TimeoutError:
                if ready is not None:
                    self._touch(ready[1], ready[2])
            except redis.RedisError as exc:
                log.warning("recorder: acknowledging a batch failed (%s); its entries stay "
                            "pending and are recorded again, adding nothing", _short(exc))
                return

    def _read(self, stream: str | None = None) -> list[tuple[str, dict[str, str]]]:
        """A batch of one outbox: wait up to AIECS_RECORDER_WAIT_MS (divided among the
        shards: a round of them waits that long) for a first entry; a batch not full then
        waits as long again and takes what arrived meanwhile, in one more read (not one
        read per entry as they trickle in: at 100 executions a second that was a read per
        execution). ``stream``: default the first shard's."""
        stream = stream or self.streams[0]
        s = self.settings
        wait = max(1, s.aiecs_recorder_wait_ms // len(self.streams))
        out = self._xread(s.aiecs_recorder_batch, wait, stream)
        if out and len(out) < s.aiecs_recorder_batch and not self.stop_event.wait(wait / 1000):
            out += self._xread(s.aiecs_recorder_batch - len(out), 0, stream)
        return out

    def _xread(self, count: int, block_ms: int, stream: str | None = None
               ) -> list[tuple[str, dict[str, str]]]:
        """Up to ``count`` new entries, waiting up to ``block_ms`` for one (0: no wait)."""
        got: Any = self.redis.xreadgroup(OUTBOX_GROUP, self.consumer,
                                         {stream or self.streams[0]: ">"},
                                         count=count, block=block_ms or None)
        # raw reply: [[stream, [[id, [field, value, ...]], ...]]] (RESP3: a map)
        streams: Any = got.values() if isinstance(got, dict) else [s[1] for s in got or []]
        return [(_s(i), decode_entry(f)) for entries in streams for i, f in entries]

    def _claim_idle(self, stream: str) -> list[tuple[str, dict[str, str]]]:
        """Entries of one outbox another recorder read and never acknowledged (it died),
        once idle."""
        s = self.settings
        now = time.monotonic()
        if now - self._last_claims.get(stream, 0.0) < min(5.0, s.aiecs_recorder_claim_idle / 2):
            return []
        self._last_claims[stream] = now
        reply: Any = self.redis.xautoclaim(
            stream, OUTBOX_GROUP, self.consumer, int(s.aiecs_recorder_claim_idle * 1000),
            start_id="0-0", count=s.aiecs_recorder_batch)
        claimed = reply[1]  # [next id, [(id, fields)...], deleted ids]
        out = [(_s(i), decode_entry(f)) for i, f in claimed if f]
        if out:
            self.metrics.claimed.inc(len(out))
            log.info("recorder: took over %d entries left by an idle recorder", len(out))
        return out

    def _gauges(self, force: bool = False) -> None:
        """The backlog gauges, read at most once a second."""
        now = time.monotonic()
        if not force and now - self._last_gauges < 1.0:
            return
        self._last_gauges = now
        with self.redis.pipeline(transaction=False) as p:
            for stream in self.streams:
                p.xlen(stream)
                p.xpending(stream, OUTBOX_GROUP)
            got = p.execute(raise_on_error=False)
        lengths, pendings = got[0::2], got[1::2]
        if all(isinstance(n, int) for n in lengths):
            self.metrics.backlog.set(sum(lengths))
        if all(isinstance(n, dict) for n in pendings):
            self.metrics.pending.set(sum(n.get("pending") or 0 for n in pendings))

    # -- one batch ----------------------------------------------------------------------------
    def record(self, entries: list[tuple[str, dict[str, str]]], stream: str | None = None
               ) -> int:
        """Write ``entries`` of the outbox ``stream`` (default: the first shard's),
        retrying until the database answers, then acknowledge and delete them. Returns how
        many were acknowledged."""
        return self._commit(self._build(entries), [e[0] for e in entries],
                            stream or self.streams[0])

    def _build(self, entries: list[tuple[str, dict[str, str]]]) -> list[Record]:
        """The records of ``entries``, with their event logs (one Redis round trip)."""
        s = self.settings
        records: list[Record] = []
        for entry_id, fields in entries:
            rec = build(entry_id, fields, payloads=s.aiecs_history_payloads,
                        payload_bytes=s.aiecs_history_payload_bytes)
            if rec is None:
                log.warning("recorder: outbox entry %s names no execution; dropped", entry_id)
            else:
                records.append(rec)
        self._attach_events(records)
        return records

    def _commit(self, records: list[Record], ids: list[str], stream: str) -> int:
        """Write ``records`` (retrying until the database answers), then acknowledge and
        delete the entries ``ids`` of the outbox ``stream``. Returns how many were
        acknowledged (0 when stopping:
        the entries stay pending for the next recorder)."""
        written = self._write_until_done(records, ids, stream)
        if written is None:
            return 0
        with self.redis.pipeline(transaction=False) as p:
            p.xack(stream, OUTBOX_GROUP, *ids)
            p.xdel(stream, *ids)
            p.execute()
        self.metrics.rows.inc(written)
        self.metrics.duplicates.inc(len(records) - written)
        self.metrics.entries.inc(len(ids))
        return len(ids)

    def _attach_events(self, records: list[Record]) -> None:
        if not records:
            return
        # one round trip: each task's log, and whether a schedule owns the task (its
        # steps are the schedule's runs; a schedule is named by its task id)
        with self.redis.pipeline(transaction=False) as p:
            for rec in records:
                p.xrange(TaskKeys(rec.row["user_id"], rec.row["task_id"]).log)
                p.exists(schedule_key(rec.row["user_id"], rec.row["task_id"]))
            out = p.execute(raise_on_error=False)
        for i, rec in enumerate(records):
            raw, scheduled = out[2 * i], out[2 * i + 1]
            if isinstance(raw, list):
                rec.events = compact_events_json(raw, rec.row["step"])
            if scheduled == 1 and not rec.row["schedule_id"]:
                rec.row["schedule_id"] = rec.row["task_id"]

    def _write_until_done(self, records: list[Record], ids: list[str], stream: str
                          ) -> int | None:
        delay = 0.1
        last_touch = time.monotonic()
        while True:
            try:
                return self._write(records)
            except Exception as exc:  # noqa: BLE001 - the database away: retry, lose nothing
                self.metrics.failures.inc()
                log.warning("recorder: writing %d rows failed (%s); retrying in %.1fs",
                            len(records), _short(exc), delay)
            if self.stop_event.wait(delay):
                return None
            delay = min(delay * 2, 5.0)
            if time.monotonic() - last_touch > self.settings.aiecs_recorder_claim_idle / 3:
                self._touch(ids, stream)
                last_touch = time.monotonic()
            self._gauges()

    def _touch(self, ids: list[str], stream: str) -> None:
        """Keep these entries ours: reset their idle time so no one claims them."""
        self.redis.xclaim(stream, OUTBOX_GROUP, self.consumer, 0, list[Any](ids),
                          justid=True)

    def _write(self, records: list[Record]) -> int:
        rows = [r.row for r in records]
        events = [{**r.identity, "events_json": r.events} for r in records if r.events]
        payloads = [r.payload for r in records if r.payload is not None]
        with self.engine.begin() as conn:
            return self._writes.write_batch(conn, rows, events, payloads)


def _raw(response: Any, **_options: Any) -> Any:
    return response


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
