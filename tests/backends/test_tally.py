"""The tallies behind /metrics on every backend: jobs that started and ended are folded in
once each, in cursor order, however the folds fall."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from jobbalancer import db, jobs, tally
from jobbalancer.db import schema
from jobbalancer.jobs import State

J = schema.jobs
JobFactory = Callable[..., int]


def fold(engine: sa.Engine, settle: float = 0.0) -> int:
    with db.write(engine) as conn:
        return tally.fold(conn, settle)


def read(engine: sa.Engine) -> tally.Tallies:
    with db.read(engine) as conn:
        return tally.read(conn, ["default"])


def run(engine: sa.Engine, job_id: int, worker_id: int, state: State = State.DONE) -> None:
    """waiting → assigned → running → ``state``, as the balancer and a worker do."""
    with db.write(engine) as conn:
        assert jobs.assign(conn, job_id, worker_id)
    with db.write(engine) as conn:
        token = jobs.get(conn, job_id).token
        assert token is not None and jobs.claim(conn, job_id, worker_id, token)
    with db.write(engine) as conn:
        assert jobs.finish(conn, job_id, token, state, exit_code=0, retry=False)


def stamp(engine: sa.Engine, job_id: int, *, wait: float, ran: float) -> None:
    """Set a job's times: submitted ``wait`` seconds before it started, ended ``ran``
    seconds after (the end stays where it was)."""
    with db.write(engine) as conn:
        end = jobs.get(conn, job_id).finished_at
        assert end is not None
        start = end - timedelta(seconds=ran)
        conn.execute(
            sa.update(J)
            .where(J.c.id == job_id)
            .values(started_at=start, created_at=start - timedelta(seconds=wait))
        )


def rewind(engine: sa.Engine) -> None:
    """Start the cursors long ago, before the times :func:`stamp` sets."""
    with db.write(engine) as conn:
        conn.execute(sa.update(schema.metric_cursors).values(at=datetime(2000, 1, 1, tzinfo=UTC)))


def ended(t: tally.Tallies) -> dict[str, float]:
    return {state: n for (cls, state), n in t.ended.items() if cls == "default" and n}


def test_jobs_that_end_are_counted_once(
    engine: sa.Engine, job_factory: JobFactory, worker_factory: Callable[[str], int]
) -> None:
    worker = worker_factory("w1")
    done, failed, never = job_factory(), job_factory(), job_factory()
    run(engine, done, worker)
    run(engine, failed, worker, State.FAILED)
    with db.write(engine) as conn:
        jobs.request_kill(conn, never)  # killed before it started: no wait, no run time
    stamp(engine, done, wait=50, ran=40)
    stamp(engine, failed, wait=0.05, ran=4000)
    rewind(engine)

    assert fold(engine) == 5  # three ends, two starts
    t = read(engine)
    assert ended(t) == {"done": 1, "failed": 1, "killed": 1}
    assert set(t.ended) >= {("default", s.value) for s in jobs.FINAL}  # zeros for the rest
    run_time, wait = t.run["default"], t.wait["default"]
    assert (run_time.count, run_time.sum) == (2, pytest.approx(4040))
    assert dict(run_time.buckets)["60.0"] == 1 and dict(run_time.buckets)["7200.0"] == 2
    assert dict(run_time.buckets)["30.0"] == 0
    assert (wait.count, wait.sum) == (2, pytest.approx(50.05))
    assert dict(wait.buckets)["0.1"] == 1 and dict(wait.buckets)["60.0"] == 2

    assert fold(engine) == 0  # a second fold finds nothing new
    assert read(engine) == t

    later = job_factory()
    run(engine, later, worker)
    assert fold(engine) == 2
    assert ended(read(engine)) == {"done": 2, "failed": 1, "killed": 1}


def test_a_job_is_folded_in_once_its_time_has_settled(
    engine: sa.Engine, job_factory: JobFactory, worker_factory: Callable[[str], int]
) -> None:
    rewind(engine)
    worker = worker_factory("w1")
    run(engine, job_factory(), worker)
    assert fold(engine, settle=3600) == 0  # not an hour old: left for a later fold
    assert ended(read(engine)) == {}
    assert fold(engine, settle=0) == 2
    assert ended(read(engine)) == {"done": 1}


def test_ties_and_a_backlog_are_paged_through(
    engine: sa.Engine,
    job_factory: JobFactory,
    worker_factory: Callable[[str], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Jobs ending at the same instant, more than a fold takes: each later fold goes on
    after the last (time, id) it counted, and every job counts once."""
    worker = worker_factory("w1")
    ids = [job_factory() for _ in range(5)]
    for job_id in ids:
        run(engine, job_id, worker)
    with db.write(engine) as conn:
        same = db.now(conn) - timedelta(seconds=5)
        conn.execute(sa.update(J).where(J.c.id.in_(ids)).values(started_at=same, finished_at=same))
    rewind(engine)
    monkeypatch.setattr(tally, "FOLD_LIMIT", 2)
    reads = [fold(engine) for _ in range(4)]
    assert reads == [4, 4, 2, 0]  # two of each cursor per fold
    assert ended(read(engine)) == {"done": 5}
    assert read(engine).run["default"].count == 5 == read(engine).wait["default"].count


def test_jobs_deleted_after_they_were_counted_stay_counted(
    engine: sa.Engine, job_factory: JobFactory, worker_factory: Callable[[str], int]
) -> None:
    rewind(engine)
    worker = worker_factory("w1")
    job_id = job_factory()
    run(engine, job_id, worker)
    fold(engine)
    with db.write(engine) as conn:
        jobs.delete(conn, job_id)
    fold(engine)
    assert ended(read(engine)) == {"done": 1}


def test_two_servers_folding_at_once_count_each_job_once(
    engine: sa.Engine, job_factory: JobFactory, worker_factory: Callable[[str], int]
) -> None:
    """The cursors' lock: whichever fold comes second goes on after the first."""
    rewind(engine)
    worker = worker_factory("w1")
    for _ in range(3):
        run(engine, job_factory(), worker)
    url = engine.url.render_as_string(hide_password=False)
    engines = [db.connect(url) for _ in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            reads = list(pool.map(fold, engines))
    finally:
        for e in engines:
            e.dispose()
    assert sorted(reads) == [0, 6]
    assert ended(read(engine)) == {"done": 3}


def test_the_first_fold_counts_from_there_on(
    engine: sa.Engine, job_factory: JobFactory, worker_factory: Callable[[str], int]
) -> None:
    """Jobs that ended before the first scrape are not counted (the cursors start there)."""
    worker = worker_factory("w1")
    run(engine, job_factory(), worker)
    with db.read(engine) as conn:
        rows = conn.execute(sa.select(schema.metric_cursors)).all()
    assert sorted((r.name, r.at, r.job_id) for r in rows) == [
        ("ended", None, 0),
        ("started", None, 0),
    ]
    assert fold(engine) == 0
    assert ended(read(engine)) == {}
    run(engine, job_factory(), worker)
    assert fold(engine) == 2
    assert ended(read(engine)) == {"done": 1}


def test_a_delayed_jobs_wait_counts_from_its_not_before(
    engine: sa.Engine, job_factory: JobFactory, worker_factory: Callable[[str], int]
) -> None:
    """A job that starts later waits from the time it could first start (its not_before,
    if after its submit), not from its submit; one killed while delayed counts as ended."""
    worker = worker_factory("w1")
    later, killed = job_factory(delay=3600), job_factory(delay=3600)
    with db.write(engine) as conn:
        assert jobs.get(conn, later).state == State.DELAYED
        jobs.request_kill(conn, killed)
        assert jobs.get(conn, killed).finished_at is not None
        conn.execute(sa.update(J).where(J.c.id == later).values(state=State.WAITING.value))
    run(engine, later, worker)
    stamp(engine, later, wait=1000, ran=1)  # submitted 1000 s before it started …
    with db.write(engine) as conn:
        started = jobs.get(conn, later).started_at
        assert started is not None  # … and due 2 s before
        conn.execute(
            sa.update(J).where(J.c.id == later).values(not_before=started - timedelta(seconds=2))
        )
    rewind(engine)

    assert fold(engine) == 3  # two ends, one start
    t = read(engine)
    assert ended(t) == {"done": 1, "killed": 1}
    wait = t.wait["default"]
    assert (wait.count, wait.sum) == (1, pytest.approx(2))
    assert dict(wait.buckets)["1.0"] == 0 and dict(wait.buckets)["2.5"] == 1


def test_a_fold_skips_while_another_holds_the_cursors(
    engine: sa.Engine, job_factory: JobFactory, worker_factory: Callable[[str], int]
) -> None:
    """A second server's fold does not wait for one under way: it folds nothing, and the
    next fold counts every job once."""
    rewind(engine)
    run(engine, job_factory(), worker_factory("w1"))
    if engine.dialect.name == "sqlite":  # one writer at a time: the write lock orders them
        assert fold(engine) == 2
        return
    url = engine.url.render_as_string(hide_password=False)
    other = db.connect(url)
    try:
        with db.write(engine) as conn:
            db.lock_rows(conn, sa.select(schema.metric_cursors))
            with ThreadPoolExecutor(1) as pool:
                assert pool.submit(fold, other).result(timeout=60) == 0
        assert fold(other) == 2
    finally:
        other.dispose()
    assert ended(read(engine)) == {"done": 1}
