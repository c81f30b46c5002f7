"""Shared fixtures: a fresh database per test on each backend, and factories that clean up.

PostgreSQL and MariaDB come from JOBBALANCER_TEST_POSTGRES_URL / JOBBALANCER_TEST_MYSQL_URL
(defaults: the local servers CI provides). When one is unreachable its tests skip, saying
so, except under CI (CI=true), where they fail: the backend matrix must really run there.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from jobbalancer import db

ADMIN_URLS = {
    "postgresql": os.environ.get(
        "JOBBALANCER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get(
        "JOBBALANCER_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
    ),
}
BACKENDS = ["sqlite", "postgresql", "mysql"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unreachable(backend: str, exc: Exception) -> None:
    message = f"{backend} is not reachable at {ADMIN_URLS[backend]}: {exc}"
    if IN_CI:
        pytest.fail(f"{message} (CI must run every backend)")
    pytest.skip(message)


def _admin_engine(backend: str) -> sa.Engine:
    engine = sa.create_engine(
        db.normalize_url(ADMIN_URLS[backend]),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
    )
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        engine.dispose()
        _unreachable(backend, exc)
    return engine


@pytest.fixture
def make_database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A factory: make_database_url(backend) → URL of a new, empty database, dropped after."""
    created: list[tuple[str, str]] = []

    def make(backend: str) -> str:
        if backend == "sqlite":
            path = tmp_path_factory.mktemp("db") / "jobbalancer.db"
            return f"sqlite:///{path}"
        name = f"jbtest_{secrets.token_hex(6)}"
        admin = _admin_engine(backend)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        admin.dispose()
        created.append((backend, name))
        return (
            db.normalize_url(ADMIN_URLS[backend])
            .set(database=name)
            .render_as_string(hide_password=False)
        )

    yield make
    for backend, name in created:
        admin = _admin_engine(backend)
        with admin.connect() as conn:
            if backend == "postgresql":
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn: a test that takes it runs once per backend."""
    return str(request.param)


@pytest.fixture
def database_url(backend: str, make_database_url: object) -> str:
    """A fresh, empty database on the backend under test."""
    return make_database_url(backend)  # type: ignore[operator,no-any-return]


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """An engine on a fresh database with the schema up to date."""
    eng = db.connect(database_url)
    db.upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(make_database_url: object) -> Iterator[sa.Engine]:
    """SQLite only: for unit tests whose logic does not depend on the backend."""
    eng = db.connect(make_database_url("sqlite"))  # type: ignore[operator]
    db.upgrade(eng)
    yield eng
    eng.dispose()
