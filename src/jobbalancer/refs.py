"""References to named rows (worker classes, scripts, users): by name, or by id.

Names and ids share one field in the API (``"worker_class": "gpu"`` or ``3``), so a name
may not look like an id, and an id must fit the 32-bit columns of every backend.
"""

from __future__ import annotations

import re

import sqlalchemy as sa

from jobbalancer import errors
from jobbalancer.db.types import AnyRow

# Ids are 32-bit on every backend; a longer digit string is a name nobody can have.
MAX_ID = 2**31 - 1
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def parse_id(value: str | int) -> int | None:
    """``value`` as a database id if it is one (an int, or ASCII digits in range), else None."""
    if isinstance(value, int):
        return value if 1 <= value <= MAX_ID else None
    text = value.strip()
    # isascii: str.isdigit() is also true for "²", which int() refuses.
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        return None
    number = int(text)
    return number if 1 <= number <= MAX_ID else None


def check_name(value: str, what: str, field: str = "name") -> str:
    """A stripped name of 1..200 printable characters that cannot be mistaken for an id."""
    name = value.strip()
    if not 1 <= len(name) <= 200:
        raise errors.InvalidInput(f"{what} name must have 1 to 200 characters", field=field)
    if _CONTROL.search(name):
        raise errors.InvalidInput(f"{what} name must not contain control characters", field=field)
    if name.isdigit():
        raise errors.InvalidInput(
            f"{what} name must not be only digits: it would be taken for an id", field=field
        )
    return name


def find_row(conn: sa.Connection, table: sa.Table, ref: str | int) -> AnyRow | None:
    """The row of ``table`` named ``ref``, or else with id ``ref``; None if neither."""
    row = None
    if isinstance(ref, str):
        row = conn.execute(sa.select(table).where(table.c.name == ref.strip())).first()
    row_id = parse_id(ref)
    if row is None and row_id is not None:
        row = conn.execute(sa.select(table).where(table.c.id == row_id)).first()
    return row


def ensure_free_name(
    conn: sa.Connection, table: sa.Table, name: str, what: str, except_id: int | None = None
) -> None:
    """Conflict if another row of ``table`` already has ``name``."""
    query = sa.select(table.c.id).where(table.c.name == name)
    if except_id is not None:
        query = query.where(table.c.id != except_id)
    if conn.execute(query).first() is not None:
        raise errors.Conflict(f"{what} {name!r} already exists", field="name")
