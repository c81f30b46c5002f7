"""Who is asking, for the web pages: the signed-in user with their session, a CSRF check
on every request that changes something, and role checks.

Anonymous visitors raise :class:`LoginRequired` (answered with a redirect to the login
form); a role that does not allow the page raises ``errors.Forbidden`` (a 403 page).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from jobbalancer import auth, errors, vault
from jobbalancer.service import access, sessions
from jobbalancer.web import pages

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class LoginRequired(Exception):
    """The page needs a signed-in user."""


@dataclass(frozen=True)
class Page:
    """A signed-in request: the session, the parsed form of a POST, and how to render."""

    request: Request
    session: auth.WebSession
    form: FormData | None = None

    @property
    def user(self) -> auth.User:
        return self.session.user

    @property
    def engine(self) -> sa.Engine:
        engine: sa.Engine = self.request.app.state.engine
        return engine

    @property
    def secret_key(self) -> vault.Key | None:
        """The server's key for secrets (jobbalancer/vault.py); None if it has none."""
        key: vault.Key | None = getattr(self.request.app.state, "secret_key", None)
        return key

    def field(self, name: str, default: str = "") -> str:
        """A form field as text (an upload or a missing field: ``default``)."""
        value = self.form.get(name) if self.form is not None else None
        return value if isinstance(value, str) else default

    def fields(self, name: str) -> list[str]:
        """Every value of a repeated form field (checkboxes)."""
        if self.form is None:
            return []
        return [v for v in self.form.getlist(name) if isinstance(v, str)]

    def render(
        self, template: str, *, active: str = "", status: int = 200, **values: Any
    ) -> Response:
        return pages.render(
            self.request, template, session=self.session, active=active, status=status, **values
        )


def web_session(request: Request) -> auth.WebSession | None:
    """The live session of the request's cookie, if any, looked up once per request (in
    ``request.state.web_session``, which the API's wrapper shares)."""
    if hasattr(request.state, "web_session"):
        found: auth.WebSession | None = request.state.web_session
        return found
    engine: sa.Engine = request.app.state.engine
    session = sessions.live(engine, request.cookies.get(auth.SESSION_COOKIE))
    request.state.web_session = session
    return session


def client_address(request: Request) -> str:
    """The address a request came from, as the server's socket saw it."""
    return sessions.address(request.client.host if request.client is not None else None)


async def signed_in(request: Request) -> Page:
    session = await run_in_threadpool(web_session, request)
    if session is None:
        raise LoginRequired()
    # Where the request came from, for the audit log (the session itself is shared).
    user = dataclasses.replace(session.user, address=client_address(request))
    session = dataclasses.replace(session, user=user)
    form = None
    if request.method not in sessions.SAFE_METHODS:
        if request.headers.get("content-type", "").split(";")[0].strip() in FORM_TYPES:
            form = await request.form()
        token = request.headers.get(auth.CSRF_HEADER)
        if token is None and form is not None:
            value = form.get("csrf_token")
            token = value if isinstance(value, str) else None
        if not auth.csrf_matches(session, token):
            raise errors.Forbidden(
                "this form is out of date (its security token does not match your session); "
                "reload the page and try again"
            )
    return Page(request=request, session=session, form=form)


def _require(rule: access.Rule) -> Callable[[Page], Awaitable[Page]]:
    async def check(page: Annotated[Page, Depends(signed_in)]) -> Page:
        access.require(page.user, rule)
        return page

    return check


Viewer = Annotated[Page, Depends(signed_in)]
Submitter = Annotated[Page, Depends(_require(access.SUBMIT))]
Actor = Annotated[Page, Depends(_require(access.ACT))]
Operator = Annotated[Page, Depends(_require(access.OPERATE))]
Admin = Annotated[Page, Depends(_require(access.ADMIN))]
