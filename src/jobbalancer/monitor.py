"""The monitor: worker liveness, recovery of vanished workers' jobs, retention.

Also the supervisor thread every server runs: it holds the ``leader`` lease in the
database, and only the holder balances and monitors; the others stand by to take over.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa

from jobbalancer import audit, balancer, db, jobs, notify, outbox, registry, schedules, settings

log = logging.getLogger(__name__)

LeaderLoop = Callable[[Callable[[], bool], threading.Event], None]


class Liveness:
    """The worker_timeout liveness is judged by. A raised one counts at once; a lowered
    one only once the old one has passed since the monitor first saw it: a worker learns
    worker_timeout with each heartbeat, and fences itself by the value it knows
    (worker/fence.py), so it must not be judged by a shorter one it has not read yet.
    With no worker live when the new value is first seen, nobody knows the old one: it
    counts at once."""

    def __init__(self) -> None:
        self._in_force: float | None = None
        self._lowered: tuple[float, datetime] | None = None  # the new value, first seen at

    def timeout(self, configured: float, now: datetime, workers_live: Callable[[], bool]) -> float:
        lowered = self._lowered if self._lowered and self._lowered[0] == configured else None
        if self._in_force is None or configured >= self._in_force:
            self._in_force, self._lowered = configured, None  # raised (or first): at once
        elif lowered is None:
            if workers_live():
                self._lowered = (configured, now)
            else:
                self._in_force, self._lowered = configured, None  # nobody knows the old one
        elif now - lowered[1] >= timedelta(seconds=self._in_force):
            self._in_force, self._lowered = configured, None
        return self._in_force


def _any_live(conn: sa.Connection) -> bool:
    return any(w.state in registry.LIVE_STATES for w in registry.list_all(conn))


def check_workers(
    engine: sa.Engine,
    *,
    reachable_since: datetime | None = None,
    liveness: Liveness | None = None,
) -> list[int]:
    """Mark workers silent past worker_timeout offline and recover their jobs.

    ``reachable_since``: when (database clock) this server could reach the database again
    after an outage. A worker could not heartbeat then either, so nobody is judged until a
    full worker_timeout has passed since: a database restart must not look like every
    worker dying at once (their running jobs would be lost and killed). ``liveness``: the
    monitor's memory of worker_timeout (a lowered one counts later, see :class:`Liveness`).
    """
    with db.write(engine) as conn:
        timeout = settings.load_tunables(conn).worker_timeout
        now = db.now(conn)
        if liveness is not None:
            timeout = liveness.timeout(timeout, now, lambda: _any_live(conn))
        if reachable_since is not None and now - reachable_since < timedelta(seconds=timeout):
            return []
        cutoff = now - timedelta(seconds=timeout)
        gone, all_lost = [], []
        for worker_id in registry.silent_since(conn, cutoff):
            if not registry.mark_offline(conn, worker_id, cutoff):
                continue
            gone.append(worker_id)
            back = jobs.unassign_worker(conn, worker_id)
            lost = jobs.mark_lost(
                conn, worker_id, f"its worker was silent for more than {timeout:g} s"
            )
            all_lost.extend(lost)
            log.warning(
                "worker %s went offline: %d assigned job(s) back to waiting, %d lost",
                worker_id, back, len(lost),
            )  # fmt: skip
        # The ends (retries, held jobs decided) take the assign lock: after every row.
        jobs.end_lost(conn, all_lost)
    return gone


def apply_retention(engine: sa.Engine) -> int:
    """Delete finished jobs older than retention_days (0 keeps everything), and the
    delivered or failed notifications as old (the outbox stays bounded too), and the
    schedules' occurrences recorded as long ago (their history); and audit entries older
    than audit_retention_days (0 keeps them)."""
    with db.write(engine) as conn:
        tunables = settings.load_tunables(conn)
        now = db.now(conn)
        if tunables.audit_retention_days > 0:
            audit.delete_before(conn, now - timedelta(days=tunables.audit_retention_days))
        days = tunables.retention_days
        if days <= 0:
            return 0
        cutoff = now - timedelta(days=days)
        outbox.delete_sent_before(conn, cutoff)
        schedules.delete_recorded_before(conn, cutoff)
        return jobs.delete_finished_before(conn, cutoff)


class Supervisor:
    """The server's background loop: leader lease, monitor, balancer, retention; and, with
    ``config``, the leader's delivery of notifications (a thread of its own, so a slow
    target never holds up a tick). ``leader_loops``: more threads of the leader's work
    (firing schedules), each called as ``loop(is_leader, stop)`` and doing its work
    while ``is_leader()``."""

    LEASE = "leader"

    def __init__(
        self,
        engine: sa.Engine,
        interval: float = 1.0,
        config: settings.Settings | None = None,
        leader_loops: Sequence[LeaderLoop] = (),
    ) -> None:
        self.engine = engine
        self.interval = interval
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.is_leader = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ticks = 0
        self._unreachable = False  # the last tick could not reach the database
        self._reachable_since: datetime | None = None  # database clock, after an outage
        self._liveness = Liveness()
        # Seconds from the last tick to the earliest delayed job's not_before (None: none).
        self._due_in: float | None = None
        self.dispatcher = None if config is None else notify.Dispatcher(engine, config, self.holder)
        self._notifier: threading.Thread | None = None
        self._leader_loops = list(leader_loops)
        self._loop_threads: list[threading.Thread] = []

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()
        if self.dispatcher is not None:
            self._notifier = threading.Thread(
                target=self.dispatcher.run,
                args=(lambda: self.is_leader, self._stop),
                name="notifier",
                daemon=True,
            )
            self._notifier.start()
        for loop in self._leader_loops:
            thread = threading.Thread(
                target=loop, args=(lambda: self.is_leader, self._stop), daemon=True,
                name=getattr(loop, "__qualname__", "leader-loop"),
            )  # fmt: skip
            thread.start()
            self._loop_threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._notifier is not None:
            self._notifier.join(timeout=10)
        for thread in self._loop_threads:
            thread.join(timeout=10)
        if self.is_leader:
            try:
                with db.write(self.engine) as conn:
                    db.release_lease(conn, self.LEASE, self.holder)
            except Exception:
                log.debug("could not release the leader lease", exc_info=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except db.UNAVAILABLE:
                if not self._unreachable:
                    log.warning("database unavailable; the supervisor retries every %.1f s",
                                self.interval)  # fmt: skip
                self._unreachable = True
            except Exception:
                log.exception("supervisor tick failed; retrying")
            self._stop.wait(self.pause())

    def pause(self) -> float:
        """How long to wait before the next tick: the interval, or less when a delayed
        job is due sooner (it starts on time, not up to an interval late)."""
        if not self.is_leader or self._due_in is None:
            return self.interval
        return min(self.interval, self._due_in)

    def tick(self) -> None:
        """One round: renew or take the lease; as leader, monitor, release the delayed jobs
        that are due, and balance."""
        with db.write(self.engine) as conn:
            leader = db.take_lease(conn, self.LEASE, self.holder, self.interval * 5)
            if self._unreachable:
                self._unreachable = False
                self._reachable_since = db.now(conn)
                log.info("database reachable again; liveness checks resume after worker_timeout")
        if leader != self.is_leader:
            log.info("this server %s the balancer", "now runs" if leader else "no longer runs")
            self.is_leader = leader
        if not leader:
            return
        check_workers(self.engine, reachable_since=self._reachable_since, liveness=self._liveness)
        with db.write(self.engine) as conn:
            db.lock_row(conn, "assign")  # the balancer's order: the lock, then job rows
            jobs.release_due(conn)
            balancer.assign_waiting(conn, locked=True)
            self._due_in = jobs.next_due(conn)
        self._ticks += 1
        if self._ticks % 60 == 1:
            apply_retention(self.engine)
