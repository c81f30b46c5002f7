"""Schema upgrades (alembic, its scripts in ``migrations/``), safe when several processes
start at once: each backend's lock is held across the migration."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from jobbalancer import __version__, errors
from jobbalancer.db import backends, connections

MIGRATIONS = Path(__file__).parent / "migrations"


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision``; safe when several processes start at once.

    A schema newer than this version knows is refused (:class:`~errors.SchemaTooNew`)
    before Alembic touches it: an older server started by mistake, or a forgotten
    machine, must not try to "upgrade" a database a newer version has migrated."""
    if revision == "head" and _at_head(engine):
        return  # the usual start: Alembic (10 MiB a process keeps) is not even imported
    from alembic import command

    _migrate(engine, command.upgrade, revision, refuse_newer=True)


def _at_head(engine: sa.Engine) -> bool:
    """Whether the schema is this version's already (one read): nothing to migrate."""
    chain = _plain_chain()  # read from the scripts, without Alembic
    if chain is None:
        return False  # Alembic must tell
    with connections.translate_errors(), engine.connect() as conn:
        return _revision_if_any(conn) == chain[0]


def ensure_schema(engine: sa.Engine) -> str:
    """For admin commands (``users``, ``keys``, ``db grant-worker``): create the schema on
    an empty database (a first install: nobody else uses it yet), otherwise insist it is
    this version's (:func:`check_schema`). Only servers and ``db upgrade`` migrate one
    that exists."""
    with engine.connect() as conn:
        empty = not sa.inspect(conn).has_table("alembic_version")
    if empty:
        upgrade(engine)
    return check_schema(engine)


def downgrade(engine: sa.Engine, revision: str) -> None:
    """Take the schema back to ``revision`` (for going back to an older release)."""
    from alembic import command

    _migrate(engine, command.downgrade, revision)


def _migrate(
    engine: sa.Engine,
    step: Callable[[Any, str], None],
    revision: str,
    *,
    refuse_newer: bool = False,
) -> None:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    kind = backends.of(engine)
    # A role that may not migrate (a worker's) gets DatabaseRefused, not a traceback.
    with (
        connections.translate_errors(),
        kind.upgrade_lock(engine),
        engine.connect() as conn,
        kind.migrating(conn),
    ):
        if refuse_newer:  # under the lock: no other process migrates meanwhile
            mismatch = _verdict(_revision_if_any(conn))
            if isinstance(mismatch, errors.SchemaTooNew):
                raise mismatch
        cfg.attributes["connection"] = conn
        step(cfg, revision)
        conn.commit()


def current_revision(engine: sa.Engine) -> str | None:
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@functools.cache
def _revisions() -> tuple[str, frozenset[str]]:
    """The head revision and every known one. Read from the scripts' own lines when they
    form one plain chain, as they do: a worker checks the schema at start and with every
    heartbeat, and alembic (with mako) would add megabytes to its memory for that alone."""
    return _plain_chain() or _alembic_revisions()


_REVISION_LINE = re.compile(r'^(down_revision|revision) = (None|"([^"]+)")$', re.MULTILINE)


def _plain_chain() -> tuple[str, frozenset[str]] | None:
    """The revisions of versions/*.py if each names its revision and one parent (or
    None) in plain lines, and they form one chain; else None (alembic must tell)."""
    parent: dict[str, str | None] = {}
    for path in (MIGRATIONS / "versions").glob("*.py"):
        if path.name == "__init__.py":
            continue
        found = {m[0]: m[2] or None for m in _REVISION_LINE.findall(path.read_text())}
        if "revision" not in found or "down_revision" not in found or found["revision"] is None:
            return None
        parent[found["revision"]] = found["down_revision"]
    heads = parent.keys() - set(parent.values())
    if len(heads) != 1 or list(parent.values()).count(None) != 1:
        return None
    head = heads.pop()
    return head, frozenset(parent)


def _alembic_revisions() -> tuple[str, frozenset[str]]:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory(str(MIGRATIONS))
    head = scripts.get_current_head()
    assert head is not None
    return head, frozenset(r.revision for r in scripts.walk_revisions())


def head_revision() -> str:
    """The schema revision this version of jobbalancer uses."""
    return _revisions()[0]


def schema_revision(conn: sa.Connection) -> str | None:
    """The database's schema revision (cheap: one read; the table must exist)."""
    return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def _revision_if_any(conn: sa.Connection) -> str | None:
    """The schema revision, None when there is no schema yet."""
    return schema_revision(conn) if sa.inspect(conn).has_table("alembic_version") else None


def check_schema(engine: sa.Engine) -> str:
    """The database's revision if it is this version's; else SchemaTooOld or SchemaTooNew."""
    with engine.connect() as conn:
        current = _revision_if_any(conn)
    mismatch = _verdict(current)
    if mismatch is not None:
        raise mismatch
    assert current is not None
    return current


def _verdict(current: str | None) -> errors.SchemaMismatch | None:
    """None when ``current`` is this version's revision; else the mismatch to raise."""
    head, known = _revisions()
    if current == head:
        return None
    if current is None or current in known:
        return errors.SchemaTooOld(
            current,
            head,
            f"the database schema is at {current or 'nothing yet'}, older than this version's "
            f"{head}: the server upgrades it when it starts, or run `jobbalancer db upgrade`",
        )
    return errors.SchemaTooNew(
        current,
        head,
        f"the database schema is at {current}, newer than jobbalancer {__version__} knows "
        f"({head}): upgrade jobbalancer on this machine",
    )
