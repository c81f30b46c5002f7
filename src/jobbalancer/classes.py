"""Worker classes: named groups of workers, each with a default limit of jobs per worker.

Jobs are submitted to a class and run only on its workers. The class ``default`` always
exists: it cannot be renamed or deleted, so a fresh worker and a plain submission always
have somewhere to go.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from jobbalancer import db, errors, jobs, refs
from jobbalancer.db import schema
from jobbalancer.db.types import AnyRow

C, W, J = schema.worker_classes, schema.workers, schema.jobs
DEFAULT = "default"
MAX_JOBS_LIMIT = 10_000


@dataclass(frozen=True)
class WorkerClass:
    """A worker class as read from the database."""

    id: int
    name: str
    max_jobs: int
    description: str
    # Placement: what its jobs request unless they say; None: nothing.
    requests: Mapping[str, Any] | None = None

    @classmethod
    def from_row(cls, row: AnyRow) -> WorkerClass:
        m = row._mapping
        return cls(
            id=m["id"], name=m["name"], max_jobs=m["max_jobs"], description=m["description"],
            requests=m["requests"] or None,
        )  # fmt: skip


def list_all(conn: sa.Connection) -> list[WorkerClass]:
    return [WorkerClass.from_row(r) for r in conn.execute(sa.select(C).order_by(C.c.name))]


def get(conn: sa.Connection, class_id: int) -> WorkerClass:
    row = conn.execute(sa.select(C).where(C.c.id == class_id)).first()
    if row is None:
        raise errors.NotFound(f"worker class {class_id} does not exist")
    return WorkerClass.from_row(row)


# Every submission looks its class up: statements built once (building and cache-keying
# one cost more than running it).
_BY_NAME = sa.select(C).where(C.c.name == sa.bindparam("b_name"))
_BY_ID = sa.select(C).where(C.c.id == sa.bindparam("b_id"))


def find(conn: sa.Connection, ref: str | int, *, field: str = "worker_class") -> WorkerClass:
    """A class by name, or by id; InvalidInput naming ``field`` when there is none (as
    :func:`refs.find_row`: the name first)."""
    row = None
    if isinstance(ref, str):
        row = conn.execute(_BY_NAME, {"b_name": ref.strip()}).first()
    row_id = refs.parse_id(ref)
    if row is None and row_id is not None:
        row = conn.execute(_BY_ID, {"b_id": row_id}).first()
    if row is None:
        raise errors.InvalidInput(f"worker class {ref!r} does not exist", field=field)
    return WorkerClass.from_row(row)


def _check_max_jobs(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.InvalidInput("max_jobs must be an integer", field="max_jobs")
    if not 1 <= value <= MAX_JOBS_LIMIT:
        raise errors.InvalidInput(f"max_jobs must be 1 to {MAX_JOBS_LIMIT}", field="max_jobs")
    return value


def create(
    conn: sa.Connection,
    name: str,
    max_jobs: int = 5,
    description: str = "",
    *,
    requests: Mapping[str, Any] | None = None,
) -> WorkerClass:
    """Create a class; Conflict when the name is taken."""
    name = refs.check_name(name, "worker class")
    refs.ensure_free_name(conn, C, name, "worker class")
    try:
        result = conn.execute(
            sa.insert(C).values(
                name=name,
                max_jobs=_check_max_jobs(max_jobs),
                description=description,
                requests=dict(requests) if requests else None,
            )
        )
    except sa.exc.IntegrityError as exc:  # created by someone else since the check
        raise errors.Conflict(f"worker class {name!r} already exists", field="name") from exc
    key = result.inserted_primary_key
    assert key is not None
    return get(conn, int(key[0]))


def update(conn: sa.Connection, class_id: int, changes: Mapping[str, Any]) -> WorkerClass:
    """Change name, max_jobs or description; ``default`` keeps its name."""
    current = get(conn, class_id)
    values: dict[str, Any] = {}
    if "name" in changes:
        name = refs.check_name(changes["name"], "worker class")
        if name != current.name:
            if current.name == DEFAULT:
                raise errors.Conflict("the class 'default' cannot be renamed", field="name")
            refs.ensure_free_name(conn, C, name, "worker class", except_id=class_id)
            values["name"] = name
    if "max_jobs" in changes:
        values["max_jobs"] = _check_max_jobs(changes["max_jobs"])
    if "description" in changes:
        values["description"] = str(changes["description"])
    if "requests" in changes:
        values["requests"] = dict(changes["requests"]) if changes["requests"] else None
    if values:
        try:
            conn.execute(sa.update(C).where(C.c.id == class_id).values(**values))
        except sa.exc.IntegrityError as exc:
            raise errors.Conflict(f"worker class {values.get('name')!r} exists") from exc
    return get(conn, class_id)


def delete(conn: sa.Connection, class_id: int) -> None:
    """Delete a class that no worker and no pending or running job uses.

    Finished jobs of the class are filed under ``default`` (their record stays whole
    otherwise), since a job row must name an existing class.
    """
    current = get(conn, class_id)
    if current.name == DEFAULT:
        raise errors.Conflict("the class 'default' cannot be deleted")
    # Submissions take this lock: none can put a job into the class while we look.
    db.lock_row(conn, "assign")
    n_workers = _count(conn, W, W.c.worker_class_id == class_id)
    if n_workers:
        raise errors.Conflict(
            f"worker class {current.name!r} has {n_workers} worker(s): "
            "move them to another class or remove them first"
        )
    unfinished = [
        s.value for s in (jobs.State.HELD, jobs.State.DELAYED, jobs.State.WAITING, *jobs.ACTIVE)
    ]
    n_jobs = _count(conn, J, J.c.worker_class_id == class_id, J.c.state.in_(unfinished))
    if n_jobs:
        raise errors.Conflict(
            f"worker class {current.name!r} has {n_jobs} held, delayed, waiting, assigned or "
            "running job(s): let them finish or kill them first"
        )
    jobs.move_finished(conn, class_id, find(conn, DEFAULT).id)
    try:
        conn.execute(sa.delete(C).where(C.c.id == class_id))
    except sa.exc.IntegrityError as exc:  # a worker registered into it meanwhile
        raise errors.Conflict(f"worker class {current.name!r} is in use") from exc


def _count(conn: sa.Connection, table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
    query = sa.select(sa.func.count()).select_from(table).where(*where)
    return int(conn.execute(query).scalar_one())
