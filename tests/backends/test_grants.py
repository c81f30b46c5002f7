"""The worker's database role (`db grant-worker`, db/grants.py) on PostgreSQL and MariaDB:
everything a worker does works under it, and users, keys, sessions and scripts are out
of its reach. SQLite has no roles and says so.

Roles are named ``jbw_<hex>`` (parallel runs do not clash) and dropped at teardown."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from jobbalancer import balancer, chains, cli, db, errors, jobs, notify, settings
from jobbalancer import registry as workers
from jobbalancer.db import grants, schema
from jobbalancer.worker.output import Closing

# SQLite has no roles: these run on PostgreSQL and MariaDB (its refusal:
# test_sqlite_has_no_roles).
ROLES = pytest.mark.parametrize("backend", ["postgresql", "mysql"])


@dataclass(frozen=True)
class Role:
    name: str
    password: str
    url: str  # the test database, logged in as the role


def _role_url(admin_url: str, name: str, password: str) -> str:
    url = db.normalize_url(admin_url).set(username=name, password=password)
    return url.render_as_string(hide_password=False)


def drop_role(engine: sa.Engine, name: str) -> None:
    """The role and whatever it holds: PostgreSQL's privileges live in the database (DROP
    OWNED BY there first), MariaDB's with the user."""
    grants.check_role(name)
    with engine.connect() as conn:
        if db.backend(conn) == "postgresql":
            exists = grants.role_exists(conn, name, "%")
            if exists:
                conn.exec_driver_sql(f"DROP OWNED BY {name}")
                conn.exec_driver_sql(f"DROP ROLE {name}")
        else:
            conn.exec_driver_sql(f"DROP USER IF EXISTS '{name}'@'%%'")
        conn.commit()


@pytest.fixture
def role(engine: sa.Engine, database_url: str) -> Iterator[Role]:
    name = f"jbw_{secrets.token_hex(6)}"
    password = secrets.token_urlsafe(16)
    with db.write(engine) as conn:
        new, generated = grants.grant_worker(conn, str(engine.url.database), name, "%", password)
    assert new and generated is None
    try:
        yield Role(name, password, _role_url(database_url, name, password))
    finally:
        drop_role(engine, name)


@pytest.fixture
def as_role(role: Role) -> Iterator[sa.Engine]:
    engine = db.connect(role.url)
    yield engine
    engine.dispose()


def _register(engine: sa.Engine, name: str = "w1") -> tuple[int, str]:
    with db.write(engine) as conn:
        ids = workers.register(
            conn, name=name, host="grant-host", worker_class="default", max_jobs=2,
            pid=4242, version="test", stats=workers.Stats(),
        )  # fmt: skip
        balancer.assign_waiting(conn, worker_id=ids[0])
        settings.load_tunables(conn)
    return ids


def _job(engine: sa.Engine, **spec: object) -> int:
    with db.write(engine) as conn:
        (job_id,) = jobs.create(conn, [jobs.Spec(command="echo hi", worker_class_id=1, **spec)],
                                7, "alice")  # fmt: skip
    return job_id


@ROLES
def test_statements_per_backend(backend: str) -> None:
    statements = grants.worker_statements(backend, "jb", "jb_worker", "10.0.0.%")

    # Of the users, only whether one is still there and enabled (a job's secrets).
    users = [s for s in statements if " users " in s or "`users`" in s]
    assert len(users) == 1 and "GRANT SELECT (id, disabled) ON" in users[0], users
    text = "\n".join(s for s in statements if s not in users)
    for table in ("users", "api_keys", "web_sessions", "login_failures", "scripts"):
        assert f" {table} " not in text and f"`{table}`" not in text
    if backend == "postgresql":
        assert statements[0] == "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM jb_worker"
        assert "GRANT INSERT ON job_output TO jb_worker" in statements
        assert "GRANT USAGE ON SEQUENCE jobs_id_seq TO jb_worker" in statements
    else:
        assert "GRANT INSERT ON `jb`.`job_output` TO 'jb_worker'@'10.0.0.%'" in statements
        assert any("`signal`" in s for s in statements)  # a reserved word, quoted


def test_bad_names_are_refused() -> None:
    for role in ("Bad", "a b", "x;y", "a" * 64, ""):
        with pytest.raises(errors.ConfigError, match="role name"):
            grants.worker_statements("postgresql", "jb", role)
    with pytest.raises(errors.ConfigError, match="host pattern"):
        grants.worker_statements("mysql", "jb", "jb_worker", "a'b")


@ROLES
def test_a_worker_does_its_work_under_the_role(engine: sa.Engine, as_role: sa.Engine) -> None:
    with db.write(engine) as conn:
        hook = notify.create_target(conn, "hook", "webhook", url="https://x.test/", secret="k")
        notify.create_rule(conn, ["failed", "started"], hook.id, None)
    waiting = _job(engine, retries=1)
    worker_id, session = _register(as_role)  # assigns the waiting job to it

    with db.write(as_role) as conn:
        assert db.schema_revision(conn) == db.head_revision()
        (claimed,) = jobs.for_worker(conn, worker_id)
        assert claimed.id == waiting
        assert jobs.claim(conn, waiting, worker_id, claimed.token or "")
        assert jobs.set_pid(conn, waiting, claimed.token or "", 999)
    assert db.check_schema(as_role) == db.head_revision()
    with db.write(as_role) as conn:
        Closing({waiting: 3}, [_chunk(waiting)]).write(conn)
        done = jobs.finish(conn, waiting, claimed.token or "", jobs.State.FAILED, exit_code=3)
        assert done
        assert workers.heartbeat(conn, worker_id, session, workers.Stats()) is not None
        taken = balancer.take_for_worker(conn, worker_id)  # the retry, straight to running
    assert [j.retry_of for j in taken] == [waiting]
    with db.write(as_role) as conn:
        assert jobs.lose_worker_jobs(conn, worker_id, "restarted") == [taken[0].id]
        jobs.unassign_worker(conn, worker_id)
        db.lock_row(conn, "assign")
    with db.read(engine) as conn:
        assert jobs.get(conn, waiting).state == jobs.State.FAILED
        out = conn.execute(sa.select(schema.job_output.c.data)).scalars().all()
        sent = [(n.job_id, n.event) for n in notify.list_notifications(conn)][::-1]
    assert sent == [(waiting, "started"), (waiting, "failed"), (taken[0].id, "started")]
    assert [bytes(d) for d in out] == [b"hi\n"]


@ROLES
def test_a_worker_decides_held_jobs_under_the_role(engine: sa.Engine, as_role: sa.Engine) -> None:
    parent = _job(engine, retries=1)
    with db.write(engine) as conn:
        (child,) = jobs.create(
            conn, [jobs.Spec(command="echo child", worker_class_id=1, held=True)], 7, "alice"
        )
        chains.add(conn, child, [chains.After(parent, "success")])
    worker_id, _ = _register(as_role)
    with db.write(as_role) as conn:
        (claimed,) = jobs.for_worker(conn, worker_id)
        token = claimed.token or ""
        assert jobs.claim(conn, parent, worker_id, token)
        # Failed with a retry left: the child follows the retry (its rows re-pointed).
        assert jobs.finish(conn, parent, token, jobs.State.FAILED, exit_code=1)
        (retry,) = balancer.take_for_worker(conn, worker_id)
    with db.write(as_role) as conn:
        assert jobs.finish(conn, retry.id, retry.token or "", jobs.State.DONE, exit_code=0)
    with db.read(engine) as conn:
        assert jobs.get(conn, child).state == jobs.State.WAITING
        assert [p.id for p in chains.links(conn, child).parents] == [retry.id]


def _chunk(job_id: int) -> dict[str, object]:
    return {"job_id": job_id, "seq": 0, "stream": "stdout", "offset": 0, "stream_offset": 0,
            "size": 3,
            "data": b"hi\n"}  # fmt: skip


@ROLES
@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM users",
        "SELECT * FROM api_keys",
        "SELECT * FROM web_sessions",
        "SELECT * FROM scripts",
        "SELECT * FROM login_failures",
        "SELECT * FROM job_output",
        "SELECT secret FROM notification_targets",
        "SELECT url FROM notification_targets",
        "SELECT * FROM notifications",
        "UPDATE notifications SET state = 'delivered'",
        "UPDATE jobs SET command = 'rm -rf /' WHERE id = 1",
        "UPDATE jobs SET env = '{}' WHERE id = 1",
        "INSERT INTO worker_classes (name, max_jobs, description) VALUES ('x', 1, '')",
        "UPDATE settings SET value = '1' WHERE 1 = 0",
        "DELETE FROM jobs",
        "INSERT INTO users (name, role, commands_allowed, disabled, created_at) "
        "VALUES ('intruder', 'admin', TRUE, FALSE, CURRENT_TIMESTAMP)",
    ],
)
def test_what_the_role_may_not_do(as_role: sa.Engine, statement: str) -> None:
    with pytest.raises(errors.DatabaseRefused) as caught, db.write(as_role) as conn:
        conn.execute(sa.text(statement))

    assert caught.value.message.startswith("the database refused: ")
    assert "use the server's credentials" in caught.value.message
    assert cli.exits.describe(caught.value)[0] == cli.RET_AUTH


def _privileges(engine: sa.Engine, role: str) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        if db.backend(conn) == "postgresql":
            query = (
                "SELECT table_name, privilege_type, '' FROM information_schema.role_table_grants "
                "WHERE grantee = %(r)s UNION ALL SELECT table_name, privilege_type, column_name "
                "FROM information_schema.column_privileges WHERE grantee = %(r)s ORDER BY 1, 2, 3"
            )
            return [tuple(r) for r in conn.exec_driver_sql(query, {"r": role})]
        rows = conn.exec_driver_sql(f"SHOW GRANTS FOR '{role}'@'%%'").scalars().all()
        return sorted((str(r),) for r in rows)


@ROLES
def test_granting_again_changes_nothing_and_keeps_the_password(
    engine: sa.Engine, role: Role, as_role: sa.Engine
) -> None:
    before = _privileges(engine, role.name)
    with db.write(engine) as conn:
        new, generated = grants.grant_worker(conn, str(engine.url.database), role.name, "%", None)

    assert (new, generated) == (False, None)
    assert _privileges(engine, role.name) == before
    assert db.check_schema(as_role) == db.head_revision()  # the old password still works


@ROLES
def test_a_stray_privilege_is_revoked_by_granting_again(engine: sa.Engine, role: Role) -> None:
    before = _privileges(engine, role.name)
    with db.write(engine) as conn:
        if db.backend(conn) == "postgresql":
            conn.exec_driver_sql(f"GRANT SELECT ON users TO {role.name}")
        else:
            database = engine.url.database
            conn.exec_driver_sql(f"GRANT SELECT ON `{database}`.`users` TO '{role.name}'@'%%'")
    assert _privileges(engine, role.name) != before

    with db.write(engine) as conn:
        grants.grant_worker(conn, str(engine.url.database), role.name, "%", None)

    assert _privileges(engine, role.name) == before


@ROLES
def test_cli_print_sql_runs_nothing(database_url: str, engine: sa.Engine) -> None:
    name = f"jbw_{secrets.token_hex(6)}"
    args = ["db", "grant-worker", name, "--print-sql", "--database-url", database_url]

    result = CliRunner().invoke(cli.app, args)

    assert result.exit_code == 0, result.output
    assert "GRANT INSERT ON " in result.output and name in result.output
    with engine.connect() as conn:
        assert not grants.role_exists(conn, name, "%")


@ROLES
def test_cli_creates_a_role_with_a_password_printed_last(
    database_url: str, engine: sa.Engine
) -> None:
    name = f"jbw_{secrets.token_hex(6)}"
    args = ["db", "grant-worker", name, "--database-url", database_url]
    try:
        result = CliRunner().invoke(cli.app, args)
        assert result.exit_code == 0, result.output
        password = result.output.rstrip("\n").splitlines()[-1]
        worker_engine = db.connect(_role_url(database_url, name, password))
        try:
            assert db.check_schema(worker_engine) == db.head_revision()
            users = ["users", "create", "intruder", "--role", "admin", "--database-url"]
            refused = CliRunner().invoke(cli.app, [*users, _role_url(database_url, name, password)])
        finally:
            worker_engine.dispose()
    finally:
        drop_role(engine, name)

    assert refused.exit_code == cli.RET_AUTH, refused.output
    assert "the database refused" in refused.output


@ROLES
def test_cli_without_the_right_to_grant_says_so(database_url: str, role: Role) -> None:
    args = ["db", "grant-worker", "jbw_other", "--database-url", role.url]

    result = CliRunner().invoke(cli.app, args)

    assert result.exit_code == cli.RET_AUTH, result.output
    assert "--print-sql" in result.output


def test_sqlite_has_no_roles() -> None:
    with pytest.raises(errors.ConfigError, match="SQLite has no roles"):
        grants.worker_statements("sqlite", "jb", "jb_worker")
