"""``/healthz``: is this server up and can it reach the database? No key needed."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from jobbalancer import db, errors
from jobbalancer.api.deps import EngineDep

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz")
def healthz(engine: EngineDep) -> JSONResponse:
    """``{"status": "ok", "database": "ok"}``, or 503 when the database is unreachable."""
    try:
        with db.read(engine) as conn:
            conn.execute(sa.select(1))
    except (errors.DatabaseUnavailable, sa.exc.SQLAlchemyError) as exc:
        log.warning("health check: database unavailable: %s", exc)
        return JSONResponse(
            {
                "status": "unavailable",
                "database": "unavailable",
                "error": "database_unavailable",
                "message": "the database cannot be reached",
            },
            status_code=503,
        )
    return JSONResponse({"status": "ok", "database": "ok"})
