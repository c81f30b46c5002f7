"""Self-fencing: a worker cut off from the database stops its jobs before the server may
declare them lost and retry them elsewhere, so no two attempts of a job run at once."""

from __future__ import annotations

import time


def clock() -> float:
    """Seconds on CLOCK_BOOTTIME: it counts time suspended, unlike ``time.monotonic``, so
    a resumed VM does not think its lease is still young."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)
