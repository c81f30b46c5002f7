"""The audit log as admins read it (``GET /api/v1/audit``, the Activity page, `jobbalancer
audit`): filters, newest first, in pages. Entries are written by :mod:`jobbalancer.audit`,
in the transaction of each change."""

from __future__ import annotations

import sqlalchemy as sa

from jobbalancer import audit, auth, db
from jobbalancer.service import access


def page(
    engine: sa.Engine,
    user: auth.User,
    *,
    actor: str | None = None,
    action: str | None = None,
    object: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> tuple[list[audit.Entry], str | None]:
    """One page of entries (admins only) and the next page's cursor. ``since`` and
    ``until`` are times (ISO 8601) or durations back from now by the database's clock
    (``1h``, ``7d``): InvalidInput naming the field otherwise."""
    access.require(user, access.ADMIN)
    with db.read(engine) as conn:
        now = db.now(conn)
        filters = audit.Filters(
            actor=actor or None,
            action=action or None,
            object=object or None,
            since=audit.parse_time(since, "since", now),
            until=audit.parse_time(until, "until", now),
        )
        return audit.page(conn, filters, limit, cursor)
