"""The balancer: which worker runs each waiting job.

A strategy is a small function of (candidate workers with a free slot, cursor) → worker.
Assignment runs inside a write transaction that holds the ``assign`` lock, so slot counts
read at its start stay true until it commits, whichever server or worker runs it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from jobbalancer import db, jobs, settings
from jobbalancer.db import schema

J, W, C, S = schema.jobs, schema.workers, schema.worker_classes, schema.settings
CURSOR_KEY = "balancer.round_robin_cursor"


@dataclass(frozen=True)
class Candidate:
    """An online, enabled worker with at least one free slot."""

    id: int
    name: str
    worker_class_id: int
    max_jobs: int
    active: int

    @property
    def free(self) -> int:
        return self.max_jobs - self.active


Strategy = Callable[[Sequence[Candidate], int], Candidate]


def round_robin(candidates: Sequence[Candidate], cursor: int) -> Candidate:
    """The next worker after the last one chosen, by id, wrapping around."""
    return next((c for c in candidates if c.id > cursor), candidates[0])


def least_loaded(candidates: Sequence[Candidate], cursor: int) -> Candidate:
    """The worker with the fewest active jobs relative to its max_jobs."""
    return min(candidates, key=lambda c: (c.active / c.max_jobs, c.active, c.id))


def random_worker(candidates: Sequence[Candidate], cursor: int) -> Candidate:
    """Any worker with a free slot."""
    return random.choice(candidates)  # noqa: S311 - spreading load, not security


def fill_first(candidates: Sequence[Candidate], cursor: int) -> Candidate:
    """The first worker (by id) with a free slot, so the others can idle or scale down."""
    return candidates[0]


STRATEGIES: dict[str, Strategy] = {
    "round_robin": round_robin,
    "least_loaded": least_loaded,
    "random": random_worker,
    "fill_first": fill_first,
}


def submit(
    conn: sa.Connection, specs: Sequence[jobs.Spec], user_id: int | None, user_name: str | None
) -> list[int]:
    """Create jobs and assign what can be assigned now, in one transaction.

    A job with need_realtime that found no free slot becomes ``occupied``.
    """
    db.lock_row(conn, "assign")
    ids = jobs.create(conn, specs, user_id, user_name)
    assign_waiting(conn, class_ids={s.worker_class_id for s in specs}, locked=True)
    realtime = [i for i, s in zip(ids, specs, strict=True) if s.need_realtime]
    if realtime:
        still_waiting = conn.execute(
            sa.select(J.c.id).where(J.c.id.in_(realtime), J.c.state == jobs.State.WAITING)
        ).scalars()
        for job_id in list(still_waiting):
            jobs.occupy(conn, job_id)
    return ids


def assign_waiting(
    conn: sa.Connection,
    *,
    class_ids: Iterable[int] | None = None,
    worker_id: int | None = None,
    locked: bool = False,
) -> int:
    """Assign waiting jobs to free slots, highest priority then oldest first.

    Limit the pass to some classes, or to one worker's free slots (a worker that just
    finished a job fills its own slot). Returns how many jobs were assigned.
    """
    if not locked:
        db.lock_row(conn, "assign")
    by_class = _candidates(conn, class_ids, worker_id)
    if not by_class:
        return 0
    strategy: Strategy
    alone = worker_id is not None or all(len(c) == 1 for c in by_class.values())
    if alone:
        # One candidate per class: every strategy picks it, so skip reading the setting and
        # the cursor, and writing the cursor (two statements of a submission's ten; the
        # rotation goes on from where it was when there are several candidates again).
        strategy, cursor = fill_first, 0
    else:
        strategy, cursor = _strategy_and_cursor(conn)
    start_cursor, chosen_ids = cursor, []
    for class_id, candidates in by_class.items():
        for job_id in _queue(conn, class_id, sum(c.free for c in candidates)):
            chosen = strategy(candidates, cursor)
            if not jobs.assign(conn, job_id, chosen.id):
                continue
            chosen_ids.append(chosen.id)
            cursor = chosen.id
            candidates = _take_slot(candidates, chosen)
            if not candidates:
                break
    if cursor != start_cursor and not alone:
        _put_cursor(conn, cursor)
    db.wake_workers(conn, chosen_ids)
    return len(chosen_ids)


_WAITING_FOR_WORKER = (
    sa.select(J.c.id)
    .select_from(J.join(W, W.c.worker_class_id == J.c.worker_class_id))
    .where(W.c.id == sa.bindparam("b_worker"), J.c.state == jobs.State.WAITING.value)
    .limit(1)
)


def take_for_worker(conn: sa.Connection, worker_id: int) -> list[jobs.Job]:
    """Fill a worker's free slots from its class's queue, the jobs going straight to
    ``running`` (:func:`jobs.take`): the worker itself calls this when jobs ended, in the
    transaction that reports them, and starts what it got. The jobs taken, in queue order.
    """
    db.lock_row(conn, "assign")
    # Most ends find nothing waiting for the worker's class (a job is assigned when it is
    # submitted if a slot is free): one indexed look, instead of counting the slots and
    # an update. Under the assign lock, so no submitter's decision is in between.
    if conn.execute(_WAITING_FOR_WORKER, {"b_worker": worker_id}).first() is None:
        return []
    taken = []
    for class_id, candidates in _candidates(conn, None, worker_id).items():
        taken += jobs.take(conn, worker_id, class_id, sum(c.free for c in candidates))
    return taken


_DEFAULT_ALGORITHM = settings.Tunables().algorithm
_SETTINGS = sa.select(S.c.key, S.c.value).where(S.c.key.in_(["algorithm", CURSOR_KEY]))


def _strategy_and_cursor(conn: sa.Connection) -> tuple[Strategy, int]:
    """The algorithm setting and the round-robin cursor, in one query (every submit
    needs both). Stored settings were validated when saved; anything else is a default."""
    stored: dict[str, Any] = {key: value for key, value in conn.execute(_SETTINGS)}
    strategy = STRATEGIES.get(str(stored.get("algorithm")), STRATEGIES[_DEFAULT_ALGORITHM])
    cursor = stored.get(CURSOR_KEY)
    return strategy, cursor if isinstance(cursor, int) else 0


_PUT_CURSOR = (
    sa.update(S)
    .where(S.c.key == CURSOR_KEY)
    .values(value=sa.bindparam("b_cursor", type_=S.c.value.type))
)


def _put_cursor(conn: sa.Connection, cursor: int) -> None:
    """Store the round-robin cursor (a statement built once: every submit moves it)."""
    if conn.execute(_PUT_CURSOR, {"b_cursor": cursor}).rowcount == 0:
        settings.put_value(conn, CURSOR_KEY, cursor)  # the first time: insert it


def _take_slot(candidates: Sequence[Candidate], chosen: Candidate) -> list[Candidate]:
    updated = []
    for c in candidates:
        if c.id == chosen.id:
            c = Candidate(c.id, c.name, c.worker_class_id, c.max_jobs, c.active + 1)
        if c.free > 0:
            updated.append(c)
    return updated


def _queue(conn: sa.Connection, class_id: int, limit: int) -> list[int]:
    return list(conn.execute(jobs.QUEUE, {"b_class": class_id, "b_limit": limit}).scalars())


def _candidates_query() -> sa.Select[Any]:
    active = (
        sa.select(sa.func.count())
        .where(J.c.worker_id == W.c.id, J.c.state.in_([s.value for s in jobs.ACTIVE]))
        .scalar_subquery()
    )
    max_jobs = sa.func.coalesce(W.c.max_jobs, C.c.max_jobs)
    return (
        sa.select(
            W.c.id,
            W.c.name,
            W.c.worker_class_id,
            max_jobs.label("max_jobs"),
            active.label("active"),
        )
        .select_from(W.join(C, C.c.id == W.c.worker_class_id))
        .where(W.c.state == "online", W.c.enabled.is_(True))
        .order_by(W.c.id)
    )


_CANDIDATES = _candidates_query()
_ONE_CANDIDATE = _CANDIDATES.where(W.c.id == sa.bindparam("b_worker"))
_CLASS_CANDIDATES = _CANDIDATES.where(
    W.c.worker_class_id.in_(sa.bindparam("b_classes", expanding=True))
)


def _candidates(
    conn: sa.Connection, class_ids: Iterable[int] | None, worker_id: int | None
) -> dict[int, list[Candidate]]:
    """Online, enabled workers with free slots, by class, ordered by id."""
    query, params = _CANDIDATES, dict[str, Any]()
    if worker_id is not None:
        query, params = _ONE_CANDIDATE, {"b_worker": worker_id}
        if class_ids is not None:
            query = query.where(W.c.worker_class_id.in_(list(class_ids)))
    elif class_ids is not None:
        query, params = _CLASS_CANDIDATES, {"b_classes": list(class_ids)}
    by_class: dict[int, list[Candidate]] = {}
    for row in conn.execute(query, params):
        candidate = Candidate(row.id, row.name, row.worker_class_id, row.max_jobs, row.active)
        if candidate.free > 0:
            by_class.setdefault(candidate.worker_class_id, []).append(candidate)
    return by_class


def free_slots(conn: sa.Connection, class_id: int | None = None) -> int:
    """How many jobs could start right now (in one class, or anywhere)."""
    by_class = _candidates(conn, None if class_id is None else [class_id], None)
    return sum(c.free for cands in by_class.values() for c in cands)
