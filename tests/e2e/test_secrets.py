"""Secrets for real: the CLI sets one, a job submitted with --secret-env sees its value in
its environment, and its output (the value written in two pieces, a moment apart) shows
``****``; a worker without the server's key, or with another key, fails such a job with
the reason and never runs it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable

import pytest

from jobbalancer import vault
from tests.e2e.conftest import Cluster

pytestmark = pytest.mark.timeout(120)
VALUE = "hunter2-Xq9-prod"
# The value in two writes 0.4 s apart (two reads by the worker, two batches of output).
TWO_PIECES = (
    'printf "pw=%s\\n" "$PGPASSWORD"; printf %.5s "$PGPASSWORD"; sleep 0.4; '
    'printf "%s\\n" "${PGPASSWORD#?????}"; echo "length ${#PGPASSWORD}"'
)


def _cli(
    cluster: Cluster, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "jobbalancer", "--url", cluster.url, "--api-key", cluster.key]
    return subprocess.run(
        [*argv, *args], env=cluster.env, input=stdin, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def test_a_job_gets_the_value_and_its_output_shows_stars(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster("sqlite")
    made = _cli(cluster, "secrets", "set", "prod-db", "-d", "the database", stdin=VALUE + "\n")
    assert made.returncode == 0 and "created" in made.stdout, made.stdout + made.stderr
    assert (cluster.tmp / "secret.key").stat().st_mode & 0o777 == 0o600
    cluster.start_worker("w", "--allow-root")

    done = _cli(cluster, "submit", "--secret-env", "PGPASSWORD=prod-db", "--wait", "--",
                TWO_PIECES)  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    job_id = int(done.stdout.split()[0])
    assert cluster.log(job_id) == f"pw=****\n****\nlength {len(VALUE)}\n"
    job = cluster.job(job_id)
    assert job["secret_env"] == {"PGPASSWORD": "prod-db"} and VALUE not in str(job)
    listed = _cli(cluster, "secrets", "list")
    assert "prod-db" in listed.stdout and VALUE not in listed.stdout
    shown = _cli(cluster, "show", str(job_id))
    assert VALUE not in shown.stdout
    for proc in cluster.procs:
        assert VALUE not in proc.log(), proc.name
    assert _cli(cluster, "secrets", "delete", "prod-db").returncode == 0
    again = _cli(cluster, "submit", "--secret-env", "PGPASSWORD=prod-db", "--", "true")
    assert again.returncode != 0 and "prod-db" in again.stderr


# A script whose typed `secret` parameter ($2) it prints whole, in two pieces, and as a
# digest (which shows the value arrived, without printing it).
DEPLOY = (
    'printf \'to %s with %s\\n\' "$1" "$2"; printf %.5s "$2"; sleep 0.4; '
    "printf '%s\\n' \"${2#?????}\"; "
    "printf 'sha256 %s\\n' \"$(printf %s \"$2\" | sha256sum | cut -d' ' -f1)\"\n"
)


def test_a_typed_secret_parameter_reaches_the_script_and_is_masked(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster("sqlite")
    assert _cli(cluster, "secrets", "set", "api-token", stdin=VALUE + "\n").returncode == 0
    declared = [{"name": "target", "type": "string", "required": True},
                {"name": "token", "type": "secret", "required": True}]  # fmt: skip
    script = {"name": "deploy", "interpreter": "sh", "content": DEPLOY, "parameters": declared}
    assert cluster.api.post("/api/v1/scripts", json=script).status_code == 201
    cluster.start_worker("w", "--allow-root")

    done = _cli(cluster, "submit", "--script", "deploy", "-p", "target=prod",
                "-p", "token=api-token", "--wait")  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    job_id = int(done.stdout.split()[0])
    digest = hashlib.sha256(VALUE.encode()).hexdigest()
    assert cluster.log(job_id) == f"to prod with ****\n****\nsha256 {digest}\n"
    job = cluster.job(job_id)
    assert job["params"] == ["prod", "api-token"] and job["secret_args"] == {"1": "api-token"}
    assert VALUE not in str(job)
    for proc in cluster.procs:
        assert VALUE not in proc.log(), proc.name
    # One that does not exist: refused at submit, naming the parameter.
    bad = _cli(cluster, "submit", "--script", "deploy", "-p", "target=x", "-p", "token=nope")
    assert bad.returncode != 0 and "params.token: secret 'nope'" in bad.stderr, bad.stderr


def _worker(cluster: Cluster, name: str, klass: str, **env: str) -> None:
    """A worker of class ``klass`` with ``env`` added to the cluster's environment."""
    saved = dict(cluster.env)
    cluster.env.update(env)
    try:
        cluster.start_worker(name, "--class", klass, "--allow-root")
    finally:
        cluster.env.clear()
        cluster.env.update(saved)


def test_a_worker_without_the_key_fails_the_job_and_never_runs_it(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster("sqlite")
    for name in ("nokey", "otherkey"):
        assert cluster.api.post("/api/v1/worker-classes", json={"name": name}).status_code == 201
    r = cluster.api.post("/api/v1/secrets", json={"name": "prod-db", "value": VALUE})
    assert r.status_code == 201, r.text
    missing = cluster.tmp / "no-such.key"
    _worker(cluster, "w-nokey", "nokey", JOBBALANCER_SECRET_KEY_FILE=str(missing))
    _worker(cluster, "w-other", "otherkey", JOBBALANCER_SECRET_KEY=vault.new_key_text())
    marker = cluster.tmp / "ran"

    for klass, reason in (("nokey", "has no secret key"), ("otherkey", "encrypted with the key")):
        job = cluster.submit(
            command=f"touch {marker}", worker_class=klass, secret_env={"P": "prod-db"}
        )
        failed = cluster.wait_job(job["id"])
        assert failed["state"] == "failed", failed
        assert reason in failed["error"] and "prod-db" in failed["error"], failed["error"]
        assert "docs/operations.md" in failed["error"]
        assert not marker.exists()  # never started without its secret
    logs = {p.name: p.log() for p in cluster.procs}
    assert "jobs that use secrets fail on this worker" in logs["w-nokey"]
    assert "is not the server's" in logs["w-other"]


def test_a_disabled_owners_queued_job_gets_no_secret(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster("sqlite")
    r = cluster.api.post("/api/v1/users", json={"name": "alice", "role": "submitter"})
    assert r.status_code == 201, r.text
    alice_id = r.json()["id"]
    key = cluster.api.post(f"/api/v1/users/{alice_id}/api-keys", json={"name": "k"}).json()["key"]
    assert cluster.api.post("/api/v1/worker-classes", json={"name": "later"}).status_code == 201
    r = cluster.api.post("/api/v1/secrets", json={"name": "prod-db", "value": VALUE})
    assert r.status_code == 201, r.text
    marker = cluster.tmp / "ran"
    # Queued (no worker of its class yet) by alice, who is then disabled.
    r = cluster.api.post(
        "/api/v1/jobs",
        json={"command": f"touch {marker}", "worker_class": "later",
              "secret_env": {"P": "prod-db"}},
        headers={"Authorization": f"Bearer {key}"},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    r = cluster.api.patch(f"/api/v1/users/{alice_id}", json={"disabled": True})
    assert r.status_code == 200, r.text
    cluster.start_worker("w", "--class", "later", "--allow-root")

    failed = cluster.wait_job(job_id)

    assert failed["state"] == "failed", failed
    assert "owner is disabled" in failed["error"], failed["error"]
    assert not marker.exists()  # never started without its secret
