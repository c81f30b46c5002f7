"""Shared fixtures: a fresh database per test on each backend.

PostgreSQL and MariaDB come from JOBBALANCER_TEST_POSTGRES_URL / JOBBALANCER_TEST_MYSQL_URL
(defaults: the local servers CI provides). When one is unreachable its tests skip, saying
so, except under CI (CI=true), where they fail: the backend matrix must really run there.

Running the migrations costs a few hundred milliseconds, too much for every test. So each
backend migrates one template per session, on first use, and a test that wants the schema
(``engine``) gets a new database copied from it, the cheapest way that backend allows.
"""

from __future__ import annotations

import abc
import graphlib
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NoReturn, Protocol

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


def _unreachable(backend: str, exc: Exception) -> NoReturn:
    message = f"{backend} is not reachable at {ADMIN_URLS[backend]}: {exc}"
    if IN_CI:
        pytest.fail(f"{message} (CI must run every backend)")
    pytest.skip(message)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` (``make test``): the fault tests (tests/chaos) are one group,
    run one after another by a single pytest-xdist process beside the other tests. Each
    loads the host on purpose (floods, many jobs) and times recoveries; two at once would
    skew them. Their directory makes the group: with pytest 9.2, pytest-xdist 3.8 no longer
    sees ``xdist_group`` marks (it renames ``item._nodeid``, which pytest stopped reading)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class ChaosTogether(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith("tests/chaos/"):
                return "chaos"
            return super()._split_scope(nodeid)

    return ChaosTogether(config, log)


# -- where the databases are made -----------------------------------------------------------


class Databases(Protocol):
    """Where one backend's test databases are made."""

    def create(self, *, migrated: bool) -> str:
        """The URL of a new database: empty, or with the schema up to date."""
        ...

    def drop(self, url: str) -> None: ...

    def close(self) -> None:
        """Drop the template, if one was made."""
        ...


class SqliteFiles:
    """SQLite databases: files in pytest's temporary directories (which pytest prunes)."""

    def __init__(self, tmp: pytest.TempPathFactory) -> None:
        self._tmp = tmp
        self._template: Path | None = None

    def create(self, *, migrated: bool) -> str:
        path = self._tmp.mktemp("db") / "jobbalancer.db"
        if migrated:
            shutil.copyfile(self._migrated_template(), path)
        return f"sqlite:///{path}"

    def drop(self, url: str) -> None:
        pass  # the file goes with its temporary directory

    def close(self) -> None:
        pass

    def _migrated_template(self) -> Path:
        if self._template is None:
            path = self._tmp.mktemp("template") / "jobbalancer.db"
            engine = db.connect(f"sqlite:///{path}")
            try:
                db.upgrade(engine)
            finally:
                engine.dispose()  # the last connection to close folds the WAL into the file
            self._template = path
        return self._template


class Server(abc.ABC):
    """A PostgreSQL or MariaDB server: databases named jbtest_…, copied from a template
    jbtpl_… migrated on first use, made and dropped over a pooled admin connection (a new
    MariaDB connection costs ~50 ms: PyMySQL builds an SSL context for each)."""

    backend: str

    def __init__(self) -> None:
        self._admin: sa.Engine | None = None
        self._template: str | None = None

    def create(self, *, migrated: bool) -> str:
        name = f"jbtest_{secrets.token_hex(6)}"
        if not migrated:
            self._execute(f"CREATE DATABASE {name}")
            return self._url(name)
        template = self._migrated_template()
        try:
            self._copy(template, name)
        except BaseException:
            self._drop(name)
            raise
        return self._url(name)

    def drop(self, url: str) -> None:
        name = sa.make_url(url).database
        assert name is not None
        self._drop(name)

    def close(self) -> None:
        try:
            if self._template is not None:
                self._drop(self._template)
        finally:
            if self._admin is not None:
                self._admin.dispose()

    @abc.abstractmethod
    def _copy(self, template: str, name: str) -> None:
        """Make database ``name`` the same as ``template``."""

    @abc.abstractmethod
    def _prepare(self, template: str) -> None:
        """Learn what copying needs from the freshly migrated template."""

    def _drop(self, name: str) -> None:
        self._execute(f"DROP DATABASE IF EXISTS {name}")

    def _migrated_template(self) -> str:
        if self._template is None:
            name = f"jbtpl_{secrets.token_hex(6)}"
            self._execute(f"CREATE DATABASE {name}")
            try:
                engine = db.connect(self._url(name))
                try:
                    db.upgrade(engine)
                finally:
                    engine.dispose()  # PostgreSQL copies only a database nobody is connected to
                self._prepare(name)
            except BaseException:
                self._drop(name)
                raise
            self._template = name
        return self._template

    def _admin_engine(self) -> sa.Engine:
        if self._admin is None:
            engine = sa.create_engine(
                db.normalize_url(ADMIN_URLS[self.backend]),
                isolation_level="AUTOCOMMIT",
                pool_pre_ping=True,
            )
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
            except Exception as exc:
                engine.dispose()
                _unreachable(self.backend, exc)
            self._admin = engine
        return self._admin

    def _execute(self, statement: str) -> None:
        with self._admin_engine().connect() as conn:
            conn.exec_driver_sql(statement)

    def _url(self, name: str) -> str:
        url = db.normalize_url(ADMIN_URLS[self.backend]).set(database=name)
        return url.render_as_string(hide_password=False)


class PostgresServer(Server):
    """PostgreSQL copies a whole database in one statement."""

    backend = "postgresql"

    def _prepare(self, template: str) -> None:
        pass  # the template database itself is all a copy needs

    def _copy(self, template: str, name: str) -> None:
        self._execute(f"CREATE DATABASE {name} TEMPLATE {template}")

    def _drop(self, name: str) -> None:
        self._execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class MariaDbServer(Server):
    """MariaDB cannot copy a database: a copy gets each of the template's tables from its
    SHOW CREATE TABLE (referenced tables first, so foreign keys are kept), and the rows of
    the ones that have some (the seeded class and locks, alembic_version)."""

    backend = "mysql"
    _create_tables: list[str]
    _seeded: list[str]

    def _prepare(self, template: str) -> None:
        with self._admin_engine().connect() as conn:
            conn.exec_driver_sql(f"USE {template}")
            references = conn.execute(
                sa.text(
                    "SELECT TABLE_NAME, REFERENCED_TABLE_NAME"
                    " FROM information_schema.REFERENTIAL_CONSTRAINTS"
                    " WHERE CONSTRAINT_SCHEMA = :template"
                ),
                {"template": template},
            )
            needs: dict[str, set[str]] = {
                name: set() for name in conn.exec_driver_sql("SHOW TABLES").scalars()
            }
            for table, referenced in references:
                if referenced != table:  # a table that refers to itself needs nothing first
                    needs[table].add(referenced)
            order = list(graphlib.TopologicalSorter(needs).static_order())
            self._create_tables = [
                conn.exec_driver_sql(f"SHOW CREATE TABLE `{table}`").one()[1] for table in order
            ]
            self._seeded = [
                table
                for table in order
                if conn.exec_driver_sql(f"SELECT 1 FROM `{table}` LIMIT 1").first() is not None
            ]

    def _copy(self, template: str, name: str) -> None:
        with self._admin_engine().connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
            conn.exec_driver_sql(f"USE {name}")  # the statements name tables without a database
            for statement in self._create_tables:
                conn.exec_driver_sql(statement)
            for table in self._seeded:
                conn.exec_driver_sql(f"INSERT INTO `{table}` SELECT * FROM `{template}`.`{table}`")


@pytest.fixture(scope="session")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Databases]]:
    """Where each backend's test databases are made; their templates are dropped at the end."""
    where: dict[str, Databases] = {
        "sqlite": SqliteFiles(tmp_path_factory),
        "postgresql": PostgresServer(),
        "mysql": MariaDbServer(),
    }
    yield where
    with ExitStack() as closing:
        for one in where.values():
            closing.callback(one.close)


# -- per test -------------------------------------------------------------------------------


class MakeDatabaseUrl(Protocol):
    def __call__(self, backend: str, *, migrated: bool = False) -> str: ...


@pytest.fixture
def make_database_url(databases: dict[str, Databases]) -> Iterator[MakeDatabaseUrl]:
    """A factory: make_database_url(backend, migrated=False) → the URL of a new database,
    empty or with the schema up to date; every one is dropped after the test."""
    with ExitStack() as dropping:

        def make(backend: str, *, migrated: bool = False) -> str:
            url = databases[backend].create(migrated=migrated)
            dropping.callback(databases[backend].drop, url)
            return url

        yield make


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn: a test that takes it runs once per backend."""
    return str(request.param)


@pytest.fixture
def database_url(
    request: pytest.FixtureRequest, backend: str, make_database_url: MakeDatabaseUrl
) -> str:
    """A fresh database on the backend under test: empty, unless the test also takes
    ``engine`` (itself or through another fixture), which is then on this database."""
    return make_database_url(backend, migrated="engine" in request.fixturenames)


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """An engine on a fresh database with the schema up to date."""
    eng = db.connect(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(make_database_url: MakeDatabaseUrl) -> Iterator[sa.Engine]:
    """SQLite only: for unit tests whose logic does not depend on the backend."""
    eng = db.connect(make_database_url("sqlite", migrated=True))
    yield eng
    eng.dispose()
