"""Web sessions as every face sees them: logging in and out (with the throttling of failed
logins, counted per name and address), the live session of a cookie's token, whose expiry
slides forward, and where a request came from."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from jobbalancer import auth, db, errors

log = logging.getLogger(__name__)

# Requests that change nothing: a session cookie alone is enough for them (no CSRF token).
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def live(engine: sa.Engine, token: str | None) -> auth.WebSession | None:
    """The live session of ``token``, if any; its expiry slides forward, with a write at
    most once a minute (a database that refuses the write does not end the session)."""
    if not token:
        return None
    with db.read(engine) as conn:
        session = auth.find_session(conn, token)
        now = db.now(conn) if session is not None else None
    if session is not None and now is not None and auth.session_needs_touch(session, now):
        try:
            with db.write(engine) as conn:
                auth.touch_session(conn, session)
        except errors.DatabaseUnavailable as exc:
            log.debug("could not extend a web session: %s", exc)
    return session


def address(host: str | None) -> str:
    """The address a request came from, as the server's socket saw it (``host``): login
    throttling counts per address. X-Forwarded-For is not believed (anyone can send it);
    the server runs uvicorn without proxy headers for the same reason."""
    return (host or "")[:64] or "unknown"


def log_in(engine: sa.Engine, name: str, password: str, address: str, old_token: str | None) -> str:
    """A new session's token for ``name`` proven by ``password``; ``old_token``'s session
    (logging in again, maybe as someone else) ends. A failed try counts against ``address``
    (Unauthorized says how long to wait once there were too many); LoginThrottled while
    the wait lasts; Forbidden for a disabled user."""
    try:
        with db.read(engine) as conn:
            user = auth.check_login(conn, name, password, address)
    except errors.Unauthorized as exc:
        with db.write(engine) as conn:
            wait = auth.record_failed_login(conn, name, address)
        if not wait:
            raise
        raise errors.Unauthorized(
            f"{exc.message}. Too many failed logins: wait {wait} seconds before the next try."
        ) from None
    with db.write(engine) as conn:
        if old_token:
            auth.end_session(conn, old_token)
        auth.record_login(conn, name, address)
        token, _ = auth.create_session(conn, user.id)
    return token


def log_out(engine: sa.Engine, token: str) -> None:
    """End the session of ``token`` (nothing if it has ended already)."""
    with db.write(engine) as conn:
        auth.end_session(conn, token)
