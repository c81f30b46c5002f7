"""Jobs: the record, its states, and every change of state.

This module is the only code that changes a job's state (with :mod:`jobbalancer.chains`,
which it calls for the moves out of ``held``), and it reads as the state machine: the
moves are in the order of a job's life, each one a statement built once (``UPDATE … WHERE
id = :id AND state = …``, defined just above the function that runs it) whose row count
says whether it happened; nothing reads a state, decides in Python, and writes it back.
Callers hand in a connection inside a write transaction (``db.write``), so a move and what
goes with it (a retry, a freed slot filled) commit together.
"""

from __future__ import annotations

import enum
import math
import random
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from jobbalancer import chains, db, errors, outbox, resources
from jobbalancer.db import schema
from jobbalancer.db.types import AnyRow, utcnow

J = schema.jobs


class State(enum.StrEnum):
    """Where a job is in its life. The moves, each a function below::

        submit ─▶ waiting ─assign─▶ assigned ─claim─▶ running ─finish─▶ done|failed|timeout|killed
                    │  ▲  ▲             │                ▲   │
                    │  │  └─unassign────┘ (worker gone)  │   └─lose (worker gone)─▶ lost
                    │  └── new attempt of a failed/lost job with retries left (retry_of)
                    ├─────────────take (a worker fills its own freed slots)─▶ running
                    ├─occupy─▶ occupied   (need_realtime, no free slot; kept for the record)
                    └─request_kill (waiting or assigned) ─▶ killed

        submit with after ─▶ held ─release (last parent ended as wanted)─▶ waiting
                               ├─skip (a parent's end cannot meet it)─▶ skipped
                               └─request_kill ─▶ killed

        submit with a future not_before/delay, or a retry that waits (retry_delay)
          ─▶ delayed ─release_due (not_before has come; the leader's tick)─▶ waiting
               └─request_kill ─▶ killed   (a retry's kill ends the chain of attempts)

    A running job is killed by its worker: ``request_kill`` sets ``kill_requested``, the
    worker kills the process and reports it (``finish`` → killed). Every move into a final
    state (and ``delete``) tells :mod:`jobbalancer.chains`, which releases or skips the
    held jobs waiting for that job, in the same transaction; it owns the moves out of
    ``held``. A failed or lost job that is retried has not ended: its retry takes over.
    """

    WAITING = "waiting"
    ASSIGNED = "assigned"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    TIMEOUT = "timeout"
    KILLED = "killed"
    LOST = "lost"
    OCCUPIED = "occupied"
    # Chains (jobbalancer.chains): waiting for other jobs to end; a condition that can no
    # longer be met.
    HELD = "held"
    SKIPPED = "skipped"
    # Starting later: not run before ``not_before`` (a submission's, or a retry's wait).
    DELAYED = "delayed"


ACTIVE = (State.ASSIGNED, State.RUNNING)
PENDING = (State.WAITING, State.ASSIGNED)
FINAL = (
    State.DONE, State.FAILED, State.TIMEOUT, State.KILLED, State.LOST, State.OCCUPIED,
    State.SKIPPED,
)  # fmt: skip
# What a worker may report when a job's process is over. LOST: the worker stopped the
# attempt itself, cut off from the database too long to know it still held it (fencing).
OUTCOMES = (State.DONE, State.FAILED, State.TIMEOUT, State.KILLED, State.LOST)
# Ends after which a job with retries left runs again as a new attempt (unless its
# ``retry_on`` says otherwise: then those it names, of RETRY_ENDS).
RETRYABLE = (State.FAILED, State.LOST)
RETRY_ENDS = (State.FAILED, State.TIMEOUT, State.LOST)
# The longest a job may be delayed, or a retry wait: a year.
MAX_DELAY = 365 * 86400.0


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed attempt is retried (docs/api.md, "Starting later, retrying later").

    The wait before attempt ``n + 1`` is ``delay · backoff^(n-1)``, spread at random by up
    to ± ``jitter`` of itself (a fraction, 0 to 1), then capped at ``max_delay``. ``on``:
    the ends retried, states of :data:`RETRY_ENDS` and exit codes (a ``failed`` job with
    that exit code); empty: :data:`RETRYABLE`.
    """

    delay: float = 0.0
    backoff: float = 1.0
    max_delay: float | None = None
    jitter: float = 0.0
    on: tuple[str | int, ...] = ()

    def retries_end(self, state: State, exit_code: int | None) -> bool:
        """Whether an attempt that ended so is retried (if it has retries left)."""
        if not self.on:
            return state in RETRYABLE
        if state.value in self.on:
            return True
        return state == State.FAILED and exit_code is not None and exit_code in self.on

    def wait(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before the attempt after ``attempt`` (1 for the first run)."""
        if self.delay <= 0:
            return 0.0
        backoff, steps = max(self.backoff, 1.0), max(attempt - 1, 0)
        # backoff^steps overflows a float long before attempt 101: past a year, a year.
        if steps * math.log(backoff) > math.log(2 * MAX_DELAY / self.delay):
            base = 2 * MAX_DELAY
        else:
            base = self.delay * backoff**steps
        spread = base * self.jitter * (2.0 * rand() - 1.0)
        cap = MAX_DELAY if self.max_delay is None else min(self.max_delay, MAX_DELAY)
        return max(0.0, min(base + spread, cap))

    @classmethod
    def of(cls, row: Mapping[str, Any] | sa.RowMapping) -> RetryPolicy:
        """The policy kept in a job's columns (NULL: the default)."""
        return cls(
            delay=float(row["retry_delay"] or 0.0),
            backoff=float(row["retry_backoff"] or 1.0),
            max_delay=None if row["retry_max_delay"] is None else float(row["retry_max_delay"]),
            jitter=float(row["retry_jitter"] or 0.0),
            on=tuple(row["retry_on"] or ()),
        )


@dataclass(frozen=True)
class Spec:
    """What to run and how: everything a submission or a restart copies."""

    worker_class_id: int
    command: str | None = None
    script_id: int | None = None
    script_name: str | None = None
    interpreter: str | None = None
    script_content: str | None = None
    params: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    watchdog: float | None = None
    need_realtime: bool = False
    priority: int = 0
    retries: int = 0
    # The directory on the worker it runs in; None: a private temporary directory.
    workdir: str | None = None
    # The job's own notification rules: ({"on": [states], "target": target id}, ...).
    notify: tuple[Mapping[str, Any], ...] = ()
    # Created held: it has conditions (chains.add gives them, and may release it at once).
    held: bool = False
    # The schedule firing it (jobbalancer.schedules); None: submitted by hand.
    schedule_id: int | None = None
    # Not run before this time, or for this many seconds from now (the database's clock);
    # at most one of the two. A time already past runs at once (and is not kept).
    not_before: datetime | None = None
    delay: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Secrets by name (jobbalancer/vault.py; never values): {ENV_NAME: name} and
    # {index in params: name}, resolved by the worker just before the start.
    secret_env: Mapping[str, str] = field(default_factory=dict)
    secret_args: Mapping[int, str] = field(default_factory=dict)
    # Placement (jobbalancer/resources.py): what it requests; 0/None: nothing of that.
    cpus: float | None = None
    memory: int | None = None
    gpus: int | None = None
    constraints: Mapping[str, str | bool] | None = None

    @property
    def request(self) -> resources.Request:
        return resources.Request.of(self.cpus, self.memory, self.gpus, self.constraints)


# Columns a restart or a retry copies from the job it repeats.
_SPEC_COLUMNS = (
    "command",
    "script_id",
    "script_name",
    "interpreter",
    "script_content",
    "params",
    "env",
    "labels",
    "watchdog",
    "worker_class_id",
    "need_realtime",
    "priority",
    "retries",
    "workdir",
    "notify",
    "user_id",
    "user_name",
    "retry_delay",
    "retry_backoff",
    "retry_max_delay",
    "retry_jitter",
    "retry_on",
    "secret_env",
    "secret_args",
    "cpus",
    "memory",
    "gpus",
    "constraints",
)


@dataclass(frozen=True)
class Job:
    """A job as read from the database. Never mutated: ask the manager for a change."""

    id: int
    state: State
    command: str | None
    script_id: int | None
    script_name: str | None
    interpreter: str | None
    script_content: str | None
    params: tuple[str, ...]
    env: Mapping[str, str]
    labels: Mapping[str, str]
    watchdog: float | None
    worker_class_id: int
    worker_class: str
    need_realtime: bool
    priority: int
    retries: int
    workdir: str | None
    notify: tuple[Mapping[str, Any], ...]
    attempt: int
    retry_of: int | None
    restarted_from: int | None
    user_id: int | None
    user_name: str | None
    worker_id: int | None
    worker_name: str | None
    token: str | None
    pid: int | None
    exit_code: int | None
    signal: int | None
    error: str | None
    kill_requested: bool
    output_bytes: int
    created_at: datetime
    assigned_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    not_before: datetime | None
    retry_delay: float | None
    retry_backoff: float | None
    retry_max_delay: float | None
    retry_jitter: float | None
    retry_on: tuple[str | int, ...] | None
    # The schedule that fired it (its retries keep it); None: submitted by hand.
    schedule_id: int | None = None
    # Secrets by name (see Spec); last, with defaults, so records made elsewhere need not.
    secret_env: Mapping[str, str] = field(default_factory=dict)
    secret_args: Mapping[int, str] = field(default_factory=dict)
    # Placement: what it requests, and why it still waits (set while it waits).
    cpus: float | None = None
    memory: int | None = None
    gpus: int | None = None
    constraints: Mapping[str, str | bool] | None = None
    pending_reason: str | None = None

    @property
    def request(self) -> resources.Request:
        return resources.Request.of(self.cpus, self.memory, self.gpus, self.constraints)

    @classmethod
    def from_row(cls, row: AnyRow) -> Job:
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> Job:
        """A job from its row's columns with ``worker_name`` and ``worker_class``."""
        return cls(
            **{name: m[name] for name in _PLAIN_FIELDS},
            state=State(m["state"]),
            params=tuple(m["params"] or ()),
            env=dict(m["env"] or {}),
            labels=dict(m["labels"] or {}),
            notify=tuple(m["notify"] or ()),
            kill_requested=bool(m["kill_requested"]),
            need_realtime=bool(m["need_realtime"]),
            retry_on=None if m["retry_on"] is None else tuple(m["retry_on"]),
            secret_env=dict(m["secret_env"] or {}),
            secret_args={int(k): v for k, v in (m["secret_args"] or {}).items()},
            constraints=dict(m["constraints"]) if m["constraints"] else None,
        )

    @property
    def finished(self) -> bool:
        return self.state in FINAL

    @property
    def retry_policy(self) -> RetryPolicy:
        names = ("retry_delay", "retry_backoff", "retry_max_delay", "retry_jitter", "retry_on")
        return RetryPolicy.of({n: getattr(self, n) for n in names})


_SPECIAL = {
    "state", "params", "env", "labels", "notify", "kill_requested", "need_realtime", "retry_on",
}  # fmt: skip
_SPECIAL |= {"secret_env", "secret_args", "constraints"}
_PLAIN_FIELDS = [n for n in Job.__dataclass_fields__ if n not in _SPECIAL]


def select_jobs() -> sa.Select[Any]:
    """Jobs with their worker's and class's names, for reading into :class:`Job`."""
    w, c = schema.workers, schema.worker_classes
    return sa.select(J, w.c.name.label("worker_name"), c.c.name.label("worker_class")).select_from(
        J.join(c, c.c.id == J.c.worker_class_id).outerjoin(w, w.c.id == J.c.worker_id)
    )


_GET_MANY = select_jobs().where(J.c.id.in_(sa.bindparam("b_ids", expanding=True)))


def get(conn: sa.Connection, job_id: int) -> Job:
    row = conn.execute(select_jobs().where(J.c.id == job_id)).first()
    if row is None:
        raise errors.NotFound(f"job {job_id} does not exist")
    return Job.from_row(row)


def get_many(conn: sa.Connection, ids: Sequence[int]) -> list[Job]:
    """The jobs with these ids, in the order given."""
    if not ids:
        return []
    rows = conn.execute(_GET_MANY, {"b_ids": list(ids)}).all()
    by_id = {row.id: Job.from_row(row) for row in rows}
    return [by_id[i] for i in ids if i in by_id]


# -- the moves: each is a statement built once, run through _moved ------------------------
# The statements a job's normal life runs many times a second are built once: building
# and cache-keying a SQLAlchemy statement costs more than executing it on SQLite.


def _moved(conn: sa.Connection, stmt: sa.Update, params: Mapping[str, Any]) -> bool:
    """Run a move of one job; True when it happened (the job was where the move starts)."""
    return conn.execute(stmt, params).rowcount == 1


# -- creating: submit, restart, retry → waiting -------------------------------------------

_INSERT = sa.insert(J).values(created_at=utcnow())


def create(
    conn: sa.Connection, specs: Sequence[Spec], user_id: int | None, user_name: str | None
) -> list[int]:
    """Insert waiting jobs (held ones with ``after``, delayed ones with a ``not_before`` or
    ``delay`` still to come); their ids in the order of ``specs``.

    One multi-row INSERT … RETURNING where the database can (SQLite, PostgreSQL,
    MariaDB); a row at a time elsewhere. The database's clock says what is to come (read
    once, only when a spec starts later).
    """
    timed = any(s.not_before is not None or s.delay is not None for s in specs)
    now = db.now(conn) if timed else None
    rows = [_row(spec, user_id, user_name, now) for spec in specs]
    if len(rows) > 1 and conn.dialect.insert_executemany_returning_sort_by_parameter_order:
        stmt = _INSERT.returning(J.c.id, sort_by_parameter_order=True)
        return [int(i) for i in conn.execute(stmt, rows).scalars()]
    return [_inserted_id(conn.execute(_INSERT, row)) for row in rows]


def _starts_at(spec: Spec, now: datetime | None) -> datetime | None:
    """When a spec's job may start, if that is still to come."""
    if now is None:
        return None
    at = now + timedelta(seconds=spec.delay) if spec.delay is not None else spec.not_before
    return at if at is not None and at > now else None


def _row(
    spec: Spec, user_id: int | None, user_name: str | None, now: datetime | None = None
) -> dict[str, Any]:
    not_before = _starts_at(spec, now)
    later = State.DELAYED if not_before is not None else State.WAITING
    retry = spec.retry
    return {
        "state": (State.HELD if spec.held else later).value,
        "not_before": not_before,
        "retry_delay": retry.delay or None,
        "retry_backoff": None if retry.backoff == 1.0 else retry.backoff,
        "retry_max_delay": retry.max_delay,
        "retry_jitter": retry.jitter or None,
        "retry_on": list(retry.on) or None,
        "command": spec.command,
        "script_id": spec.script_id,
        "script_name": spec.script_name,
        "interpreter": spec.interpreter,
        "script_content": spec.script_content,
        "params": list(spec.params),
        "env": dict(spec.env),
        "labels": dict(spec.labels),
        "watchdog": spec.watchdog or None,
        "worker_class_id": spec.worker_class_id,
        "need_realtime": spec.need_realtime,
        "priority": spec.priority,
        "retries": spec.retries,
        "workdir": spec.workdir,
        "notify": [dict(rule) for rule in spec.notify] or None,
        "schedule_id": spec.schedule_id,
        "secret_env": dict(spec.secret_env) or None,
        "secret_args": {str(i): n for i, n in spec.secret_args.items()} or None,
        "attempt": 1,
        "user_id": user_id,
        "user_name": user_name,
        "kill_requested": False,
        "output_bytes": 0,
        "cpus": spec.cpus or None,
        "memory": spec.memory or None,
        "gpus": spec.gpus or None,
        "constraints": dict(spec.constraints) if spec.constraints else None,
    }


def add_parents(conn: sa.Connection, job_id: int, after: Sequence[chains.After]) -> None:
    """Give a job created held (``Spec.held``) the jobs it waits for; decided at once where
    a parent has ended already (held → waiting or skipped)."""
    chains.add(conn, job_id, after)


def restart(conn: sa.Connection, job_id: int, user_id: int | None, user_name: str | None) -> int:
    """A new waiting job with the same spec as ``job_id``; the old one stays as it was.

    A job that had parents gets the same ones, checked at once: it may be held, released
    or skipped (the parents are not run again, nor are the old job's children). A restart
    runs now: the old job's ``not_before`` is not copied (its retry policy is)."""
    after = chains.parents_of(conn, job_id)
    state = State.HELD if after else State.WAITING
    new_id = _copy(
        conn, job_id, attempt=1, restarted_from=job_id, user=(user_id, user_name), state=state
    )
    if new_id is None:
        raise errors.NotFound(f"job {job_id} does not exist")
    if after:
        chains.add(conn, new_id, after)
    return new_id


def _copy(
    conn: sa.Connection,
    job_id: int,
    *,
    attempt: int | None = None,
    restarted_from: int | None = None,
    retry_of: int | None = None,
    user: tuple[int | None, str | None] | None = None,
    state: State = State.WAITING,
    ended: tuple[State, int | None] | None = None,
) -> int | None:
    """Insert a waiting copy of a job's spec; None when the job does not exist.

    ``attempt=None`` makes the next attempt of the same job, only if it has retries left
    and, with ``ended`` (how the attempt ended: state, exit code), its retry policy
    retries that end; the attempt is ``delayed`` until the policy's wait from the end
    (its ``finished_at``, the database's clock) has passed.
    """
    query = sa.select(
        *(J.c[n] for n in _SPEC_COLUMNS), J.c.attempt, J.c.schedule_id, J.c.finished_at
    ).where(J.c.id == job_id)
    if attempt is None:
        query = query.where(J.c.attempt <= J.c.retries)
    row = conn.execute(query).first()
    if row is None:
        return None
    not_before = None
    if ended is not None:
        policy = RetryPolicy.of(row._mapping)
        if not policy.retries_end(*ended):
            return None
        wait = policy.wait(row.attempt)
        if wait > 0 and row.finished_at is not None:
            state, not_before = State.DELAYED, row.finished_at + timedelta(seconds=wait)
    values = {n: row._mapping[n] for n in _SPEC_COLUMNS}
    if user is not None:
        values["user_id"], values["user_name"] = user
    if retry_of is not None:  # a retry is the same run of its schedule; a restart is not
        values["schedule_id"] = row.schedule_id
    result = conn.execute(
        sa.insert(J).values(
            **values,
            state=state.value,
            attempt=row.attempt + 1 if attempt is None else attempt,
            restarted_from=restarted_from,
            retry_of=retry_of,
            not_before=not_before,
            kill_requested=False,
            output_bytes=0,
            created_at=utcnow(),
        )
    )
    return _inserted_id(result)


def _inserted_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _retry(conn: sa.Connection, job_id: int, state: State, exit_code: int | None) -> int | None:
    """Queue the next attempt of a job that ended ``state``, if it has retries left and
    its policy retries that end (at once, or delayed by the policy's wait); the jobs
    waiting for it wait for the new attempt."""
    new_id = _copy(conn, job_id, retry_of=job_id, ended=(state, exit_code))
    if new_id is not None:
        chains.follow_retry(conn, job_id, new_id)
    return new_id


# -- assign: waiting → assigned -----------------------------------------------------------

_ASSIGN = (
    sa.update(J)
    .where(J.c.id == sa.bindparam("b_id"), J.c.state == State.WAITING.value)
    .values(
        state=State.ASSIGNED.value,
        worker_id=sa.bindparam("b_worker"),
        token=sa.bindparam("b_token"),
        assigned_at=utcnow(),
    )
)


def assign(conn: sa.Connection, job_id: int, worker_id: int) -> bool:
    """waiting → assigned to ``worker_id``, with a fresh fencing token."""
    return _moved(conn, _ASSIGN, _assign_params(job_id, worker_id))


def assign_read(
    conn: sa.Connection, job_id: int, worker_id: int
) -> tuple[bool, dict[str, Any] | None]:
    """:func:`assign`, and where the database returns what an UPDATE wrote (SQLite,
    PostgreSQL; not MariaDB) the job's columns as assigned, from the same statement
    (None elsewhere, or when the job was not waiting)."""
    params = _assign_params(job_id, worker_id)
    if not conn.dialect.update_returning:
        return _moved(conn, _ASSIGN, params), None
    row = conn.execute(_ASSIGN_RETURNING, params).first()
    if row is None:
        return False, None
    columns = dict(row._mapping)
    for name in _FLOATS:  # SQLite's RETURNING gives a whole REAL as an int, SELECT a float
        if columns[name] is not None:
            columns[name] = float(columns[name])
    return True, columns


_ASSIGN_RETURNING = _ASSIGN.returning(*J.c)
_FLOATS = [c.name for c in J.c if isinstance(c.type, sa.Float)]


def _assign_params(job_id: int, worker_id: int) -> dict[str, Any]:
    return {"b_id": job_id, "b_worker": worker_id, "b_token": secrets.token_hex(8)}


# -- take: waiting → running (a worker fills its own freed slots) -------------------------

_TAKE = (
    sa.update(J)
    .where(J.c.state == State.WAITING.value)
    .values(
        state=State.RUNNING.value,
        worker_id=sa.bindparam("b_worker"),
        token=sa.bindparam("b_token"),
        assigned_at=utcnow(),
        started_at=utcnow(),
    )
)
QUEUE = (
    sa.select(J.c.id)
    .where(J.c.state == State.WAITING.value, J.c.worker_class_id == sa.bindparam("b_class"))
    .order_by(J.c.priority.desc(), J.c.id)
    .limit(sa.bindparam("b_limit", type_=sa.Integer))
)
# Only jobs whose request fits, each alone, in what the worker has free (a job without a
# request asks for nothing but its slot, so it always does); :func:`take` checks their
# sum and the labels they want after the update.
_QUEUE_LOCKED = QUEUE.where(
    sa.func.coalesce(J.c.cpus, 0) <= sa.bindparam("b_free_cpus", type_=sa.Double),
    sa.func.coalesce(J.c.memory, 0) <= sa.bindparam("b_free_memory", type_=sa.BigInteger),
    sa.func.coalesce(J.c.gpus, 0) <= sa.bindparam("b_free_gpus", type_=sa.Integer),
).with_for_update(skip_locked=True)
# The queue's head is read once, before the update. As a plain `IN (subquery)`,
# PostgreSQL may plan it as a loop that reads the subquery again for every row it updates;
# each time the rows it has just taken are skipped (locked), so the next ones qualify and
# a long queue went to one worker whole, past its slots. MATERIALIZED forbids that.
_QUEUE_HEAD = _QUEUE_LOCKED.cte("queue_head").prefix_with("MATERIALIZED", dialect="postgresql")
_TAKE_FIRST = _TAKE.where(J.c.id.in_(sa.select(_QUEUE_HEAD.c.id)))
_TAKE_IDS = _TAKE.where(J.c.id.in_(sa.bindparam("b_ids", expanding=True)))
_TAKEN = (
    select_jobs()
    .where(
        J.c.worker_id == sa.bindparam("b_worker"),
        J.c.state == State.RUNNING.value,
        J.c.token == sa.bindparam("b_token"),
    )
    .order_by(J.c.priority.desc(), J.c.id)
)


_UNTAKE = (
    sa.update(J)
    .where(
        J.c.id.in_(sa.bindparam("b_ids", expanding=True)),
        J.c.token == sa.bindparam("b_token"),
        J.c.state == State.RUNNING.value,
    )
    .values(
        state=State.WAITING.value, worker_id=None, token=None, assigned_at=None, started_at=None
    )
    .values(pending_reason=None)  # the reason it had before it was placed is old news
)
_UNLIMITED = {"b_free_cpus": 1e15, "b_free_memory": 1 << 62, "b_free_gpus": 1 << 30}


def take(
    conn: sa.Connection,
    worker_id: int,
    class_id: int,
    limit: int,
    capacity: resources.Capacity | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[Job]:
    """The first ``limit`` waiting jobs of a class, in queue order, waiting → running on
    ``worker_id`` at once: a worker filling its own freed slots assigns and claims in one
    statement (it starts the processes right after the commit). The jobs it got.

    Only jobs that fit what the worker has free (``capacity``) and whose constraints its
    ``labels`` meet: the statement takes jobs that fit each alone; the read-back walks
    them in queue order and gives back (one more statement, rarely run) those past what
    is free together or whose constraints the labels do not meet. Jobs without requests
    never need it.

    They share one fresh fencing token: what fences is that each assignment of a job
    gets a token no earlier assignment of it had. Reading the queue skips rows another
    transaction holds (PostgreSQL, MariaDB) rather than waiting to find them taken.
    """
    if limit <= 0:
        return []
    token = secrets.token_hex(8)
    params = {"b_worker": worker_id, "b_token": token, "b_class": class_id, "b_limit": limit}
    params.update(_free(capacity))
    if conn.dialect.update_returning:  # the queue as a subquery: one statement
        conn.execute(_TAKE_FIRST, params)
    else:  # MariaDB/MySQL cannot update a table it reads in a subquery
        ids = list(conn.execute(_QUEUE_LOCKED, params).scalars())
        if not ids:
            return []
        conn.execute(_TAKE_IDS, {**params, "b_ids": ids})
    taken = [Job.from_row(r) for r in conn.execute(_TAKEN, params)]
    if any(not j.request.empty for j in taken):
        taken = _within(conn, taken, capacity or resources.Capacity(), labels or {}, token)
    outbox.jobs_moved(conn, "started", ((j.id, j.worker_class_id, j.notify) for j in taken))
    return taken


def _free(capacity: resources.Capacity | None) -> dict[str, Any]:
    if capacity is None:
        return dict(_UNLIMITED)
    return {
        # As Capacity.fits: a hair of tolerance, so tenths of a CPU add up to a whole one.
        "b_free_cpus": min(capacity.free_cpus + 1e-9, _UNLIMITED["b_free_cpus"]),
        "b_free_memory": int(min(capacity.free_memory, _UNLIMITED["b_free_memory"])),
        "b_free_gpus": int(min(capacity.free_gpus, _UNLIMITED["b_free_gpus"])),
    }


def _within(
    conn: sa.Connection,
    taken: Sequence[Job],
    capacity: resources.Capacity,
    labels: Mapping[str, str],
    token: str,
) -> list[Job]:
    """The jobs just taken that fit together, in queue order; the others go back."""
    kept, back = [], []
    for job in taken:
        request = job.request
        if capacity.fits(request) and resources.matches(request.constraints, labels):
            kept.append(job)
            capacity = capacity.plus(request)
        else:
            back.append(job.id)
    if back:
        conn.execute(_UNTAKE, {"b_ids": back, "b_token": token})
    return kept


# -- occupy: waiting → occupied -----------------------------------------------------------

_OCCUPY = (
    sa.update(J)
    .where(J.c.id == sa.bindparam("b_id"), J.c.state == State.WAITING.value)
    .values(state=State.OCCUPIED.value, error="no worker had a free slot", finished_at=utcnow())
)


def occupy(conn: sa.Connection, job_id: int) -> bool:
    """waiting → occupied: need_realtime and no free slot; kept for the record."""
    if not _moved(conn, _OCCUPY, {"b_id": job_id}):
        return False
    outbox.job_moved(conn, State.OCCUPIED.value, [job_id])
    chains.ended(conn, job_id, State.OCCUPIED)
    return True


# -- claim: assigned → running ------------------------------------------------------------

_CLAIM = (
    sa.update(J)
    .where(
        J.c.id == sa.bindparam("b_id"),
        J.c.state == State.ASSIGNED.value,
        J.c.worker_id == sa.bindparam("b_worker"),
        J.c.token == sa.bindparam("b_token"),
    )
    .values(state=State.RUNNING.value, started_at=utcnow())
)


def claim(conn: sa.Connection, job_id: int, worker_id: int, token: str) -> bool:
    """assigned → running: the worker takes the job before starting its process."""
    params = {"b_id": job_id, "b_worker": worker_id, "b_token": token}
    if not _moved(conn, _CLAIM, params):
        return False
    outbox.job_moved(conn, "started", [job_id])
    return True


def _claim_all() -> sa.CompoundSelect[Any]:
    """The statement of :func:`claim_for_worker` (an UPDATE … RETURNING in a WITH)."""
    w, c = schema.workers, schema.worker_classes
    claimed = (
        sa.update(J)
        .where(J.c.worker_id == sa.bindparam("b_worker"), J.c.state == State.ASSIGNED.value)
        .values(state=State.RUNNING.value, started_at=utcnow())
        .returning(*J.c)
        .cte("claimed")
    )
    names = (w.c.name.label("worker_name"), c.c.name.label("worker_class"))
    got = sa.select(*claimed.c, *names, sa.true().label("claimed")).select_from(
        claimed.join(c, c.c.id == claimed.c.worker_class_id).outerjoin(
            w, w.c.id == claimed.c.worker_id
        )
    )
    # The statement's snapshot predates its update: a job just claimed is not in here.
    kill = (
        select_jobs()
        .add_columns(sa.false().label("claimed"))
        .where(
            J.c.worker_id == sa.bindparam("b_worker"),
            J.c.state == State.RUNNING.value,
            J.c.kill_requested.is_(True),
        )
    )
    order: list[sa.ColumnElement[Any]] = [sa.literal_column("priority").desc()]
    order.append(sa.literal_column("id"))
    return sa.union_all(got, kill).order_by(*order)


_CLAIM_ALL = _claim_all()


def claim_for_worker(conn: sa.Connection, worker_id: int) -> tuple[list[Job], list[Job]]:
    """assigned → running for every job assigned to ``worker_id``, and its running jobs
    to kill, in one statement (PostgreSQL): the jobs claimed, and those to kill.

    What :func:`for_worker` then :func:`claim` do in two. The token check of ``claim``
    guards a token read earlier; here the job is claimed in the statement that reads it,
    so it is the current assignment's.
    """
    claimed: list[Job] = []
    to_kill: list[Job] = []
    for row in conn.execute(_CLAIM_ALL, {"b_worker": worker_id}):
        (claimed if row.claimed else to_kill).append(Job.from_row(row))
    # Outside a transaction here (one statement): the started notices follow at once.
    outbox.jobs_moved(conn, "started", ((j.id, j.worker_class_id, j.notify) for j in claimed))
    return claimed, to_kill


_FOR_WORKER = (
    select_jobs()
    .where(
        J.c.worker_id == sa.bindparam("b_worker"),
        sa.or_(
            J.c.state == State.ASSIGNED.value,
            sa.and_(J.c.state == State.RUNNING.value, J.c.kill_requested.is_(True)),
        ),
    )
    .order_by(J.c.priority.desc(), J.c.id)
)


def for_worker(conn: sa.Connection, worker_id: int) -> list[Job]:
    """What a worker must act on: jobs assigned to it, and its running jobs to kill."""
    return [Job.from_row(r) for r in conn.execute(_FOR_WORKER, {"b_worker": worker_id})]


# -- set_pid: the running process's pid (no move) -----------------------------------------

_SET_PID = (
    sa.update(J)
    .where(
        J.c.id == sa.bindparam("b_id"),
        J.c.token == sa.bindparam("b_token"),
        J.c.state == State.RUNNING.value,
    )
    .values(pid=sa.bindparam("b_pid"))
)


def set_pid(conn: sa.Connection, job_id: int, token: str, pid: int) -> bool:
    """Record the running process's pid (not a change of state)."""
    return _moved(conn, _SET_PID, {"b_id": job_id, "b_token": token, "b_pid": pid})


# -- finish: running → done | failed | timeout | killed -----------------------------------

_FINISH = (
    sa.update(J)
    .where(
        J.c.id == sa.bindparam("b_id"),
        J.c.state == State.RUNNING.value,
        J.c.token == sa.bindparam("b_token"),
    )
    .values(
        state=sa.bindparam("b_state"),
        exit_code=sa.bindparam("b_exit_code"),
        signal=sa.bindparam("b_signal"),
        error=sa.bindparam("b_error"),
        finished_at=utcnow(),
        # None: keep what is there.
        output_bytes=sa.func.coalesce(sa.bindparam("b_output_bytes"), J.c.output_bytes),
        pid=sa.func.coalesce(sa.bindparam("b_pid"), J.c.pid),
    )
)


def finish(
    conn: sa.Connection,
    job_id: int,
    token: str,
    state: State,
    *,
    exit_code: int | None = None,
    signal: int | None = None,
    error: str | None = None,
    output_bytes: int | None = None,
    pid: int | None = None,
    retry: bool = True,
) -> bool:
    """running → done/failed/timeout/killed, as the worker saw it end; retries if allowed
    (and ``retry``: not when the worker could not tell how the job really ended).

    False when the attempt is no longer this worker's (recovered, or fenced off).
    """
    if state not in OUTCOMES:
        raise ValueError(f"{state} is not an outcome a worker reports")
    params = {
        "b_id": job_id, "b_token": token, "b_state": state.value, "b_exit_code": exit_code,
        "b_signal": signal, "b_error": error, "b_output_bytes": output_bytes, "b_pid": pid,
    }  # fmt: skip
    if not _moved(conn, _FINISH, params):
        return False
    outbox.job_moved(conn, state.value, [job_id])
    if not (retry and state in RETRY_ENDS and _retry(conn, job_id, state, exit_code) is not None):
        chains.ended(conn, job_id, state)
    return True


# -- request_kill: held | delayed | waiting | assigned → killed; running → kill_requested --

_KILL_PENDING = (
    sa.update(J)
    .where(
        J.c.id == sa.bindparam("b_id"),
        J.c.state.in_([s.value for s in (State.HELD, State.DELAYED, *PENDING)]),
    )
    .values(state=State.KILLED.value, error="killed before it started", finished_at=utcnow())
)
_REQUEST_KILL = (
    sa.update(J)
    .where(J.c.id == sa.bindparam("b_id"), J.c.state == State.RUNNING.value)
    .values(kill_requested=True)
)


def request_kill(conn: sa.Connection, job_id: int) -> None:
    """Kill a job: at once if it has not started, by its worker if it runs. A delayed
    retry killed ends its job's attempts (the jobs held for it are decided as killed).

    Raises NotFound for an unknown job and Conflict for one that is already over.
    """
    if _moved(conn, _KILL_PENDING, {"b_id": job_id}):
        outbox.job_moved(conn, State.KILLED.value, [job_id])
        chains.ended(conn, job_id, State.KILLED)
        return
    if _moved(conn, _REQUEST_KILL, {"b_id": job_id}):
        worker_id = conn.execute(sa.select(J.c.worker_id).where(J.c.id == job_id)).scalar()
        if worker_id is not None:
            db.wake_workers(conn, [worker_id])
        return
    job = get(conn, job_id)  # raises NotFound
    raise errors.Conflict(f"job {job_id} is already {job.state}; nothing to kill")


# -- release_due: delayed → waiting once not_before has come (the leader's tick) ---------

RELEASE_CHUNK = 1000
# The database's clock is read once (with the earliest not_before) and bound: compared
# with PostgreSQL's clock_timestamp(), which is volatile, not_before could not use the
# index, and 100 000 delayed jobs were read at every tick.
_DUE = (
    sa.select(J.c.id)
    .where(J.c.state == State.DELAYED.value, J.c.not_before <= sa.bindparam("b_now"))
    .order_by(J.c.not_before)
    .limit(RELEASE_CHUNK)
)
_RELEASE_DUE = (
    sa.update(J)
    .where(
        J.c.id.in_(sa.bindparam("b_ids", expanding=True)),
        J.c.state == State.DELAYED.value,
        J.c.not_before <= sa.bindparam("b_now"),
    )
    .values(state=State.WAITING.value)
)
_NEXT_DUE = sa.select(
    sa.select(sa.func.min(J.c.not_before))
    .where(J.c.state == State.DELAYED.value)
    .scalar_subquery()
    .label("due"),
    utcnow().label("now"),
)


def release_due(conn: sa.Connection, chunks: int = 20) -> int:
    """delayed → waiting for the jobs whose ``not_before`` has come (the database's
    clock), earliest first, up to ``chunks`` statements of :data:`RELEASE_CHUNK` jobs;
    how many. Caller holds the assign lock (the balancer's order: the lock, then rows), and
    assigns them after. Each statement is conditional (still delayed, and due), so two
    releases never release a job twice and none early. With none due, one read."""
    due, now = _due_and_now(conn)
    if due is None or due > now:
        return 0
    released = 0
    for _ in range(chunks):
        ids = list(conn.execute(_DUE, {"b_now": now}).scalars())
        if not ids:
            break
        released += conn.execute(_RELEASE_DUE, {"b_ids": ids, "b_now": now}).rowcount
        if len(ids) < RELEASE_CHUNK:
            break
    return released


def _due_and_now(conn: sa.Connection) -> tuple[datetime | None, datetime]:
    """The earliest delayed job's not_before (None: none is delayed) and the database's
    time. One read of the head of the (state, not_before) index."""
    row = conn.execute(_NEXT_DUE).one()
    due: datetime | None = row.due
    now: datetime = row.now
    return due, now


def next_due(conn: sa.Connection) -> float | None:
    """Seconds until the earliest delayed job is due (0 when one is due already); None
    when none is delayed."""
    due, now = _due_and_now(conn)
    return None if due is None else max(0.0, (due - now).total_seconds())


# -- the worker is gone: assigned → waiting (unassign), running → lost (lose) -------------

_UNASSIGN = (
    sa.update(J)
    .where(J.c.worker_id == sa.bindparam("b_worker"), J.c.state == State.ASSIGNED.value)
    .values(state=State.WAITING.value, worker_id=None, token=None, assigned_at=None)
    .values(pending_reason=None)  # the reason it had before it was placed is old news
)


def unassign_worker(conn: sa.Connection, worker_id: int) -> int:
    """assigned → waiting for every job a vanished worker had not started yet."""
    return conn.execute(_UNASSIGN, {"b_worker": worker_id}).rowcount


_RUNNING_ON = sa.select(J.c.id).where(
    J.c.worker_id == sa.bindparam("b_worker"), J.c.state == State.RUNNING.value
)
_LOSE = (
    sa.update(J)
    .where(
        J.c.id == sa.bindparam("b_id"),
        J.c.state == State.RUNNING.value,
        J.c.worker_id == sa.bindparam("b_worker"),
    )
    .values(state=State.LOST.value, error=sa.bindparam("b_reason"), finished_at=utcnow())
)


def lose_worker_jobs(conn: sa.Connection, worker_id: int, reason: str) -> list[int]:
    """running → lost for every job of a vanished worker; retries where allowed."""
    lost = mark_lost(conn, worker_id, reason)
    end_lost(conn, lost)
    return lost


def mark_lost(conn: sa.Connection, worker_id: int, reason: str) -> list[int]:
    """running → lost for every job of a vanished worker, without their ends: call
    :func:`end_lost` once every row is moved. An end takes the assign lock (a retry's
    re-pointing, chains.ended), and a worker recording a job's end holds its row and
    then wants that lock: moving a row while holding the lock could deadlock with it."""
    running = list(conn.execute(_RUNNING_ON, {"b_worker": worker_id}).scalars())
    lost = []
    for job_id in running:
        params = {"b_id": job_id, "b_worker": worker_id, "b_reason": reason}
        if _moved(conn, _LOSE, params):
            lost.append(job_id)
    return lost


def end_lost(conn: sa.Connection, lost: Sequence[int]) -> None:
    """The ends of jobs :func:`mark_lost` moved: retries where allowed, else the jobs held
    for them decided."""
    for job_id in lost:
        if _retry(conn, job_id, State.LOST, None) is None:
            chains.ended(conn, job_id, State.LOST)
    outbox.job_moved(conn, State.LOST.value, list(lost))


# -- housekeeping: finished jobs ----------------------------------------------------------


def delete(conn: sa.Connection, job_id: int) -> None:
    """Delete a job and its output; refused while it is assigned or running."""
    active = [s.value for s in ACTIVE]
    result = conn.execute(sa.delete(J).where(J.c.id == job_id, J.c.state.not_in(active)))
    if result.rowcount == 1:
        conn.execute(sa.delete(schema.job_output).where(schema.job_output.c.job_id == job_id))
        chains.ended(conn, job_id, chains.DELETED)
        chains.forget(conn, [job_id])
        outbox.forget_jobs(conn, [job_id])
        return
    job = get(conn, job_id)  # raises NotFound
    raise errors.Conflict(f"job {job_id} is {job.state}: kill it first, then delete it")


def move_finished(conn: sa.Connection, from_class_id: int, to_class_id: int) -> int:
    """File the finished jobs of a class that is being deleted under another class."""
    stmt = (
        sa.update(J)
        .where(J.c.worker_class_id == from_class_id, J.c.state.in_([s.value for s in FINAL]))
        .values(worker_class_id=to_class_id)
    )
    return conn.execute(stmt).rowcount


def delete_finished_before(conn: sa.Connection, cutoff: datetime, limit: int = 1000) -> int:
    """Retention: delete up to ``limit`` finished jobs older than ``cutoff``, with output."""
    ids = list(
        conn.execute(
            sa.select(J.c.id)
            .where(J.c.finished_at < cutoff, J.c.state.in_([s.value for s in FINAL]))
            .limit(limit)
        ).scalars()
    )
    if ids:
        conn.execute(sa.delete(schema.job_output).where(schema.job_output.c.job_id.in_(ids)))
        conn.execute(sa.delete(J).where(J.c.id.in_(ids)))
        outbox.forget_jobs(conn, ids)
        chains.forget(conn, ids)
    return len(ids)
