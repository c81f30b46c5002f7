"""``jobbalancer notify targets|test|deliveries``: notification targets and how their
deliveries went, through a server's API."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from jobbalancer.cli import formatting
from jobbalancer.cli.base import JsonOpt, Remote, app, opt, server_options
from jobbalancer.cli.exits import RET_ERROR

notify_app = typer.Typer(
    help="Notifications: targets, test sends, deliveries.", no_args_is_help=True
)
app.add_typer(notify_app, name="notify")


@notify_app.command("targets")
@server_options
def targets(remote: Remote, as_json: JsonOpt = False) -> None:
    """List the notification targets (secrets are never shown)."""
    with remote.client() as c:
        found = c.notification_targets()
    if as_json:
        formatting.print_json(found)
        return
    if not found:
        formatting.out().print(
            "no notification targets yet: an admin adds them on the Notifications page"
        )
        return
    rows = [
        [
            str(t.get("id", "")),
            escape(str(t.get("name", ""))),
            str(t.get("kind", "")),
            escape(str(t.get("url") or ", ".join(t.get("recipients") or []) or "")),
            "yes" if t.get("has_secret") else "no",
            str(t.get("delivered", 0)),
            str(t.get("failures", 0)),
        ]
        for t in found
    ]
    columns = ["id", "name", "kind", "where", "secret", "delivered", "failures"]
    formatting.print_table(columns, rows, flexible="where")


@notify_app.command("test")
@server_options
def test(
    remote: Remote,
    target: Annotated[str, typer.Argument(help="The target's name or id.")],
) -> None:
    """Send a test notification to a target now, and say whether it went through."""
    with remote.client() as c:
        result = c.test_notification_target(target)
    if result.get("delivered"):
        formatting.out().print(f"test notification delivered to {escape(target)}")
        return
    formatting.err().print(
        f"[red]test notification to {escape(target)} failed:[/] {escape(str(result.get('error')))}"
    )
    raise typer.Exit(RET_ERROR)


@notify_app.command("deliveries")
@server_options
def deliveries(
    remote: Remote,
    job: Annotated[
        int | None, opt("--job", env="NOTIFY_JOB", min=1, help="Only this job's.")
    ] = None,
    target: Annotated[
        str | None, opt("--target", env="NOTIFY_TARGET", help="Only this target's.")
    ] = None,
    state: Annotated[
        str | None, opt("--state", env="NOTIFY_STATE", help="pending, delivered or failed.")
    ] = None,
    limit: Annotated[
        int, opt("--limit", "-n", env="NOTIFY_LIMIT", min=1, max=500, help="At most this many.")
    ] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Recent notifications and their delivery, newest first (a job's, or all: admins)."""
    with remote.client() as c:
        found = c.notifications(job=job, target=target, state=state, limit=limit)
    if as_json:
        formatting.print_json(found)
        return
    if not found:
        formatting.out().print("no notifications match")
        return
    rows = [
        [
            str(n.get("id", "")),
            str(n.get("job_id", "")),
            escape(str(n.get("target") or "(deleted)")),
            str(n.get("event", "")),
            formatting.state(str(n.get("state", ""))),
            str(n.get("attempts", 0)),
            formatting.when(n.get("delivered_at") or n.get("created_at")),
            escape(str(n.get("last_error") or "")),
        ]
        for n in found
    ]
    columns = ["id", "job", "target", "event", "state", "tries", "when", "last error"]
    formatting.print_table(columns, rows, flexible="last error")
