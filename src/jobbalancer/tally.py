"""Counters and histograms of jobs for /metrics: jobs ended by class and state, wait time
(submit, or ``not_before`` if later → start) and run time (start → end) by class.

They live in the database (``metric_counts``), so every server shows the same figures and
a restart resets nothing. A job's moves write nothing for them: each scrape first *folds
in* the jobs that started or ended since the last fold, read in order of ``started_at`` /
``finished_at`` from a cursor (``metric_cursors``), at most :data:`FOLD_LIMIT` jobs per
cursor (a backlog is caught up over the next scrapes), under a lock on the cursors so two
servers never count a job twice (a fold that finds them locked skips: the other counts).

The cursors start at the first fold (the first scrape after the upgrade): jobs that ended
before it are not counted. A job is folded in once its time is ``settle`` seconds old: its
stamp (the database's clock) is written before the transaction that moved it commits, and
a job that commits later than a fold that already passed its stamp would be missed. A
transaction that takes longer than ``settle`` between the stamp and its commit loses its
jobs from the tallies; so does a job deleted before it was folded in
(docs/operations.md, "Metrics").
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from jobbalancer import db, jobs
from jobbalancer.db import schema

J = schema.jobs
C = schema.worker_classes
COUNTS = schema.metric_counts
CURSORS = schema.metric_cursors

# Upper bounds (seconds) of the wait and run time buckets: from a quick command to a day.
BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
INF = "+Inf"
SUM = "sum"
ENDED, WAIT, RUN = "ended", "wait", "run"
# Jobs folded in per cursor and scrape: bounds a scrape's cost whatever the backlog.
FOLD_LIMIT = 10_000
# Seconds a job's stamp must be old before it is folded in (see above).
SETTLE = 15.0

Key = tuple[str, str, str]


def bucket(seconds: float) -> str:
    """The label of the bucket ``seconds`` falls in: the smallest bound not below it."""
    i = bisect.bisect_left(BUCKETS, seconds)
    return INF if i == len(BUCKETS) else _label(BUCKETS[i])


def _label(bound: float) -> str:
    return repr(float(bound))


def observe(adds: defaultdict[Key, float], name: str, worker_class: str, seconds: float) -> None:
    """One observation of a histogram: its bucket and its sum."""
    seconds = max(seconds, 0.0)  # one clock stamps both ends; never below zero anyway
    adds[(name, worker_class, bucket(seconds))] += 1
    adds[(name, worker_class, SUM)] += seconds


@dataclass(frozen=True)
class Cursor:
    """Where a fold goes on from: the last job counted, in the order of its column."""

    name: str
    column: str


STARTED = Cursor("started", "started_at")
FINISHED = Cursor("ended", "finished_at")


def _after(cursor: Cursor, at: datetime, job_id: int, horizon: datetime) -> sa.Select[Any]:
    """The next jobs of ``cursor`` after (``at``, ``job_id``) up to ``horizon``, in order:
    an index range on the cursor's column."""
    column = J.c[cursor.column]
    return (
        sa.select(
            *(
                J.c[n]
                for n in (
                    "id",
                    cursor.column,
                    "state",
                    "created_at",
                    "not_before",
                    "started_at",
                    "finished_at",
                )
            ),
            C.c.name,
        )
        .select_from(J.join(C, C.c.id == J.c.worker_class_id))
        .where(column >= at, column <= horizon)
        .where(sa.or_(column > at, J.c.id > job_id))
        .order_by(column, J.c.id)
        .limit(FOLD_LIMIT)
    )


def fold(conn: sa.Connection, settle: float = SETTLE) -> int:
    """Fold the jobs that started or ended since the last fold into the tallies (in a
    :func:`db.write` transaction); how many jobs it read (0 too when another fold holds
    the cursors)."""
    # A fold under way on another server holds the cursors: this one skips (that fold
    # counts the same jobs), so a scrape never waits for another (PostgreSQL, MariaDB;
    # SQLite's write transaction excludes the other fold anyway).
    locked = sa.select(CURSORS).order_by(CURSORS.c.name).with_for_update(skip_locked=True)
    cursors = {r.name: r for r in conn.execute(locked)}
    horizon = db.now(conn) - timedelta(seconds=settle)
    adds: defaultdict[Key, float] = defaultdict(float)
    read = 0
    for cursor in (FINISHED, STARTED):
        row = cursors.get(cursor.name)
        if row is None:
            continue
        if row.at is None:  # the first fold: count from here on
            _move(conn, cursor, horizon, 0)
            continue
        last: tuple[datetime, int] | None = None
        for job_id, at, state, created, not_before, started, finished, cls in conn.execute(
            _after(cursor, row.at, row.job_id, horizon)
        ):
            read += 1
            last = (at, job_id)
            if cursor is STARTED:
                observe(adds, WAIT, cls, (started - ready(created, not_before)).total_seconds())
                continue
            adds[(ENDED, cls, state)] += 1
            if started is not None:
                observe(adds, RUN, cls, (finished - started).total_seconds())
        if last is not None:
            _move(conn, cursor, *last)
    _add(conn, adds)
    return read


def ready(created: datetime, not_before: datetime | None) -> datetime:
    """When a job could first start: its submit, or its ``not_before`` if later (a job
    that starts later, a retry that waits); its wait is counted from there."""
    return created if not_before is None else max(created, not_before)


def _move(conn: sa.Connection, cursor: Cursor, at: datetime, job_id: int) -> None:
    conn.execute(
        sa.update(CURSORS).where(CURSORS.c.name == cursor.name).values(at=at, job_id=job_id)
    )


def _add(conn: sa.Connection, adds: Mapping[Key, float]) -> None:
    """Add to the counts (new rows for new keys); the caller holds the cursors' lock, so
    no one else writes them meanwhile."""
    if not adds:
        return
    key = (COUNTS.c.name, COUNTS.c.worker_class, COUNTS.c.label)
    have = {tuple(r) for r in conn.execute(sa.select(*key))}
    rows = [{"b_name": k[0], "b_class": k[1], "b_label": k[2], "b_add": v} for k, v in adds.items()]
    old = [r for r in rows if (r["b_name"], r["b_class"], r["b_label"]) in have]
    new = [r for r in rows if (r["b_name"], r["b_class"], r["b_label"]) not in have]
    if old:
        conn.execute(
            sa.update(COUNTS)
            .where(
                COUNTS.c.name == sa.bindparam("b_name"),
                COUNTS.c.worker_class == sa.bindparam("b_class"),
                COUNTS.c.label == sa.bindparam("b_label"),
            )
            .values(value=COUNTS.c.value + sa.bindparam("b_add")),
            old,
        )
    if new:
        conn.execute(
            sa.insert(COUNTS),
            [
                {
                    "name": r["b_name"],
                    "worker_class": r["b_class"],
                    "label": r["b_label"],
                    "value": r["b_add"],
                }
                for r in new
            ],
        )


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts per bucket bound (the last is +Inf, the count), and the sum."""

    buckets: list[tuple[str, float]]
    sum: float

    @property
    def count(self) -> float:
        return self.buckets[-1][1]


@dataclass(frozen=True)
class Tallies:
    ended: dict[tuple[str, str], float]  # (class, state) → jobs
    wait: dict[str, Histogram]  # class → histogram
    run: dict[str, Histogram]


def read(conn: sa.Connection, classes: Iterable[str] = ()) -> Tallies:
    """The tallies, with zeros for every final state of ``classes`` (so a series exists
    before its first job)."""
    counts: dict[Key, float] = {}
    for name, cls, label, value in conn.execute(sa.select(COUNTS)):
        counts[(str(name), str(cls), str(label))] = float(value)
    every = set(classes) | {k[1] for k in counts}
    ended = {(c, s.value): counts.get((ENDED, c, s.value), 0.0)
             for c in sorted(every) for s in jobs.FINAL}  # fmt: skip
    return Tallies(
        ended=ended,
        wait={c: histogram(counts, WAIT, c) for c in sorted(every)},
        run={c: histogram(counts, RUN, c) for c in sorted(every)},
    )


def histogram(counts: Mapping[Key, float], name: str, worker_class: str) -> Histogram:
    """The cumulative buckets of one histogram from its stored per-bucket counts."""
    total = 0.0
    buckets = []
    for label in [*(_label(b) for b in BUCKETS), INF]:
        total += counts.get((name, worker_class, label), 0.0)
        buckets.append((label, total))
    return Histogram(buckets, counts.get((name, worker_class, SUM), 0.0))
