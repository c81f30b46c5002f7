"""Schema upgrades on every backend: a fresh database reaches head, again and again, at once;
and the ``engine`` fixture's copy of a migrated template is just like a migrated database."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from jobbalancer import auth, classes, db
from jobbalancer.db import schema


@pytest.fixture
def fresh(database_url: str) -> Iterator[sa.Engine]:
    """An engine on a fresh, empty database: no schema yet."""
    engine = db.connect(database_url)
    yield engine
    engine.dispose()


def head() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(db.MIGRATIONS))
    revision = ScriptDirectory.from_config(cfg).get_current_head()
    assert revision is not None
    return revision


def seeded_rows(engine: sa.Engine) -> tuple[list[tuple[int, str, int]], list[str]]:
    """The worker classes and the lock names the first migration puts in."""
    c, locks = schema.worker_classes, schema.locks
    with db.read(engine) as conn:
        classes = conn.execute(sa.select(c.c.id, c.c.name, c.c.max_jobs).order_by(c.c.id)).all()
        names = conn.execute(sa.select(locks.c.name).order_by(locks.c.name)).scalars().all()
    return [tuple(r) for r in classes], list(names)  # type: ignore[misc]


def test_upgrade_of_a_fresh_database_reaches_head(fresh: sa.Engine) -> None:
    assert db.current_revision(fresh) is None
    db.upgrade(fresh)
    assert db.current_revision(fresh) == head()
    tables = set(sa.inspect(fresh).get_table_names())
    assert set(schema.metadata.tables) <= tables
    # The default class every worker and job falls back to, and the named locks
    assert seeded_rows(fresh) == ([(1, "default", 5)], ["assign", "leader"])


def test_the_migrated_schema_matches_the_tables_the_code_uses(fresh: sa.Engine) -> None:
    db.upgrade(fresh)
    with fresh.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, schema.metadata) == []


def test_upgrade_is_idempotent_and_keeps_data(fresh: sa.Engine) -> None:
    db.upgrade(fresh)
    with db.write(fresh) as conn:
        classes.create(conn, "gpu")
    db.upgrade(fresh)
    db.upgrade(fresh)
    assert db.current_revision(fresh) == head()
    assert seeded_rows(fresh) == ([(1, "default", 5), (2, "gpu", 5)], ["assign", "leader"])


def test_a_new_class_gets_a_new_id_after_the_seeded_default(fresh: sa.Engine) -> None:
    # The default class is inserted with an explicit id: the next one must not collide.
    db.upgrade(fresh)
    with db.write(fresh) as conn:
        first = classes.create(conn, "gpu").id
        second = classes.create(conn, "arm").id
    assert len({1, first, second}) == 3
    with db.read(fresh) as conn:
        assert classes.find(conn, "default").id == 1
        assert classes.find(conn, "1").id == 1


def test_several_servers_upgrading_one_fresh_database_at_once_all_succeed(
    database_url: str,
) -> None:
    # Given four processes' engines on one fresh database
    count = 4
    engines = [db.connect(database_url) for _ in range(count)]
    together = threading.Barrier(count)

    def start_server(engine: sa.Engine) -> str | None:
        together.wait()
        db.upgrade(engine)
        return db.current_revision(engine)

    try:
        # When they all upgrade at the same moment
        with ThreadPoolExecutor(count) as pool:
            revisions = list(pool.map(start_server, engines))
        # Then every one succeeded, and the seeded rows exist once
        assert revisions == [head()] * count
        assert seeded_rows(engines[0]) == ([(1, "default", 5)], ["assign", "leader"])
    finally:
        for engine in engines:
            engine.dispose()


# -- the engine fixture's copies -----------------------------------------------------------


# How each backend describes its tables: the statements that make them, or their catalog.
def _sqlite_schema(conn: sa.Connection) -> list[Any]:
    # A table rebuilt by Alembic's batch mode lists its constraints in no fixed order:
    # compare each statement's clauses as a set.
    rows = conn.exec_driver_sql(
        "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
    ).all()
    return [(*row[:3], sorted((row[3] or "").replace("\n)", "").split(", \n"))) for row in rows]


SCHEMA_QUERIES: dict[str, Callable[[sa.Connection, list[str]], list[Any]]] = {
    "sqlite": lambda conn, _: _sqlite_schema(conn),
    "mysql": lambda conn, tables: [
        conn.exec_driver_sql(f"SHOW CREATE TABLE `{table}`").one() for table in tables
    ],
    "postgresql": lambda conn, _: [
        conn.exec_driver_sql(query).all()
        for query in (
            "SELECT table_name, column_name, ordinal_position, data_type,"
            " character_maximum_length, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 3",
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
            " FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
            "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public'"
            " ORDER BY 1",
        )
    ],
}


def described(engine: sa.Engine) -> tuple[list[Any], dict[str, list[Any]]]:
    """A database's tables as its backend describes them, and every row in each."""
    with engine.connect() as conn:
        tables = sorted(sa.inspect(conn).get_table_names())
        quote = conn.dialect.identifier_preparer.quote
        rows = {
            table: sorted(conn.exec_driver_sql(f"SELECT * FROM {quote(table)}").all(), key=repr)
            for table in tables
        }
        return SCHEMA_QUERIES[db.backend(conn)](conn, tables), rows


def test_the_engine_fixture_database_is_a_migrated_one_of_its_own(
    engine: sa.Engine, backend: str, make_database_url: Callable[..., str]
) -> None:
    migrated = db.connect(make_database_url(backend))
    another = db.connect(make_database_url(backend, migrated=True))
    try:
        db.upgrade(migrated)
        # The copy of the template is what the migrations make: tables, keys, indexes,
        # counters and seeded rows alike
        assert described(engine) == described(migrated)
        # And what a test writes stays in its copy
        with db.write(engine) as conn:
            classes.create(conn, "gpu")
        assert described(another) == described(migrated)
        assert described(engine) != described(migrated)
    finally:
        migrated.dispose()
        another.dispose()


# -- 0006: ids never reused ------------------------------------------------------------------

REFERRED = ("users", "api_keys", "worker_classes", "workers", "scripts", "jobs")


def test_on_sqlite_every_referred_table_is_autoincrement(sqlite_engine: sa.Engine) -> None:
    with sqlite_engine.connect() as conn:
        statements = dict(
            conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'table'").all()
        )
    for table in REFERRED:
        assert "AUTOINCREMENT" in statements[table], table


def _at_0005_with_rows(url: str) -> sa.Engine:
    """A SQLite database as 0005 left it: a user with a key and a session, another one
    deleted (user 3) whose job remains, and a deleted job (the newest) whose output stayed."""
    engine = db.connect(url)
    db.upgrade(engine, "0005")
    with db.write(engine) as conn:
        for statement in (
            "INSERT INTO users (id, name, role, commands_allowed, disabled, created_at)"
            " VALUES (1, 'admin', 'admin', 1, 0, '2026-01-01'),"
            " (2, 'ann', 'submitter', 1, 0, '2026-01-01')",
            "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, created_at)"
            " VALUES (1, 2, 'k', 'jb_x', 'h', '2026-01-01')",
            "INSERT INTO web_sessions (token_hash, user_id, csrf_token, created_at,"
            " expires_at, last_seen_at) VALUES ('t', 2, 'c', '2026-01-01', '2099-01-01',"
            " '2026-01-01')",
            "INSERT INTO jobs (id, state, command, params, env, labels, worker_class_id,"
            " need_realtime, priority, retries, attempt, user_id, user_name, kill_requested,"
            " output_bytes, created_at) VALUES (1, 'done', 'true', '[]', '{}', '{}', 1, 0, 0,"
            " 0, 1, 3, 'gone', 0, 0, '2026-01-01')",
            "INSERT INTO job_output (job_id, seq, stream, offset, stream_offset, size, data,"
            " at) VALUES (7, 0, 'stdout', 0, 0, 1, x'41', '2026-01-01')",
        ):
            conn.exec_driver_sql(statement)
    return engine


def test_upgrading_sqlite_keeps_every_row_and_starts_ids_past_all_references(
    make_database_url: Callable[..., str],
) -> None:
    engine = _at_0005_with_rows(make_database_url("sqlite"))
    try:
        db.upgrade(engine)
        with db.read(engine) as conn:
            # The rebuild of users did not cascade into its keys and sessions
            assert conn.execute(sa.select(schema.api_keys.c.user_id)).scalars().all() == [2]
            assert conn.execute(sa.select(schema.web_sessions.c.user_id)).scalars().all() == [2]
            assert conn.execute(sa.select(schema.jobs.c.user_id)).scalars().all() == [3]
            counters = dict(conn.exec_driver_sql("SELECT name, seq FROM sqlite_sequence").all())
            indexes = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'ix_jobs_queue'"
            ).scalar_one()
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        # Deleted user 3 is still named by a job, job 7 by output: neither id comes back
        assert counters["users"] == 3 and counters["jobs"] == 7 and counters["api_keys"] == 1
        assert "priority DESC" in indexes
        with db.write(engine) as conn:
            assert auth.create_user(conn, "newcomer", "submitter").id == 4
    finally:
        engine.dispose()


def test_0006_downgrades_and_upgrades_again(make_database_url: Callable[..., str]) -> None:
    engine = _at_0005_with_rows(make_database_url("sqlite"))
    try:
        db.upgrade(engine)
        db.downgrade(engine, "0005")
        assert db.current_revision(engine) == "0005"
        db.upgrade(engine)
        assert db.current_revision(engine) == head()
        with db.read(engine) as conn:
            assert (
                conn.execute(sa.select(sa.func.count()).select_from(schema.api_keys)).scalar() == 1
            )
    finally:
        engine.dispose()
