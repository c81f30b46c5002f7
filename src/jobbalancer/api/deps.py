"""Dependencies shared by the routes: the engine, the caller, and role checks.

A caller authenticates with ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, or
with the web UI's session cookie; a request authenticated by the cookie that changes
something (not GET/HEAD/OPTIONS) must also carry the session's CSRF token in
``X-CSRF-Token``. A missing or unknown key is 401; a known key whose role does not allow
the route is 403.

The dependencies are ``async``: FastAPI runs a sync one in a thread of its pool, a hop
that cost more than its work. What needs the database (a key not verified lately, a web
session, stamping a key's use) goes to a thread itself, only then.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from jobbalancer import auth, db, errors, settings
from jobbalancer.service import access, sessions
from jobbalancer.settings import Settings

log = logging.getLogger(__name__)

# auto_error=False: we answer missing keys ourselves, as JSON in our error shape. These
# also put an "Authorize" button on /docs.
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer jb_…`")
_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")


async def get_engine(request: Request) -> sa.Engine:
    engine: sa.Engine = request.app.state.engine
    return engine


async def get_settings(request: Request) -> Settings:
    value: Settings = request.app.state.settings
    return value


EngineDep = Annotated[sa.Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def key_from_headers(request: Request) -> str | None:
    """The API key the request carries in its headers, if any."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-api-key", "").strip() or None


def authenticate(
    engine: sa.Engine, key: str | None, cache: auth.KeyCache | None = None
) -> auth.User:
    """The enabled user owning ``key``; Unauthorized otherwise. With ``cache``, a key
    verified lately is not read again (auth.KeyCache says for how long)."""
    if not key:
        raise errors.Unauthorized()
    user = cache.get(key) if cache is not None else None
    if user is not None:
        return user
    with db.read(engine) as conn:
        user = cache.authenticate(conn, key) if cache else auth.authenticate_key(conn, key)
    if user is None:
        raise errors.Unauthorized(
            "the API key is not valid (unknown, revoked, or its user disabled)"
        )
    return user


SAFE_METHODS = sessions.SAFE_METHODS
# POST routes that change nothing (a body too big for a query string): a key scoped
# ``read`` may use them, and they write no audit entry.
LOOKS_ONLY = frozenset({"/api/v1/schedules/preview"})


def client_address(request: Request) -> str:
    """The address a request came from, as the server's socket saw it."""
    return sessions.address(request.client.host if request.client is not None else None)


def web_session(request: Request) -> auth.WebSession | None:
    """The live session of the request's cookie, if any, looked up once per request (the
    web UI's wrapper keeps it in the same ``request.state.web_session``)."""
    if hasattr(request.state, "web_session"):
        found: auth.WebSession | None = request.state.web_session
        return found
    engine: sa.Engine = request.app.state.engine
    session = sessions.live(engine, request.cookies.get(auth.SESSION_COOKIE))
    request.state.web_session = session
    return session


def _session_user(request: Request) -> auth.User:
    session = web_session(request)
    if session is None:
        raise errors.Unauthorized()
    if request.method not in SAFE_METHODS and not auth.csrf_matches(
        session, request.headers.get(auth.CSRF_HEADER)
    ):
        raise errors.Forbidden(
            f"a request with the session cookie that changes something needs the session's "
            f"CSRF token in {auth.CSRF_HEADER} (or use an API key)"
        )
    return session.user


async def current_user(
    request: Request,
    engine: EngineDep,
    _bearer_key: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    _header_key: Annotated[str | None, Depends(_key_header)],
) -> auth.User:
    """The caller (the security parameters are for the OpenAPI document only), with where
    the request came from (for the audit log). A key scoped ``read`` may change nothing."""
    key = key_from_headers(request)
    if key is None and request.cookies.get(auth.SESSION_COOKIE):
        by_session = await run_in_threadpool(_session_user, request)
        return dataclasses.replace(by_session, address=client_address(request))
    cache: auth.KeyCache | None = getattr(request.app.state, "key_cache", None)
    user = cache.get(key) if cache is not None and key else None
    if user is None:
        user = await run_in_threadpool(authenticate, engine, key, cache)
    usage: KeyUsage | None = getattr(request.app.state, "key_usage", None)
    if usage is not None and key is not None and usage.due(key):
        await run_in_threadpool(usage.record, engine, key)
    if request.method not in SAFE_METHODS and request.url.path not in LOOKS_ONLY:
        access.refuse_read_only_key(user)
    return dataclasses.replace(user, address=client_address(request))


class KeyUsage:
    """Stamps API keys' last_used_at, at most once a minute per key and server process:
    a write on every request would cost more than the request."""

    INTERVAL = 60.0

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def due(self, key: str) -> bool:
        """Whether ``key``'s use is to be stamped now (then it is counted as stamped)."""
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.INTERVAL) < self.INTERVAL:
                return False
            self._last[key] = now
            if len(self._last) > 10_000:  # forget old keys rather than grow without bound
                self._last = {key: now}
        return True

    def record(self, engine: sa.Engine, key: str) -> None:
        try:
            with db.write(engine) as conn:
                auth.record_key_use(conn, key)
        except Exception as exc:
            log.debug("could not record API key use: %s", exc)


CurrentUser = Annotated[auth.User, Depends(current_user)]


def _require(rule: access.Rule) -> Callable[[auth.User], Awaitable[auth.User]]:
    async def check(user: CurrentUser) -> auth.User:
        return access.require(user, rule)

    return check


Submitter = Annotated[auth.User, Depends(_require(access.SUBMIT))]
Operator = Annotated[auth.User, Depends(_require(access.OPERATE))]
Admin = Annotated[auth.User, Depends(_require(access.ADMIN))]


def metrics_allowed(engine: sa.Engine, config: Settings, key: str | None) -> None:
    """/metrics is open when an admin made it so; otherwise it needs a valid key."""
    if config.server.metrics_public:
        return
    with db.read(engine) as conn:
        public = settings.load_tunables(conn).metrics_public
    if not public:
        authenticate(engine, key)
