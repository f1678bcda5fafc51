"""Periodic executions on real Redis, real ``celery -A aiecs_worker beat`` processes and,
where runs must execute, a real worker.

Runs are counted from Redis: each run is a step of the schedule's task with its own
PENDING event in the task's log, and each tick's step is recorded under the tick. The two
runs that stop or kill beat are in the fault suite (``uv run pytest -m faults``).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aiecs_worker.producer import schedules
from aiecs_worker.producer.control import get_state

from tests.support.events import TERMINAL, read_events, wait_until


@pytest.fixture(autouse=True)
def _one_second_schedules(monkeypatch):
    """These tests run schedules every second: below the default minimum period."""
    from aiecs_worker.settings import get_settings

    monkeypatch.setenv("AIECS_SCHEDULE_MIN_PERIOD", "1")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _ids() -> tuple[str, str]:
    return f"u{uuid.uuid4().hex[:8]}", f"s{uuid.uuid4().hex[:8]}"


def _schedule(user: str, task: str, **kw) -> dict:
    kw.setdefault("every", 1)
    return schedules.create(schedules.Schedule(
        user_id=user, task_id=task, mode="test", service="echo", task_name="echo",
        input_data={"text": "tick", "chunks": 1}, **kw))


def _pending(client, user: str, task: str) -> list[dict]:
    """The PENDING events of the task's log (one per submitted run)."""
    return [e for e in read_events(client, user, task)
            if e["type"] == "status" and e["status"] == "pending"]


def _steps(client, user: str, task: str) -> list[int]:
    return sorted(e["step"] for e in _pending(client, user, task))


def _queued(client) -> int:
    """Messages waiting in fast_tasks (kombu keeps one list per priority band)."""
    return sum(client.llen(k) for k in client.scan_iter(match="fast_tasks*"))


def _ticks(client, user: str, task: str) -> dict[str, int]:
    prefix = f"aiecs:sched:{user}:{task}:tick:"
    return {k.decode()[len(prefix):]: int(client.get(k))
            for k in client.scan_iter(match=prefix + "*")}


def _submitted(client, user: str, task: str, step: int) -> float:
    return float(client.hget(f"aiecs:t:{user}:{task}:{step}:state", "submitted"))


def _assert_one_execution_per_tick(client, user: str, task: str) -> list[int]:
    steps = _steps(client, user, task)
    assert steps == list(range(1, len(steps) + 1)), steps  # unique, no gap, no double
    ticks = _ticks(client, user, task)
    assert sorted(ticks.values()) == steps, (ticks, steps)  # one step per tick
    return steps


def test_each_run_is_a_new_step_with_its_events(aiecs_redis, worker, start_beat):
    client = aiecs_redis.client()
    user, task = _ids()
    view = _schedule(user, task, every=1)
    assert view["runs"] == 0 and view["queue"] == "fast_tasks"
    assert view["next_run_at"] == pytest.approx(view["created"] + 1, abs=0.5)
    start_beat().wait_lock()

    def three_done():
        states = get_state(user, task)["steps"]
        done = [s for s, v in states.items() if v["status"] in TERMINAL]
        return len(done) >= 3 and states

    states = wait_until(three_done, timeout=30, message="three completed runs")
    assert all(states[s]["status"] == "completed" for s in (1, 2, 3))
    events = read_events(client, user, task)
    for step in (1, 2, 3):
        kinds = [e["status"] for e in events if e["step"] == step and e["type"] == "status"]
        assert kinds == ["pending", "running", "completed"], (step, kinds)
        done = next(e for e in events if e["step"] == step and e["status"] == "completed")
        assert done["result"]["text"] == "tick"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    _assert_one_execution_per_tick(client, user, task)
    listed = schedules.list_schedules(user)
    assert [s["task_id"] for s in listed] == [task] and listed[0]["runs"] >= 3
    assert listed[0]["last_run"]["step"] >= 3


def test_a_tick_fired_twice_makes_one_execution(aiecs_redis):
    """A tick's step is kept under the tick: beat firing it again (it died after
    submitting, before recording the run) finds it and submits nothing."""
    client = aiecs_redis.client()
    user, task = _ids()
    _schedule(user, task, every=60)
    assert schedules.fire(user, task, "t1") == 1
    assert schedules.fire(user, task, "t1") == 1
    assert _steps(client, user, task) == [1]
    assert _queued(client) == 1  # one message in the queue, not two
    assert schedules.fire(user, task, "t2") == 2
    # the first attempt died between taking its step and recording PENDING: the repeat
    # submits it (same step, same Celery id)
    client.delete(f"aiecs:sched:{user}:{task}:tick:t3")
    client.hincrby(f"aiecs:sched:{user}:{task}", "last_step", 1)  # step 3 taken, lost
    client.set(f"aiecs:sched:{user}:{task}:tick:t3", 3)
    assert schedules.fire(user, task, "t3") == 3
    assert schedules.fire(user, task, "t3") == 3
    assert _steps(client, user, task) == [1, 2, 3] and _queued(client) == 3
    # steps the task already has (submitted by hand) are skipped, never shared
    client.sadd(f"aiecs:t:{user}:{task}:steps", 4)
    assert schedules.fire(user, task, "t4") == 5
    assert schedules.delete(user, task)
    assert schedules.fire(user, task, "t5") is None
    assert schedules.list_schedules(user) == []


def test_a_user_has_at_most_max_schedules(aiecs_redis, monkeypatch):
    from aiecs_core import QuotaExceededError
    from aiecs_worker.settings import get_settings

    monkeypatch.setenv("AIECS_MAX_SCHEDULES", "2")
    get_settings.cache_clear()
    user, _ = _ids()
    _schedule(user, "a", every=60)
    _schedule(user, "b", every=60)
    with pytest.raises(schedules.ScheduleLimitError, match="at most 2 schedules") as refused:
        _schedule(user, "c", every=60)
    assert isinstance(refused.value, QuotaExceededError)
    assert (refused.value.limit, refused.value.setting) == (2, "AIECS_MAX_SCHEDULES")
    assert refused.value.retry_after == schedules.LIMIT_RETRY_AFTER
    with pytest.raises(schedules.ScheduleExistsError):
        _schedule(user, "a", every=60)
    schedules.delete(user, "a")
    _schedule(user, "c", every=60)  # room again
    assert [s["task_id"] for s in schedules.list_schedules(user)] == ["b", "c"]
    assert _schedule(_ids()[0], "a", every=60)["task_id"] == "a"  # another user's own


@pytest.mark.faults  # beat stopped / killed: in the fault suite
def test_runs_missed_while_beat_was_down_run_once_then_the_cadence_resumes(
        aiecs_redis, start_beat):
    client = aiecs_redis.client()
    user, task = _ids()
    every = 1.0
    _schedule(user, task, every=every)
    beat = start_beat().wait_lock()
    wait_until(lambda: _steps(client, user, task), timeout=20, message="a first run")
    beat.stop()
    n_before = len(_steps(client, user, task))
    down_since = time.time()
    # beat is down for 4 intervals: the fault itself
    wait_until(lambda: time.time() - down_since > 4 * every, timeout=10)
    assert len(_steps(client, user, task)) == n_before  # nobody ran them meanwhile
    start_beat().wait_lock()
    wait_until(lambda: len(_steps(client, user, task)) >= n_before + 2, timeout=20,
               message="two runs after the restart")
    steps = _assert_one_execution_per_tick(client, user, task)
    catch_up, next_run = n_before + 1, n_before + 2
    # one run for the missed ones, not four: the next one waited a full interval
    assert _submitted(client, user, task, catch_up) - down_since > 4 * every
    gap = _submitted(client, user, task, next_run) - _submitted(client, user, task, catch_up)
    assert gap >= every * 0.9, gap
    assert len(steps) <= n_before + 3  # at most one more arrived while we looked


@pytest.mark.faults  # beat stopped / killed: in the fault suite
def test_two_beats_run_each_tick_once_and_the_second_takes_over(aiecs_redis, start_beat):
    client = aiecs_redis.client()
    user, task = _ids()
    _schedule(user, task, every=1)
    first = start_beat().wait_lock()
    second = start_beat()
    wait_until(lambda: len(_steps(client, user, task)) >= 4, timeout=30, message="4 runs")
    assert not second.has_lock(), second.log()
    assert "Sending due task" not in second.log()
    _assert_one_execution_per_tick(client, user, task)
    first.kill()  # SIGKILL: its lock is not released, it expires (5 x max interval)
    n = len(_steps(client, user, task))
    second.wait_lock(timeout=30)
    wait_until(lambda: len(_steps(client, user, task)) >= n + 3, timeout=30,
               message="3 runs by the second beat")
    steps = _assert_one_execution_per_tick(client, user, task)
    times = [_submitted(client, user, task, s) for s in steps]
    assert min(b - a for a, b in zip(times, times[1:], strict=False)) >= 0.5, times


def test_a_schedule_whose_service_disappeared_fails_its_runs_visibly(
        aiecs_redis, start_worker, start_beat):
    user, task = _ids()
    _schedule(user, task, every=1)  # validated here, where test/echo exists
    start_worker(env={"AIECS_PLUGINS": "openai"})  # a deployment without it
    start_beat().wait_lock()

    def two_failed():
        states = get_state(user, task)["steps"]
        failed = [v for v in states.values() if v["status"] == "failed"]
        return len(failed) >= 2 and failed

    failed = wait_until(two_failed, timeout=30, message="two failed runs")
    assert all(f["error"]["type"] == "ServiceNotFoundError" for f in failed)
    assert "no service 'echo'" in failed[0]["error"]["message"]
    (listed,) = schedules.list_schedules(user)  # still there, saying what happens
    assert listed["last_run"]["status"] == "failed"
    assert listed["last_run"]["error"]["type"] == "ServiceNotFoundError"
    assert listed["next_run_at"] is not None


def test_a_cron_schedule_runs_through_beat(aiecs_redis, start_beat):
    from aiecs_worker.app import app
    from redbeat import RedBeatSchedulerEntry

    client = aiecs_redis.client()
    user, task = _ids()
    view = _schedule(user, task, every=None, cron="*/5  *  * * *")
    assert view["cron"] == "*/5 * * * *"
    nxt = datetime.fromtimestamp(view["next_run_at"], UTC)
    assert nxt.minute % 5 == 0 and nxt.second == 0 and nxt > datetime.now(UTC)
    # it last ran 10 minutes ago (and beat was down since): due now
    entry = RedBeatSchedulerEntry.from_key(schedules._entry(user, task).key, app=app)
    entry.reschedule(last_run_at=datetime.now(UTC) - timedelta(minutes=10))
    start_beat().wait_lock()
    wait_until(lambda: _steps(client, user, task), timeout=20, message="the cron run")

    def recorded():  # beat records the run just after it submitted it
        (listed,) = schedules.list_schedules(user)
        return listed["next_run_at"] > time.time() + 1 and listed

    listed = wait_until(recorded, timeout=10, message="the run recorded")
    assert listed["runs"] == 1 and _steps(client, user, task) == [1]
    assert datetime.fromtimestamp(listed["next_run_at"], UTC).minute % 5 == 0


@pytest.mark.parametrize(("kw", "period"), [
    ({"every": 9.5}, "9.5"), ({"every": None, "cron": "*/5 * * * *"}, "300"),
    ({"every": None, "cron": "0,1 * * * *"}, "60")])
def test_a_schedule_faster_than_the_minimum_period_is_refused(aiecs_redis, monkeypatch, kw,
                                                              period):
    """AIECS_SCHEDULE_MIN_PERIOD bounds `every` and the gap between two cron minutes (the
    issue's 100 schedules every second fired 67-80 runs a second, forever)."""
    from aiecs_core import QuotaExceededError
    from aiecs_worker.settings import get_settings

    monkeypatch.setenv("AIECS_SCHEDULE_MIN_PERIOD", "10" if "every" in kw and kw["every"]
                       else "301")
    get_settings.cache_clear()
    user, task = _ids()
    with pytest.raises(QuotaExceededError, match="AIECS_SCHEDULE_MIN_PERIOD") as refused:
        _schedule(user, task, **kw)
    assert f"every {period} s" in refused.value.message and not refused.value.is_retryable
    assert schedules.list_schedules(user) == []
    monkeypatch.setenv("AIECS_SCHEDULE_MIN_PERIOD", period)
    get_settings.cache_clear()
    assert _schedule(user, task, **kw)["task_id"] == task  # at the minimum: accepted
