"""The ``aiecs`` command: run the progress server or a whole dev stack, mint tokens,
submit and watch tasks, list plugins.

``submit`` and ``watch`` authenticate with ``--token`` / ``AIECS_TOKEN``, or a token
signed locally for ``--user`` with ``AIECS_SECRET_KEY``, or, against a development server
(``aiecs dev``), one it hands out: nothing to copy and paste on a dev machine.

Exit codes of ``submit --watch`` and ``watch``: 0 COMPLETED, 1 FAILED, 3 TIMED_OUT,
4 CANCELLED, 5 could not watch (refused token, unknown task, server unreachable); 2 is a
usage error (click).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

EXIT_CODES = {"completed": 0, "failed": 1, "timed_out": 3, "cancelled": 4}
EXIT_WATCH_ERROR = 5


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _server_settings():
    from aiecs_core import ConfigurationError

    from .server.settings import load_server_settings

    try:
        return load_server_settings()
    except ConfigurationError as exc:
        _fail(str(exc), 2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aiecs-worker", prog_name="aiecs")
def main() -> None:
    """aiecs: AI provider calls as Celery tasks, with live progress to the user."""


# -- serve ------------------------------------------------------------------------------------
@main.command()
@click.option("--host", default=None, help="Interface to bind (default AIECS_HOST, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default AIECS_PORT, 8000).")
@click.option("--dev", is_flag=True, help="Development mode (throwaway secret, /dev/token).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(host: str | None, port: int | None, dev: bool, log_level: str) -> None:
    """Run the progress server: Socket.IO, task API and web page."""
    import uvicorn
    from aiecs_core import ConfigurationError

    from .server import create_app

    overrides: dict[str, Any] = {}
    if dev:
        overrides["aiecs_dev"] = True
    from .server.settings import load_server_settings

    try:
        settings = load_server_settings(**overrides)
        host = host or settings.aiecs_host
        port = port or settings.aiecs_port
        app = create_app(settings, port=port)
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    _configure_logging(log_level)
    if settings.aiecs_dev:
        click.echo("aiecs: DEVELOPMENT MODE: anyone who can reach this server can get a token",
                   err=True)
    from .logs import json_mode

    # JSON logs: uvicorn's loggers write through the root logger's JSON handler
    extra: dict[str, Any] = {"log_config": None} if json_mode() else {}
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False,
                ws_max_size=max(settings.aiecs_max_message_bytes, 64 * 1024), **extra)


class _Formatter:
    """Adds the ``redis_exception`` detail python-socketio passes in ``extra`` (the default
    format would drop the reason a Redis operation failed)."""

    def __init__(self):
        import logging

        self.base = logging.Formatter("%(levelname)s %(name)s: %(message)s")

    def format(self, record) -> str:
        text = self.base.format(record)
        detail = getattr(record, "redis_exception", None)
        return f"{text} ({detail})" if detail else text


def _configure_logging(level: str) -> None:
    import logging

    from .logs import json_formatter, json_mode

    handler = logging.StreamHandler()
    handler.setFormatter(json_formatter() if json_mode() else _Formatter())  # type: ignore[arg-type]
    logging.basicConfig(level=level.upper(), handlers=[handler])


# -- token ------------------------------------------------------------------------------------
class _TokenGroup(click.Group):
    """``aiecs token USER_ID`` issues a token (``aiecs token issue USER_ID``);
    ``aiecs token revoke ...`` revokes."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["issue", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_TokenGroup)
def token() -> None:
    """Issue (``aiecs token USER_ID``) or revoke (``aiecs token revoke``) tokens."""


@token.command("revoke")
@click.option("--jti", default=None, help="Revoke the token with this jti claim.")
@click.option("--user", "user_id", default=None,
              help="Revoke every token of this user issued until now (or --before).")
@click.option("--before", type=float, default=None,
              help="With --user: revoke the tokens issued before this unix time.")
def token_revoke(jti: str | None, user_id: str | None, before: float | None) -> None:
    """Revoke tokens: refused on every HTTP request and socket connect from now on, and
    connected sockets are disconnected within AIECS_REVOCATION_POLL seconds."""
    import redis

    from .server.revocation import revoke_jti, revoke_user
    from .settings import get_settings

    if (jti is None) == (user_id is None):
        _fail("give exactly one of --jti and --user", 2)
    if before is not None and user_id is None:
        _fail("--before goes with --user", 2)
    max_lifetime = _server_settings().aiecs_token_max_lifetime
    client = redis.Redis.from_url(get_settings().state_redis_url, socket_connect_timeout=5)
    try:
        if jti is not None:
            revoke_jti(client, jti, max_lifetime=max_lifetime)
            click.echo(f"revoked token {jti}")
        else:
            cutoff = revoke_user(client, user_id, max_lifetime=max_lifetime, before=before)
            click.echo(f"revoked the tokens of {user_id} issued before {cutoff:.0f}")
    except ValueError as exc:
        _fail(str(exc), 2)
    except redis.RedisError as exc:
        _fail(f"Redis unreachable: {exc}", 1)
    finally:
        client.close()


@token.command("issue")
@click.argument("user_id")
@click.option("--ttl", type=int, default=None,
              help="Lifetime in seconds (default AIECS_TOKEN_TTL, 3600; at most "
                   "AIECS_TOKEN_MAX_LIFETIME).")
def token_issue(user_id: str, ttl: int | None) -> None:
    """Print a connection token for USER_ID, signed with AIECS_SECRET_KEY."""
    from aiecs_core import ConfigurationError

    from .server.tokens import issue_token

    settings = _server_settings()
    if settings.aiecs_dev and not _env_has_secret():
        _fail("AIECS_SECRET_KEY is not set (a token signed with a throwaway dev secret "
              "would be refused by the server)", 2)
    if ttl is not None and ttl > settings.aiecs_token_max_lifetime:
        _fail(f"--ttl {ttl} is longer than AIECS_TOKEN_MAX_LIFETIME "
              f"({settings.aiecs_token_max_lifetime}); the server would refuse the token", 2)
    try:
        click.echo(issue_token(user_id, settings.secret(), ttl or settings.aiecs_token_ttl))
    except (ConfigurationError, ValueError) as exc:
        _fail(str(exc), 2)


def _env_has_secret() -> bool:
    return _server_settings().secret_from_environment()


#: The user a development token is asked for when --user is not given (``aiecs dev``'s).
DEV_USER = "dev"


def _client_token(token_opt: str | None, user: str | None, url: str) -> str:
    """--token / AIECS_TOKEN; else a short-lived token for --user signed locally with
    AIECS_SECRET_KEY; else, when the server at ``url`` is in development mode (``aiecs
    dev``), a token from its ``/dev/token`` for --user (default ``dev``)."""
    from aiecs_core import ConfigurationError

    from .server.tokens import issue_token

    if token_opt:
        return token_opt
    settings = _server_settings()
    if settings.aiecs_token is not None:
        return settings.aiecs_token.get_secret_value()
    if user and _env_has_secret():
        try:
            return issue_token(user, settings.secret(), 3600)
        except (ConfigurationError, ValueError) as exc:
            _fail(str(exc), 2)
    dev = _dev_token(url, user or DEV_USER)
    if dev is not None:
        click.echo(f"using a development token for user {user or DEV_USER!r} from {url}",
                   err=True)
        return dev
    _fail("no token: pass --token (or set AIECS_TOKEN), or --user with AIECS_SECRET_KEY set "
          f"(the server at {url} is not a development server, which would hand one out)", 2)
    raise AssertionError  # unreachable


def _dev_token(url: str, user: str) -> str | None:
    """A token from a development server's ``/dev/token``; None when the server is not
    in development mode (or does not answer)."""
    from .server.client import ApiClient, ApiClientError

    async def fetch() -> str | None:
        api = ApiClient(url, "")
        config = await api.request("GET", "/config")
        if not (isinstance(config, dict) and config.get("dev") is True):
            return None
        out = await api.request("POST", "/dev/token", {"user_id": user})
        return out["token"]

    try:
        return asyncio.run(fetch())
    except ApiClientError as exc:
        if exc.status == 0:  # unreachable: say so, it is the likelier problem
            _fail(f"{exc.message} (is `aiecs dev` or `aiecs serve` running? pass --server)",
                  EXIT_WATCH_ERROR)
        return None


def _server_url(url: str | None) -> str:
    return (url or _server_settings().server_url()).rstrip("/")


_client_options = [
    click.option("--server", "server_url", default=None, metavar="URL",
                 help="Progress server (default AIECS_SERVER_URL or http://AIECS_HOST:AIECS_PORT)."),
    click.option("--token", "token_opt", default=None, envvar="AIECS_TOKEN",
                 help="Token to authenticate with (default AIECS_TOKEN)."),
    click.option("--user", default=None, metavar="USER_ID",
                 help="Sign a token for this user with AIECS_SECRET_KEY instead (or, from a "
                      "development server, ask it for one; default user 'dev')."),
]


def client_options(func):
    for option in reversed(_client_options):
        func = option(func)
    return func


def _json_arg(value: str | None, name: str, *, lists: bool = False) -> Any:
    """A JSON object (or, with ``lists``, an array) given inline, as @FILE or - (stdin)."""
    if value is None:
        return {}
    text = value
    if value == "-":
        text = sys.stdin.read()
    elif value.startswith("@"):
        try:
            text = Path(value[1:]).read_text()
        except OSError as exc:
            raise click.BadParameter(str(exc), param_hint=name) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=name) from None
    if not (isinstance(data, dict) or lists and isinstance(data, list)):
        raise click.BadParameter("must be a JSON object" + " or array" * lists,
                                 param_hint=name)
    return data


# -- submit / watch ---------------------------------------------------------------------------
@main.command()
@click.argument("service")
@click.argument("operation")
@click.option("--mode", required=True, help="Registry mode of the service (e.g. chat).")
@click.option("--input", "input_json", default=None, metavar="JSON",
              help="input_data as JSON, @FILE or - for stdin.")
@click.option("--context", "context_json", default=None, metavar="JSON",
              help="context as JSON, @FILE or -.")
@click.option("--task-id", default=None, help="Task id (default: generated).")
@click.option("--step", type=int, default=None, help="Step (default: the task's next step).")
@click.option("--heavy/--fast", default=None,
              help="Override the queue the operation declares.")
@click.option("--countdown", type=float, default=None, metavar="SECONDS",
              help="Run no earlier than this many seconds from now (PENDING until then).")
@click.option("--eta", default=None, metavar="TIME",
              help="Run no earlier than this ISO 8601 time (with a timezone, e.g. ...Z).")
@click.option("--watch", "watch_", is_flag=True, help="Follow progress until the end.")
@client_options
def submit(service, operation, mode, input_json, context_json, task_id, step, heavy, countdown,
           eta, watch_, server_url, token_opt, user):
    """Submit OPERATION of SERVICE as a task (and optionally watch it)."""
    from .server.client import ApiClient, ApiClientError

    body: dict[str, Any] = {
        "mode": mode, "service": service, "task_name": operation,
        "input_data": _json_arg(input_json, "--input"),
        "context": _json_arg(context_json, "--context"),
    }
    if task_id is not None:
        body["task_id"] = task_id
    if step is not None:
        body["step"] = step
    if heavy is not None:
        body["heavy"] = heavy
    body.update({k: v for k, v in (("countdown", countdown), ("eta", eta)) if v is not None})
    url = _server_url(server_url)
    tok = _client_token(token_opt, user, url)
    try:
        out = asyncio.run(ApiClient(url, tok).request("POST", "/tasks", body))
    except ApiClientError as exc:
        _fail(f"submit refused: {exc.message} ({exc.status} {exc.type})", EXIT_WATCH_ERROR)
    # the human line on stderr; stdout carries only the task id (TASK=$(aiecs submit ...))
    click.echo(f"submitted task {out['task_id']} step {out['step']} ({out['queue']})",
               err=True)
    if not watch_:
        click.echo(out["task_id"])
        return
    sys.exit(_watch(url, tok, out["task_id"], out["step"], 0, None))


@main.command()
@click.argument("task_id")
@click.option("--step", type=int, default=None, help="Step to wait for (default: the latest).")
@click.option("--after-seq", type=int, default=0, show_default=True,
              help="Only show events after this sequence number.")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@client_options
def watch(task_id, step, after_seq, timeout, server_url, token_opt, user):
    """Follow TASK_ID's progress live until it finishes; exit with its status.

    A workflow's task is followed until every step ended, and its steps are listed."""
    from .cli_groups import workflow_steps

    url = _server_url(server_url)
    tok = _client_token(token_opt, user, url)
    steps = workflow_steps(url, tok, task_id) if step is None else None
    if steps:
        from .cli_groups import watch_workflow

        sys.exit(watch_workflow(url, tok, task_id, steps, after_seq, timeout))
    sys.exit(_watch(url, tok, task_id, step, after_seq, timeout))


def _watch(url: str, tok: str, task_id: str, step: int | None, after_seq: int,
           timeout: float | None, all_steps: frozenset[int] | None = None) -> int:
    from rich.console import Console

    from .server.client import TaskWatcher, WatchError

    console = Console(highlight=False)
    view = _WatchView(console, task_id)
    watcher = TaskWatcher(url, tok, task_id, view.on_event, step=step, after_seq=after_seq,
                          all_steps=all_steps)
    try:
        with view:
            final = asyncio.run(watcher.run(timeout))
    except WatchError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return EXIT_WATCH_ERROR
    except KeyboardInterrupt:
        console.print("interrupted (the task goes on)")
        return 130
    if all_steps:
        view.finish_quietly()
        return 0
    return view.finish(final)


class _WatchView:
    """Renders events: on a terminal, a live panel (the streamed text's tail above a rich
    progress bar); otherwise one plain line per event. The full text is printed at the end."""

    TAIL_LINES = 15

    def __init__(self, console, task_id: str):
        self.console = console
        self.task_id = task_id
        self.interactive = console.is_terminal
        self.text = ""
        self.step: int | None = None
        self.progress = None
        self.bar = None
        self.live = None

    def __enter__(self):
        if self.interactive:
            from rich.live import Live
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

            self.progress = Progress(
                TextColumn("[bold]{task.fields[label]}"), BarColumn(), TaskProgressColumn(),
                TextColumn("{task.fields[status]} {task.fields[message]}"),
                console=self.console,
            )
            self.bar = self.progress.add_task("", total=1.0, label=self.task_id,
                                              status="connecting", message="")
            self.live = Live(self._render(), console=self.console, refresh_per_second=10,
                             transient=True)
            self.live.start()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.stop()
        return False

    def _render(self):
        from rich.console import Group
        from rich.text import Text

        tail = "\n".join(self.text.splitlines()[-self.TAIL_LINES:])
        return Group(Text(tail), self.progress) if tail else self.progress

    def on_event(self, event: dict[str, Any]) -> None:
        step, kind, status = event.get("step"), event.get("type"), event.get("status")
        if step != self.step:
            self.step = step
            self.text = ""
        if kind == "status" and status == "running" and self.text:
            # redelivered after a worker was lost: the output starts over
            self.text = ""
            self._line(f"restarted (step {step}): output starts over")
        if kind == "stream" and event.get("delta"):
            self.text += event["delta"]
            if not self.interactive:
                self._line(f"stream: {event['delta']!r}")
        elif kind == "progress":
            fraction = event.get("progress")
            if self.bar is not None:
                self.progress.update(self.bar, completed=fraction or 0,
                                     message=event.get("message") or "")
            else:
                pct = f"{fraction * 100:.0f}%" if isinstance(fraction, int | float) else "?"
                self._line(f"progress: {pct} {event.get('message') or ''}".rstrip())
        elif kind == "status":
            if self.bar is not None:
                done = {"completed": 1.0}.get(status)
                self.progress.update(self.bar, status=status, label=f"{self.task_id}/{step}",
                                     **({"completed": done} if done is not None else {}))
            else:
                self._line(f"status: {status} (step {step})")
        if self.live is not None:
            self.live.update(self._render())

    def _line(self, text: str) -> None:
        if self.interactive:
            self.console.print(text, markup=False, highlight=False)
        else:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def finish_quietly(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def finish(self, final: dict[str, Any]) -> int:
        if self.live is not None:
            self.live.stop()
            self.live = None
        status = final.get("status", "")
        if self.interactive and self.text:
            self.console.print(self.text, markup=False, highlight=False, soft_wrap=True)
        if status == "completed":
            result = final.get("result")
            if result is not None:
                self.console.print(json.dumps(result, indent=2, ensure_ascii=False),
                                   markup=False, highlight=False, soft_wrap=True)
            self.console.print(f"[green]COMPLETED[/green] task {self.task_id} step "
                               f"{final.get('step')}")
        else:
            err = final.get("error") or {}
            reason = f": {err.get('type')}: {err.get('message')}" if err else ""
            self.console.print(f"[red]{status.upper()}[/red] task {self.task_id} step "
                               f"{final.get('step')}", highlight=False, end="")
            self.console.print(reason, markup=False, highlight=False, soft_wrap=True)
        return EXIT_CODES.get(status, 1)


# -- schedule ---------------------------------------------------------------------------------
@main.group()
def schedule() -> None:
    """Periodic executions of a task: add, list, rm (run by `celery -A aiecs_worker beat`)."""


@schedule.command("add")
@click.argument("service")
@click.argument("operation")
@click.option("--mode", required=True, help="Registry mode of the service (e.g. chat).")
@click.option("--every", type=float, default=None, metavar="SECONDS",
              help="Run every SECONDS (at least 1).")
@click.option("--cron", default=None, metavar="EXPR",
              help="Run on a cron expression: 'minute hour day month weekday', UTC.")
@click.option("--input", "input_json", default=None, metavar="JSON",
              help="input_data as JSON, @FILE or - for stdin.")
@click.option("--context", "context_json", default=None, metavar="JSON",
              help="context as JSON, @FILE or -.")
@click.option("--task-id", default=None, help="Task id of the runs (default: generated).")
@click.option("--heavy/--fast", default=None, help="Override the queue the operation declares.")
@client_options
def schedule_add(service, operation, mode, every, cron, input_json, context_json, task_id,
                 heavy, server_url, token_opt, user):
    """Run OPERATION of SERVICE periodically; prints the task id (each run is a step)."""
    from . import cli_schedule
    from .server.client import ApiClientError

    body: dict[str, Any] = {
        "mode": mode, "service": service, "task_name": operation, "every": every,
        "cron": cron, "input_data": _json_arg(input_json, "--input"),
        "context": _json_arg(context_json, "--context"),
    }
    body.update({k: v for k, v in (("task_id", task_id), ("heavy", heavy)) if v is not None})
    url = _server_url(server_url)
    try:
        out = cli_schedule.add(url, _client_token(token_opt, user, url), body)
    except ApiClientError as exc:
        _fail(f"schedule refused: {exc.message} ({exc.status} {exc.type})", EXIT_WATCH_ERROR)
    click.echo(cli_schedule.describe(out), err=True)
    click.echo(out["task_id"])


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the schedules as JSON.")
@client_options
def schedule_list(as_json, server_url, token_opt, user):
    """List your schedules."""
    from . import cli_schedule
    from .server.client import ApiClientError

    url = _server_url(server_url)
    try:
        items = cli_schedule.list_(url, _client_token(token_opt, user, url))
    except ApiClientError as exc:
        _fail(f"{exc.message} ({exc.status} {exc.type})", EXIT_WATCH_ERROR)
    cli_schedule.print_list(items, as_json, click.echo)


@schedule.command("rm")
@click.argument("task_id")
@client_options
def schedule_rm(task_id, server_url, token_opt, user):
    """Delete the schedule of TASK_ID (runs already submitted go on)."""
    from . import cli_schedule
    from .server.client import ApiClientError

    url = _server_url(server_url)
    try:
        cli_schedule.remove(url, _client_token(token_opt, user, url), task_id)
    except ApiClientError as exc:
        _fail(f"{exc.message} ({exc.status} {exc.type})", EXIT_WATCH_ERROR)
    click.echo(f"deleted the schedule of {task_id}", err=True)


# -- plugins ----------------------------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON.")
def plugins(as_json: bool) -> None:
    """List loaded, disabled and failed plugins, their services and operations.

    A plugin of test services only is disabled (not failed) without AIECS_TEST_SERVICES=1.

    Exits 1 when a plugin failed to load or a service was refused as a duplicate (in both
    forms, so a deployment check can rely on the exit status).
    """
    from aiecs_core import load_plugins
    from rich.console import Console
    from rich.table import Table

    listing = load_plugins().listing()
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        sys.exit(1 if listing["failures"] else 0)
    console = Console(highlight=False)
    table = Table("plugin", "distribution", "version", "services", title="Plugins")
    for p in listing["plugins"]:
        table.add_row(p["name"], p["distribution"] or "", p["version"] or "",
                      ", ".join(p["services"]))
    console.print(table)
    services = Table("mode/service", "operation", "queue", "description", title="Services")
    for s in listing["services"]:
        for name, op in s["operations"].items():
            services.add_row(f"{s['mode']}/{s['service']}", name,
                             "heavy" if op["heavy"] else "fast", op.get("description") or "")
    console.print(services)
    if listing["disabled"]:
        disabled = Table("plugin", "distribution", "reason", title="Disabled plugins")
        for d in listing["disabled"]:
            disabled.add_row(d["name"], d["distribution"] or "", d["reason"])
        console.print(disabled)
    if listing["failures"]:
        failed = Table("plugin", "distribution", "reason", title="Failed plugins")
        for f in listing["failures"]:
            failed.add_row(f["name"], f["distribution"] or "", f["reason"])
        console.print(failed)
        sys.exit(1)


# -- health -----------------------------------------------------------------------------------
@main.command()
@click.option("--worker", "worker_", is_flag=True,
              help="Also check this host's worker: its Celery node answers a ping and its "
                   "processes' event loops renew their leases.")
@click.option("--node", "nodes", multiple=True, default=["celery@%h"], show_default=True,
              help="Celery node name(s) of the worker (as given to --hostname; %h is this "
                   "host's name). Repeatable.")
@click.option("--server", "server_url", default=None, metavar="URL",
              help="Also check a progress server's /healthz.")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="Seconds each check may take.")
@click.option("--live", is_flag=True,
              help="Liveness: an unreachable broker or state Redis is not counted (only a "
                   "worker seen stuck while they answer fails).")
def health(worker_: bool, nodes: tuple[str, ...], server_url: str | None,
           timeout: float, live: bool) -> None:
    """Check the broker and the state Redis (and the worker, the server): exit 0 when
    healthy, 1 otherwise. For liveness and readiness probes."""
    from .health import check_all

    checks = check_all(worker=worker_, nodes=list(nodes), server=server_url, timeout=timeout,
                       live=live)
    for check in checks:
        click.echo(check.line())
    sys.exit(0 if all(c.ok for c in checks) else 1)


# -- dev --------------------------------------------------------------------------------------
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--user", default="dev", show_default=True, help="User id of the printed token.")
@click.option("--concurrency", type=int, default=2, show_default=True,
              help="Worker pool size.")
@click.option("--test-services/--no-test-services", default=True, show_default=True,
              help="Serve the test services (test/echo, test/buggy) in this stack "
                   "(AIECS_TEST_SERVICES=1 for its processes only).")
def dev(host: str, port: int, user: str, concurrency: int, test_services: bool) -> None:
    """Start Redis (embedded if needed), a worker, beat and the server with the page; Ctrl-C
    stops everything."""
    from .dev import DevStack, DevStackError

    stack = DevStack(host=host, port=port, user=user, concurrency=concurrency,
                     test_services=test_services)
    try:
        stack.run(echo=click.echo)
    except DevStackError as exc:
        _fail(str(exc), 1)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--processes", "-p", type=int, default=None,
              help="Worker processes (default: one per CPU core).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(processes: int | None, celery_args: tuple[str, ...]) -> None:
    """Run N Celery workers, one event loop each (the recommended deployment for AI calls).

    Arguments after the options go to each ``celery worker``, e.g.
    ``aiecs worker -p 2 -- -Q fast_tasks --pool threads --concurrency 200``.
    A worker that exits is started again; SIGTERM / Ctrl-C stops them all.
    """
    from .logs import json_line, json_mode
    from .supervise import Supervisor, default_processes

    n = processes or default_processes()
    if n < 1:
        _fail("--processes must be at least 1", 2)
    echo = (lambda text: click.echo(json_line(text, "aiecs.supervise"))) if json_mode() \
        else click.echo
    raise SystemExit(Supervisor(n, celery_args, echo=echo).run())


if __name__ == "__main__":  # pragma: no cover
    from aiecs_worker.cli import main as _main  # the module proper, with its subcommands

    _main()
else:
    from .cli_groups import batch, workflow  # they use the helpers above

    main.add_command(batch)
    main.add_command(workflow)
