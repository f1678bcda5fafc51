"""bench/REPORT.md from a results dict: one table per scenario (aiecs, anchor, ratio,
issue 8's target, pass/fail) and PNG plots (matplotlib; skipped when it is missing)."""

from __future__ import annotations

from pathlib import Path

# (label, key, format, target): target is (kind, value, text) or None. Kinds: ratio_ge /
# ratio_le (aiecs / anchor), lt / le (aiecs alone), every_lt (every aiecs run below).
NOOP = [
    ("tasks/s", "per_s", ".0f", ("ratio_ge", 0.85, "≥ 0.85× anchor")),
    ("CPU ms per task, all processes", "cpu_ms", ".2f", ("ratio_le", 1.25, "≤ 1.25× anchor")),
    ("  worker CPU ms per task", "worker_cpu_ms", ".2f", None),
    ("  redis-server CPU ms per task", "redis_cpu_ms", ".2f", None),
    ("  producer CPU ms per task", "client_cpu_ms", ".2f", None),
    ("Redis commands per task", "commands", ".1f", ("ratio_le", 1.6, "≤ 1.6× anchor")),
    ("Redis round trips per task", "round_trips", ".1f", None),
    ("cores busy", "cores_busy", ".2f", None),
]
#: issue 20: aiecs against bare Celery on gevent and arq; targets against arq
CHAT_VARIANTS = ("aiecs", "aiecs asyncio", "celery gevent", "arq")
CHAT = [
    ("tasks/s", "per_s", ".1f", ("ratio_ge", 1.0, "≥ 1.0× arq")),
    ("calls in flight, mean / max", ("in_flight_mean", "in_flight_max"), ".0f", None),
    ("CPU ms per task, all processes", "cpu_ms", ".2f", ("ratio_le", 1.1, "≤ 1.1× arq")),
    ("  workers (aiecs: with its history recorder)", "worker_cpu_ms", ".2f", None),
    ("    of which the history recorder", "recorder_cpu_ms", ".2f", None),
    ("  redis-server", "redis_cpu_ms", ".2f", None),
    ("  producer", "client_cpu_ms", ".2f", None),
    ("worker cores busy", "worker_cores_busy", ".2f", None),
    ("Redis commands per task", "commands", ".1f", None),
    ("Redis round trips per task", "round_trips", ".1f", None),
    ("seconds to submit", "submit_s", ".2f", None),
    ("failed tasks", "failed", ".0f", None),
]
#: issue 20 item 5: submissions per core, no worker running
SUBMIT_VARIANTS = ("aiecs .delay()", "aiecs POST /tasks", "celery .delay()",
                   "arq enqueue_job")
SUBMIT = [
    ("submissions/s", "per_s", ".0f", None),
    ("submissions per CPU second of the submitter (producer; for POST: the server)",
     "per_core", ".0f", ("ratio_ge", 1.0, "≥ 1.0× arq")),
    ("  submitter CPU µs per submission", "submitter_cpu_us", ".0f", None),
    ("  redis-server CPU µs per submission", "redis_cpu_us", ".0f", None),
    ("  HTTP client CPU µs per submission (POST only; the load generator)",
     "http_client_cpu_us", ".0f", None),
    ("Redis commands per submission", "commands", ".1f", None),
    ("Redis round trips per submission", "round_trips", ".1f", None),
    ("refused or failed", "failed", ".0f", None),
]
PROGRESS = [
    ("emit → client p50 ms", "p50_ms", ".2f", None),
    ("emit → client p99 ms", "p99_ms", ".2f", ("every_lt", 10.0, "< 10 ms in every run")),
    ("emit → client max ms", "max_ms", ".1f", None),
    ("emit → Redis p50 ms", "emit_redis_p50_ms", ".3f", ("le", 0.4, "≤ 0.4 ms")),
    ("events delivered per s", "events_per_s", ".0f", None),
    ("server CPU µs per delivered event", "server_cpu_us_per_event", ".0f", None),
]
#: aiecs serve against plain python-socketio relaying the same worker's events
PROGRESS_SERVER = [
    ("server CPU µs per delivered event", "server_cpu_us_per_event", ".0f",
     ("ratio_le", 1.0, "≤ 1× plain python-socketio")),
    ("events delivered per s", "events_per_s", ".0f", None),
    ("emit → client p99 ms", "p99_ms", ".2f", None),
]
STREAMING = [
    ("tokens/s delivered to clients", "tokens_per_s", ".0f", None),
    ("token latency p50 ms (LLM server → client)", "token_p50_ms", ".1f", None),
    ("token latency p99 ms", "token_p99_ms", ".1f", None),
    ("tokens delivered", "tokens", ".0f", None),
]
SCALING = [
    ("tasks/s", "per_s", ".0f", None),
    ("CPU µs per task, all processes", "cpu_us", ".0f", None),
    ("Redis commands per task", "commands", ".1f", None),
    ("cores busy", "cores_busy", ".2f", None),
]
EVENTS = [(label, key, fmt, None) for label, key, fmt, _ in NOOP]
TRACING = [*[(label, key, fmt, None) for label, key, fmt, _ in CHAT],
           ("spans exported per task", "spans_per_task", ".2f", None),
           ("OTLP KiB exported per task", "export_kb_per_task", ".2f", None)]
ALLIN = [
    ("tasks/s", "per_s", ".1f", None),
    ("CPU ms per task, all processes", "cpu_ms", ".2f", ("ratio_le", 1.05, "≤ 1.05× off")),
    ("  workers CPU ms per task", "workers_cpu_ms", ".2f", None),
    ("  redis-server CPU ms per task", "redis_cpu_ms", ".2f", None),
    ("  producer CPU ms per task", "client_cpu_ms", ".2f", None),
    ("  recorder CPU ms per task", "recorder_cpu_ms", ".2f", None),
    ("Redis commands per task", "commands", ".1f", None),
    ("Redis round trips per task", "round_trips", ".1f", None),
    ("calls in flight, mean / max", ("in_flight_mean", "in_flight_max"), ".0f", None),
    ("failed tasks", "failed", ".0f", None),
]
BATCH = [
    ("tasks/s (first submit → last result)", "per_s", ".0f", ("ratio_ge", 0.85,
                                                              "≥ 0.85× single submissions")),
    ("seconds to submit (accept)", "submit_s", ".2f", None),
    ("CPU ms per task, all processes", "cpu_ms", ".2f", None),
    ("  producer CPU ms per task", "client_cpu_ms", ".2f", None),
    ("Redis commands per task", "commands", ".1f", None),
    ("Redis round trips per task", "round_trips", ".1f", None),
]
STARTUP = {
    "worker start → first ping": [("seconds", "seconds", ".2f", ("ratio_le", 1.2,
                                                                  "≤ 1.2× anchor"))],
    "worker start → first task done": [("seconds", "seconds", ".2f",
                                        ("ratio_le", 1.2, "≤ 1.2× anchor"))],
    "import aiecs_core": [("ms", "ms", ".1f", ("lt", 150, "< 150 ms"))],
    "import aiecs_worker": [("ms", "ms", ".1f", None)],
}
ANCHORS = {
    "noop": "bare Celery (`bench/anchor_app.py`), same pool and concurrency",
    "chat": "bare Celery on gevent (`--pool gevent --concurrency 500`, 2 workers, the sync "
            "SDK, kombu's connection pools raised) and arq (`bench/arq_app.py`: 2 workers, "
            "`max_jobs` 500, `AsyncOpenAI` with the aiohttp client, uvloop); targets are "
            "issue 20's, against arq in the same run",
    "submit": "`execute_task.delay` in a loop; `POST /tasks` to a real `aiecs serve` "
              "(aiohttp client, keep-alive, 32 in flight); bare Celery's `.delay`; arq's "
              "`enqueue_job` in a loop; no worker running",
    "progress": "plain python-socketio server + AsyncRedisManager emitter (`bench/plain_sio.py`)",
    "startup": "bare Celery worker; `import pydantic, pluggy`; `import celery, "
               "kombu.transport.redis, socketio`",
    "streaming": "the same streams read directly with the openai SDK (the floor)",
    "scaling": "bare Celery, same number of threads -c8 processes",
    "batch": "the same echo no-ops submitted one by one (`execute_task.delay`); the "
             "aiecs column is one `submit_batch` call",
}
#: scenarios comparing two aiecs variants instead of aiecs and an anchor
VARIANTS = {"events": ("on", "off"), "tracing": ("on", "off"), "allin": ("on", "off")}


def _fmt(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _get(median: dict, key):
    if isinstance(key, tuple):
        return tuple(median.get(k) for k in key)
    return median.get(key)


def _verdict(target, mine, anchor, runs) -> str:
    if target is None or mine is None:
        return ""
    kind, value, _ = target
    if kind.startswith("ratio") and not anchor:
        return ""
    ok = {"ratio_ge": lambda: mine / anchor >= value,
          "ratio_le": lambda: mine / anchor <= value,
          "lt": lambda: mine < value, "le": lambda: mine <= value,
          "every_lt": lambda: all((r or 0) < value for r in runs),
          "chat": lambda: mine >= value[0] and anchor and mine / anchor >= value[1]}[kind]()
    return "**pass**" if ok else "**FAIL**"


def _table(block: dict, rows: list, names: tuple[str, str] = ("aiecs", "anchor")) -> list[str]:
    med = block["median"]
    mine, anchor = med.get(names[0], {}), med.get(names[1], {})
    lines = [f"| metric | {names[0]} | {names[1]} | ratio | target | result |",
             "|---|---:|---:|---:|---|---|"]
    for label, key, fmt, target in rows:
        a, b = _get(mine, key), _get(anchor, key)
        if isinstance(key, tuple):
            cells = [" / ".join(_fmt(v, fmt) for v in a), " / ".join(_fmt(v, fmt) for v in b)]
            ratio = ""
        else:
            cells = [_fmt(a, fmt), _fmt(b, fmt)]
            ratio = f"{a / b:.2f}×" if a is not None and b else ""
        runs = [r.get(key) for r in block["runs"].get(names[0], [])] if not isinstance(
            key, tuple) else []
        verdict = _verdict(target, a, b, runs)
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {ratio} | "
                     f"{target[2] if target else ''} | {verdict} |")
    return lines


def _multi_table(block: dict, rows: list, names: tuple[str, ...],
                 pairs: list[tuple[str, str]]) -> list[str]:
    """One column per variant, then the ratio of each ``(a, b)`` of ``pairs``; a row's
    target is judged on each pair of an aiecs variant against the last pair's anchor."""
    med = block["median"]
    names = tuple(n for n in names if n in med)
    pairs = [(a, b) for a, b in pairs if a in med and b in med]
    judged = [(a, b) for a, b in pairs if b == pairs[-1][1] and a.startswith("aiecs")]
    lines = [f"| metric | {' | '.join(names)} | "
             + " | ".join(f"{a} / {b}" for a, b in pairs) + " | target | result |",
             "|---|" + "---:|" * (len(names) + len(pairs)) + "---|---|"]
    for label, key, fmt, target in rows:
        vals = {n: _get(med[n], key) for n in names}
        if isinstance(key, tuple):
            cells = [" / ".join(_fmt(v, fmt) for v in vals[n]) for n in names]
            ratios = [""] * len(pairs)
            verdict = ""
        else:
            cells = [_fmt(vals[n], fmt) for n in names]
            ratios = [f"{vals[a] / vals[b]:.2f}×" if vals[a] is not None and vals[b] else ""
                      for a, b in pairs]
            verdicts = [_verdict(target, vals[a], vals[b], []) for a, b in judged]
            verdict = (verdicts[0] if len(judged) == 1 else ", ".join(
                f"{a}: {v}" for (a, _), v in zip(judged, verdicts, strict=True) if v))
        lines.append(f"| {label} | {' | '.join(cells)} | {' | '.join(ratios)} | "
                     f"{target[2] if target else ''} | {verdict} |")
    return lines


def _commands_table(block: dict, names: tuple[str, ...]) -> list[str]:
    """Redis commands per task by command (Δ INFO commandstats), median run's order."""
    runs = block["runs"]
    names = tuple(n for n in names if runs.get(n))
    per: dict[str, dict[str, float]] = {}
    for n in names:
        for cmd in {c for r in runs[n] for c in r.get("by_command", {})}:
            values = sorted(r.get("by_command", {}).get(cmd, 0.0) for r in runs[n])
            per.setdefault(cmd, {})[n] = values[len(values) // 2]
    order = sorted(per, key=lambda c: -max(per[c].values()))
    lines = [f"| command | {' | '.join(names)} |", "|---|" + "---:|" * len(names)]
    for cmd in order:
        if max(per[cmd].values()) < 0.05:
            continue
        lines.append(f"| `{cmd}` | " + " | ".join(f"{per[cmd].get(n, 0):.2f}"
                                                  for n in names) + " |")
    return lines


def _startup_ms(block: dict) -> dict:
    """Import blocks store seconds; the table shows ms."""
    for runs in (block["median"], *block["runs"].values()):
        for item in runs.values() if isinstance(runs, dict) else runs:
            if "seconds" in item:
                item["ms"] = 1000 * item["seconds"]
    return block


def _multi_section(name: str, config: str, block: dict, results: dict) -> list[str]:
    if name == "submit":
        return [f"### {config}", "", *_multi_table(block, SUBMIT, SUBMIT_VARIANTS, [
                    (v, "arq enqueue_job") for v in SUBMIT_VARIANTS[:3]]), "",
                "Redis commands per submission, by command:", "",
                *_commands_table(block, SUBMIT_VARIANTS), ""]
    if config != "recommended":  # the old anchor, a footnote
        med = block["median"].get("celery prefork", {})
        return [f"Footnote, the old anchor: bare Celery prefork -c2, sync SDK "
                f"({med.get('tasks', 0):.0f} tasks): {_fmt(med.get('per_s'), '.1f')} tasks/s, "
                f"{_fmt(med.get('cpu_ms'), '.2f')} CPU ms per task.", ""]
    label = "aiecs: " + ", ".join(f"{k}={v}" for k, v in results.get("recommended", {}).items())
    # the recommended deployment, then the same with the other pools (--chat-also)
    others = tuple(n for n in block["median"]
                   if n.startswith("aiecs ") and n not in CHAT_VARIANTS) + CHAT_VARIANTS[1:2]
    names = ("aiecs", *others, "celery gevent", "arq")
    pairs = [*((o, "aiecs") for o in others), ("aiecs", "celery gevent"), ("aiecs", "arq"),
             *((o, "arq") for o in others)]
    return [f"### {label}; bare Celery gevent -c500 ×2; arq max_jobs 500 ×2", "",
            *_multi_table(block, CHAT, names, pairs), "",
            "Redis commands per task, by command (Δ INFO commandstats; inside Lua scripts "
            "included):", "", *_commands_table(block, names), ""]


def _sections(results: dict) -> list[str]:
    out: list[str] = []
    sc = results["scenarios"]
    titles = {"noop": "1–2. No-op drain: throughput, CPU and Redis per task",
              "chat": "3. 200 ms chat calls through the openai SDK",
              "progress": "4. Progress: emit → client with many sockets",
              "startup": "5. Start-up", "streaming": "6. Streaming",
              "scaling": "7. Scaling: worker processes (threads -c8 each)",
              "events": "Celery task events: off (default) vs on (AIECS_TASK_EVENTS=1)",
              "batch": "8. A batch against as many single submissions (threads -c8)",
              "tracing": "Tracing: off (default) vs on (AIECS_TRACING=1, OTLP/HTTP export)",
              "submit": "9. Submission throughput per core (issue 20, item 5)",
              "allin": "History, budgets and templates all on vs all off (issue 18)"}
    for name, title in titles.items():
        if name not in sc:
            continue
        out += [f"## {title}", ""]
        if name in ANCHORS:
            out += [f"Anchor: {ANCHORS[name]}.", ""]
        for config, block in sc[name].items():
            if name in ("chat", "submit"):
                out += _multi_section(name, config, block, results)
                continue
            if name == "startup":
                rows = STARTUP.get(config, [("seconds", "seconds", ".2f", None)])
                if config.startswith("import"):
                    _startup_ms(block)
            else:
                rows = {"noop": NOOP, "progress": PROGRESS, "streaming": STREAMING,
                        "scaling": SCALING, "events": EVENTS,
                        "batch": BATCH, "tracing": TRACING, "allin": ALLIN}.get(name)
            label = config
            out += [f"### {label}", "",
                    *_table(block, rows, VARIANTS.get(name, ("aiecs", "anchor"))), ""]
            if name == "progress" and block["median"].get("relay"):
                out += [f"### {label}: the server alone", "",
                        "The same aiecs worker's events relayed by `aiecs serve` and by the "
                        "plain python-socketio server (`relay`).", "",
                        *_table(block, PROGRESS_SERVER, ("aiecs", "relay")), ""]
        if name == "allin":
            on, off = (next(iter(sc[name].values()))["median"].get(v, {}) for v in ("on", "off"))
            if on.get("cpu_ms") and off.get("cpu_ms"):
                out += [f"Added CPU per chat task, all-in (workers + redis + producer + "
                        f"recorder): {100 * (on['cpu_ms'] / off['cpu_ms'] - 1):+.1f} % "
                        f"({on['cpu_ms'] - off['cpu_ms']:+.2f} ms; target ≤ 5 %).", ""]
        if name == "streaming":
            block = next(iter(sc[name].values()))["median"]
            a, d = block.get("aiecs", {}), block.get("anchor", {})
            if a.get("token_p50_ms") is not None and d.get("token_p50_ms") is not None:
                out += [f"Latency aiecs adds per token (p50, over the direct reader): "
                        f"{a['token_p50_ms'] - d['token_p50_ms']:.1f} ms; p99: "
                        f"{a['token_p99_ms'] - d['token_p99_ms']:.1f} ms.", ""]
        plot = {"noop": "throughput.png", "chat": "chat.png", "progress": "progress.png",
                "scaling": "scaling.png"}.get(name)
        if plot and results.get("_plots", {}).get(plot):
            out += [f"![{name}](results/{plot})", ""]
    return out


def _plots(results: dict, folder: Path) -> dict[str, bool]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    made: dict[str, bool] = {}
    sc = results["scenarios"]

    def bars(file: str, title: str, ylabel: str, blocks: dict, key: str) -> None:
        names = list(blocks)
        fig, ax = plt.subplots(figsize=(7, 3.6))
        variants = list(dict.fromkeys(v for n in names for v in blocks[n]["median"]))
        width = 0.8 / max(1, len(variants))
        for j, variant in enumerate(variants):
            values = [blocks[n]["median"].get(variant, {}).get(key) or 0 for n in names]
            xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(names))]
            ax.bar(xs, values, width, label=variant)
            for i, n in enumerate(names):  # each run as a dot
                runs = [r.get(key) for r in blocks[n]["runs"].get(variant, []) if r.get(key)]
                ax.plot([xs[i]] * len(runs), runs, "k.", markersize=3)
        ax.set_xticks(range(len(names)), names)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / file, dpi=110)
        plt.close(fig)
        made[file] = True

    if "noop" in sc:
        bars("throughput.png", "No-op drain", "tasks/s", sc["noop"], "per_s")
    if "chat" in sc and "recommended" in sc["chat"]:
        bars("chat.png", "200 ms chat calls, 2 worker processes each", "tasks/s",
             {"recommended": sc["chat"]["recommended"]}, "per_s")
    if "progress" in sc:
        bars("progress.png", "emit → client p99 (ms)", "ms", sc["progress"], "p99_ms")
    if "scaling" in sc:
        blocks = sc["scaling"]
        fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4))
        procs = [int(n.split()[0]) for n in blocks]
        for variant in ("aiecs", "anchor"):
            med = [b["median"].get(variant, {}) for b in blocks.values()]
            left.plot(procs, [m.get("per_s") for m in med], "o-", label=variant)
            right.plot(procs, [m.get("cpu_us") for m in med], "o-", label=variant)
        left.set(title="tasks/s", xlabel="worker processes", xticks=procs)
        right.set(title="CPU µs per task, all processes", xlabel="worker processes",
                  xticks=procs)
        left.legend()
        fig.tight_layout()
        fig.savefig(folder / "scaling.png", dpi=110)
        plt.close(fig)
        made["scaling.png"] = True
    return made


def write(results: dict, out: Path, json_path: Path) -> Path:
    folder = out / "results"
    folder.mkdir(parents=True, exist_ok=True)
    results = {**results, "_plots": _plots(results, folder)}
    m = results["machine"]
    shared = ("The machine was **shared** with other work during the run: rates move; CPU "
              "per task and Redis command counts are the stable figures."
              if results.get("shared") else "")
    load = ", ".join(f"{x:.2f}" for x in m["loadavg_at_start"])
    raw = json_path.relative_to(out) if json_path.is_relative_to(out) else json_path
    flag = {"quick": " --quick", "smoke": " --smoke"}.get(results["mode"], "")
    head = [
        "# aiecs benchmark report", "",
        f"Generated by `uv run python -m bench{flag}`"
        f" on {results['date']} (commit {results['commit']}, {results['mode']} mode, "
        f"{results['params']['repeats']} repeat(s) per variant, medians; "
        f"{results['seconds']} s).", "",
        f"Machine: {m['cpus']} CPUs, Python {m['python']}, Redis {m['redis']}, "
        f"{m['platform']}; load average at start {load}. "
        + shared, "",
        "Method: every run starts a fresh redis-server and fresh workers; aiecs and anchor runs "
        "alternate. CPU is user + system time from /proc of every process in each worker's "
        "process group, of redis-server and of the producer. Redis commands are the Δ of "
        "INFO commandstats (commands inside Lua scripts included); round trips are the Δ of "
        "INFO stats `total_reads_processed` (request batches read: a pipeline counts once). "
        "Targets are issue 8's. See bench/README.md.", "",
        f"Raw data: `{raw}`.",
        "",
    ]
    for name, error in results.get("errors", {}).items():
        head += [f"**Scenario `{name}` failed** in this run:", "", "```", error.strip(), "```",
                 ""]
    path = out / "REPORT.md"
    path.write_text("\n".join(head + _sections(results)) + "\n")
    return path
