"""Passwords and API keys never reach a log: a real server (debug logging, access log on)
and worker, used the ways that carry secrets, then their logs searched for them. Jobs do
not see the worker's own settings either (a database URL may hold a password)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Cluster, make_cluster

pytestmark = pytest.mark.e2e
_ = make_cluster  # the e2e harness's fixture, used here by name
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _web_login(url: str, name: str, password: str) -> int:
    with httpx.Client(base_url=url, follow_redirects=False) as browser:
        form = browser.get("/login", headers={"Accept": "text/html"})
        token = _CSRF.search(form.text)
        assert token, form.text[:300]
        r = browser.post(
            "/login", data={"name": name, "password": password, "csrf_token": token[1]}
        )
        return r.status_code


def test_passwords_and_keys_never_reach_the_logs(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster(server=False)
    cluster.env["JOBBALANCER_LOG_LEVEL"] = "debug"
    cluster.env["JOBBALANCER_ACCESS_LOG"] = "1"
    db_secret = "jb_secret-in-the-worker-environment"
    cluster.start_server()
    # A secret in the worker's own JOBBALANCER_ environment (the CLI's key, say)
    cluster.env["JOBBALANCER_API_KEY"] = db_secret
    worker = cluster.start_worker("w", "--allow-root")
    password = "Very-secret-passw0rd"
    r = cluster.api.post(
        "/api/v1/users", json={"name": "pia", "role": "admin", "password": password}
    )
    assert r.status_code == 201, r.text
    user_id = r.json()["id"]
    r = cluster.api.post(f"/api/v1/users/{user_id}/api-keys", json={"name": "ci"})
    key = r.json()["key"]

    # The ways a secret travels: logins (right, wrong), keys in both headers and in the
    # legacy body, a wrong key, a password change
    assert _web_login(cluster.url, "pia", password) == 303
    assert _web_login(cluster.url, "pia", password + "-wrong") == 401
    assert httpx.get(f"{cluster.url}/api/v1/me", headers={"X-API-Key": key}).status_code == 200
    bad = httpx.get(f"{cluster.url}/api/v1/me", headers={"Authorization": f"Bearer {key}x"})
    assert bad.status_code == 401
    r = httpx.post(f"{cluster.url}/addJob", json={"command": "env", "apiKey": key})
    assert r.status_code == 200, r.text
    env_job = int(r.json()["jobId"])
    r = cluster.api.patch(f"/api/v1/users/{user_id}", json={"password": password + "-new"})
    assert r.status_code == 200
    assert cluster.wait_job(env_job)["state"] == "done"

    secrets = {
        "password": password,
        "new password": password + "-new",
        "wrong password": password + "-wrong",
        "key": key,
        "key hash": hashlib.sha256(key.encode()).hexdigest(),
        "admin key": cluster.key,
        "worker setting": db_secret,
    }
    server = next(p for p in cluster.procs if p.name == "server")
    logs = {"server": server.log(), "worker": worker.log()}
    assert "POST /login" in logs["server"]  # the access log is on: requests are logged
    for where, text in logs.items():
        for what, secret in secrets.items():
            assert secret not in text, f"the {where} log shows the {what}"
        assert "$argon2" not in text
    # The job saw none of the worker's own settings
    job_env = cluster.log(env_job)
    assert "JOBBALANCER_JOB_ID=" in job_env
    assert db_secret not in job_env
    assert "JOBBALANCER_DATABASE_URL" not in job_env
