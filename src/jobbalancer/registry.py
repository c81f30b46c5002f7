"""Workers: the record and its registry (register, heartbeat, state, edits)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobbalancer import classes, errors, jobs, refs
from jobbalancer.db import connections, schema
from jobbalancer.db.types import AnyRow, utcnow

W, C, J = schema.workers, schema.worker_classes, schema.jobs
DEFAULT_CLASS_MAX_JOBS = 5
LIVE_STATES = ("online", "draining")


@dataclass(frozen=True)
class Worker:
    """A worker as read from the database."""

    id: int
    name: str
    host: str
    state: str
    enabled: bool
    worker_class_id: int
    worker_class: str
    own_max_jobs: int | None
    max_jobs: int
    active_jobs: int
    pid: int | None
    version: str
    load: float | None
    cpu_count: int | None
    memory_total: int | None
    memory_available: int | None
    started_at: datetime
    last_heartbeat_at: datetime
    # Placement: what it offers (None: not limited), its labels, what its jobs requested.
    cpus: float | None = None
    memory: int | None = None
    gpus: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    used_cpus: float = 0.0
    used_memory: int = 0
    used_gpus: int = 0

    @classmethod
    def from_row(cls, row: AnyRow) -> Worker:
        m = row._mapping
        special = ("own_max_jobs", "enabled", "labels", "used_cpus", "used_memory", "used_gpus")
        return cls(
            **{n: m[n] for n in cls.__dataclass_fields__ if n not in special},
            own_max_jobs=m["own_max_jobs"],
            enabled=bool(m["enabled"]),
            labels=dict(m["labels"] or {}),
            used_cpus=float(m["used_cpus"] or 0),
            used_memory=int(m["used_memory"] or 0),
            used_gpus=int(m["used_gpus"] or 0),
        )

    @property
    def display_state(self) -> str:
        """online | draining | offline | disabled (an online worker taking no new jobs)."""
        if not self.enabled and self.state == "online":
            return "disabled"
        return self.state


def select_workers() -> sa.Select[Any]:
    def of_active(column: Any) -> Any:
        return (
            sa.select(column)
            .where(J.c.worker_id == W.c.id, J.c.state.in_([s.value for s in jobs.ACTIVE]))
            .scalar_subquery()
        )

    active = of_active(sa.func.count())
    return sa.select(
        W.c.id, W.c.name, W.c.host, W.c.state, W.c.enabled, W.c.worker_class_id,
        C.c.name.label("worker_class"), W.c.max_jobs.label("own_max_jobs"),
        sa.func.coalesce(W.c.max_jobs, C.c.max_jobs).label("max_jobs"),
        active.label("active_jobs"), W.c.pid, W.c.version, W.c.load, W.c.cpu_count,
        W.c.memory_total, W.c.memory_available, W.c.started_at, W.c.last_heartbeat_at,
        W.c.cpus, W.c.memory, W.c.gpus, W.c.labels,
        of_active(sa.func.sum(J.c.cpus)).label("used_cpus"),
        of_active(sa.func.sum(J.c.memory)).label("used_memory"),
        of_active(sa.func.sum(J.c.gpus)).label("used_gpus"),
    ).select_from(W.join(C, C.c.id == W.c.worker_class_id))  # fmt: skip


def get(conn: sa.Connection, worker_id: int) -> Worker:
    row = conn.execute(select_workers().where(W.c.id == worker_id)).first()
    if row is None:
        raise errors.NotFound(f"worker {worker_id} does not exist")
    return Worker.from_row(row)


def list_all(conn: sa.Connection) -> list[Worker]:
    return [Worker.from_row(r) for r in conn.execute(select_workers().order_by(W.c.name))]


def _class_for_worker(conn: sa.Connection, name: str) -> int:
    """The class a starting worker names; a new class by that name if there is none yet.

    Only for in-process workers (tests): the worker process refuses an unknown class
    before it registers (:func:`check_class`), and a worker's database role may not
    create classes.
    """
    try:
        return classes.find(conn, name).id
    except errors.InvalidInput:
        return classes.create(conn, name, DEFAULT_CLASS_MAX_JOBS).id


@dataclass(frozen=True)
class Holder:
    """The row holding a name (:func:`holder`); ``age``: seconds since its last
    heartbeat, by the database's clock."""

    id: int
    name: str
    host: str
    state: str
    pid: int | None
    session: str | None
    machine_id: str | None
    instance: str | None
    age: float


def check_class(conn: sa.Connection, name: str) -> None:
    """ConfigError when worker class ``name`` does not exist, naming those that do."""
    try:
        classes.find(conn, name)
    except errors.InvalidInput:
        names = ", ".join(conn.execute(sa.select(C.c.name).order_by(C.c.name)).scalars())
        raise errors.ConfigError(
            f"worker class {name!r} does not exist (classes: {names or 'none'}); an admin "
            "creates it on the web UI's Classes page or with POST /api/v1/worker-classes "
            f'{{"name": "{name}", "max_jobs": 2}}',
            field="worker.worker_class",
        ) from None


def holder(conn: sa.Connection, name: str, *, lock: bool = True) -> Holder | None:
    """The row holding worker name ``name``; with ``lock``, locked until the transaction
    ends (so that of two workers starting under one name, the second sees what the first
    wrote)."""
    columns = ("id", "name", "host", "state", "pid", "session", "machine_id", "instance")
    query = sa.select(*(W.c[c] for c in columns), W.c.last_heartbeat_at).where(W.c.name == name)
    row = conn.execute(query.with_for_update() if lock else query).first()
    if row is None:
        return None
    age = (connections.now(conn) - row.last_heartbeat_at).total_seconds()
    return Holder(**{c: row._mapping[c] for c in columns}, age=age)


@dataclass(frozen=True)
class Stats:
    """What a heartbeat reports about the machine."""

    load: float | None = None
    cpu_count: int | None = None
    memory_total: int | None = None
    memory_available: int | None = None

    def values(self) -> dict[str, Any]:
        return {
            "load": self.load,
            "cpu_count": self.cpu_count,
            "memory_total": self.memory_total,
            "memory_available": self.memory_available,
        }


@dataclass(frozen=True)
class Capacity:
    """What a worker offers its jobs (None: not limited) and its labels, stored when it
    registers."""

    cpus: float | None = None
    memory: int | None = None
    gpus: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def values(self) -> dict[str, Any]:
        return {
            "cpus": self.cpus,
            "memory": self.memory,
            "gpus": self.gpus,
            "labels": dict(self.labels),
        }


def register(
    conn: sa.Connection,
    *,
    name: str,
    host: str,
    worker_class: str,
    max_jobs: int | None,
    pid: int,
    version: str,
    stats: Stats,
    machine_id: str | None = None,
    instance: str | None = None,
    capacity: Capacity | None = None,
) -> tuple[int, str]:
    """Make ``name`` online with a fresh session; its id and session. ``machine_id`` and
    ``instance`` say who holds it now (see worker/identity.py; the worker process decided
    it may take the name before calling this).

    Restarting under the same name is the same worker: jobs the database says it was
    running are marked lost (a new process runs nothing yet); jobs assigned but not started
    stay assigned and will be picked up.
    """
    problem = refs.name_problem(name)
    if problem is not None:  # a worker is picked by name: it must not pass for another
        raise errors.InvalidInput(f"worker name {problem}", field="name")
    cid = _class_for_worker(conn, worker_class)
    session = secrets.token_hex(8)
    values: dict[str, Any] = {
        "host": host,
        "state": "online",
        "worker_class_id": cid,
        "session": session,
        "pid": pid,
        "version": version,
        "started_at": utcnow(),
        "last_heartbeat_at": utcnow(),
        "machine_id": machine_id,
        "instance": instance,
        **stats.values(),
        **(capacity or Capacity()).values(),
    }
    if max_jobs is not None:
        values["max_jobs"] = max_jobs
    existing = conn.execute(sa.select(W.c.id).where(W.c.name == name)).scalar_one_or_none()
    if existing is None:
        result = conn.execute(sa.insert(W).values(name=name, enabled=True, **values))
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0]), session
    conn.execute(sa.update(W).where(W.c.id == existing).values(**values))
    jobs.lose_worker_jobs(conn, existing, f"worker {name} restarted while the job ran")
    return int(existing), session


def heartbeat(conn: sa.Connection, worker_id: int, session: str, stats: Stats) -> str | None:
    """Record that the worker is alive; its state, or None if this session is no longer
    the worker's (another process registered under its name, or it was declared offline)."""
    result = conn.execute(
        sa.update(W)
        .where(W.c.id == worker_id, W.c.session == session, W.c.state.in_(LIVE_STATES))
        .values(last_heartbeat_at=utcnow(), **stats.values())
    )
    if result.rowcount != 1:
        return None
    return str(conn.execute(sa.select(W.c.state).where(W.c.id == worker_id)).scalar_one())


def set_state(conn: sa.Connection, worker_id: int, session: str, state: str) -> bool:
    """The worker's own change of state: draining when it stops taking jobs, offline at exit."""
    result = conn.execute(
        sa.update(W).where(W.c.id == worker_id, W.c.session == session).values(state=state)
    )
    return result.rowcount == 1


def mark_offline(conn: sa.Connection, worker_id: int, cutoff: datetime) -> bool:
    """The monitor's verdict: offline, if it is still silent since before ``cutoff``."""
    result = conn.execute(
        sa.update(W)
        .where(
            W.c.id == worker_id,
            W.c.state.in_(LIVE_STATES),
            W.c.last_heartbeat_at < cutoff,
        )
        .values(state="offline")
    )
    return result.rowcount == 1


def silent_since(conn: sa.Connection, cutoff: datetime) -> list[int]:
    query = sa.select(W.c.id).where(W.c.state.in_(LIVE_STATES), W.c.last_heartbeat_at < cutoff)
    return list(conn.execute(query).scalars())


def update(conn: sa.Connection, worker_id: int, changes: Mapping[str, Any]) -> None:
    """An operator's edit: max_jobs (None = the class's), worker_class, enabled."""
    values: dict[str, Any] = {}
    if "max_jobs" in changes:
        values["max_jobs"] = changes["max_jobs"]
    if "worker_class" in changes:
        values["worker_class_id"] = classes.find(conn, changes["worker_class"]).id
    if "enabled" in changes:
        values["enabled"] = bool(changes["enabled"])
    get(conn, worker_id)  # raises NotFound
    if values:
        conn.execute(sa.update(W).where(W.c.id == worker_id).values(**values))


def delete(conn: sa.Connection, worker_id: int) -> None:
    """Remove an offline worker from the list."""
    if conn.execute(sa.delete(W).where(W.c.id == worker_id, W.c.state == "offline")).rowcount:
        return
    worker = get(conn, worker_id)  # raises NotFound
    raise errors.Conflict(
        f"worker {worker.name} is {worker.state}: only offline workers can be removed"
    )
