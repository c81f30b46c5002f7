"""``/openapi.json``: the API's own description, for anyone with a key or a web session.

The schema holds no data, but it maps every route a caller could try; like every other
route it is for signed-in callers (issue: only ``/healthz``, the login page and static
files are open). ``/docs`` (Swagger UI) is a web page: ``web/routes/docs.py``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from jobbalancer.api.deps import CurrentUser

router = APIRouter(include_in_schema=False)


@router.get("/openapi.json")
def openapi(request: Request, _user: CurrentUser) -> dict[str, Any]:
    schema: dict[str, Any] = request.app.openapi()
    return schema
