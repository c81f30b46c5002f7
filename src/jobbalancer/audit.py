"""The audit log: who changed what, when, how and from where.

Every change the service layer makes calls :func:`record` once, with the connection of
the change's own transaction: a change that rolls back leaves no entry, a committed one
always has its entry, and the cost is one INSERT in a transaction that is open anyway.
Logins, failed logins and lockouts change nothing of a user's: they are recorded in a
transaction of their own (:func:`record_alone`).

An entry's time is the database's clock; its actor is the user who asked (``actor_id``
NULL for the local command line, which acts as nobody stored), how (``via``: the API
key's prefix, ``web`` for a web session, ``cli``), and their address. Actions are stable
dotted names (``job.kill``, ``script.update``, ``login.failed``: :data:`ACTIONS` lists
them). A summary is short and never holds a password, an API key, a secret, or an env
value: callers pass names and changed fields, :func:`changes` leaves out what it is told
to hide, and a script's edit is a unified diff of its content, cut at
:data:`MAX_SUMMARY` characters.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from jobbalancer import auth, db, errors
from jobbalancer.db import schema
from jobbalancer.db.types import AnyRow, utcnow
from jobbalancer.refs import parse_id

A = schema.audit_log
MAX_SUMMARY = 8000  # characters; a longer summary (a big script's diff) is cut
HIDDEN = "(changed)"  # what a summary says of a password or secret that changed

# Every action an entry may name, by object. A new kind of change adds its names here.
ACTIONS = (
    "job.submit", "job.kill", "job.restart", "job.delete",
    "script.create", "script.update", "script.delete",
    "user.create", "user.update", "user.delete", "user.password",
    "key.create", "key.revoke",
    "class.create", "class.update", "class.delete",
    "worker.update", "worker.enable", "worker.disable", "worker.remove",
    "setting.update",
    "secret.create", "secret.update", "secret.delete",
    "schedule.create", "schedule.update", "schedule.pause", "schedule.resume",
    "schedule.delete", "schedule.run",
    "notification_target.create", "notification_target.update",
    "notification_target.delete", "notification_target.test",
    "notification_rule.create", "notification_rule.delete",
    "login", "login.failed", "login.locked", "logout",
)  # fmt: skip


@dataclass(frozen=True)
class Entry:
    """One audit entry as read back."""

    id: int
    at: datetime
    actor_id: int | None
    actor_name: str
    via: str
    address: str
    action: str
    object_type: str
    object_id: int | None
    object_name: str | None
    count: int | None
    summary: str

    @classmethod
    def from_row(cls, row: AnyRow) -> Entry:
        return cls(**{n: row._mapping[n] for n in cls.__dataclass_fields__})


# Built once: every submit adds an entry, and building and cache-keying the statement
# cost more than running it (as jobs.py does for a job's moves).
_INSERT = sa.insert(A).values(at=utcnow())


def record(
    conn: sa.Connection,
    actor: auth.User,
    action: str,
    object_type: str,
    object_id: int | None = None,
    object_name: str | None = None,
    summary: str = "",
    *,
    count: int | None = None,
) -> None:
    """Add an entry in ``conn``'s transaction: ``actor`` did ``action`` to the object."""
    conn.execute(
        _INSERT,
        {
            "actor_id": actor.id or None,
            "actor_name": actor.name[:200],
            "via": (actor.via or "unknown")[:40],
            "address": actor.address[:64],
            "action": action[:64],
            "object_type": object_type[:40],
            "object_id": object_id,
            "object_name": None if object_name is None else object_name[:200],
            "count": count,
            "summary": bounded(summary),
        },
    )


def record_alone(
    engine: sa.Engine,
    actor: auth.User,
    action: str,
    object_type: str,
    object_id: int | None = None,
    object_name: str | None = None,
    summary: str = "",
) -> None:
    """:func:`record` in a transaction of its own, for what has none (a failed login)."""
    with db.write(engine) as conn:
        record(conn, actor, action, object_type, object_id, object_name, summary)


def bounded(text: str) -> str:
    if len(text) <= MAX_SUMMARY:
        return text
    cut = len(text) - MAX_SUMMARY
    return text[: MAX_SUMMARY - 40] + f"\n… ({cut + 40} more characters)"


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "none"
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "…"


def changes(
    before: Mapping[str, Any], after: Mapping[str, Any], *, hide: Iterable[str] = ()
) -> str:
    """``name: old → new`` for each field whose value changed; a hidden field (a password,
    a secret) only says it changed."""
    hidden = set(hide)
    parts = []
    for name in after:
        old, new = before.get(name), after[name]
        if old == new:
            continue
        if name in hidden:
            parts.append(f"{name} {HIDDEN}")
        else:
            parts.append(f"{name}: {_shown(old)} → {_shown(new)}")
    return "; ".join(parts)


def fields(values: Mapping[str, Any], *, hide: Iterable[str] = ()) -> str:
    """``name: value`` of each field, for what was created or deleted."""
    hidden = set(hide)
    return "; ".join(
        f"{k} {HIDDEN}" if k in hidden else f"{k}: {_shown(v)}"
        for k, v in values.items()
        if not (k in hidden and v is None)
    )


def diff(old: str, new: str, name: str) -> str:
    """A unified diff of a text's two versions (a script's content)."""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=f"{name} (before)", tofile=f"{name} (after)", n=1,
    )  # fmt: skip
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


# -- reading the log ----------------------------------------------------------------------

_CURSOR_PREFIX = "audit:"
_RELATIVE = re.compile(r"^\s*(\d{1,7})\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class Filters:
    """What to list; None means any.

    ``actor``: a user's name or id (``local`` for the command line). ``action``: a name
    (``job.kill``) or an object's every action (``job``). ``object``: ``TYPE``,
    ``TYPE:ID`` or ``TYPE:NAME`` (``job:812``, ``script:backup``). ``since``/``until``:
    the time range, ``since`` included, ``until`` not.
    """

    actor: str | None = None
    action: str | None = None
    object: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def parse_time(text: str | None, field: str, now: datetime) -> datetime | None:
    """An ISO 8601 time (UTC unless it says), or a duration back from ``now`` (``1h``,
    ``30m``, ``7d``); InvalidInput naming ``field`` otherwise."""
    if text is None or not text.strip():
        return None
    relative = _RELATIVE.match(text)
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2).lower()
        return now - timedelta(**{_UNITS[unit]: amount})
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise errors.InvalidInput(
            f"{field}: give a time (2027-03-01T12:00:00Z) or a duration back from now "
            "(90s, 30m, 1h, 7d, 2w)",
            field=field,
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def encode_cursor(entry_id: int) -> str:
    raw = f"{_CURSOR_PREFIX}{entry_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError):
        text = ""
    found = parse_id(text.removeprefix(_CURSOR_PREFIX)) if text.startswith(_CURSOR_PREFIX) else None
    if found is None:
        raise errors.InvalidInput("cursor: not a cursor this server gave out", field="cursor")
    return found


def _actor_id(conn: sa.Connection, actor: str | None) -> int | None:
    """The id the ``actor`` filter means: digits, or the current name of a user (whose
    older entries, made before a rename, carry the old name)."""
    if not actor:
        return None
    found = parse_id(actor)
    if found is not None:
        return found
    users = schema.users
    by_name = conn.execute(sa.select(users.c.id).where(users.c.name == actor)).first()
    return None if by_name is None else int(by_name.id)


# Objects with a name that may change: ``TYPE:NAME`` also finds entries made under an
# older name, by the id that name has now.
_NAMED: dict[str, sa.Table] = {
    "script": schema.scripts, "user": schema.users, "class": schema.worker_classes,
    "worker": schema.workers, "schedule": schema.schedules, "secret": schema.secrets,
    "notification_target": schema.notification_targets,
}  # fmt: skip


def _object_id(conn: sa.Connection, obj: str | None) -> int | None:
    """The id an ``object`` filter's ``TYPE:REF`` means: digits, or the id of the object
    of that type with that name now."""
    kind, _, ref = (obj or "").strip().partition(":")
    if not ref:
        return None
    found = parse_id(ref)
    table = _NAMED.get(kind)
    if found is not None or table is None:
        return found
    row = conn.execute(sa.select(table.c.id).where(table.c.name == ref)).first()
    return None if row is None else int(row.id)


def _conditions(
    f: Filters, actor_id: int | None = None, object_id: int | None = None
) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if f.actor:
        by_name = A.c.actor_name == f.actor
        where.append(by_name if actor_id is None else sa.or_(by_name, A.c.actor_id == actor_id))
    if f.action:
        action = f.action.strip()
        where.append(A.c.action == action if "." in action else
                     sa.or_(A.c.action == action, A.c.action.startswith(action + ".")))  # fmt: skip
    if f.object:
        kind, _, ref = f.object.strip().partition(":")
        where.append(A.c.object_type == kind)
        if ref:
            by_name = A.c.object_name == ref
            where.append(
                by_name if object_id is None else sa.or_(by_name, A.c.object_id == object_id)
            )
    if f.since is not None:
        where.append(A.c.at >= f.since)
    if f.until is not None:
        where.append(A.c.at < f.until)
    return where


def page(
    conn: sa.Connection, filters: Filters, limit: int, cursor: str | None
) -> tuple[list[Entry], str | None]:
    """One page of matching entries, newest first, and the cursor of the next (None: the
    last page). Ids only grow, so pages stay stable while entries are added."""
    ids = _actor_id(conn, filters.actor), _object_id(conn, filters.object)
    query = sa.select(A).where(*_conditions(filters, *ids))
    if cursor:
        query = query.where(A.c.id < decode_cursor(cursor))
    rows = conn.execute(query.order_by(A.c.id.desc()).limit(limit + 1)).all()
    entries = [Entry.from_row(r) for r in rows[:limit]]
    more = len(rows) > limit
    return entries, encode_cursor(entries[-1].id) if more else None


def delete_before(conn: sa.Connection, cutoff: datetime) -> int:
    """Retention: delete entries older than ``cutoff``; how many."""
    return int(conn.execute(sa.delete(A).where(A.c.at < cutoff)).rowcount)
