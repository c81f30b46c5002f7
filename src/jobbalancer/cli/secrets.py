"""``jobbalancer secrets set|list|delete``: named secrets for jobs, through a server's API.

A value is read from standard input (or a terminal prompt that does not echo), never from
the command line, where other users of the machine could read it (``/proc/PID/cmdline``).
"""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer
from rich.markup import escape

from jobbalancer.cli import exits, formatting
from jobbalancer.cli.base import JsonOpt, Remote, app, opt, server_options

secrets_app = typer.Typer(
    help="Secrets for jobs (admins set them; values are never shown).", no_args_is_help=True
)
app.add_typer(secrets_app, name="secrets")


def _read_value(name: str) -> str:
    if sys.stdin.isatty():
        value = getpass.getpass(f"value of secret {name} (not shown): ")
    else:
        value = sys.stdin.read()
        # One trailing newline is the end of the line (echo, a file), not the value.
        value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        formatting.fail(exits.RET_USAGE, "the value is empty: give it on standard input")
    return value


def _names(given: str | None) -> list[str] | None:
    if given is None:
        return None
    return [n.strip() for n in given.split(",") if n.strip()]


@secrets_app.command("set")
@server_options
def set_secret(
    remote: Remote,
    name: Annotated[str, typer.Argument(help="The secret's name, e.g. prod-db.")],
    description: Annotated[
        str, opt("--description", "-d", env="SECRETS_DESCRIPTION", help="What it is for.")
    ] = "",
    classes: Annotated[
        str | None,
        opt(
            "--classes",
            env="SECRETS_CLASSES",
            help="Worker classes whose jobs may use it, comma-separated. Default: any.",
        ),
    ] = None,
    users: Annotated[
        str | None,
        opt(
            "--users",
            env="SECRETS_USERS",
            help="Users whose jobs may use it, comma-separated. Default: anyone who submits.",
        ),
    ] = None,
) -> None:
    """Create a secret or replace it (value, description and limits).

    The value is read from standard input (a prompt on a terminal), never an argument:
    printf %s "$PW" | jobbalancer secrets set prod-db
    """
    value = _read_value(name)
    with remote.client() as c:
        _, created = c.set_secret(
            name, value, description=description, worker_classes=_names(classes),
            users=_names(users),
        )  # fmt: skip
    formatting.out().print(f"secret {escape(name)} {'created' if created else 'replaced'}")


@secrets_app.command("list")
@server_options
def list_secrets(remote: Remote, as_json: JsonOpt = False) -> None:
    """The secrets you may see (admins and operators: all), with their limits."""
    with remote.client() as c:
        found = c.secrets()
    if as_json:
        formatting.print_json(found)
        return
    if not found:
        formatting.out().print("no secrets yet: an admin adds them (jobbalancer secrets set)")
        return
    rows = [
        [
            escape(str(s.get("name", ""))),
            escape(", ".join(s.get("worker_classes") or []) or "any"),
            escape(", ".join(s.get("users") or []) if s.get("users") is not None else "anyone"),
            escape(str(s.get("updated_by") or "")),
            formatting.when(s.get("updated_at")),
            escape(str(s.get("description") or "")),
        ]
        for s in found
    ]
    columns = ["name", "classes", "users", "by", "updated", "description"]
    formatting.print_table(columns, rows, flexible="description")


@secrets_app.command("delete")
@server_options
def delete_secret(
    remote: Remote, name: Annotated[str, typer.Argument(help="The secret's name.")]
) -> None:
    """Delete a secret. Jobs that name it and have not started fail when they would."""
    with remote.client() as c:
        c.delete_secret(name)
    formatting.out().print(f"secret {escape(name)} deleted")
