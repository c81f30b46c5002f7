"""Web sessions as every face sees them: logging in and out (with the throttling of failed
logins, counted per name and address, per address, and per name), the live session of a
cookie's token, whose expiry slides forward, and where a request came from."""

from __future__ import annotations

import ipaddress
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
    """The address a request came from, as the server's socket saw it (``host``), as login
    throttling counts it: an IPv4 address (also when it arrives IPv4-mapped, ::ffff:a.b.c.d),
    or an IPv6 address's /64, since one host or home is usually handed a whole /64 and could
    otherwise try from a fresh address each time. X-Forwarded-For is not believed (anyone
    can send it); the server runs uvicorn without proxy headers for the same reason."""
    text = (host or "").strip()
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # no IPv6 zone (fe80::1%eth0)
    except ValueError:
        return text[:64] or "unknown"  # not an address (a Unix socket, a test client)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def prove_password(engine: sa.Engine, name: str, password: str, address: str) -> auth.User:
    """The user ``name`` if ``password`` is theirs, throttled: LoginThrottled while
    ``address`` (or anyone, for ``name``) must wait; Unauthorized, saying how long to wait
    once there were too many failures; Forbidden for a disabled user. The try is counted
    before the slow hash runs, so parallel guesses cannot all pass one check."""
    with db.write(engine) as conn:
        wait = auth.begin_login(conn, name, address)
    try:
        with db.read(engine) as conn:
            user = auth.verify_login(conn, name, password)
    except errors.Unauthorized as exc:
        if not wait:
            raise
        raise errors.Unauthorized(
            f"{exc.message}. Too many failed logins: wait {wait} seconds before the next try."
        ) from None
    except errors.Forbidden:
        _forgive(engine, name, address)  # the password was right
        raise
    _forgive(engine, name, address)
    return user


def _forgive(engine: sa.Engine, name: str, address: str) -> None:
    with db.write(engine) as conn:
        auth.record_login(conn, name, address)


def log_in(engine: sa.Engine, name: str, password: str, address: str, old_token: str | None) -> str:
    """A new session's token for ``name`` proven by ``password`` (as prove_password);
    ``old_token``'s session (logging in again, maybe as someone else) ends."""
    user = prove_password(engine, name, password, address)
    with db.write(engine) as conn:
        if old_token:
            auth.end_session(conn, old_token)
        token, _ = auth.create_session(conn, user.id)
    return token


def log_out(engine: sa.Engine, token: str) -> None:
    """End the session of ``token`` (nothing if it has ended already)."""
    with db.write(engine) as conn:
        auth.end_session(conn, token)
