"""End to end: real server and worker processes, real commands, over HTTP."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.conftest import Cluster

pytestmark = pytest.mark.e2e
Factory = Any


def test_command_output_and_exit_codes_on_every_backend(
    make_cluster: Factory, backend: str
) -> None:
    # Given a server and one worker on this backend
    cluster: Cluster = make_cluster(backend)
    cluster.start_worker("w1", "--allow-root")
    # When a succeeding and a failing command run
    ok = cluster.submit(command="echo out; echo err >&2")
    bad = cluster.submit(command="echo before; exit 3")
    # Then each is recorded with its exit code and its streams apart
    ok, bad = cluster.wait_job(ok["id"]), cluster.wait_job(bad["id"])
    assert (ok["state"], ok["exit_code"]) == ("done", 0)
    assert (bad["state"], bad["exit_code"]) == ("failed", 3)
    assert cluster.log(ok["id"], "stdout") == "out\n"
    assert cluster.log(ok["id"], "stderr") == "err\n"
    assert cluster.log(bad["id"]) == "before\n"
    assert ok["worker"]["name"] == "w1"
    assert ok["started_at"] and ok["finished_at"]


def test_round_robin_spreads_jobs_over_workers(make_cluster: Factory) -> None:
    cluster: Cluster = make_cluster()
    for name in ("a", "b", "c"):
        cluster.start_worker(name, "--allow-root", "--max-jobs", "2")
    r = cluster.api.post(
        "/api/v1/jobs/batch", json={"jobs": [{"command": "sleep 1"} for _ in range(6)]}
    )
    assert r.status_code == 201, r.text
    jobs = r.json()["jobs"]
    assert Counter(j["worker"]["name"] for j in jobs) == {"a": 2, "b": 2, "c": 2}
    # Consecutive jobs go to different workers, in rotation.
    names = [j["worker"]["name"] for j in jobs]
    assert all(x != y for x, y in itertools.pairwise(names))
    for job in jobs:
        assert cluster.wait_job(job["id"])["state"] == "done"


def test_need_realtime_is_rejected_when_no_slot_is_free(make_cluster: Factory) -> None:
    cluster: Cluster = make_cluster()
    cluster.start_worker("only", "--allow-root", "--max-jobs", "1")
    busy = cluster.submit(command="sleep 30")
    r = cluster.api.post("/api/v1/jobs", json={"command": "echo now", "need_realtime": True})
    assert r.status_code == 409
    body = r.json()
    assert body["error"] == "occupied"
    assert body["job"]["state"] == "occupied"
    # Without need_realtime the job waits for the slot instead.
    waiting = cluster.submit(command="echo later")
    assert waiting["state"] == "waiting"
    assert cluster.api.post(f"/api/v1/jobs/{busy['id']}/kill").status_code == 202
    assert cluster.wait_job(waiting["id"])["state"] == "done"


def _pids_alive(path: Path) -> list[int]:
    pids = [int(p) for p in path.read_text().split()]
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


# A job whose grandchildren ignore SIGTERM, one of them escaped into its own session.
STUBBORN = (
    "sh -c 'trap \"\" TERM; sleep 300' & echo $! >> {pids}; "
    "setsid sh -c 'trap \"\" TERM; sleep 300' & echo $! >> {pids}; "
    "trap '' TERM; echo started; sleep 300"
)


def test_kill_leaves_no_descendant_alive(
    make_cluster: Factory, backend: str, tmp_path: Path
) -> None:
    cluster: Cluster = make_cluster(backend)
    cluster.start_worker("w", "--allow-root")
    pids = tmp_path / "kill.pids"
    job = cluster.submit(command=STUBBORN.format(pids=pids))
    cluster.wait_for(lambda: "started" in cluster.log(job["id"]), "job to start")
    r = cluster.api.post(f"/api/v1/jobs/{job['id']}/kill")
    assert r.status_code == 202
    assert cluster.wait_job(job["id"])["state"] == "killed"
    assert len(pids.read_text().split()) == 2
    assert _pids_alive(pids) == []
    # Killing it again is a conflict: it is over.
    assert cluster.api.post(f"/api/v1/jobs/{job['id']}/kill").status_code == 409


def test_watchdog_kills_the_whole_tree(make_cluster: Factory, tmp_path: Path) -> None:
    cluster: Cluster = make_cluster()
    cluster.start_worker("w", "--allow-root")
    pids = tmp_path / "watchdog.pids"
    job = cluster.submit(command=STUBBORN.format(pids=pids), watchdog=1)
    job = cluster.wait_job(job["id"])
    assert job["state"] == "timeout"
    assert _pids_alive(pids) == []


def test_script_params_are_passed_literally(make_cluster: Factory, tmp_path: Path) -> None:
    cluster: Cluster = make_cluster()
    cluster.start_worker("w", "--allow-root")
    r = cluster.api.post(
        "/api/v1/scripts",
        json={
            "name": "argv",
            "interpreter": "python3",
            "content": "import json, sys\nprint(json.dumps(sys.argv[1:]))\n",
        },
    )
    assert r.status_code == 201, r.text
    canary = tmp_path / "pwned"
    params = [f"$(touch {canary})", f"; touch {canary}", 'it\'s "quoted"', "a b", "`id`", "*"]
    job = cluster.submit(script="argv", params=params)
    assert cluster.wait_job(job["id"])["state"] == "done"
    assert json.loads(cluster.log(job["id"], "stdout")) == params
    assert not canary.exists()


def test_sigkilled_worker_jobs_are_recovered(
    make_cluster: Factory, backend: str, tmp_path: Path
) -> None:
    # Given two workers and a job that hangs on its first attempt only
    cluster: Cluster = make_cluster(backend)
    first = cluster.start_worker("first", "--allow-root")
    marker, pidfile = tmp_path / "attempted", tmp_path / "first.pid"
    command = (
        f"if [ -e {marker} ]; then echo second attempt; "
        f"else touch {marker}; echo $$ > {pidfile}; exec sleep 300; fi"
    )
    job = cluster.submit(command=command, retries=1)
    assert job["worker"]["name"] == "first"
    cluster.wait_for(marker.exists, "first attempt to start")
    cluster.start_worker("second", "--allow-root")
    # When the first worker dies without a word
    os.killpg(first.popen.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    # Then its job is lost, and the retry runs on the other worker
    lost = cluster.wait_job(job["id"], timeout=20)
    recovered_after = time.monotonic() - killed_at
    assert lost["state"] == "lost"
    assert recovered_after < 3 + 2  # worker_timeout + a monitor tick, with slack

    def retry() -> dict[str, Any] | None:
        items = cluster.api.get("/api/v1/jobs", params={"limit": 10}).json()["items"]
        return next((j for j in items if j.get("retry_of") == job["id"]), None)

    again = cluster.wait_for(retry, "the retry")
    again = cluster.wait_job(again["id"])
    assert again["state"] == "done"
    assert again["attempt"] == 2
    assert again["worker"]["name"] == "second"
    assert cluster.log(again["id"]) == "second attempt\n"
    assert cluster.wait_for(lambda: cluster.worker("first", "offline"), "first offline")
    # The first attempt's process outlived its worker; the worker's next start ends it.
    orphan = int(pidfile.read_text())
    assert psutil.pid_exists(orphan)
    cluster.start_worker("first", "--allow-root")
    cluster.wait_for(lambda: not psutil.pid_exists(orphan), "the orphan to be killed")


def test_cli_submit_wait_exits_with_the_job_exit_code(make_cluster: Factory) -> None:
    cluster: Cluster = make_cluster()
    cluster.start_worker("w", "--allow-root")
    env = {**cluster.env, "JOBBALANCER_URL": cluster.url, "JOBBALANCER_API_KEY": cluster.key}
    base = [sys.executable, "-m", "jobbalancer", "submit", "--wait"]
    proc = subprocess.run(
        [*base, "--", "sh", "-c", "echo hello; exit 7"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 7, proc.stderr
    ok = subprocess.run(
        [*base, "--follow", "--", "echo", "streamed"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "streamed" in ok.stdout


def test_original_addjob_endpoint(make_cluster: Factory) -> None:
    cluster: Cluster = make_cluster()
    cluster.start_worker("w", "--allow-root")
    r = cluster.api.post(
        "/addJob",
        json={"command": "echo legacy", "watchdog": "10", "workerClassId": "1",
              "need_realtime": "false", "apiKey": cluster.key},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["result"] is True
    job = cluster.wait_job(int(body["jobId"]))
    assert job["state"] == "done"
    assert job["watchdog"] == 10
    assert cluster.log(job["id"]) == "legacy\n"


def test_worker_drains_on_sigterm(make_cluster: Factory) -> None:
    cluster: Cluster = make_cluster()
    worker = cluster.start_worker("w", "--allow-root")
    job = cluster.submit(command="echo begin; sleep 2; echo end")
    cluster.wait_for(lambda: cluster.job(job["id"])["state"] == "running", "job running")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.log()
    job = cluster.job(job["id"])
    assert job["state"] == "done"
    assert cluster.log(job["id"]) == "begin\nend\n"
    assert cluster.worker("w", "offline")


def test_second_sigterm_kills_running_jobs(make_cluster: Factory) -> None:
    cluster: Cluster = make_cluster()
    worker = cluster.start_worker("w", "--allow-root")
    job = cluster.submit(command="echo begin; sleep 300")
    cluster.wait_for(lambda: "begin" in cluster.log(job["id"]), "job running")
    worker.signal(signal.SIGTERM)
    time.sleep(0.3)
    worker.signal(signal.SIGTERM)
    worker.wait(timeout=30)
    assert cluster.job(job["id"])["state"] == "killed"


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is about running as root")
def test_worker_refuses_to_run_as_root(make_cluster: Factory) -> None:
    cluster: Cluster = make_cluster(server=False)
    proc = subprocess.run(
        [sys.executable, "-m", "jobbalancer", "worker", "--name", "r"],
        env=cluster.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "--allow-root" in proc.stdout + proc.stderr
    assert "--run-as" in proc.stdout + proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_run_as_drops_privileges(make_cluster: Factory) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    cluster: Cluster = make_cluster()
    cluster.start_worker("w", "--run-as", "nobody")
    job = cluster.submit(command="id -u")
    assert cluster.wait_job(job["id"])["state"] == "done"
    assert cluster.log(job["id"]).strip() == str(nobody.pw_uid)


def test_output_cap_and_bytes_that_are_not_text(make_cluster: Factory) -> None:
    cluster: Cluster = make_cluster()
    assert cluster.api.patch("/api/v1/settings", json={"max_log_bytes": 1024}).status_code == 200
    cluster.start_worker("w", "--allow-root")
    chatty = cluster.submit(command="head -c 5000 /dev/zero | tr '\\0' x")
    binary = cluster.submit(command="printf 'ok \\377\\376 \\000 end\\n'")
    chatty, binary = cluster.wait_job(chatty["id"]), cluster.wait_job(binary["id"])
    assert chatty["state"] == "done"
    log = cluster.log(chatty["id"])
    assert log.startswith("x" * 1024)
    assert log.endswith("[jobbalancer: output truncated, 3976 bytes dropped]\n")
    assert chatty["output_bytes"] == 1024
    # Invalid UTF-8 comes back readable, with replacement characters; the NUL is kept.
    assert binary["state"] == "done"
    assert cluster.log(binary["id"]) == "ok \ufffd\ufffd \x00 end\n"


def test_failed_job_is_retried_as_new_attempts(make_cluster: Factory) -> None:
    cluster: Cluster = make_cluster()
    cluster.start_worker("w", "--allow-root")
    first = cluster.submit(command="echo try; exit 2", retries=2)
    attempts = [cluster.wait_job(first["id"])]
    for _ in range(2):

        def next_attempt(prev: int = attempts[-1]["id"]) -> dict[str, Any] | None:
            items = cluster.api.get("/api/v1/jobs", params={"limit": 20}).json()["items"]
            return next((j for j in items if j.get("retry_of") == prev), None)

        job = cluster.wait_for(next_attempt, "the next attempt")
        attempts.append(cluster.wait_job(job["id"]))
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert all(a["state"] == "failed" and a["exit_code"] == 2 for a in attempts)
    time.sleep(1)  # no fourth attempt comes
    items = cluster.api.get("/api/v1/jobs", params={"limit": 20}).json()["items"]
    assert not any(j.get("retry_of") == attempts[-1]["id"] for j in items)


def test_waiting_jobs_start_when_a_worker_joins(make_cluster: Factory) -> None:
    cluster: Cluster = make_cluster()
    jobs = [cluster.submit(command=f"echo {i}") for i in range(3)]
    assert {j["state"] for j in jobs} == {"waiting"}
    cluster.start_worker("late", "--allow-root")
    for job in jobs:
        finished = cluster.wait_job(job["id"])
        assert finished["state"] == "done"
        assert finished["worker"]["name"] == "late"
