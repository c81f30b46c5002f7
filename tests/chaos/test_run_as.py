"""Fault 7: a worker restarted while jobs run under run_as; privileges really dropped."""

from __future__ import annotations

import os
import pwd
import secrets
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


def _job_processes(tag: str) -> list[psutil.Process]:
    """Processes of the job submitted with ``CHAOS_TAG=tag`` (job ids alone repeat across
    the databases of test runs sharing the machine)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("CHAOS_TAG") == tag:
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
    tags = [secrets.token_hex(8) for _ in range(2)]
    long = [cluster.submit(command=f"{ID}; exec sleep 300", env={"CHAOS_TAG": t}) for t in tags]
    for job, tag in zip(long, tags, strict=True):
        cluster.wait_for(lambda j=job: "uid=" in cluster.log(j["id"]), "job started")
        assert cluster.log(job["id"]).strip() == _expected(nobody)
        procs = cluster.wait_for(lambda t=tag: _job_processes(t), "its processes")
        for proc in procs:
            assert set(proc.uids()) == {nobody.pw_uid}
            assert set(proc.gids()) == {nobody.pw_gid}
            assert 0 not in proc.gids()
    pids = [p.pid for tag in tags for p in _job_processes(tag)]

    # When the worker is SIGKILLed while they run, and started again under its name
    os.killpg(worker.popen.pid, signal.SIGKILL)
    worker.popen.wait(timeout=10)
    assert any(psutil.pid_exists(pid) for pid in pids)  # they outlived it
    worker = cluster.start_worker("w", "--run-as", "nobody", "--max-jobs", "4")

    # Then the new process ends its predecessor's jobs (they are lost, not run twice) ...
    for job in long:
        assert (j := cluster.wait_job(job["id"]))["state"] == "lost", j
    cluster.wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), "orphans killed")
    # ... and still drops privileges for new jobs
    again = cluster.submit(command=ID)
    assert (j := cluster.wait_job(again["id"]))["state"] == "done", j
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
    assert (j := cluster.wait_job(last["id"]))["state"] == "done", j
    assert cluster.log(last["id"]).strip() == str(nobody.pw_uid)
