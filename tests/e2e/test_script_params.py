"""Typed script parameters for real: `submit --script hello -p name=x -p count=2` through
a server and a worker, and every example script `up` adds runs with its parameters."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from jobbalancer import db
from jobbalancer.cli import examples
from tests.e2e.conftest import Cluster

pytestmark = pytest.mark.timeout(120)


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "jobbalancer", "--url", cluster.url, "--api-key", cluster.key]
    return subprocess.run(
        [*argv, *args], env=cluster.env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    cluster = make_cluster("sqlite", server=False)
    engine = db.connect(cluster.database_url)
    try:
        with db.write(engine) as conn:
            examples.add(conn)
    finally:
        engine.dispose()
    cluster.start_server()
    cluster.start_worker("w", "--allow-root", "--max-jobs", "4")
    return cluster


def test_submit_by_name_from_the_command_line(cluster: Cluster) -> None:
    done = _cli(cluster, "submit", "--script", "hello", "-p", "name=x", "-p", "count=2", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = int(done.stdout.split()[0])
    assert cluster.job(job_id)["params"] == ["x", "2"]
    assert cluster.log(job_id) == "hello, x (1/2)\nhello, x (2/2)\n"
    # Positional, as before; a default fills what is not given.
    done = _cli(cluster, "submit", "--script", "hello", "-p", "Ann", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    assert cluster.log(int(done.stdout.split()[0])) == "hello, Ann (1/1)\n"
    # A broken rule is refused before any job is made, naming the parameter and the rule.
    bad = _cli(cluster, "submit", "--script", "hello", "-p", "count=11")
    assert bad.returncode != 0
    assert "params.count: must be ≤ 10" in bad.stderr
    # parallel: one job per input, the input named by its replacement string.
    ran = _cli(cluster, "parallel", "--script", "hello", "-p", "name={}", "-p", "count=1",
               "--no-bar", ":::", "ann", "bob")  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert sorted(ran.stdout.splitlines()) == ["hello, ann (1/1)", "hello, bob (1/1)"]
    shown = _cli(cluster, "scripts", "show", "hello")
    assert shown.returncode == 0, shown.stderr
    for words in ("name", "count", "string", "int", "world", "≤ 10", "How many times."):
        assert words in shown.stdout, shown.stdout


def test_every_example_runs_with_its_parameters(cluster: Cluster) -> None:
    runs = {
        "hello": ({"name": "jobbalancer", "count": 3}, "hello, jobbalancer (3/3)\n"),
        "checksum": ({"path": "/etc/hostname", "algorithm": "md5"}, "  /etc/hostname\n"),
        "random-stats": ({"count": 10, "scale": 2.5, "show": True}, "10 numbers in [0, 2.5)"),
        "times-table": ({"size": 3}, "    3    6    9\n"),
    }
    assert {e["name"] for e in examples.EXAMPLES} == set(runs)
    jobs = {name: cluster.submit(script=name, params=p)["id"] for name, (p, _) in runs.items()}
    for name, job_id in jobs.items():
        job = cluster.wait_job(job_id)
        output = cluster.log(job_id)
        assert job["state"] == "done", (name, job, output)
        assert runs[name][1] in output, (name, output)
    # With the defaults only (each parameter has one, or is optional), but the path.
    job = cluster.submit(script="random-stats", params={})
    assert cluster.wait_job(job["id"])["state"] == "done"
    assert "1000 numbers in [0, 1.0)" in cluster.log(job["id"])
