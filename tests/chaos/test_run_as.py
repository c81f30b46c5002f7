"""Fault 7: a worker restarted while jobs run under run_as; privileges really dropped."""

from __future__ import annotations

import os
import pwd
import signal
from typing import Any

import psutil
import pytest

from tests.chaos.conftest import Cluster

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.e2e,
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root"),
]

ID = "echo uid=$(id -ru) euid=$(id -u) gid=$(id -g) groups=$(id -G)"


def _job_processes(job_id: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("JOBBALANCER_JOB_ID") == str(job_id):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def _expected(user: pwd.struct_passwd) -> str:
    groups = " ".join(str(g) for g in sorted(set(os.getgrouplist(user.pw_name, user.pw_gid))))
    return f"uid={user.pw_uid} euid={user.pw_uid} gid={user.pw_gid} groups={groups}"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_worker_restart_while_jobs_run_as_nobody(make_cluster: Any, backend: str) -> None:
    nobody = pwd.getpwnam("nobody")
    cluster: Cluster = make_cluster(backend)
    worker = cluster.start_worker("w", "--run-as", "nobody", "--max-jobs", "4")

    # Jobs run with every id of the configured user: real, effective, saved; no root group
    long = [cluster.submit(command=f"{ID}; exec sleep 300") for _ in range(2)]
    for job in long:
        cluster.wait_for(lambda j=job: "uid=" in cluster.log(j["id"]), "job started")
        assert cluster.log(job["id"]).strip() == _expected(nobody)
        procs = cluster.wait_for(lambda j=job: _job_processes(j["id"]), "its processes")
        for proc in procs:
            assert set(proc.uids()) == {nobody.pw_uid}
            assert set(proc.gids()) == {nobody.pw_gid}
            assert 0 not in proc.gids()
    pids = [p.pid for job in long for p in _job_processes(job["id"])]

    # When the worker is SIGKILLed while they run, and started again under its name
    os.killpg(worker.popen.pid, signal.SIGKILL)
    worker.popen.wait(timeout=10)
    assert any(psutil.pid_exists(pid) for pid in pids)  # they outlived it
    worker = cluster.start_worker("w", "--run-as", "nobody", "--max-jobs", "4")

    # Then the new process ends its predecessor's jobs (they are lost, not run twice) ...
    for job in long:
        assert cluster.wait_job(job["id"])["state"] == "lost"
    cluster.wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), "orphans killed")
    # ... and still drops privileges for new jobs
    again = cluster.submit(command=ID)
    assert cluster.wait_job(again["id"])["state"] == "done"
    assert cluster.log(again["id"]).strip() == _expected(nobody)

    # A drain (SIGTERM) while a job runs: it finishes as nobody, the worker exits cleanly
    slow = cluster.submit(command=f"echo go; sleep 2; {ID}")
    cluster.wait_for(lambda: "go" in cluster.log(slow["id"]), "slow job started")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, worker.log()
    assert cluster.job(slow["id"])["state"] == "done"
    assert cluster.log(slow["id"]).splitlines()[-1] == _expected(nobody)
    cluster.start_worker("w", "--run-as", "nobody")
    last = cluster.submit(command="id -u")
    assert cluster.wait_job(last["id"])["state"] == "done"
    assert cluster.log(last["id"]).strip() == str(nobody.pw_uid)
