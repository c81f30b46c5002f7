"""Schedules from the command line over a real server and worker: add one that fires
every second, see its jobs run and its history, pause it, run it now, delete it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.e2e.conftest import Cluster

pytestmark = pytest.mark.e2e


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**cluster.env, "JOBBALANCER_URL": cluster.url, "JOBBALANCER_API_KEY": cluster.key}
    proc = subprocess.run(
        [sys.executable, "-m", "jobbalancer", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc


def test_schedules_from_the_command_line(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster()
    cluster.start_worker("w", "--allow-root", "--max-jobs", "2")
    added = _cli(
        cluster, "schedules", "add", "tick", "--cron", "* * * * * *", "--tz", "Europe/Berlin",
        "--overlap", "allow", "--label", "kind=tick", "--", "echo", "tick tock",
    )  # fmt: skip
    assert "schedule 1 tick added" in added.stdout
    assert "+01:00" in added.stdout or "+02:00" in added.stdout  # the next runs, local

    # It fires every second; its jobs run on the worker and carry the schedule.
    def three_done() -> list[dict[str, Any]] | None:
        jobs = cluster.api.get("/api/v1/jobs", params={"schedule_id": 1}).json()["items"]
        done = [j for j in jobs if j["state"] == "done"]
        return done if len(done) >= 3 else None

    done = cluster.wait_for(three_done, "three scheduled jobs done")
    assert all(j["labels"] == {"kind": "tick"} and j["schedule_id"] == 1 for j in done)
    assert cluster.log(done[0]["id"]) == "tick tock\n"

    _cli(cluster, "schedules", "pause", "tick")
    listed = _cli(cluster, "schedules").stdout
    assert "tick" in listed and "paused" in listed and "done job" in listed
    history = json.loads(_cli(cluster, "schedules", "history", "tick", "--json").stdout)
    fired = [o for o in history if o["outcome"] == "fired"]
    assert len(fired) >= 3 and all(o["job_id"] for o in fired)
    times = [o["fire_at"] for o in fired]
    assert len(set(times)) == len(times)  # one job per occurrence

    # Run now works while paused; the job is listed by `jobs --schedule`.
    job_id = int(_cli(cluster, "schedules", "run", "tick").stdout)
    assert cluster.wait_job(job_id)["state"] == "done"
    mine = json.loads(_cli(cluster, "jobs", "--schedule", "tick", "--json").stdout)
    assert job_id in {j["id"] for j in mine}
    shown = _cli(cluster, "schedules", "show", "tick").stdout
    assert "echo 'tick tock'" in shown and "run now" in shown

    preview = _cli(cluster, "schedules", "preview", "30 2 * * *", "--tz", "Asia/Kolkata").stdout
    assert preview.count("02:30:00+05:30") == 5
    _cli(cluster, "schedules", "delete", "tick")
    assert "no schedules yet" in _cli(cluster, "schedules").stdout

    # The submit options of starting and retrying later: each job starts 10 min after
    # its fire time (--at, a fixed time, makes no sense for a schedule).
    _cli(
        cluster, "schedules", "add", "later", "--cron", "0 3 * * *", "--paused", "--in", "10m",
        "--retries", "2", "--retry-delay", "30s", "--retry-on", "failed,75", "--", "true",
    )  # fmt: skip
    job = cluster.api.get("/api/v1/schedules/later").json()["job"]
    assert (job["delay"], job["retry_delay"], job["retry_on"]) == (600, 30, ["failed", 75])
