"""A database role for workers that can do what a worker does and nothing more
(``jobbalancer db grant-worker``): a worker host holds its credentials, so whoever takes
the host must not get users, API keys, sessions or stored scripts with them.

What a worker touches: its own registration (``workers``), the classes (read), the queue
and its jobs' states (``jobs``: column-level UPDATE, so the command, script, environment
and parameters of jobs other workers will run cannot be rewritten), their output (insert
only), the dependencies of jobs held for them (read; mark met, follow a retry), the
tunables (``settings``, read), the balancer's row lock (``locks``) and the schema
revision, and the notifications of its jobs' ends (the rules, the targets' ids, insert
only into the outbox; never a target's URL or secret), and the secrets of the jobs it
starts (their sealed values and limits, by user id; of the users, only whether one
is still there and enabled: ``users.id`` and ``users.disabled``). LISTEN
and ``pg_notify`` need no grant. What remains: INSERT on ``jobs`` (a worker queues
retries) lets a compromised worker host add jobs.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

import sqlalchemy as sa

from jobbalancer.db import backends
from jobbalancer.errors import ConfigError

ROLE_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# MariaDB host patterns: names, addresses, netmasks and the wildcards % and _.
HOST_PATTERN = re.compile(r"[A-Za-z0-9.%_:/-]{1,255}")

# Columns of `jobs` a worker changes (claim, take, pid, finish, unassign, lose; a job
# it hands back to the queue drops its pending_reason).
JOB_COLUMNS = (
    "state",
    "worker_id",
    "token",
    "pid",
    "exit_code",
    "signal",
    "error",
    "output_bytes",
    "assigned_at",
    "started_at",
    "finished_at",
    "pending_reason",
)


@dataclass(frozen=True)
class Grant:
    """Privileges on one table; ``update`` lists the columns UPDATE is limited to."""

    table: str
    privileges: tuple[str, ...]
    update: tuple[str, ...] = ()


WORKER_GRANTS = (
    Grant("jobs", ("SELECT", "INSERT"), JOB_COLUMNS),
    Grant("job_output", ("INSERT",)),
    # A job's end decides the jobs held for it (met), a retry takes over its parent's rows.
    Grant("job_dependencies", ("SELECT",), ("parent_id", "met")),
    Grant("workers", ("SELECT", "INSERT", "UPDATE")),
    Grant("worker_classes", ("SELECT",)),
    Grant("settings", ("SELECT",)),
    # SELECT … FOR UPDATE (the balancer's row lock) needs an UPDATE privilege.
    Grant("locks", ("SELECT",), ("expires_at",)),
    Grant("alembic_version", ("SELECT",)),
    # A job's end adds its notifications (jobbalancer/outbox.py): the rules, which targets
    # exist (their ids only: never a URL or a secret), and the outbox rows.
    Grant("notification_targets", ("SELECT (id)",)),
    Grant("notification_rules", ("SELECT",)),
    Grant("notifications", ("INSERT",)),
    # A job's secrets, resolved at its start (jobbalancer/vault.py): the sealed values and
    # their limits (user ids); nothing of the users themselves.
    Grant("secrets", ("SELECT (name, value, worker_classes, users)",)),
    # ... and whether the job's owner is still there and enabled (a disabled or deleted
    # user's queued jobs get no secrets): their id and that flag, nothing else of them.
    Grant("users", ("SELECT (id, disabled)",)),
)
# PostgreSQL: the serial ids of the tables a worker inserts into, and INSERT … RETURNING id
# on job_output and notifications (SQLAlchemy fetches the new key) needs SELECT on that
# column.
_PG_SEQUENCES = ("jobs_id_seq", "workers_id_seq", "job_output_id_seq", "notifications_id_seq")


def check_role(role: str) -> str:
    """``role`` if it is a plain lower-case identifier (no quoting games), else ConfigError."""
    if not ROLE_PATTERN.fullmatch(role):
        raise ConfigError(
            f"role name {role!r}: use lower-case letters, digits and _, starting with a "
            "letter or _, at most 63 characters",
            field="role",
        )
    return role


def check_host(pattern: str) -> str:
    if not HOST_PATTERN.fullmatch(pattern):
        raise ConfigError(
            f"host pattern {pattern!r}: a host name, an address or a pattern with % "
            "(e.g. 10.0.0.%)",
            field="from_host",
        )
    return pattern


def _privileges(grant: Grant, quote: str) -> str:
    """The privilege list; column names quoted (`signal` is a reserved word in MariaDB)."""
    parts = list(grant.privileges)
    if grant.update:
        parts.append(f"UPDATE ({', '.join(f'{quote}{c}{quote}' for c in grant.update)})")
    return ", ".join(parts)


def worker_statements(backend: str, database: str, role: str, from_host: str = "%") -> list[str]:
    """The REVOKE and GRANT statements that give ``role`` a worker's rights on ``database``
    (pure: the role must exist; MariaDB's revocation of earlier grants is
    :func:`mysql_revocations`, since MariaDB refuses to revoke what was never granted)."""
    check_role(role)
    if backend == "postgresql":
        return _postgres_statements(database, role)
    if backend == "mysql":
        who = f"'{role}'@'{check_host(from_host)}'"
        return [f"GRANT {_privileges(g, '`')} ON `{database}`.`{g.table}` TO {who}"
                for g in WORKER_GRANTS]  # fmt: skip
    raise ConfigError("SQLite has no roles: workers on SQLite share the server's host and file")


def _postgres_statements(database: str, role: str) -> list[str]:
    # The name was checked against ROLE_PATTERN: safe unquoted, and PostgreSQL folds it as is.
    statements = [
        f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}",
        f'GRANT CONNECT ON DATABASE "{database}" TO {role}',
        f"GRANT USAGE ON SCHEMA public TO {role}",
    ]
    quote = '"'
    statements += [f"GRANT {_privileges(g, quote)} ON {g.table} TO {role}" for g in WORKER_GRANTS]
    statements += [f"GRANT SELECT (id) ON {t} TO {role}" for t in ("job_output", "notifications")]
    statements += [f"GRANT USAGE ON SEQUENCE {s} TO {role}" for s in _PG_SEQUENCES]
    return statements


def mysql_revocations(conn: sa.Connection, database: str, role: str, from_host: str) -> list[str]:
    """REVOKE statements for what ``role`` holds on ``database``'s tables and the database
    itself (table and column grants alike), so that re-running leaves exactly the set above."""
    who = f"'{role}'@'{from_host}'"
    query = "SELECT Table_name FROM mysql.tables_priv WHERE User = %s AND Host = %s AND Db = %s"
    tables = [r[0] for r in conn.exec_driver_sql(query, (role, from_host, database))]
    found = conn.exec_driver_sql(
        "SELECT 1 FROM mysql.db WHERE User = %s AND Host = %s AND Db = %s",
        (role, from_host, database),
    ).first()
    statements = [f"REVOKE ALL PRIVILEGES ON `{database}`.`{t}` FROM {who}" for t in tables]
    if found:
        statements.append(f"REVOKE ALL PRIVILEGES ON `{database}`.* FROM {who}")
    return statements


def role_exists(conn: sa.Connection, role: str, from_host: str) -> bool:
    if backends.of(conn).name == "postgresql":
        query, params = "SELECT 1 FROM pg_roles WHERE rolname = %(r)s", {"r": role}
        return conn.exec_driver_sql(query, params).first() is not None
    query = "SELECT 1 FROM mysql.user WHERE User = %s AND Host = %s"
    return conn.exec_driver_sql(query, (role, from_host)).first() is not None


def set_password(
    conn: sa.Connection, role: str, from_host: str, password: str, *, new: bool
) -> None:
    """Create the role with ``password`` (``new``), or give it that password. The password
    is quoted by the driver, never formatted into the statement by hand."""
    raw = conn.connection.driver_connection
    assert raw is not None
    if backends.of(conn).name == "postgresql":
        from psycopg import sql

        verb = "CREATE ROLE {} LOGIN PASSWORD {}" if new else "ALTER ROLE {} PASSWORD {}"
        statement = sql.SQL(verb).format(sql.Identifier(role), sql.Literal(password))
        conn.exec_driver_sql(statement.as_string(raw))
        return
    verb = "CREATE USER %s@%s IDENTIFIED BY %s" if new else "ALTER USER %s@%s IDENTIFIED BY %s"
    conn.exec_driver_sql(verb, (role, from_host, password))


def create_statement(backend: str, role: str, from_host: str) -> str:
    """For --print-sql: how the role is created (the password is the DBA's to fill in)."""
    if backend == "postgresql":
        return f"CREATE ROLE {role} LOGIN PASSWORD '<password>'"
    return f"CREATE USER IF NOT EXISTS '{role}'@'{from_host}' IDENTIFIED BY '<password>'"


def grant_worker(conn: sa.Connection, database: str, role: str, from_host: str,
                 password: str | None) -> tuple[bool, str | None]:  # fmt: skip
    """Create ``role`` unless it exists (then it keeps its password unless ``password`` is
    given), revoke what it has here and grant a worker's rights. (whether the role was
    created, the password generated for it: None unless new and none given)."""
    backend = backends.of(conn).name
    grants = worker_statements(backend, database, role, from_host)  # checks role, host
    new = not role_exists(conn, role, from_host)
    generated = secrets.token_urlsafe(24) if new and password is None else None
    if password is not None or generated is not None:
        set_password(conn, role, from_host, password or generated or "", new=new)
    if backend == "mysql":
        grants = mysql_revocations(conn, database, role, from_host) + grants
    for statement in grants:
        if backend == "mysql":
            # PyMySQL formats every statement with its (here empty) parameters: `%` → `%%`.
            statement = statement.replace("%", "%%")
        conn.exec_driver_sql(statement)
    return new, generated
