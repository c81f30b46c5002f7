"""Logging in and out of the web UI: session cookies, CSRF, lockout, and what a session
may do on the API."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
import sqlalchemy as sa

from jobbalancer import auth, db, stats
from jobbalancer.db import schema
from jobbalancer.web import pages
from tests.web.conftest import PASSWORD, Web, csrf_of

WS, U, LF = schema.web_sessions, schema.users, schema.login_failures


def _session_rows(web: Web) -> list[sa.Row[tuple[str, int]]]:
    with db.read(web.engine) as conn:
        return list(conn.execute(sa.select(WS.c.token_hash, WS.c.user_id)))


def test_anonymous_visitors_get_the_login_form(web: Web) -> None:
    client = web.browser()
    home = client.get("/")
    assert home.status_code == 303 and home.headers["location"] == "/login"
    form = client.get("/login")
    assert 'action="/login"' in form.text and 'name="password"' in form.text
    assert "<nav" not in form.text  # nothing of the cluster before logging in

    jobs = client.get("/dashboard/live?x=1")
    assert jobs.status_code == 303
    assert jobs.headers["location"] == "/login?next=/dashboard/live%3Fx%3D1"


def test_the_first_admin_logs_in_and_out(web: Web) -> None:
    client = web.browser()
    r = web.post_login(client, "admin", web.admin_password)
    assert r.status_code == 303 and r.headers["location"] == "/"  # type: ignore[attr-defined]
    cookie = r.headers["set-cookie"]  # type: ignore[attr-defined]
    assert cookie.startswith(f"{auth.SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    token = client.cookies[auth.SESSION_COOKIE]
    # Only the token's hash is stored.
    [(token_hash, _)] = _session_rows(web)
    assert token_hash == hashlib.sha256(token.encode()).hexdigest() != token

    home = client.get("/")
    assert home.status_code == 200
    assert "Dashboard" in home.text and "admin" in home.text and "<nav" in home.text

    refused = client.post("/logout")  # no CSRF token
    assert refused.status_code == 403
    assert "security token" in refused.text

    out = client.post("/logout", data={"csrf_token": csrf_of(home.text)})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert _session_rows(web) == []
    # The old cookie is worth nothing now, even if a browser kept it.
    client.cookies.set(auth.SESSION_COOKIE, token)
    assert client.get("/dashboard/live").status_code == 303


def test_every_login_gets_a_new_token(web: Web) -> None:
    client = web.browser()
    client.cookies.set(auth.SESSION_COOKIE, "planted-by-someone-else", domain="testserver.local")
    web.post_login(client, "admin", web.admin_password)
    first = client.cookies[auth.SESSION_COOKIE]
    assert first != "planted-by-someone-else"
    other = web.browser()
    web.post_login(other, "admin", web.admin_password)
    assert other.cookies[auth.SESSION_COOKIE] != first
    assert len(_session_rows(web)) == 2
    # Logging in again from a browser that has a session ends that one.
    web.user("olga", "viewer")
    other.cookies.set("jb_login_csrf", "chosen-token", domain="testserver.local", path="/login")
    again = other.post(
        "/login", data={"name": "olga", "password": PASSWORD, "csrf_token": "chosen-token"}
    )
    assert again.status_code == 303
    assert len(_session_rows(web)) == 2  # the first browser's and olga's
    assert "olga" in other.get("/").text


def test_cookie_is_secure_under_tls(web: Web) -> None:
    client = web.browser("https://testserver")
    r = web.post_login(client, "admin", web.admin_password)
    assert "Secure" in r.headers["set-cookie"]  # type: ignore[attr-defined]


def test_login_needs_the_forms_token(web: Web) -> None:
    client = web.browser()
    r = client.post("/login", data={"name": "admin", "password": web.admin_password})
    assert r.status_code == 403
    assert auth.SESSION_COOKIE not in client.cookies


def test_wrong_password_and_unknown_user_read_the_same(web: Web) -> None:
    client = web.browser()
    wrong = web.post_login(client, "admin", "not the password")
    nobody = web.post_login(client, "nobody", "not the password")
    assert wrong.status_code == nobody.status_code == 401  # type: ignore[attr-defined]
    assert "wrong user name or password" in wrong.text  # type: ignore[attr-defined]
    assert "wrong user name or password" in nobody.text  # type: ignore[attr-defined]


@pytest.fixture
def long_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waits of a minute and more: none runs out while a test is still at it."""
    monkeypatch.setattr(auth, "FIRST_WAIT", timedelta(minutes=1))


@pytest.mark.usefixtures("long_waits")
def test_repeated_failures_slow_down_that_address_only(web: Web) -> None:
    web.user("carol", "operator")
    client = web.browser(address="192.0.2.1")
    for _ in range(auth.FREE_FAILURES):
        r = web.post_login(client, "carol", "guess")
        assert r.status_code == 401 and "wait" not in r.text  # type: ignore[attr-defined]
    last = web.post_login(client, "carol", "guess")
    assert last.status_code == 401  # type: ignore[attr-defined]
    assert "wait 60 seconds" in last.text  # type: ignore[attr-defined]
    # Now even the right password is refused from there, saying why and for how long.
    right = web.post_login(client, "carol", PASSWORD)
    assert right.status_code == 429  # type: ignore[attr-defined]
    assert 0 < int(right.headers["retry-after"]) <= 60  # type: ignore[attr-defined]
    assert "Too many failed logins from your address" in right.text  # type: ignore[attr-defined]
    assert auth.SESSION_COOKIE not in client.cookies
    # Carol herself, from her own address, is not affected; nor are other accounts.
    assert web.post_login(web.browser(address="198.51.100.7"), "carol", PASSWORD).status_code == 303  # type: ignore[attr-defined]
    web.login()

    # When the wait is over, the right password works, and that address starts afresh.
    with db.write(web.engine) as conn:
        past = db.now(conn) - timedelta(seconds=1)
        conn.execute(sa.update(LF).values(next_try_at=past))
    assert web.post_login(client, "carol", PASSWORD).status_code == 303  # type: ignore[attr-defined]
    with db.read(web.engine) as conn:
        accounts = conn.execute(sa.select(LF.c.account).where(LF.c.address == "192.0.2.1"))
        assert list(accounts.scalars()) == [auth.ANY_ACCOUNT]  # only the address's own count


def test_the_waits_double_up_to_a_cap(web: Web) -> None:
    free = auth.FREE_FAILURES
    waits = [auth.wait_after(n, free).total_seconds() for n in range(1, free + 12)]
    assert waits[:free] == [0] * free
    assert waits[free : free + 5] == [1, 2, 4, 8, 16]
    assert waits[-1] == auth.MAX_WAIT.total_seconds() == 300
    assert auth.wait_after(10**9, free) == auth.MAX_WAIT  # no overflow however many


@pytest.mark.usefixtures("long_waits")
def test_a_password_reset_lifts_the_throttle_and_ends_sessions(web: Web) -> None:
    user = web.user("dave", "submitter")
    logged_in, _ = web.login("dave", PASSWORD)
    client = web.browser(address="192.0.2.2")
    for _ in range(auth.FREE_FAILURES + 3):
        web.post_login(client, "dave", "guess")
    assert web.post_login(client, "dave", PASSWORD).status_code == 429  # type: ignore[attr-defined]
    with db.write(web.engine) as conn:
        auth.update_user(conn, user.id, {"password": "a brand new one"})
    assert logged_in.get("/dashboard/live").status_code == 303  # logged out by the reset
    assert web.post_login(client, "dave", "a brand new one").status_code == 303  # type: ignore[attr-defined]


def test_disabled_users_cannot_log_in_and_are_logged_out(web: Web) -> None:
    user = web.user("erin", "operator")
    logged_in, _ = web.login("erin", PASSWORD)
    with db.write(web.engine) as conn:
        auth.update_user(conn, user.id, {"disabled": True})
    assert [row for row in _session_rows(web) if row.user_id == user.id] == []
    assert logged_in.get("/").headers["location"] == "/login"  # logged out
    r = web.post_login(web.browser(), "erin", PASSWORD)
    assert r.status_code == 403  # type: ignore[attr-defined]
    assert "disabled" in r.text  # type: ignore[attr-defined]


def test_expired_sessions_end(web: Web) -> None:
    client, _ = web.login()
    with db.write(web.engine) as conn:
        past = db.now(conn) - timedelta(seconds=1)
        conn.execute(sa.update(WS).values(expires_at=past))
    r = client.get("/dashboard/live")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_use_slides_the_expiry_forward(web: Web) -> None:
    client, _ = web.login()
    with db.write(web.engine) as conn:
        now = db.now(conn)
        conn.execute(
            sa.update(WS).values(
                last_seen_at=now - timedelta(hours=1), expires_at=now + timedelta(minutes=5)
            )
        )
    assert client.get("/").status_code == 200
    with db.read(web.engine) as conn:
        expires = conn.execute(sa.select(WS.c.expires_at)).scalar_one()
    assert expires > now + auth.SESSION_IDLE - timedelta(minutes=1)


def test_login_redirects_only_within_the_site(web: Web) -> None:
    client = web.browser()
    form = client.get("/login?next=//evil.example/x")
    r = client.post(
        "/login",
        data={"name": "admin", "password": web.admin_password, "csrf_token": csrf_of(form.text),
              "next": "//evil.example/x"},
    )  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == "/"
    for target in ("/\t/evil.example", "https://evil.example", "/\\evil.example"):
        assert pages.safe_next(target) == "/", target
    assert pages.safe_next("/jobs?state=done") == "/jobs?state=done"
    form = client.get("/login?next=/jobs")
    assert 'name="next" value="/jobs"' in form.text or client.get("/login").status_code == 303


def test_the_api_accepts_a_session_and_needs_csrf_to_change_things(web: Web) -> None:
    client, csrf = web.login()
    me = client.get("/api/v1/me")
    assert me.status_code == 200 and me.json()["name"] == "admin"

    spec = {"command": "echo hi"}
    refused = client.post("/api/v1/jobs", json=spec)
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/json")
    assert "X-CSRF-Token" in refused.json()["message"]
    wrong = client.post("/api/v1/jobs", json=spec, headers={auth.CSRF_HEADER: "nope"})
    assert wrong.status_code == 403
    ok = client.post("/api/v1/jobs", json=spec, headers={auth.CSRF_HEADER: csrf})
    assert ok.status_code == 201, ok.text
    # An API key still works without any of this.
    keyed = web.browser().post(
        "/api/v1/jobs", json=spec, headers={"Authorization": f"Bearer {web.admin_key}"}
    )
    assert keyed.status_code == 201


def test_a_viewer_session_has_a_viewers_rights_on_the_api(web: Web) -> None:
    web.user("vera", "viewer")
    client, csrf = web.login("vera", PASSWORD)
    r = client.post("/api/v1/jobs", json={"command": "true"}, headers={auth.CSRF_HEADER: csrf})
    assert r.status_code == 403
    assert "viewer" in r.json()["message"]


def test_security_headers_on_pages_and_api(web: Web) -> None:
    client = web.browser()
    for path in ("/", "/login", "/api/v1/me", "/healthz", "/static/app.css"):
        r = client.get(path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
        assert "frame-ancestors 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "same-origin"
    # The API reference needs a session; its Swagger UI is vendored: scripts from this
    # server only, inline styles allowed there alone.
    assert client.get("/docs", follow_redirects=False).status_code == 303
    signed_in, _ = web.login()
    docs = signed_in.get("/docs")
    csp = docs.headers["content-security-policy"]
    assert docs.status_code == 200 and "/static/vendor/swagger-ui/" in docs.text
    assert "script-src 'self';" in csp and "style-src 'self' 'unsafe-inline'" in csp
    assert "http" not in csp  # no CDN
    assert signed_in.get("/openapi.json").json()["info"]["title"] == "jobbalancer"


def test_errors_are_pages_for_browsers_and_json_for_the_api(web: Web) -> None:
    client, _ = web.login()
    page = client.get("/no/such/page")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "There is no page at /no/such/page" in page.text and "<nav" in page.text
    api = client.get("/api/v1/no/such/thing")
    assert api.status_code == 404 and api.json()["error"] == "not_found"
    # A program that does not ask for HTML gets JSON wherever it strays.
    curl = client.get("/no/such/page", headers={"Accept": "*/*"})
    assert curl.status_code == 404 and curl.json()["error"] == "not_found"
    # An htmx request gets a fragment for the flash area, not a whole page.
    frag = client.get("/no/such/page", headers={"HX-Request": "true"})
    assert frag.status_code == 404 and "<html" not in frag.text and "flash-error" in frag.text


def test_htmx_requests_of_a_lost_session_are_sent_to_the_login(web: Web) -> None:
    client = web.browser()
    r = client.get(
        "/dashboard/live",
        headers={"HX-Request": "true", "HX-Current-URL": "http://testserver/jobs?state=done"},
    )
    assert r.status_code == 200
    assert r.headers["HX-Redirect"] == "/login?next=/jobs%3Fstate%3Ddone"


def test_a_bug_is_a_plain_500_page(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = web.login(raise_errors=False)

    def broken(conn: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(stats, "jobs_by_state", broken)
    r = client.get("/")
    assert r.status_code == 500 and r.headers["content-type"].startswith("text/html")
    assert "Server error" in r.text and "the server log has the details" in r.text
    assert "secret internals" not in r.text and "Traceback" not in r.text
    api = client.get("/api/v1/stats")
    assert api.status_code == 500 and api.json()["error"] == "internal"
