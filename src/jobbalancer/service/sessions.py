"""Web sessions as every face sees them: logging in and out (with the throttling of failed
logins, counted per name and address, per address, and per name), the live session of a
cookie's token, whose expiry slides forward, and where a request came from."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from datetime import UTC, datetime

import sqlalchemy as sa

from jobbalancer import audit, auth, db, errors

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
        _record_failure(engine, name, address, wait)
        if not wait:
            raise
        raise errors.Unauthorized(
            f"{exc.message}. Too many failed logins: wait {wait} seconds before the next try."
        ) from None
    except errors.Forbidden:
        _forgive(engine, name, address)  # the password was right
        _record_failure(engine, name, address, 0, "the account is disabled")
        raise
    _forgive(engine, name, address)
    return user


def anonymous(address: str) -> auth.User:
    """The actor of a login that has not proven who it is."""
    return auth.User(id=0, name="anonymous", role=auth.Role.VIEWER, commands_allowed=False,
                     worker_classes=(), disabled=True, created_at=datetime(1970, 1, 1, tzinfo=UTC),
                     via="web", address=address)  # fmt: skip


def _record_failure(
    engine: sa.Engine, name: str, address: str, wait: int, why: str = "wrong user name or password"
) -> None:
    """A failed login in the audit log: ``login.locked`` when it makes the next try wait.
    The user is named only if one has that name: what people type into the name field
    may be a password."""
    with db.write(engine) as conn:
        try:
            user: auth.User | None = auth.find_user(conn, name) if "\x00" not in name else None
        except errors.NotFound:
            user = None
        if user is not None and user.name != name:
            user = None  # found by id: not what was typed as a name
        summary = why + (f"; next try in {wait} s" if wait else "")
        action = "login.locked" if wait else "login.failed"
        object_id, object_name = (user.id, user.name) if user else (None, None)
        audit.record(conn, anonymous(address), action, "user", object_id, object_name, summary)


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
        actor = dataclasses.replace(user, via="web", address=address)
        audit.record(conn, actor, "login", "user", user.id, user.name)
    return token


def log_out(engine: sa.Engine, token: str, actor: auth.User | None = None) -> None:
    """End the session of ``token`` (nothing if it has ended already); ``actor``, the
    session's user, is recorded."""
    with db.write(engine) as conn:
        auth.end_session(conn, token)
        if actor is not None:
            audit.record(conn, actor, "logout", "user", actor.id, actor.name)
