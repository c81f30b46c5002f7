"""Two installations on one host, each with a worker named "w": a restart of one (which
kills what its SIGKILLed predecessor left running) must not touch the other's jobs.

Found by running the chaos suite while other test runs shared the machine: their worker
"w" restarting killed this suite's jobs (they ended ``failed``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.chaos.conftest import Cluster

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(120)]


def test_a_restarting_worker_kills_only_its_own_installations_orphans(
    make_cluster: Any, tmp_path: Path
) -> None:
    ours: Cluster = make_cluster()
    theirs: Cluster = make_cluster()
    ours_w = ours.start_worker("w", "--allow-root")
    theirs_w = theirs.start_worker("w", "--allow-root")
    pids = {}
    for name, cluster in (("ours", ours), ("theirs", theirs)):
        pidfile = tmp_path / name
        job = cluster.submit(command=f"echo $$ > {pidfile}; exec sleep 300")
        cluster.wait_for(lambda f=pidfile: f.exists() and f.read_text().strip(), "job started")
        pids[name] = (job["id"], int(pidfile.read_text()))

    # Both workers die with their jobs running; theirs comes back first
    for proc in (ours_w, theirs_w):
        os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(timeout=10)
    theirs.start_worker("w", "--allow-root")
    theirs.wait_for(lambda: not psutil.pid_exists(pids["theirs"][1]), "their orphan killed")
    # Our job's process was left alone: it is not theirs to kill
    assert psutil.pid_exists(pids["ours"][1])
    # Our own restart ends it
    ours.start_worker("w", "--allow-root")
    ours.wait_for(lambda: not psutil.pid_exists(pids["ours"][1]), "our orphan killed")
    assert ours.wait_job(pids["ours"][0])["state"] == "lost"
