"""The outbox's writer: a job's move into a state rules listen to adds notification rows
in the same transaction (so a committed end always has its notifications, and a rolled
back one never does). :mod:`jobbalancer.notify` delivers them.

Called by :mod:`jobbalancer.jobs` at every move a rule may name, so it must cost nothing
when no rule can apply: the targets and the admins' rules are kept per process for
:data:`TTL` seconds, and with no target at all (no rule of any kind can name one) a move
costs no query. Otherwise it is one read of the moved jobs' class and own rules by id,
and an insert if anything applies. An admin's rule made in another process counts here
within :data:`TTL`; one made in this process counts at once (:func:`forget`). A job's own
rules (checked at its submission) count at once, unless this process knows no target at
all yet (the first target, within :data:`TTL`).
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobbalancer.db import schema
from jobbalancer.db.types import utcnow

J, T, R, N = (
    schema.jobs,
    schema.notification_targets,
    schema.notification_rules,
    schema.notifications,
)

# Every state a rule may name. ``started``: a job began running (for long jobs).
EVENTS: tuple[str, ...] = (
    "done", "failed", "timeout", "killed", "lost", "occupied", "skipped", "started"
)  # fmt: skip
TTL = 2.0


@dataclass(frozen=True)
class Rules:
    """What a process knows of the targets and the admins' rules, as of ``loaded_at``."""

    targets: frozenset[int]
    # (worker class id or None for every class, states, target id)
    rules: tuple[tuple[int | None, frozenset[str], int], ...]
    loaded_at: float

    def for_job(self, class_id: int, event: str, own: Any) -> set[int]:
        """The targets a job of ``class_id`` with its own rules ``own`` notifies on ``event``.
        A job's own targets were checked when it was submitted and count even if this copy
        does not know them yet (made in another process within :data:`TTL`); one deleted
        since gives a row its delivery marks failed ("the target was deleted")."""
        found = {t for c, on, t in self.rules if event in on and c in (None, class_id)}
        found &= self.targets
        for rule in own or ():
            if event in rule.get("on", ()):
                found.add(int(rule["target"]))
        return found


_cache: weakref.WeakKeyDictionary[sa.Engine, Rules] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def forget(engine: sa.Engine) -> None:
    """Drop this process's copy of the rules (after a change made here)."""
    with _lock:
        _cache.pop(engine, None)


def rules(conn: sa.Connection) -> Rules:
    """The targets and rules, at most :data:`TTL` seconds old."""
    engine = conn.engine
    known = _cache.get(engine)
    if known is not None and time.monotonic() - known.loaded_at < TTL:
        return known
    targets = frozenset(int(i) for i in conn.execute(sa.select(T.c.id)).scalars())
    found = tuple(
        (row.worker_class_id, frozenset(row.on.strip(",").split(",")), int(row.target_id))
        for row in conn.execute(sa.select(R.c.worker_class_id, R.c.on, R.c.target_id))
    )
    known = Rules(targets, found, time.monotonic())
    with _lock:
        _cache[engine] = known
    return known


_MOVED = sa.select(J.c.id, J.c.worker_class_id, J.c.notify).where(
    J.c.id.in_(sa.bindparam("b_ids", expanding=True))
)
_INSERT = sa.insert(N).values(state="pending", attempts=0, next_at=utcnow(), created_at=utcnow())


def job_moved(conn: sa.Connection, event: str, job_ids: Sequence[int]) -> None:
    """Jobs ``job_ids`` just moved to ``event``: add their notifications."""
    known = rules(conn)
    if not known.targets or not job_ids:
        return
    moved = conn.execute(_MOVED, {"b_ids": list(job_ids)})
    _add(conn, known, event, ((r.id, r.worker_class_id, r.notify) for r in moved))


def jobs_moved(
    conn: sa.Connection, event: str, moved: Iterable[tuple[int, int, Sequence[Mapping[str, Any]]]]
) -> None:
    """As :func:`job_moved`, for jobs already read: (id, worker class id, own rules)."""
    moved = list(moved)
    if not moved:  # a worker's poll that claimed nothing: not even the cache is looked at
        return
    known = rules(conn)
    if known.targets or any(own for _, _, own in moved):
        _add(conn, known, event, moved)


def _add(
    conn: sa.Connection, known: Rules, event: str, moved: Iterable[tuple[int, int, Any]]
) -> None:
    rows = [
        {"job_id": job_id, "target_id": target, "event": event, "key": uuid.uuid4().hex}
        for job_id, class_id, own in moved
        for target in sorted(known.for_job(class_id, event, own))
    ]
    if rows:
        conn.execute(_INSERT, rows)


def forget_jobs(conn: sa.Connection, job_ids: Sequence[int]) -> None:
    """Deleted jobs take their sent and failed notifications with them; pending ones are
    still delivered (saying the job was deleted)."""
    if job_ids:
        conn.execute(sa.delete(N).where(N.c.job_id.in_(list(job_ids)), N.c.state != "pending"))


def delete_sent_before(conn: sa.Connection, cutoff: datetime, limit: int = 1000) -> int:
    """Retention of the outbox: delete up to ``limit`` delivered or failed notifications
    made and last tried before ``cutoff``. Most go with their jobs (:func:`forget_jobs`);
    these are the rest: those of a job deleted while they were pending, of a deleted
    target, of a job kept longer than its notifications. Pending ones always stay."""
    ids = list(
        conn.execute(
            sa.select(N.c.id)
            .where(
                N.c.state.in_(("delivered", "failed")),
                N.c.next_at < cutoff,  # the (state, next_at) index bounds the look
                N.c.created_at < cutoff,
            )
            .limit(limit)
        ).scalars()
    )
    if ids:
        conn.execute(sa.delete(N).where(N.c.id.in_(ids)))
    return len(ids)
