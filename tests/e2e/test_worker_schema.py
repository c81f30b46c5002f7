"""A worker and the database schema, as real processes: only servers (or `jobbalancer db
upgrade`) migrate. A worker finding an older schema says so once and waits for the upgrade;
a newer one (this machine needs the new version) makes it exit 11 at start, and a running
worker that sees the schema change under it drains (its job still recorded) and exits 11."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from jobbalancer import db

from .conftest import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
Factory = Callable[..., Cluster]
BACKENDS = ["sqlite", "postgresql"]
OLDER = "0006"
NEWER = "ffff0000"


def _set_revision(url: str, revision: str) -> None:
    engine = db.connect(url)
    try:
        with db.write(engine) as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_worker_waits_for_an_older_schema_to_be_upgraded(
    make_cluster: Factory, backend: str
) -> None:
    # Given a database at the previous version's schema, and no server yet
    cluster = make_cluster(backend, server=False)
    engine = db.connect(cluster.database_url)
    try:
        db.downgrade(engine, OLDER)
    finally:
        engine.dispose()
    # When a worker starts, it says so and waits (it does not migrate)
    worker = cluster.start_worker("w", "--allow-root", wait=False)
    waiting = f"database schema {OLDER} is older than this version's {db.head_revision()}"
    cluster.wait_for(lambda: waiting in worker.log(), "the worker to wait", worker)
    assert worker.popen.poll() is None
    # Then `jobbalancer db upgrade` lets it go online, and it runs jobs
    upgrade = subprocess.run(
        [sys.executable, "-m", "jobbalancer", "db", "upgrade"],
        env=cluster.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert upgrade.returncode == 0, upgrade.stderr
    cluster.start_server()
    cluster.wait_for(lambda: cluster.worker("w", "online"), "the worker online", worker)
    job = cluster.submit(command="echo ok")
    assert cluster.wait_job(job["id"])["state"] == "done"
    assert worker.log().count(waiting) == 1  # said once, however long it waited
    assert "Traceback" not in worker.log()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_newer_schema_drains_a_running_worker_and_refuses_a_new_one(
    make_cluster: Factory, backend: str
) -> None:
    # Given a worker running a job
    cluster = make_cluster(backend)
    running = cluster.start_worker("old", "--allow-root")
    job = cluster.submit(command="sleep 2; echo ok")
    cluster.wait_for(lambda: cluster.job(job["id"])["state"] == "running", "the job to run")
    # When a newer version migrates the database under it
    _set_revision(cluster.database_url, NEWER)
    # Then it drains: its job ends and is recorded, and it exits 11
    assert running.wait(timeout=30) == 11, running.log()
    assert cluster.wait_job(job["id"])["state"] == "done"
    assert cluster.log(job["id"]) == "ok\n"
    assert f"the database schema changed to {NEWER} under this worker" in running.log()
    assert "Traceback" not in running.log()
    # And a worker of this version started now exits 11 at once, in one line
    fresh = cluster.start_worker("new", "--allow-root", wait=False)
    assert fresh.wait(timeout=30) == 11
    log = fresh.log()
    assert f"the database schema is at {NEWER}, newer than jobbalancer" in log
    assert "upgrade jobbalancer on this machine" in log
    assert "Traceback" not in log


def test_a_worker_of_an_unknown_class_is_refused_and_makes_no_class(
    make_cluster: Factory,
) -> None:
    # (Another start-up check: a typo in --class must not make a class.)
    cluster = make_cluster("sqlite")
    worker = cluster.start_worker("w", "--allow-root", "--class", "nope", wait=False)
    assert worker.wait(timeout=30) == 4
    assert "worker class 'nope' does not exist (classes: default)" in worker.log()
    assert "Traceback" not in worker.log()
    names = [c["name"] for c in cluster.api.get("/api/v1/worker-classes").json()]
    assert names == ["default"]
    assert cluster.worker("w") is None
