"""Scale: per-job costs as the queue grows to 100 000 waiting jobs with 500 workers.

The workers are simulated rows (online, 2 slots each, both busy with a running job), so
the balancer sees a full cluster; the server is real, for the list API. Measured with the
job manager's and balancer's own functions, in the transactions the server and workers
use:

- submit: ``balancer.submit`` of one job (insert + a balancing pass that finds no slot);
- finish+assign: a worker's report path (``jobs.finish`` + ``assign_waiting`` of its freed
  slot, which takes the next waiting job);
- poll: a worker's ``jobs.for_worker``;
- balance pass: the server's periodic ``assign_waiting`` over all workers;
- list API: ``GET /api/v1/jobs`` first page, waiting jobs, and one worker's jobs;
- leader tick: the leader's release of due delayed jobs (none due here), its balancing
  pass, and its read of the earliest delayed job (when to wake), in one transaction.

Then the same at the last queue length with ``HELD`` more jobs ``held`` (each waiting for
one of the waiting jobs, with its ``job_dependencies`` row): the balancer and the workers' queues
never read held jobs, so the row should match the one above it. And then with ``DELAYED``
more jobs ``delayed`` (a ``not_before`` a day ahead): outside the queue's index too, and the
leader finds the due ones and the next wake-up on the head of (state, not_before), so
that row should match as well.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from bench.cluster import Cluster
from jobbalancer import balancer, db, jobs
from jobbalancer.db import schema

J, W, D = schema.jobs, schema.workers, schema.job_dependencies
WORKERS = 500
HELD = 100_000
DELAYED = 100_000
SLOTS = 2
TOKEN = "bench"  # noqa: S105 - a fencing token, not a secret


def _job_row(state: str, worker_id: int | None = None) -> dict[str, object]:
    return {
        "state": state, "command": "echo hi", "params": [], "env": {}, "labels": {},
        "worker_class_id": 1, "need_realtime": False, "priority": 0, "retries": 0,
        "attempt": 1, "kill_requested": False, "output_bytes": 0,
        "created_at": datetime.now(UTC), "worker_id": worker_id,
        "token": TOKEN if worker_id else None,
        "started_at": datetime.now(UTC) if worker_id else None,
    }  # fmt: skip


def _insert(engine: sa.Engine, rows: list[dict[str, object]]) -> None:
    for i in range(0, len(rows), 5000):
        with db.write(engine) as conn:
            conn.execute(sa.insert(J), rows[i : i + 5000])


def _setup_workers(engine: sa.Engine) -> list[int]:
    now = datetime.now(UTC)
    with db.write(engine) as conn:
        conn.execute(
            sa.insert(W),
            [
                {"name": f"sim-{i}", "host": "sim", "state": "online", "enabled": True,
                 "worker_class_id": 1, "max_jobs": SLOTS, "session": "sim", "version": "",
                 "started_at": now, "last_heartbeat_at": now}
                for i in range(WORKERS)
            ],
        )  # fmt: skip
        ids = list(conn.execute(sa.select(W.c.id).where(W.c.host == "sim")).scalars())
    _insert(engine, [_job_row("running", w) for w in ids for _ in range(SLOTS)])
    return ids


def _analyze(engine: sa.Engine) -> None:
    """Refresh the planner's statistics after a bulk insert, as autovacuum (PostgreSQL)
    and InnoDB's automatic statistics would soon do in a cluster that grew to this size."""
    sql = {"postgresql": "ANALYZE jobs", "mysql": "ANALYZE TABLE jobs", "sqlite": "ANALYZE"}
    with engine.connect() as conn:
        conn.exec_driver_sql(sql[db.backend(conn)])
        conn.commit()


def _timed(fn: Callable[[], object], reps: int) -> float:
    """Median ms of ``reps`` calls."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _measure(cluster: Cluster, worker_ids: list[int], reps: int) -> dict[str, float]:
    engine = cluster.engine
    spec = jobs.Spec(worker_class_id=1, command="echo hi")
    out: dict[str, float] = {}

    def submit() -> None:
        with db.write(engine) as conn:
            balancer.submit(conn, [spec], None, "bench")

    out["submit"] = _timed(submit, reps)

    # Each rep: one simulated worker finishes a running job; its slot takes the next one.
    # The job it gets is then marked running, so the cluster stays full.
    queue = iter(worker_ids)

    def finish_assign() -> None:
        worker = next(queue)
        with db.write(engine) as conn:
            job_id = conn.execute(
                sa.select(J.c.id).where(J.c.worker_id == worker, J.c.state == "running").limit(1)
            ).scalar_one()
            jobs.finish(conn, job_id, TOKEN, jobs.State.DONE, exit_code=0, output_bytes=0)
            assert balancer.assign_waiting(conn, worker_id=worker) == 1

    out["finish+assign"] = _timed(finish_assign, reps)
    with db.write(engine) as conn:
        conn.execute(
            sa.update(J).where(J.c.state == "assigned").values(state="running", token=TOKEN)
        )

    def poll() -> None:
        with db.read(engine) as conn:
            jobs.for_worker(conn, worker_ids[0])

    out["poll"] = _timed(poll, reps)

    def balance() -> None:
        with db.write(engine) as conn:
            balancer.assign_waiting(conn)

    out["balance pass"] = _timed(balance, max(5, reps // 5))
    assert cluster.http is not None
    http = cluster.http
    for name, path in [
        ("list API", "/api/v1/jobs?limit=50"),
        ("list waiting", "/api/v1/jobs?state=waiting&limit=50"),
        ("list worker", f"/api/v1/jobs?worker={worker_ids[-1]}&limit=50"),
    ]:
        out[name] = _timed(lambda path=path: http.get(path).raise_for_status(), 7)

    def leader_tick() -> None:
        with db.write(engine) as conn:
            db.lock_row(conn, "assign")
            jobs.release_due(conn)
            balancer.assign_waiting(conn, locked=True)
            jobs.next_due(conn)

    out["leader tick"] = _timed(leader_tick, max(5, reps // 5))
    return out


def _add_held(engine: sa.Engine, count: int) -> None:
    """``count`` held jobs, each waiting for a waiting job to succeed (a queue of
    two-step pipelines), with their ``job_dependencies`` rows."""
    with db.read(engine) as conn:
        query = sa.select(J.c.id).where(J.c.state == "waiting").order_by(J.c.id).limit(count)
        parents = list(conn.execute(query).scalars())
    _insert(engine, [_job_row("held") for _ in range(count)])
    with db.read(engine) as conn:
        held = list(conn.execute(sa.select(J.c.id).where(J.c.state == "held")).scalars())
    rows = [
        {"child_id": child, "parent_id": parents[i % len(parents)], "on_end": "success",
         "met": False}
        for i, child in enumerate(held)
    ]  # fmt: skip
    for i in range(0, len(rows), 5000):
        with db.write(engine) as conn:
            conn.execute(sa.insert(D), rows[i : i + 5000])


def _add_delayed(engine: sa.Engine, count: int) -> None:
    """``count`` delayed jobs, due over the next day (none due during the measures)."""
    start = datetime.now(UTC) + timedelta(hours=1)
    rows = []
    for i in range(count):
        row = _job_row("delayed")
        row["not_before"] = start + timedelta(seconds=i * 86400 / count)
        rows.append(row)
    _insert(engine, rows)


def scale(backend: str, levels: list[int], reps: int) -> dict[str, dict[str, float]]:
    """Costs (median ms) at each queue length in ``levels``, then at the last one with
    :data:`HELD` held jobs more."""
    tunables = {"worker_timeout": 3600}  # the simulated workers never heartbeat
    results: dict[str, dict[str, float]] = {}
    with Cluster(backend, workers=0, tunables=tunables) as cluster:
        worker_ids = _setup_workers(cluster.engine)
        waiting = 0
        for level in levels:
            _insert(cluster.engine, [_job_row("waiting") for _ in range(level - waiting)])
            _analyze(cluster.engine)
            waiting = level
            results[f"{level:,}"] = _measure(cluster, worker_ids, reps)
            with cluster.engine.connect() as conn:
                waiting = conn.execute(
                    sa.select(sa.func.count()).where(J.c.state == "waiting")
                ).scalar_one()
        _add_held(cluster.engine, HELD)
        _analyze(cluster.engine)
        results[f"{levels[-1]:,} + {HELD:,} held"] = _measure(cluster, worker_ids, reps)
        _add_delayed(cluster.engine, DELAYED)
        _analyze(cluster.engine)
        label = f"{levels[-1]:,} + {HELD // 1000}k held + {DELAYED // 1000}k delayed"
        results[label] = _measure(cluster, worker_ids, reps)
    return results
