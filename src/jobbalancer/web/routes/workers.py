"""``/workers``: every worker with its machine's figures (refreshing itself), and
``/workers/{id}``: one worker, where operators change its class and max jobs, disable or
enable it, or remove it once offline.

Changes go through the same manager calls as ``PATCH``/``DELETE /api/v1/workers/{id}``,
and the form is read as the API's body (``inputs.WorkerPatch``), so the rules and the
messages are the API's.
"""

from __future__ import annotations

from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Path
from fastapi.responses import Response

from jobbalancer import classes, db, errors, registry
from jobbalancer.refs import MAX_ID
from jobbalancer.service import fleet, inputs
from jobbalancer.web import deps, pages

router = APIRouter(include_in_schema=False)

WorkerId = Annotated[int, Path(ge=1, le=MAX_ID)]


def _listing(page: deps.Page) -> dict[str, Any]:
    with db.read(page.engine) as conn:
        return {"workers": registry.list_all(conn), "now": db.now(conn)}


@router.get("/workers")
def workers_page(page: deps.Viewer) -> Response:
    return page.render("workers.html", active="workers", **_listing(page))


@router.get("/workers/table")
def workers_table(page: deps.Viewer) -> Response:
    """The table alone, for the page's refresh (htmx)."""
    return page.render("_workers_table.html", **_listing(page))


@router.get("/workers/{worker_id}")
def worker_page(worker_id: WorkerId, page: deps.Viewer) -> Response:
    return _render_worker(page, worker_id)


@router.get("/workers/{worker_id}/machine")
def worker_machine(worker_id: WorkerId, page: deps.Viewer) -> Response:
    """The worker's figures alone, for its page's refresh (htmx)."""
    with db.read(page.engine) as conn:
        worker = registry.get(conn, worker_id)
        now = db.now(conn)
    return page.render("_worker_machine.html", worker=worker, now=now)


def _render_worker(
    page: deps.Page,
    worker_id: int,
    *,
    form: dict[str, str] | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    with db.read(page.engine) as conn:
        worker = registry.get(conn, worker_id)
        found = classes.list_all(conn)
        now = db.now(conn)
    if form is None:
        own = worker.own_max_jobs
        form = {"worker_class": worker.worker_class, "max_jobs": "" if own is None else str(own)}
    return page.render(
        "worker.html",
        active="workers",
        status=status,
        worker=worker,
        classes=found,
        class_max={c.name: c.max_jobs for c in found},
        form=form,
        error=error,
        now=now,
    )


@router.post("/workers/{worker_id}/edit")
def edit_worker(worker_id: WorkerId, page: deps.Operator) -> Response:
    """Class and max jobs; an empty max jobs means the class's."""
    form = {"worker_class": page.field("worker_class"), "max_jobs": page.field("max_jobs").strip()}
    try:
        patch = inputs.WorkerPatch.model_validate(
            {"worker_class": form["worker_class"], "max_jobs": form["max_jobs"] or None}
        )
        name = _update(page, worker_id, patch.model_dump(exclude_unset=True))
    except pydantic.ValidationError as exc:
        message = inputs.first_message(exc)
        return _render_worker(page, worker_id, form=form, error=message, status=422)
    except (errors.InvalidInput, errors.Conflict) as exc:
        return _render_worker(page, worker_id, form=form, error=exc.message, status=exc.status)
    return pages.redirect(f"/workers/{worker_id}", f"Worker {name} saved.")


@router.post("/workers/{worker_id}/disable")
def disable_worker(worker_id: WorkerId, page: deps.Operator) -> Response:
    name = _update(page, worker_id, {"enabled": False})
    return pages.redirect(
        _back(page, worker_id),
        f"Worker {name} disabled: it takes no new jobs and finishes those it has.",
    )


@router.post("/workers/{worker_id}/enable")
def enable_worker(worker_id: WorkerId, page: deps.Operator) -> Response:
    name = _update(page, worker_id, {"enabled": True})
    return pages.redirect(_back(page, worker_id), f"Worker {name} enabled: it takes jobs again.")


@router.post("/workers/{worker_id}/remove")
def remove_worker(worker_id: WorkerId, page: deps.Operator) -> Response:
    """Remove an offline worker from the list (a live one is refused, with the reason)."""
    name = fleet.remove_worker(page.engine, page.user, worker_id).name
    return pages.redirect("/workers", f"Worker {name} removed.")


def _update(page: deps.Page, worker_id: int, changes: dict[str, Any]) -> str:
    """As ``PATCH /api/v1/workers/{id}``; the worker's name."""
    return fleet.update_worker(page.engine, page.user, worker_id, changes).name


def _back(page: deps.Page, worker_id: int) -> str:
    """Back to the list or to the worker's page, whichever the button was on."""
    return "/workers" if page.field("back") == "list" else f"/workers/{worker_id}"
