"""bench/profile.py gives each py-spy sample to the innermost frame that names a component:
a library's time goes to the caller that asked for it, the loop's only when nothing else
is on the stack. (No timing: this checks the sorting the profile in docs/performance.md
rests on.)"""

from bench.profile import collapse, component


def frames(*paths: str) -> list[str]:
    return [f"f{i} ({p}:1)" for i, p in enumerate(paths)]


def test_innermost_component_wins_over_celery_around_it():
    stack = frames("celery/app/trace.py", "aiecs_worker/runner/tasks.py",
                   "aiecs_worker/store/events.py", "redis/client.py", "json/encoder.py")
    assert component(stack) == "aiecs event publishing"


def test_sdk_inside_the_runner_is_the_sdk():
    stack = frames("asyncio/events.py", "aiecs_worker/runner/execution.py",
                   "aiecs_openai_compat/service.py", "openai/_base_client.py",
                   "pydantic/main.py")
    assert component(stack).startswith("SDK call")


def test_library_with_no_caller_falls_back_to_the_loop_or_other():
    assert component(frames("asyncio/base_events.py", "asyncio/events.py")).startswith(
        "event loop")
    assert component(frames("json/encoder.py")) == "other"


def test_collapse_reads_py_spy_raw_lines(tmp_path):
    raw = tmp_path / "worker0.txt"
    proc = 'process 1:"celery worker"'
    raw.write_text(
        f"{proc};" + ";".join(frames("celery/worker/consumer.py", "kombu/message.py")) + " 7\n"
        f"{proc};" + ";".join(frames("arq/worker.py", "aiohttp/client.py")) + " 3\n")
    by_component, by_leaf = collapse(raw)
    assert by_component == {"Celery / kombu message handling": 7,
                            "SDK call (openai SDK, HTTP client, parsing)": 3}
    assert sum(by_leaf.values()) == 10
