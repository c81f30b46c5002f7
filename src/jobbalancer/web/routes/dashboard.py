"""``/``: the dashboard for a signed-in user; anyone else is sent to the login form."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from jobbalancer import db, stats
from jobbalancer.web import deps

router = APIRouter(include_in_schema=False)


@router.get("/")
def home(page: deps.Viewer) -> Response:
    return page.render("dashboard.html", active="dashboard", **_figures(page))


@router.get("/dashboard/live")
def dashboard_live(page: deps.Viewer) -> Response:
    """The part of the dashboard that refreshes itself."""
    return page.render("_dashboard_live.html", **_figures(page))


def _figures(page: deps.Page) -> dict[str, Any]:
    with db.read(page.engine) as conn:
        summary = stats.summary(conn)
    online = sum(1 for w in summary.workers if w.state in ("online", "draining", "disabled"))
    return {
        "summary": summary,
        "workers_online": online,
        "workers_offline": len(summary.workers) - online,
    }
