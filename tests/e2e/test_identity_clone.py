"""A cloned machine: two workers with one host name and no --name, as real processes.

The clone runs in PID and UTS namespaces of its own (``unshare``, as root): to the first
worker it is another host with the same name. With the same id file (a VM cloned after the
worker ran) the clone waits until it can tell the name's holder is alive, then refuses to
start with a message saying what to set; the original keeps its name and its job. With an
id file of its own it takes a name of its own (``host-<id>``) and both work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Cluster, Proc

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("unshare") is None,
        reason="needs root and unshare (namespaces of its own)",
    ),
]
Factory = Callable[..., Cluster]
HOST = "jbclone"


def _spawn_in(cluster: Cluster, name: str, *, pidns: bool, data_dir: Path | None = None) -> Proc:
    """A default-named worker in a UTS namespace (host name jbclone) of its own, and with
    ``pidns`` a PID namespace of its own too."""
    unshare = ["unshare", "--uts", *(["--pid", "--fork", "--mount-proc"] if pidns else [])]
    worker = f"{sys.executable} -m jobbalancer worker --allow-root --no-cgroups"
    env = dict(cluster.env)
    if data_dir is not None:
        env["JOBBALANCER_DATA_DIR"] = str(data_dir)
    log_path = cluster.tmp / f"{name}.log"
    with open(log_path, "wb") as out:
        popen = subprocess.Popen(
            [*unshare, "sh", "-c", f"hostname {HOST} && exec {worker}"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    proc = Proc(name, popen, log_path)
    cluster.procs.append(proc)
    return proc


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_clone_with_the_same_id_file_is_refused_and_the_original_keeps_its_job(
    make_cluster: Factory, backend: str
) -> None:
    # Given a worker started without --name on host jbclone, running a job
    cluster = make_cluster(backend)
    cluster.worker_names.add(HOST)
    original = _spawn_in(cluster, "original", pidns=False)
    cluster.wait_for(lambda: cluster.worker(HOST, "online"), "the original online", original)
    job = cluster.submit(command="sleep 4; echo ok")
    # When a clone of its machine (same host name, same id file) starts
    clone = _spawn_in(cluster, "clone", pidns=True)
    started = time.monotonic()
    code = clone.wait(timeout=30)
    refused_after = time.monotonic() - started
    # Then the clone is refused, saying what to set, after about worker_timeout (3 s)
    assert code == 4, clone.log()
    log = clone.log()
    assert "another worker with this machine's id" in log
    assert f"runs as '{HOST}' on host '{HOST}' (pid {original.popen.pid})" in log
    assert "delete that file here" in log
    assert "Traceback" not in log
    print(f"\nclone refused after {refused_after:.1f} s ({backend}, worker_timeout 3 s)")
    # And the original kept its name and its job
    assert cluster.wait_job(job["id"])["state"] == "done"
    assert cluster.log(job["id"]) == "ok\n"
    assert "lost its registration" not in original.log()
    named = [w for w in cluster.api.get("/api/v1/workers").json() if w["name"].startswith(HOST)]
    assert [(w["name"], w["pid"], w["state"]) for w in named] == [
        (HOST, original.popen.pid, "online")
    ]


def test_a_clone_with_an_id_of_its_own_takes_a_name_of_its_own(
    make_cluster: Factory, tmp_path: Path
) -> None:
    # Given a worker without --name on host jbclone
    cluster = make_cluster("sqlite")
    cluster.worker_names.add(HOST)
    original = _spawn_in(cluster, "original", pidns=False)
    cluster.wait_for(lambda: cluster.worker(HOST, "online"), "the original online", original)
    # When a clone with its own data dir (so its own worker id) starts
    own = tmp_path / "clone-data"
    own.mkdir()
    clone = _spawn_in(cluster, "clone", pidns=True, data_dir=own)
    mid = cluster.wait_for(
        lambda: (own / "worker-id").exists() and (own / "worker-id").read_text().split()[0],
        "the clone's id file",
        clone,
    )
    name = f"{HOST}-{mid[:6]}"
    cluster.worker_names.add(name)
    cluster.wait_for(lambda: cluster.worker(name, "online"), "the clone online", clone)
    # Then both run jobs, each under its own name (the other one disabled meanwhile)
    for worker, other in ((HOST, name), (name, HOST)):
        _enable(cluster, worker, True)
        _enable(cluster, other, False)
        job = cluster.submit(command="echo ok")
        done = cluster.wait_job(job["id"])
        assert (done["state"], done["worker"]["name"]) == ("done", worker)
    assert "lost its registration" not in original.log() + clone.log()


def _enable(cluster: Cluster, name: str, enabled: bool) -> None:
    worker = cluster.worker(name)
    assert worker is not None
    r = cluster.api.patch(f"/api/v1/workers/{worker['id']}", json={"enabled": enabled})
    assert r.status_code == 200, r.text
