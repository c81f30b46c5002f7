"""SIGTERM is never ignored: a worker with nothing running exits at once (code 0), whether
the database refuses it, hangs it, or went away while it was idle."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
import sqlalchemy as sa

from tests.chaos.conftest import Cluster, Proc, free_port
from tests.chaos.proxy import Proxy

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(120)]
BOUND = 10  # seconds: a stop under systemd must never wait on the database


def _worker(cluster: Cluster, name: str, host: str, port: int) -> Proc:
    url = sa.make_url(cluster.database_url).set(host=host, port=port)
    proc = cluster.spawn(
        name, "worker", "--name", name, "--allow-root",
        extra_env={"JOBBALANCER_DATABASE_URL": url.render_as_string(hide_password=False)},
    )  # fmt: skip
    cluster.worker_names.add(name)
    return proc


def _stops_at_once(proc: Proc) -> None:
    began = time.monotonic()
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=BOUND) == 0, proc.log()
    assert "Traceback" not in proc.log(), proc.log()
    print(f"\n[shutdown, {proc.name}] SIGTERM -> exit 0 in {time.monotonic() - began:.2f} s")


@pytest.fixture
def cluster(make_cluster: Any) -> Cluster:
    c: Cluster = make_cluster("postgresql")
    return c


def test_sigterm_while_the_database_refuses(cluster: Cluster) -> None:
    proc = _worker(cluster, "refused", "127.0.0.1", free_port())  # nothing listens there
    cluster.wait_for(lambda: "retrying" in proc.log(), "the retrying line", proc)
    _stops_at_once(proc)
    assert "stopped before going online" in proc.log()


def test_sigterm_while_the_database_hangs_the_start(cluster: Cluster) -> None:
    target = sa.make_url(cluster.database_url)
    proxy = Proxy((target.host or "127.0.0.1", target.port or 0))
    try:
        proxy.hold()  # connections are accepted, and never answered
        proc = _worker(cluster, "held", "127.0.0.1", proxy.port)
        cluster.wait_for(lambda: proxy.arrived > 0, "the worker connecting", proc)
        _stops_at_once(proc)
        assert "stopped before going online" in proc.log()
    finally:
        proxy.close()


def test_sigterm_when_idle_and_the_database_went_away(cluster: Cluster) -> None:
    target = sa.make_url(cluster.database_url)
    proxy = Proxy((target.host or "127.0.0.1", target.port or 0))
    try:
        proc = _worker(cluster, "idle", "127.0.0.1", proxy.port)
        cluster.wait_for(lambda: cluster.worker("idle", "online"), "idle online", proc)
        proxy.hold()
        cluster.wait_for(lambda: "fenced: " in proc.log(), "the worker sees it is cut off", proc)
        _stops_at_once(proc)
        assert "the database is away: not marking the worker offline" in proc.log()
    finally:
        proxy.close()


def test_sigterm_after_the_fence_killed_its_job(cluster: Cluster) -> None:
    # Its job was killed by the fence; its end cannot be recorded (the server records it
    # lost): nothing is left to finish, so the drain does not wait for the database.
    target = sa.make_url(cluster.database_url)
    proxy = Proxy((target.host or "127.0.0.1", target.port or 0))
    try:
        proc = _worker(cluster, "fenced", "127.0.0.1", proxy.port)
        cluster.wait_for(lambda: cluster.worker("fenced", "online"), "fenced online", proc)
        job = cluster.submit(command="echo started; exec sleep 60")
        cluster.wait_for(lambda: "started" in cluster.log(job["id"]), "job started", proc)
        proxy.hold()
        cluster.wait_for(lambda: "killed 1 job(s)" in proc.log(), "the fence", proc)
        _stops_at_once(proc)
        assert cluster.wait_job(job["id"])["state"] == "lost"
    finally:
        proxy.close()
