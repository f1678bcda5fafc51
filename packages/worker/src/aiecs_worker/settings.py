"""Settings read from the environment: the one loader of every aiecs process.

:class:`EnvSettings` is the model family: a field is read from the environment variable
of its name in capitals (matched case-insensitively); explicit arguments win. Its
subclasses are :class:`Settings` (here: every process, the worker's) and
:class:`aiecs_worker.server.settings.ServerSettings` (the progress server and the CLI).
Nothing else in aiecs_worker reads ``os.environ`` for a setting, but for
AIECS_REDIS_CLUSTER and AIECS_REDIS_SHARDS, which aiecs_worker.store.keys also reads as
it is imported (the values name every key; they are checked here).

An invalid value stops the process at start with a :class:`~aiecs_core.ConfigurationError`
of one line per problem: the variable, what is wrong with its value and the fix
(:func:`config_error`, used by every check of a setting).

The loader is a plain pydantic model read by :meth:`EnvSettings.load`, not
pydantic-settings: importing pydantic-settings costs every process 25-130 ms of start-up
(measured with and without .pyc files) for nothing these flat fields need.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from aiecs_core import Budget, ConfigurationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = ["EnvSettings", "RedisTarget", "Settings", "config_error", "get_settings",
           "is_sentinel", "load_settings", "parse_target"]

MIB = 1024 * 1024
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


# --- Redis URLs: plain or Sentinel (clients are made by aiecs_worker.store.connection) ---
SENTINEL_SCHEME = "sentinel://"


def is_sentinel(url: str) -> bool:
    """True for Celery's Sentinel URL form (``sentinel://host:port;sentinel://...``)."""
    return url.startswith(SENTINEL_SCHEME)


@dataclass(frozen=True)
class RedisTarget:
    """Where a Redis role lives: a plain URL, or sentinels and the name of their master."""

    url: str = field(repr=False)  # may hold a password
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    #: a Redis Cluster (AIECS_REDIS_CLUSTER, the state Redis only): ``url`` is one node
    cluster: bool = False

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    def master_kwargs(self) -> dict[str, Any]:
        """Connection arguments of the master (db and its credentials)."""
        out: dict[str, Any] = {"db": self.db}
        if self.username:
            out["username"] = self.username
        if self.password:
            out["password"] = self.password
        return out

    def sentinel_kwargs(self, options: dict[str, Any]) -> dict[str, Any]:
        """Connection arguments of the sentinels: their password and the caller's
        socket timeouts (a sentinel that does not answer must not hang a failover)."""
        out = {k: v for k, v in options.items() if k.startswith("socket_")}
        if self.sentinel_password:
            out["password"] = self.sentinel_password
        return out


def parse_target(url: str, *, master: str | None = None,
                 sentinel_password: str | None = None) -> RedisTarget:
    """The target of ``url``; ``master`` and ``sentinel_password`` matter only for the
    Sentinel form (raises ValueError when it names no sentinel, or no master is given)."""
    if not is_sentinel(url):
        return RedisTarget(url=url)
    sentinels: list[tuple[str, int]] = []
    db, username, password = 0, None, None
    for n, chunk in enumerate(url.split(";"), 1):
        chunk = chunk.strip()
        if not chunk:
            continue
        # errors name the sentinel by its place: the URL may hold a password
        if not chunk.startswith(SENTINEL_SCHEME):
            raise ValueError(f"sentinel {n} is not a sentinel:// URL (sentinels are joined "
                             "by ';', each sentinel://host:port)")
        part = urllib.parse.urlsplit(chunk)
        try:
            port = part.port or 26379
        except ValueError:
            raise ValueError(f"sentinel {n}: the port is not a number") from None
        if not part.hostname:
            raise ValueError(f"sentinel {n} names no host")
        sentinels.append((part.hostname, port))
        path = part.path.strip("/")
        if path:
            if not path.isdigit():
                raise ValueError(f"sentinel {n}: the path must be a database number")
            db = int(path)
        username = username or (urllib.parse.unquote(part.username) if part.username else None)
        password = password or (urllib.parse.unquote(part.password) if part.password else None)
    if not sentinels:
        raise ValueError("names no sentinel")
    if not master:
        raise ValueError("AIECS_SENTINEL_MASTER is not set")
    return RedisTarget(url=url, sentinels=tuple(sentinels), master=master, db=db,
                       username=username, password=password,
                       sentinel_password=sentinel_password)


def _sentinel_form(url: str) -> str:
    """``url``, checked when it is the Sentinel form (its master is checked later)."""
    if is_sentinel(url):
        parse_target(url, master="-")  # a ValueError says what is wrong
    return url


def _shown(value: object) -> str:
    """A value as an error may quote it: URLs' passwords masked (each of a Sentinel URL's
    ``;``-joined URLs), long values cut."""
    text = str(value)
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\1***@", text)
    return repr(text if len(text) <= 80 else text[:77] + "...")


#: The password of a URL's ``user:password@`` (up to the last ``@`` of its authority).
_URL_PASSWORD = re.compile(r"(://[^:/@;]*:)[^/;]*@")


def config_error(name: str, problem: str, *, value: object = None, default: object = None,
                 fix: str | None = None, secret: bool = False) -> ConfigurationError:
    """The one format of a bad setting, on one line: ``NAME='value': problem; fix: ...``
    (without a value: ``NAME problem; fix: ...``, the problem saying "is not set", say).

    ``value`` is quoted unless ``secret`` (then only its length is); the fix defaults to
    "set NAME to a valid value, or unset it for its default (D)".
    """
    if value is None:
        head = name
    elif secret:
        head = f"{name} (a secret of {len(str(value))} characters):"
    else:
        head = f"{name}={_shown(value)}:"
    if fix is None:
        fix = f"set {name} to a valid value" + (
            "" if default is None else f", or unset it for its default ({default})")
    return ConfigurationError(f"{head} {problem}; fix: {fix}", env_var=name)


class EnvSettings(BaseModel):
    """Settings read from the environment by :meth:`load` (the family's one loader)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    #: What the settings configure, for the error message ("invalid aiecs ... configuration").
    _what: ClassVar[str] = "aiecs"

    @classmethod
    def environ(cls, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment's values of this model's settings (variable names in any case)."""
        fields = cls.model_fields
        env = os.environ if environ is None else environ
        return {key.lower(): value for key, value in env.items() if key.lower() in fields}

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Read the settings from ``environ`` (default: the process's; ``overrides`` win).

        Raises :class:`~aiecs_core.ConfigurationError` with one line per problem, naming
        the variable, its value's problem and the fix; ``env_var`` is the first one's.
        """
        given = {**cls.environ(environ), **overrides}
        try:
            return cls(**given)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            lines: list[str] = []
            first: str | None = None
            for err in errors:
                field = next((str(p) for p in err["loc"] if not isinstance(p, int)), "")
                msg = err["msg"].removeprefix("Value error, ")
                if field in cls.model_fields:
                    info = cls.model_fields[field]
                    default = None if info.default_factory else info.default
                    secret = "SecretStr" in str(info.annotation)
                    error = config_error(field.upper(), msg, value=given.get(field),
                                         default=None if default is None else default,
                                         secret=secret)
                    name: str | None = field.upper()
                else:  # a check across fields: its message names the variables, first
                    # the one to change, and the fix
                    word = msg.split(" ", 1)[0]
                    name = word if word.lower() in cls.model_fields else None
                    error = ConfigurationError(msg, env_var=name)
                first = first or name
                lines.append(error.message)
            raise ConfigurationError(
                f"invalid {cls._what} configuration: " + "; ".join(lines), env_var=first,
            ) from None


class Settings(EnvSettings):
    """Every setting, its environment variable and its default."""

    # --- Celery -------------------------------------------------------------------------
    celery_broker_url: str = "redis://localhost:6379/0"
    """CELERY_BROKER_URL: the Celery broker: Redis (``redis://``, ``rediss://``,
    ``unix://``), Redis Sentinel (Celery's form, ``sentinel://host1:26379;sentinel://
    host2:26379``, with AIECS_SENTINEL_MASTER) or RabbitMQ (``amqp://``, ``amqps://``,
    ``pyamqp://``; then ``REDIS_URL`` is required, for state and events)."""
    celery_result_backend: str | None = None
    """CELERY_RESULT_BACKEND: where results are stored (default: the broker's
    Redis; with RabbitMQ, ``REDIS_URL``)."""
    celery_task_soft_time_limit: int = Field(default=300, gt=0)
    """CELERY_TASK_SOFT_TIME_LIMIT: seconds; the task's deadline (then TIMED_OUT)."""
    celery_task_time_limit: int = Field(default=600, gt=0)
    """CELERY_TASK_TIME_LIMIT: seconds; the prefork pool kills the child after this."""
    celery_worker_concurrency: int | None = Field(default=None, gt=0)
    """CELERY_WORKER_CONCURRENCY: pool size (default: Celery's, the number of CPUs)."""
    celery_worker_prefetch_multiplier: int = Field(default=1, ge=0)
    """CELERY_WORKER_PREFETCH_MULTIPLIER: messages reserved per pool slot."""
    aiecs_task_events: bool = False
    """AIECS_TASK_EVENTS: Celery task events (``worker_send_task_events`` and
    ``task_send_sent_event``) for Flower and ``celery events``; off: only worker heartbeats
    until a monitor enables them (Flower does, as does ``celery control enable_events``)."""
    aiecs_tracing: bool = False
    """AIECS_TRACING: OpenTelemetry traces and GenAI metrics over OTLP/HTTP (the
    ``aiecs-worker[tracing]`` extra; the exporter and the service name come from the
    standard ``OTEL_*`` variables, read by the OpenTelemetry SDK). Off: nothing of
    OpenTelemetry is imported."""
    celery_visibility_timeout: int = Field(default=300, gt=0)
    """CELERY_VISIBILITY_TIMEOUT: seconds before Redis redelivers an unacknowledged task
    (one a dead worker had received but not started; a redelivered copy of a running or
    finished execution is dropped or answered from its record)."""

    # --- aiecs state and events ------------------------------------------------------------
    redis_url: str | None = None
    """REDIS_URL: Redis for task state, the event log and pub/sub (default: the broker);
    a plain URL, the Sentinel form of CELERY_BROKER_URL, or a Redis Cluster node (with
    AIECS_REDIS_CLUSTER)."""
    aiecs_sentinel_master: str | None = None
    """AIECS_SENTINEL_MASTER: the name the sentinels know the master by (required when a
    Redis URL is a ``sentinel://`` one; every Sentinel URL of the deployment names it)."""
    aiecs_broker_sentinel_master: str | None = None
    """AIECS_BROKER_SENTINEL_MASTER: the broker's master name when it is not the state's
    (the broker and the state Redis are two masters watched by the same sentinels;
    default: AIECS_SENTINEL_MASTER). The result backend follows the broker when it is the
    broker's URL."""
    aiecs_redis_cluster: bool = False
    """AIECS_REDIS_CLUSTER: REDIS_URL is a node of a Redis Cluster (a plain ``redis://``
    URL, database 0): aiecs's keys carry hash tags (one per shard, AIECS_REDIS_SHARDS),
    its clients follow the cluster's slots, pub/sub goes through the node of the URL. The
    broker, the result backend and beat must be another Redis (or RabbitMQ): kombu and
    celery-redbeat cannot use a cluster. Every process of a deployment sets the same value
    (it names the keys). See docs/operations.md, "On a Redis Cluster"."""
    aiecs_redis_shards: int | None = Field(default=None, ge=1, le=16384)
    """AIECS_REDIS_SHARDS: how many hash tags aiecs's keys spread over on a Redis Cluster
    (default 16; only with AIECS_REDIS_CLUSTER). A user's keys and executions are in one
    shard (CRC-32 of the user id modulo the count); each shard has its own pending, held,
    owners, outbox, fair-share backlog and workflows-due sets. ``1``: every key under
    ``{aiecs}``, one slot. Every process of a deployment sets the same value (it names the
    keys); changing it is a migration (docs/migration.md). See docs/operations.md, "On a
    Redis Cluster"."""
    aiecs_pubsub_url: str | None = None
    """AIECS_PUBSUB_URL: the Redis of cancel broadcasts (default: REDIS_URL); any plain
    Redis, e.g. the broker's, or the Sentinel form. On a Redis Cluster it spares them the
    loss of one node (the events stay on the cluster: Lua scripts publish them there, and
    their subscriber moves to another node when its node dies)."""
    aiecs_sentinel_password: SecretStr | None = None
    """AIECS_SENTINEL_PASSWORD: the sentinels' own password (``requirepass`` of the
    sentinels); the master's password goes in the URL (``sentinel://:password@host``)."""
    aiecs_max_payload_bytes: int = Field(default=MIB, gt=0)
    """AIECS_MAX_PAYLOAD_BYTES: largest JSON size of input_data + context."""
    aiecs_max_deliveries: int = Field(default=3, ge=1)
    """AIECS_MAX_DELIVERIES: times a task may be delivered (worker lost) before FAILED."""
    aiecs_lease_seconds: int = Field(default=30, ge=3)
    """AIECS_LEASE_SECONDS: a worker process's lease on its executions, renewed every third
    of it; an execution whose worker died is queued again about this long after."""
    aiecs_redis_wait: float = Field(default=60.0, gt=0)
    """AIECS_REDIS_WAIT: seconds an execution waits for an unreachable Redis to record its
    start or its outcome (the outcome is retried beyond it while the process lives)."""
    aiecs_max_attempts: int = Field(default=4, ge=1)
    """AIECS_MAX_ATTEMPTS: provider calls per execution (1 + retries of retryable errors)."""
    aiecs_retry_backoff: float = Field(default=0.5, ge=0)
    """AIECS_RETRY_BACKOFF: first retry delay in seconds, doubled each retry (jittered)."""
    aiecs_retry_backoff_max: float = Field(default=30.0, ge=0)
    """AIECS_RETRY_BACKOFF_MAX: cap on one retry delay in seconds."""
    aiecs_events_maxlen: int = Field(default=10_000, gt=0)
    """AIECS_EVENTS_MAXLEN: events kept per task in the durable log (approximate)."""
    aiecs_events_ttl: int = Field(default=86_400, gt=0)
    """AIECS_EVENTS_TTL: seconds a task's event log and state are kept after its last
    terminal event (set by its first event and by each terminal event)."""
    # --- the history database ----------------------------------------------------------
    aiecs_database_url: str | None = None
    """AIECS_DATABASE_URL: the history database (SQLAlchemy URL): ``sqlite:///PATH`` or
    ``postgresql+psycopg://user@host/db`` (the ``aiecs-history[postgres]`` extra); default:
    SQLite in WAL mode at ``AIECS_DATA_DIR/aiecs.db``."""
    aiecs_data_dir: str = "~/.local/share/aiecs"
    """AIECS_DATA_DIR: where the default SQLite history database lives."""
    aiecs_database_timeout: float = Field(default=10.0, gt=0, le=300)
    """AIECS_DATABASE_TIMEOUT: seconds the server waits for the history database (a
    connection, one query) before answering 503; PostgreSQL also cancels the statement."""
    aiecs_template_label_ttl: float = Field(default=1.0, ge=0, le=60)
    """AIECS_TEMPLATE_LABEL_TTL: seconds a producer keeps what a template label points at
    (a submission by label reads it at most this often; a move made by this process is
    seen at its next submission, one made elsewhere within this bound). 0: read at every
    submission."""
    aiecs_direct_send: bool = True
    """AIECS_DIRECT_SEND: a ``.delay()`` whose broker is the state Redis has its Celery
    message pushed by the script that records it PENDING (one round trip; the message is
    Celery's, byte for byte but ``kwargsrepr``). Off: Celery's own publish, always."""
    aiecs_history: bool = True
    """AIECS_HISTORY: the terminal step appends each finished execution to the outbox
    (``aiecs:outbox``) that ``aiecs recorder`` writes to the history database. Off: no
    outbox, no history (run no recorder then)."""
    aiecs_history_days: float = Field(default=90.0, gt=0)
    """AIECS_HISTORY_DAYS: days a history row (one per execution) is kept."""
    aiecs_history_event_days: float = Field(default=30.0, gt=0)
    """AIECS_HISTORY_EVENT_DAYS: days an execution's compacted event log is kept."""
    aiecs_history_payload_days: float = Field(default=7.0, gt=0)
    """AIECS_HISTORY_PAYLOAD_DAYS: days stored inputs and results are kept."""
    aiecs_history_payloads: bool = False
    """AIECS_HISTORY_PAYLOADS: also store each execution's input and result (redacted, each
    cut at AIECS_HISTORY_PAYLOAD_BYTES). Off by default: inputs may be personal data."""
    aiecs_history_payload_bytes: int = Field(default=65_536, gt=0)
    """AIECS_HISTORY_PAYLOAD_BYTES: most bytes stored of one input or result (longer ones are
    stored as ``{"truncated": true, "bytes": N, "head": "..."}``)."""
    aiecs_recorder_batch: int = Field(default=500, ge=1, le=10_000)
    """AIECS_RECORDER_BATCH: most outbox entries a recorder writes in one transaction."""
    aiecs_recorder_wait_ms: int = Field(default=200, ge=1)
    """AIECS_RECORDER_WAIT_MS: how long a recorder waits for outbox entries before writing
    what it has (its batching delay, milliseconds)."""
    aiecs_recorder_claim_idle: float = Field(default=60.0, gt=0)
    """AIECS_RECORDER_CLAIM_IDLE: seconds after which an entry read but not acknowledged by a
    recorder (one that died mid-batch) is taken over by another."""
    aiecs_recorder_retention_every: float = Field(default=3600.0, gt=0)
    """AIECS_RECORDER_RETENTION_EVERY: seconds between runs of the retention job (one
    recorder at a time runs it)."""
    aiecs_socketio_channel: str = "socketio"
    """AIECS_SOCKETIO_CHANNEL: Redis channel shared with the Socket.IO server's manager."""
    aiecs_schedule_horizon: float = Field(default=60.0, gt=0)
    """AIECS_SCHEDULE_HORIZON: seconds; a submission due later than this (``countdown`` /
    ``eta``) is held in Redis, not sent to the broker, and sent by the workers' sweep once
    due within it (see aiecs_worker.store.hold). Must be less than CELERY_VISIBILITY_TIMEOUT
    (left unset, half of it at most)."""
    aiecs_fair_window_fast: int = Field(default=400, ge=0)
    """AIECS_FAIR_WINDOW_FAST: most executions of one user in the fast queue at once
    (queued or running); more wait in Redis in order (0: no limit)."""
    aiecs_fair_window_heavy: int = Field(default=4, ge=0)
    """AIECS_FAIR_WINDOW_HEAVY: the same for the heavy queue."""
    aiecs_deadletter_maxlen: int = Field(default=1000, gt=0)
    """AIECS_DEADLETTER_MAXLEN: malformed broker messages kept in ``aiecs:deadletter``."""
    aiecs_max_refs_per_step: int = Field(default=100, ge=0)
    """AIECS_MAX_REFS_PER_STEP: most ``$ref`` references one workflow step's input_data +
    context may hold (each is replaced by a whole result: references multiply sizes)."""
    aiecs_test_services: bool = False
    """AIECS_TEST_SERVICES: serve the test plugin's services (mode ``test``: ``test/echo``,
    ``test/buggy``, which can crash a worker on request); the test suite, the benchmark
    and ``aiecs dev`` set it. Read by aiecs_core's plugin loader."""

    # --- quotas per user (see docs/security.md, "Quotas per user") ---------------------------
    aiecs_user_submit_rate: float = Field(default=100.0, gt=0)
    """AIECS_USER_SUBMIT_RATE: submissions (a task, a batch, a workflow, a schedule) per
    second one user may make, sustained (a token bucket in Redis); more are refused (429)."""
    aiecs_user_submit_burst: int = Field(default=1000, ge=1)
    """AIECS_USER_SUBMIT_BURST: submissions one user may make at once (the bucket's size)."""
    aiecs_user_max_active: int = Field(default=20_000, ge=1)
    """AIECS_USER_MAX_ACTIVE: one user's executions queued, scheduled or running at once
    (each batch item and workflow step counts); a submission beyond it is refused (429)."""
    aiecs_user_max_batches: int = Field(default=10, ge=1)
    """AIECS_USER_MAX_BATCHES: one user's batches not yet finished; one more is refused
    (429)."""
    aiecs_max_batch_items: int = Field(default=10_000, ge=1)
    """AIECS_MAX_BATCH_ITEMS: most items one batch may hold (more: 413)."""
    aiecs_max_steps_per_task: int = Field(default=1000, ge=1)
    """AIECS_MAX_STEPS_PER_TASK: steps one task id may have; a submission of one more is
    refused (422). A schedule's task keeps only its newest 100 steps listed, so a schedule
    never meets it."""
    aiecs_max_schedules: int = Field(default=100, ge=0)
    """AIECS_MAX_SCHEDULES: schedules one user may have; one more is refused (429)."""
    aiecs_schedule_min_period: float = Field(default=10.0, ge=1.0)
    """AIECS_SCHEDULE_MIN_PERIOD: seconds; the shortest ``every`` of a schedule, and the
    shortest gap between two minutes of a ``cron`` schedule (less: 422)."""

    # --- budgets per user (see docs/budgets.md) ---------------------------------------------
    aiecs_budgets: list[Budget] | None = None
    """AIECS_BUDGETS: turns budgets on (unset: off, no cost per submission), with every
    user's budgets unless an operator set theirs (``PUT /budgets/{user}``): a JSON list of
    ``{"period": "day"|"month", "kind": "usd"|"tokens", "soft": x, "hard": x}``, at most
    one per period and kind; ``[]``: on, with no default budget. Set it alike in every
    process that submits (server, beat, workers, scripts calling ``.delay()``)."""

    @field_validator("aiecs_budgets")
    @classmethod
    def _budgets_unique(cls, v: list[Budget] | None) -> list[Budget] | None:
        if v is None:
            return v
        seen = [(b.period, b.kind) for b in v]
        twice = sorted({f"{p}/{k}" for p, k in seen if seen.count((p, k)) > 1})
        if twice:
            raise ValueError(f"one budget per period and kind: {', '.join(twice)} twice")
        return v

    # --- provider inputs: the operator's model policy (aiecs_worker.ops.modelpolicy) -------------
    aiecs_models: dict[str, list[str]] | None = None
    """AIECS_MODELS: JSON object, provider name -> the model ids its services accept
    (``{"openai": ["gpt-4o-mini"], "vertex": ["gemini-2.0-flash-001"]}``); a provider
    absent accepts any model id, an empty list none. Unset: every provider any id."""
    aiecs_max_output_tokens: int | dict[str, int] = 131_072
    """AIECS_MAX_OUTPUT_TOKENS: the largest ``max_output_tokens`` a chat may ask for: a
    number for every provider, or a JSON object provider name -> ceiling (``"*"``: every
    other provider; a provider absent and no ``"*"``: no ceiling)."""

    @field_validator("aiecs_models", "aiecs_budgets", mode="before")
    @classmethod
    def _json_value(cls, v: object) -> object:
        if isinstance(v, str):
            v = json.loads(v) if v.strip() else None  # a JSON error is a ValueError
        return v

    @field_validator("aiecs_models")
    @classmethod
    def _model_ids(cls, v: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        from aiecs_core.llm import model_id_problem  # core's llm contracts: pydantic only

        for provider, ids in (v or {}).items():
            for model in ids:
                problem = model_id_problem(model)
                if problem is not None:
                    raise ValueError(f"{provider}: {model!r} is not a model id: {problem}")
        return v

    @field_validator("aiecs_max_output_tokens", mode="before")
    @classmethod
    def _ceiling_json(cls, v: object) -> object:
        if isinstance(v, str) and v.strip().startswith("{"):
            return json.loads(v)
        return v

    @field_validator("aiecs_max_output_tokens")
    @classmethod
    def _ceiling_positive(cls, v: int | dict[str, int]) -> int | dict[str, int]:
        if any(n < 1 for n in (v.values() if isinstance(v, dict) else [v])):
            raise ValueError("a ceiling must be at least 1")
        return v

    # --- operations: metrics and logs --------------------------------------------------------
    aiecs_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """AIECS_METRICS_PORT: the worker serves Prometheus metrics on this port (unset: off;
    0: any free port, logged)."""
    aiecs_metrics_host: str = "127.0.0.1"
    """AIECS_METRICS_HOST: interface of the worker's metrics endpoint (no authentication:
    loopback unless set; a deployment scraped over the network sets ``0.0.0.0``)."""
    aiecs_log_format: Literal["text", "json"] = "text"
    """AIECS_LOG_FORMAT: ``json`` writes one JSON object per log line (worker and server)."""

    # --- providers in the worker ----------------------------------------------------------
    aiecs_warm: bool = True
    """AIECS_WARM: each worker process warms its configured providers (imports their SDKs,
    builds their clients) in a thread as it starts; ``0``: their first calls do it
    (aiecs_worker.runner.warm)."""
    aiecs_rate_limits: str | None = None
    """AIECS_RATE_LIMITS: cluster-wide provider rate limits, JSON ``{"provider/model":
    {"rpm", "tpm", "window"}}``, parsed and checked by aiecs_worker.runner.ratelimit when a worker
    starts."""

    @field_validator("aiecs_warm", mode="before")
    @classmethod
    def _blank_is_on(cls, v: object) -> object:
        return True if isinstance(v, str) and not v.strip() else v

    @field_validator("aiecs_metrics_port", mode="before")
    @classmethod
    def _blank_is_off(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("aiecs_log_format", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("celery_broker_url")
    @classmethod
    def _known_broker(cls, v: str) -> str:
        if not v.startswith(REDIS_SCHEMES + AMQP_SCHEMES + (SENTINEL_SCHEME,)):
            raise ValueError("must be a redis://, rediss:// (Redis), sentinel://host:port;"
                             "sentinel://... (Redis Sentinel) or amqp://, amqps:// "
                             "(RabbitMQ) URL")
        return _sentinel_form(v)

    @field_validator("redis_url")
    @classmethod
    def _redis_state(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(REDIS_SCHEMES + (SENTINEL_SCHEME,)):
            raise ValueError("must be a redis://, rediss:// or sentinel://host:port;"
                             "sentinel://... URL")
        return v if v is None else _sentinel_form(v)

    @field_validator("aiecs_sentinel_master", "aiecs_broker_sentinel_master",
                     "aiecs_pubsub_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _limits_ordered(self) -> Settings:
        soft, hard = self.celery_task_soft_time_limit, self.celery_task_time_limit
        if not soft < hard:
            raise ValueError(
                f"CELERY_TASK_SOFT_TIME_LIMIT ({soft}) must be less than "
                f"CELERY_TASK_TIME_LIMIT ({hard}); fix: lower the first or raise the second"
            )
        if ("aiecs_schedule_horizon" in self.model_fields_set
                and self.aiecs_schedule_horizon >= self.celery_visibility_timeout):
            raise ValueError(
                f"AIECS_SCHEDULE_HORIZON ({self.aiecs_schedule_horizon:g}) must be less than "
                f"CELERY_VISIBILITY_TIMEOUT ({self.celery_visibility_timeout}): a message "
                "sent with a longer countdown is handed out again meanwhile")
        broker_master = self.aiecs_broker_sentinel_master or self.aiecs_sentinel_master
        for name, url, master, setting in (
                ("CELERY_BROKER_URL", self.celery_broker_url, broker_master,
                 "AIECS_SENTINEL_MASTER (or AIECS_BROKER_SENTINEL_MASTER)"),
                ("REDIS_URL", self.redis_url, self.aiecs_sentinel_master,
                 "AIECS_SENTINEL_MASTER"),
                ("CELERY_RESULT_BACKEND", self.celery_result_backend,
                 self._master_of(self.celery_result_backend or ""), "AIECS_SENTINEL_MASTER")):
            if url and is_sentinel(url) and not master:
                raise ValueError(
                    f"{setting} is not set, and {name} is a sentinel:// URL: the sentinels "
                    "are asked for a master by its name; fix: set it to the master's name "
                    "in the sentinels' configuration (`sentinel monitor NAME ...`)")
        if self.aiecs_tracing and importlib.util.find_spec("opentelemetry.sdk") is None:
            raise ValueError("AIECS_TRACING=1 needs OpenTelemetry; fix: pip install "
                             "'aiecs-worker[tracing]', or unset AIECS_TRACING")
        self._cluster_roles()
        if self.broker_is_amqp and self.redis_url is None:
            raise ValueError("REDIS_URL is required when CELERY_BROKER_URL is a RabbitMQ "
                             "(amqp://) URL: execution state and events live in Redis; fix: "
                             "set REDIS_URL to a redis:// URL")
        return self

    def _cluster_roles(self) -> None:
        """AIECS_REDIS_CLUSTER: the state Redis is the cluster; nothing of Celery's is."""
        if not self.aiecs_redis_cluster:
            if self.aiecs_redis_shards not in (None, 1):
                raise ValueError("AIECS_REDIS_SHARDS is set without AIECS_REDIS_CLUSTER=1: "
                                 "shards spread aiecs's keys over a Redis Cluster's slots; fix: "
                                 "unset it, or set AIECS_REDIS_CLUSTER=1 with REDIS_URL a "
                                 "cluster node")
            return
        if self.redis_url is None or is_sentinel(self.redis_url):
            raise ValueError("AIECS_REDIS_CLUSTER=1 needs REDIS_URL: a redis:// URL of one "
                             "node of the cluster (the broker cannot be a cluster); fix: set "
                             "REDIS_URL to a cluster node and CELERY_BROKER_URL to another "
                             "Redis or RabbitMQ")
        for name, url in (("CELERY_BROKER_URL", self.celery_broker_url),
                          ("CELERY_RESULT_BACKEND", self.result_backend)):
            if url == self.redis_url:
                raise ValueError(f"{name} is REDIS_URL, a Redis Cluster (AIECS_REDIS_CLUSTER"
                                 "=1): Celery cannot use a cluster; fix: point it at a plain "
                                 "Redis (or RabbitMQ for the broker)")

    @property
    def schedule_horizon(self) -> float:
        """AIECS_SCHEDULE_HORIZON, below the visibility timeout when left unset."""
        if "aiecs_schedule_horizon" in self.model_fields_set:
            return self.aiecs_schedule_horizon
        return min(self.aiecs_schedule_horizon, self.celery_visibility_timeout / 2)

    @property
    def broker_is_amqp(self) -> bool:
        """True when the broker is RabbitMQ (no visibility timeout, real priorities)."""
        return self.celery_broker_url.startswith(AMQP_SCHEMES)

    @property
    def result_backend(self) -> str:
        """Where Celery stores results (CELERY_RESULT_BACKEND, else a Redis of ours)."""
        if self.celery_result_backend:
            return self.celery_result_backend
        return self.state_redis_url if self.broker_is_amqp else self.celery_broker_url

    @property
    def one_result_record(self) -> bool:
        """Whether Celery's results are read from the executions' terminal records instead
        of being stored a second time (see aiecs_worker.store.results): when the result
        backend is the state Redis (not on a Redis Cluster, where Celery's Redis is
        another)."""
        return (self.result_backend == self.state_redis_url and not self.aiecs_redis_cluster
                and self.result_backend.startswith(("redis://", "rediss://", "sentinel://")))

    @property
    def database_url(self) -> str:
        """The history database's URL (AIECS_DATABASE_URL, else SQLite in AIECS_DATA_DIR)."""
        if self.aiecs_database_url:
            return self.aiecs_database_url
        return "sqlite:///" + str(Path(self.aiecs_data_dir).expanduser() / "aiecs.db")

    @property
    def state_redis_url(self) -> str:
        """The Redis of execution state and events (REDIS_URL, else the broker)."""
        return self.redis_url or self.celery_broker_url

    @property
    def pubsub_redis_url(self) -> str:
        """The Redis of cancel broadcasts (AIECS_PUBSUB_URL, else the state Redis)."""
        return self.aiecs_pubsub_url or self.state_redis_url

    @property
    def beat_redis_url(self) -> str:
        """The Redis of celery-redbeat's entries: the state Redis, but on a Redis Cluster
        (AIECS_REDIS_CLUSTER) the result backend's (a plain Redis: redbeat's client cannot
        follow slots)."""
        return self.result_backend if self.aiecs_redis_cluster else self.state_redis_url

    def redis_target(self, url: str) -> RedisTarget:
        """Where ``url`` (one of the Redis URLs above) lives: with the Sentinel form, the
        sentinels, the master's name (AIECS_BROKER_SENTINEL_MASTER for the broker's URL
        when it is not also the state's, else AIECS_SENTINEL_MASTER) and
        AIECS_SENTINEL_PASSWORD."""
        password = self.aiecs_sentinel_password
        target = parse_target(url, master=self._master_of(url),
                              sentinel_password=password.get_secret_value() if password
                              else None)
        if self.aiecs_redis_cluster and url == self.redis_url:
            return dataclasses.replace(target, cluster=True)
        return target

    def _master_of(self, url: str) -> str | None:
        if (url == self.celery_broker_url and url != self.state_redis_url
                and self.aiecs_broker_sentinel_master):
            return self.aiecs_broker_sentinel_master
        return self.aiecs_sentinel_master


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment (``overrides`` win); raise ConfigurationError
    naming the offending variable."""
    return Settings.load(**overrides)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return load_settings()
