"""The web UI against an intruder: CSRF on every route that changes something (enumerated
from the app), no session fixation, login throttling, security headers on every kind of
answer, and passwords and keys never returned by the API or shown on a page.
(That they are never logged is checked on a real server in test_secrets_not_logged.py.)
"""

from __future__ import annotations

import hashlib
import re
import warnings
from datetime import timedelta
from typing import Any

import pytest

from jobbalancer import auth, db
from tests.security.conftest import App
from tests.security.test_routes_need_auth import _concrete, _walk

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx.*", category=UserWarning)
    from fastapi.testclient import TestClient

PASSWORD = "correct horse battery staple"
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _browser(app: App) -> TestClient:
    client = app.client(follow_redirects=False)
    client.headers["Accept"] = "text/html,application/xhtml+xml,*/*;q=0.8"
    return client


def _login(app: App, client: TestClient, name: str, password: str) -> Any:
    form = client.get("/login")
    assert form.status_code == 200
    token = _CSRF.search(form.text)
    assert token, "the login form has no CSRF field"
    return client.post("/login", data={"name": name, "password": password, "csrf_token": token[1]})


def _logged_in(app: App, name: str, role: str = "admin") -> tuple[TestClient, str]:
    with db.write(app.engine) as conn:
        auth.create_user(conn, name, role, PASSWORD)
    client = _browser(app)
    r = _login(app, client, name, PASSWORD)
    assert r.status_code == 303, r.text
    home = client.get("/")
    token = _CSRF.search(home.text)
    assert token, "a signed-in page carries the session's CSRF token"
    return client, token[1]


def _unsafe_routes(app: App) -> list[tuple[str, str]]:
    routes = {(m, p) for p, ms in _walk(list(app.app.routes)) for m in ms if m in UNSAFE}
    return sorted((m, p) for m, p in routes if p not in ("/login",))


def test_every_unsafe_route_refuses_a_session_without_its_csrf_token(secapp: App) -> None:
    # Something for the routes to act on: job 1, waiting (no workers here)
    r = secapp.admin.post("/api/v1/jobs", json={"command": "true"})
    assert r.status_code == 201
    job_id = r.json()["id"]
    victim, csrf = _logged_in(secapp, "victim")
    _, other_csrf = _logged_in(secapp, "someone")
    routes = _unsafe_routes(secapp)
    assert ("POST", "/api/v1/jobs") in routes
    assert any(not p.startswith("/api/") and p != "/addJob" for _, p in routes), routes
    checked = 0
    for method, path in routes:
        if path == "/addJob":
            continue  # takes no session: a key in the body or header (test_routes_need_auth)
        url = _concrete(path)
        for headers, data in (
            ({}, {}),  # a cross-site form post: the cookie rides along, the token does not
            ({auth.CSRF_HEADER: "forged"}, {"csrf_token": "forged"}),
            ({auth.CSRF_HEADER: other_csrf}, {"csrf_token": other_csrf}),  # another session's
            ({"Origin": "https://evil.example"}, {}),
        ):
            if path.startswith("/api/"):
                r = victim.request(method, url, json={}, headers=headers)
            else:
                r = victim.request(method, url, data=data, headers=headers)
            assert r.status_code == 403, f"{method} {path} with {headers}: {r.status_code}"
            checked += 1
    # Nothing happened: the job still waits, the settings are as they were
    assert secapp.admin.get(f"/api/v1/jobs/{job_id}").json()["state"] == "waiting"
    # The same session with its own token does get through (the 403s were about the token)
    ok = victim.post(f"/api/v1/jobs/{job_id}/kill", headers={auth.CSRF_HEADER: csrf})
    assert ok.status_code == 202, ok.text
    print(f"\nCSRF: {len(routes)} unsafe routes, {checked} forged requests refused")


def test_a_planted_session_does_not_survive_login(secapp: App) -> None:
    # An attacker logs in as themselves and plants that session's cookie in the victim's
    # browser (or makes one up); the victim then logs in.
    attacker, _ = _logged_in(secapp, "mallory", "viewer")
    planted = attacker.cookies[auth.SESSION_COOKIE]
    with db.write(secapp.engine) as conn:
        auth.create_user(conn, "alice", "admin", PASSWORD)
    for cookie in (planted, "made-up-by-mallory"):
        victim = _browser(secapp)
        form = victim.get("/login")
        token = _CSRF.search(form.text)
        assert token
        # planted before the victim logs in (as the server would have set it)
        victim.cookies.set(auth.SESSION_COOKIE, cookie, domain="testserver.local")
        r = victim.post(
            "/login", data={"name": "alice", "password": PASSWORD, "csrf_token": token[1]}
        )
        assert r.status_code == 303, r.text
        # The login issues a new session: the planted cookie is replaced, not promoted
        assert auth.SESSION_COOKIE in r.headers.get("set-cookie", "")
        fresh = victim.cookies[auth.SESSION_COOKIE]
        assert fresh != cookie
        assert victim.get("/api/v1/me").json()["name"] == "alice"
    # The planted token never means alice: it is ended (a login ends the browser's previous
    # session) or still mallory's
    me = attacker.get("/api/v1/me")
    assert me.status_code == 401 or me.json()["name"] == "mallory", me.text
    # And a session token is stored only hashed: the database does not hold the cookie
    with db.read(secapp.engine) as conn:
        stored = conn.exec_driver_sql("SELECT token_hash FROM web_sessions").scalars().all()
    assert planted not in stored


def test_logout_ends_the_session_on_the_server(secapp: App) -> None:
    client, csrf = _logged_in(secapp, "lou")
    token = client.cookies[auth.SESSION_COOKIE]
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 303
    # Replaying the old cookie (stolen before logout) gets nowhere
    replay = _browser(secapp)
    replay.cookies.set(auth.SESSION_COOKIE, token)
    assert replay.get("/api/v1/me").status_code == 401
    r = replay.get("/")
    assert r.status_code in (200, 303)
    assert "logout" not in r.text.lower() or r.status_code == 303


def test_login_throttling_refuses_even_the_right_password_from_that_address(
    secapp: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "FIRST_WAIT", timedelta(minutes=1))  # none runs out meanwhile
    with db.write(secapp.engine) as conn:
        auth.create_user(conn, "carl", "operator", PASSWORD)
    client = _browser(secapp)
    for _ in range(auth.FREE_FAILURES + 1):
        assert _login(secapp, client, "carl", "guess").status_code == 401
    for attempt in (PASSWORD, "guess"):
        r = _login(secapp, client, "carl", attempt)
        assert r.status_code == 429, r.status_code
        assert int(r.headers["retry-after"]) >= 1
        assert auth.SESSION_COOKIE not in client.cookies
        assert "too many failed logins" in r.text.lower()
    # The throttle is per address: carl logs in from elsewhere meanwhile, and so does
    # another user from here (fewer failures than the address's own allowance)
    elsewhere = secapp.client(follow_redirects=False, client=("203.0.113.5", 4000))
    assert _login(secapp, elsewhere, "carl", PASSWORD).status_code == 303
    _logged_in(secapp, "other")
    # and an API key is not a password: it keeps working (keys are revoked, not throttled)
    assert secapp.admin.get("/api/v1/me").status_code == 200


def test_security_headers_on_every_kind_of_answer(secapp: App) -> None:
    anon = _browser(secapp)
    client, _ = _logged_in(secapp, "hedy")
    gets = sorted({p for p, ms in _walk(list(secapp.app.routes)) for m in ms if m == "GET"})
    paths = [_concrete(p) for p in gets] + ["/no/such/page", "/api/v1/nothing", "/static/app.css"]
    for who in (anon, client):
        for path in paths:
            if path.endswith("/log/stream"):
                continue  # an event stream: its headers come first, checked below on a 404
            r = who.get(path)
            csp = r.headers.get("content-security-policy", "")
            assert "frame-ancestors 'none'" in csp, (path, r.status_code)
            if not path.startswith("/docs"):
                assert "unsafe-inline" not in csp, path
                assert "script-src 'self'" in csp, path
            assert r.headers.get("x-frame-options") == "DENY", path
            assert r.headers.get("x-content-type-options") == "nosniff", path
    r = anon.get("/api/v1/jobs/999/log/stream")
    assert r.headers.get("x-content-type-options") == "nosniff"
    print(f"\nsecurity headers checked on {len(paths)} paths, anonymous and signed in")


def test_passwords_and_keys_are_never_returned_or_shown(secapp: App) -> None:
    secret_password = "s3cret-Passw0rd-for-the-test"
    r = secapp.admin.post(
        "/api/v1/users", json={"name": "pat", "role": "submitter", "password": secret_password}
    )
    assert r.status_code == 201, r.text
    user_id = r.json()["id"]
    r = secapp.admin.post(f"/api/v1/users/{user_id}/api-keys", json={"name": "ci"})
    assert r.status_code == 201
    key = r.json()["key"]  # shown this once
    r = secapp.admin.patch(f"/api/v1/users/{user_id}", json={"password": secret_password + "2"})
    assert r.status_code == 200
    with db.read(secapp.engine) as conn:
        hashes = conn.exec_driver_sql("SELECT password_hash FROM users").scalars().all()
    secrets = [secret_password, key, hashlib.sha256(key.encode()).hexdigest(), secapp.admin_key,
               *[h for h in hashes if h]]  # fmt: skip
    # Every API answer and every page an admin can open
    client, _ = _logged_in(secapp, "ada")
    answers = []
    for path in ("/api/v1/users", f"/api/v1/users/{user_id}", f"/api/v1/users/{user_id}/api-keys",
                 "/api/v1/me", "/api/v1/settings", "/openapi.json"):  # fmt: skip
        answers.append(secapp.admin.get(path))
    gets = sorted({p for p, ms in _walk(list(secapp.app.routes)) for m in ms if m == "GET"})
    for path in gets:
        if "{" not in path and not path.endswith("stream"):
            answers.append(client.get(path))
            answers.append(client.get(path, headers={"HX-Request": "true"}))
    for answer in answers:
        for secret in secrets:
            assert secret not in answer.text, f"{answer.request.url} shows a secret"
        assert "$argon2" not in answer.text
    assert all(
        "key" not in k and "key_hash" not in k
        for k in secapp.admin.get(f"/api/v1/users/{user_id}/api-keys").json()
    )
    assert "password" not in secapp.admin.get(f"/api/v1/users/{user_id}").json()
