"""The self-fencing rule and the Fence, on a fake clock: a cut-off worker kills its jobs
F = T - margin(T) after its last renewal, strictly before the server's T."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import pytest

from jobbalancer.monitor import Liveness
from jobbalancer.worker import fence, runner

pytestmark = pytest.mark.timeout(60)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("timeout", "margin", "deadline"),
    [(2, 1.0, 1.0), (3, 1.0, 2.0), (15, 3.0, 12.0), (60, 12.0, 48.0), (3600, 30.0, 3570.0)],
)
def test_margin_and_deadline(timeout: float, margin: float, deadline: float) -> None:
    assert fence.margin(timeout) == pytest.approx(margin)
    assert fence.deadline(timeout) == pytest.approx(deadline)
    assert fence.deadline(timeout) < timeout  # always before the server may judge


@pytest.mark.parametrize(
    ("configured", "timeout", "every"),
    [(3.0, 2, 1 / 3), (0.5, 3, 0.5), (3.0, 3, 2 / 3), (3.0, 15, 3.0), (3.0, 60, 3.0),
     (3.0, 3600, 3.0)],
)  # fmt: skip
def test_heartbeat_every_fits_three_before_the_fence(
    configured: float, timeout: float, every: float
) -> None:
    assert fence.heartbeat_every(configured, timeout) == pytest.approx(every)
    assert 3 * fence.heartbeat_every(configured, timeout) <= fence.deadline(timeout) + 1e-9


def _fence(clock: FakeClock, renewed: list[float], timeout: float = 3.0) -> tuple[
    fence.Fence, list[float]
]:  # fmt: skip
    fired: list[float] = []
    f = fence.Fence(lambda: renewed[0], lambda: timeout, fired.append, clock=clock)
    return f, fired


def test_fires_once_at_the_deadline_not_before() -> None:
    clock = FakeClock()
    renewed = [clock.now]
    f, fired = _fence(clock, renewed)  # T 3: F 2
    clock.now += 1.99
    assert not f.check()
    assert f.can_start()
    clock.now += 0.01
    assert f.check()
    assert fired == [pytest.approx(2.0)]
    assert f.fenced.is_set()
    clock.now += 5
    assert not f.check()  # once per renewal
    assert fired == [pytest.approx(2.0)]
    assert not f.can_start()


def test_a_renewal_clears_the_fence() -> None:
    clock = FakeClock()
    renewed = [clock.now]
    f, fired = _fence(clock, renewed)
    clock.now += 2.5
    assert f.check()
    renewed[0] = clock.now  # a heartbeat went through
    assert not f.check()
    assert not f.fenced.is_set()
    assert f.can_start()
    clock.now += 2.0
    assert f.check()  # armed again: the new lease runs out too
    assert len(fired) == 2


def test_can_start_refuses_a_lease_run_out_before_the_thread_looked() -> None:
    clock = FakeClock()
    renewed = [clock.now]
    f, fired = _fence(clock, renewed)
    clock.now += 2.0
    assert not f.can_start()
    assert len(fired) == 1  # can_start fenced on the spot


def test_a_clock_jump_suspend_fires_on_the_next_step() -> None:
    clock = FakeClock()
    renewed = [clock.now]
    f, fired = _fence(clock, renewed, timeout=15)  # F 12
    clock.now += 0.5
    assert not f.check()
    clock.now += 3600  # the VM slept an hour: CLOCK_BOOTTIME counted it
    assert f.check()
    assert fired == [pytest.approx(3600.5)]


def test_the_thread_fires_and_stops() -> None:
    clock = FakeClock()
    renewed = [clock.now - 10]  # long out already
    fired: list[float] = []
    done = threading.Event()

    def on_fence(age: float) -> None:
        fired.append(age)
        done.set()

    f = fence.Fence(lambda: renewed[0], lambda: 3.0, on_fence, clock=clock)
    f.start()
    try:
        assert done.wait(5)
    finally:
        f.stop()
    assert fired == [pytest.approx(10.0)]


def test_clock_counts_boottime() -> None:
    a = fence.clock()
    assert a >= time.monotonic() - 1e-3  # BOOTTIME >= MONOTONIC: it adds time suspended


def test_a_fenced_jobs_kill_skips_the_grace() -> None:
    """kill(now=True): SIGKILL at once, even for a job that ignores SIGTERM under a long
    kill_grace (a retry may start elsewhere within the margin)."""
    seen = threading.Event()

    def on_output(stream: str, data: bytes) -> None:
        if b"ready" in data:
            seen.set()

    spec = runner.RunSpec(
        job_id=1, command="trap '' TERM; echo ready; sleep 300", interpreter=None, script=None,
        kill_grace=300.0, cgroup=False,
    )  # fmt: skip
    job = runner.JobProcess(spec, on_output)
    job.start()
    outcomes: list[runner.Outcome] = []
    waiter = threading.Thread(target=lambda: outcomes.append(job.wait()), daemon=True)
    waiter.start()  # wait() pumps the output
    assert seen.wait(30)
    job.kill(now=True)
    waiter.join(30)  # with the grace it would take 300 s
    (outcome,) = outcomes
    assert outcome.reason == "killed"
    assert outcome.signal == 9


def test_the_monitor_applies_a_lowered_worker_timeout_only_after_the_old_one() -> None:
    # Workers fence by the worker_timeout they read with their last heartbeat: one that has
    # not read a lowered value yet must not be judged by it.
    t0 = datetime(2026, 1, 1)
    live = Liveness()

    def at(configured: float, seconds: float, *, workers: bool = True) -> float:
        return live.timeout(configured, t0 + timedelta(seconds=seconds), lambda: workers)

    assert at(15, 0) == 15
    assert at(3, 1) == 15  # lowered: the old one still
    assert at(3, 15.9, workers=False) == 15  # (workers that left meanwhile change nothing)
    assert at(3, 16) == 3  # 15 s since it was first seen
    assert at(20, 17) == 20  # raised: at once
    assert at(3, 18, workers=False) == 3  # lowered with no worker live: nobody to wait for
