"""Errors on browser routes as readable pages; the API keeps its JSON.

"Browser route": not under /api (nor the other machine paths), asked for by a client
that accepts HTML (browsers say so; curl and the API clients do not).

The API's handlers (installed first) decide the status and the message; for a browser route
the answer is then rendered as an HTML page instead (or, for an htmx request, as a small
fragment the page shows in its flash area). A 401 there means "log in": a redirect.
"""

from __future__ import annotations

import inspect
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import WebSocketRequestValidationError
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from jobbalancer import auth, errors
from jobbalancer.web import pages
from jobbalancer.web.deps import LoginRequired, web_session

Handler = Callable[[Request, Any], Awaitable[Response]]
AnyHandler = Callable[[Request, Any], Response | Awaitable[Response]]
# Paths that belong to the API and machines: their errors stay JSON.
API_PATHS = ("/api/", "/addJob", "/healthz", "/metrics", "/openapi.json")
TITLES = {
    400: "Bad request",
    401: "Please log in",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed",
    409: "Conflict",
    413: "Too large",
    422: "Invalid input",
    429: "Too many attempts",
    500: "Server error",
    503: "Try again shortly",
}


def wants_page(request: Request) -> bool:
    """A browser (or htmx) asking for a page, not a program calling the API: those keep
    getting JSON, even for a path that is no route at all."""
    path = request.url.path
    if path.startswith(API_PATHS) or path.rstrip("/") in ("/api", "/addJob"):
        return False
    return "text/html" in request.headers.get("accept", "") or "hx-request" in request.headers


def login_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.headers.get("hx-request"):
        target = request.headers.get("hx-current-url") or target
        target = urllib.parse.urlsplit(target)._replace(scheme="", netloc="").geturl()
    url = (
        "/login" if pages.safe_next(target) == "/" else f"/login?next={urllib.parse.quote(target)}"
    )
    if request.headers.get("hx-request"):
        return Response(status_code=200, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def _session_or_none(request: Request) -> auth.WebSession | None:
    try:
        return web_session(request)
    except errors.JobBalancerError:
        return None  # the database is down: the page goes without the nav


async def html_error(request: Request, status: int, message: str) -> Response:
    """The error as a page, or as a fragment for htmx to put in the flash area."""
    title = TITLES.get(status, "Error")
    if request.headers.get("hx-request"):
        return pages.TEMPLATES.TemplateResponse(
            request, "_flash.html", {"flash": {"message": message, "error": True}},
            status_code=status,
        )  # fmt: skip
    session = await run_in_threadpool(_session_or_none, request)
    return pages.render(
        request,
        "error.html",
        session=session,
        status=status,
        code=status,
        title=title,
        message=message,
    )


def _message(response: Response) -> str:
    try:
        body = json.loads(bytes(response.body))
        return str(body.get("message") or "")
    except (ValueError, AttributeError):
        return ""


def _html_or(handler: AnyHandler) -> Handler:
    async def handle(request: Request, exc: Any) -> Response:
        response = handler(request, exc)
        if inspect.isawaitable(response):
            response = await response
        if not wants_page(request):
            return response
        if response.status_code == 401:
            return login_redirect(request)
        message = _message(response) or TITLES.get(response.status_code, "Something went wrong")
        if response.status_code == 404 and message.startswith("there is no "):
            message = f"There is no page at {request.url.path}."
        return await html_error(request, response.status_code, message)

    return handle


async def _login_required(request: Request, exc: LoginRequired) -> Response:
    return login_redirect(request)


def install(app: FastAPI) -> None:
    """Wrap the API's handlers (installed before) so browser routes get pages."""
    for exc_class, handler in list(app.exception_handlers.items()):
        if exc_class is not WebSocketRequestValidationError:
            app.exception_handlers[exc_class] = _html_or(handler)
    app.exception_handlers[LoginRequired] = _login_required
