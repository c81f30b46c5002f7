"""Self-fencing: a worker cut off from the database stops its jobs before the server may
declare them lost and retry them elsewhere, so no two attempts of a job run at once.

The rule. T = ``worker_timeout`` (a tunable the worker reads with every heartbeat),
H = ``worker.heartbeat_interval``::

    margin(T) = min(max(0.2·T, 1 s), 30 s)
    F         = T - margin(T)          the worker's fence deadline
    h         = min(H, F / 3)          the heartbeat period: three tries fit before a fence

``renewed_at`` is the time (on :func:`clock`) at which the last heartbeat that went
through was *sent*. The server declares a worker lost when ``db_now -
last_heartbeat_at > T``, and the database stamped that heartbeat no earlier than it was
sent, so the server cannot judge the worker before ``renewed_at + T`` (elapsed time); the
worker kills everything at ``renewed_at + F``, ``margin`` earlier. The margin covers the
fence thread waking late on a loaded host, the kill itself, and a forward step of the
database's clock. Only elapsed times are compared, never two clocks' readings.

Figures: at the defaults (T 15 s, H 3 s) margin 3 s, F 12 s, h 3 s: a cut-off worker kills
its jobs 9-12 s after the cut; the server declares them lost 12-16 s after it. At the test
settings (T 3 s, H 0.5 s): margin 1 s, F 2 s, h 0.5 s.

A thread of its own watches the deadline: the heartbeat thread can sit in a hung TCP call
for up to ``tcp_user_timeout`` (30 s), and the main loop in a report.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

MIN_MARGIN = 1.0
MAX_MARGIN = 30.0
# The fence thread looks at least this often, so a resume from suspend is seen at once.
STEP = 0.25


def clock() -> float:
    """Seconds on CLOCK_BOOTTIME: it counts time suspended, unlike ``time.monotonic``, so
    a resumed VM does not think its lease is still young."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def margin(worker_timeout: float) -> float:
    """How long before the server's deadline the worker fences itself."""
    return min(max(0.2 * worker_timeout, MIN_MARGIN), MAX_MARGIN)


def deadline(worker_timeout: float) -> float:
    """F: seconds after the last renewal at which a worker kills its jobs."""
    return worker_timeout - margin(worker_timeout)


def heartbeat_every(configured: float, worker_timeout: float) -> float:
    """The heartbeat period: the configured one, shorter if three would not fit in F."""
    return min(configured, deadline(worker_timeout) / 3)


class Fence:
    """Watches the lease; calls ``on_fence(seconds since the renewal)`` once when it runs
    out, and is armed again by the next renewal."""

    def __init__(
        self,
        renewed_at: Callable[[], float],
        worker_timeout: Callable[[], float],
        on_fence: Callable[[float], None],
        clock: Callable[[], float] = clock,
    ) -> None:
        self._renewed_at = renewed_at
        self._worker_timeout = worker_timeout
        self._on_fence = on_fence
        self._clock = clock
        self.fenced = threading.Event()
        self._fenced_renewal = 0.0  # the renewal whose lease ran out
        self._lock = threading.Lock()  # one check at a time: on_fence runs once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def expires_at(self) -> float:
        """When (on the clock) the current lease runs out."""
        return self._renewed_at() + deadline(self._worker_timeout())

    def can_start(self) -> bool:
        """Whether a job may start now: not fenced, and the lease still runs."""
        self.check()
        return not self.fenced.is_set() and self._clock() < self.expires_at()

    def check(self) -> bool:
        """One look: fence if the lease ran out (once per renewal), clear after a renewal.
        True if it fenced now."""
        with self._lock:
            return self._check()

    def _check(self) -> bool:
        renewed = self._renewed_at()
        if self.fenced.is_set():
            if renewed > self._fenced_renewal:
                log.warning("heartbeat renewed: the worker takes jobs again")
                self.fenced.clear()
            return False
        age = self._clock() - renewed
        if age < deadline(self._worker_timeout()):
            return False
        self._fenced_renewal = renewed
        self.fenced.set()
        self._on_fence(age)
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fence", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:
                log.exception("the fence check failed; trying again")
            left = self.expires_at() - self._clock()
            self._stop.wait(min(max(left, 0.01), STEP))
