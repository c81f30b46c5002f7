"""``/api/v1/settings``: the cluster-wide tunables. Everyone reads; admins change."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from jobbalancer import db, settings
from jobbalancer.api.deps import Admin, CurrentUser, EngineDep
from jobbalancer.service import fleet

router = APIRouter(prefix="/api/v1/settings", tags=["settings"])

_EXAMPLE = {"algorithm": "least_loaded", "worker_timeout": 30}


@router.get("")
def get_settings(user: CurrentUser, engine: EngineDep) -> settings.Tunables:
    """The cluster-wide settings, defaults included."""
    with db.read(engine) as conn:
        return settings.load_tunables(conn)


@router.patch("")
def update_settings(
    changes: Annotated[dict[str, Any], Body(examples=[_EXAMPLE])],
    user: Admin,
    engine: EngineDep,
) -> settings.Tunables:
    """Change some settings; they take effect at once on every server and worker."""
    return fleet.save_settings(engine, user, changes)
