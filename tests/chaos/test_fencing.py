"""Self-fencing: a worker cut off from the database kills its job before the server
declares it lost, so the retry never runs alongside the first attempt.

Worker "a" reaches the database through a forwarder that then holds every byte (a silent
partition: its connections hang rather than fail); the server and worker "b" reach it
directly. A job with one retry runs on "a"; the retry (on "b") looks for the first
attempt's process on this host (same PID namespace) and writes ALONE or TWICE.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from jobbalancer import db
from jobbalancer.db import schema
from jobbalancer.worker import fence
from tests.chaos.conftest import Cluster, Proc, rows
from tests.chaos.proxy import Proxy

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(150)]
# T and H: the e2e clusters' settings (tests/e2e/conftest.py); JB_FENCING_AT_DEFAULTS=1
# runs it at the shipped defaults (T 15 s, H 3 s) instead, by hand, for the figures.
AT_DEFAULTS = os.environ.get("JB_FENCING_AT_DEFAULTS") == "1"
WORKER_TIMEOUT, HEARTBEAT = (15.0, 3.0) if AT_DEFAULTS else (3.0, 0.5)
# The first attempt sleeps for an odd time: the retry finds it by that. Written split in
# the command (31.41""59) so the retry's own shell command line never matches; {tag} (six
# digits, a new one each test) keeps the job of a test running beside it from matching.
_JOB = (
    'if [ -e {first} ]; then pgrep -f "sleep 31[.]4159{tag}" >/dev/null '
    "&& echo TWICE >> {marks} || echo ALONE >> {marks}; "
    'else touch {first}; echo started; exec sleep 31.41""59{tag}; fi'
)
_LOGGED_AT = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*fenced: ", re.M)


def _database_now(url: str) -> datetime:
    engine = db.connect(url, pool_size=1)
    try:
        with db.read(engine) as conn:
            return db.now(conn).replace(tzinfo=None)
    finally:
        engine.dispose()


def _finished_at(url: str, job_id: int) -> datetime:
    engine = db.connect(url, pool_size=1)
    try:
        with db.read(engine) as conn:
            j = schema.jobs
            value = conn.execute(sa.select(j.c.finished_at).where(j.c.id == job_id)).scalar_one()
            assert isinstance(value, datetime)
            return value.replace(tzinfo=None)
    finally:
        engine.dispose()


def _fenced_at(worker: Proc) -> datetime:
    """When the worker logged its fence (its log's local time)."""
    found = _LOGGED_AT.search(worker.log())
    assert found, worker.log()
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")


def _settings(cluster: Cluster) -> None:
    if AT_DEFAULTS:
        r = cluster.api.patch("/api/v1/settings", json={"worker_timeout": WORKER_TIMEOUT})
        assert r.status_code == 200, r.text
        cluster.env["JOBBALANCER_WORKER_HEARTBEAT_INTERVAL"] = str(HEARTBEAT)


def _start_behind(cluster: Cluster, proxy: Proxy, name: str) -> Proc:
    url = sa.make_url(cluster.database_url).set(host="127.0.0.1", port=proxy.port)
    proc = cluster.spawn(
        name, "worker", "--name", name, "--allow-root",
        extra_env={"JOBBALANCER_DATABASE_URL": url.render_as_string(hide_password=False)},
    )  # fmt: skip
    cluster.worker_names.add(name)
    cluster.wait_for(lambda: cluster.worker(name, "online"), f"{name} online", proc)
    return proc


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_cut_off_worker_fences_itself_before_the_retry_starts(
    make_cluster: Any, backend: str, tmp_path: Path
) -> None:
    cluster: Cluster = make_cluster(backend)
    target = sa.make_url(cluster.database_url)
    proxy = Proxy((target.host or "127.0.0.1", target.port or 0))
    try:
        _fence_and_measure(cluster, proxy, backend, tmp_path)
    finally:
        proxy.close()


def _fence_and_measure(cluster: Cluster, proxy: Proxy, backend: str, tmp: Path) -> None:
    _settings(cluster)
    a = _start_behind(cluster, proxy, "a")
    marks, first = tmp / "M", tmp / "first"
    # Given a job with a retry running on "a" (the only worker yet), then "b" online
    tag = f"{secrets.randbelow(10**6):06d}"
    job = cluster.submit(command=_JOB.format(first=first, marks=marks, tag=tag), retries=1)
    assert job["worker"]["name"] == "a"
    cluster.wait_for(lambda: "started" in cluster.log(job["id"]), "first attempt started", a)
    cluster.start_worker("b", "--allow-root")

    # When "a" is cut off (silently: its connections hang)
    cut_db = _database_now(cluster.database_url)
    cut_local = datetime.now()
    proxy.hold()

    # Then it fences itself: the job is killed and the worker says so
    cluster.wait_for(lambda: "fenced: " in a.log(), "a fences itself", a)
    fenced_after = (_fenced_at(a) - cut_local).total_seconds()
    # ... the server declares it lost, and the retry on "b" finds the first attempt gone
    lost = cluster.wait_job(job["id"], timeout=30)
    assert lost["state"] == "lost", lost
    assert "silent" in (lost["error"] or ""), lost
    lost_after = (_finished_at(cluster.database_url, job["id"]) - cut_db).total_seconds()
    _retry_ran_alone(cluster, job["id"], marks)
    assert lost_after > fenced_after, "the server declared the job lost before the fence"
    log_at_verdict = cluster.log(job["id"])
    assert log_at_verdict == "started\n"

    # When the link comes back, "a" re-registers and runs jobs again...
    proxy.release()
    _rejoins_and_adds_nothing(cluster, a, job["id"], log_at_verdict)
    deadline = fence.deadline(WORKER_TIMEOUT)
    print(
        f"\n[fencing, {backend}] T {WORKER_TIMEOUT:g} s, F {deadline:g} s (margin "
        f"{fence.margin(WORKER_TIMEOUT):g} s), heartbeat "
        f"{fence.heartbeat_every(HEARTBEAT, WORKER_TIMEOUT):g} s: cut->fence {fenced_after:.2f} s, "
        f"cut->lost {lost_after:.2f} s, fence->lost {lost_after - fenced_after:.2f} s; "
        f"the retry found the first attempt gone (ALONE)"
    )


def _retry_ran_alone(cluster: Cluster, job_id: int, marks: Path) -> None:
    """The retry ran on "b" and found no process of the first attempt."""
    retry = cluster.wait_for(
        lambda: next((r for r in rows(cluster.database_url) if r.retry_of == job_id), None),
        "the retry",
    )
    assert cluster.wait_job(retry.id)["state"] == "done"
    assert cluster.job(retry.id)["worker"]["name"] == "b"
    assert marks.read_text().split() == ["ALONE"]


def _rejoins_and_adds_nothing(cluster: Cluster, a: Proc, lost_id: int, log_then: str) -> None:
    """After the cut: "a" is back online and a new job of its own has its output in the
    database (its sink has flushed since), while the lost job's log is as it was."""
    cluster.wait_for(lambda: cluster.worker("a", "online"), "a back online", a, timeout=60)
    seen: set[int] = set()
    for n in range(20):  # bounded: the balancer spreads jobs over both workers
        j = cluster.submit(command=f"echo fresh {n}")
        done = cluster.wait_job(j["id"])
        assert done["state"] == "done", done
        if done["worker"]["name"] == "a":
            cluster.wait_for(lambda j=j, n=n: f"fresh {n}" in cluster.log(j["id"]), "its output")
            seen.add(j["id"])
            break
        time.sleep(0.1)
    assert seen, "no job ran on a after the cut"
    assert cluster.log(lost_id) == log_then
    assert cluster.job(lost_id)["state"] == "lost"
