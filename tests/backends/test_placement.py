"""Placement on every backend: jobs go only where their request and constraints fit, no
worker is ever over its capacity, a worker's take respects both, and a waiting job says why."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from jobbalancer import balancer, db, jobs
from jobbalancer import registry as workers
from jobbalancer.db import schema
from jobbalancer.jobs import State

J = schema.jobs
GiB = 1 << 30


def add_worker(engine: sa.Engine, name: str, max_jobs: int = 10, **capacity: Any) -> int:
    with db.write(engine) as conn:
        worker_id, _ = workers.register(
            conn, name=name, host="test-host", worker_class="default", max_jobs=max_jobs,
            pid=4242, version="test", stats=workers.Stats(),
            capacity=workers.Capacity(**capacity),
        )  # fmt: skip
    return worker_id


def spec(**kw: Any) -> jobs.Spec:
    return jobs.Spec(worker_class_id=1, command="true", **kw)


def submit(engine: sa.Engine, *specs: jobs.Spec) -> list[int]:
    with db.write(engine) as conn:
        return balancer.submit(conn, list(specs), 7, "alice")


def get(engine: sa.Engine, job_id: int) -> jobs.Job:
    with db.read(engine) as conn:
        return jobs.get(conn, job_id)


def used(engine: sa.Engine) -> dict[int, tuple[float, int, int, int]]:
    """Per worker: requested cpus, memory, gpus and jobs of its assigned/running jobs."""
    with db.read(engine) as conn:
        rows = conn.execute(
            sa.select(
                J.c.worker_id,
                sa.func.sum(J.c.cpus),
                sa.func.sum(J.c.memory),
                sa.func.sum(J.c.gpus),
                sa.func.count(),
            )
            .where(J.c.state.in_([s.value for s in jobs.ACTIVE]))
            .group_by(J.c.worker_id)
        )
        return {r[0]: (float(r[1] or 0), int(r[2] or 0), int(r[3] or 0), int(r[4])) for r in rows}


def test_a_job_goes_only_to_a_worker_with_room_and_the_labels_it_wants(
    engine: sa.Engine,
) -> None:
    # Given a small worker and a big one with ffmpeg 6
    small = add_worker(engine, "small", cpus=2, memory=4 * GiB, gpus=0)
    big = add_worker(engine, "big", cpus=16, memory=64 * GiB, gpus=2, labels={"ffmpeg": "6"})
    # When jobs ask for memory, gpus, labels, or nothing
    mem, gpu, label, plain = submit(
        engine,
        spec(memory=8 * GiB),
        spec(gpus=1),
        spec(constraints={"ffmpeg": "6"}),
        spec(constraints={"ffmpeg": "!6"}),
    )
    # Then each lands where it fits
    assert get(engine, mem).worker_id == big
    assert get(engine, gpu).worker_id == big
    assert get(engine, label).worker_id == big
    assert get(engine, plain).worker_id == small


def test_a_job_that_fits_nowhere_now_waits_with_a_reason_and_starts_once_room_frees(
    engine: sa.Engine,
) -> None:
    # Given a worker with 4 GiB, 3 GiB of it taken
    w = add_worker(engine, "render-2", cpus=4, memory=4 * GiB)
    (first,) = submit(engine, spec(memory=3 * GiB))
    # When a job asks for 2 GiB, and a job with no request comes after it
    second, third = submit(engine, spec(memory=2 * GiB), spec())
    # Then the big one waits and says why; the small one passes it
    job = get(engine, second)
    assert job.state == State.WAITING
    assert job.pending_reason == "needs 2 GiB memory; the most free is 1 GiB on render-2"
    assert get(engine, third).worker_id == w
    # When the first ends, then the second gets its place
    with db.write(engine) as conn:
        token = get(engine, first).token
        assert token is not None
        jobs.claim(conn, first, w, token)
        jobs.finish(conn, first, token, State.DONE, exit_code=0)
        balancer.assign_waiting(conn)
    assert get(engine, second).worker_id == w


def test_pending_reasons_name_what_is_in_the_way(engine: sa.Engine) -> None:
    # Given no worker at all
    (nobody,) = submit(engine, spec())
    assert get(engine, nobody).pending_reason == "no online worker of class default"
    # Given a full worker
    add_worker(engine, "w1", max_jobs=1, cpus=2, memory=4 * GiB)
    assert get(engine, nobody).state == State.WAITING  # the pass comes with a tick
    with db.write(engine) as conn:
        balancer.assign_waiting(conn)
    (full,) = submit(engine, spec())
    assert get(engine, full).pending_reason == "worker w1 of class default is full (1/1 slots)"
    # A label nobody has
    (label,) = submit(engine, spec(constraints={"ffmpeg": "6"}))
    assert get(engine, label).pending_reason == "no worker has label ffmpeg=6"
    # The leader's pass rewrites the class's reason when it changes
    with db.write(engine) as conn:
        conn.execute(sa.update(schema.workers).values(enabled=False))
        balancer.assign_waiting(conn)
    assert get(engine, full).pending_reason == "worker w1 is disabled"


def test_concurrent_submissions_never_overcommit_any_resource(engine: sa.Engine) -> None:
    # Given two workers with 4 cpus, 8 GiB and 2 gpus each, and many slots
    for name in ("w1", "w2"):
        add_worker(engine, name, max_jobs=50, cpus=4, memory=8 * GiB, gpus=2)
    threads, per_thread = 4, 12
    start = threading.Barrier(threads)
    shapes = [
        {"cpus": 1.5},
        {"memory": 3 * GiB},
        {"gpus": 1},
        {"cpus": 0.5, "memory": GiB},
    ]

    def client(n: int) -> None:
        start.wait()
        for i in range(per_thread):
            submit(engine, spec(**shapes[(n + i) % len(shapes)]))
            for cpus, memory, gpus, _ in used(engine).values():
                assert cpus <= 4 + 1e-9 and memory <= 8 * GiB and gpus <= 2

    # When four clients submit at once
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(client, range(threads)))
    # Then no worker is over any of its resources, and jobs that did not fit wait
    final = used(engine)
    assert all(c <= 4 + 1e-9 and m <= 8 * GiB and g <= 2 for c, m, g, _ in final.values())
    with db.read(engine) as conn:
        waiting = conn.execute(
            sa.select(sa.func.count()).where(J.c.state == State.WAITING.value)
        ).scalar_one()
    assert waiting > 0
    # And the leader's pass finds nothing more that fits
    with db.write(engine) as conn:
        assert balancer.assign_waiting(conn) == 0


def test_a_worker_takes_only_what_fits_its_free_resources_and_labels(
    engine: sa.Engine,
) -> None:
    # Given a worker with 4 cpus and label ssd, and a queue: 3 cpus, 3 cpus, a job for
    # another label, 1 cpu, nothing
    w = add_worker(engine, "w1", max_jobs=10, cpus=4, memory=8 * GiB, labels={"ssd": ""})
    with db.write(engine) as conn:
        ids = jobs.create(
            conn,
            [
                spec(cpus=3),
                spec(cpus=3),
                spec(constraints={"hdd": True}),
                spec(cpus=1),
                spec(),
            ],
            None,
            None,
        )
    # When it fills its free slots
    with db.write(engine) as conn:
        taken = balancer.take_for_worker(conn, w)
    # Then it took the first 3-cpu job, the 1-cpu job and the plain one, in queue order
    assert [j.id for j in taken] == [ids[0], ids[3], ids[4]]
    assert all(get(engine, i).state == State.RUNNING for i in (ids[0], ids[3], ids[4]))
    # And the others still wait, unassigned, as they were
    for i in (ids[1], ids[2]):
        job = get(engine, i)
        assert (job.state, job.worker_id, job.token) == (State.WAITING, None, None)
    assert used(engine)[w][0] == 4


def test_jobs_that_come_without_a_reason_get_their_class_reason_on_the_next_pass(
    engine: sa.Engine,
) -> None:
    # Given a full worker, and the leader's pass that wrote the class's reason
    add_worker(engine, "w1", max_jobs=1)
    submit(engine, spec())  # it takes the only slot
    (first,) = submit(engine, spec())
    with db.write(engine) as conn:
        balancer.assign_waiting(conn)
    full = "worker w1 of class default is full (1/1 slots)"
    assert get(engine, first).pending_reason == full
    # When a job comes another way than a submission (a retry, a restart: no reason yet)
    with db.write(engine) as conn:
        (later,) = jobs.create(conn, [spec()], None, None)
    assert get(engine, later).pending_reason is None
    # Then the next pass gives it the class's reason (the reason itself did not change)
    with db.write(engine) as conn:
        balancer.assign_waiting(conn)
    assert get(engine, later).pending_reason == full


def test_a_job_back_from_a_vanished_worker_drops_its_old_reason(engine: sa.Engine) -> None:
    # Given a job that waited for a worker, then was placed on the one that came
    (job,) = submit(engine, spec())
    assert get(engine, job).pending_reason == "no online worker of class default"
    w1 = add_worker(engine, "w1", max_jobs=1)
    with db.write(engine) as conn:
        balancer.assign_waiting(conn)
    assert get(engine, job).state == State.ASSIGNED
    # When that worker vanishes before starting it
    with db.write(engine) as conn:
        assert jobs.unassign_worker(conn, w1) == 1
    # Then it waits again without the old reason (the next pass gives it its own)
    assert (get(engine, job).state, get(engine, job).pending_reason) == (State.WAITING, None)


def test_one_job_read_says_why_it_waits_now_not_what_a_pass_wrote_long_ago(
    engine: sa.Engine,
) -> None:
    # Given a full worker and a job whose stored reason is old (deep in a long queue)
    add_worker(engine, "w1", max_jobs=1, cpus=2, memory=4 * GiB)
    submit(engine, spec())
    (deep, big) = submit(engine, spec(), spec(memory=8 * GiB, cpus=0))
    with db.write(engine) as conn:
        conn.execute(sa.update(J).values(pending_reason="no online worker of class default"))
    # When one job is read for its page, `show` or the API
    with db.read(engine) as conn:
        now = balancer.with_current_reason(conn, jobs.get(conn, deep))
        too_big = balancer.with_current_reason(conn, jobs.get(conn, big))
        running = balancer.with_current_reason(conn, jobs.get(conn, 1))
    # Then its reason is today's, and a job not waiting is left as it is
    assert now.pending_reason == "worker w1 of class default is full (1/1 slots)"
    assert too_big.pending_reason == "worker w1 of class default is full (1/1 slots)"
    assert running.state == State.ASSIGNED
