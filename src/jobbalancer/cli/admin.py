"""Local admin commands, straight on the database: `db`, `users` and `keys`.

Whoever holds the database URL is an admin here (`service.access.LOCAL`); no server needs
to run. They go through the same service layer as the API and the web UI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import socket
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import sqlalchemy as sa
import typer
from rich.markup import escape

from jobbalancer import auth, db, errors
from jobbalancer.cli import exits, formatting
from jobbalancer.cli.base import (
    JsonOpt,
    PasswordStdinOpt,
    Target,
    database_options,
    db_app,
    keys_app,
    opt,
    users_app,
)
from jobbalancer.service import access, inputs, users


def _local_actor() -> auth.User:
    """The local admin (``access.LOCAL``) with, as its address in the audit log, who ran
    the command on which machine (``root@db1``): the database URL is all it proved."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid
        who = f"uid {os.getuid()}"
    return dataclasses.replace(access.LOCAL, address=f"{who}@{socket.gethostname()}"[:64])


LOCAL = _local_actor()

# -- db -----------------------------------------------------------------------------------


@db_app.command("upgrade")
@database_options
def db_upgrade(target: Target) -> None:
    """Create or upgrade the database schema to this version's (safe to repeat). A schema
    newer than this version knows is refused (exit 11)."""
    with target.engine(schema=db.upgrade) as engine:
        revision = db.current_revision(engine)
        where = engine.url.render_as_string(hide_password=True)
    formatting.out().print(f"database {escape(where)} is at revision {revision}")


@db_app.command("current")
@database_options
def db_current(target: Target) -> None:
    """Print the schema revision of the database, and whether it is this version's: exit 0
    when it is, 11 when it is older (run `db upgrade`) or newer (upgrade jobbalancer)."""
    with target.engine(schema=None) as engine:
        try:
            revision = db.check_schema(engine)
        except errors.SchemaMismatch as exc:
            formatting.out().print(_mismatch_line(exc))
            raise typer.Exit(exits.RET_SCHEMA) from None
    formatting.out().print(f"{revision} (up to date)")


def _mismatch_line(exc: errors.SchemaMismatch) -> str:
    if exc.current is None:
        return "none (no schema yet: run `jobbalancer db upgrade`)"
    if isinstance(exc, errors.SchemaTooNew):
        return (
            f"{exc.current} (newer than this version knows ({exc.head}): upgrade jobbalancer here)"
        )
    return f"{exc.current} (older than this version's {exc.head}: run `jobbalancer db upgrade`)"


@db_app.command("grant-worker")
@database_options
def db_grant_worker(
    target: Target,
    role: Annotated[
        str,
        typer.Argument(
            help="The database role (user) workers log in as: lower-case letters, digits, _.",
            show_default=False,
        ),
    ],
    password_stdin: PasswordStdinOpt = False,
    from_host: Annotated[
        str,
        opt(
            "--from-host",
            env="GRANT_FROM_HOST",
            help="MariaDB/MySQL: the host pattern the role may log in from (e.g. 10.0.0.%).",
        ),
    ] = "%",
    print_sql: Annotated[
        bool,
        opt(
            "--print-sql",
            env="GRANT_PRINT_SQL",
            help="Print the statements for a DBA to run, run nothing.",
        ),
    ] = False,
) -> None:
    """Create (or update) a database role that can do what a worker does and nothing more:
    no users, API keys, sessions or stored scripts. Run it with the server's credentials
    (PostgreSQL: a superuser, or the owner with CREATEROLE; MariaDB: CREATE USER and GRANT
    OPTION). A new role gets a generated password, printed once as the last line; an
    existing one keeps its password unless --password-stdin. Safe to repeat: it revokes
    what the role has in this database, then grants."""
    try:
        db.grants.check_role(role)
        db.grants.check_host(from_host)
    except errors.ConfigError as exc:
        formatting.fail(exits.RET_USAGE, exc.message)
    url = db.normalize_url(target.settings().database_url)
    statements = db.grants.worker_statements(  # SQLite: refused before anything is opened
        db.backends.for_url(url).name, str(url.database), role, from_host
    )
    if print_sql:
        _print_grants(url, role, from_host, statements)
        return
    password = _read_password() if password_stdin else None
    with target.engine() as engine, _need_grant_rights(), db.write(engine) as conn:
        database = str(engine.url.database)
        new, generated = db.grants.grant_worker(conn, database, role, from_host, password)
    formatting.out().print(
        f"{'created' if new else 'updated'} database role {role}: a worker's rights on {database}"
    )
    if generated is not None:
        _print_secret("password (shown once):", generated)


def _print_grants(url: sa.URL, role: str, from_host: str, statements: list[str]) -> None:
    """The statements, from the URL alone: nothing is run (not even a connection made)."""
    backend = db.backends.for_url(url).name
    database = str(url.database)
    lines = ["-- if the role does not exist yet:"]
    lines.append(db.grants.create_statement(backend, role, from_host) + ";")
    if backend == "mysql":
        lines.append(f"-- first revoke what '{role}'@'{from_host}' holds on `{database}`, if any")
    print("\n".join(lines + [f"{s};" for s in statements]), flush=True)


@contextlib.contextmanager
def _need_grant_rights() -> Iterator[None]:
    try:
        yield
    except errors.DatabaseRefused as exc:
        raise errors.DatabaseRefused(
            f"{exc.message}. Creating a role and granting needs a PostgreSQL superuser (or "
            "the database's owner with CREATEROLE) or, on MariaDB, CREATE USER and GRANT "
            "OPTION; or print the statements for a DBA with --print-sql"
        ) from exc


# -- users --------------------------------------------------------------------------------


@users_app.command("create")
@database_options
def users_create(
    target: Target,
    name: Annotated[str, typer.Argument(help="The new user's name.", show_default=False)],
    role: Annotated[
        str,
        opt(
            "--role",
            env="USER_ROLE",
            help="admin, operator (submit; manage any job), submitter (submit; own jobs), "
            "or viewer (read-only).",
        ),
    ],
    password_stdin: PasswordStdinOpt = False,
    scripts_only: Annotated[
        bool,
        opt(
            "--scripts-only",
            env="USER_SCRIPTS_ONLY",
            help="May submit stored scripts only, no raw commands.",
        ),
    ] = False,
    classes: Annotated[
        str | None,
        opt(
            "--classes",
            env="USER_CLASSES",
            help="Comma-separated worker classes the user may use. Default: all.",
        ),
    ] = None,
) -> None:
    """Create a user. Without --password-stdin a password is generated and printed as the
    last line of output, for `| tail -n 1`."""
    password = _read_password() if password_stdin else auth.generate_password()
    # Not validated as a request: auth.create_user checks name, role and password itself,
    # with the messages this command has always given; classes may be made later.
    spec = inputs.UserIn.model_construct(
        name=name,
        role=role,
        password=password,
        commands_allowed=not scripts_only,
        worker_classes=_split_classes(classes),
        disabled=False,
    )
    with target.engine() as engine:
        user = users.create(engine, LOCAL, spec, known_classes_only=False)
    formatting.out().print(f"created user {escape(user.name)} (id {user.id}, role {user.role})")
    if not password_stdin:
        _print_secret("password (shown once):", password)


@users_app.command("list")
@database_options
def users_list(target: Target, as_json: JsonOpt = False) -> None:
    """List the users with their roles and limits."""
    with target.engine() as engine:
        found = users.list_all(engine, LOCAL)
    if as_json:
        formatting.print_json([_user_dict(u) for u in found])
        return
    rows = [
        [
            str(u.id),
            escape(u.name),
            u.role.value,
            "yes" if u.commands_allowed else "scripts only",
            escape(", ".join(u.worker_classes)) if u.worker_classes is not None else "all",
            "yes" if u.disabled else "",
            formatting.when(u.created_at),
        ]
        for u in found
    ]
    columns = ["id", "name", "role", "commands", "classes", "disabled", "created"]
    formatting.print_table(columns, rows, flexible="classes")


@users_app.command("reset-password")
@database_options
def users_reset_password(
    target: Target,
    name: Annotated[str, typer.Argument(help="The user's name (or id).", show_default=False)],
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Set a new password. Without --password-stdin one is generated and printed as the
    last line of output."""
    password = _read_password() if password_stdin else auth.generate_password()
    with target.engine() as engine:
        user = users.update(engine, LOCAL, _user_id(engine, name), {"password": password})
    formatting.out().print(f"new password set for {escape(user.name)}")
    if not password_stdin:
        _print_secret("password (shown once):", password)


# -- keys ---------------------------------------------------------------------------------

UserArg = Annotated[str, typer.Argument(help="Whose key: user name or id.", show_default=False)]


@keys_app.command("create")
@database_options
def keys_create(
    target: Target,
    name_or_user: Annotated[
        str,
        typer.Argument(
            metavar="NAME",
            help="The key's name, a label to tell keys apart (with --user). Without --user "
            "the older form: the user whose key it is (the key's name from --name).",
            show_default=False,
        ),
    ],
    user: Annotated[
        str | None,
        opt("--user", "-u", env="KEY_USER", help="Whose key: user name or id."),
    ] = None,
    name: Annotated[
        str | None,
        opt(
            "--name",
            env="KEY_NAME",
            help="The key's name in the older form `keys create USER --name NAME`.",
        ),
    ] = None,
    scope: Annotated[
        str | None,
        opt(
            "--scope",
            env="KEY_SCOPE",
            help="read, submit, operate or admin (never above the user's role). Default: "
            "the user's role's.",
        ),
    ] = None,
    expires: Annotated[
        str | None,
        opt(
            "--expires",
            env="KEY_EXPIRES",
            help="When it stops working: 30d, 12h, 2w, a date (2027-03-01, UTC) or a time. "
            "Default: never.",
        ),
    ] = None,
) -> None:
    """Create an API key: `keys create NAME --user USER --scope submit --expires 30d`. The
    key is printed once, as the last line. `keys create USER [--name NAME]` (the older form)
    still works."""
    if user is not None and name is not None:
        formatting.fail(
            exits.RET_USAGE,
            "--name: the key's name is the argument when --user is given "
            f"(keys create {name} --user {user})",
        )
    with target.engine() as engine:
        if user is not None:
            owner_id, key_name = _user_id(engine, user), name_or_user
        else:
            owner_id, key_name = _key_owner(engine, name_or_user), name or "default"
        owner = users.get(engine, LOCAL, owner_id)
        record, key = users.create_key(
            engine, LOCAL, owner.id, key_name, scope=scope, expires_at=expires
        )
    until = f", expires {formatting.iso(record.expires_at)}" if record.expires_at else ""
    formatting.out().print(
        f"created API key {record.id} ({escape(record.name)}, scope {record.scope}{until}) "
        f"for {escape(owner.name)}"
    )
    _print_secret("key (shown once):", key)


def _key_owner(engine: sa.Engine, user: str) -> int:
    """The user of the older form `keys create USER`; a name that is no user asks for --user
    (the newer form `keys create NAME --user USER`)."""
    try:
        return _user_id(engine, user)
    except errors.NotFound:
        raise errors.NotFound(
            f"user {user!r} does not exist; for a key named {user!r} say whose it is: "
            f"jobbalancer keys create {user} --user USER"
        ) from None


@keys_app.command("list")
@database_options
def keys_list(
    target: Target,
    user: Annotated[str, typer.Argument(help="Whose keys: user name or id.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """List a user's API keys (their prefixes; keys themselves are never stored)."""
    with target.engine() as engine:
        owner = users.get(engine, LOCAL, _user_id(engine, user))
        keys = users.list_keys(engine, LOCAL, owner.id)
    if as_json:
        formatting.print_json([_key_dict(k) for k in keys])
        return
    rows = [
        [
            str(k.id),
            escape(k.name),
            k.prefix,
            k.scope.value,
            formatting.when(k.expires_at) if k.expires_at else "never",
            formatting.when(k.created_at),
            formatting.when(k.last_used_at),
        ]
        for k in keys
    ]
    columns = ["id", "name", "prefix", "scope", "expires", "created", "last used"]
    formatting.print_table(columns, rows, flexible="name")


@keys_app.command("revoke")
@database_options
def keys_revoke(
    target: Target,
    user: UserArg,
    key_id: Annotated[int, typer.Argument(help="The key's id (see `keys list`).", min=1)],
) -> None:
    """Revoke an API key: requests with it are refused from now on."""
    with target.engine() as engine:
        owner = users.get(engine, LOCAL, _user_id(engine, user))
        users.revoke_key(engine, LOCAL, owner.id, key_id)
    formatting.out().print(f"revoked API key {key_id} of {escape(owner.name)}")


# -- helpers ------------------------------------------------------------------------------


def _user_id(engine: sa.Engine, name_or_id: str) -> int:
    with db.read(engine) as conn:
        return auth.find_user(conn, name_or_id).id


def _read_password() -> str:
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        formatting.fail(exits.RET_USAGE, "--password-stdin: no password on standard input")
    return password


def _split_classes(classes: str | None) -> list[str] | None:
    if classes is None:
        return None
    names = [c.strip() for c in classes.split(",") if c.strip()]
    if not names:
        formatting.fail(
            exits.RET_USAGE, "--classes: give at least one class name, e.g. --classes default,gpu"
        )
    return names


def _print_secret(label: str, secret: str) -> None:
    """The label, then the secret alone on the last line of output."""
    formatting.out().print(label)
    print(secret, flush=True)


def _user_dict(u: auth.User) -> dict[str, Any]:
    return {
        "id": u.id,
        "name": u.name,
        "role": u.role.value,
        "commands_allowed": u.commands_allowed,
        "worker_classes": None if u.worker_classes is None else list(u.worker_classes),
        "disabled": u.disabled,
        "created_at": formatting.iso(u.created_at),
    }


def _key_dict(k: auth.ApiKey) -> dict[str, Any]:
    return {
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "created_at": formatting.iso(k.created_at),
        "last_used_at": formatting.iso(k.last_used_at),
        "scope": k.scope.value,
        "expires_at": formatting.iso(k.expires_at),
    }
