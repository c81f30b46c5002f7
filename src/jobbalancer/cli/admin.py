"""Local admin commands, straight on the database: `db`, `users` and `keys`.

Whoever holds the database URL is an admin here; no server needs to run.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from jobbalancer import auth, db
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

# -- db -----------------------------------------------------------------------------------


@db_app.command("upgrade")
@database_options
def db_upgrade(target: Target) -> None:
    """Create or upgrade the database schema to this version's (safe to repeat)."""
    with target.engine() as engine:
        revision = db.current_revision(engine)
        where = engine.url.render_as_string(hide_password=True)
    formatting.out().print(f"database {escape(where)} is at revision {revision}")


@db_app.command("current")
@database_options
def db_current(target: Target) -> None:
    """Print the schema revision of the database, and whether an upgrade is due."""
    with target.engine(upgrade=False) as engine:
        revision = db.current_revision(engine)
    head = _head_revision()
    if revision is None:
        note = "no schema yet: run `jobbalancer db upgrade`"
    elif revision == head:
        note = "up to date"
    else:
        note = f"this version expects {head}: run `jobbalancer db upgrade`"
    formatting.out().print(f"{revision or 'none'} ({note})")


def _head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(db.MIGRATIONS)).get_current_head()


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
    worker_classes = _split_classes(classes)
    with target.engine() as engine, db.write(engine) as conn:
        user = auth.create_user(
            conn,
            name,
            role,
            password,
            commands_allowed=not scripts_only,
            worker_classes=worker_classes,
        )
    formatting.out().print(f"created user {escape(user.name)} (id {user.id}, role {user.role})")
    if not password_stdin:
        _print_secret("password (shown once):", password)


@users_app.command("list")
@database_options
def users_list(target: Target, as_json: JsonOpt = False) -> None:
    """List the users with their roles and limits."""
    with target.engine() as engine, db.read(engine) as conn:
        users = auth.list_users(conn)
    if as_json:
        formatting.print_json([_user_dict(u) for u in users])
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
        for u in users
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
    with target.engine() as engine, db.write(engine) as conn:
        user = auth.find_user(conn, name)
        auth.update_user(conn, user.id, {"password": password})
    formatting.out().print(f"new password set for {escape(user.name)}")
    if not password_stdin:
        _print_secret("password (shown once):", password)


# -- keys ---------------------------------------------------------------------------------

UserArg = Annotated[str, typer.Argument(help="Whose key: user name or id.", show_default=False)]


@keys_app.command("create")
@database_options
def keys_create(
    target: Target,
    user: UserArg,
    name: Annotated[
        str,
        opt("--name", env="KEY_NAME", help="A label to tell keys apart."),
    ] = "default",
) -> None:
    """Create an API key for a user; the key is printed once, as the last line."""
    with target.engine() as engine, db.write(engine) as conn:
        owner = auth.find_user(conn, user)
        record, key = auth.create_api_key(conn, owner.id, name)
    formatting.out().print(
        f"created API key {record.id} ({escape(record.name)}) for {escape(owner.name)}"
    )
    _print_secret("key (shown once):", key)


@keys_app.command("list")
@database_options
def keys_list(
    target: Target,
    user: Annotated[str, typer.Argument(help="Whose keys: user name or id.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """List a user's API keys (their prefixes; keys themselves are never stored)."""
    with target.engine() as engine, db.read(engine) as conn:
        owner = auth.find_user(conn, user)
        keys = auth.list_api_keys(conn, owner.id)
    if as_json:
        formatting.print_json([_key_dict(k) for k in keys])
        return
    rows = [
        [
            str(k.id),
            escape(k.name),
            k.prefix,
            formatting.when(k.created_at),
            formatting.when(k.last_used_at),
        ]
        for k in keys
    ]
    formatting.print_table(["id", "name", "prefix", "created", "last used"], rows, flexible="name")


@keys_app.command("revoke")
@database_options
def keys_revoke(
    target: Target,
    user: UserArg,
    key_id: Annotated[int, typer.Argument(help="The key's id (see `keys list`).", min=1)],
) -> None:
    """Revoke an API key: requests with it are refused from now on."""
    with target.engine() as engine, db.write(engine) as conn:
        owner = auth.find_user(conn, user)
        auth.revoke_api_key(conn, owner.id, key_id)
    formatting.out().print(f"revoked API key {key_id} of {escape(owner.name)}")


# -- helpers ------------------------------------------------------------------------------


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
    }
