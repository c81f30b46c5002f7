"""The job list's `id` and `retry_of` filters on every backend (what `jobbalancer parallel`
follows a run by)."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from jobbalancer import db, jobs
from jobbalancer.jobs import State
from jobbalancer.service import listing


def _ids(engine: sa.Engine, **filters: object) -> list[int]:
    with db.read(engine) as conn:
        found, _ = listing.page(conn, listing.Filters(**filters), 500, None)  # type: ignore[arg-type]
    return [j.id for j in found]


def test_ids_and_retries_of(
    engine: sa.Engine, job_factory: Callable[..., int], worker_factory: Callable[[str], int]
) -> None:
    worker = worker_factory("w1")
    first, second, third = (job_factory(retries=1) for _ in range(3))
    with db.write(engine) as conn:
        assert jobs.assign(conn, first, worker)
        token = jobs.get(conn, first).token
        assert token is not None and jobs.claim(conn, first, worker, token)
        assert jobs.finish(conn, first, token, State.FAILED, exit_code=1)
    assert _ids(engine, ids=[third, first, 10**9]) == [third, first]
    assert _ids(engine, ids=[first, second], states=["waiting"]) == [second]
    retry = _ids(engine, retry_of=[first, second, third])
    assert len(retry) == 1 and retry[0] > third
    assert _ids(engine, retry_of=[second]) == []
    assert _ids(engine, ids=[first], owner_id=12345) == []
