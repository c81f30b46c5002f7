"""Firing schedules: the leader's loop that turns due occurrences into jobs.

Each group of due schedules (up to 20) is decided in a transaction of its own that locks
their rows, decides every occurrence from each one's ``next_fire_at`` up to now (fire or
skip, by the overlap and catch-up policies and its owner's rights as they are now),
writes each occurrence's row (unique per schedule and time) with the job it creates, and
moves ``next_fire_at`` on.
A crash before the commit leaves nothing: the next leader decides the same occurrences
(late). A commit leaves them decided: nobody decides them again, and a second server
that races for one fails on the unique row and rolls its job back. Exactly once.

Jobs are submitted through :func:`jobbalancer.service.submission.submit`, the path of
``POST /api/v1/jobs``, with the body validated by the same input model.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pydantic
import sqlalchemy as sa

from jobbalancer import auth, chains, cron, db, errors, jobs, schedules
from jobbalancer.schedules import CatchUp, Overlap, Reason
from jobbalancer.service import inputs, submission

log = logging.getLogger(__name__)

# Missed occurrences counted one by one at most (cronsim: about 6 µs each); past that a
# catch-up finds the latest ones backwards from now and says "over SCAN".
SCAN = 100_000
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Refused(Exception):
    """An occurrence that cannot fire: why, in words, and the reason's code."""

    reason: str
    code: Reason


def owner_of(conn: sa.Connection, schedule: schedules.Schedule) -> auth.User:
    """The schedule's owner as they are now; Refused if they may not submit."""
    try:
        owner = auth.get_user(conn, schedule.user_id)
    except errors.NotFound:
        raise Refused(f"owner {schedule.user_name} was deleted", Reason.OWNER) from None
    if owner.disabled:
        raise Refused(f"owner {owner.name} disabled", Reason.OWNER)
    if not owner.can_submit:
        raise Refused(f"owner {owner.name} may not submit jobs (role {owner.role})", Reason.OWNER)
    return owner


def job_body(schedule: schedules.Schedule) -> inputs.JobSubmit:
    """The stored body, read by the input model of POST /api/v1/jobs again."""
    try:
        return inputs.JobSubmit.model_validate(dict(schedule.job))
    except pydantic.ValidationError as exc:
        raise Refused(f"the job is refused: {inputs.first_message(exc)}", Reason.REFUSED) from None


def submit(
    conn: sa.Connection,
    schedule: schedules.Schedule,
    owner: auth.User,
    body: inputs.JobSubmit,
) -> jobs.Job:
    """Submit the schedule's job as ``owner`` in the caller's transaction; Refused if a
    submission of it would be refused now (class lost, script deleted, limits)."""
    try:
        [job] = submission.submit(
            conn, owner, [body], prefix=False, limiter=None, schedule_id=schedule.id
        )
    except errors.JobBalancerError as exc:
        raise Refused(f"the job is refused: {exc.message}", Reason.REFUSED) from None
    return job


class Firer:
    """Fires due occurrences. ``tick`` is one pass (tests call it with an injected
    ``clock``); ``run`` is the leader's loop, sleeping until the next fire time."""

    MAX_WAIT = 0.5  # seconds: how soon a schedule created on another server is seen

    def __init__(
        self, engine: sa.Engine, clock: Clock | None = None, batch: int = 200, group: int = 20
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.batch = batch
        self.group = group

    def now(self, conn: sa.Connection) -> datetime:
        """The injected clock, else the database's (one clock for every server)."""
        return self.clock() if self.clock is not None else db.now(conn)

    def tick(self) -> int:
        """Decide every due occurrence; how many schedules were handled. Up to ``group``
        schedules share a transaction (a burst of 1000 at the top of the hour costs one
        commit per group, not per job); a group that fails is decided again one schedule
        at a time, and a schedule that fails alone (a deadlock, a bug) is logged and
        tried again next tick, without holding up the others."""
        handled = 0
        while True:
            with db.read(self.engine) as conn:
                now = self.now(conn)
                due = [schedule_id for schedule_id, _ in schedules.due(conn, now, self.batch)]
            moved = 0
            for start in range(0, len(due), self.group):
                moved += self._decide_group(due[start : start + self.group], now)
            handled += moved
            if len(due) < self.batch or moved == 0:
                return handled

    def _decide_group(self, ids: list[int], now: datetime) -> int:
        if len(ids) > 1:
            try:
                return self.decide_many(ids, now)
            except db.UNAVAILABLE:
                raise
            except Exception:
                log.debug("a group of schedules failed; deciding them one by one", exc_info=True)
        moved = 0
        for schedule_id in ids:
            try:
                moved += self.decide_many([schedule_id], now)
            except db.UNAVAILABLE:
                raise
            except sa.exc.IntegrityError:
                # Another server recorded one of these occurrences first: ours rolled back.
                log.info("schedule %d: an occurrence was decided by another server", schedule_id)
            except Exception:
                log.exception("schedule %d: firing failed; tried again next tick", schedule_id)
        return moved

    def decide_many(self, ids: list[int], now: datetime) -> int:
        """Decide these schedules' due occurrences in one transaction; how many were
        decided here (not by another server first, not deleted, paused or not due).
        The rows are locked in id order: two servers deciding overlapping groups take
        them in the same order and cannot deadlock."""
        with db.write(self.engine) as conn:
            found = schedules.lock_many(conn, ids)
            due = [s for s in found if s.next_fire_at is not None and s.next_fire_at <= now]
            _decide_all(conn, due, now)
        return len(due)

    def decide(self, schedule_id: int, now: datetime) -> int:
        """Decide one schedule's due occurrences; 1 if this call did, 0 if another server
        had (or the schedule is gone, paused or not due)."""
        return self._decide_group([schedule_id], now)

    def seconds_to_next(self) -> float:
        with db.read(self.engine) as conn:
            now = self.now(conn)
            earliest = schedules.earliest(conn)
        if earliest is None:
            return self.MAX_WAIT
        return min(max((earliest - now).total_seconds(), 0.0), self.MAX_WAIT)

    def run(self, is_leader: Callable[[], bool], stop: threading.Event) -> None:
        """Until ``stop``: while this server leads, fire what is due, then sleep until the
        next fire time (at most MAX_WAIT)."""
        while not stop.is_set():
            wait = self.MAX_WAIT
            if is_leader():
                try:
                    self.tick()
                    wait = self.seconds_to_next()
                except db.UNAVAILABLE:
                    log.debug("database unavailable; firing retries", exc_info=True)
                except Exception:
                    log.exception("firing schedules failed; retrying")
            stop.wait(wait)


_Ready = tuple[schedules.Schedule, datetime, inputs.JobSubmit]  # an occurrence to submit


class _Group:
    """The occurrences a group of schedules decides in one transaction, written together:
    the owners read once each, one query for the overlap policies' running jobs, one
    submission per owner for the jobs, one insert for the occurrences' rows, the
    counters added once, the next fire times moved in one round trip."""

    def __init__(self, conn: sa.Connection, now: datetime) -> None:
        self.conn = conn
        self.now = now
        self.rows: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self._owners: dict[int, auth.User | Refused] = {}

    def owner(self, schedule: schedules.Schedule) -> auth.User:
        if schedule.user_id not in self._owners:
            try:
                self._owners[schedule.user_id] = owner_of(self.conn, schedule)
            except Refused as refused:
                self._owners[schedule.user_id] = refused
        found = self._owners[schedule.user_id]
        if isinstance(found, Refused):
            raise found
        return found

    def record(
        self, schedule: schedules.Schedule, at: datetime, *, count: int = 1, **kw: Any
    ) -> None:
        row = schedules.occurrence_row(schedule.id, at, self.now, **kw)
        self.rows.append(row)
        for name in schedules.counted(row):
            self.counts[name] += count

    def fire(self, occurrences: list[tuple[schedules.Schedule, datetime]]) -> None:
        """Fire these occurrences (of distinct schedules), or record why not."""
        checked = [s for s, _ in occurrences if s.overlap != Overlap.ALLOW]
        running = schedules.unfinished_many(self.conn, [s.id for s in checked])
        ready: dict[int, tuple[auth.User, list[_Ready]]] = {}
        for schedule, at in occurrences:
            try:
                owner = self.owner(schedule)
                body = job_body(schedule)
                body = _apply_overlap(self.conn, schedule, body, running.get(schedule.id, []))
            except Refused as refused:
                self.record(schedule, at, reason=refused.reason, code=refused.code)
                continue
            ready.setdefault(owner.id, (owner, []))[1].append((schedule, at, body))
        for owner, found in ready.values():
            self._submit(owner, found)

    def _submit(
        self,
        owner: auth.User,
        found: list[_Ready],
    ) -> None:
        """One owner's jobs in one submission; if it is refused (it wrote nothing), one
        by one, so that each refusal is recorded on its own occurrence. A job that waits
        for the previous run (overlap queue) is submitted alone."""
        alone = [f for f in found if f[2].after]
        together = [f for f in found if not f[2].after]
        if len(together) > 1:
            try:
                made = submission.submit(
                    self.conn, owner, [b for _, _, b in together], prefix=False,
                    limiter=None, schedule_ids=[s.id for s, _, _ in together],
                )  # fmt: skip
            except errors.JobBalancerError:
                alone += together
            else:
                for (schedule, at, _), job in zip(together, made, strict=True):
                    self.record(schedule, at, job_id=job.id)
        else:
            alone += together
        for schedule, at, body in alone:
            try:
                job = submit(self.conn, schedule, owner, body)
            except Refused as refused:
                self.record(schedule, at, reason=refused.reason, code=refused.code)
            else:
                self.record(schedule, at, job_id=job.id)

    def write(self) -> None:
        schedules.record_many(self.conn, self.rows, self.counts)


def _decide_all(conn: sa.Connection, due: list[schedules.Schedule], now: datetime) -> None:
    """Decide the occurrences of these schedules from their ``next_fire_at`` up to
    ``now`` and move ``next_fire_at`` past them. Due for longer than MISSED_AFTER: no
    server ran, and the catch-up policy decides which fire. The k-th occurrence of every
    schedule is decided in the k-th round: it sees the jobs of the ones before it (a
    schedule behind by two that skips overlaps fires the first, skips the second)."""
    group = _Group(conn, now)
    plans: list[tuple[schedules.Schedule, list[datetime]]] = []
    moves: list[tuple[int, datetime | None]] = []
    for schedule in due:
        assert schedule.next_fire_at is not None
        if now - schedule.next_fire_at > schedules.MISSED_AFTER:
            fire, following = _catch_up(group, schedule, now)
        else:
            fire, following = _pending(schedule, now)
        plans.append((schedule, fire))
        moves.append((schedule.id, following))
    for k in range(max((len(fire) for _, fire in plans), default=0)):
        group.fire([(s, fire[k]) for s, fire in plans if k < len(fire)])
    group.write()
    schedules.set_next_many(conn, moves)


def _pending(schedule: schedules.Schedule, now: datetime) -> tuple[list[datetime], datetime | None]:
    """The due occurrences (within MISSED_AFTER: a few), and the next fire time."""
    assert schedule.next_fire_at is not None
    pending = [schedule.next_fire_at]
    for t in cron.times(schedule.cron, schedule.timezone, schedule.next_fire_at):
        if schedule.end_at is not None and t > schedule.end_at:
            return pending, None
        if t > now:
            return pending, t
        pending.append(t)
    return pending, None


@dataclass(frozen=True)
class _Missed:
    count: int | None  # None: more than SCAN occurrences
    tail: list[datetime]  # the latest ones, oldest first
    following: datetime | None


def _scan(schedule: schedules.Schedule, now: datetime, keep: int) -> _Missed:
    """The missed occurrences: how many, the latest ``keep``, and the next fire time.
    Counted forward up to SCAN; past that the latest are found backwards from now."""
    assert schedule.next_fire_at is not None
    end = schedule.end_at
    tail: deque[datetime] = deque([schedule.next_fire_at], maxlen=keep)
    count = 1
    for t in cron.times(schedule.cron, schedule.timezone, schedule.next_fire_at):
        if (end is not None and t > end) or t > now:
            return _Missed(count, list(tail), None if end is not None and t > end else t)
        count += 1
        tail.append(t)
        if count > SCAN:
            break
    else:
        return _Missed(count, list(tail), None)
    latest: list[datetime] = []
    for t in cron.times_before(schedule.cron, schedule.timezone, min(now, end or now)):
        if len(latest) >= keep:
            break
        latest.append(t)
    following = schedules.fire_times(schedule.cron, schedule.timezone, now, 1, None, end)
    return _Missed(None, latest[::-1], following[0] if following else None)


def _catch_up(
    group: _Group, schedule: schedules.Schedule, now: datetime
) -> tuple[list[datetime], datetime | None]:
    """The missed occurrences to fire (none, the latest, or the latest catch_up_max) and
    the next fire time; the others are recorded as one skip (a per-second schedule after
    a day down would otherwise write 86 400 rows), at the first one's time, counting
    them all."""
    assert schedule.next_fire_at is not None
    keep = {CatchUp.NONE: 1, CatchUp.LATEST: 1, CatchUp.ALL: schedule.catch_up_max}
    missed = _scan(schedule, now, keep[schedule.catch_up])
    fire = [] if schedule.catch_up == CatchUp.NONE else missed.tail
    skipped = None if missed.count is None else missed.count - len(fire)
    if skipped != 0:
        first = schedule.next_fire_at
        counted = f"{skipped} occurrences" if skipped is not None else f"over {SCAN} occurrences"
        reason = "missed while no server ran"
        if skipped != 1:
            reason += f" ({counted} from {_iso(first)} on)"
        group.record(
            schedule, first, reason=reason, code=Reason.MISSED,
            count=skipped if skipped is not None else SCAN,
        )  # fmt: skip
    return fire, missed.following


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _apply_overlap(
    conn: sa.Connection,
    schedule: schedules.Schedule,
    body: inputs.JobSubmit,
    unfinished: list[tuple[int, jobs.State]],
) -> inputs.JobSubmit:
    """The body to submit under the overlap policy, or Refused (skip) while a previous
    run (``unfinished``: the schedule's jobs not ended) has not ended."""
    if not unfinished or schedule.overlap == Overlap.ALLOW:
        return body
    first_id, first_state = unfinished[0]
    if schedule.overlap == Overlap.SKIP:
        raise Refused(f"previous run {first_id} still {first_state}", Reason.OVERLAP)
    if schedule.overlap == Overlap.QUEUE:
        queued = [i for i, state in unfinished if state == jobs.State.HELD]
        if queued:
            raise Refused(f"run {queued[0]} waits already for the previous one", Reason.QUEUE_FULL)
        after = [
            inputs.AfterIn(job=i, ref=None, on="any") for i, _ in unfinished[-chains.MAX_PARENTS :]
        ]
        return body.model_copy(update={"after": after})
    _kill(conn, unfinished)  # replace
    return body


def _kill(conn: sa.Connection, unfinished: list[tuple[int, jobs.State]]) -> None:
    # The lock order of a kill (service/job_actions.kill): a held, delayed or waiting job's
    # row is the balancer's (the leader releases delayed ones under the assign lock), so
    # the assign lock first; a running one's is its worker's.
    if any(
        state in (jobs.State.HELD, jobs.State.DELAYED, jobs.State.WAITING)
        for _, state in unfinished
    ):
        db.lock_row(conn, "assign")
    for job_id, _ in unfinished:
        jobs.request_kill(conn, job_id)
