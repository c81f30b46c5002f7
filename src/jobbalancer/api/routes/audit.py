"""``/api/v1/audit``: the audit log (admins), newest first, in pages."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from jobbalancer.api import models
from jobbalancer.api.deps import Admin, EngineDep
from jobbalancer.service import activity, inputs

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get("")
def list_entries(
    user: Admin,
    engine: EngineDep,
    actor: Annotated[
        inputs.QueryText, Query(max_length=200, description="A user's name or id (local: the CLI).")
    ] = None,
    action: Annotated[
        inputs.QueryText,
        Query(max_length=64, description="An action (job.kill), or an object's every one (job)."),
    ] = None,
    object_: Annotated[
        inputs.QueryText,
        Query(alias="object", max_length=250, description="TYPE, TYPE:ID or TYPE:NAME (job:812)."),
    ] = None,
    since: Annotated[
        inputs.QueryText,
        Query(max_length=40, description="From this time (ISO 8601), or this long ago (1h, 7d)."),
    ] = None,
    until: Annotated[
        inputs.QueryText, Query(max_length=40, description="Before this time, or this long ago.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[inputs.QueryText, Query(max_length=100)] = None,
) -> models.AuditPage:
    """Who changed what: every change, login and failed login, newest first (admins)."""
    found, next_cursor = activity.page(
        engine, user, actor=actor, action=action, object=object_, since=since, until=until,
        limit=limit, cursor=cursor,
    )  # fmt: skip
    return models.AuditPage(
        items=[models.AuditEntry.from_entry(e) for e in found], next_cursor=next_cursor
    )
