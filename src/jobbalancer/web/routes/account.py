"""``/account``: every signed-in user's own page. What they may do (role, scripts-only,
classes), their password (changed by typing the current one), and their API keys
(created, shown once, revoked) — so a submitter or viewer needs no admin to use the API.

Changing the password ends the user's other web sessions; this browser gets a new one.
A wrong current password counts as a failed login, so a borrowed session cannot be
used to guess it.
"""

from __future__ import annotations

from typing import Annotated

import pydantic
from fastapi import APIRouter, Path
from fastapi.responses import Response

from jobbalancer import auth, db, errors
from jobbalancer.refs import MAX_ID
from jobbalancer.service import inputs, users
from jobbalancer.web import deps, pages
from jobbalancer.web.routes.users import create_key_from_form, render_keys_page

router = APIRouter(include_in_schema=False)

KeyId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.get("/account")
def account_page(page: deps.Viewer) -> Response:
    return _render(page)


@router.get("/account/{action:path}")
def back_to_account(action: str, page: deps.Viewer) -> Response:
    """A reload or bookmark of a form's address (a new key's page was a POST's answer)."""
    return pages.redirect("/account")


def _render(
    page: deps.Page,
    *,
    shown: dict[str, str] | None = None,
    note: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    with db.read(page.engine) as conn:
        keys = auth.list_api_keys(conn, page.user.id)
    return render_keys_page(
        page, "account.html", active="account", shown=shown, note=note, error=error,
        status=status, keys=keys, owner=page.user,
    )  # fmt: skip


@router.post("/account/password")
def change_password(page: deps.Viewer) -> Response:
    try:
        token = users.change_own_password(
            page.engine,
            page.user,
            page.field("current_password"),
            page.field("new_password"),
            page.field("repeat_password"),
            deps.client_address(page.request),
        )
    except errors.LoginThrottled as exc:
        response = _render(page, error=exc.message, status=exc.status)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except errors.JobBalancerError as exc:
        return _render(page, error=exc.message, status=exc.status)
    response = pages.redirect(
        "/account",
        "Password changed. Your other sessions were logged out; your API keys still work.",
    )
    response.set_cookie(
        auth.SESSION_COOKIE, token, httponly=True, samesite="lax", path="/",
        secure=page.request.url.scheme == "https",
    )  # fmt: skip
    return response


@router.post("/account/keys")
def create_key(page: deps.Viewer) -> Response:
    """A new key of one's own, shown once (with a Copy button)."""
    try:
        record, key = create_key_from_form(page, page.user.id)
    except pydantic.ValidationError as exc:
        return _render(page, error=inputs.first_message(exc), status=422)
    except errors.InvalidInput as exc:
        return _render(page, error=exc.message, status=422)
    return _render(
        page, shown={"key": key, "key_name": record.name}, note=f"API key {record.name} created."
    )


@router.post("/account/keys/{key_id}/revoke")
def revoke_key(key_id: KeyId, page: deps.Viewer) -> Response:
    try:
        users.revoke_key(page.engine, page.user, page.user.id, key_id)  # only their own
    except errors.NotFound:
        return pages.redirect("/account", "You have no such API key.", error=True)
    return pages.redirect("/account", "API key revoked: it stops working at once.")
