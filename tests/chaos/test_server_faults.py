"""Faults 2 and 5: a server SIGKILLed under load and restarted; two servers on one database,
the balancing one killed."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from jobbalancer import db
from jobbalancer.db import schema
from tests.chaos.conftest import (
    Cluster,
    Marks,
    Proc,
    check_nothing_lost_or_doubled,
    count_states,
    free_port,
    rows,
)

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(180)]
BACKENDS = ["sqlite", "postgresql"]


def _submit_batch(cluster: Cluster, marks: Marks, ns: range, **extra: Any) -> dict[int, int]:
    specs = [{"command": marks.command(n, "sleep 0.1; "), **extra} for n in ns]
    r = cluster.api.post("/api/v1/jobs/batch", json={"jobs": specs})
    assert r.status_code == 201, r.text
    return {j["id"]: n for n, j in zip(ns, r.json()["jobs"], strict=True)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_server_sigkilled_under_load_then_restarted(
    make_cluster: Any, backend: str, marks: Marks
) -> None:
    # Given two workers and a backlog of 400 jobs (each may be retried once)
    cluster: Cluster = make_cluster(backend)
    workers = {n: cluster.start_worker(n, "--allow-root", "--max-jobs", "4") for n in "ab"}
    submitted = _submit_batch(cluster, marks, range(400), retries=1)
    cluster.wait_for(lambda: marks.total() >= 40, "some jobs done", timeout=60)

    # When the server is SIGKILLed
    server = next(p for p in cluster.procs if p.name == "server")
    b = cluster.worker("b")
    assert b is not None
    os.killpg(server.popen.pid, signal.SIGKILL)
    server.popen.wait(timeout=10)
    done_at_kill = count_states(cluster.database_url)["done"]

    # Then the workers keep running and recording jobs without it
    cluster.wait_for(
        lambda: count_states(cluster.database_url)["done"] >= done_at_kill + 40,
        "jobs recorded while the server is down",
        timeout=60,
    )
    done_while_down = count_states(cluster.database_url)["done"] - done_at_kill
    assert all(w.popen.poll() is None for w in workers.values())
    # and a worker dying meanwhile has nobody to notice, until a server is back
    os.killpg(workers["b"].popen.pid, signal.SIGKILL)
    on_b = [r.id for r in rows(cluster.database_url)
            if r.worker_id == b["id"] and r.state in ("assigned", "running")]  # fmt: skip

    # After a restart, its jobs are recovered, everything waiting is balanced again,
    # new jobs too; nothing is lost and nothing ran twice but by the retry policy
    restarted_at = time.monotonic()
    cluster.start_server()
    up_after = time.monotonic() - restarted_at
    submitted |= _submit_batch(cluster, marks, range(400, 500))
    cluster.wait_for(lambda: cluster.worker("b", "offline"), "b offline", timeout=30)

    def all_final() -> bool:
        return all(r.state in ("done", "lost") for r in rows(cluster.database_url))

    cluster.wait_for(all_final, "all done", timeout=120)
    retried = {first for first, n in submitted.items() if n < 400}
    figures = check_nothing_lost_or_doubled(cluster.database_url, marks, submitted,
                                            retried=retried)  # fmt: skip
    final = rows(cluster.database_url)
    last = {r.retry_of for r in final if r.retry_of is not None}
    assert all(r.state == "done" for r in final if r.id not in last)  # every chain ends done
    assert {r.id for r in final if r.state == "lost"} <= set(on_b)
    print(
        f"\n[fault 2, {backend}] {figures}; recorded while the server was down: "
        f"{done_while_down}; on the worker killed meanwhile: {len(on_b)}; server answered "
        f"again {up_after:.1f} s after restart"
    )


def _leader(url: str) -> str | None:
    engine = db.connect(url, pool_size=1)
    try:
        with db.read(engine) as conn:
            t = schema.locks
            row = conn.execute(
                sa.select(t.c.holder, t.c.expires_at > db.utcnow()).where(t.c.name == "leader")
            ).one()
            return str(row[0]) if row[0] is not None and row[1] else None
    finally:
        engine.dispose()


def _pid_of(holder: str | None) -> int | None:
    return int(holder.split(":")[1]) if holder else None


def _start_second_server(cluster: Cluster) -> tuple[Proc, int]:
    port = free_port()
    proc = cluster.spawn(
        "server2", "server", "--host", "127.0.0.1", "--port", str(port), "--allow-root"
    )

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    cluster.wait_for(healthy, "the second server", proc)
    return proc, port


@pytest.mark.parametrize("backend", [*BACKENDS, "mysql"])  # the lease differs per backend
def test_two_servers_one_balances_the_other_takes_over(
    make_cluster: Any, backend: str, marks: Marks
) -> None:
    # Given two servers on one database, and workers
    cluster: Cluster = make_cluster(backend)
    first = next(p for p in cluster.procs if p.name == "server")
    second, second_port = _start_second_server(cluster)
    servers = {first.popen.pid: first, second.popen.pid: second}
    workers = {n: cluster.start_worker(n, "--allow-root", "--max-jobs", "4") for n in "ab"}
    submitted = _submit_batch(cluster, marks, range(300))

    # Exactly one of them balances: it holds the lease, and only it says so
    holder = cluster.wait_for(lambda: _leader(cluster.database_url), "a leader")
    leader_pid = _pid_of(holder)
    assert leader_pid in servers
    for _ in range(10):  # and it keeps it, nobody else takes it meanwhile
        assert _pid_of(_leader(cluster.database_url)) == leader_pid
        time.sleep(0.1)
    saying = [p for p in servers.values() if "now runs the balancer" in p.log()]
    assert [p.popen.pid for p in saying] == [leader_pid]

    # When the leader is SIGKILLed, and a worker dies too (only a leader recovers its jobs)
    cluster.wait_for(lambda: marks.total() >= 30, "some jobs done", timeout=60)
    os.killpg(leader_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    survivor = next(p for pid, p in servers.items() if pid != leader_pid)
    new = cluster.wait_for(
        lambda: (h := _leader(cluster.database_url)) and _pid_of(h) != leader_pid and h,
        "the other server to take over",
        timeout=30,
    )
    takeover = time.monotonic() - killed_at
    assert _pid_of(new) == survivor.popen.pid
    # It says so in its log right after committing the lease: read it until it is there
    cluster.wait_for(
        lambda: "now runs the balancer" in survivor.log(), "the survivor's log line", timeout=10
    )

    if survivor is second:  # talk to the one still serving
        cluster.api.close()
        cluster.port = second_port
        cluster.http = httpx.Client(
            base_url=cluster.url, headers={"Authorization": f"Bearer {cluster.key}"}, timeout=30
        )
    # The survivor's monitor marks it offline; unfinished jobs there are lost (no retries)
    os.killpg(workers["b"].popen.pid, signal.SIGKILL)
    cluster.wait_for(lambda: cluster.worker("b", "offline"), "b offline", timeout=30)

    # Then every job ends once; none was assigned twice (each side effect happened once)
    def all_final() -> bool:
        return all(r.state in ("done", "lost") for r in rows(cluster.database_url))

    cluster.wait_for(all_final, "every job to finish", timeout=120)
    figures = check_nothing_lost_or_doubled(cluster.database_url, marks, submitted)
    assert all(marks.count(n) <= 1 for n in submitted.values())
    print(
        f"\n[fault 5, {backend}] {figures}; the other server took the lease "
        f"{takeover:.1f} s after the leader was killed (lease {0.3 * 5:.1f} s)"
    )
