"""Fault 1: a worker SIGKILLed under load loses nothing and runs nothing twice."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from tests.chaos.conftest import Cluster, Marks, check_nothing_lost_or_doubled, rows

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(240)]

JOBS = 1000
WORKER_TIMEOUT = 3  # set by the harness


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_worker_sigkilled_under_load(make_cluster: Any, backend: str, marks: Marks) -> None:
    # Given three workers working through 1000 short jobs, half of them with a retry
    cluster: Cluster = make_cluster(backend)
    procs = {name: cluster.start_worker(name, "--allow-root", "--max-jobs", "6") for name in "abc"}
    specs = [
        {"command": marks.command(n, "sleep 0.2; "), "retries": n % 2, "labels": {"n": str(n)}}
        for n in range(JOBS)
    ]
    r = cluster.api.post("/api/v1/jobs/batch", json={"jobs": specs})
    assert r.status_code == 201, r.text
    submitted = {j["id"]: n for n, j in enumerate(r.json()["jobs"])}
    retried = {j["id"] for n, j in enumerate(r.json()["jobs"]) if n % 2}

    # When one of them is SIGKILLed midway, with jobs running on it
    victim = cluster.worker("b")
    assert victim is not None

    def running_on_victim() -> list[int]:
        return [x.id for x in rows(cluster.database_url)
                if x.worker_id == victim["id"] and x.state == "running"]  # fmt: skip

    cluster.wait_for(lambda: marks.total() >= JOBS // 4, "a quarter of the jobs", timeout=120)
    cluster.wait_for(running_on_victim, "jobs running on b")
    os.killpg(procs["b"].popen.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    on_victim = running_on_victim()

    # Then its running jobs become lost within worker_timeout + a monitor tick
    def recovered() -> bool:
        states = {x.id: x.state for x in rows(cluster.database_url)}
        return all(states[i] == "lost" for i in on_victim)

    cluster.wait_for(recovered, "the dead worker's jobs to be lost", timeout=60)
    recovery = time.monotonic() - killed_at

    # and every job ends in exactly one final state, nothing ran twice behind anyone's back
    def all_final() -> bool:
        return all(x.state in {"done", "lost", "failed"} for x in rows(cluster.database_url))

    cluster.wait_for(all_final, "every job to finish", timeout=180)
    figures = check_nothing_lost_or_doubled(cluster.database_url, marks, submitted, retried=retried)
    lost = [x for x in rows(cluster.database_url) if x.state == "lost"]
    assert lost, "the kill hit no running job"
    # lost jobs with a retry ran again on another worker and are done
    by_retry_of = {x.retry_of: x for x in rows(cluster.database_url) if x.retry_of}
    for x in lost:
        if x.id in retried:
            assert by_retry_of[x.id].state == "done"
            assert by_retry_of[x.id].worker_id != victim["id"]
        else:
            assert x.id not in by_retry_of
    assert cluster.worker("b", "offline")
    assert all(p.popen.poll() is None for n, p in procs.items() if n != "b")
    print(
        f"\n[fault 1, {backend}] {figures}; running on the killed worker: {len(on_victim)}, "
        f"recovered (lost) after {recovery:.1f} s (worker_timeout {WORKER_TIMEOUT} s)"
    )
