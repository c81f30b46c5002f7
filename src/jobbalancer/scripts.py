"""Stored scripts: a name, an interpreter and a body that jobs run with their own params.

A job copies the script's interpreter and body when it is submitted, so editing or
deleting a script never changes a job that exists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobbalancer import errors, refs, scriptparams
from jobbalancer.db import schema
from jobbalancer.db.types import AnyRow, utcnow

S = schema.scripts
# A program looked up on the worker's PATH ...
_PROGRAM = re.compile(r"[A-Za-z0-9._+-]+")  # fullmatch: "$" matches before a "\n"
# ... or an absolute path to one, without arguments (the worker runs it as argv[0]).
_ABSOLUTE = re.compile(r"/[^\x00-\x20\x7f]*")
# MEDIUMTEXT on MariaDB/MySQL holds 16 MiB; leave room for multi-byte characters.
MAX_CONTENT_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class Script:
    """A stored script as read from the database. ``interpreter`` None: the body's ``#!``."""

    id: int
    name: str
    interpreter: str | None
    content: str
    description: str
    created_at: datetime
    updated_at: datetime
    # The typed parameters it declares; () for none (params then go as given).
    parameters: tuple[scriptparams.Param, ...] = ()
    # Placement: what its jobs request unless they say; None: nothing.
    requests: Mapping[str, Any] | None = None

    @classmethod
    def from_row(cls, row: AnyRow) -> Script:
        m = row._mapping
        return cls(
            id=m["id"],
            name=m["name"],
            interpreter=m["interpreter"] or None,
            content=m["content"],
            description=m["description"],
            created_at=m["created_at"],
            updated_at=m["updated_at"],
            parameters=scriptparams.from_stored(m["parameters"]),
            requests=m["requests"] or None,
        )


def check_interpreter(value: str | None, content: str) -> str:
    """The interpreter as stored: a program name or absolute path, or "" for a ``#!`` body."""
    text = (value or "").strip()
    if not text:
        if not content.startswith("#!"):
            raise errors.InvalidInput(
                "interpreter is required unless the script starts with a '#!' line",
                field="interpreter",
            )
        return ""
    if len(text) > 255 or not (_PROGRAM.fullmatch(text) or _ABSOLUTE.fullmatch(text)):
        raise errors.InvalidInput(
            "interpreter must be a program name (bash, python3) or an absolute path "
            "(/usr/bin/php), without arguments",
            field="interpreter",
        )
    return text


def check_content(value: str) -> str:
    if not value.strip():
        raise errors.InvalidInput("content must not be empty", field="content")
    if len(value.encode()) > MAX_CONTENT_BYTES:
        raise errors.InvalidInput(
            f"content must be at most {MAX_CONTENT_BYTES // (1024 * 1024)} MiB", field="content"
        )
    return value


def stored_parameters(raw: Any) -> list[dict[str, Any]] | None:
    """A declaration checked, as the column keeps it: None when it declares nothing."""
    declared = scriptparams.parse_declaration(raw)
    return [p.to_json() for p in declared] or None


def list_all(conn: sa.Connection) -> list[Script]:
    return [Script.from_row(r) for r in conn.execute(sa.select(S).order_by(S.c.name))]


def get(conn: sa.Connection, script_id: int) -> Script:
    row = conn.execute(sa.select(S).where(S.c.id == script_id)).first()
    if row is None:
        raise errors.NotFound(f"script {script_id} does not exist")
    return Script.from_row(row)


def find(conn: sa.Connection, ref: str | int, *, field: str = "script") -> Script:
    """A script by name, or by id; InvalidInput naming ``field`` when there is none."""
    row = refs.find_row(conn, S, ref)
    if row is None:
        raise errors.InvalidInput(f"script {ref!r} does not exist", field=field)
    return Script.from_row(row)


def lookup(conn: sa.Connection, ref: str) -> Script:
    """A script by name or id, as a URL gives it; NotFound when there is none."""
    text = ref.strip()
    row = None if "\x00" in text or not text else refs.find_row(conn, S, text)
    if row is None:
        raise errors.NotFound(f"script {ref!r} does not exist")
    return Script.from_row(row)


def create(
    conn: sa.Connection,
    name: str,
    interpreter: str | None,
    content: str,
    description: str = "",
    parameters: Any = None,
    *,
    requests: Mapping[str, Any] | None = None,
) -> Script:
    """Store a new script; Conflict when the name is taken. ``parameters`` is its
    declaration as given (a list of objects; scriptparams checks it)."""
    name = refs.check_name(name, "script")
    content = check_content(content)
    interpreter = check_interpreter(interpreter, content)
    declared = stored_parameters(parameters)
    refs.ensure_free_name(conn, S, name, "script")
    try:
        result = conn.execute(
            sa.insert(S).values(
                name=name,
                interpreter=interpreter,
                content=content,
                description=description,
                parameters=declared,
                created_at=utcnow(),
                updated_at=utcnow(),
                requests=dict(requests) if requests else None,
            )
        )
    except sa.exc.IntegrityError as exc:  # stored by someone else since the check
        raise errors.Conflict(f"script {name!r} already exists", field="name") from exc
    key = result.inserted_primary_key
    assert key is not None
    return get(conn, int(key[0]))


def update(conn: sa.Connection, script_id: int, changes: Mapping[str, Any]) -> Script:
    """Change name, interpreter, content, description or parameters."""
    current = get(conn, script_id)
    values: dict[str, Any] = {}
    if "name" in changes:
        values["name"] = refs.check_name(changes["name"], "script")
        refs.ensure_free_name(conn, S, values["name"], "script", except_id=script_id)
    content = current.content
    if "content" in changes:
        content = values["content"] = check_content(changes["content"])
    # Checked together: a body without '#!' needs an interpreter, whichever changed.
    interpreter = changes.get("interpreter", current.interpreter)
    values["interpreter"] = check_interpreter(interpreter, content)
    if "description" in changes:
        values["description"] = str(changes["description"])
    if "parameters" in changes:
        values["parameters"] = stored_parameters(changes["parameters"])
    if "requests" in changes:
        values["requests"] = dict(changes["requests"]) if changes["requests"] else None
    try:
        conn.execute(sa.update(S).where(S.c.id == script_id).values(**values, updated_at=utcnow()))
    except sa.exc.IntegrityError as exc:
        raise errors.Conflict(f"script {values.get('name')!r} already exists") from exc
    return get(conn, script_id)


def delete(conn: sa.Connection, script_id: int) -> None:
    """Delete a script; jobs that ran it keep their own copy."""
    if conn.execute(sa.delete(S).where(S.c.id == script_id)).rowcount != 1:
        raise errors.NotFound(f"script {script_id} does not exist")
