"""The dashboard's figures: finished jobs per minute, done and failures apart, on every
backend."""

from __future__ import annotations

import time
from datetime import timedelta

import sqlalchemy as sa

from jobbalancer import db, jobs, stats
from jobbalancer.web.routes import dashboard
from tests.web.conftest import Web


def _finished(web: Web, state: str, minutes_ago: float) -> None:
    """A job that ended ``minutes_ago`` (the worker's part, played in the database)."""
    r = web.browser().post(
        "/api/v1/jobs",
        json={"command": "true"},
        headers={"Authorization": f"Bearer {web.admin_key}"},
    )
    assert r.status_code == 201
    with db.write(web.engine) as conn:
        at = db.now(conn) - timedelta(minutes=minutes_ago)
        conn.execute(
            sa.update(jobs.J)
            .where(jobs.J.c.id == r.json()["id"])
            .values(state=state, finished_at=at)
        )


def test_finished_jobs_are_counted_in_their_minute(web: Web) -> None:
    with db.read(web.engine) as conn:
        now = db.now(conn)
    if now.second >= 50:  # the minute would turn while the test runs: start in the next
        time.sleep(61 - now.second)
        with db.read(web.engine) as conn:
            now = db.now(conn)
    # Minutes are whole minutes: keep clear of their edges, whatever the second is now.
    offset = now.second / 60 + now.microsecond / 60e6
    for state, ago in [("done", 0), ("done", 0), ("failed", 0), ("timeout", 3), ("lost", 3),
                       ("killed", 59), ("done", 61), ("occupied", 0)]:  # fmt: skip
        _finished(web, state, ago + offset * 0.5 if ago else offset * 0.5)
    with db.read(web.engine) as conn:
        minutes = stats.per_minute(conn)
    assert len(minutes) == 60
    assert [m.start for m in minutes] == sorted(m.start for m in minutes)
    assert (minutes[-1].done, minutes[-1].failed) == (2, 1)  # occupied never ran: not counted
    assert (minutes[-4].done, minutes[-4].failed) == (0, 2)
    assert (minutes[0].done, minutes[0].failed) == (0, 1)  # 59 minutes ago: the oldest
    assert sum(m.done for m in minutes) == 2  # 61 minutes ago is out of the hour
    assert sum(m.failed for m in minutes) == 4

    chart = dashboard.chart(minutes)
    assert len(chart["bars"]) == 60
    assert chart["ticks"][-1][1] == 4  # the busiest minute (3) rounded up to a nice top
    last = chart["bars"][-1]
    assert last.ok_h == 2 * last.bad_h > 0
