"""A planted secret value and a planted env value never show to anyone who should not see
them: a real server (debug logging, access log on) and worker; alice runs a job with a
secret (written to its output in two pieces) and a plain env value; then every GET route
of the API (from the server's own OpenAPI document) and every page of the web UI (from
the UI's routers) is read as other users (a submitter, an operator, a viewer) and
searched for both, as are ``/metrics``, the server's and the worker's logs. The secret's
value is shown to nobody, alice and the admin included; the env value only to them."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from tests.e2e.conftest import Cluster, make_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
_ = make_cluster  # the e2e harness's fixture, used here by name
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
SECRET = "Planted-SECRET-4d9e1c"
ENV_VALUE = "Planted-ENV-7b20aa"
PASSWORD = "a-long-enough-password"
JOB = (
    'printf "secret=%s\\n" "$PGPASSWORD"; printf %.9s "$PGPASSWORD" >&2; sleep 0.4; '
    'printf "%s\\n" "${PGPASSWORD#?????????}" >&2; echo "env has ${#TOKEN} chars"'
)


def _web_pages() -> list[str]:
    """Every GET path of the web UI, from its routers."""
    import importlib
    import pkgutil

    from jobbalancer.web import routes

    found = []
    for info in pkgutil.iter_modules(routes.__path__):
        module = importlib.import_module(f"{routes.__name__}.{info.name}")
        for route in module.router.routes:
            if isinstance(route, APIRoute) and "GET" in route.methods:
                found.append(route.path)
    return sorted(set(found))


def _fill(path: str, ids: dict[str, Any]) -> str:
    """A path with its parameters filled with objects of this test."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1).split(":")[0]
        if name == "ref":
            return str(ids["target"] if "notification" in path else ids["secret"])
        return str(ids.get(name, ids["job_id"]))

    return re.sub(r"\{([^}]+)\}", value, path)


def _login(url: str, name: str) -> httpx.Client:
    client = httpx.Client(base_url=url, follow_redirects=False, timeout=30)
    form = client.get("/login", headers={"Accept": "text/html"})
    token = _CSRF.search(form.text)
    assert token, form.text[:300]
    r = client.post("/login", data={"name": name, "password": PASSWORD, "csrf_token": token[1]})
    assert r.status_code == 303, r.text
    return client


def _key(cluster: Cluster, name: str, role: str) -> tuple[int, str]:
    r = cluster.api.post("/api/v1/users", json={"name": name, "role": role, "password": PASSWORD})
    assert r.status_code == 201, r.text
    user_id = int(r.json()["id"])
    r = cluster.api.post(f"/api/v1/users/{user_id}/api-keys", json={"name": "k"})
    return user_id, str(r.json()["key"])


def test_planted_values_show_nowhere_they_should_not(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster(server=False)
    cluster.env["JOBBALANCER_LOG_LEVEL"] = "debug"
    cluster.env["JOBBALANCER_ACCESS_LOG"] = "1"
    cluster.start_server()
    worker = cluster.start_worker("w", "--allow-root")
    users = {name: _key(cluster, name, role) for name, role in (
        ("alice", "submitter"), ("bob", "submitter"), ("oscar", "operator"),
        ("vera", "viewer"))}  # fmt: skip
    r = cluster.api.post(
        "/api/v1/secrets", json={"name": "prod-db", "value": SECRET, "users": ["alice"]}
    )
    assert r.status_code == 201, r.text
    # A script with a typed `secret` parameter: the value reaches it as $1.
    r = cluster.api.post("/api/v1/scripts", json={"name": "s", "interpreter": "sh",
                                                  "content": 'printf "arg=%s\\n" "$1"',
                                                  "parameters": [{"name": "pw",
                                                                  "type": "secret"}]})  # fmt: skip
    assert r.status_code == 201, r.text
    script_id = r.json()["id"]
    target = {"name": "hook", "kind": "webhook", "url": "http://127.0.0.1:9/", "secret": SECRET}
    r = cluster.api.post("/api/v1/notification-targets", json=target)
    assert r.status_code == 201, r.text

    alice = httpx.Client(base_url=cluster.url, timeout=30,
                         headers={"Authorization": f"Bearer {users['alice'][1]}"})  # fmt: skip
    r = alice.post("/api/v1/jobs", json={"command": JOB, "env": {"TOKEN": ENV_VALUE},
                                          "secret_env": {"PGPASSWORD": "prod-db"}})  # fmt: skip
    assert r.status_code == 201, r.text
    job_id = int(r.json()["id"])
    finished = cluster.wait_job(job_id)
    assert finished["state"] == "done", finished
    log = cluster.log(job_id)
    assert "secret=****\n" in log and "****" in cluster.log(job_id, "stderr")
    assert f"env has {len(ENV_VALUE)} chars" in log
    r = alice.post("/api/v1/jobs", json={"script": "s", "params": {"pw": "prod-db"}})
    assert r.status_code == 201, r.text
    typed_id = int(r.json()["id"])
    assert cluster.wait_job(typed_id)["state"] == "done"
    assert cluster.log(typed_id) == "arg=****\n"
    alice.close()

    worker_id = cluster.worker("w")["id"]  # type: ignore[index]
    ids = {"job_id": job_id, "secret": "prod-db", "target": "hook", "script_id": script_id,
           "worker_id": worker_id, "class_id": 1, "user_id": users["alice"][0],
           "action": "keys", "key_id": 1}  # fmt: skip
    api_paths = sorted(
        p for p, ops in cluster.api.get("/openapi.json").json()["paths"].items() if "get" in ops
    )
    assert "/api/v1/secrets" in api_paths and "/api/v1/jobs/{job_id}/log" in api_paths
    pages = _web_pages()
    assert "/secrets" in pages and "/jobs/{job_id}" in pages
    seen: dict[str, str] = {}

    for name in ("bob", "oscar", "vera", "alice", "admin"):
        if name == "admin":
            api, browser = cluster.api, None
        else:
            api = httpx.Client(base_url=cluster.url, timeout=30,
                               headers={"Authorization": f"Bearer {users[name][1]}"})  # fmt: skip
            browser = _login(cluster.url, name)
        texts = {}
        for path in [*api_paths, "/metrics"]:
            filled = _fill(path, ids)
            texts[f"GET {filled}"] = api.get(filled).text
            if "{job_id}" in path:  # the job with a typed secret parameter too
                typed = _fill(path, {**ids, "job_id": typed_id})
                texts[f"GET {typed}"] = api.get(typed).text
        if browser is not None:
            for path in pages:
                filled = _fill(path, ids)
                texts[f"page {filled}"] = browser.get(filled).text
                if "{job_id}" in path:
                    typed = _fill(path, {**ids, "job_id": typed_id})
                    texts[f"page {typed}"] = browser.get(typed).text
            browser.close()
        for where, text in texts.items():
            assert SECRET not in text, f"{name} sees the secret's value in {where}"
            if name not in ("alice", "admin"):
                assert ENV_VALUE not in text, f"{name} sees alice's env value in {where}"
        seen[name] = texts.get(f"GET /api/v1/jobs/{job_id}", "")
        if api is not cluster.api:
            api.close()

    # The job is readable by those who may see it (the search above meant something) ...
    assert f'"id":{job_id}' in seen["oscar"] and '"TOKEN":"****"' in seen["oscar"]
    assert ENV_VALUE in seen["alice"]  # the owner sees her own env value
    # ... and neither value is in a log line of the server or the worker.
    server = next(p for p in cluster.procs if p.name == "server")
    for proc in (server, worker):
        text = proc.log()
        assert SECRET not in text and ENV_VALUE not in text, proc.name
    assert "GET /api/v1/secrets" in server.log()  # the access log is on
