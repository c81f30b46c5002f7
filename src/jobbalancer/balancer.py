"""The balancer: which worker runs each waiting job.

A strategy is a small function of (candidate workers with a free slot, cursor) → worker.
Assignment runs inside a write transaction that holds the ``assign`` lock, so slot counts
read at its start stay true until it commits, whichever server or worker runs it.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from jobbalancer import db, jobs, resources, settings
from jobbalancer.db import schema

J, W, C, S = schema.jobs, schema.workers, schema.worker_classes, schema.settings
CURSOR_KEY = "balancer.round_robin_cursor"


@dataclass(frozen=True)
class Candidate:
    """A worker of a class, as the balancer sees it: slots, resources, labels, state.

    Strategies get only workers that may take the job at hand (online, enabled, a free
    slot, room for its request, matching labels); the reasons a job waits look at all.
    """

    id: int
    name: str
    worker_class_id: int
    max_jobs: int
    active: int
    capacity: resources.Capacity = field(default_factory=resources.Capacity)
    labels: Mapping[str, str] = field(default_factory=dict)
    load: float | None = None
    cpu_count: int | None = None
    state: str = "online"
    enabled: bool = True
    worker_class: str = ""

    @property
    def free(self) -> int:
        return self.max_jobs - self.active

    @property
    def usable(self) -> bool:
        """Online, enabled, with a free slot."""
        return self.state == "online" and self.enabled and self.free > 0

    def takes(self, request: resources.Request) -> bool:
        """Whether it may start a job with this request now."""
        return (
            self.usable
            and self.capacity.fits(request)
            and resources.matches(request.constraints, self.labels)
        )

    def use(self) -> float:
        """How busy it is, 0..1 and more: the fullest of its slots, its requested cpus,
        memory and gpus, and its reported load per CPU."""
        fractions = [self.active / self.max_jobs if self.max_jobs else 1.0, self.capacity.use()]
        if self.load is not None and self.cpu_count:
            fractions.append(self.load / self.cpu_count)
        return max(fractions)

    def with_job(self, request: resources.Request) -> Candidate:
        return dataclasses.replace(
            self, active=self.active + 1, capacity=self.capacity.plus(request)
        )


Strategy = Callable[[Sequence[Candidate], int, resources.Request], Candidate]
NO_REQUEST = resources.Request()


def round_robin(
    candidates: Sequence[Candidate], cursor: int, request: resources.Request = NO_REQUEST
) -> Candidate:
    """The next worker after the last one chosen, by id, wrapping around."""
    return next((c for c in candidates if c.id > cursor), candidates[0])


def least_loaded(
    candidates: Sequence[Candidate], cursor: int, request: resources.Request = NO_REQUEST
) -> Candidate:
    """The least busy worker: the fullest of its slots, requested cpus, memory and gpus,
    and its reported load per CPU, as a fraction (:meth:`Candidate.use`)."""
    return min(candidates, key=lambda c: (c.use(), c.active / c.max_jobs, c.active, c.id))


def random_worker(
    candidates: Sequence[Candidate], cursor: int, request: resources.Request = NO_REQUEST
) -> Candidate:
    """Any worker with a free slot."""
    return random.choice(candidates)  # noqa: S311 - spreading load, not security


def fill_first(
    candidates: Sequence[Candidate], cursor: int, request: resources.Request = NO_REQUEST
) -> Candidate:
    """The first worker (by id) with a free slot, so the others can idle or scale down."""
    return candidates[0]


def binpack(
    candidates: Sequence[Candidate], cursor: int, request: resources.Request = NO_REQUEST
) -> Candidate:
    """The worker the job fills best: the least room left once it runs there (requested
    resources, then slots), so big holes stay free for big jobs."""

    def left(c: Candidate) -> tuple[float, ...]:
        after = c.capacity.plus(request)
        room = [
            (after.free_cpus / c.capacity.cpus) if c.capacity.cpus else 1.0,
            (after.free_memory / c.capacity.memory) if c.capacity.memory else 1.0,
            (after.free_gpus / c.capacity.gpus) if c.capacity.gpus else 1.0,
        ]
        return (sum(room), c.free, c.id)

    return min(candidates, key=left)


STRATEGIES: dict[str, Strategy] = {
    "round_robin": round_robin,
    "least_loaded": least_loaded,
    "random": random_worker,
    "fill_first": fill_first,
    "binpack": binpack,
}


def submit(
    conn: sa.Connection,
    specs: Sequence[jobs.Spec],
    user_id: int | None,
    user_name: str | None,
    *,
    assigned: dict[int, jobs.Job] | None = None,
) -> list[int]:
    """Create jobs and assign what can be assigned now, in one transaction.

    A job with need_realtime that found no free slot becomes ``occupied``; the others
    that still wait get their ``pending_reason``. ``assigned``: where the database returns
    what an UPDATE wrote, each of these jobs that was assigned at once is put there by id,
    as assigned (the submission answers with it rather than reading it back).
    """
    db.lock_row(conn, "assign")
    ids = jobs.create(conn, specs, user_id, user_name)
    new = [
        (i, s.worker_class_id, s.request)
        for i, s in zip(ids, specs, strict=True)
        if not s.held and not s.need_realtime
    ]
    lone = None
    if len(specs) == 1 and _waits_now(specs[0]):
        lone = (specs[0].worker_class_id, _Waiting(ids[0], specs[0].request, None))
    answer = _Answer(frozenset(ids), assigned, lone)
    assign_waiting(
        conn, class_ids={s.worker_class_id for s in specs}, locked=True, new=new, answer=answer
    )
    realtime = [i for i, s in zip(ids, specs, strict=True) if s.need_realtime]
    if realtime:
        still_waiting = conn.execute(
            sa.select(J.c.id).where(J.c.id.in_(realtime), J.c.state == jobs.State.WAITING)
        ).scalars()
        for job_id in list(still_waiting):
            jobs.occupy(conn, job_id)
    return ids


# How many waiting jobs past the free slots a pass looks at: jobs whose request or
# constraints fit no free worker are passed over for later ones that fit.
LOOKAHEAD = 100


@dataclass(frozen=True)
class _Waiting:
    """A waiting job at the head of its class's queue, as the balancer reads it."""

    id: int
    request: resources.Request
    pending_reason: str | None


def assign_waiting(
    conn: sa.Connection,
    *,
    class_ids: Iterable[int] | None = None,
    worker_id: int | None = None,
    locked: bool = False,
    new: Sequence[tuple[int, int, resources.Request]] = (),
    answer: _Answer | None = None,
) -> int:
    """Assign waiting jobs to workers with a free slot, room for their request and the
    labels they want; highest priority then oldest first.

    Limit the pass to some classes, or to one worker's free slots (a worker that just
    finished a job fills its own slot). A full pass (no limit: the leader's tick) writes
    why each job it looked at still waits (``pending_reason``) where that changed, and
    the reason of a whole class (no worker online, all full) to its every waiting job when
    that changed; ``new`` jobs (just submitted) get theirs too. Returns how many jobs were
    assigned. ``answer``: see :func:`submit`.
    """
    if not locked:
        db.lock_row(conn, "assign")
    explain = class_ids is None and worker_id is None
    new_ids = {n[0] for n in new}
    lone = answer.lone if answer is not None else None
    others_wait = True
    if lone is not None:
        by_class, others_wait = _candidates_of_one(conn, lone[0], lone[1].id)
    else:
        by_class = _candidates(conn, class_ids, worker_id, all_classes=explain)
    if not by_class and not new:
        return 0
    strategy: Strategy
    usable = {cid: [c for c in cands if c.usable] for cid, cands in by_class.items()}
    alone = worker_id is not None or all(len(c) <= 1 for c in usable.values())
    if alone:
        # One candidate per class: every strategy picks it, so skip reading the setting and
        # the cursor, and writing the cursor (two statements of a submission's ten; the
        # rotation goes on from where it was when there are several candidates again).
        strategy, cursor = fill_first, 0
    else:
        strategy, cursor = _strategy_and_cursor(conn)
    start_cursor, chosen_ids = cursor, []
    reasons: dict[str, list[int]] = {}
    for class_id, everyone in by_class.items():
        candidates = usable[class_id]
        waiting = []
        if candidates and lone is not None and not others_wait:
            waiting = [lone[1]]  # the class's queue is the job just submitted: nothing to read
        elif candidates:
            waiting = _queue(conn, class_id, sum(c.free for c in candidates) + LOOKAHEAD)
        left: list[_Waiting] = []
        placed: dict[int, Candidate] = {}
        for job in waiting:
            if job.request.empty:
                fits = candidates
            else:
                fits = [c for c in candidates if c.takes(job.request)]
            if not fits:
                left.append(job)
                continue
            chosen = strategy(fits, cursor, job.request)
            if not _assign(conn, job.id, chosen, answer):
                continue
            chosen_ids.append(chosen.id)
            new_ids.discard(job.id)
            cursor = chosen.id
            placed[chosen.id] = chosen = _replace(candidates, chosen, job.request)
        everyone = [placed.get(c.id, c) for c in everyone]
        by_class[class_id] = everyone
        if explain:
            _explain_class(conn, class_id, everyone, left, reasons)
    if new:
        _explain_new(conn, [n for n in new if n[0] in new_ids], by_class, reasons)
    for why, ids in reasons.items():
        conn.execute(_SET_REASON, {"b_reason": why, "b_ids": ids})
    if cursor != start_cursor and not alone:
        _put_cursor(conn, cursor)
    db.wake_workers(conn, chosen_ids)
    return len(chosen_ids)


def _assign(conn: sa.Connection, job_id: int, chosen: Candidate, answer: _Answer | None) -> bool:
    """Assign the job to ``chosen``; a job of ``answer``'s submission is kept there as
    assigned, where the assignment's own statement can return it."""
    if answer is None or answer.jobs is None or job_id not in answer.ids:
        return jobs.assign(conn, job_id, chosen.id)
    moved, columns = jobs.assign_read(conn, job_id, chosen.id)
    if columns is not None:
        names = {"worker_name": chosen.name, "worker_class": chosen.worker_class}
        answer.jobs[job_id] = jobs.Job.from_mapping(columns | names)
    return moved


@dataclass(frozen=True)
class _Answer:
    """A submission's jobs (``ids``) that its pass assigned, as assigned (``jobs``, if the
    caller wants them); and ``lone``, its job with its class when it is one that waits from
    now on (neither held nor delayed)."""

    ids: frozenset[int]
    jobs: dict[int, jobs.Job] | None
    lone: tuple[int, _Waiting] | None = None


def _waits_now(spec: jobs.Spec) -> bool:
    """Whether a job of ``spec`` is surely created waiting, without asking the database's
    clock: neither held nor given any start (a ``delay`` of 0 or a ``not_before`` past is
    waiting too, but only :func:`jobs.create` knows: such a job takes the usual path)."""
    return not spec.held and spec.not_before is None and spec.delay is None


NO_LABEL = "no worker has label "
_SET_REASON = (
    sa.update(J)
    .where(J.c.id.in_(sa.bindparam("b_ids", expanding=True)), J.c.state == jobs.State.WAITING.value)
    .values(pending_reason=sa.bindparam("b_reason"))
)
_SET_CLASS_REASON = (
    sa.update(J)
    .where(
        J.c.state == jobs.State.WAITING.value,
        J.c.worker_class_id == sa.bindparam("b_class"),
        sa.or_(
            J.c.pending_reason.is_(None),
            sa.and_(
                J.c.pending_reason != sa.bindparam("b_reason"),
                # A label no worker has says more than "full": it will not pass by itself.
                J.c.pending_reason.not_like(NO_LABEL + "%"),
            ),
        ),
    )
    .values(pending_reason=sa.bindparam("b_reason"))
)
# The class-wide reason last written, per database and class: the leader's pass rewrites
# a class's waiting jobs only when it changes (a new leader does it once).
_class_reasons: dict[tuple[str, int], tuple[str | None, int]] = {}
# Jobs that came since (a retry, a restart, a job released from held): only those without
# a reason, found from the last job id the pass saw, by the (state, id) index.
_SET_NEW_REASON = (
    sa.update(J)
    .where(
        J.c.state == jobs.State.WAITING.value,
        J.c.id > sa.bindparam("b_after"),
        J.c.worker_class_id == sa.bindparam("b_class"),
        J.c.pending_reason.is_(None),
    )
    .values(pending_reason=sa.bindparam("b_reason"))
)
_LAST_JOB = sa.select(sa.func.max(J.c.id))


def _explain_class(
    conn: sa.Connection,
    class_id: int,
    everyone: Sequence[Candidate],
    left: Sequence[_Waiting],
    reasons: dict[str, list[int]],
) -> None:
    """Why the jobs a pass looked at still wait (by request shape: one reason computed per
    shape); when no worker of the class may take a job now, the reason of the whole class,
    written to all its waiting jobs when it changed."""
    key = (conn.engine.url.render_as_string(hide_password=True), class_id)
    whole = None if any(c.usable for c in everyone) else class_reason(conn, class_id)
    last = int(conn.execute(_LAST_JOB).scalar() or 0)
    if whole is not None:
        written, seen = _class_reasons.get(key, (None, -1))
        if written != whole or seen < 0:
            conn.execute(_SET_CLASS_REASON, {"b_class": class_id, "b_reason": whole})
        else:
            params = {"b_class": class_id, "b_reason": whole, "b_after": seen}
            conn.execute(_SET_NEW_REASON, params)
        _class_reasons[key] = (whole, last)
        return
    _class_reasons[key] = (None, last)
    name = _class_name(conn, class_id, everyone)
    by_shape: dict[tuple[Any, ...], str] = {}
    for job in left:
        shape = job.request.shape()
        if shape not in by_shape:
            labels = _class_labels(conn, class_id) if job.request.constraints else None
            by_shape[shape] = reason(job.request, name, everyone, labels)
        if by_shape[shape] != job.pending_reason:
            reasons.setdefault(by_shape[shape], []).append(job.id)


def _explain_new(
    conn: sa.Connection,
    new: Sequence[tuple[int, int, resources.Request]],
    by_class: Mapping[int, Sequence[Candidate]],
    reasons: dict[str, list[int]],
) -> None:
    """The reasons of just-submitted jobs the pass left waiting, one per class and shape.

    Where the class has workers that may take jobs, from them; where it has none, from a
    summary of its workers in one row (:func:`class_reason`): a submission to a full class
    of 500 workers does not read them one by one.
    """
    by_shape: dict[tuple[Any, ...], str] = {}
    for job_id, class_id, request in new:
        candidates = by_class.get(class_id, [])
        if not any(c.usable for c in candidates):
            candidates = []
        shape = (class_id, *request.shape())
        if shape not in by_shape:
            labels = _class_labels(conn, class_id) if request.constraints else None
            missing = _missing_label(request, labels or [])
            if missing is not None:
                by_shape[shape] = missing
            elif candidates:
                name = candidates[0].worker_class
                by_shape[shape] = reason(request, name, candidates, labels)
            else:
                by_shape[shape] = class_reason(conn, class_id)
        reasons.setdefault(by_shape[shape], []).append(job_id)


def with_current_reason(conn: sa.Connection, job: jobs.Job) -> jobs.Job:
    """A waiting job with its ``pending_reason`` as a pass would say it now (read only).

    The stored reason is written by the passes, for the jobs they look at: one deep in a
    long queue, or back from a vanished worker, may carry an older one. One job's page
    reads its class's free workers (or the one-row summary of them) instead.
    """
    if job.state != jobs.State.WAITING:
        return job
    candidates = _candidates(conn, [job.worker_class_id], None)
    reasons: dict[str, list[int]] = {}
    _explain_new(conn, [(job.id, job.worker_class_id, job.request)], candidates, reasons)
    now = next(iter(reasons), None)
    return job if now is None else dataclasses.replace(job, pending_reason=now)


def _missing_label(request: resources.Request, labels: Sequence[Mapping[str, str]]) -> str | None:
    """ "no worker has label ..." when no worker of the class meets one of the constraints."""
    for label, want in (request.constraints or {}).items():
        if not any(resources.matches({label: want}, have) for have in labels):
            return NO_LABEL + resources.describe_constraint(label, want)
    return None


def _class_summary_query() -> sa.Select[Any]:
    """One row about a class's workers: how many are online, how many of those enabled
    ("ready"), their slots and the active jobs on them, a name of each kind."""
    in_class = W.c.worker_class_id == sa.bindparam("b_class")
    online = W.c.state == "online"
    ready = sa.and_(online, W.c.enabled.is_(True))
    w2 = W.alias("w2")
    used = (
        sa.select(sa.func.count())
        .select_from(w2.join(J, J.c.worker_id == w2.c.id))
        .where(
            w2.c.worker_class_id == sa.bindparam("b_class"),
            w2.c.state == "online",
            w2.c.enabled.is_(True),
            J.c.state.in_([s.value for s in jobs.ACTIVE]),
        )
        .scalar_subquery()
    )

    def total(when: Any, value: Any) -> Any:
        return sa.func.coalesce(sa.func.sum(sa.case((when, value), else_=0)), 0)

    return (
        sa.select(
            total(online, 1).label("online"),
            total(ready, 1).label("ready"),
            total(ready, sa.func.coalesce(W.c.max_jobs, C.c.max_jobs)).label("slots"),
            used.label("used"),
            sa.func.min(sa.case((online, W.c.name))).label("a_name"),
            sa.func.min(sa.case((ready, W.c.name))).label("ready_name"),
            sa.func.min(C.c.name).label("class_name"),
        )
        .select_from(W.join(C, C.c.id == W.c.worker_class_id))
        .where(in_class)
    )


def class_reason(conn: sa.Connection, class_id: int) -> str:
    """Why nothing of a class can start now, when none of its workers may take a job: no
    worker online, all disabled, or all full. One row read, whatever the workers."""
    row = conn.execute(_CLASS_SUMMARY, {"b_class": class_id}).one()
    name = row.class_name or _class_name(conn, class_id, [])
    online, ready = int(row.online), int(row.ready)
    if not online:
        return f"no online worker of class {name}"
    if not ready:
        if online == 1:
            return f"worker {row.a_name} is disabled"
        return f"all {online} online workers of class {name} are disabled"
    if ready == 1:
        return f"worker {row.ready_name} of class {name} is full ({row.used}/{row.slots} slots)"
    return f"all {ready} workers of class {name} are full ({row.used}/{row.slots} slots)"


def _replace(
    candidates: list[Candidate], chosen: Candidate, request: resources.Request
) -> Candidate:
    """The chosen worker with one more job, in place in ``candidates`` (dropped once full)."""
    index = candidates.index(chosen)
    updated = chosen.with_job(request)
    if updated.free > 0:
        candidates[index] = updated
    else:
        del candidates[index]
    return updated


def reason(
    request: resources.Request,
    class_name: str,
    workers: Sequence[Candidate],
    labels: Sequence[Mapping[str, str]] | None = None,
) -> str:
    """Why a job with ``request`` cannot start on any of ``workers`` (its class's, those
    online and enabled, or all of them) now: one short sentence, from the first thing in
    the way. ``labels``: those of every worker of the class, whatever its state (None: the
    ``workers``' own)."""
    if labels is None:
        labels = [w.labels for w in workers]
    online = [w for w in workers if w.state == "online"]
    if not online:
        return f"no online worker of class {class_name}"
    enabled = [w for w in online if w.enabled]
    if not enabled:
        if len(online) == 1:
            return f"worker {online[0].name} is disabled"
        return f"all {len(online)} online workers of class {class_name} are disabled"
    matching = [w for w in enabled if resources.matches(request.constraints, w.labels)]
    if not matching:
        for label, want in (request.constraints or {}).items():
            one = {label: want}
            if not any(resources.matches(one, have) for have in labels):
                return NO_LABEL + resources.describe_constraint(label, want)
            if not any(resources.matches(one, w.labels) for w in enabled):
                return (
                    f"no online worker of class {class_name} has label "
                    f"{resources.describe_constraint(label, want)}"
                )
        return f"no online worker of class {class_name} has all the labels it wants"
    roomy = [w for w in matching if w.capacity.could_fit(request)]
    if not roomy:
        why = resources.too_big(request, [w.capacity for w in matching])
        return f"{why} (online)" if why else "no online worker is big enough"
    slotted = [w for w in roomy if w.free > 0]
    if not slotted:
        used = sum(w.active for w in roomy)
        total = sum(w.max_jobs for w in roomy)
        if len(roomy) == 1:
            return f"worker {roomy[0].name} of class {class_name} is full ({used}/{total} slots)"
        return f"all {len(roomy)} workers of class {class_name} are full ({used}/{total} slots)"
    frees: tuple[tuple[str, float, Callable[[Candidate], float]], ...] = (
        ("cpus", request.cpus, lambda w: w.capacity.free_cpus),
        ("memory", request.memory, lambda w: w.capacity.free_memory),
        ("gpus", request.gpus, lambda w: w.capacity.free_gpus),
    )
    for what, asked, free_of in frees:
        most = max(slotted, key=free_of)
        if asked and free_of(most) < asked:
            if what == "memory":
                shown = f"{resources.format_memory(asked)} memory"
                have = resources.format_memory(max(free_of(most), 0))
            else:
                shown = f"{resources.format_cpus(asked)} {what}"
                have = resources.format_cpus(max(free_of(most), 0))
            return f"needs {shown}; the most free is {have} on {most.name}"
    if len(slotted) < len(roomy) or any(not w.takes(request) for w in slotted):
        return f"needs {request.describe()}; no worker of class {class_name} has it free at once"
    return f"next in class {class_name}, after jobs of higher priority or older"


def _class_name(conn: sa.Connection, class_id: int, workers: Sequence[Candidate]) -> str:
    if workers:
        return workers[0].worker_class
    name = conn.execute(_CLASS_NAME, {"b_class": class_id}).scalar()
    return str(name) if name is not None else str(class_id)


_CLASS_NAME = sa.select(C.c.name).where(C.c.id == sa.bindparam("b_class"))


_WAITING_FOR_WORKER = (
    sa.select(J.c.id)
    .select_from(J.join(W, W.c.worker_class_id == J.c.worker_class_id))
    .where(W.c.id == sa.bindparam("b_worker"), J.c.state == jobs.State.WAITING.value)
    .limit(1)
)


def take_for_worker(conn: sa.Connection, worker_id: int) -> list[jobs.Job]:
    """Fill a worker's free slots from its class's queue, the jobs going straight to
    ``running`` (:func:`jobs.take`): the worker itself calls this when jobs ended, in the
    transaction that reports them, and starts what it got. The jobs taken, in queue order:
    only jobs whose requests fit what the worker has free, and whose constraints its
    labels meet.
    """
    db.lock_row(conn, "assign")
    # Most ends find nothing waiting for the worker's class (a job is assigned when it is
    # submitted if a slot is free): one indexed look, instead of counting the slots and
    # an update. Under the assign lock, so no submitter's decision is in between.
    if conn.execute(_WAITING_FOR_WORKER, {"b_worker": worker_id}).first() is None:
        return []
    taken = []
    for class_id, candidates in _candidates(conn, None, worker_id).items():
        for c in candidates:
            if c.usable:
                taken += jobs.take(conn, worker_id, class_id, c.free, c.capacity, c.labels)
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


def _queue(conn: sa.Connection, class_id: int, limit: int) -> list[_Waiting]:
    return [
        _Waiting(
            row.id,
            resources.Request.of(row.cpus, row.memory, row.gpus, row.constraints),
            row.pending_reason,
        )
        for row in conn.execute(_QUEUE, {"b_class": class_id, "b_limit": limit})
    ]


_QUEUE = (
    sa.select(J.c.id, J.c.cpus, J.c.memory, J.c.gpus, J.c.constraints, J.c.pending_reason)
    .where(J.c.state == jobs.State.WAITING.value, J.c.worker_class_id == sa.bindparam("b_class"))
    .order_by(J.c.priority.desc(), J.c.id)
    .limit(sa.bindparam("b_limit", type_=sa.Integer))
)


def _candidates_query(*, grouped: bool) -> sa.Select[Any]:
    """Workers with their slots and what their active jobs requested.

    ``grouped``: the active jobs summed once, grouped by worker, and joined (a pass over
    many workers: one read of the active jobs instead of four per worker); else four
    correlated subqueries (one worker: its own jobs only, by the (worker_id, state) index).
    """
    is_active = J.c.state.in_([s.value for s in jobs.ACTIVE])
    sums = (
        sa.func.count(),
        sa.func.sum(J.c.cpus),
        sa.func.sum(J.c.memory),
        sa.func.sum(J.c.gpus),
    )
    names = ("active", "used_cpus", "used_memory", "used_gpus")
    source: Any = W.join(C, C.c.id == W.c.worker_class_id)
    if grouped:
        # Per worker, its active jobs by the (worker_id, state) index: a few rows each.
        # (Grouped over the jobs alone, SQLite, once analyzed, walks that index over
        # every job to group them, or scans the table: the state index looks too coarse.)
        w2 = W.alias("w2")
        per_worker = (
            sa.select(
                w2.c.id.label("worker_id"),
                *(f.label(n) for f, n in zip(sums, names, strict=True)),
            )
            .select_from(w2.join(J, sa.and_(J.c.worker_id == w2.c.id, is_active)))
            .group_by(w2.c.id)
            .subquery("active_jobs")
        )
        source = source.outerjoin(per_worker, per_worker.c.worker_id == W.c.id)
        used = [
            sa.func.coalesce(per_worker.c.active, 0).label("active"),
            *(per_worker.c[n] for n in names[1:]),
        ]
    else:
        used = [
            sa.select(f).where(J.c.worker_id == W.c.id, is_active).scalar_subquery().label(n)
            for f, n in zip(sums, names, strict=True)
        ]
    max_jobs = sa.func.coalesce(W.c.max_jobs, C.c.max_jobs)
    return (
        sa.select(
            W.c.id,
            W.c.name,
            W.c.worker_class_id,
            max_jobs.label("max_jobs"),
            *used,
            W.c.cpus,
            W.c.memory,
            W.c.gpus,
            W.c.labels,
            W.c.load,
            W.c.cpu_count,
            W.c.state,
            W.c.enabled,
            C.c.name.label("worker_class"),
        )
        .select_from(source)
        .order_by(W.c.id)
    )


_ONLINE = (W.c.state == "online", W.c.enabled.is_(True))
_EVERYONE = _candidates_query(grouped=True)
# Only workers with a free slot come back: a full class of 500 workers sends no rows.
_CANDIDATES = _EVERYONE.where(
    *_ONLINE,
    sa.func.coalesce(_EVERYONE.selected_columns.active, 0) < _EVERYONE.selected_columns.max_jobs,
)
_ONE_CANDIDATE = _candidates_query(grouped=False).where(
    *_ONLINE, W.c.id == sa.bindparam("b_worker")
)
_CLASS_CANDIDATES = _CANDIDATES.where(
    W.c.worker_class_id.in_(sa.bindparam("b_classes", expanding=True))
)
_OTHERS_WAIT = (
    sa.exists()
    .where(
        J.c.state == jobs.State.WAITING.value,
        J.c.worker_class_id == sa.bindparam("b_class"),
        J.c.id != sa.bindparam("b_new"),
    )
    .correlate_except(J)  # uncorrelated: one probe of the queue's index, not one a worker
    .label("others_wait")
)
_CLASS_CANDIDATES_OF_ONE = _CLASS_CANDIDATES.add_columns(_OTHERS_WAIT)
_CLASS_IDS = sa.select(C.c.id)
_CLASS_LABELS = sa.select(W.c.labels).where(W.c.worker_class_id == sa.bindparam("b_class"))


def _class_labels(conn: sa.Connection, class_id: int) -> list[Mapping[str, str]]:
    """The labels of every worker of a class, whatever its state (for a constraint's
    reason: "no worker has label ...")."""
    return [
        dict(labels or {})
        for labels in conn.execute(_CLASS_LABELS, {"b_class": class_id}).scalars()
    ]


_CLASS_SUMMARY = _class_summary_query()


def _candidate(row: Any) -> Candidate:
    capacity = resources.Capacity(
        row.cpus,
        row.memory,
        row.gpus,
        float(row.used_cpus or 0),
        int(row.used_memory or 0),
        int(row.used_gpus or 0),
    )
    return Candidate(
        row.id, row.name, row.worker_class_id, row.max_jobs, row.active, capacity,
        dict(row.labels or {}), row.load, row.cpu_count, row.state, bool(row.enabled),
        row.worker_class,
    )  # fmt: skip


def _candidates(
    conn: sa.Connection,
    class_ids: Iterable[int] | None,
    worker_id: int | None,
    *,
    all_classes: bool = False,
) -> dict[int, list[Candidate]]:
    """Online, enabled workers with free slots, by class, ordered by id; ``all_classes``:
    every class of the pass too, even one without such workers (an empty list)."""
    query, params = _CANDIDATES, dict[str, Any]()
    if worker_id is not None:
        query, params = _ONE_CANDIDATE, {"b_worker": worker_id}
        if class_ids is not None:
            query = query.where(W.c.worker_class_id.in_(list(class_ids)))
    elif class_ids is not None:
        query, params = _CLASS_CANDIDATES, {"b_classes": list(class_ids)}
    by_class: dict[int, list[Candidate]] = {}
    if all_classes and worker_id is None:
        ids = class_ids if class_ids is not None else conn.execute(_CLASS_IDS).scalars()
        by_class = {int(i): [] for i in ids}
    for row in conn.execute(query, params):
        if row.max_jobs > row.active:  # checked before building it: most may be full
            by_class.setdefault(row.worker_class_id, []).append(_candidate(row))
    return by_class


def _candidates_of_one(
    conn: sa.Connection, class_id: int, job_id: int
) -> tuple[dict[int, list[Candidate]], bool]:
    """:func:`_candidates` of a submission of one job (``job_id``, just inserted), and
    whether another job of its class waits: if none, its queue is that job alone and the
    pass need not read it (a round trip less on every such submission). Read in the same
    statement, under the assign lock, as the queue would have been; known only when a
    worker with a free slot came back (else there is no queue to read anyway)."""
    by_class: dict[int, list[Candidate]] = {}
    others_wait = False
    params = {"b_classes": [class_id], "b_class": class_id, "b_new": job_id}
    rows = conn.execute(_CLASS_CANDIDATES_OF_ONE, params)
    for row in rows:
        others_wait = others_wait or bool(row.others_wait)
        if row.max_jobs > row.active:
            by_class.setdefault(row.worker_class_id, []).append(_candidate(row))
    return by_class, others_wait


def free_slots(conn: sa.Connection, class_id: int | None = None) -> int:
    """How many jobs could start right now (in one class, or anywhere)."""
    by_class = _candidates(conn, None if class_id is None else [class_id], None)
    return sum(c.free for cands in by_class.values() for c in cands)


@dataclass(frozen=True)
class WaitReason:
    """How many waiting jobs of a class wait for one reason (the dashboard's list)."""

    worker_class: str
    reason: str
    jobs: int

    @property
    def waits_for(self) -> str:
        """What is in the way, in a word or two: memory, cpus, gpus, a free slot, a label,
        a worker, or a turn."""
        text = self.reason
        for word, what in (
            ("memory", "memory"),
            ("cpus", "cpus"),
            ("gpus", "gpus"),
            ("label", "a label"),
            ("full", "a free slot"),
            ("disabled", "a worker"),
            ("online", "a worker"),
        ):
            if word in text:
                return what
        return "its turn"


_WAIT_REASONS = (
    sa.select(C.c.name, J.c.pending_reason, sa.func.count().label("jobs"))
    .select_from(J.join(C, C.c.id == J.c.worker_class_id))
    .where(J.c.state == jobs.State.WAITING.value)
    .group_by(C.c.name, J.c.pending_reason)
    .order_by(sa.func.count().desc(), C.c.name)
    .limit(sa.bindparam("b_limit", type_=sa.Integer))
)


def wait_reasons(conn: sa.Connection, limit: int = 10) -> list[WaitReason]:
    """Waiting jobs counted by class and pending reason, the most first."""
    return [
        WaitReason(row.name, row.pending_reason or "waiting for the balancer's next pass", row.jobs)
        for row in conn.execute(_WAIT_REASONS, {"b_limit": limit})
    ]
