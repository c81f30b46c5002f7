"""Starting later and retrying later over a real server and worker: a job submitted with
`--in 2s` starts no earlier than its time, and a failing job's retries wait as its policy
says. Times are compared as the records give them (the database's clock); how late a
job starts is printed, never asserted (bench/ measures speed)."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.e2e.conftest import Cluster

pytestmark = pytest.mark.e2e

# SQLite stamps times to the millisecond.
TOLERANCE = timedelta(milliseconds=2)
FINAL = {"done", "failed", "timeout", "killed", "lost", "occupied", "skipped"}


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**cluster.env, "JOBBALANCER_URL": cluster.url, "JOBBALANCER_API_KEY": cluster.key}
    return subprocess.run(
        [sys.executable, "-m", "jobbalancer", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_job_submitted_in_2s_starts_no_earlier(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster()
    cluster.start_worker("w", "--allow-root")
    proc = _cli(cluster, "submit", "--in", "2s", "--", "echo", "later")
    assert proc.returncode == 0, proc.stderr
    job_id = int(proc.stdout.strip())
    job = cluster.job(job_id)
    assert job["state"] == "delayed" and job["worker"] is None
    created, not_before = _t(job["created_at"]), _t(job["not_before"])
    # The delay counts from the database's clock as the submission read it, a few ms
    # before the insert stamped created_at.
    assert timedelta(seconds=1.9) <= not_before - created <= timedelta(seconds=2.5)

    done = cluster.wait_job(job_id)
    assert done["state"] == "done" and cluster.log(job_id) == "later\n"
    started = _t(done["started_at"])
    assert started >= not_before - TOLERANCE  # never early
    print(f"\nstarted {(started - not_before).total_seconds() * 1000:.0f} ms after its time")


def test_show_and_the_list_say_when_it_starts(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster()
    proc = _cli(cluster, "submit", "--at", "2099-01-01T00:00Z", "--", "true")
    assert proc.returncode == 2 and "at most a year from now" in proc.stderr, proc.stderr
    proc = _cli(cluster, "submit", "--in", "1h", "--", "echo", "later")
    assert proc.returncode == 0, proc.stderr
    job_id = int(proc.stdout.strip())
    shown = _cli(cluster, "show", str(job_id))
    assert shown.returncode == 0 and "starts at " in shown.stdout, shown.stdout
    listed = _cli(cluster, "jobs", "--state", "delayed")
    assert listed.returncode == 0 and "starts at" in listed.stdout, listed.stdout
    assert _cli(cluster, "kill", str(job_id)).returncode == 0
    assert cluster.job(job_id)["state"] == "killed"


def test_retries_wait_between_attempts(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster()
    cluster.start_worker("w", "--allow-root")
    marker = "retry-wait-e2e"
    first = cluster.submit(
        command=f"echo {marker}; exit 75", retries=2, retry_delay=1, retry_backoff=2,
        retry_on=[75],
    )  # fmt: skip

    def attempts() -> list[dict[str, Any]] | None:
        items = cluster.api.get("/api/v1/jobs", params={"q": marker}).json()["items"]
        return items if len(items) == 3 and all(j["state"] in FINAL for j in items) else None

    found = sorted(cluster.wait_for(attempts, "three attempts to end", timeout=60),
                   key=lambda j: j["attempt"])  # fmt: skip
    assert [j["attempt"] for j in found] == [1, 2, 3]
    assert found[0]["id"] == first["id"]
    assert [j["state"] for j in found] == ["failed"] * 3
    assert [j["exit_code"] for j in found] == [75] * 3
    assert found[1]["retry_of"] == found[0]["id"] and found[2]["retry_of"] == found[1]["id"]
    gaps = []
    for earlier, later, wanted in ((found[0], found[1], 1.0), (found[1], found[2], 2.0)):
        ended, started = _t(earlier["finished_at"]), _t(later["started_at"])
        assert _t(later["not_before"]) - ended == timedelta(seconds=wanted)
        assert started - ended >= timedelta(seconds=wanted) - TOLERANCE
        gaps.append((started - ended).total_seconds())
    print(f"\ngaps between attempts: {gaps[0]:.3f} s (wanted 1), {gaps[1]:.3f} s (wanted 2)")


def test_killing_a_retry_that_waits_ends_the_attempts(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster()
    cluster.start_worker("w", "--allow-root")
    first = cluster.submit(command="exit 1", retries=5, retry_delay=3600)
    assert cluster.wait_job(first["id"])["state"] == "failed"

    def retry() -> dict[str, Any] | None:
        items = cluster.api.get("/api/v1/jobs", params={"state": "delayed"}).json()["items"]
        return items[0] if items else None

    waiting = cluster.wait_for(retry, "the retry")
    assert waiting["retry_of"] == first["id"] and waiting["attempt"] == 2
    shown = _cli(cluster, "show", str(waiting["id"]))
    assert "attempt 2 of 6, next try at " in shown.stdout, shown.stdout
    killed = _cli(cluster, "kill", str(waiting["id"]))
    assert killed.returncode == 0, killed.stderr
    assert cluster.job(waiting["id"])["state"] == "killed"
    items = cluster.api.get("/api/v1/jobs").json()["items"]
    assert sorted(j["id"] for j in items) == sorted([first["id"], waiting["id"]])
