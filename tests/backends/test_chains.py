"""Chains on every backend: held jobs released or skipped by their parents' ends, in the
transaction of that end (jobbalancer.chains)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from jobbalancer import auth, chains, classes, db, errors, jobs, monitor
from jobbalancer.db import schema
from jobbalancer.jobs import State
from jobbalancer.service import job_actions

JobFactory = Callable[..., int]


@pytest.fixture
def worker(worker_factory: Callable[[str], int]) -> int:
    return worker_factory("w1")


def get(engine: sa.Engine, job_id: int) -> jobs.Job:
    with db.read(engine) as conn:
        return jobs.get(conn, job_id)


def do(engine: sa.Engine, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with db.write(engine) as conn:
        return fn(conn, *args, **kwargs)


def start(engine: sa.Engine, job_id: int, worker_id: int) -> str:
    """waiting → assigned → running; the fencing token."""
    assert do(engine, jobs.assign, job_id, worker_id)
    token = get(engine, job_id).token
    assert token is not None
    assert do(engine, jobs.claim, job_id, worker_id, token)
    return token


def run(engine: sa.Engine, job_id: int, worker_id: int, state: State) -> None:
    """Start the job and have its worker report ``state``."""
    token = start(engine, job_id, worker_id)
    assert do(engine, jobs.finish, job_id, token, state, exit_code=0 if state == "done" else 1)


@pytest.fixture
def held(engine: sa.Engine) -> Callable[..., int]:
    """held(*(parent, on)) → a new job waiting for those parents (decided at once if ended)."""

    def make(*after: tuple[int, str]) -> int:
        spec = jobs.Spec(worker_class_id=1, command="echo child", held=True)
        with db.write(engine) as conn:
            (job_id,) = jobs.create(conn, [spec], 7, "alice")
            chains.add(conn, job_id, [chains.After(p, on) for p, on in after])
        return job_id

    return make


def state(engine: sa.Engine, job_id: int) -> State:
    return get(engine, job_id).state


def test_states_chains_names_are_job_states() -> None:
    names = {s.value for s in State}
    assert {chains.HELD, chains.WAITING, chains.SKIPPED, chains.DELAYED} <= names
    assert set(chains.MEETS) == {s.value for s in jobs.FINAL}


def test_release_on_success(
    engine: sa.Engine, job_factory: JobFactory, held: Any, worker: int
) -> None:
    parent = job_factory()
    child = held((parent, "success"))
    assert state(engine, child) == State.HELD
    run(engine, parent, worker, State.DONE)
    assert state(engine, child) == State.WAITING
    with db.read(engine) as conn:
        links = chains.links(conn, child)
    assert [(p.id, p.met, p.state) for p in links.parents] == [(parent, True, "done")]
    assert links.waiting_for() is None


def test_held_jobs_are_not_in_the_queue(
    engine: sa.Engine, job_factory: JobFactory, held: Any, worker: int
) -> None:
    parent = job_factory()
    child = held((parent, "success"))
    with db.write(engine) as conn:
        taken = jobs.take(conn, worker, 1, 10)
    assert [j.id for j in taken] == [parent]
    assert state(engine, child) == State.HELD


def test_skip_on_failure(
    engine: sa.Engine, job_factory: JobFactory, held: Any, worker: int
) -> None:
    parent = job_factory()
    child = held((parent, "success"))
    run(engine, parent, worker, State.FAILED)
    job = get(engine, child)
    assert job.state == State.SKIPPED
    assert job.error == f"job {parent} ended failed"
    assert job.finished_at is not None


def test_any_runs_after_a_failure(
    engine: sa.Engine, job_factory: JobFactory, held: Any, worker: int
) -> None:
    parent = job_factory()
    child = held((parent, "any"))
    run(engine, parent, worker, State.TIMEOUT)
    assert state(engine, child) == State.WAITING


def test_on_failure(engine: sa.Engine, job_factory: JobFactory, held: Any, worker: int) -> None:
    failing, succeeding = job_factory(), job_factory()
    after_fail = held((failing, "failure"))
    not_run = held((succeeding, "failure"))
    run(engine, failing, worker, State.FAILED)
    run(engine, succeeding, worker, State.DONE)
    assert state(engine, after_fail) == State.WAITING
    assert get(engine, not_run).error == f"job {succeeding} ended done"


def test_waits_for_every_parent(
    engine: sa.Engine, job_factory: JobFactory, held: Any, worker: int
) -> None:
    first, second = job_factory(), job_factory()
    child = held((first, "success"), (second, "any"))
    run(engine, first, worker, State.DONE)
    assert state(engine, child) == State.HELD
    with db.read(engine) as conn:
        assert chains.links(conn, child).waiting_for() == f"waits for job {second} to end"
    run(engine, second, worker, State.FAILED)
    assert state(engine, child) == State.WAITING


def test_a_retried_parent_decides_by_its_last_attempt(
    engine: sa.Engine, job_factory: JobFactory, held: Any, worker: int
) -> None:
    parent = job_factory(retries=2)
    child = held((parent, "success"))
    run(engine, parent, worker, State.FAILED)
    assert state(engine, child) == State.HELD  # a retry is queued: not over yet
    with db.read(engine) as conn:
        retry = conn.execute(sa.select(jobs.J.c.id).where(jobs.J.c.retry_of == parent)).scalar()
        assert retry is not None
        assert [p.id for p in chains.links(conn, child).parents] == [retry]
    run(engine, retry, worker, State.LOST)  # through finish: a lost report also retries
    assert state(engine, child) == State.HELD
    with db.read(engine) as conn:
        last = conn.execute(sa.select(jobs.J.c.id).where(jobs.J.c.retry_of == retry)).scalar()
    assert last is not None
    run(engine, last, worker, State.DONE)
    assert state(engine, child) == State.WAITING


def test_a_parent_out_of_retries_skips(
    engine: sa.Engine, job_factory: JobFactory, held: Any, worker: int
) -> None:
    parent = job_factory(retries=1)
    child = held((parent, "success"))
    run(engine, parent, worker, State.FAILED)
    with db.read(engine) as conn:
        retry = conn.execute(sa.select(jobs.J.c.id).where(jobs.J.c.retry_of == parent)).scalar()
    run(engine, retry, worker, State.FAILED)
    assert get(engine, child).error == f"job {retry} ended failed"


def test_a_lost_parent(engine: sa.Engine, job_factory: JobFactory, held: Any, worker: int) -> None:
    parent = job_factory()
    child, cleanup = held((parent, "success")), held((parent, "failure"))
    start(engine, parent, worker)
    do(engine, jobs.lose_worker_jobs, worker, "gone")
    assert get(engine, child).error == f"job {parent} ended lost"
    assert state(engine, cleanup) == State.WAITING


def test_kill_of_a_parent(engine: sa.Engine, job_factory: JobFactory, held: Any) -> None:
    parent = job_factory()
    child, cleanup = held((parent, "success")), held((parent, "any"))
    do(engine, jobs.request_kill, parent)
    assert get(engine, child).error == f"job {parent} ended killed"
    assert state(engine, cleanup) == State.WAITING


def test_kill_of_a_held_job(engine: sa.Engine, job_factory: JobFactory, held: Any) -> None:
    parent = job_factory()
    child = held((parent, "success"))
    grandchild = held((child, "success"))
    do(engine, jobs.request_kill, child)
    assert state(engine, child) == State.KILLED
    assert get(engine, grandchild).error == f"job {child} ended killed"


def test_delete_of_a_parent(engine: sa.Engine, job_factory: JobFactory, held: Any) -> None:
    parent = job_factory()
    child, cleanup = held((parent, "success")), held((parent, "any"))
    do(engine, jobs.delete, parent)
    for job_id in (child, cleanup):
        assert get(engine, job_id).error == f"job {parent} was deleted"
    with db.read(engine) as conn:
        assert [(p.id, p.state) for p in chains.links(conn, child).parents] == [(parent, None)]
    do(engine, jobs.delete, child)  # a held or skipped job may go too
    with db.read(engine) as conn:
        assert chains.parents_of(conn, child) == []


def test_skips_cascade(engine: sa.Engine, job_factory: JobFactory, held: Any, worker: int) -> None:
    parent = job_factory()
    child = held((parent, "success"))
    grandchild = held((child, "success"))
    cleanup = held((child, "any"))
    great = held((grandchild, "failure"))
    run(engine, parent, worker, State.FAILED)
    assert get(engine, child).error == f"job {parent} ended failed"
    assert get(engine, grandchild).error == f"job {child} ended skipped"
    assert get(engine, great).error == f"job {grandchild} ended skipped"
    assert state(engine, cleanup) == State.WAITING


def test_a_parent_that_already_ended_decides_at_once(
    engine: sa.Engine, job_factory: JobFactory, held: Any, worker: int
) -> None:
    done, failed = job_factory(), job_factory()
    run(engine, done, worker, State.DONE)
    run(engine, failed, worker, State.FAILED)
    assert state(engine, held((done, "success"))) == State.WAITING
    assert get(engine, held((failed, "success"))).error == f"job {failed} ended failed"
    assert get(engine, held((done, "success"), (failed, "any"))).state == State.WAITING


def test_a_parent_already_retried_is_followed(
    engine: sa.Engine, job_factory: JobFactory, held: Any, worker: int
) -> None:
    parent = job_factory(retries=1)
    run(engine, parent, worker, State.FAILED)
    child = held((parent, "success"))
    assert state(engine, child) == State.HELD
    with db.read(engine) as conn:
        (link,) = chains.links(conn, child).parents
    assert link.id != parent and link.state == "waiting"


def test_a_parent_named_with_its_retry_keeps_both_conditions(
    engine: sa.Engine, job_factory: JobFactory, held: Any, worker: int
) -> None:
    """Naming a retried parent and its retry: both conditions are on the retry (one of
    them was dropped, whichever came second in the submission)."""
    parent = job_factory(retries=2)
    run(engine, parent, worker, State.FAILED)
    with db.read(engine) as conn:
        retry = chains.latest_attempt(conn, parent)
    assert retry != parent
    strict = held((retry, "success"), (parent, "any"))
    with db.read(engine) as conn:
        assert [(k.id, k.on) for k in chains.links(conn, strict).parents] == [(retry, "success")]
    contradictory = held((retry, "failure"), (parent, "success"))
    after = get(engine, contradictory)
    assert after.state == State.SKIPPED
    assert after.error == f"job {retry} cannot both succeed and fail"
    run(engine, retry, worker, State.FAILED)  # its own retry, then; strict follows it
    with db.read(engine) as conn:
        (link,) = chains.links(conn, strict).parents
    assert link.id != retry and link.on == "success" and state(engine, strict) == State.HELD


def test_restart_of_a_skipped_child_checks_again(
    engine: sa.Engine, job_factory: JobFactory, held: Any, worker: int
) -> None:
    parent = job_factory()
    child = held((parent, "failure"))
    run(engine, parent, worker, State.DONE)
    assert state(engine, child) == State.SKIPPED
    again = do(engine, jobs.restart, child, 7, "alice")
    job = get(engine, again)
    assert job.state == State.SKIPPED and job.error == f"job {parent} ended done"
    other = job_factory()
    waiting = held((other, "success"))
    do(engine, jobs.request_kill, waiting)
    rerun = do(engine, jobs.restart, waiting, 7, "alice")
    assert state(engine, rerun) == State.HELD  # its parent has not ended yet
    restarted_parent = do(engine, jobs.restart, parent, 7, "alice")
    assert state(engine, restarted_parent) == State.WAITING
    assert state(engine, child) == State.SKIPPED  # a restart does not run the children


def test_retention_forgets_conditions(
    engine: sa.Engine, job_factory: JobFactory, held: Any, worker: int
) -> None:
    parent = job_factory()
    child = held((parent, "success"))
    run(engine, parent, worker, State.FAILED)
    with db.write(engine) as conn:
        cutoff = db.now(conn) + timedelta(days=1)
        assert jobs.delete_finished_before(conn, cutoff) == 2
        assert jobs.get_many(conn, [parent, child]) == []
        assert chains.parents_of(conn, child) == []


def test_retention_of_an_ended_parent_strands_no_held_child(
    engine: sa.Engine, job_factory: JobFactory, held: Any, worker_factory: Callable[[str], int]
) -> None:
    """Retention deletes finished jobs without deciding their children: it need not, an
    ended parent's rows are all decided (met, or the child skipped). A child still held
    for another parent is released by that one's end; one skipped stays skipped."""
    w1, w2 = worker_factory("w1"), worker_factory("w2")
    early, late, failed = job_factory(), job_factory(), job_factory()
    both = held((early, "success"), (late, "success"))
    wanted_failure = held((failed, "failure"), (late, "any"))
    lone = held((early, "failure"))
    run(engine, early, w1, State.DONE)
    run(engine, failed, w1, State.FAILED)
    assert state(engine, lone) == State.SKIPPED
    token = start(engine, late, w2)
    with db.write(engine) as conn:
        cutoff = db.now(conn) + timedelta(days=1)
        assert jobs.delete_finished_before(conn, cutoff) == 3  # early, failed, lone
    assert [state(engine, j) for j in (both, wanted_failure)] == [State.HELD, State.HELD]
    assert do(engine, jobs.finish, late, token, State.DONE, exit_code=0)
    assert [state(engine, j) for j in (both, wanted_failure)] == [State.WAITING] * 2


@pytest.mark.parametrize("rounds", [3])
def test_two_parents_ending_at_once_release_the_child_once(
    engine: sa.Engine,
    backend: str,
    job_factory: JobFactory,
    held: Any,
    worker_factory: Callable[[str], int],
    monkeypatch: pytest.MonkeyPatch,
    rounds: int,
) -> None:
    """Two workers record their parents' ends in two transactions open at the same time
    (PostgreSQL, MariaDB: really concurrent; SQLite serializes them)."""
    w1, w2 = worker_factory("w1"), worker_factory("w2")
    released: list[int] = []
    lock = threading.Lock()
    real_ended = chains.ended

    def counting(conn: sa.Connection, job_id: int, how: str) -> list[int]:
        got = real_ended(conn, job_id, how)
        with lock:
            released.extend(got)
        return got

    monkeypatch.setattr(chains, "ended", counting)
    for _ in range(rounds):
        released.clear()
        p1, p2 = job_factory(), job_factory()
        child = held((p1, "success"), (p2, "success"))
        end_together(engine, backend, {p1: start(engine, p1, w1), p2: start(engine, p2, w2)})
        assert released == [child]
        assert state(engine, child) == State.WAITING


def end_together(engine: sa.Engine, backend: str, tokens: dict[int, str]) -> None:
    """Record these running jobs ``done``, each in its own thread and transaction, at the
    same instant."""

    def ender(job_id: int) -> Callable[[sa.Connection], object]:
        return lambda conn: jobs.finish(conn, job_id, tokens[job_id], State.DONE, exit_code=0)

    assert together(engine, backend, *(ender(job_id) for job_id in tokens)) == [True, True]


def together(
    engine: sa.Engine, backend: str, *steps: Callable[[sa.Connection], object]
) -> list[object]:
    """Run each step in its own thread and write transaction, all open at the same time
    (PostgreSQL, MariaDB; SQLite's write transactions exclude each other, so there they
    start at the same time). What they returned."""
    barrier = threading.Barrier(len(steps), timeout=10)
    results: dict[int, object] = {}
    failures: list[BaseException] = []

    def run_step(i: int, step: Callable[[sa.Connection], object]) -> None:
        try:
            if backend == "sqlite":
                barrier.wait()
            with db.write(engine) as conn:
                if backend != "sqlite":
                    barrier.wait()  # every transaction open, none has written
                results[i] = step(conn)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run_step, args=(i, s)) for i, s in enumerate(steps)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not failures
    return [results[i] for i in range(len(steps))]


@pytest.mark.parametrize("outcome", [State.DONE, State.FAILED])
def test_a_parent_ending_while_its_child_is_submitted(
    engine: sa.Engine, backend: str, job_factory: JobFactory, worker: int, outcome: State
) -> None:
    """The parent's end and the child's submission in two transactions open at once: the
    child is decided by that end (released, or waiting for the retry), never left held
    for a parent that has ended."""
    for _ in range(3):
        parent = job_factory(retries=1)
        token = start(engine, parent, worker)

        def submit(conn: sa.Connection, parent: int = parent) -> int:
            spec = jobs.Spec(worker_class_id=1, command="echo child", held=True)
            (job_id,) = jobs.create(conn, [spec], 7, "alice")
            chains.add(conn, job_id, [chains.After(parent, "success")])
            return job_id

        def end(conn: sa.Connection, parent: int = parent, token: str = token) -> object:
            return jobs.finish(conn, parent, token, outcome, exit_code=1)

        ended, child = together(engine, backend, end, submit)
        assert ended is True and isinstance(child, int)
        with db.read(engine) as conn:
            (link,) = chains.links(conn, child).parents
        if outcome == State.DONE:
            assert state(engine, child) == State.WAITING
        else:  # the retry is the parent now
            assert state(engine, child) == State.HELD
            assert get(engine, link.id).retry_of == parent
            with db.write(engine) as conn:
                conn.execute(sa.delete(jobs.J).where(jobs.J.c.id == link.id))  # keep w1 free


def test_a_class_with_held_jobs_is_in_use(engine: sa.Engine, job_factory: JobFactory) -> None:

    with db.write(engine) as conn:
        gpu = classes.create(conn, "gpu").id
    parent = job_factory(worker_class_id=gpu)
    spec = jobs.Spec(worker_class_id=gpu, command="echo child", held=True)
    with db.write(engine) as conn:
        (child,) = jobs.create(conn, [spec], 7, "alice")
        chains.add(conn, child, [chains.After(parent, "success")])
    do(engine, jobs.delete, parent)  # the child is skipped: nothing of the class is left
    assert state(engine, child) == State.SKIPPED
    spec2 = jobs.Spec(worker_class_id=gpu, command="echo held", held=True)
    other = job_factory()
    with db.write(engine) as conn:
        (held_id,) = jobs.create(conn, [spec2], 7, "alice")
        chains.add(conn, held_id, [chains.After(other, "success")])
    with pytest.raises(errors.Conflict, match="1 held, delayed, waiting, assigned or running"):
        do(engine, classes.delete, gpu)


def test_a_fan_out_is_released_in_one_end(
    engine: sa.Engine, job_factory: JobFactory, worker: int
) -> None:
    parent = job_factory()
    spec = jobs.Spec(worker_class_id=1, command="echo child", held=True)
    with db.write(engine) as conn:
        children = jobs.create(conn, [spec] * 600, 7, "alice")  # more than a lock chunk
        for child in children:
            chains.add(conn, child, [chains.After(parent, "success")])
    run(engine, parent, worker, State.DONE)
    with db.read(engine) as conn:
        got = {j.state for j in jobs.get_many(conn, children)}
    assert got == {State.WAITING}


@pytest.mark.parametrize("outcome", [State.DONE, State.FAILED])
def test_a_fan_out_is_decided_in_few_statements(
    engine: sa.Engine, job_factory: JobFactory, worker: int, outcome: State
) -> None:
    """1 200 children of one parent are released, or skipped with their notifications, in
    a few statements per 500 (one per child held the assign lock ~10 s per 20 000)."""
    parent = job_factory()
    spec = jobs.Spec(worker_class_id=1, command="echo child", held=True)
    with db.write(engine) as conn:
        children = jobs.create(conn, [spec] * 1200, 7, "alice")
        row = {"parent_id": parent, "on_end": "success", "met": False}
        conn.execute(sa.insert(chains.D), [{**row, "child_id": c} for c in children])
    token = start(engine, parent, worker)
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        assert do(engine, jobs.finish, parent, token, outcome, exit_code=0)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert len(statements) < 40, statements
    with db.read(engine) as conn:
        got = {j.state for j in jobs.get_many(conn, children)}
        reasons = conn.execute(
            sa.select(jobs.J.c.error).where(jobs.J.c.id.in_(children[:10])).distinct()
        ).scalars()
        assert set(reasons) == ({None} if outcome == State.DONE else {f"job {parent} ended failed"})
    assert got == {State.WAITING if outcome == State.DONE else State.SKIPPED}


def _lock_waits(engine: sa.Engine, backend: str) -> int:
    """How many statements of this test's database wait for a row lock now (MariaDB:
    how many update or delete jobs, which here only waiting makes last; its innodb_trx does not
    list a transaction that has not written yet, even while it waits for a lock)."""
    if backend == "postgresql":
        query = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
    else:
        query = (
            "SELECT count(*) FROM information_schema.processlist"
            " WHERE db = DATABASE() AND command = 'Query'"
            " AND (info LIKE 'UPDATE jobs %%' OR info LIKE 'DELETE FROM jobs %%')"
        )
    with engine.connect() as conn:
        return int(conn.execute(sa.text(query)).scalar_one())


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])  # SQLite: one writer at a time
@pytest.mark.parametrize("moved", ["finished", "unassigned"])
@pytest.mark.parametrize("action", ["kill", "delete"])
def test_a_kill_or_delete_and_a_jobs_end_or_unassign_do_not_deadlock(
    engine: sa.Engine, backend: str, job_factory: JobFactory, worker: int, moved: str, action: str
) -> None:
    """A worker's end (jobs.finish, then chains.ended) and the monitor's unassign (then
    lose_worker_jobs, assign_waiting) hold the job's row, then take the assign lock. A
    user's kill or delete of that running or assigned job arriving in between must not
    hold the assign lock while it waits for the row: that was a deadlock (one side
    rolled back; MariaDB's DELETE by key waits for the row whatever its state)."""
    job = job_factory()
    if moved == "finished":
        token = start(engine, job, worker)
    else:
        assert do(engine, jobs.assign, job, worker)
    admin = auth.User(1, "root", auth.Role.ADMIN, True, None, False, datetime.now(UTC))
    failures: list[BaseException] = []
    refused: list[errors.Conflict] = []

    def act() -> None:
        try:
            (job_actions.kill if action == "kill" else job_actions.delete)(engine, admin, job)
        except errors.Conflict as exc:
            refused.append(exc)
        except BaseException as exc:
            failures.append(exc)

    actor = threading.Thread(target=act)
    with db.write(engine) as conn:
        if moved == "finished":  # the worker's end has moved the row
            assert jobs._moved(
                conn,
                jobs._FINISH,
                {"b_id": job, "b_token": token, "b_state": "done", "b_exit_code": 0,
                 "b_signal": None, "b_error": None, "b_output_bytes": None, "b_pid": None},
            )  # fmt: skip
        else:  # the monitor has put the job of a vanished worker back in the queue
            assert jobs.unassign_worker(conn, worker) == 1
        actor.start()
        deadline = time.monotonic() + 10
        while actor.is_alive() and _lock_waits(engine, backend) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # The user's call waits for the job's row (PostgreSQL's delete judges the row as
        # its statement found it, running or assigned, and does not wait).
        assert _lock_waits(engine, backend) == 1 or (action == "delete" and not actor.is_alive())
        db.lock_row(conn, "assign")  # what the end, or the monitor, does next
    actor.join(timeout=30)
    assert not actor.is_alive() and not failures
    with db.read(engine) as conn:
        after = conn.execute(sa.select(jobs.J.c.state).where(jobs.J.c.id == job)).scalar()
    if action == "kill" and moved == "finished":  # over before the kill came: 409
        assert after == State.DONE and len(refused) == 1
    elif action == "kill":
        assert after == State.KILLED and not refused
    else:  # PostgreSQL judges the row as it was (assigned, running: 409), MariaDB as it is
        assert (after is None and not refused) or len(refused) == 1


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])  # SQLite: one writer at a time
def test_the_monitor_losing_jobs_and_a_late_end_do_not_deadlock(
    engine: sa.Engine,
    backend: str,
    job_factory: JobFactory,
    worker_factory: Callable[[str], int],
) -> None:
    """Two silent workers, one running a job, the other two (one of which has retries
    left), and the second reports the end of its last job just as the monitor gives them
    up. The monitor moves every row before it takes the assign lock for the ends (a retry,
    chains.ended): it took it after the first lost job and then waited for the end's row,
    while the end, holding that row, waited for the lock."""
    w1, w2 = worker_factory("w1"), worker_factory("w2")
    r1, r2, r3 = job_factory(), job_factory(retries=1), job_factory()
    start(engine, r1, w1)
    start(engine, r2, w2)
    token = start(engine, r3, w2)
    with db.write(engine) as conn:
        before = db.now(conn) - timedelta(seconds=600)
        W = schema.workers
        conn.execute(sa.update(W).where(W.c.id.in_([w1, w2])).values(last_heartbeat_at=before))
    failures: list[BaseException] = []
    gone: list[int] = []

    def check() -> None:
        try:
            gone.extend(monitor.check_workers(engine))
        except BaseException as exc:
            failures.append(exc)

    checker = threading.Thread(target=check)
    with db.write(engine) as conn:
        assert jobs._moved(
            conn,
            jobs._FINISH,
            {"b_id": r3, "b_token": token, "b_state": "done", "b_exit_code": 0,
             "b_signal": None, "b_error": None, "b_output_bytes": None, "b_pid": None},
        )  # fmt: skip
        checker.start()
        deadline = time.monotonic() + 10
        while checker.is_alive() and _lock_waits(engine, backend) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert _lock_waits(engine, backend) == 1  # the monitor waits for r3's row
        db.lock_row(conn, "assign")  # what the end does next (chains.ended)
    checker.join(timeout=30)
    assert not checker.is_alive() and not failures
    assert sorted(gone) == sorted([w1, w2])
    assert [state(engine, j) for j in (r1, r2, r3)] == [State.LOST, State.LOST, State.DONE]
    with db.read(engine) as conn:
        retry = conn.execute(sa.select(jobs.J.c.state).where(jobs.J.c.retry_of == r2)).scalar()
    assert retry == State.WAITING
