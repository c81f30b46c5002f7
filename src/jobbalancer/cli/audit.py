"""`jobbalancer audit`: the audit log through a server's API (an admin's key): who changed
what, when, how and from where."""

from __future__ import annotations

from typing import Annotated

from rich.markup import escape

from jobbalancer.cli import formatting
from jobbalancer.cli.base import JsonOpt, Remote, app, opt, server_options


@app.command("audit")
@server_options
def audit_list(
    remote: Remote,
    since: Annotated[
        str | None,
        opt(
            "--since",
            env="AUDIT_SINCE",
            help="From this long ago (90s, 30m, 1h, 7d, 2w) or this time (2027-03-01T12:00Z).",
        ),
    ] = None,
    until: Annotated[
        str | None,
        opt("--until", env="AUDIT_UNTIL", help="Before this long ago or this time."),
    ] = None,
    user: Annotated[
        str | None,
        opt(
            "--user",
            "-u",
            env="AUDIT_USER",
            help="Only what this user did (name or id; `local` for local commands).",
        ),
    ] = None,
    action: Annotated[
        str | None,
        opt(
            "--action",
            "-a",
            env="AUDIT_ACTION",
            help="Only this action (job.kill), or an object's every one (job).",
        ),
    ] = None,
    object_: Annotated[
        str | None,
        opt(
            "--object",
            "-o",
            env="AUDIT_OBJECT",
            help="Only this object: TYPE, TYPE:ID or TYPE:NAME (job:812, script:backup).",
        ),
    ] = None,
    limit: Annotated[
        int,
        opt("--limit", "-n", env="AUDIT_LIMIT", min=1, help="At most this many."),
    ] = 100,
    full: Annotated[
        bool,
        opt(
            "--full",
            env="AUDIT_FULL",
            help="Each entry's whole summary (a script edit's diff), not its first line.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List audit log entries, newest first (admins only)."""
    with remote.client() as c:
        found = list(
            c.audit(actor=user, action=action, object=object_, since=since, until=until,
                    limit=limit)
        )  # fmt: skip
    if as_json:
        formatting.print_json(found)
        return
    if not found:
        formatting.out().print("no audit entries match")
        return
    rows = [
        [
            formatting.when(e.get("at")),
            escape(str(e.get("actor_name", ""))),
            escape(str(e.get("via", ""))),
            escape(str(e.get("address", ""))),
            escape(str(e.get("action", ""))),
            escape(_object(e)),
            escape(_summary(str(e.get("summary", "")), full)),
        ]
        for e in found
    ]
    columns = ["time", "user", "how", "address", "action", "object", "summary"]
    formatting.print_table(columns, rows, flexible="summary")


def _summary(text: str, full: bool) -> str:
    if full:
        return text.rstrip("\n")
    first, _, rest = text.partition("\n")
    return first + (" …" if rest.strip() else "")


def _object(e: dict[str, object]) -> str:
    parts = [str(e.get("object_type", ""))]
    if e.get("object_id") is not None:
        parts.append(str(e["object_id"]))
    if e.get("object_name"):
        parts.append(str(e["object_name"]))
    return " ".join(parts)
