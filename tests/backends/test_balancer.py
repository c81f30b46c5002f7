"""The balancer on every backend: who gets each job, in which order, and never too many."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from jobbalancer import balancer, classes, db, jobs, settings
from jobbalancer import registry as workers
from jobbalancer.db import schema
from jobbalancer.jobs import State

J, W, C = schema.jobs, schema.workers, schema.worker_classes
DEFAULT_CLASS = 1

WorkerFactory = Callable[..., int]


def make_class(engine: sa.Engine, name: str, max_jobs: int) -> int:
    with db.write(engine) as conn:
        return classes.create(conn, name, max_jobs).id


def spec(**kw: Any) -> jobs.Spec:
    kw.setdefault("worker_class_id", DEFAULT_CLASS)
    kw.setdefault("command", "true")
    return jobs.Spec(**kw)


def submit(engine: sa.Engine, *specs: jobs.Spec) -> list[int]:
    """One submission (one API request): its job ids."""
    with db.write(engine) as conn:
        return balancer.submit(conn, list(specs) or [spec()], 7, "alice")


def submit_one(engine: sa.Engine, **kw: Any) -> int:
    (job_id,) = submit(engine, spec(**kw))
    return job_id


def get(engine: sa.Engine, job_id: int) -> jobs.Job:
    with db.read(engine) as conn:
        return jobs.get(conn, job_id)


def worker_of(engine: sa.Engine, job_ids: list[int]) -> list[int | None]:
    return [get(engine, i).worker_id for i in job_ids]


def active_per_worker(engine: sa.Engine) -> Counter[int]:
    with db.read(engine) as conn:
        rows = conn.execute(
            sa.select(J.c.worker_id, sa.func.count())
            .where(J.c.state.in_([s.value for s in jobs.ACTIVE]))
            .group_by(J.c.worker_id)
        )
        return Counter({worker_id: n for worker_id, n in rows})


def states(engine: sa.Engine) -> Counter[str]:
    with db.read(engine) as conn:
        rows = conn.execute(sa.select(J.c.state, sa.func.count()).group_by(J.c.state))
        return Counter({state: n for state, n in rows})


def finish_and_refill(engine: sa.Engine, job_id: int) -> None:
    """What a worker does when a job ends: claim it (if not yet), report it, fill its slot."""
    with db.write(engine) as conn:
        job = jobs.get(conn, job_id)
        assert job.worker_id is not None and job.token is not None
        jobs.claim(conn, job_id, job.worker_id, job.token)
        assert jobs.finish(conn, job_id, job.token, State.DONE, exit_code=0)
        balancer.assign_waiting(conn, worker_id=job.worker_id)


def assign_waiting(engine: sa.Engine, **kw: Any) -> int:
    with db.write(engine) as conn:
        return balancer.assign_waiting(conn, **kw)


def set_algorithm(engine: sa.Engine, algorithm: str) -> None:
    with db.write(engine) as conn:
        settings.save_tunables(conn, {"algorithm": algorithm})


# -- submission ---------------------------------------------------------------------------


def test_submit_assigns_at_once_when_a_slot_is_free_else_waits(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    # Given one worker with one slot
    w1 = worker_factory("w1", max_jobs=1)
    # When a job is submitted, then it is assigned within the submission
    job = get(engine, submit_one(engine))
    assert (job.state, job.worker_id, job.worker_name) == (State.ASSIGNED, w1, "w1")
    assert job.token is not None
    # When another is submitted while the slot is taken, then it waits
    second = submit_one(engine)
    assert (get(engine, second).state, get(engine, second).worker_id) == (State.WAITING, None)
    # When a second worker has joined and a third job arrives, then the older job goes first
    w2 = worker_factory("w2", max_jobs=1)
    third = submit_one(engine)
    assert worker_of(engine, [second, third]) == [w2, None]


def test_the_jobs_a_submission_assigned_are_returned_as_a_read_back_would_give_them(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    # Given a worker with two slots in a class of another name than the default
    cid = make_class(engine, "render", 4)
    w1 = worker_factory("w1", worker_class="render", max_jobs=2)
    # When three jobs are submitted at once (with fields of every kind set; whole numbers in
    # REAL columns: SQLite's RETURNING gives them as int where a read gives a float)
    full = dict(
        env={"A": "1"}, labels={"k": "v"}, params=["x"], priority=3, watchdog=60, cpus=1,
        retries=2, retry=jobs.RetryPolicy(delay=5, backoff=2, max_delay=60),
    )  # fmt: skip
    with db.write(engine) as conn:
        assigned: dict[int, jobs.Job] = {}
        ids = balancer.submit(
            conn, [spec(worker_class_id=cid, **full) for _ in range(3)], 7, "alice",
            assigned=assigned,
        )  # fmt: skip
        read_back = jobs.get_many(conn, ids)
    # Then where the database returns what an UPDATE wrote, the two assigned ones are
    # handed back exactly as reading them gives them, types too (the third waits: not
    # handed back)
    if engine.dialect.update_returning:
        assert sorted(assigned) == ids[:2]
        assert [repr(assigned[i]) for i in ids[:2]] == [repr(j) for j in read_back[:2]]
        assert isinstance(assigned[ids[0]].watchdog, float)
        assert {(j.worker_id, j.worker_name, j.worker_class) for j in assigned.values()} == {
            (w1, "w1", "render")
        }
        assert all(j.state == State.ASSIGNED and j.token for j in assigned.values())
    else:  # MariaDB: the submission reads them back
        assert assigned == {}
    assert [j.state for j in read_back] == [State.ASSIGNED, State.ASSIGNED, State.WAITING]


def test_a_lone_job_into_an_empty_queue_is_assigned_without_reading_the_queue(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    # Given a worker with one slot, and a way to see the statements a submission runs
    w1 = worker_factory("w1", max_jobs=1)
    seen: list[str] = []

    def record(_c: Any, _cur: Any, statement: str, *_rest: Any) -> None:
        seen.append(" ".join(statement.split()))

    def queue_reads() -> int:
        return sum(s.startswith("SELECT jobs.id, jobs.cpus") for s in seen)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        # When one job is submitted and no other job of its class waits, then it is
        # assigned, and the class's queue was not read (it is that job alone)
        first = submit_one(engine)
        assert queue_reads() == 0 and worker_of(engine, [first]) == [w1]
        # When the slot is taken, a second job waits; the slot frees without being filled
        second = submit_one(engine)
        assert get(engine, second).state == State.WAITING
        with db.write(engine) as conn:
            job = jobs.get(conn, first)
            assert job.token is not None
            jobs.claim(conn, first, w1, job.token)
            assert jobs.finish(conn, first, job.token, State.DONE, exit_code=0)
        # Then a third job, submitted while the second waits, reads the queue and lets the
        # older one go first
        seen.clear()
        third = submit_one(engine)
        assert queue_reads() == 1
        assert worker_of(engine, [second, third]) == [w1, None]
        # And a job that starts later, alone, with a slot free: not taken for the queue
        # (it is delayed), the queue read as before, and the job stays delayed
        w2 = worker_factory("w2", max_jobs=1)
        seen.clear()
        later = submit_one(engine, delay=3600.0)
        assert get(engine, later).state == State.DELAYED and queue_reads() == 1
        assert worker_of(engine, [third]) == [w2]  # the queue it read gave w2 the third job
        # And a job that fits no worker waits while a slot is free: a lone job after it
        # reads the queue, passes it over and takes the slot
        w3 = worker_factory("w3", max_jobs=1)
        picky = submit_one(engine, constraints={"site": "nowhere"})
        seen.clear()
        fourth = submit_one(engine)
        assert queue_reads() == 1 and worker_of(engine, [picky, fourth]) == [None, w3]
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def test_jobs_go_only_to_workers_of_their_class(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    # Given a worker of the default class and one of class gpu (2 slots)
    cpu = worker_factory("cpu")
    gpu = worker_factory("gpu-1", worker_class="gpu", max_jobs=2)
    gpu_class = get_worker(engine, gpu).worker_class_id
    # When three gpu jobs and one default job are submitted
    gpu_jobs = submit(engine, *(spec(worker_class_id=gpu_class) for _ in range(3)))
    default_job = submit_one(engine)
    # Then gpu jobs run only on the gpu worker, and the third waits though cpu is idle
    assert worker_of(engine, gpu_jobs) == [gpu, gpu, None]
    assert get(engine, gpu_jobs[2]).state == State.WAITING
    assert worker_of(engine, [default_job]) == [cpu]


def get_worker(engine: sa.Engine, worker_id: int) -> workers.Worker:
    with db.read(engine) as conn:
        return workers.get(conn, worker_id)


def test_a_worker_takes_at_most_its_own_max_jobs_else_its_class(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    # Given class "small" allowing 3 jobs per worker, a worker relying on it, and one that
    # overrides it with 1
    small = make_class(engine, "small", max_jobs=3)
    by_class = worker_factory("by-class", worker_class="small")
    own = worker_factory("own", worker_class="small", max_jobs=1)
    assert (get_worker(engine, by_class).max_jobs, get_worker(engine, own).max_jobs) == (3, 1)
    # When more jobs arrive than the two can take
    ids = submit(engine, *(spec(worker_class_id=small) for _ in range(6)))
    # Then each runs as many as its limit allows, and the rest wait
    assert active_per_worker(engine) == {by_class: 3, own: 1}
    assert states(engine) == {State.ASSIGNED: 4, State.WAITING: 2}
    # And a full worker is no candidate even when asked for by id
    assert assign_waiting(engine, worker_id=by_class) == 0
    assert len(ids) == 6


def test_a_raised_limit_is_used_on_the_next_assignment(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    w1 = worker_factory("w1", max_jobs=1)
    submit(engine, spec(), spec(), spec())
    assert states(engine) == {State.ASSIGNED: 1, State.WAITING: 2}
    with db.write(engine) as conn:
        workers.update(conn, w1, {"max_jobs": 2})
    assert assign_waiting(engine) == 1
    with db.write(engine) as conn:
        workers.update(conn, w1, {"max_jobs": None})  # back to the class's 5
    assert assign_waiting(engine) == 1
    assert active_per_worker(engine) == {w1: 3}


def test_need_realtime_without_a_free_slot_is_occupied(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    # Given no worker at all: a realtime job is occupied, a normal one waits
    occupied, waiting = submit(engine, spec(need_realtime=True), spec())
    job = get(engine, occupied)
    assert (job.state, job.error) == (State.OCCUPIED, "no worker had a free slot")
    assert job.finished_at is not None
    assert get(engine, waiting).state == State.WAITING

    # Given a worker with one free slot (the waiting job took the other)
    w1 = worker_factory("w1", max_jobs=2)
    assert assign_waiting(engine) == 1
    # When two realtime jobs arrive together, then the first gets the slot
    first, second = submit(engine, spec(need_realtime=True), spec(need_realtime=True))
    assert (get(engine, first).state, get(engine, first).worker_id) == (State.ASSIGNED, w1)
    assert get(engine, second).state == State.OCCUPIED
    # And an occupied job never runs later, even when a slot frees up
    finish_and_refill(engine, first)
    assert get(engine, second).state == State.OCCUPIED


# -- the queue ----------------------------------------------------------------------------


def test_a_freed_slot_takes_the_highest_priority_then_the_oldest_job(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    # Given a worker with one slot, busy
    w1 = worker_factory("w1", max_jobs=1)
    busy = submit_one(engine)
    # And jobs waiting, submitted in this order
    low = submit_one(engine, priority=0)
    high_old = submit_one(engine, priority=5)
    mid = submit_one(engine, priority=2)
    high_new = submit_one(engine, priority=5)
    negative = submit_one(engine, priority=-3)
    assert states(engine) == {State.ASSIGNED: 1, State.WAITING: 5}
    # When the worker finishes one job after the other
    order = []
    current = busy
    for _ in range(5):
        finish_and_refill(engine, current)
        (current,) = [j for j in all_ids(engine) if get(engine, j).state == State.ASSIGNED]
        order.append(current)
        assert get(engine, current).worker_id == w1
    # Then the waiting jobs ran by priority, oldest first within one
    assert order == [high_old, high_new, mid, low, negative]


def all_ids(engine: sa.Engine) -> list[int]:
    with db.read(engine) as conn:
        return list(conn.execute(sa.select(J.c.id).order_by(J.c.id)).scalars())


def test_a_joining_worker_gets_the_waiting_jobs_in_order(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    # Given jobs waiting while no worker is there
    ids = submit(engine, spec(priority=1), spec(priority=9), spec(priority=1), spec())
    # When a worker with two slots joins and the balancer runs
    w1 = worker_factory("w1", max_jobs=2)
    assert assign_waiting(engine) == 2
    # Then it got the highest priority job and the older of the two with priority 1
    assert worker_of(engine, ids) == [w1, w1, None, None]
    # And a second worker joining gets the rest
    w2 = worker_factory("w2", max_jobs=2)
    assert assign_waiting(engine, worker_id=w2) == 2
    assert worker_of(engine, ids) == [w1, w1, w2, w2]
    assert assign_waiting(engine) == 0


def test_assign_waiting_for_one_worker_fills_only_its_slots(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    w1, w2 = worker_factory("w1", max_jobs=1), worker_factory("w2", max_jobs=1)
    set_algorithm(engine, "fill_first")
    a, b, c = submit(engine, spec(), spec(), spec())
    assert worker_of(engine, [a, b, c]) == [w1, w2, None]
    # w2 finishes first: its slot, not w1's, takes the waiting job
    with db.write(engine) as conn:
        job = jobs.get(conn, b)
        assert job.token is not None
        jobs.claim(conn, b, w2, job.token)
        jobs.finish(conn, b, job.token, State.DONE, exit_code=0)
        assert balancer.assign_waiting(conn, worker_id=w1) == 0
        assert balancer.assign_waiting(conn, worker_id=w2) == 1
    assert worker_of(engine, [c]) == [w2]


def test_disabled_draining_and_offline_workers_get_nothing(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    # Given a disabled worker, a draining one and an offline one
    disabled, draining, offline = (worker_factory(n) for n in ("disabled", "draining", "offline"))
    with db.write(engine) as conn:
        workers.update(conn, disabled, {"enabled": False})
        conn.execute(sa.update(W).where(W.c.id == draining).values(state="draining"))
        conn.execute(sa.update(W).where(W.c.id == offline).values(state="offline"))
        assert balancer.free_slots(conn) == 0
    # When jobs are submitted, then none is assigned
    ids = submit(engine, spec(), spec(), spec(need_realtime=True))
    assert [get(engine, i).state for i in ids] == [State.WAITING, State.WAITING, State.OCCUPIED]
    assert assign_waiting(engine) == 0
    # When the disabled worker is enabled again, then it takes the waiting jobs
    with db.write(engine) as conn:
        workers.update(conn, disabled, {"enabled": True})
    assert assign_waiting(engine) == 2
    assert worker_of(engine, ids[:2]) == [disabled, disabled]


def test_free_slots_counts_online_enabled_workers_by_class(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    worker_factory("a")  # 5 slots from the default class
    worker_factory("b", max_jobs=2)
    gpu = worker_factory("g", worker_class="gpu", max_jobs=1)
    gpu_class = get_worker(engine, gpu).worker_class_id
    submit_one(engine)
    with db.read(engine) as conn:
        assert balancer.free_slots(conn) == 5 + 2 + 1 - 1
        assert balancer.free_slots(conn, DEFAULT_CLASS) == 5 + 2 - 1
        assert balancer.free_slots(conn, gpu_class) == 1


# -- strategies in the database -------------------------------------------------------------


def test_round_robin_spreads_evenly_and_its_cursor_survives_a_restart(
    engine: sa.Engine, database_url: str, worker_factory: WorkerFactory
) -> None:
    # Given three workers and the default strategy
    w = [worker_factory(f"w{i}") for i in (1, 2, 3)]
    # When seven jobs are submitted one request at a time
    ids = [submit_one(engine) for _ in range(7)]
    # Then they went round in turn
    assert worker_of(engine, ids) == [w[0], w[1], w[2], w[0], w[1], w[2], w[0]]
    # When the server restarts (a new engine, nothing kept in memory)
    engine.dispose()
    restarted = db.connect(database_url)
    try:
        # Then the rotation continues where it stopped rather than at the first worker
        with db.write(restarted) as conn:
            (next_id,) = balancer.submit(conn, [spec()], None, None)
            assert settings.get_value(conn, balancer.CURSOR_KEY) == w[1]
        assert worker_of(restarted, [next_id]) == [w[1]]
    finally:
        restarted.dispose()


def test_a_lone_candidate_is_chosen_without_the_settings_and_the_rotation_goes_on(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    # Given two workers, one job sent to each in turn
    w = [worker_factory(f"w{i}") for i in (1, 2)]
    assert worker_of(engine, [submit_one(engine), submit_one(engine)]) == w
    # When the second is full, and jobs go to the first, its only candidate
    with db.write(engine) as conn:
        conn.execute(sa.update(W).where(W.c.id == w[1]).values(max_jobs=1))
    statements: list[str] = []

    def seen(*args: Any) -> None:
        statements.append(args[2])

    sa.event.listen(engine, "before_cursor_execute", seen)
    lone = submit_one(engine)
    sa.event.remove(engine, "before_cursor_execute", seen)
    # Then the settings (strategy, cursor) were neither read nor written
    assert worker_of(engine, [lone]) == [w[0]]
    assert not [sql for sql in statements if "settings" in sql]
    # And with two candidates again, the rotation goes on from the last it chose
    with db.write(engine) as conn:
        conn.execute(sa.update(W).where(W.c.id == w[1]).values(max_jobs=None))
        assert settings.get_value(conn, balancer.CURSOR_KEY) == w[1]
    assert worker_of(engine, [submit_one(engine), submit_one(engine)]) == w


def test_round_robin_spreads_one_batch_too(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    w = [worker_factory(f"w{i}") for i in (1, 2, 3)]
    ids = submit(engine, *(spec() for _ in range(9)))
    assert Counter(worker_of(engine, ids)) == {w[0]: 3, w[1]: 3, w[2]: 3}
    assert worker_of(engine, ids[:3]) == w


def test_switching_the_algorithm_takes_effect_on_the_next_assignment(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    # Given two workers (five slots each) under round_robin
    w1, w2 = worker_factory("w1"), worker_factory("w2")
    assert worker_of(engine, [submit_one(engine) for _ in range(2)]) == [w1, w2]
    # When an admin switches to fill_first, then the next jobs pack the first worker
    set_algorithm(engine, "fill_first")
    assert worker_of(engine, [submit_one(engine) for _ in range(3)]) == [w1, w1, w1]
    # When switched to least_loaded (w1 runs 4, w2 1), then w2 catches up
    set_algorithm(engine, "least_loaded")
    assert worker_of(engine, [submit_one(engine) for _ in range(3)]) == [w2, w2, w2]
    # When switched to random, then it only picks workers with a free slot: one left each
    set_algorithm(engine, "random")
    submit(engine, spec(), spec())
    assert active_per_worker(engine) == {w1: 5, w2: 5}


def test_least_loaded_balances_by_ratio_in_the_database(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    set_algorithm(engine, "least_loaded")
    big, small = worker_factory("big", max_jobs=4), worker_factory("small", max_jobs=2)
    ids = submit(engine, *(spec() for _ in range(6)))
    assert active_per_worker(engine) == {big: 4, small: 2}
    # big (0/4) ties small (0/2) and wins by id; then small (0/2) beats big (1/4)
    assert worker_of(engine, ids[:3]) == [big, small, big]


# -- concurrency ------------------------------------------------------------------------------


def test_concurrent_submissions_never_give_a_worker_more_than_max_jobs(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    # Given two workers with two slots each
    w1, w2 = worker_factory("w1", max_jobs=2), worker_factory("w2", max_jobs=2)
    threads, per_thread = 4, 25
    start = threading.Barrier(threads)
    finished = Counter[str]()

    def client(n: int) -> None:
        start.wait()
        for i in range(per_thread):
            with db.write(engine) as conn:
                balancer.submit(conn, [spec(labels={"thread": str(n)})], None, f"client{n}")
            # Whatever is committed at any moment never exceeds a worker's slots.
            assert max(active_per_worker(engine).values()) <= 2
            if i % 5 == 4:
                # Now and then a worker ends a job, which frees a slot and refills it.
                finished[str(n)] += finish_any(engine)

    # When four clients submit at once
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(client, range(threads)))
    # Then no worker ever got more than its two slots
    assert active_per_worker(engine) == {w1: 2, w2: 2}
    counts = states(engine)
    assert sum(counts.values()) == threads * per_thread
    assert counts[State.DONE] == sum(finished.values())
    # And no slot stayed free while jobs waited
    assert counts[State.WAITING] > 0
    assert assign_waiting(engine) == 0


def finish_any(engine: sa.Engine) -> int:
    """Claim and finish one assigned job, as its worker would; 1 if this caller did it."""
    with db.write(engine) as conn:
        row = conn.execute(
            sa.select(J.c.id, J.c.worker_id, J.c.token)
            .where(J.c.state == State.ASSIGNED)
            .order_by(J.c.id)
            .limit(1)
        ).first()
        if row is None or not jobs.claim(conn, row.id, row.worker_id, row.token):
            return 0  # another client took it meanwhile
        assert jobs.finish(conn, row.id, row.token, State.DONE, exit_code=0)
        balancer.assign_waiting(conn, worker_id=row.worker_id)
        return 1


# -- a worker filling its own freed slots ---------------------------------------------------


def take(engine: sa.Engine, worker_id: int) -> list[jobs.Job]:
    with db.write(engine) as conn:
        return balancer.take_for_worker(conn, worker_id)


def test_a_worker_takes_its_free_slots_in_queue_order_straight_to_running(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    # Given a worker with three slots, one busy, and jobs of two classes waiting
    w1 = worker_factory("w1", max_jobs=3)
    busy = submit_one(engine)
    other = make_class(engine, "other", 5)
    with db.write(engine) as conn:
        ids = jobs.create(conn, [spec(priority=p) for p in (0, 5, 0, 5)], None, None)
        foreign = jobs.create(conn, [spec(worker_class_id=other, priority=9)], None, None)
    # When it takes jobs for its free slots
    taken = take(engine, w1)
    # Then it got two, highest priority then oldest, running, each with a token that works
    assert [j.id for j in taken] == [ids[1], ids[3]]
    for job in taken:
        assert job.state == State.RUNNING and job.worker_id == w1 and job.worker_name == "w1"
        assert job.started_at is not None and job.assigned_at is not None
        assert get(engine, job.id).token == job.token
        with db.write(engine) as conn:
            assert job.token is not None
            assert jobs.finish(conn, job.id, job.token, State.DONE, exit_code=0)
            assert not jobs.claim(conn, job.id, w1, job.token)
    # And never a job of another class, nor more than its slots
    assert get(engine, foreign[0]).state == State.WAITING
    assert get(engine, busy).state == State.ASSIGNED
    assert [j.id for j in take(engine, w1)] == [ids[0], ids[2]]
    assert take(engine, w1) == []


def test_a_take_gives_a_fresh_token_that_fences_off_the_last_assignment(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    # Given a job taken, then given back (its worker vanished before it started)
    w1 = worker_factory("w1", max_jobs=1)
    with db.write(engine) as conn:
        (job_id,) = jobs.create(conn, [spec()], None, None)
    (first,) = take(engine, w1)
    with db.write(engine) as conn:
        conn.execute(sa.update(J).where(J.c.id == job_id).values(state=State.WAITING.value))
    # When it is taken again
    (second,) = take(engine, w1)
    # Then the old token no longer reports it, the new one does
    assert first.token != second.token
    with db.write(engine) as conn:
        assert first.token is not None and second.token is not None
        assert not jobs.finish(conn, job_id, first.token, State.DONE, exit_code=0)
        assert jobs.finish(conn, job_id, second.token, State.DONE, exit_code=0)


def test_workers_taking_while_clients_submit_never_exceed_their_slots_or_share_a_job(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    # Given two workers with two slots each, and jobs waiting
    ids = [worker_factory(f"w{i}", max_jobs=2) for i in range(2)]
    with db.write(engine) as conn:
        jobs.create(conn, [spec() for _ in range(40)], None, None)
    start = threading.Barrier(4)
    ran = Counter[int]()

    def worker(worker_id: int) -> None:
        start.wait()
        for _ in range(15):
            with db.write(engine) as conn:
                # What the server assigned to it, claimed; then its freed slots filled
                assigned = [
                    job for job in jobs.for_worker(conn, worker_id)
                    if jobs.claim(conn, job.id, worker_id, job.token or "")
                ]  # fmt: skip
                for job in assigned + balancer.take_for_worker(conn, worker_id):
                    ran[job.id] += 1
                    assert job.token is not None
                    assert jobs.finish(conn, job.id, job.token, State.DONE, exit_code=0)
            assert max(active_per_worker(engine).values(), default=0) <= 2

    def client() -> None:
        start.wait()
        for _ in range(10):
            submit(engine, spec())
            assert max(active_per_worker(engine).values(), default=0) <= 2

    # When both workers take and finish jobs while two clients submit more
    with ThreadPoolExecutor(4) as pool:
        for f in [pool.submit(worker, w) for w in ids] + [pool.submit(client) for _ in range(2)]:
            f.result()
    # Then no job ran twice and no worker ever held more than its slots
    assert ran and max(ran.values()) == 1
    assert states(engine)[State.DONE] == len(ran)
    assert max(active_per_worker(engine).values(), default=0) <= 2


def test_a_take_from_a_long_queue_takes_only_the_free_slots(
    engine: sa.Engine, worker_factory: WorkerFactory
) -> None:
    # Given a long queue (the database may then plan the take differently) and a worker
    # with two slots, one of them busy
    w1 = worker_factory("w1", max_jobs=2)
    busy = submit_one(engine)
    with db.write(engine) as conn:
        ids = jobs.create(conn, [spec() for _ in range(1000)], None, None)
    # When it takes jobs, again and again
    taken = [j.id for j in take(engine, w1)]
    # Then it got exactly its one free slot's worth, the oldest job
    assert taken == [ids[0]]
    assert take(engine, w1) == []
    assert active_per_worker(engine) == {w1: 2}
    assert states(engine) == {State.WAITING: 999, State.RUNNING: 1, State.ASSIGNED: 1}
    assert get(engine, busy).worker_id == w1
