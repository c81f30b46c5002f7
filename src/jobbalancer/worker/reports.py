"""Recording how jobs ended: the reports job threads hand in, written in batches.

Every job that ended since the last write is recorded in one transaction, with its last
output (the sink's :meth:`~jobbalancer.worker.output.OutputSink.closing`), and in the
same transaction the worker takes waiting jobs for the freed slots. While the database
is away the reports wait, output and all. A report that fails for another reason is
tried on its own, later and later, and after a few tries the job is recorded as
``failed``, saying why, rather than left ``running``.

It owns the reports not recorded yet, their troubles and their transactions; the
coordinator (:mod:`jobbalancer.worker.loop`) frees the slots and starts the jobs taken.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa

from jobbalancer import balancer, db, jobs
from jobbalancer.worker import runner
from jobbalancer.worker.output import OutputSink

log = logging.getLogger(__name__)

_SIGNALS = {s.value for s in signal.Signals}
# Tries to record a job's end that failed otherwise, before it is recorded as failed.
_REPORT_TRIES = 3


@dataclass(frozen=True)
class Stop:
    """Why the worker stopped a job itself, and the state that job ends in: ``KILLED``
    (a kill request, a stop), or ``LOST`` (fenced: its worker was cut off from the
    database, see :mod:`jobbalancer.worker.fence`)."""

    reason: str
    state: jobs.State = jobs.State.KILLED


@dataclass(frozen=True)
class Report:
    """A job that ended, waiting to be recorded with the others that ended meanwhile."""

    job: jobs.Job
    token: str
    state: jobs.State
    error: str | None
    outcome: runner.Outcome
    pid: int | None

    @classmethod
    def of(
        cls, job: jobs.Job, outcome: runner.Outcome, pid: int | None, stop: Stop | None
    ) -> Report:
        """How ``job`` ended; ``stop`` is why the worker stopped it, if it did."""
        state, error = judge(job, outcome, stop)
        return cls(job, job.token or "", state, error, outcome, pid)

    @property
    def keeps_output(self) -> bool:
        """A fenced attempt's record keeps only the output written before the cut: what it
        wrote after may be written by nobody (the attempt may be declared lost meanwhile)."""
        return self.state != jobs.State.LOST


@dataclass
class _Trouble:
    """A job's end that failed to be recorded (not because the database was away)."""

    tries: int = 0
    not_before: float = 0.0  # monotonic time of the next try
    error: str = "unknown"  # the last failure, said if the job is recorded as failed


def judge(
    job: jobs.Job, outcome: runner.Outcome, stop: Stop | None
) -> tuple[jobs.State, str | None]:
    """The state a job ended in, and the error its record says."""
    if stop is not None and stop.state == jobs.State.LOST:
        return jobs.State.LOST, stop.reason  # fenced, whether it had started or not
    if outcome.reason == "start_failed":
        return jobs.State.FAILED, outcome.error or "the job could not start"
    if outcome.reason == "out_of_memory":
        return jobs.State.FAILED, outcome.error or "out of memory"
    if outcome.reason == "timeout":
        return jobs.State.TIMEOUT, f"watchdog: ran longer than {job.watchdog:g} s"
    if outcome.reason == "killed":
        return jobs.State.KILLED, stop.reason if stop is not None else "killed"
    if outcome.exit_code == 0:
        return jobs.State.DONE, None
    if outcome.signal is not None:
        name = signal.Signals(outcome.signal).name if outcome.signal in _SIGNALS else ""
        return jobs.State.FAILED, f"ended by signal {outcome.signal} {name}".strip()
    return jobs.State.FAILED, None


class Reports:
    """The ends of jobs not recorded yet. Job threads :meth:`add`; the coordinator's
    loop calls :meth:`flush` (from one thread)."""

    def __init__(self, engine: sa.Engine, sink: OutputSink) -> None:
        self.engine = engine
        self.sink = sink
        self._lock = threading.Lock()  # guards _waiting
        self._waiting: list[Report] = []  # ended jobs not recorded yet, oldest first
        self._trouble: dict[int, _Trouble] = {}  # ends that failed to be recorded
        self._failing_since: float | None = None

    def add(self, report: Report) -> None:
        with self._lock:
            self._waiting.append(report)

    def waiting(self) -> int:
        """How many ended jobs are not recorded yet."""
        with self._lock:
            return len(self._waiting)

    def flush(self, worker_id: int, *, take: bool) -> tuple[set[int], list[jobs.Job]] | None:
        """Record every job that ended since the last call, with its last output, in one
        transaction; with ``take``, in the same transaction take waiting jobs for the
        freed slots. The ids of the jobs now recorded (their slots are free) and the jobs
        taken; None if nothing was recorded (nothing due, or the database is away)."""
        reports = self._due()
        if not reports:
            return None
        try:
            stale, fresh = self._record_together(reports, worker_id, take)
        except db.UNAVAILABLE as exc:
            # The database is away: keep the reports (and their output) and try again.
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                log.warning("cannot record ended jobs (%s); retrying", exc)
            return None
        except Exception:
            log.exception("could not record %d ended jobs together; one by one", len(reports))
            (stale, later), fresh = self._record_singly(reports), []
            reports = [r for r in reports if r.job.id not in later]
        if self._failing_since is not None:
            away = time.monotonic() - self._failing_since
            log.warning("recording ended jobs works again after %.1f s", away)
            self._failing_since = None
        return self._settle(reports, stale), fresh

    def _due(self) -> list[Report]:
        """The reports to record now (not those waiting after failed tries)."""
        now = time.monotonic()
        with self._lock:
            waiting = list(self._waiting)
        due = []
        for r in waiting:
            trouble = self._trouble.get(r.job.id)
            if trouble is None or trouble.not_before <= now:
                due.append(r)
        return due

    def _record_together(
        self, reports: list[Report], worker_id: int, take: bool
    ) -> tuple[list[int], list[jobs.Job]]:
        """Record them all in one transaction; the ids no longer this worker's, and the
        jobs taken."""
        with self.sink.closing([r.job.id for r in reports]) as out, db.write(self.engine) as conn:
            stale = [r.job.id for r in reports if not _finish(conn, r, out.kept[r.job.id])]
            # Only the jobs still ours get their last output: a lost job's log stays as it
            # was when it was declared lost.
            out.write(conn, skip=set(stale))
            fresh = balancer.take_for_worker(conn, worker_id) if take else []
        return stale, fresh

    def _settle(self, reports: list[Report], stale: list[int]) -> set[int]:
        """Forget the reports recorded (or dropped as stale); their ids."""
        for job_id in stale:
            log.warning("job %d ended but was no longer this worker's; result dropped", job_id)
        done = {r.job.id for r in reports}
        for job_id in done:
            self._trouble.pop(job_id, None)
        with self._lock:
            self._waiting = [r for r in self._waiting if r.job.id not in done]
        return done

    def _record_singly(self, reports: list[Report]) -> tuple[list[int], set[int]]:
        """Record each job's end on its own, after recording them together failed for a
        reason other than the database being away: one bad report must not hold up the
        others. Returns the ids no longer this worker's, and those to try again later."""
        stale: list[int] = []
        later: set[int] = set()
        for r in reports:
            recorded = self._try_one(r)
            if recorded is None:
                later.add(r.job.id)
            elif not recorded:
                stale.append(r.job.id)
        return stale, later

    def _try_one(self, r: Report) -> bool | None:
        """One try at recording a job's end: True if recorded, False if the job is no
        longer ours, None to try again later.

        A report that keeps failing is tried again later and later (up to every 30 s);
        after _REPORT_TRIES tries the job is recorded as ``failed``, saying why, without
        a retry (it may well have done its work), rather than left ``running``.
        """
        job_id = r.job.id
        trouble = self._trouble.get(job_id) or _Trouble()
        try:
            if trouble.tries >= _REPORT_TRIES:
                recorded = self._record_as_failed(r, trouble.error)
            else:
                recorded = self._record_one(r)
        except db.UNAVAILABLE as exc:
            log.warning("job %d: cannot record its end (%s); retrying", job_id, exc)
            return None
        except Exception as exc:
            log.exception("job %d: could not record its end (try %d)", job_id, trouble.tries + 1)
            trouble.error = _describe(exc)
            recorded = None
        if recorded is None:  # try again, later
            trouble.not_before = time.monotonic() + min(0.5 * 2**trouble.tries, 30.0)
            trouble.tries += 1
            self._trouble[job_id] = trouble
        return recorded

    def _record_one(self, r: Report, *, retry: bool = True) -> bool:
        """Record one job's end with its last output; False if no longer ours."""
        with self.sink.closing([r.job.id]) as out, db.write(self.engine) as conn:
            recorded = _finish(conn, r, out.kept[r.job.id], retry=retry)
            out.write(conn, skip=set() if recorded else {r.job.id})
            return recorded

    def _record_as_failed(self, r: Report, why: str) -> bool | None:
        """The last resort for a job whose end cannot be recorded: ``failed``, saying why,
        with no retry; with its output if that can still be written, else without. False
        if no longer ours; None if even that failed (then it is tried again later)."""
        failed = dataclasses.replace(
            r,
            state=jobs.State.FAILED,
            error=f"the worker could not record how this job ended ({why})",
        )
        try:
            return self._record_one(failed, retry=False)
        except Exception:
            log.exception("job %d: recording it with its output failed too; without", r.job.id)
        try:
            with db.write(self.engine) as conn:
                recorded = _finish(conn, failed, None, retry=False)
        except Exception:
            log.exception("job %d: its end cannot be recorded; trying again later", r.job.id)
            return None
        self.sink.discard(r.job.id)  # recorded without its output: it is not kept
        return recorded


def _finish(conn: sa.Connection, r: Report, kept: int | None, *, retry: bool = True) -> bool:
    # Through the module, at call time: tests replace jobs.finish to make reports fail.
    return jobs.finish(
        conn, r.job.id, r.token, r.state, exit_code=r.outcome.exit_code,
        signal=r.outcome.signal, error=r.error, output_bytes=kept if r.keeps_output else None,
        pid=r.pid, retry=retry,
    )  # fmt: skip


def _describe(exc: Exception) -> str:
    """An error in a line, for a job's record: a database error's own message, never the
    statement and parameters (a fencing token, output) SQLAlchemy adds to it."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {text}"[:300] if text else type(cause).__name__
