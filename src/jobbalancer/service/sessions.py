"""Web sessions as every face sees them: the live session of a cookie's token, whose
expiry slides forward, and where a request came from (login throttling counts by it)."""

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
