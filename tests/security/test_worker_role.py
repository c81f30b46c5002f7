"""A worker under the least-privilege role of `jobbalancer db grant-worker`, with real
processes on PostgreSQL and MariaDB: the role is made through the CLI, the server runs on
the admin URL, the worker on the role's; every kind of job ends as it does under full
credentials; and the worker's URL cannot make an admin (issue 17: a worker host must not
hold the whole database)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from jobbalancer import auth, cli, db, errors
from jobbalancer.db import grants
from tests.e2e.conftest import Cluster, make_cluster  # noqa: F401 - a fixture

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["postgresql", "mysql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def roles(make_database_url: object) -> Iterator[list[tuple[str, str]]]:
    """(admin URL, role) pairs to drop at the end: requested before the cluster, so torn
    down after its processes stopped and before the test databases are dropped."""
    made: list[tuple[str, str]] = []
    yield made
    for url, name in made:
        engine = db.connect(url)
        try:
            with engine.connect() as conn:
                if db.backend(conn) == "postgresql":
                    if grants.role_exists(conn, name, "%"):
                        conn.exec_driver_sql(f"DROP OWNED BY {name}")
                        conn.exec_driver_sql(f"DROP ROLE {name}")
                else:
                    conn.exec_driver_sql(f"DROP USER IF EXISTS '{name}'@'%%'")
                conn.commit()
        finally:
            engine.dispose()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobbalancer", *args],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _grant(cluster: Cluster, roles: list[tuple[str, str]]) -> str:
    """`db grant-worker` through the CLI with the admin URL; the role's URL."""
    name = f"jbw_{secrets.token_hex(6)}"
    roles.append((cluster.database_url, name))
    done = _cli(cluster.env, "db", "grant-worker", name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"created database role {name}" in done.stdout
    password = done.stdout.rstrip("\n").splitlines()[-1]
    url = db.normalize_url(cluster.database_url).set(username=name, password=password)
    return url.render_as_string(hide_password=False)


def _worker(cluster: Cluster, name: str, url: str) -> Any:
    cluster.worker_names.add(name)
    env = {"JOBBALANCER_DATABASE_URL": url}
    proc = cluster.spawn(name, "worker", "--name", name, "--allow-root", extra_env=env)
    cluster.wait_for(lambda: cluster.worker(name, "online"), f"worker {name} online", proc)
    return proc


def _retry_of(cluster: Cluster, job_id: int) -> dict[str, Any] | None:
    items = cluster.api.get("/api/v1/jobs", params={"limit": 50}).json()["items"]
    return next((j for j in items if j.get("retry_of") == job_id), None)


def test_a_worker_under_the_role_runs_every_kind_of_job(
    roles: list[tuple[str, str]],
    make_cluster: Callable[..., Cluster],  # noqa: F811 - the fixture imported above
    backend: str,
    tmp_path: Path,
) -> None:
    cluster = make_cluster(backend)
    role_url = _grant(cluster, roles)
    worker = _worker(cluster, "restricted", role_url)

    ok = cluster.wait_job(cluster.submit(command="echo out; echo err >&2")["id"])
    assert (ok["state"], ok["exit_code"]) == ("done", 0)
    assert cluster.log(ok["id"], "stdout") == "out\n"
    assert cluster.log(ok["id"], "stderr") == "err\n"

    marker = tmp_path / "failed-once"
    flaky = f"if [ -e {marker} ]; then echo again; else touch {marker}; exit 3; fi"
    # The retry waits (retry_delay): the worker inserts it delayed, the server releases it.
    failed = cluster.wait_job(cluster.submit(command=flaky, retries=1, retry_delay=0.5)["id"])
    assert (failed["state"], failed["exit_code"]) == ("failed", 3)
    retry = cluster.wait_job(
        cluster.wait_for(lambda: _retry_of(cluster, failed["id"]), "retry")["id"]
    )
    assert (retry["state"], retry["attempt"]) == ("done", 2)
    assert retry["not_before"] is not None and retry["retry_delay"] == 0.5
    assert cluster.log(retry["id"]) == "again\n"

    long = cluster.submit(command="echo started; sleep 300")
    cluster.wait_for(lambda: "started" in cluster.log(long["id"]), "the long job to start")
    assert cluster.api.post(f"/api/v1/jobs/{long['id']}/kill").status_code == 202
    assert cluster.wait_job(long["id"])["state"] == "killed"

    timed = cluster.wait_job(cluster.submit(command="sleep 300", watchdog=1)["id"])
    assert timed["state"] == "timeout"

    _restart_under_the_same_name(cluster, worker, role_url, tmp_path / "across")
    assert "Traceback" not in "".join(p.log() for p in cluster.procs)


def _restart_under_the_same_name(
    cluster: Cluster, worker: Any, role_url: str, marker: Path
) -> None:
    """A restart under the same name: the running attempt is lost and retried."""
    across = cluster.submit(
        command=f"if [ -e {marker}2 ]; then echo second; else touch {marker}2; sleep 300; fi",
        retries=1,
    )
    cluster.wait_for(lambda: Path(f"{marker}2").exists(), "the attempt to start")
    os.killpg(worker.popen.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    _worker(cluster, "restricted", role_url)
    lost = cluster.wait_job(across["id"])
    assert lost["state"] == "lost"
    again = cluster.wait_job(
        cluster.wait_for(lambda: _retry_of(cluster, across["id"]), "retry")["id"]
    )
    assert again["state"] == "done" and cluster.log(again["id"]) == "second\n"


def test_the_role_cannot_make_an_admin(
    roles: list[tuple[str, str]],
    make_cluster: Callable[..., Cluster],  # noqa: F811 - the fixture imported above
    backend: str,
) -> None:
    cluster = make_cluster(backend, server=False)
    role_url = _grant(cluster, roles)
    env = {**cluster.env, "JOBBALANCER_DATABASE_URL": role_url}

    refused = _cli(env, "users", "create", "intruder", "--role", "admin")
    keys = _cli(env, "keys", "create", "tester")

    for done in (refused, keys):
        assert done.returncode == cli.RET_AUTH == 7, done.stdout + done.stderr
        assert "the database refused" in done.stderr and "Traceback" not in done.stderr
    if backend == "postgresql":
        assert "permission denied" in refused.stderr
    else:
        assert "command denied" in refused.stderr
    engine = db.connect(cluster.database_url)
    try:
        with db.read(engine) as conn, pytest.raises(errors.NotFound):
            auth.find_user(conn, "intruder")
        with db.read(engine) as conn:
            keys_made = conn.execute(sa.text("SELECT COUNT(*) FROM api_keys")).scalar_one()
    finally:
        engine.dispose()
    assert keys_made == 1  # the cluster's own
