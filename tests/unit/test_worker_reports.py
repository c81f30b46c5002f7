"""A worker in this process, on SQLite: a job's end that cannot be recorded (for a reason
other than the database being away) neither holds up the other jobs' ends nor stays
``running`` while the worker lives: it is tried again, then recorded as ``failed``."""

from __future__ import annotations

import ctypes
import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from jobbalancer import balancer, db, jobs
from jobbalancer import logs as logs_
from jobbalancer.settings import Settings, WorkerSettings
from jobbalancer.worker import loop, runner
from jobbalancer.worker.output import OutputSink
from jobbalancer.worker.reports import Report, Reports, Stop, judge

pytestmark = pytest.mark.timeout(60)
DEFAULT_CLASS = 1


@pytest.fixture(autouse=True)
def _no_subreaper_left_behind() -> Iterator[None]:
    """The worker makes this process a child subreaper; later tests (an orphan that must
    die, say) would find orphans re-parented here as zombies nobody reaps."""
    was = runner._is_subreaper()
    yield
    runner.reap_orphans()
    if not was:
        libc = ctypes.CDLL(None, use_errno=True)
        off = [ctypes.c_ulong(0)] * 4
        libc.prctl(36, *off)  # PR_SET_CHILD_SUBREAPER, 0


def _submit(engine: sa.Engine, *commands: str, retries: int = 0) -> list[int]:
    specs = [jobs.Spec(worker_class_id=DEFAULT_CLASS, command=c, retries=retries) for c in commands]
    with db.write(engine) as conn:
        return balancer.submit(conn, specs, None, None)


def _run_worker(engine: sa.Engine) -> None:
    """Until nothing is left to do (``burst``), in a thread: no signal handlers."""
    settings = Settings(worker=WorkerSettings(name="w", allow_root=True, max_jobs=4))
    worker = loop.Worker(settings, engine=engine)
    thread = threading.Thread(target=worker.run, kwargs={"burst": True}, daemon=True)
    thread.start()
    thread.join(45)
    assert not thread.is_alive(), "the worker did not finish its jobs"


def test_a_report_that_keeps_failing_is_recorded_as_failed_and_holds_up_no_other(
    sqlite_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, flaky, broken, stubborn = _submit(
        sqlite_engine, "echo good", "echo flaky", "echo broken", "echo stubborn", retries=1
    )
    real_finish = jobs.finish
    tries: Counter[int] = Counter()
    began = time.monotonic()

    def finish(conn: sa.Connection, job_id: int, token: str, state: jobs.State, **kw: Any) -> bool:
        tries[job_id] += 1
        if job_id == flaky and tries[job_id] <= 2:
            raise ValueError("a passing fault")
        if job_id in (broken, stubborn) and state == jobs.State.DONE:
            raise ValueError("a fault this report always meets")
        if job_id == stubborn and time.monotonic() < began + 5:
            raise ValueError("at first even recording it as failed fails")
        return real_finish(conn, job_id, token, state, **kw)

    monkeypatch.setattr(jobs, "finish", finish)

    _run_worker(sqlite_engine)

    with db.read(sqlite_engine) as conn:
        ended = {i: jobs.get(conn, i) for i in (good, flaky, broken, stubborn)}
        retried = conn.execute(sa.select(jobs.J.c.retry_of).where(jobs.J.c.attempt > 1)).all()
    assert ended[good].state == jobs.State.DONE
    assert ended[flaky].state == jobs.State.DONE  # a later try went through
    for job in (ended[broken], ended[stubborn]):
        assert job.state == jobs.State.FAILED
        assert job.error is not None
        assert "could not record how this job ended" in job.error
        assert "ValueError: a fault this report always meets" in job.error
        assert job.exit_code == 0  # what is known of its end is kept
    assert retried == []  # it may have done its work: no retry runs it again
    with db.read(sqlite_engine) as conn:
        logs = {i: logs_.read(conn, i)[0] for i in (flaky, broken)}
    assert logs == {flaky: b"flaky\n", broken: b"broken\n"}  # and its output


def test_reports_wait_while_the_database_is_away_rather_than_being_dropped(
    sqlite_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    (job_id,) = _submit(sqlite_engine, "echo hi")
    real_finish = jobs.finish
    calls = Counter[str]()

    def finish(conn: sa.Connection, *args: Any, **kw: Any) -> bool:
        calls["finish"] += 1
        if calls["finish"] <= 5:
            raise sa.exc.OperationalError("UPDATE jobs", {}, Exception("database is locked"))
        return real_finish(conn, *args, **kw)

    monkeypatch.setattr(jobs, "finish", finish)

    _run_worker(sqlite_engine)

    with db.read(sqlite_engine) as conn:
        assert jobs.get(conn, job_id).state == jobs.State.DONE
    assert calls["finish"] == 6


def _ended(engine: sa.Engine, job_id: int, stop: Stop | None) -> Report:
    """A report of a job this worker does not hold (a made-up token)."""
    with db.read(engine) as conn:
        job = dataclasses.replace(jobs.get(conn, job_id), token="not-ours")
    killed = runner.Outcome(exit_code=None, signal=9, reason="killed", error=None)
    return Report.of(job, killed, None, stop)


def test_a_stale_reports_output_is_dropped_not_appended_to_the_lost_jobs_log(
    sqlite_engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    (job_id,) = _submit(sqlite_engine, "echo hi")  # never ours: its finish is refused
    sink = OutputSink(sqlite_engine)
    sink.open(job_id, 1000)
    sink.write(job_id, "stdout", b"written after the verdict\n")
    reports = Reports(sqlite_engine, sink)
    reports.add(_ended(sqlite_engine, job_id, Stop("killed by request")))

    recorded = reports.flush(0, take=False)

    assert recorded == ({job_id}, [])
    with db.read(sqlite_engine) as conn:
        assert logs_.read(conn, job_id)[0] == b""
    assert f"job {job_id}: no longer this worker's; dropped 26 bytes of its output" in caplog.text
    assert reports.waiting() == 0


def test_a_fenced_report_is_lost_keeps_the_output_written_before_and_is_retried(
    sqlite_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    (job_id,) = _submit(sqlite_engine, "sleep 60", retries=1)
    calls: list[dict[str, Any]] = []

    def finish(conn: sa.Connection, job_id: int, token: str, state: jobs.State, **kw: Any) -> bool:
        calls.append({"state": state, **kw})
        return True

    monkeypatch.setattr(jobs, "finish", finish)
    sink = OutputSink(sqlite_engine)
    reports = Reports(sqlite_engine, sink)
    fenced = Stop("its worker could not reach the database", jobs.State.LOST)
    reports.add(_ended(sqlite_engine, job_id, fenced))

    assert reports.flush(0, take=False) == ({job_id}, [])

    (call,) = calls
    assert call["state"] == jobs.State.LOST
    assert call["error"] == "its worker could not reach the database"
    assert call["output_bytes"] is None  # the bytes counted before the cut stay
    assert call["retry"] is True


def test_judge_says_why_the_worker_stopped_a_job() -> None:
    job = jobs.Job.__new__(jobs.Job)
    killed = runner.Outcome(exit_code=None, signal=9, reason="killed", error=None)
    exited = runner.Outcome(exit_code=0, signal=None, reason="exited", error=None)
    assert judge(job, killed, Stop("killed by request")) == (jobs.State.KILLED, "killed by request")
    assert judge(job, killed, None) == (jobs.State.KILLED, "killed")
    lost = Stop("fenced", jobs.State.LOST)
    assert judge(job, killed, lost) == (jobs.State.LOST, "fenced")
    assert judge(job, exited, lost) == (jobs.State.LOST, "fenced")  # ended as it was fenced
    not_started = runner.Outcome.start_failed("not started")
    assert judge(job, not_started, lost) == (jobs.State.LOST, "fenced")
