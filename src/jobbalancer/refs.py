"""References to named rows (worker classes, scripts, users): by name, or by id.

Names and ids share one field in the API (``"worker_class": "gpu"`` or ``3``), so a name
may not look like an id, and an id must fit the 32-bit columns of every backend.

A name is also what people read to tell an admin from an impostor, so it must look like
what it is: no invisible characters (zero-width, bidirectional controls, C0/C1 controls),
no line breaks or exotic spaces, nothing that Unicode's compatibility normalization (NFKC)
would change (a fullwidth "admin"), and no letters of two of the scripts that share
look-alikes (Latin, Cyrillic, Greek: "admin" with a Cyrillic first letter).
"""

from __future__ import annotations

import unicodedata

import sqlalchemy as sa

from jobbalancer import errors
from jobbalancer.db.types import AnyRow

# Ids are 32-bit on every backend; a longer digit string is a name nobody can have.
MAX_ID = 2**31 - 1
# Unicode categories no name may contain: controls (C0 and C1), format characters (zero
# width, bidirectional marks and overrides), surrogates, private use, unassigned, and line
# and paragraph separators.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
# Scripts whose letters look alike: a name may use letters of one of them only.
_CONFUSABLE_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK")


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
    problem = name_problem(name)
    if problem is not None:
        raise errors.InvalidInput(f"{what} name {problem}", field=field)
    if name.isdigit():
        raise errors.InvalidInput(
            f"{what} name must not be only digits: it would be taken for an id", field=field
        )
    return name


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a name (to follow "<what> name …"), or None if it can."""
    for char in name:
        category = unicodedata.category(char)
        if category in _REFUSED_CATEGORIES:
            return (
                f"must not contain invisible or control characters (U+{ord(char):04X}, "
                f"{_char_name(char)})"
            )
        if category == "Zs" and char != " ":
            return f"must not contain spaces other than a plain space (U+{ord(char):04X})"
    normal = unicodedata.normalize("NFKC", name)
    if normal != name:
        return f"must be written in its plain form {normal!r} (Unicode NFKC)"
    scripts = {_script(char) for char in name if char.isalpha()} - {None}
    if len(scripts) > 1:
        return (
            f"mixes letters of the {' and '.join(sorted(str(s).title() for s in scripts))} "
            "scripts, which look alike; use one script"
        )
    return None


def _char_name(char: str) -> str:
    return unicodedata.name(char, "unnamed").lower()


def _script(char: str) -> str | None:
    """Latin, Cyrillic or Greek when ``char`` is a letter of one of them, else None."""
    first = unicodedata.name(char, "").split(" ", 1)[0]
    return first if first in _CONFUSABLE_SCRIPTS else None


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
