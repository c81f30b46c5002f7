"""Schedules: the record, its occurrences, and the queries the leader's firing runs.

A schedule submits its stored job body at the times of a cron expression (read in an
IANA zone, :mod:`jobbalancer.cron`). ``next_fire_at`` is the next occurrence nobody has
decided yet; the leader (:mod:`jobbalancer.service.firing`) takes the due ones by its
index, decides each occurrence (fire or skip, with a reason), records it in
``schedule_occurrences`` (unique per schedule and time, in the transaction that creates
the job) and moves ``next_fire_at`` on. Callers hand in a connection in a transaction.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from jobbalancer import cron, errors, jobs
from jobbalancer.db import schema
from jobbalancer.db.types import AnyRow
from jobbalancer.refs import parse_id

S, OC, K, J = (
    schema.schedules, schema.schedule_occurrences, schema.schedule_counters, schema.jobs
)  # fmt: skip


class Overlap(enum.StrEnum):
    """What an occurrence does while the schedule's previous run has not ended."""

    ALLOW = "allow"  # run anyway, side by side
    SKIP = "skip"  # record a skip (the default)
    QUEUE = "queue"  # wait for the running one to end; at most one waits
    REPLACE = "replace"  # kill the running one, then run


class CatchUp(enum.StrEnum):
    """What happens to occurrences missed while no server ran."""

    NONE = "none"  # all skipped
    LATEST = "latest"  # the latest fires, the others are skipped (the default)
    ALL = "all"  # all fire, up to catch_up_max (the latest ones)


class Outcome(enum.StrEnum):
    FIRED = "fired"
    SKIPPED = "skipped"


class Reason(enum.StrEnum):
    """Why an occurrence was skipped, as a code (the metrics' label); the words are in
    the occurrence's ``reason``."""

    OVERLAP = "overlap"  # the previous run still going (overlap skip)
    QUEUE_FULL = "queue_full"  # a run waits already (overlap queue)
    OWNER = "owner"  # the owner is disabled, deleted, or may not submit
    REFUSED = "refused"  # the job would be refused (class, script, limits)
    MISSED = "missed"  # missed while no server ran


COUNTERS = ("fired", "late", *(f"skipped:{r.value}" for r in Reason))
# Fired later than this after its time: counted as late (the goal is p99 ≤ 1 s).
LATE_AFTER = timedelta(seconds=1)
# An occurrence due longer ago than this when the leader reaches it was missed while no
# server ran: its schedule's catch-up policy decides. A leader failover (a few seconds)
# stays well inside it, so its occurrences fire, late, as usual.
MISSED_AFTER = timedelta(seconds=60)
MAX_CATCH_UP = 1000
NEXT_RUNS = 5


@dataclass(frozen=True)
class Schedule:
    """A schedule as read from the database. Never mutated: update it through this module."""

    id: int
    name: str
    description: str
    job: Mapping[str, Any]  # the body of POST /api/v1/jobs, as given
    cron: str
    timezone: str
    enabled: bool
    overlap: Overlap
    catch_up: CatchUp
    catch_up_max: int
    start_at: datetime | None
    end_at: datetime | None
    next_fire_at: datetime | None
    user_id: int
    user_name: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: AnyRow) -> Schedule:
        m = row._mapping
        return cls(
            **{n: m[n] for n in _PLAIN},
            job=dict(m["job"] or {}),
            enabled=bool(m["enabled"]),
            overlap=Overlap(m["overlap"]),
            catch_up=CatchUp(m["catch_up"]),
        )

    def next_runs(self, after: datetime, count: int = NEXT_RUNS) -> list[datetime]:
        """The next ``count`` fire times after ``after`` (UTC), within start and end;
        none while paused."""
        if not self.enabled:
            return []
        return fire_times(self.cron, self.timezone, after, count, self.start_at, self.end_at)


_PLAIN = [
    n for n in Schedule.__dataclass_fields__ if n not in ("job", "enabled", "overlap", "catch_up")
]


@dataclass(frozen=True)
class Occurrence:
    """What became of one occurrence: its job (and the job's state now), or why not."""

    id: int
    schedule_id: int
    fire_at: datetime
    recorded_at: datetime
    outcome: Outcome
    job_id: int | None
    job_state: str | None  # None: no job, or the job was deleted
    reason: str | None
    reason_code: str | None
    late_ms: int
    manual: bool

    @classmethod
    def from_row(cls, row: AnyRow) -> Occurrence:
        m = row._mapping
        return cls(
            id=m["id"],
            schedule_id=m["schedule_id"],
            fire_at=m["fire_at"],
            recorded_at=m["recorded_at"],
            outcome=Outcome(m["outcome"]),
            job_id=m["job_id"],
            job_state=m["job_state"],
            reason=m["reason"],
            reason_code=m["reason_code"],
            late_ms=int(m["late_ms"]),
            manual=bool(m["manual"]),
        )


@dataclass(frozen=True)
class Listed:
    """A schedule with its latest occurrence (the list's "last result")."""

    schedule: Schedule
    last: Occurrence | None


def fire_times(
    expr: str,
    tz: str,
    after: datetime,
    count: int,
    start_at: datetime | None = None,
    end_at: datetime | None = None,
) -> list[datetime]:
    """Up to ``count`` fire times after ``after``, none before ``start_at`` or past ``end_at``."""
    if start_at is not None and start_at > after:
        after = start_at - timedelta(microseconds=1)  # a time at start_at itself counts
    return cron.next_times(expr, tz, after, count, until=end_at)


def first_fire(schedule: Schedule, after: datetime) -> datetime | None:
    """The first fire time after ``after``; None when paused or past its end."""
    found = schedule.next_runs(after, 1)
    return found[0] if found else None


# -- reading ------------------------------------------------------------------------------


def get(conn: sa.Connection, schedule_id: int) -> Schedule:
    row = conn.execute(sa.select(S).where(S.c.id == schedule_id)).first()
    if row is None:
        raise errors.NotFound(f"schedule {schedule_id} does not exist")
    return Schedule.from_row(row)


def find(conn: sa.Connection, ref: str | int, field: str | None = None) -> Schedule:
    """By name, or by id (a name never looks like an id)."""
    ref_id = parse_id(ref)
    where = (
        S.c.name == str(ref) if ref_id is None else sa.or_(S.c.id == ref_id, S.c.name == str(ref))
    )
    rows = list(conn.execute(sa.select(S).where(where)).all())
    if not rows:
        raise errors.NotFound(f"schedule {ref!r} does not exist", field=field)
    rows.sort(key=lambda r: r.name != str(ref))  # the name first
    return Schedule.from_row(rows[0])


def list_all(
    conn: sa.Connection,
    owner_id: int | None = None,
    *,
    after: str | None = None,
    limit: int | None = None,
) -> list[Listed]:
    """Schedules by name with their latest occurrence; ``owner_id``: that user's only;
    ``after`` a name and ``limit``: a page (the names after that one)."""
    query = sa.select(S).order_by(S.c.name)
    if owner_id is not None:
        query = query.where(S.c.user_id == owner_id)
    if after is not None:
        query = query.where(S.c.name > after)
    if limit is not None:
        query = query.limit(limit)
    found = [Schedule.from_row(r) for r in conn.execute(query)]
    last = _latest_occurrences(conn, [s.id for s in found])
    return [Listed(s, last.get(s.id)) for s in found]


def upcoming(conn: sa.Connection, owner_id: int | None = None, limit: int = 5) -> list[Schedule]:
    """The ``limit`` schedules that fire soonest (``owner_id``: that user's only). Walks
    the next_fire_at index from its start (paused and ended ones have none): it costs
    ``limit`` rows, not the schedules."""
    query = (
        sa.select(S)
        .where(S.c.next_fire_at.is_not(None))
        .order_by(S.c.next_fire_at, S.c.id)
        .limit(limit)
    )
    if owner_id is not None:
        query = query.where(S.c.user_id == owner_id)
    return [Schedule.from_row(r) for r in conn.execute(query)]


def _select_occurrences() -> sa.Select[Any]:
    return sa.select(OC, J.c.state.label("job_state")).select_from(
        OC.outerjoin(J, J.c.id == OC.c.job_id)
    )


def _latest_occurrences(conn: sa.Connection, ids: Sequence[int]) -> dict[int, Occurrence]:
    found: dict[int, Occurrence] = {}
    for start in range(0, len(ids), 500):
        part = list(ids[start : start + 500])
        # Each one's newest by fire time (the history's first row): one step down the
        # (schedule_id, fire_at) index each, not all of their occurrences.
        newest = (
            sa.select(OC.c.id)
            .where(OC.c.schedule_id == S.c.id)
            .order_by(OC.c.fire_at.desc())
            .limit(1)
            .scalar_subquery()
        )
        found_ids = conn.execute(sa.select(newest).where(S.c.id.in_(part))).scalars()
        latest = [i for i in found_ids if i is not None]
        if not latest:
            continue
        for row in conn.execute(_select_occurrences().where(OC.c.id.in_(latest))):
            occ = Occurrence.from_row(row)
            found[occ.schedule_id] = occ
    return found


def occurrences(
    conn: sa.Connection, schedule_id: int, limit: int = 20, before: int | None = None
) -> list[Occurrence]:
    """A schedule's occurrences, newest first (by fire time); ``before``: an occurrence
    id to page on from: the ones that come after it in that order (fired earlier; a
    run now has a later time than an occurrence recorded after it, and a smaller id).
    Fire times are unique per schedule, so the time alone is the cursor."""
    query = _select_occurrences().where(OC.c.schedule_id == schedule_id)
    if before is not None:
        cursor = conn.execute(
            sa.select(OC.c.fire_at).where(OC.c.id == before, OC.c.schedule_id == schedule_id)
        ).scalar()
        if cursor is None:  # not one of this schedule's: nothing comes after it
            return []
        query = query.where(OC.c.fire_at < cursor)
    rows = conn.execute(query.order_by(OC.c.fire_at.desc(), OC.c.id.desc()).limit(limit))
    return [Occurrence.from_row(r) for r in rows]


def counters(conn: sa.Connection) -> dict[str, int]:
    """The occurrence counters: fired, late, skipped:<reason code>."""
    found = dict.fromkeys(COUNTERS, 0)
    for name, count in conn.execute(sa.select(K.c.name, K.c.count)):
        found[name] = int(count)
    return found


def count_by_state(conn: sa.Connection) -> dict[str, int]:
    """Schedules by state: enabled (with a next run), paused, ended (past end_at)."""
    found = {"enabled": 0, "paused": 0, "ended": 0}
    query = sa.select(S.c.enabled, S.c.next_fire_at.is_(None), sa.func.count()).group_by(
        S.c.enabled, S.c.next_fire_at.is_(None)
    )
    for enabled, no_next, count in conn.execute(query):
        state = "paused" if not enabled else "ended" if no_next else "enabled"
        found[state] += int(count)
    return found


def due(conn: sa.Connection, now: datetime, limit: int = 200) -> list[tuple[int, datetime]]:
    """Schedules whose next occurrence is due: (id, its time), earliest first. A range
    scan of the next_fire_at index: it costs the due rows, not the schedules."""
    query = (
        sa.select(S.c.id, S.c.next_fire_at)
        .where(S.c.next_fire_at <= now)
        .order_by(S.c.next_fire_at, S.c.id)
        .limit(limit)
    )
    return [(r.id, r.next_fire_at) for r in conn.execute(query)]


def earliest(conn: sa.Connection) -> datetime | None:
    """The earliest next_fire_at of all schedules (the leader sleeps until then)."""
    return conn.execute(sa.select(sa.func.min(S.c.next_fire_at))).scalar()


# The statements a firing runs per occurrence are built once: building and cache-keying a
# SQLAlchemy statement costs more than running it on SQLite (as in jobs.py).
_LOCK = sa.select(S).where(S.c.id == sa.bindparam("b_id")).with_for_update()


def lock_many(conn: sa.Connection, ids: Sequence[int]) -> list[Schedule]:
    """These schedules (the ones not deleted), their rows locked in id order until the
    transaction ends: two servers deciding overlapping groups cannot deadlock."""
    query = sa.select(S).where(S.c.id.in_(sorted(ids))).order_by(S.c.id).with_for_update()
    return [Schedule.from_row(r) for r in conn.execute(query)]


def unfinished_many(
    conn: sa.Connection, ids: Sequence[int]
) -> dict[int, list[tuple[int, jobs.State]]]:
    """The schedules' jobs that have not ended (held, waiting, assigned, running, or any
    state a later version adds that is not final), oldest first, by schedule id."""
    found: dict[int, list[tuple[int, jobs.State]]] = {i: [] for i in ids}
    if not ids:
        return found
    query = (
        sa.select(J.c.id, J.c.state, J.c.schedule_id)
        .where(J.c.schedule_id.in_(list(ids)), J.c.state.not_in([s.value for s in jobs.FINAL]))
        .order_by(J.c.id)
    )
    for row in conn.execute(query):
        found[row.schedule_id].append((row.id, jobs.State(row.state)))
    return found


def lock(conn: sa.Connection, schedule_id: int) -> Schedule | None:
    """The schedule, its row locked until the transaction ends (two servers that reach one
    occurrence decide it one after the other); None if it was deleted."""
    row = conn.execute(_LOCK, {"b_id": schedule_id}).first()
    return None if row is None else Schedule.from_row(row)


# -- writing ------------------------------------------------------------------------------

_FIELDS = (
    "name", "description", "job", "cron", "timezone", "enabled", "overlap", "catch_up",
    "catch_up_max", "start_at", "end_at", "user_id", "user_name",
)  # fmt: skip


def create(conn: sa.Connection, values: Mapping[str, Any], now: datetime) -> Schedule:
    """Insert a schedule (``values``: the columns of :data:`_FIELDS`), its first fire
    time computed from ``now``. A name taken is a Conflict naming ``name``."""
    row = {k: values[k] for k in _FIELDS}
    draft = _draft(row, now)
    _check_name_free(conn, row["name"])
    result = conn.execute(
        sa.insert(S).values(
            **row, next_fire_at=first_fire(draft, now), created_at=now, updated_at=now
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return get(conn, int(key[0]))


def _draft(row: Mapping[str, Any], now: datetime) -> Schedule:
    return Schedule(
        id=0, **{k: row[k] for k in _FIELDS if k not in ("overlap", "catch_up")},
        overlap=Overlap(row["overlap"]), catch_up=CatchUp(row["catch_up"]),
        next_fire_at=None, created_at=now, updated_at=now,
    )  # fmt: skip


def _check_name_free(conn: sa.Connection, name: str, but: int | None = None) -> None:
    query = sa.select(S.c.id).where(S.c.name == name)
    if but is not None:
        query = query.where(S.c.id != but)
    if conn.execute(query).first() is not None:
        raise errors.Conflict(f"a schedule named {name!r} exists already", field="name")


_TIMING = ("cron", "timezone", "enabled", "start_at", "end_at")


def update(
    conn: sa.Connection, schedule_id: int, changes: Mapping[str, Any], now: datetime
) -> Schedule:
    """Change a schedule. A change of its timing (or a resume) computes the next fire time
    from ``now``: occurrences between the last one decided and now are not fired."""
    old = get(conn, schedule_id)
    row = {k: changes.get(k, getattr(old, k)) for k in _FIELDS}
    if "name" in changes:
        _check_name_free(conn, row["name"], but=schedule_id)
    values = {k: v for k, v in changes.items() if k in _FIELDS}
    if any(k in changes and changes[k] != getattr(old, k) for k in _TIMING):
        values["next_fire_at"] = first_fire(_draft(row, now), now)
    conn.execute(sa.update(S).where(S.c.id == schedule_id).values(**values, updated_at=now))
    return get(conn, schedule_id)


def delete(conn: sa.Connection, schedule_id: int) -> None:
    """Delete a schedule and its occurrences; its jobs stay (with their schedule_id)."""
    conn.execute(sa.delete(OC).where(OC.c.schedule_id == schedule_id))
    conn.execute(sa.delete(S).where(S.c.id == schedule_id))


def set_next_many(conn: sa.Connection, moves: Sequence[tuple[int, datetime | None]]) -> None:
    """:func:`set_next` of several schedules, (id, next fire time), in one round trip."""
    if moves:
        conn.execute(_SET_NEXT, [{"b_id": i, "b_next": at} for i, at in moves])


_SET_NEXT = (
    sa.update(S).where(S.c.id == sa.bindparam("b_id")).values(next_fire_at=sa.bindparam("b_next"))
)


def set_next(conn: sa.Connection, schedule_id: int, next_fire_at: datetime | None) -> None:
    conn.execute(_SET_NEXT, {"b_id": schedule_id, "b_next": next_fire_at})


_RECORD = sa.insert(OC)
_COUNT = (
    sa.update(K)
    .where(K.c.name == sa.bindparam("b_name"))
    .values(count=K.c.count + sa.bindparam("b_n", type_=sa.BigInteger))
)


def record(
    conn: sa.Connection,
    schedule_id: int,
    fire_at: datetime,
    now: datetime,
    *,
    job_id: int | None = None,
    reason: str | None = None,
    code: Reason | None = None,
    manual: bool = False,
    count: int = 1,
) -> None:
    """Record an occurrence: fired (``job_id``) or skipped (``reason`` and ``code``), and
    count it (``count``: a row standing for that many missed occurrences). A second
    record of one (schedule, time) is an IntegrityError: the caller's transaction, and
    the job it created, roll back."""
    row = occurrence_row(
        schedule_id, fire_at, now, job_id=job_id, reason=reason, code=code, manual=manual
    )
    conn.execute(_RECORD, row)
    for name in counted(row):
        _count(conn, name, count)


def occurrence_row(
    schedule_id: int,
    fire_at: datetime,
    now: datetime,
    *,
    job_id: int | None = None,
    reason: str | None = None,
    code: Reason | None = None,
    manual: bool = False,
) -> dict[str, Any]:
    """The row of an occurrence, as :func:`record` and :func:`record_many` write it."""
    late = max(now - fire_at, timedelta(0))
    return {
        "schedule_id": schedule_id,
        "fire_at": fire_at,
        "recorded_at": now,
        "outcome": (Outcome.FIRED if job_id is not None else Outcome.SKIPPED).value,
        "job_id": job_id,
        "reason": reason,
        "reason_code": None if code is None else code.value,
        "late_ms": int(late / timedelta(milliseconds=1)),
        "manual": manual,
    }


def counted(row: Mapping[str, Any]) -> list[str]:
    """The counters an occurrence's row adds to: fired (and late), or skipped:<code>."""
    if row["job_id"] is None:
        return [f"skipped:{row['reason_code'] or Reason.REFUSED.value}"]
    late = row["late_ms"] > LATE_AFTER / timedelta(milliseconds=1) and not row["manual"]
    return ["fired", "late"] if late else ["fired"]


def record_many(
    conn: sa.Connection, rows: Sequence[Mapping[str, Any]], counts: Mapping[str, int]
) -> None:
    """Insert occurrences' rows (:func:`occurrence_row`) in one statement and add
    ``counts`` to the counters: what :func:`record` does, for a group. A row whose
    (schedule, time) is recorded already is an IntegrityError, as there."""
    if rows:
        conn.execute(_RECORD, list(rows))
    for name, n in sorted(counts.items()):
        if n:
            _count(conn, name, n)


def delete_recorded_before(conn: sa.Connection, cutoff: datetime, limit: int = 1000) -> int:
    """Retention: delete occurrences recorded before ``cutoff``, among the ``limit``
    oldest (by id, which follows the time they were recorded): a bounded read of the
    primary key, whatever the size of the table, with no index of its own. How many."""
    oldest = conn.execute(sa.select(OC.c.id, OC.c.recorded_at).order_by(OC.c.id).limit(limit))
    ids = [r.id for r in oldest if r.recorded_at < cutoff]
    if ids:
        conn.execute(sa.delete(OC).where(OC.c.id.in_(ids)))
    return len(ids)


def _count(conn: sa.Connection, name: str, n: int = 1) -> None:
    done = conn.execute(_COUNT, {"b_name": name, "b_n": n})
    if done.rowcount == 0:  # a counter the migration did not seed
        conn.execute(sa.insert(K).values(name=name, count=n))
