"""End to end: workers of different capacities and labels; each job lands where it fits,
GPU jobs get devices of their own, a job that fits nowhere now waits saying why, and
(where job cgroups can limit memory: cgroup v2 controllers or the v1 hierarchies) a job
over its memory ends failed "out of memory"."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from jobbalancer.worker import cgroups
from tests.e2e.conftest import Cluster

pytestmark = pytest.mark.e2e
Factory = Any
GiB = 1 << 30


def test_jobs_land_where_they_fit(make_cluster: Factory) -> None:
    # Given a small worker and a big one with two GPUs and ffmpeg 6
    cluster: Cluster = make_cluster()
    small = cluster.start_worker(
        "small", "--allow-root", "--max-jobs", "4", "--cpus", "1", "--memory", "1G",
        "--label", "os=debian",
    )  # fmt: skip
    cluster.start_worker(
        "big", "--allow-root", "--max-jobs", "4", "--cpus", "4", "--memory", "8G",
        "--gpus", "2", "--label", "ffmpeg=6", "--label", "ssd",
    )  # fmt: skip
    # Then each offers what it was given, and says whether requests are enforced
    big = cluster.worker("big")
    assert big is not None
    assert big["capacity"] == {"slots": 4, "cpus": 4.0, "memory": 8 * GiB, "gpus": 2}
    assert big["labels"] == {"ffmpeg": "6", "ssd": ""}
    assert "offers 1 cpus, 1 GiB memory, 0 gpus, labels os=debian" in small.log()
    # When jobs ask for memory, a label, GPUs, or a label only the small one has
    memory = cluster.submit(command='echo "[${CUDA_VISIBLE_DEVICES-unset}]"', memory="4G")
    label = cluster.submit(command="true", constraints={"ffmpeg": "6"})
    gpus = [cluster.submit(command="echo $CUDA_VISIBLE_DEVICES; sleep 1", gpus=1) for _ in "ab"]
    debian = cluster.submit(command="true", constraints={"os": "debian"}, cpus=0.5)
    # Then each runs where it fits, the GPU jobs each on a device of its own
    for job in (memory, label, *gpus):
        assert cluster.wait_job(job["id"])["worker"]["name"] == "big"
    assert cluster.wait_job(debian["id"])["worker"]["name"] == "small"
    devices = sorted(cluster.log(j["id"]).strip() for j in gpus)
    assert devices == ["0", "1"]
    assert cluster.log(memory["id"]).strip() == "[]"  # asked for no GPU: all hidden
    # When a job needs more than is free anywhere now, it waits saying why
    hog = cluster.submit(command="sleep 30", cpus=4)
    cluster.wait_for(lambda: cluster.job(hog["id"])["state"] == "running", "the hog runs")
    waiting = cluster.submit(command="true", cpus=2)
    job = cluster.job(waiting["id"])
    assert job["state"] == "waiting"
    assert job["pending_reason"] == "needs 2 cpus; the most free is 0 on big"
    # The command line submits requests, and shows why a job waits
    cli = _cli(cluster, "submit", "--cpus", "2", "--memory", "512M", "--constraint", "ssd",
               "--constraint", "os!=windows", "--", "true")  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    from_cli = cluster.job(int(cli.stdout))
    assert (from_cli["cpus"], from_cli["memory"]) == (2.0, 512 << 20)
    assert from_cli["constraints"] == {"ssd": True, "os": "!windows"}
    shown = _cli(cluster, "show", str(from_cli["id"]))
    assert "needs 2 cpus; the most free is 0 on big" in shown.stdout, shown.stdout
    assert "512 MiB" in shown.stdout
    listed = _cli(cluster, "jobs", "--state", "waiting")
    assert "the most free is 0 on big" in " ".join(listed.stdout.split()), listed.stdout
    # And a request no worker could ever meet is refused with the largest capacity
    r = cluster.api.post("/api/v1/jobs", json={"command": "true", "memory": "64G"})
    assert r.status_code == 422 and "8 GiB" in r.json()["message"]
    cluster.api.post(f"/api/v1/jobs/{hog['id']}/kill")
    assert cluster.wait_job(waiting["id"])["state"] == "done"
    assert cluster.wait_job(from_cli["id"])["state"] == "done"


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**cluster.env, "JOBBALANCER_URL": cluster.url, "JOBBALANCER_API_KEY": cluster.key,
           "COLUMNS": "250"}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "jobbalancer", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.skipif(
    cgroups.limits_problem() is not None,
    reason=f"job cgroups cannot limit memory here: {cgroups.limits_problem()}",
)
def test_a_job_over_its_memory_ends_failed_out_of_memory(make_cluster: Factory) -> None:
    cluster: Cluster = make_cluster()
    worker = cluster.start_worker("w1", "--allow-root")
    assert "enforced by job cgroups" in worker.log()
    hungry = 'python3 -c "x = bytearray(256 << 20); print(len(x))"'
    job = cluster.wait_job(cluster.submit(command=hungry, memory="64M")["id"])
    assert (job["state"], job["error"]) == ("failed", "out of memory (limit 64 MiB)")
    fits = cluster.wait_job(cluster.submit(command=hungry, memory="512M")["id"])
    assert fits["state"] == "done"
    # And cpus as a CFS quota of the job's own cgroup (v1 cpu.cfs_quota_us, or v2 cpu.max)
    quota = (
        "import os; from jobbalancer.worker import cgroups as c; v1 = c.v1_own_dir('cpu'); "
        "print(open(v1 + '/cpu.cfs_quota_us').read().strip() "
        "if v1 and 'jobbalancer-' in os.path.basename(v1) "
        "else open(str(c.base_dir()) + '/cpu.max').read().split()[0])"
    )
    half = cluster.submit(command=f'{sys.executable} -c "{quota}"', cpus=0.5)
    half = cluster.wait_job(half["id"])
    assert half["state"] == "done" and cluster.log(half["id"]).strip() == "50000"
