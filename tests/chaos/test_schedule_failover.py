"""The leader SIGKILLed at a schedule's firing instant: after the other server takes the
lease, every occurrence has fired exactly once (none lost, none twice), each with its job
in the same transaction (no job without its occurrence row, no row without its job)."""

from __future__ import annotations

import itertools
import os
import signal
import time
from typing import Any

import pytest
import sqlalchemy as sa

from jobbalancer import db
from jobbalancer.db import schema
from tests.chaos.conftest import Cluster
from tests.chaos.test_server_faults import _leader, _pid_of, _start_second_server

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(180)]


def _fired(url: str) -> tuple[list[tuple[Any, int | None, str, int]], set[int]]:
    """(fire_at, job_id, outcome, late_ms) of every occurrence, and the ids of the jobs
    that carry the schedule, read from the database itself."""
    engine = db.connect(url, pool_size=1)
    try:
        with db.read(engine) as conn:
            o, j = schema.schedule_occurrences, schema.jobs
            occ = conn.execute(
                sa.select(o.c.fire_at, o.c.job_id, o.c.outcome, o.c.late_ms).order_by(o.c.fire_at)
            )
            jobs = conn.execute(sa.select(j.c.id).where(j.c.schedule_id.is_not(None)))
            return [tuple(r) for r in occ], set(jobs.scalars())
    finally:
        engine.dispose()


def test_leader_killed_at_a_firing_instant(make_cluster: Any, backend: str) -> None:
    # Given two servers and a schedule firing every second (no worker: its jobs wait)
    cluster: Cluster = make_cluster(backend)
    first = next(p for p in cluster.procs if p.name == "server")
    second, _ = _start_second_server(cluster)
    servers = {first.popen.pid: first, second.popen.pid: second}
    body = {"name": "tick", "cron": "* * * * * *", "overlap": "allow",
            "job": {"command": "true"}}  # fmt: skip
    r = cluster.api.post("/api/v1/schedules", json=body)
    assert r.status_code == 201, r.text
    cluster.wait_for(lambda: len(_fired(cluster.database_url)[0]) >= 3, "some occurrences")

    # When the leader is SIGKILLed right at a fire time (a few ms past a whole second)
    leader_pid = _pid_of(cluster.wait_for(lambda: _leader(cluster.database_url), "a leader"))
    assert leader_pid in servers
    time.sleep(1.004 - time.time() % 1)
    os.killpg(leader_pid, signal.SIGKILL)
    survivor = next(p for pid, p in servers.items() if pid != leader_pid)
    cluster.wait_for(
        lambda: _pid_of(_leader(cluster.database_url)) == survivor.popen.pid,
        "the other server to take the lease",
    )
    before = len(_fired(cluster.database_url)[0])
    cluster.wait_for(lambda: len(_fired(cluster.database_url)[0]) >= before + 3, "firing again")
    if survivor is second:  # stop it through the database: the API we hold was the leader's
        engine = db.connect(cluster.database_url, pool_size=1)
        with db.write(engine) as conn:
            s = schema.schedules
            conn.execute(sa.update(s).values(enabled=False, next_fire_at=None))
        engine.dispose()
    else:
        assert cluster.api.post("/api/v1/schedules/tick/pause").status_code == 200
    time.sleep(1)  # a firing that had begun ends (it would be counted below either way)

    # Then every second from the first occurrence to the last fired once, with its job
    occurrences, job_ids = _fired(cluster.database_url)
    times = [t for t, _, _, _ in occurrences]
    seconds = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert seconds and set(seconds) == {1.0}, f"a gap or a repeat: {seconds}"
    assert all(outcome == "fired" for _, _, outcome, _ in occurrences)
    assert {job for _, job, _, _ in occurrences} == job_ids
    late = max(ms for _, _, _, ms in occurrences)  # the failover's: late, not missed
    print(f"\n[schedules, {backend}] {len(times)} occurrences over a leader failover, each "
          f"fired once; the latest {late} ms after its time")  # fmt: skip
