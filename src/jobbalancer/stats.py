"""Statistics for the dashboard, the stats API and the metrics: counts, computed with SQL
that runs the same on every backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from jobbalancer import db, jobs, registry
from jobbalancer.db import schema

J = schema.jobs
# Ends that count as failures; with done, all that count as "finished" (an occupied
# job was rejected, it never ran).
_FAILURES = [s.value for s in (jobs.State.FAILED, jobs.State.TIMEOUT, jobs.State.KILLED,
                               jobs.State.LOST)]  # fmt: skip


@dataclass(frozen=True)
class WorkerCount:
    """One worker's jobs: active now, and all it ever ran (kept ones), by state."""

    id: int
    name: str
    state: str
    max_jobs: int
    active_jobs: int
    jobs: dict[str, int]


@dataclass(frozen=True)
class Slots:
    """Job slots of the workers that take jobs now (online and enabled)."""

    total: int = 0
    used: int = 0

    @property
    def free(self) -> int:
        return max(self.total - self.used, 0)


@dataclass(frozen=True)
class Summary:
    jobs: dict[str, int]
    workers: list[WorkerCount]
    slots: Slots
    finished_per_minute: list[tuple[datetime, int]] = field(default_factory=list)


def jobs_by_state(conn: sa.Connection) -> dict[str, int]:
    """Every state, with 0 where there is no job."""
    counts = dict.fromkeys((s.value for s in jobs.State), 0)
    rows = conn.execute(sa.select(J.c.state, sa.func.count()).group_by(J.c.state))
    for state, count in rows:
        counts[str(state)] = int(count)
    return counts


def by_worker(conn: sa.Connection) -> list[WorkerCount]:
    """Each registered worker with its jobs by state."""
    query = (
        sa.select(J.c.worker_id, J.c.state, sa.func.count())
        .where(J.c.worker_id.is_not(None))
        .group_by(J.c.worker_id, J.c.state)
    )
    per_worker: dict[int, dict[str, int]] = {}
    for worker_id, state, count in conn.execute(query):
        per_worker.setdefault(int(worker_id), {})[str(state)] = int(count)
    return [
        WorkerCount(
            id=w.id,
            name=w.name,
            state=w.display_state,
            max_jobs=w.max_jobs,
            active_jobs=w.active_jobs,
            jobs=per_worker.get(w.id, {}),
        )
        for w in registry.list_all(conn)
    ]


def slots(all_workers: list[WorkerCount]) -> Slots:
    taking = [w for w in all_workers if w.state == "online"]
    return Slots(total=sum(w.max_jobs for w in taking), used=sum(w.active_jobs for w in taking))


@dataclass(frozen=True)
class Minute:
    """Jobs that ended in one minute: well (done) and badly (failed, timeout, killed, lost)."""

    start: datetime
    done: int
    failed: int


def per_minute(conn: sa.Connection, minutes: int = 60) -> list[Minute]:
    """Jobs that ended well (done) and badly (failed, timeout, killed, lost) in each of
    the last ``minutes`` minutes, oldest first; the last is the current minute."""
    now = db.now(conn).replace(second=0, microsecond=0)
    starts = [now - timedelta(minutes=minutes - 1 - i) for i in range(minutes)]
    # Each row finds its minute by binary search in a nested CASE (a few comparisons, the
    # same SQL on every backend), over the last hour's index range only; then one count
    # per minute and state.
    rows = sa.select(_minute_of(J.c.finished_at, starts, 0, minutes).label("minute"), J.c.state)
    recent = rows.where(J.c.finished_at >= starts[0]).subquery()
    counts = sa.select(recent.c.minute, recent.c.state, sa.func.count()).group_by(
        recent.c.minute, recent.c.state
    )
    done, failed = [0] * minutes, [0] * minutes
    for minute, state, count in conn.execute(counts):
        if state == jobs.State.DONE:
            done[int(minute)] += int(count)
        elif state in _FAILURES:
            failed[int(minute)] += int(count)
    return [Minute(s, done[i], failed[i]) for i, s in enumerate(starts)]


def _minute_of(
    column: sa.ColumnElement[Any], starts: list[datetime], lo: int, hi: int
) -> sa.ColumnElement[int]:
    """The index in ``starts[lo:hi]`` of the minute ``column`` falls in."""
    if hi - lo == 1:
        return sa.literal(lo, sa.Integer)
    mid = (lo + hi) // 2
    return sa.case(
        (column < starts[mid], _minute_of(column, starts, lo, mid)),
        else_=_minute_of(column, starts, mid, hi),
    )


def finished_per_minute(conn: sa.Connection, minutes: int = 60) -> list[tuple[datetime, int]]:
    """Jobs finished (well or badly) in each of the last ``minutes`` minutes, oldest
    first; the last is the current, partial minute. By the database's clock."""
    return [(m.start, m.done + m.failed) for m in per_minute(conn, minutes)]


def summary(conn: sa.Connection) -> Summary:
    """Everything the stats API shows, read in one transaction."""
    per_worker = by_worker(conn)
    return Summary(
        jobs=jobs_by_state(conn),
        workers=per_worker,
        slots=slots(per_worker),
        finished_per_minute=finished_per_minute(conn),
    )


# -- capacity and queues for /metrics (issue 15) ------------------------------------------


@dataclass(frozen=True)
class Capacity:
    """One worker's capacity and use, as it last reported them (None: not reported)."""

    name: str
    worker_class: str
    state: str
    slots: int
    active_jobs: int
    load: float | None
    cpus: int | None
    memory_total: int | None
    memory_available: int | None
    # Placement: what it offers jobs' requests (None: not limited), and what the requests
    # of its assigned and running jobs add up to.
    offered_cpus: float | None = None
    offered_memory: int | None = None
    offered_gpus: int | None = None
    requested_cpus: float = 0.0
    requested_memory: int = 0
    requested_gpus: int = 0


def capacity(conn: sa.Connection) -> list[Capacity]:
    """Every registered worker's capacity and use (a few indexed reads per worker)."""
    return [
        Capacity(
            name=w.name,
            worker_class=w.worker_class,
            state=w.display_state,
            slots=w.max_jobs,
            active_jobs=w.active_jobs,
            load=w.load,
            cpus=w.cpu_count,
            memory_total=w.memory_total,
            memory_available=w.memory_available,
            offered_cpus=w.cpus,
            offered_memory=w.memory,
            offered_gpus=w.gpus,
            requested_cpus=w.used_cpus,
            requested_memory=w.used_memory,
            requested_gpus=w.used_gpus,
        )
        for w in registry.list_all(conn)
    ]


@dataclass(frozen=True)
class Queue:
    """A class's waiting jobs: how many, and when the one waiting longest could first
    start (None: none waits)."""

    worker_class: str
    waiting: int
    oldest: datetime | None


# When a job could first start: its submit, or its not_before if later (a job that started
# later, a retry that waited), as jobbalancer.tally counts its wait.
_READY = sa.type_coerce(
    sa.case((J.c.not_before > J.c.created_at, J.c.not_before), else_=J.c.created_at),
    db.types.UTCDateTime(),
)
_WAITING = J.c.state == jobs.State.WAITING.value


def queues(conn: sa.Connection) -> list[Queue]:
    """Every class's queue: how many jobs wait, and the earliest time one of them could
    start. Most waiting jobs could start at their submit, and the first by id is the
    earliest of those: a count and a minimum over the queue's index, then that job's row.
    Jobs with a ``not_before`` (released from ``delayed``, or a retry that waited) could
    start then, not at their submit: their earliest comes from the ``(state,
    not_before)`` index; only when the first by id is one of them is the earliest of the
    others looked for among the class's waiting rows."""
    C = schema.worker_classes
    waiting = (
        sa.select(J.c.worker_class_id, sa.func.count().label("n"), sa.func.min(J.c.id).label("id"))
        .where(_WAITING)
        .group_by(J.c.worker_class_id)
        .subquery()
    )
    query = (
        sa.select(C.c.id, C.c.name, waiting.c.n, J.c.created_at, J.c.not_before)
        .select_from(C)
        .outerjoin(waiting, waiting.c.worker_class_id == C.c.id)
        .outerjoin(J, J.c.id == waiting.c.id)
        .order_by(C.c.name)
    )
    later_query = (
        sa.select(J.c.worker_class_id, sa.type_coerce(sa.func.min(_READY), db.types.UTCDateTime()))
        .where(_WAITING, J.c.not_before.is_not(None))
        .group_by(J.c.worker_class_id)
    )
    later: dict[int, datetime] = {int(c): at for c, at in conn.execute(later_query)}
    result = []
    for class_id, name, n, created, not_before in conn.execute(query).all():
        oldest: datetime | None = created
        if not_before is not None:  # the first by id could start later: the others'
            oldest = conn.execute(
                sa.select(sa.func.min(J.c.created_at)).where(
                    _WAITING, J.c.worker_class_id == class_id, J.c.not_before.is_(None)
                )
            ).scalar()
        if class_id in later:
            oldest = later[class_id] if oldest is None else min(oldest, later[class_id])
        result.append(Queue(str(name), int(n or 0), oldest))
    return result
