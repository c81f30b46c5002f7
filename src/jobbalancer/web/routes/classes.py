"""``/classes``: worker classes; everyone reads, admins and operators create, rename,
change max jobs and delete (a class in use is refused, and the page says why).

The forms are read as the API's bodies (``models.WorkerClassIn``/``WorkerClassPatch``)
and go through the same manager calls as ``/api/v1/worker-classes``.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Path
from fastapi.responses import Response

from jobbalancer import classes, db, errors, registry
from jobbalancer.api import actions, models
from jobbalancer.api import errors as api_errors
from jobbalancer.refs import MAX_ID
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


def _message(exc: pydantic.ValidationError) -> str:
    return api_errors.describe(exc.errors()[0])[1]


@router.post("/classes")
def create_class(page: deps.Operator) -> Response:
    form = {name: page.field(name) for name in _FIELDS}
    try:
        spec = models.WorkerClassIn.model_validate({k: v for k, v in form.items() if v.strip()})
        with db.write(page.engine) as conn:
            created = classes.create(conn, spec.name, spec.max_jobs, spec.description)
    except pydantic.ValidationError as exc:
        return _render(page, form=form, error=_message(exc), status=422)
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
        patch = models.WorkerClassPatch.model_validate(changes)
        with db.write(page.engine) as conn:
            before = classes.get(conn, class_id)
            updated = actions.update_class(conn, class_id, patch.model_dump(exclude_unset=True))
    except pydantic.ValidationError as exc:
        return pages.redirect("/classes", _message(exc), error=True)
    except (errors.InvalidInput, errors.Conflict) as exc:
        return pages.redirect("/classes", exc.message, error=True)
    renamed = f" (was {before.name})" if updated.name != before.name else ""
    return pages.redirect("/classes", f"Worker class {updated.name}{renamed} saved.")


@router.post("/classes/{class_id}/delete")
def delete_class(class_id: ClassId, page: deps.Operator) -> Response:
    """Delete a class without workers and unfinished jobs; else say what holds it."""
    try:
        with db.write(page.engine) as conn:
            name = classes.get(conn, class_id).name
            classes.delete(conn, class_id)
    except errors.Conflict as exc:
        return pages.redirect("/classes", f"Not deleted: {exc.message}.", error=True)
    return pages.redirect("/classes", f"Worker class {name} deleted.")
