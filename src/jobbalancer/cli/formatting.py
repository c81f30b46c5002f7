"""What the commands print: consoles, tables, the job table, one job in full, times, JSON.

Everything but the printers (``out``, ``err``, ``fail``, ``print_*``) returns text or a
``rich`` renderable, so the shape of the output is tested without a server
(tests/unit/test_cli_format.py).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text


def out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def fail(code: int, message: str) -> NoReturn:
    err().print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str), flush=True)


# -- tables -------------------------------------------------------------------------------

# Each column of a table has a space of padding either side, and one between columns.
_PER_COLUMN = 3


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]], flexible: str) -> None:
    """One row per line: every column as wide as its content, except ``flexible``, which
    gets what is left of the terminal and cuts long cells short with an ellipsis."""
    console = Console(highlight=False)
    by_name = [dict(zip(columns, row, strict=True)) for row in rows]
    widths = _widths(columns, by_name)
    fixed = sum(widths[c] + _PER_COLUMN for c in columns if c != flexible)
    room = max(len(flexible), console.width - fixed - _PER_COLUMN)
    console.print(_table(columns, by_name, widths, flexible, room))


def _widths(columns: Iterable[str], rows: Sequence[Mapping[str, str]]) -> dict[str, int]:
    """Each column's widest cell (markup not counted), or its heading if wider."""
    return {c: max([len(c), *(Text.from_markup(row[c]).cell_len for row in rows)]) for c in columns}


def _table(
    columns: Sequence[str],
    rows: Sequence[Mapping[str, str]],
    widths: Mapping[str, int],
    flexible: str,
    room: int,
) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in columns:
        if column == flexible:
            table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=room)
        else:
            table.add_column(column, no_wrap=True, min_width=widths[column])
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    return table


# -- the job table ------------------------------------------------------------------------

JOB_COLUMNS = ("id", "state", "user", "worker", "class", "what", "created", "took", "exit")
# Left out, in this order, while the table does not fit: the columns read least. id,
# state, what, created and exit always show (--json has everything).
_OPTIONAL = ("class", "user", "took", "worker")
_WHAT_AT_LEAST = 24  # characters of the command a person needs to tell jobs apart


def job_table(jobs: Sequence[Mapping[str, Any]], width: int, now: datetime | None = None) -> Table:
    """The jobs as a table ``width`` columns wide. The command ("what"), the column a
    person reads first, gets at least ``max(24, 2/5 of the width)`` (less only if no
    command is that long); optional columns make way for it. Cut with "…", never wrapped.
    """
    now = now or datetime.now(UTC)
    rows = [_job_cells(job, now) for job in jobs]
    widths = _widths(JOB_COLUMNS, rows)
    want = min(widths["what"], max(_WHAT_AT_LEAST, width * 2 // 5))
    shown = list(JOB_COLUMNS)
    for column in _OPTIONAL:
        if _room(shown, widths, width) >= want:
            break
        shown.remove(column)
    return _table(shown, rows, widths, "what", max(want, _room(shown, widths, width)))


def _room(shown: Sequence[str], widths: Mapping[str, int], width: int) -> int:
    """What is left for "what" in ``width`` beside the other ``shown`` columns. A table of
    n columns takes its cells plus 3n - 1: a space either side of each cell and one
    between columns, less the padding at the outer edges, plus the two edges."""
    others = sum(widths[c] for c in shown if c != "what")
    return width - others - (_PER_COLUMN * len(shown) - 1)


def _job_cells(job: Mapping[str, Any], now: datetime) -> dict[str, str]:
    return {
        "id": str(job["id"]),
        "state": state(job["state"]) + _starts_cell(job, now),
        "user": escape(str(job.get("user") or "")),
        "worker": escape(name(job.get("worker"))),
        "class": escape(name(job.get("worker_class"))),
        "what": escape(what(job)) + _why(job),
        "created": short_when(job.get("created_at"), now.astimezone().date()),
        "took": took(job, now),
        "exit": "" if job.get("exit_code") is None else str(job["exit_code"]),
    }


def _why(job: Mapping[str, Any]) -> str:
    """Why a job that has not started waits, dimmed after what it runs."""
    reason = job.get("pending_reason")
    return f" [dim]({escape(str(reason))})[/]" if reason else ""


# -- one job in full ----------------------------------------------------------------------

HIDDEN_NOTE = "(values hidden: only the job's owner and admins see them)"


def show_rows(job: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``job`` as (label, text) rows for a person: nothing empty (no None, "", [] or {}),
    maps one ``K=V`` a line, parameters as one shell-quoted line, times local. A delayed
    job's row "starts" follows its state (``starts at …``, or ``attempt 2 of 4, next try
    at …``)."""
    rows = []
    for key, value in job.items():
        if not _empty(value):
            rows.append((key, _shown(key, value)))
        if key == "state" and (text := starts(job)):
            rows.append(("starts", text))
    return rows


# -- starting later -----------------------------------------------------------------------


def starts(job: Mapping[str, Any], today: date | None = None) -> str:
    """When a delayed job starts: ``starts at 2026-12-24 18:00:00``, or for a retry that
    waits ``attempt 2 of 4, next try at …`` (local times; with ``today``, short ones).
    "" for any other job."""
    at = parse_time(job.get("not_before"))
    if job.get("state") != "delayed" or at is None:
        return ""
    shown = short_when(at, today) if today else at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if job.get("retry_of") is not None:
        total = int(job.get("retries") or 0) + 1
        return f"attempt {job.get('attempt')} of {total}, next try at {shown}"
    return f"starts at {shown}"


def _starts_cell(job: Mapping[str, Any], now: datetime) -> str:
    text = starts(job, now.astimezone().date())
    return f" [dim]{escape(text)}[/]" if text else ""


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


def _shown(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in ("parents", "children") and isinstance(value, list):
        return link_lines(value)
    if isinstance(value, list):
        return shlex.join(map(str, value))
    if key == "env" and isinstance(value, dict):
        return env_lines(value)
    if isinstance(value, dict) and key != "labels" and set(value) == {"id", "name"}:
        return f"{value['name']} (id {value['id']})"
    if isinstance(value, dict):
        return "\n".join(f"{k}={v}" for k, v in value.items())
    if key == "memory" and isinstance(value, int):
        return _size(value)
    if key.endswith("_at") and (parsed := parse_time(value)):
        return parsed.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def link_lines(links: Sequence[Mapping[str, Any]]) -> str:
    """A job's parents or children, one a line: ``job 41  on success  done``."""
    return "\n".join(
        f"job {k.get('id')}  on {k.get('on')}  {k.get('state') or 'deleted'}" for k in links
    )


def env_lines(env: Mapping[str, Any]) -> str:
    """One NAME=value a line; the server masks values that are not the caller's."""
    lines = [f"{k}={v}" for k, v in env.items()]
    if any(v == "****" for v in env.values()):
        lines.append(HIDDEN_NOTE)
    return "\n".join(lines)


# -- cells --------------------------------------------------------------------------------

_STATE_STYLE = {
    "waiting": "cyan",
    "assigned": "cyan",
    "running": "bold blue",
    "done": "green",
    "failed": "red",
    "timeout": "red",
    "killed": "magenta",
    "lost": "yellow",
    "occupied": "yellow",
    "held": "cyan",
    "skipped": "magenta",
    "delayed": "cyan",
    "online": "green",
    "draining": "yellow",
    "offline": "dim",
    "disabled": "dim",
}


def state(value: str) -> str:
    style = _STATE_STYLE.get(value, "")
    return f"[{style}]{escape(value)}[/]" if style else escape(value)


def name(value: Any) -> str:
    """A {"id", "name"} reference, or a plain name."""
    if isinstance(value, dict):
        return str(value.get("name") or value.get("id") or "")
    return "" if value is None else str(value)


def what(job: Mapping[str, Any]) -> str:
    """The command, or the script and its parameters, on one line."""
    if job.get("command"):
        text = str(job["command"])
    else:
        text = shlex.join([name(job.get("script")), *map(str, job.get("params") or [])])
    return " ".join(text.split())


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def when(value: Any) -> str:
    """A time in the local zone, to the second (month-day hour:minute:second)."""
    parsed = parse_time(value)
    return parsed.astimezone().strftime("%m-%d %H:%M:%S") if parsed else ""


def short_when(value: Any, today: date) -> str:
    """A time in the local zone in eight or eleven characters: the time of day for
    ``today``, else month-day hour:minute."""
    parsed = parse_time(value)
    if parsed is None:
        return ""
    local = parsed.astimezone()
    return local.strftime("%H:%M:%S" if local.date() == today else "%m-%d %H:%M")


def iso(value: datetime | None) -> str | None:
    parsed = parse_time(value)
    return parsed.isoformat().replace("+00:00", "Z") if parsed else None


def took(job: Mapping[str, Any], now: datetime | None = None) -> str:
    """How long the job ran, or has been running by ``now``."""
    start = parse_time(job.get("started_at"))
    if start is None:
        return ""
    end = parse_time(job.get("finished_at")) or now or datetime.now(UTC)
    seconds = max(0.0, (end - start).total_seconds())
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def cell(value: Any) -> str:
    """Any value in a table cell: a reference by name and id, other maps and lists as JSON."""
    if value is None:
        return ""
    if isinstance(value, dict) and set(value) == {"id", "name"}:
        return f"{value['name']} (id {value['id']})"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _size(size: int) -> str:
    """A job's requested memory: ``512 MiB``, ``2 GiB``."""
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} B"
