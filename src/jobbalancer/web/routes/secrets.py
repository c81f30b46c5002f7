"""``/secrets`` (admins): named secrets for jobs; create, replace (the value, or only the
description and limits), delete. A value is never put on a page, not even in the form
after an error.

The form is read as the API's bodies (``inputs.SecretPut`` / ``SecretPatch``) and goes
through the same service as ``/api/v1/secrets``.
"""

from __future__ import annotations

from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from jobbalancer import auth, classes, db, errors
from jobbalancer.refs import MAX_ID
from jobbalancer.service import inputs
from jobbalancer.service import secrets as service
from jobbalancer.web import deps, pages

router = APIRouter(include_in_schema=False)

Id = Annotated[int, Path(ge=1, le=MAX_ID)]
_EMPTY: dict[str, Any] = {"name": "", "description": "", "worker_classes": None, "users": None}


@router.get("/secrets")
def secrets_page(
    page: deps.Admin, edit: Annotated[str | None, Query(max_length=200)] = None
) -> Response:
    """The list, and the form (filled with a secret's description and limits to edit it)."""
    form = dict(_EMPTY)
    if edit:
        try:
            found = service.get(page.engine, page.user, edit)
        except errors.NotFound:
            return pages.redirect("/secrets", f"Secret {edit} does not exist.", error=True)
        form = {"name": found.name, "description": found.description,
                "worker_classes": found.worker_classes, "users": found.user_names}  # fmt: skip
    return _render(page, form=form, editing=bool(edit))


def _render(
    page: deps.Page, *, form: dict[str, Any], error: str | None = None, status: int = 200,
    editing: bool = False,
) -> Response:  # fmt: skip
    with db.read(page.engine) as conn:
        all_classes = classes.list_all(conn)
        all_users = auth.list_users(conn)
    return page.render(
        "secrets.html",
        active="secrets",
        status=status,
        secrets=service.list_secrets(page.engine, page.user),
        classes=all_classes,
        users=all_users,
        form=form,
        editing=editing,
        error=error,
        has_key=page.secret_key is not None,
    )


def _limits(page: deps.Page) -> dict[str, Any]:
    """The class and user limits the form asks for (None: no limit)."""
    found: dict[str, Any] = {}
    for name in ("worker_classes", "users"):
        some = page.field(f"{name}_mode") == "some"
        found[name] = page.fields(name) if some else None
    return found


@router.post("/secrets")
def save_secret(page: deps.Admin) -> Response:
    """Create a secret, replace it (a value given), or change its description and limits."""
    name = page.field("name").strip()
    value = page.field("value")
    limits = _limits(page)
    form = {"name": name, "description": page.field("description"), **limits}
    body: dict[str, Any] = {"description": form["description"], **limits}
    try:
        exists = _exists(page, name)
        if exists and not value:
            patch = inputs.SecretPatch.model_validate(body)
            service.patch(page.engine, page.user, name, patch, page.secret_key)
            done = "changed"
        elif exists:
            spec = inputs.SecretPut.model_validate({**body, "value": value})
            service.put(page.engine, page.user, name, spec, page.secret_key)
            done = "replaced"
        else:
            created = inputs.SecretIn.model_validate({**body, "name": name, "value": value})
            service.create(page.engine, page.user, created, page.secret_key)
            done = "created"
    except pydantic.ValidationError as exc:
        return _render(page, form=form, error=inputs.first_message(exc), status=422)
    except errors.JobBalancerError as exc:
        return _render(page, form=form, error=exc.message, status=exc.status)
    return pages.redirect("/secrets", f"Secret {name} {done}.")


def _exists(page: deps.Page, name: str) -> bool:
    if not name:
        return False
    try:
        service.get(page.engine, page.user, name)
    except errors.NotFound:
        return False
    return True


@router.post("/secrets/{secret_id}/delete")
def delete_secret(secret_id: Id, page: deps.Admin) -> Response:
    name = service.delete(page.engine, page.user, secret_id).name
    return pages.redirect("/secrets", f"Secret {name} deleted.")
