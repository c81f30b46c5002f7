"""``/classes``: worker classes; everyone reads, admins and operators create, rename,
change max jobs and delete (a class in use is refused, and the page says why).

The forms are read as the API's bodies (``inputs.WorkerClassIn``/``WorkerClassPatch``)
and go through the same manager calls as ``/api/v1/worker-classes``.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Path
from fastapi.responses import Response

from jobbalancer import classes, db, errors, registry
from jobbalancer.refs import MAX_ID
from jobbalancer.service import fleet, inputs
from jobbalancer.web import deps, pages

router = APIRouter(include_in_schema=False)

ClassId = Annotated[int, Path(ge=1, le=MAX_ID)]
_FIELDS = ("name", "max_jobs", "description")


@router.get("/classes")
def classes_page(page: deps.Viewer) -> Response:
    return _render(page)


def _render(
    page: deps.Page,
    *,
    form: dict[str, str] | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    with db.read(page.engine) as conn:
        found = classes.list_all(conn)
        in_class = Counter(w.worker_class_id for w in registry.list_all(conn))
    return page.render(
        "classes.html",
        active="classes",
        status=status,
        classes=found,
        worker_counts=in_class,
        default_name=classes.DEFAULT,
        form=form or {"name": "", "max_jobs": "5", "description": ""},
        error=error,
    )


@router.post("/classes")
def create_class(page: deps.Operator) -> Response:
    form = {name: page.field(name) for name in _FIELDS}
    try:
        spec = inputs.WorkerClassIn.model_validate({k: v for k, v in form.items() if v.strip()})
        created = fleet.create_class(page.engine, page.user, spec)
    except pydantic.ValidationError as exc:
        return _render(page, form=form, error=inputs.first_message(exc), status=422)
    except errors.JobBalancerError as exc:
        return _render(page, form=form, error=exc.message, status=exc.status)
    return pages.redirect("/classes", f"Worker class {created.name} created.")


@router.post("/classes/{class_id}/edit")
def edit_class(class_id: ClassId, page: deps.Operator) -> Response:
    """Rename, change max jobs or the description (fields left out stay)."""
    changes: dict[str, Any] = {n: page.field(n) for n in ("name", "max_jobs") if page.field(n)}
    if page.form is not None and "description" in page.form:  # may be emptied
        changes["description"] = page.field("description")
    try:
        patch = inputs.WorkerClassPatch.model_validate(changes)
        changed = patch.model_dump(exclude_unset=True)
        before, updated = fleet.update_class(page.engine, page.user, class_id, changed)
    except pydantic.ValidationError as exc:
        return pages.redirect("/classes", inputs.first_message(exc), error=True)
    except (errors.InvalidInput, errors.Conflict) as exc:
        return pages.redirect("/classes", exc.message, error=True)
    renamed = f" (was {before.name})" if updated.name != before.name else ""
    return pages.redirect("/classes", f"Worker class {updated.name}{renamed} saved.")


@router.post("/classes/{class_id}/delete")
def delete_class(class_id: ClassId, page: deps.Operator) -> Response:
    """Delete a class without workers and unfinished jobs; else say what holds it."""
    try:
        name = fleet.delete_class(page.engine, page.user, class_id).name
    except errors.Conflict as exc:
        return pages.redirect("/classes", f"Not deleted: {exc.message}.", error=True)
    return pages.redirect("/classes", f"Worker class {name} deleted.")
