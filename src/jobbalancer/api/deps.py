"""Dependencies shared by the routes: the engine, the caller, and role checks.

A caller authenticates with ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, or
with the web UI's session cookie; a request authenticated by the cookie that changes
something (not GET/HEAD/OPTIONS) must also carry the session's CSRF token in
``X-CSRF-Token``. A missing or unknown key is 401; a known key whose role does not allow
the route is 403.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from jobbalancer import auth, db, errors, jobs, settings
from jobbalancer.settings import Settings

log = logging.getLogger(__name__)

# auto_error=False: we answer missing keys ourselves, as JSON in our error shape. These
# also put an "Authorize" button on /docs.
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer jb_…`")
_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")


def get_engine(request: Request) -> sa.Engine:
    engine: sa.Engine = request.app.state.engine
    return engine


def get_settings(request: Request) -> Settings:
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


def authenticate(engine: sa.Engine, key: str | None) -> auth.User:
    """The enabled user owning ``key``; Unauthorized otherwise."""
    if not key:
        raise errors.Unauthorized()
    with db.read(engine) as conn:
        user = auth.authenticate_key(conn, key)
    if user is None:
        raise errors.Unauthorized(
            "the API key is not valid (unknown, revoked, or its user disabled)"
        )
    return user


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def client_address(request: Request) -> str:
    """The address a request came from, as the server's socket saw it: login throttling
    counts per address. X-Forwarded-For is not believed (anyone can send it); the server
    runs uvicorn without proxy headers for the same reason."""
    host = request.client.host if request.client is not None else ""
    return host[:64] or "unknown"


def web_session(request: Request) -> auth.WebSession | None:
    """The live session of the request's cookie, if any (looked up once per request); its
    expiry slides forward, with a write at most once a minute."""
    if hasattr(request.state, "web_session"):
        found: auth.WebSession | None = request.state.web_session
        return found
    engine = get_engine(request)
    token = request.cookies.get(auth.SESSION_COOKIE)
    session = None
    if token:
        with db.read(engine) as conn:
            session = auth.find_session(conn, token)
            now = db.now(conn) if session is not None else None
        if session is not None and now is not None and auth.session_needs_touch(session, now):
            try:
                with db.write(engine) as conn:
                    auth.touch_session(conn, session)
            except errors.DatabaseUnavailable as exc:
                log.debug("could not extend a web session: %s", exc)
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


def current_user(
    request: Request,
    engine: EngineDep,
    _bearer_key: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    _header_key: Annotated[str | None, Depends(_key_header)],
) -> auth.User:
    """The caller (the security parameters are for the OpenAPI document only)."""
    key = key_from_headers(request)
    if key is None and request.cookies.get(auth.SESSION_COOKIE):
        return _session_user(request)
    user = authenticate(engine, key)
    usage: KeyUsage | None = getattr(request.app.state, "key_usage", None)
    if usage is not None and key is not None:
        usage.note(engine, key)
    return user


class KeyUsage:
    """Stamps API keys' last_used_at, at most once a minute per key and server process:
    a write on every request would cost more than the request."""

    INTERVAL = 60.0

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def note(self, engine: sa.Engine, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.INTERVAL) < self.INTERVAL:
                return
            self._last[key] = now
            if len(self._last) > 10_000:  # forget old keys rather than grow without bound
                self._last = {key: now}
        try:
            with db.write(engine) as conn:
                auth.record_key_use(conn, key)
        except Exception as exc:
            log.debug("could not record API key use: %s", exc)


CurrentUser = Annotated[auth.User, Depends(current_user)]


def _require(allowed: Callable[[auth.User], bool], what: str) -> Callable[[auth.User], auth.User]:
    def check(user: CurrentUser) -> auth.User:
        if not allowed(user):
            raise errors.Forbidden(f"your role ({user.role}) does not allow {what}")
        return user

    return check


Submitter = Annotated[auth.User, Depends(_require(lambda u: u.can_submit, "submitting jobs"))]
Operator = Annotated[
    auth.User,
    Depends(_require(lambda u: u.role in (auth.Role.ADMIN, auth.Role.OPERATOR), "this change")),
]
Admin = Annotated[auth.User, Depends(_require(lambda u: u.is_admin, "this; admins only"))]


def visible_job(conn: sa.Connection, user: auth.User, job_id: int) -> jobs.Job:
    """The job, if ``user`` may see it; NotFound otherwise (others' jobs do not exist for
    a submitter, so ids do not leak)."""
    job = jobs.get(conn, job_id)
    if not user.can_see_job(job.user_id):
        raise errors.NotFound(f"job {job_id} does not exist")
    return job


def manageable_job(conn: sa.Connection, user: auth.User, job_id: int) -> jobs.Job:
    """The job, if ``user`` may kill, restart or delete it."""
    job = visible_job(conn, user, job_id)
    if not user.can_manage_job(job.user_id):
        raise errors.Forbidden(f"your role ({user.role}) does not allow changing job {job_id}")
    return job


def metrics_allowed(engine: sa.Engine, config: Settings, key: str | None) -> None:
    """/metrics is open when an admin made it so; otherwise it needs a valid key."""
    if config.server.metrics_public:
        return
    with db.read(engine) as conn:
        public = settings.load_tunables(conn).metrics_public
    if not public:
        authenticate(engine, key)
