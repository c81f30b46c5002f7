"""A worker SIGKILLed while it runs parents: their children follow the parents' real ends
(``lost``, or the retry that runs elsewhere), decided in the transactions that record them."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import Cluster

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_children_follow_a_parent_whose_worker_was_killed(
    make_cluster: Any, backend: str, tmp_path: Path
) -> None:
    # Given two parents running on worker "first": one without retries, one with a retry
    # that succeeds (it hangs on its first attempt only), and children of each
    cluster: Cluster = make_cluster(backend)
    first = cluster.start_worker("first", "--allow-root", "--max-jobs", "2")
    started, retried = tmp_path / "started", tmp_path / "retried"
    hang = f"echo >> {started}; exec sleep 300"
    once = f"if [ -e {retried} ]; then echo second attempt; else touch {retried}; {hang}; fi"
    r = cluster.api.post(
        "/api/v1/jobs/batch",
        json={
            "jobs": [
                {"command": hang},
                {"command": "echo never", "after": [{"ref": 0}]},
                {"command": "echo alarm", "after": [{"ref": 0, "on": "failure"}]},
                {"command": once, "retries": 1},
                {"command": "echo after the retry", "after": [{"ref": 3}]},
            ]
        },
    )
    assert r.status_code == 201, r.text
    lone, never, alarm, flaky, follows = (j["id"] for j in r.json()["jobs"])

    def both_started() -> bool:
        return started.exists() and len(started.read_text().splitlines()) == 2

    cluster.wait_for(both_started, "both parents to start")
    cluster.start_worker("second", "--allow-root")
    # When their worker dies without a word
    os.killpg(first.popen.pid, signal.SIGKILL)

    # Then the parent without retries is lost, and so decides its children for good
    assert cluster.wait_job(lone, timeout=30)["state"] == "lost"
    skipped = cluster.wait_job(never)
    assert (skipped["state"], skipped["error"]) == ("skipped", f"job {lone} ended lost")
    assert cluster.wait_job(alarm)["state"] == "done"
    # and the one with a retry decides only through the retry, which ran on "second"
    assert cluster.wait_job(flaky)["state"] == "lost"
    child = cluster.wait_job(follows)
    assert child["state"] == "done", child
    (parent,) = child["parents"]
    retry = cluster.job(parent["id"])
    assert (retry["retry_of"], retry["state"], parent["met"]) == (flaky, "done", True)
    assert cluster.log(retry["id"]) == "second attempt\n"
    assert cluster.log(follows) == "after the retry\n"
