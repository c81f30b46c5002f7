"""Schema upgrades (alembic, its scripts in ``migrations/``), safe when several processes
start at once: each backend's lock is held across the migration."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from jobbalancer import __version__, errors
from jobbalancer.db import backends

MIGRATIONS = Path(__file__).parent / "migrations"


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision``; safe when several processes start at once."""
    from alembic import command

    _migrate(engine, command.upgrade, revision)


def downgrade(engine: sa.Engine, revision: str) -> None:
    """Take the schema back to ``revision`` (for going back to an older release)."""
    from alembic import command

    _migrate(engine, command.downgrade, revision)


def _migrate(engine: sa.Engine, step: Callable[[Any, str], None], revision: str) -> None:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    kind = backends.of(engine)
    with kind.upgrade_lock(engine), engine.connect() as conn, kind.migrating(conn):
        cfg.attributes["connection"] = conn
        step(cfg, revision)
        conn.commit()


def current_revision(engine: sa.Engine) -> str | None:
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@functools.cache
def _revisions() -> tuple[str, frozenset[str]]:
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


def check_schema(engine: sa.Engine) -> str:
    """The database's revision if it is this version's; else SchemaTooOld or SchemaTooNew."""
    with engine.connect() as conn:
        current = schema_revision(conn) if sa.inspect(conn).has_table("alembic_version") else None
    head, known = _revisions()
    if current == head:
        return current
    if current is None or current in known:
        raise errors.SchemaTooOld(
            current,
            head,
            f"the database schema is at {current or 'nothing yet'}, older than this version's "
            f"{head}: the server upgrades it when it starts, or run `jobbalancer db upgrade`",
        )
    raise errors.SchemaTooNew(
        current,
        head,
        f"the database schema is at {current}, newer than jobbalancer {__version__} knows "
        f"({head}): upgrade jobbalancer on this machine",
    )
