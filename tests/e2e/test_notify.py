"""Notifications end to end: a real server delivers a real worker's job end to a real
webhook, and `jobbalancer notify …` and `submit --notify` work against it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from tests.e2e.conftest import Cluster
from tests.receivers import free_port, webhook


def test_a_failed_job_is_delivered_signed_and_the_cli_shows_it(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster()
    cluster.start_worker("w", "--allow-root")
    env = {**cluster.env, "JOBBALANCER_URL": cluster.url, "JOBBALANCER_API_KEY": cluster.key}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jobbalancer", *args],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    with webhook(secret="s3cret") as hook:
        spec = {"name": "ops-hook", "kind": "webhook", "url": hook.url, "secret": "s3cret"}
        assert cluster.api.post("/api/v1/notification-targets", json=spec).status_code == 201
        dead = {"name": "dead", "kind": "webhook", "url": f"http://127.0.0.1:{free_port()}/"}
        assert cluster.api.post("/api/v1/notification-targets", json=dead).status_code == 201

        submitted = cli(
            "submit",
            "--notify",
            "failed,timeout:ops-hook",
            "--",
            "sh",
            "-c",
            "echo oops >&2; exit 3",
        )
        assert submitted.returncode == 0, submitted.stderr
        job_id = int(submitted.stdout.strip())
        assert cluster.wait_job(job_id)["state"] == "failed"
        [got] = hook.wait(1, timeout=30)
        assert got.signature_ok
        assert got.body["job_id"] == job_id and got.body["exit_code"] == 3
        assert "oops" in got.body["stderr_tail"]
        assert got.body["url"] == f"{cluster.url}/jobs/{job_id}"

        listed = cli("notify", "deliveries", "--job", str(job_id))
        assert (
            listed.returncode == 0 and "delivered" in listed.stdout and "ops-hook" in listed.stdout
        )
        targets = cli("notify", "targets")
        assert (
            targets.returncode == 0
            and "ops-hook" in targets.stdout
            and "s3cret" not in targets.stdout
        )
        ok = cli("notify", "test", "ops-hook")
        assert ok.returncode == 0, ok.stderr
        assert hook.wait(2)[-1].body["test"] is True
        failed = cli("notify", "test", "dead")
        assert failed.returncode == 1 and "connection refused" in failed.stderr
