"""``/docs``: the API's reference (Swagger UI, vendored), for signed-in users; it reads
``/openapi.json`` with the page's session cookie."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from jobbalancer.web import deps

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def api_docs(page: deps.Viewer) -> Response:
    return page.render("docs.html", active="docs")
