"""``/settings`` (admins): the cluster-wide tunables, effective at once everywhere."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from jobbalancer import db, errors, settings
from jobbalancer.service import fleet
from jobbalancer.web import deps, pages

router = APIRouter(include_in_schema=False)

ALGORITHMS = {
    "round_robin": "Round robin: each worker in turn (the rotation survives restarts).",
    "least_loaded": "Least loaded: the worker with the fewest jobs for its size.",
    "random": "Random: any worker with a free slot.",
    "fill_first": "Fill first: pack the first workers, so others can scale down.",
}
NUMBERS = ("worker_timeout", "kill_grace", "max_log_bytes", "retention_days",
           "max_waiting_per_user", "submit_rate", "submit_burst", "max_submitter_priority",
           "max_streams_per_user", "audit_retention_days")  # fmt: skip


@router.get("/settings")
def settings_page(page: deps.Admin) -> Response:
    with db.read(page.engine) as conn:
        current = settings.load_tunables(conn)
    return _render(page, current.model_dump())


def _render(page: deps.Page, values: dict[str, Any], **extra: Any) -> Response:
    return page.render(
        "settings.html",
        active="settings",
        values=values,
        algorithms=ALGORITHMS,
        metrics_forced=page.request.app.state.settings.server.metrics_public,
        notify=page.request.app.state.settings.notify,
        web_url=page.request.app.state.settings.web_url,
        **extra,
    )


@router.post("/settings")
def save_settings(page: deps.Admin) -> Response:
    # A number the form does not carry (a page older than the setting) stays as it is.
    sent = [name for name in NUMBERS if page.form is not None and name in page.form]
    changes: dict[str, Any] = {name: page.field(name).strip() for name in sent}
    changes["algorithm"] = page.field("algorithm")
    changes["metrics_public"] = page.field("metrics_public") in ("on", "true", "1")
    with db.read(page.engine) as conn:
        current = settings.load_tunables(conn).model_dump()
    try:
        fleet.save_settings(page.engine, page.user, changes)
    except errors.InvalidInput as exc:
        values = {**current, **changes}
        return _render(page, values, error=exc.message, error_field=exc.field, status=422)
    return pages.redirect(
        "/settings", "Settings saved; they apply now, on every server and worker."
    )
