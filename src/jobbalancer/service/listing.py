"""The job list: filters, newest first, in pages with an opaque cursor.

The cursor is the id the next page starts below, base64-encoded so clients treat it as
opaque (and we may change it). Ids only grow, so pages stay stable while jobs are added.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from jobbalancer import errors, jobs
from jobbalancer.db import schema
from jobbalancer.refs import parse_id
from jobbalancer.service.inputs import LABEL_KEY

J, W, C = schema.jobs, schema.workers, schema.worker_classes
_CURSOR_PREFIX = "jobs:"


@dataclass(frozen=True)
class Filters:
    """What to list; None means any. ``owner_id`` limits a submitter to their own jobs."""

    states: Sequence[str] | None = None
    worker: str | None = None
    worker_class: str | None = None
    user: str | None = None
    q: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    owner_id: int | None = None
    # These jobs only, or the retries of these jobs (both: ids, at most MAX_IDS each).
    ids: Sequence[int] | None = None
    retry_of: Sequence[int] | None = None
    # The jobs a schedule fired (and their retries).
    schedule_id: int | None = None


MAX_IDS = 500  # ids in one `id` or `retry_of` filter: a page's worth, and a URL's


def parse_states(text: str | None) -> list[str] | None:
    """``"running,waiting"`` → the states; InvalidInput naming ``state`` on an unknown one."""
    if not text or not text.strip():
        return None
    known = {s.value for s in jobs.State}
    states = [s.strip().lower() for s in text.split(",") if s.strip()]
    for s in states:
        if s not in known:
            raise errors.InvalidInput(
                f"state: unknown state {s!r}; use {', '.join(sorted(known))}", field="state"
            )
    return states


def parse_ids(text: str | None, field_name: str) -> list[int] | None:
    """``"41,42"`` → ``[41, 42]``; InvalidInput naming the field on anything else."""
    if not text or not text.strip():
        return None
    ids = [parse_id(part.strip()) for part in text.split(",") if part.strip()]
    if not ids or any(i is None for i in ids) or len(ids) > MAX_IDS:
        raise errors.InvalidInput(
            f"{field_name}: give 1 to {MAX_IDS} job ids, comma-separated", field=field_name
        )
    return [i for i in ids if i is not None]


def parse_labels(values: Sequence[str]) -> dict[str, str]:
    """``["project=x"]`` → ``{"project": "x"}``."""
    labels = {}
    for item in values:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or len(key) > 100 or not LABEL_KEY.fullmatch(key):
            raise errors.InvalidInput(
                f"label: {item!r} is not NAME=VALUE with a valid label name", field="label"
            )
        labels[key] = value
    return labels


def encode_cursor(job_id: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError):
        text = ""
    job_id = (
        parse_id(text.removeprefix(_CURSOR_PREFIX)) if text.startswith(_CURSOR_PREFIX) else None
    )
    if job_id is None:
        raise errors.InvalidInput("cursor: not a cursor this server gave out", field="cursor")
    return job_id


def _name_or_id(
    name_col: sa.ColumnElement[str], id_col: sa.ColumnElement[int], ref: str
) -> sa.ColumnElement[bool]:
    ref_id = parse_id(ref)
    if ref_id is None:
        return name_col == ref
    return sa.or_(name_col == ref, id_col == ref_id)


def _ref_ids(conn: sa.Connection, table: sa.Table, ref: str) -> list[int]:
    """The ids a worker or class reference stands for: rows named ``ref``, and ``ref``
    itself when it is an id (jobs keep the id of a worker that was removed). Looked up
    first, so the job query filters on the jobs' own indexed column instead of OR-ing
    across a join, which no index serves."""
    ids = list(conn.execute(sa.select(table.c.id).where(table.c.name == ref)).scalars())
    ref_id = parse_id(ref)
    return ids if ref_id is None else [*ids, ref_id]


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _conditions(conn: sa.Connection, f: Filters) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if f.owner_id is not None:
        where.append(J.c.user_id == f.owner_id)
    if f.states:
        where.append(J.c.state.in_(list(f.states)))
    if f.worker:
        where.append(J.c.worker_id.in_(_ref_ids(conn, W, f.worker)))
    if f.worker_class:
        where.append(J.c.worker_class_id.in_(_ref_ids(conn, C, f.worker_class)))
    if f.user:
        where.append(_name_or_id(J.c.user_name, J.c.user_id, f.user))
    if f.q:
        # lower() on both sides, so the database's own idea of case applies to both.
        pattern = sa.func.lower(sa.literal(_like_pattern(f.q)))
        where.append(
            sa.or_(
                sa.func.lower(J.c.command).like(pattern, escape="\\"),
                sa.func.lower(J.c.script_name).like(pattern, escape="\\"),
            )
        )
    for key, value in f.labels.items():
        where.append(J.c.labels[key].as_string() == value)
    if f.ids is not None:
        where.append(J.c.id.in_(list(f.ids)))
    if f.retry_of is not None:
        # A retry is newer than the job it retries: the id bound makes this a range scan
        # of the primary key (retry_of has no index of its own).
        where += [J.c.retry_of.in_(list(f.retry_of)), J.c.id > min(f.retry_of, default=0)]
    if f.schedule_id is not None:
        where.append(J.c.schedule_id == f.schedule_id)
    return where


def _select_without_bodies() -> sa.Select[Any]:
    # A script body can be megabytes and a list shows none of it: leave it in the database.
    query = jobs.select_jobs()
    columns = [
        sa.null().label(c.name) if c.name == "script_content" else c for c in query.selected_columns
    ]
    return query.with_only_columns(*columns, maintain_column_froms=False)


def page(
    conn: sa.Connection, filters: Filters, limit: int, cursor: str | None
) -> tuple[list[jobs.Job], str | None]:
    """One page of matching jobs, newest first, and the cursor of the next (None: last).

    The jobs come without ``script_content``; ask for one job to get it.
    """
    # The page's ids first, from the jobs table alone (its indexes, no join to sort
    # through), then those rows with their names: MariaDB otherwise joined first and
    # sorted every job (210 ms at 100 000 jobs).
    ids_query = sa.select(J.c.id).where(*_conditions(conn, filters))
    if cursor:
        ids_query = ids_query.where(J.c.id < decode_cursor(cursor))
    ids = list(conn.execute(ids_query.order_by(J.c.id.desc()).limit(limit + 1)).scalars())
    rows = conn.execute(_select_without_bodies().where(J.c.id.in_(ids[:limit]))).all()
    found = sorted((jobs.Job.from_row(r) for r in rows), key=lambda j: -j.id)
    more = len(ids) > limit
    return found, encode_cursor(ids[limit - 1]) if more else None
