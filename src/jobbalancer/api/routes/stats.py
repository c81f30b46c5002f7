"""``/api/v1/stats``: jobs per state, per worker, and finished per minute."""

from __future__ import annotations

from fastapi import APIRouter

from jobbalancer import db, stats
from jobbalancer.api import models
from jobbalancer.api.deps import CurrentUser, EngineDep

router = APIRouter(prefix="/api/v1/stats", tags=["statistics"])


@router.get("")
def get_stats(user: CurrentUser, engine: EngineDep) -> models.Stats:
    """Counts of jobs per state and per worker, slots, and jobs finished in each minute
    of the last hour (oldest first; the last is the current minute)."""
    with db.read(engine) as conn:
        return models.Stats.from_summary(stats.summary(conn))
