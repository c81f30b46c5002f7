"""A pipeline over a real server and worker: the CLI's --after flags and a batch with refs,
each step started when its parents ended as it wanted, and `show` printing the chain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cluster

pytestmark = pytest.mark.e2e


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**cluster.env, "JOBBALANCER_URL": cluster.url, "JOBBALANCER_API_KEY": cluster.key}
    return subprocess.run(
        [sys.executable, "-m", "jobbalancer", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _submit(cluster: Cluster, *args: str) -> int:
    proc = _cli(cluster, "submit", *args)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip())


def test_a_pipeline_from_the_command_line(make_cluster: Any, tmp_path: Path) -> None:
    cluster: Cluster = make_cluster()
    cluster.start_worker("w", "--allow-root", "--max-jobs", "2")
    data, go = tmp_path / "data", tmp_path / "go"
    # transcode (it waits for the test to say go, so its children are held meanwhile),
    # upload if it worked, clean up whatever happened, and a step that runs only on failure.
    wait_for_go = f"for i in $(seq 600); do [ -e {go} ] && break; sleep 0.05; done"
    transcode = _submit(cluster, "--", "sh", "-c", f"{wait_for_go}; echo encoded > {data}")
    upload = _submit(cluster, "--after", str(transcode), "--", "cat", str(data))
    on_failure = _submit(cluster, "--after-failure", str(transcode), "--", "echo", "alarm")
    cleanup = _submit(
        cluster, "--after-any", str(upload), "--after-any", str(on_failure), "--", "echo", "clean"
    )
    assert cluster.job(upload)["state"] == "held"
    assert cluster.job(upload)["waiting_for"] == f"waits for job {transcode} to succeed"
    go.touch()

    assert cluster.wait_job(cleanup)["state"] == "done"
    assert cluster.job(transcode)["state"] == "done"
    assert cluster.job(upload)["state"] == "done"
    assert cluster.log(upload) == "encoded\n"
    skipped = cluster.job(on_failure)
    assert skipped["state"] == "skipped"
    assert skipped["error"] == f"job {transcode} ended done"
    assert cluster.log(cleanup) == "clean\n"

    shown = _cli(cluster, "show", str(cleanup))
    assert shown.returncode == 0, shown.stderr
    assert f"job {upload}  on any  done" in shown.stdout
    assert f"job {on_failure}  on any  skipped" in shown.stdout
    listed = _cli(cluster, "jobs", "--state", "skipped")
    assert listed.returncode == 0, listed.stderr
    assert str(on_failure) in listed.stdout


def test_a_failing_batch_pipeline_skips_what_wanted_success(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster()
    cluster.start_worker("w", "--allow-root")
    r = cluster.api.post(
        "/api/v1/jobs/batch",
        json={
            "jobs": [
                {"command": "exit 3"},
                {"command": "echo never", "after": [{"ref": 0}]},
                {"command": "echo never either", "after": [{"ref": 1}]},
                {"command": "echo report", "after": [{"ref": 0, "on": "failure"}]},
            ]
        },
    )
    assert r.status_code == 201, r.text
    first, second, third, report = (j["id"] for j in r.json()["jobs"])
    assert cluster.wait_job(report)["state"] == "done"
    assert cluster.log(report) == "report\n"
    assert cluster.job(first)["exit_code"] == 3
    assert cluster.wait_job(second)["error"] == f"job {first} ended failed"
    assert cluster.wait_job(third)["error"] == f"job {second} ended skipped"
