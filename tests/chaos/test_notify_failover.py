"""The leader SIGKILLed after a job's end (and its notification) is committed and before
the notification went out: the server that takes over delivers it, once."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
import sqlalchemy as sa

from jobbalancer import db, errors
from jobbalancer.db import schema
from tests.chaos.conftest import Cluster
from tests.chaos.test_server_faults import _leader, _pid_of, _start_second_server
from tests.receivers import webhook

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(120)]


def _notifications(url: str) -> list[sa.Row[Any]]:
    engine = db.connect(url)
    try:
        with db.read(engine) as conn:
            return list(conn.execute(sa.select(schema.notifications)))
    finally:
        engine.dispose()


def _freeze_holding_no_lock(pgid: int, url: str) -> None:
    """SIGSTOP the process group at a moment it holds neither SQLite's write lock nor the
    assign lock's row: frozen inside its tick's transaction, it would stop the worker from
    recording the job's end (a stopped writer's locks stay held, as on any database), and
    the test would wait for that instead of the failover it is about."""
    engine = db.connect(url, pool_size=1)
    try:
        for _ in range(200):
            os.killpg(pgid, signal.SIGSTOP)
            if _locks_free(engine):
                return
            os.killpg(pgid, signal.SIGCONT)
            time.sleep(0.02)
        raise AssertionError("the leader never stood outside a write transaction")
    finally:
        engine.dispose()


def _locks_free(engine: sa.Engine) -> bool:
    try:
        with db.write(engine, wait=0.0) as conn:  # SQLite: BEGIN IMMEDIATE, no waiting
            lock = sa.select(schema.locks.c.name).where(schema.locks.c.name == "assign")
            conn.execute(lock.with_for_update(nowait=True)).all()
    except (sa.exc.OperationalError, errors.DatabaseUnavailable):  # locked
        return False
    return True


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_notification_committed_before_the_leader_died_is_delivered_after_failover(
    make_cluster: Any, backend: str
) -> None:
    cluster: Cluster = make_cluster(backend)
    first = next(p for p in cluster.procs if p.name == "server")
    second, _ = _start_second_server(cluster)
    servers = {first.popen.pid: first, second.popen.pid: second}
    cluster.start_worker("w", "--allow-root")
    with webhook(secret="s3cret") as hook:
        spec = {"name": "ops-hook", "kind": "webhook", "url": hook.url, "secret": "s3cret"}
        assert cluster.api.post("/api/v1/notification-targets", json=spec).status_code == 201
        leader = _pid_of(cluster.wait_for(lambda: _leader(cluster.database_url), "a leader"))
        assert leader in servers
        job = cluster.submit(
            command="sleep 1; exit 4", notify=[{"on": ["failed"], "target": "ops-hook"}]
        )
        # The leader is frozen before the job ends: it cannot deliver what gets committed.
        _freeze_holding_no_lock(leader, cluster.database_url)
        [row] = cluster.wait_for(
            lambda: _notifications(cluster.database_url), "the job's end and its notification"
        )
        assert row.job_id == job["id"] and row.event == "failed"
        os.killpg(leader, signal.SIGKILL)
        survivor = next(p for pid, p in servers.items() if pid != leader)
        cluster.wait_for(
            lambda: _pid_of(_leader(cluster.database_url)) == survivor.popen.pid,
            "the other server to take over",
        )
        [got] = hook.wait(1, timeout=30)
        assert got.signature_ok and got.body["job_id"] == job["id"]
        assert got.headers["idempotency-key"] == row.key
        cluster.wait_for(
            lambda: _notifications(cluster.database_url)[0].state == "delivered", "delivered"
        )
        assert len(hook.wait(2, timeout=1)) == 1  # once


def test_a_delivery_in_flight_when_the_leader_dies_is_sent_again_with_the_same_key(
    make_cluster: Any,
) -> None:
    cluster: Cluster = make_cluster("sqlite", server=False)
    cluster.env["JOBBALANCER_NOTIFY_DELIVERY_LEASE"] = "20"  # the shortest allowed
    first = cluster.start_server()
    second, _ = _start_second_server(cluster)
    servers = {first.popen.pid: first, second.popen.pid: second}
    cluster.start_worker("w", "--allow-root")
    with webhook(hang_first=True) as hook:
        spec = {"name": "ops-hook", "kind": "webhook", "url": hook.url}
        assert cluster.api.post("/api/v1/notification-targets", json=spec).status_code == 201
        job = cluster.submit(command="exit 0", notify=[{"on": ["done"], "target": "ops-hook"}])
        cluster.wait_for(lambda: hook.hung, "the delivery in flight", timeout=30)
        leader = _pid_of(_leader(cluster.database_url))
        assert leader in servers
        os.killpg(leader, signal.SIGKILL)
        # Sent again once the dead server's lease has run out
        [got] = hook.wait(1, timeout=40)
        assert got.body["job_id"] == job["id"]
        assert got.headers["idempotency-key"] == hook.hung[0]
        assert len(hook.wait(2, timeout=1)) == 1  # one duplicate at most
