"""Chains: jobs held until other jobs end (docs/api.md, "Dependencies").

A job submitted with ``after`` is ``held``: neither the balancer nor a worker's queue sees
it. Each parent is a row of ``job_dependencies`` (child, parent, ``on_end``, ``met``). When
a parent ends for good (after its last retry; a retry takes over its rows), :func:`ended`
runs in the transaction of that end: rows whose condition the end meets turn ``met``; a
child whose condition can no longer be met ends ``skipped`` naming the parent, and its own
children follow (a cascade, in the same transaction); a child whose rows are all met is
released (held → waiting) and is then assigned like any waiting job.

Which parent ends meet which condition (:data:`MEETS`): ``done`` meets ``success``;
``failed``, ``timeout``, ``lost`` and ``occupied`` (it never ran) meet ``failure``; every
end meets ``any``: also ``killed`` and ``skipped``, which meet neither of the others. A
deleted parent meets nothing: its held children are skipped ("job 41 was deleted").

Concurrency: everything here runs under the balancer's ``assign`` lock (a row lock on
PostgreSQL and MariaDB; on SQLite a write transaction already excludes every other
writer). A job's end takes it right after the move, before it reads the children (the
worker that records an end takes it anyway, to fill its slot); a submission holds it
before it reads its parents' states. So:

* two parents of one child ending at the same instant on two workers are decided one
  after the other: the later end sees the earlier one's rows met (READ COMMITTED: each
  statement reads what is committed when it starts) and releases the child, exactly
  once; the release is also one conditional statement (held → waiting where no unmet
  row is left), and the children are locked in id order;
* a parent ending while a child naming it is submitted either waits for the child's rows
  (then decides it) or has committed, and the submission sees it ended;
* a retry re-points the rows under the lock, so none added meanwhile is left behind.

The lock order is the balancer's: the ``assign`` lock, then job rows. A job's end holds
its own row (running, or being killed or deleted) before it takes the lock; the balancer
never waits for such a row (it moves waiting jobs only). A user's kill or delete of a
held or waiting job takes the lock before the job's row; of any other job, the row
first, as its worker and the monitor do (``service.job_actions``).

This module sits below :mod:`jobbalancer.jobs`, which calls it at every move of a job into
a final state; it owns the moves out of ``held`` (to ``waiting`` or ``skipped``; to
``delayed`` for a job whose ``not_before`` is still to come) and knows
the states by their names (tests check they are :class:`jobs.State` values).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from jobbalancer import db, outbox
from jobbalancer.db import schema
from jobbalancer.db.types import utcnow

J, D = schema.jobs, schema.job_dependencies

HELD, WAITING, SKIPPED = "held", "waiting", "skipped"
# A released job whose not_before is still to come waits for it (jobs.release_due).
DELAYED = "delayed"
ON = ("success", "failure", "any")
# A parent's end → the conditions it meets. A state not in here has not ended.
MEETS: dict[str, tuple[str, ...]] = {
    "done": ("success", "any"),
    "failed": ("failure", "any"),
    "timeout": ("failure", "any"),
    "lost": ("failure", "any"),
    "occupied": ("failure", "any"),
    "killed": ("any",),
    "skipped": ("any",),
}
DELETED = "deleted"  # not a state: what ended() is told of a parent that was deleted
# More parents than this for one job is refused (docs/api.md).
MAX_PARENTS = 100


@dataclass(frozen=True)
class After:
    """One condition of a job: run after ``parent_id`` ended as ``on`` says."""

    parent_id: int
    on: str = "success"


@dataclass(frozen=True)
class Link:
    """A parent or a child of a job, as its page shows it. ``state`` None: deleted."""

    id: int
    on: str
    met: bool
    state: str | None
    user_id: int | None


@dataclass(frozen=True)
class Links:
    parents: list[Link]
    children: list[Link]

    def waiting_for(self) -> str | None:
        """What a held job waits for: ``"waits for job 41 to succeed, job 42 to end"``."""
        what = {"success": "succeed", "failure": "fail", "any": "end"}
        unmet = [f"job {p.id} to {what.get(p.on, 'end')}" for p in self.parents if not p.met]
        return f"waits for {', '.join(unmet)}" if unmet else None


# -- a parent's end ------------------------------------------------------------------------

# Unordered: they are locked in id order (_lock), and an ORDER BY child_id lets a planner
# prefer walking the primary key over the parent_id index.
_UNMET_OF = sa.select(D.c.child_id, D.c.parent_id).where(
    D.c.parent_id.in_(sa.bindparam("b_parents", expanding=True)), D.c.met.is_(False)
)
_MEET = (
    sa.update(D)
    .where(
        D.c.parent_id.in_(sa.bindparam("b_parents", expanding=True)),
        D.c.met.is_(False),
        D.c.on_end.in_(sa.bindparam("b_meets", expanding=True)),
    )
    .values(met=True)
)
_STILL_UNMET = (
    sa.select(D.c.child_id)
    .where(D.c.child_id.in_(sa.bindparam("b_ids", expanding=True)), D.c.met.is_(False))
    .distinct()
)
_SKIP_MANY = (
    sa.update(J)
    .where(J.c.id.in_(sa.bindparam("b_ids", expanding=True)), J.c.state == HELD)
    .values(state=SKIPPED, error=sa.bindparam("b_reason"), finished_at=utcnow())
)
# held → waiting, only when no condition of the job is left unmet: conditional, so two
# ends cannot both release it (and the assign lock makes the later one see the earlier
# one's rows met).
_RELEASE_MANY = (
    sa.update(J)
    .where(
        J.c.id.in_(sa.bindparam("b_ids", expanding=True)),
        J.c.state == HELD,
        ~sa.exists().where(D.c.child_id == J.c.id, D.c.met.is_(False)),
    )
    .values(state=sa.case((J.c.not_before > utcnow(), DELAYED), else_=WAITING))
)


def ended(conn: sa.Connection, job_id: int, state: str) -> list[int]:
    """Decide the held children of ``job_id``, which ended for good as ``state`` (or
    :data:`DELETED`): release, or skip (and their children, in turn). The ids released.

    A level of the cascade at a time, each in a few statements per 500 jobs (a fan-out of
    100 000 children is decided under the assign lock: one statement per child held it
    for a minute on PostgreSQL and MariaDB)."""
    db.lock_row(conn, "assign")  # see the module's docstring
    released: list[int] = []
    parents, how = [job_id], state
    while parents:  # each job is skipped at most once (held → skipped), so this ends
        parents, how = _decide(conn, parents, how, released), SKIPPED
    return released


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    for i in range(0, len(ids), _LOCK_CHUNK):
        yield list(ids[i : i + _LOCK_CHUNK])


def _unmet_of(conn: sa.Connection, parents: Sequence[int]) -> dict[int, int]:
    """The children with a condition on one of ``parents`` not met: child → that parent
    (the smallest id, if several)."""
    found: dict[int, int] = {}
    for chunk in _chunks(parents):
        for row in conn.execute(_UNMET_OF, {"b_parents": chunk}):
            found[row.child_id] = min(found.get(row.child_id, row.parent_id), row.parent_id)
    return found


def _decide(
    conn: sa.Connection, parents: Sequence[int], how: str, released: list[int]
) -> list[int]:
    """The children of ``parents``, which all ended as ``how``: rows met, children skipped
    or released (appended to ``released``). The children skipped."""
    children = sorted(_unmet_of(conn, parents))
    if not children:
        return []
    held = _lock(conn, children)
    meets = MEETS.get(how, ())
    if meets:
        for chunk in _chunks(parents):
            conn.execute(_MEET, {"b_parents": chunk, "b_meets": list(meets)})
    cannot = {c: p for c, p in _unmet_of(conn, parents).items() if c in held}
    by_parent: dict[int, list[int]] = {}
    for child, parent in sorted(cannot.items()):
        by_parent.setdefault(parent, []).append(child)
    for parent, kids in sorted(by_parent.items()):
        reason = f"job {parent} was deleted" if how == DELETED else f"job {parent} ended {how}"
        for chunk in _chunks(kids):
            conn.execute(_SKIP_MANY, {"b_ids": chunk, "b_reason": reason})
    skipped = sorted(cannot)
    for chunk in _chunks(skipped):
        outbox.job_moved(conn, SKIPPED, chunk)
    for chunk in _chunks([c for c in children if c in held and c not in cannot]):
        blocked = set(conn.execute(_STILL_UNMET, {"b_ids": chunk}).scalars())
        ready = [c for c in chunk if c not in blocked]
        if not ready:
            continue
        if conn.execute(_RELEASE_MANY, {"b_ids": ready}).rowcount != len(ready):
            # Not under these locks; but read which moved rather than guess.
            now = sa.select(J.c.id).where(J.c.id.in_(ready), J.c.state == WAITING)
            ready = list(conn.execute(now).scalars())
        released.extend(ready)
    return skipped


_LOCK_CHUNK = 500  # ids per statement: far below every backend's limit on parameters


def _lock(conn: sa.Connection, ids: Sequence[int]) -> set[int]:
    """Lock the rows of these jobs (sorted) until commit, in id order, a chunk at a time.
    Those of them that are held."""
    held: set[int] = set()
    for chunk in _chunks(ids):
        query = sa.select(J.c.id, J.c.state).where(J.c.id.in_(chunk)).order_by(J.c.id)
        held.update(row.id for row in db.lock_rows(conn, query) if row.state == HELD)
    return held


def _skip(conn: sa.Connection, job_id: int, reason: str) -> bool:
    if conn.execute(_SKIP_MANY, {"b_ids": [job_id], "b_reason": reason}).rowcount != 1:
        return False
    outbox.job_moved(conn, SKIPPED, [job_id])
    return True


def _release(conn: sa.Connection, job_id: int) -> bool:
    return conn.execute(_RELEASE_MANY, {"b_ids": [job_id]}).rowcount == 1


_FOLLOW = (
    sa.update(D)
    .where(D.c.parent_id == sa.bindparam("b_old"))
    .values(parent_id=sa.bindparam("b_new"))
)


def follow_retry(conn: sa.Connection, old_id: int, new_id: int) -> None:
    """A failed or lost parent is tried again as ``new_id``: its children wait for that
    attempt instead (the parent has not ended for good)."""
    db.lock_row(conn, "assign")  # a child submitted meanwhile must not be left behind
    conn.execute(_FOLLOW, {"b_old": old_id, "b_new": new_id})


def forget(conn: sa.Connection, job_ids: Sequence[int]) -> None:
    """The conditions of deleted jobs (as children; rows naming them as a parent stay with
    their children, whose pages then show the parent deleted)."""
    if job_ids:
        conn.execute(sa.delete(D).where(D.c.child_id.in_(list(job_ids))))


# -- a new held job ------------------------------------------------------------------------


def states(conn: sa.Connection, job_ids: Iterable[int]) -> dict[int, tuple[str, int | None]]:
    """The jobs' states and owners: id → (state, user_id); missing ids are not there."""
    ids = sorted(set(job_ids))
    found: dict[int, tuple[str, int | None]] = {}
    # A batch may name 100 000 parents: past PostgreSQL's 65 535 parameters in one IN.
    for i in range(0, len(ids), _LOCK_CHUNK):
        chunk = ids[i : i + _LOCK_CHUNK]
        query = sa.select(J.c.id, J.c.state, J.c.user_id).where(J.c.id.in_(chunk))
        found.update({row.id: (row.state, row.user_id) for row in conn.execute(query)})
    return found


_RETRIED_AS = sa.select(J.c.id).where(J.c.retry_of == sa.bindparam("b_id"))


def latest_attempt(conn: sa.Connection, job_id: int) -> int:
    """The job's last attempt: a failed or lost job that was retried has not ended for
    good, its retry (or the retry's retry) decides. Bounded by ``retries`` (≤ 100)."""
    for _ in range(1000):
        newer = conn.execute(_RETRIED_AS, {"b_id": job_id}).scalar()
        if newer is None:
            return job_id
        job_id = int(newer)
    return job_id


def add(conn: sa.Connection, child_id: int, afters: Sequence[After]) -> None:
    """Give the held job ``child_id`` its conditions, and decide at once those whose
    parent already ended: the job may leave here released (waiting) or skipped."""
    db.lock_row(conn, "assign")  # before reading the parents: see the module's docstring
    parents = {a.parent_id: a.on for a in afters}
    found = states(conn, parents)
    # A failed or lost parent that was retried has not ended: its last attempt decides.
    # Named with that attempt too, both conditions are on it: one row, the stricter.
    impossible: int | None = None
    for parent in [p for p, (state, _) in found.items() if state in ("failed", "lost")]:
        newer = latest_attempt(conn, parent)
        if newer != parent:
            on, other = parents.pop(parent), parents.get(newer, "any")
            if {on, other} == {"success", "failure"}:
                impossible = newer
            parents[newer] = on if other == "any" else other
            found.update(states(conn, [newer]))
            del found[parent]
    rows = [
        {"child_id": child_id, "parent_id": p, "on_end": on, "met": False}
        for p, on in parents.items()
    ]
    conn.execute(sa.insert(D), rows)
    if impossible is not None:
        if _skip(conn, child_id, f"job {impossible} cannot both succeed and fail"):
            ended(conn, child_id, SKIPPED)
        return
    for parent, on in sorted(parents.items()):
        state = found[parent][0] if parent in found else None
        if state is not None and state not in MEETS:
            continue  # not ended yet
        if state is not None and on in MEETS[state]:
            conn.execute(_MET, {"b_child": child_id, "b_parent": parent})
            continue
        reason = f"job {parent} was deleted" if state is None else f"job {parent} ended {state}"
        if _skip(conn, child_id, reason):
            ended(conn, child_id, SKIPPED)
        return
    _release(conn, child_id)


_MET = (
    sa.update(D)
    .where(D.c.child_id == sa.bindparam("b_child"), D.c.parent_id == sa.bindparam("b_parent"))
    .values(met=True)
)


def parents_of(conn: sa.Connection, job_id: int) -> list[After]:
    """The conditions a job was submitted with (a restart repeats them)."""
    rows = conn.execute(
        sa.select(D.c.parent_id, D.c.on_end).where(D.c.child_id == job_id).order_by(D.c.parent_id)
    )
    return [After(row.parent_id, row.on_end) for row in rows]


# -- reading -------------------------------------------------------------------------------


def links(conn: sa.Connection, job_id: int) -> Links:
    """A job's parents and children, with their states (None: deleted)."""
    parent = sa.select(D.c.parent_id.label("id"), D.c.on_end, D.c.met, J.c.state, J.c.user_id)
    parents = parent.select_from(D.outerjoin(J, J.c.id == D.c.parent_id)).where(
        D.c.child_id == job_id
    )
    child = sa.select(D.c.child_id.label("id"), D.c.on_end, D.c.met, J.c.state, J.c.user_id)
    children = child.select_from(D.join(J, J.c.id == D.c.child_id)).where(D.c.parent_id == job_id)

    def read(query: sa.Select[tuple[int, str, bool, str, int | None]]) -> list[Link]:
        return [
            Link(row.id, row.on_end, bool(row.met), row.state, row.user_id)
            for row in conn.execute(query.order_by(sa.literal_column("id")))
        ]

    return Links(parents=read(parents), children=read(children))
