"""Every route the app serves refuses a caller without credentials.

The routes are enumerated from the app itself, so a route added later is checked too,
without anyone remembering to add it here.

Open on purpose: ``/healthz`` (load balancers probe it), the login page and static
files, nothing else: even the API's description (``/openapi.json``) needs a key or a
session, and its reference page (``/docs``) is a page like the others. JSON API routes
answer 401; a browser page may instead redirect (302/303/307) to the login page.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.security.conftest import App

OPEN_PATHS = {"/healthz"}
OPEN_PREFIXES = ("/static",)
LOGIN = re.compile(r"^/(web/|ui/)?login/?$")


def _walk(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every route, through included routers and mounts."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:  # FastAPI's included router
            for ctx in contexts():
                yield prefix + ctx.path_format, set(ctx.methods or {"GET"})
            continue
        sub = getattr(route, "routes", None)
        path = getattr(route, "path", "")
        if sub is not None and path:  # a Mount with routes of its own
            yield from _walk(list(sub), prefix + path)
            continue
        methods = getattr(route, "methods", None)
        yield prefix + path, set(methods or {"GET"})


def _concrete(path: str) -> str:
    # Any value will do: authentication comes before looking anything up.
    return re.sub(r"\{[^}]+\}", "1", path)


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or bool(LOGIN.match(path))


def _refused(path: str, status: int, location: str) -> bool:
    if status == 401:
        return True
    is_api = path.startswith("/api/") or path in ("/addJob", "/metrics")
    return not is_api and status in (302, 303, 307) and "login" in location


def test_every_route_but_the_open_ones_refuses_anonymous_and_bad_keys(secapp: App) -> None:
    routes = sorted({(p, m) for p, ms in _walk(list(secapp.app.routes)) for m in ms})
    # The enumeration really sees the app (not an empty list that passes vacuously).
    paths = {p for p, _ in routes}
    assert {"/api/v1/jobs", "/api/v1/users/{user_id}/api-keys", "/addJob", "/metrics"} <= paths
    checked = []
    for client in (
        secapp.client(follow_redirects=False),
        secapp.client("jb_not-a-real-key", follow_redirects=False),
        secapp.client(follow_redirects=False, headers={"X-API-Key": "nope"}),
    ):
        for path, method in routes:
            if method in ("HEAD", "OPTIONS") or _is_open(path):
                continue
            r = client.request(method, _concrete(path), json={})
            assert _refused(path, r.status_code, r.headers.get("location", "")), (
                f"{method} {path} answered {r.status_code} without valid credentials: {r.text}"
            )
            checked.append((method, path))
    print(f"\nroutes checked without credentials: {len(checked) // 3}")
    assert len(checked) >= 3 * 30


def test_the_open_routes_are_only_the_documented_ones(secapp: App) -> None:
    anon = secapp.client(follow_redirects=False)
    assert anon.get("/healthz").status_code == 200
    # /metrics stays closed unless an admin opened it
    assert anon.get("/metrics").status_code == 401
    r = secapp.admin.patch("/api/v1/settings", json={"metrics_public": True})
    assert r.status_code == 200, r.text
    assert anon.get("/metrics").status_code == 200
    # the legacy endpoint takes its key from the body: a wrong one is refused
    r = anon.post("/addJob", json={"command": "true", "apiKey": "jb_wrong"})
    assert r.status_code == 401
    assert r.json()["result"] is False


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
def test_a_revoked_key_is_refused_at_once(secapp: App, header: str) -> None:
    user_id, key = secapp.user("rita", "submitter")
    value = f"Bearer {key}" if header == "Authorization" else key
    client = secapp.client(follow_redirects=False, headers={header: value})
    assert client.get("/api/v1/me").status_code == 200
    keys = secapp.admin.get(f"/api/v1/users/{user_id}/api-keys").json()
    assert len(keys) == 1
    assert all("key" not in k for k in keys)  # the secret is never listed
    r = secapp.admin.delete(f"/api/v1/users/{user_id}/api-keys/{keys[0]['id']}")
    assert r.status_code == 204
    assert client.get("/api/v1/me").status_code == 401
    assert client.post("/api/v1/jobs", json={"command": "true"}).status_code == 401
