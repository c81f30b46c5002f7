"""``/users`` (admins): users and their API keys. Create a user with a role, the
scripts-only flag and the classes they may use; change those; reset a password (a new
one, shown once); disable, enable or delete; create API keys (shown once) and revoke them.

The same checks as ``/api/v1/users`` apply (service.users: the last enabled admin
stays, names stay unique); ``auth.update_user`` ends a user's web sessions when their
password is reset or they are disabled.
"""

from __future__ import annotations

from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Path
from fastapi.responses import Response

from jobbalancer import auth, classes, db, errors
from jobbalancer.refs import MAX_ID
from jobbalancer.service import inputs, users
from jobbalancer.web import deps, pages

router = APIRouter(include_in_schema=False)

UserId = Annotated[int, Path(ge=1, le=MAX_ID)]
KeyId = Annotated[int, Path(ge=1, le=MAX_ID)]
ROLE_HELP = {
    "admin": "everything, users and settings too",
    "operator": "jobs of everyone, workers, classes, scripts",
    "submitter": "submits and manages their own jobs",
    "viewer": "reads everything, changes nothing",
}

NEW_USER = {"name": "", "role": "submitter", "commands_allowed": True, "worker_classes": None}


def _access(page: deps.Page) -> dict[str, Any]:
    """The role, scripts-only flag and classes as the forms send them (API body names)."""
    all_classes = page.field("classes_mode", "all") == "all"
    return {
        "role": page.field("role", "submitter"),
        "commands_allowed": page.field("scripts_only") not in ("on", "true", "1"),
        "worker_classes": None if all_classes else page.fields("worker_classes"),
    }


# -- the list -------------------------------------------------------------------------------


@router.get("/users")
def users_page(page: deps.Admin) -> Response:
    return _render_list(page)


def _render_list(
    page: deps.Page,
    *,
    form: dict[str, Any] | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    with db.read(page.engine) as conn:
        found = auth.list_users(conn)
        keys = {u.id: len(auth.list_api_keys(conn, u.id)) for u in found}
        all_classes = classes.list_all(conn)
    return page.render(
        "users.html",
        active="users",
        status=status,
        users=found,
        key_counts=keys,
        classes=all_classes,
        roles=ROLE_HELP,
        form=form or NEW_USER,
        error=error,
    )


@router.post("/users")
def create_user(page: deps.Admin) -> Response:
    """Create a user; without a password typed in, one is made and shown once."""
    password = page.field("password")
    form: dict[str, Any] = {"name": page.field("name"), **_access(page)}
    new_password = password or auth.generate_password()
    try:
        spec = inputs.UserIn.model_validate({**form, "password": new_password})
        created = users.create(page.engine, page.user, spec)
    except pydantic.ValidationError as exc:
        return _render_list(page, form=form, error=inputs.first_message(exc), status=422)
    except errors.JobBalancerError as exc:
        return _render_list(page, form=form, error=exc.message, status=exc.status)
    if password:
        return pages.redirect(f"/users/{created.id}", f"User {created.name} created.")
    return _render_user(
        page, created.id, shown={"password": new_password}, note=f"User {created.name} created."
    )


# -- one user -------------------------------------------------------------------------------


@router.get("/users/{user_id}")
def user_page(user_id: UserId, page: deps.Admin) -> Response:
    return _render_user(page, user_id)


def _render_user(
    page: deps.Page,
    user_id: int,
    *,
    shown: dict[str, str] | None = None,
    note: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    """The user's page; ``shown`` holds a new password or key, in this answer only."""
    with db.read(page.engine) as conn:
        target = auth.get_user(conn, user_id)
        keys = auth.list_api_keys(conn, user_id)
        all_classes = classes.list_all(conn)
    return render_keys_page(
        page, "user.html", active="users", shown=shown, note=note, error=error, status=status,
        target=target, keys=keys, classes=all_classes, owner=target,
    )  # fmt: skip


def render_keys_page(
    page: deps.Page,
    template: str,
    *,
    active: str,
    shown: dict[str, str] | None,
    note: str | None,
    error: str | None,
    status: int,
    **values: Any,
) -> Response:
    """A page with API keys (a user's, or one's own account): ``shown`` holds a secret
    just made (a password or key), which only this answer carries and no cache keeps.
    ``values["owner"]`` is the keys' user: the key form offers the scopes their role
    allows."""
    owner: auth.User = values["owner"]
    scopes = [s for s in auth.Scope if auth.scope_allowed(s, owner.role)]
    response = page.render(
        template, active=active, status=status, roles=ROLE_HELP, shown=shown or {},
        note=note, error=error, scopes=scopes, scope_help=SCOPE_HELP,
        default_scope=auth.ROLE_SCOPES[owner.role], **values,
    )  # fmt: skip
    if shown:
        response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/users/{user_id}/{action}")
def back_to_user(user_id: UserId, action: str, page: deps.Admin) -> Response:
    """A reload or bookmark of a form's address (a secret's page was a POST's answer)."""
    return pages.redirect(f"/users/{user_id}")


@router.post("/users/{user_id}/edit")
def edit_user(user_id: UserId, page: deps.Admin) -> Response:
    """Role, scripts-only flag and allowed classes."""
    try:
        changes = _checked_patch(_access(page))
        name = _update(page, user_id, changes)
    except pydantic.ValidationError as exc:
        return _render_user(page, user_id, error=inputs.first_message(exc), status=422)
    except (errors.InvalidInput, errors.Conflict) as exc:
        return _render_user(page, user_id, error=exc.message, status=exc.status)
    return pages.redirect(f"/users/{user_id}", f"User {name} saved.")


@router.post("/users/{user_id}/password")
def reset_password(user_id: UserId, page: deps.Admin) -> Response:
    """A new password, shown once; the user's web sessions end."""
    password = auth.generate_password()
    name = _update(page, user_id, {"password": password})
    return _render_user(
        page,
        user_id,
        shown={"password": password},
        note=f"Password of {name} reset; they were logged out everywhere.",
    )


@router.post("/users/{user_id}/disable")
def disable_user(user_id: UserId, page: deps.Admin) -> Response:
    try:
        name = _update(page, user_id, {"disabled": True})
    except errors.Conflict as exc:
        return pages.redirect(f"/users/{user_id}", exc.message, error=True)
    return pages.redirect(
        f"/users/{user_id}",
        f"User {name} disabled: logged out, and their API keys stop working.",
    )


@router.post("/users/{user_id}/enable")
def enable_user(user_id: UserId, page: deps.Admin) -> Response:
    name = _update(page, user_id, {"disabled": False})
    return pages.redirect(f"/users/{user_id}", f"User {name} enabled.")


@router.post("/users/{user_id}/delete")
def delete_user(user_id: UserId, page: deps.Admin) -> Response:
    """Delete a user and their keys (their jobs stay); never the last enabled admin."""
    try:
        target = users.delete(page.engine, page.user, user_id)
    except errors.Conflict as exc:
        return pages.redirect(f"/users/{user_id}", exc.message, error=True)
    return pages.redirect("/users", f"User {target.name} deleted; their jobs stay.")


def _checked_patch(changes: dict[str, Any]) -> dict[str, Any]:
    return inputs.UserPatch.model_validate(changes).model_dump(exclude_unset=True)


def _update(page: deps.Page, user_id: int, changes: dict[str, Any]) -> str:
    """As ``PATCH /api/v1/users/{id}``; the user's name."""
    return users.update(page.engine, page.user, user_id, changes).name


# -- API keys -------------------------------------------------------------------------------


SCOPE_HELP = {
    auth.Scope.READ: "read: look only, change nothing",
    auth.Scope.SUBMIT: "submit: submit, and manage its own jobs",
    auth.Scope.OPERATE: "operate: also kill, restart, delete others' jobs",
    auth.Scope.ADMIN: "admin: everything its user may do",
}


def create_key_from_form(page: deps.Page, user_id: int) -> tuple[auth.ApiKey, str]:
    """A key as the key form asks (name, scope, expires: ``30d``, a date or nothing)."""
    spec = inputs.ApiKeyIn.model_validate(
        {"name": page.field("name").strip() or "default", "scope": page.field("scope") or None}
    )
    return users.create_key(
        page.engine, page.user, user_id, spec.name, scope=spec.scope,
        expires_at=page.field("expires").strip() or None,
    )  # fmt: skip


@router.post("/users/{user_id}/keys")
def create_key(user_id: UserId, page: deps.Admin) -> Response:
    """A new key for the user, shown once (with a Copy button)."""
    try:
        record, key = create_key_from_form(page, user_id)
    except pydantic.ValidationError as exc:
        return _render_user(page, user_id, error=inputs.first_message(exc), status=422)
    except errors.InvalidInput as exc:
        return _render_user(page, user_id, error=exc.message, status=422)
    return _render_user(
        page,
        user_id,
        shown={"key": key, "key_name": record.name},
        note=f"API key {record.name} created.",
    )


@router.post("/users/{user_id}/keys/{key_id}/revoke")
def revoke_key(user_id: UserId, key_id: KeyId, page: deps.Admin) -> Response:
    users.revoke_key(page.engine, page.user, user_id, key_id)
    return pages.redirect(f"/users/{user_id}", "API key revoked: it stops working at once.")
