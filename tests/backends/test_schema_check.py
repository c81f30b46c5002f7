"""Is the database's schema this version's? On every backend: equal, older, newer, none;
and `db.upgrade` refuses a newer schema before Alembic touches it, while
`db.ensure_schema` creates one only on an empty database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from jobbalancer import db, errors
from jobbalancer.db import migrate


@pytest.fixture
def fresh(database_url: str) -> Iterator[sa.Engine]:
    """An engine on a fresh, empty database: no schema yet."""
    engine = db.connect(database_url)
    yield engine
    engine.dispose()


def _set_revision(engine: sa.Engine, revision: str) -> None:
    with db.write(engine) as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": revision})


def _tables(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def test_this_versions_schema_passes(engine: sa.Engine) -> None:
    assert db.check_schema(engine) == db.head_revision()
    with db.read(engine) as conn:
        assert db.schema_revision(conn) == db.head_revision()


def test_an_older_schema_is_too_old(engine: sa.Engine) -> None:
    db.downgrade(engine, "0006")

    with pytest.raises(errors.SchemaTooOld) as caught:
        db.check_schema(engine)

    assert (caught.value.current, caught.value.head) == ("0006", db.head_revision())
    assert "older than this version's" in caught.value.message
    assert "jobbalancer db upgrade" in caught.value.message


def test_an_unknown_revision_is_too_new(engine: sa.Engine) -> None:
    _set_revision(engine, "ffff0000")

    with pytest.raises(errors.SchemaTooNew) as caught:
        db.check_schema(engine)

    assert caught.value.current == "ffff0000"
    assert "upgrade jobbalancer on this machine" in caught.value.message


def test_no_schema_is_too_old_with_no_revision(fresh: sa.Engine) -> None:
    with pytest.raises(errors.SchemaTooOld) as caught:
        db.check_schema(fresh)

    assert caught.value.current is None
    assert "nothing yet" in caught.value.message
    assert _tables(fresh) == set()  # checking created nothing


def test_upgrade_refuses_a_newer_schema_and_leaves_it_as_it_was(engine: sa.Engine) -> None:
    _set_revision(engine, "ffff0000")
    before = _tables(engine)

    with pytest.raises(errors.SchemaTooNew):
        db.upgrade(engine)

    assert db.current_revision(engine) == "ffff0000"
    assert _tables(engine) == before


def test_upgrade_still_brings_an_older_schema_up(engine: sa.Engine) -> None:
    db.downgrade(engine, "0006")

    db.upgrade(engine)

    assert db.check_schema(engine) == db.head_revision()


def test_ensure_schema_creates_one_on_an_empty_database(fresh: sa.Engine) -> None:
    assert db.ensure_schema(fresh) == db.head_revision()
    assert db.current_revision(fresh) == db.head_revision()


def test_ensure_schema_does_not_migrate_an_older_one(engine: sa.Engine) -> None:
    db.downgrade(engine, "0006")

    with pytest.raises(errors.SchemaTooOld):
        db.ensure_schema(engine)

    assert db.current_revision(engine) == "0006"


def test_ensure_schema_refuses_a_newer_one(engine: sa.Engine) -> None:
    _set_revision(engine, "ffff0000")

    with pytest.raises(errors.SchemaTooNew):
        db.ensure_schema(engine)

    assert db.current_revision(engine) == "ffff0000"


def test_upgrade_at_head_does_not_run_alembic(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("Alembic ran on a schema already at head")

    monkeypatch.setattr(migrate, "_migrate", refuse)

    db.upgrade(engine)  # the server's every start: one read, no Alembic

    assert db.check_schema(engine) == db.head_revision()
