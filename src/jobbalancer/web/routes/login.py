"""``/login`` and ``/logout``. The login form is also what ``/`` shows anonymous visitors.

Before there is a session, the form is protected by a double-submit token: a random value
in a cookie and in the form, which a page on another site can neither read nor set.
"""

from __future__ import annotations

import secrets
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from jobbalancer import auth, errors
from jobbalancer.service import sessions
from jobbalancer.web import deps, pages

router = APIRouter(include_in_schema=False)
LOGIN_CSRF_COOKIE = "jb_login_csrf"


def login_form(
    request: Request, *, error: str | None = None, status: int = 200, name: str = ""
) -> Response:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    response = pages.render(
        request,
        "login.html",
        session=None,
        status=status,
        error=error,
        name=name,
        login_csrf=token,
        next=pages.safe_next(request.query_params.get("next")),
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, httponly=True, samesite="lax", path="/login",
        secure=request.url.scheme == "https",
    )  # fmt: skip
    return response


@router.get("/login")
def login_page(request: Request) -> Response:
    if deps.web_session(request) is not None:
        return pages.redirect(pages.safe_next(request.query_params.get("next")))
    return login_form(request)


@router.post("/login")
def log_in(
    request: Request,
    name: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not secrets.compare_digest(cookie, csrf_token):
        return login_form(
            request, error="The login form expired; please try again.", status=403, name=name
        )
    engine: sa.Engine = request.app.state.engine
    name, address = name.strip(), deps.client_address(request)
    old = request.cookies.get(auth.SESSION_COOKIE)
    try:
        token = sessions.log_in(engine, name, password, address, old)
    except errors.Unauthorized as exc:
        return login_form(request, error=exc.message, status=401, name=name)
    except errors.LoginThrottled as exc:
        response = login_form(request, error=_sentence(exc.message), status=429, name=name)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except errors.Forbidden as exc:
        return login_form(request, error=exc.message, status=exc.status, name=name)
    response = pages.redirect(pages.safe_next(next))
    response.set_cookie(
        auth.SESSION_COOKIE, token, httponly=True, samesite="lax", path="/",
        secure=request.url.scheme == "https",
    )  # fmt: skip
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


def _sentence(message: str) -> str:
    return message[:1].upper() + message[1:] + "."


@router.post("/logout")
async def log_out(page: deps.Viewer) -> Response:
    token = page.request.cookies.get(auth.SESSION_COOKIE, "")
    await run_in_threadpool(sessions.log_out, page.engine, token, page.user)
    response = pages.redirect("/login", "You are logged out.")
    response.delete_cookie(auth.SESSION_COOKIE, path="/")
    return response
