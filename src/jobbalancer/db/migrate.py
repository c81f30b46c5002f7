"""Schema upgrades (alembic, its scripts in ``migrations/``), safe when several processes
start at once: each backend's lock is held across the migration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

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
