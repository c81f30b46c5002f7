"""No audit entry ever holds a password, an API key, a secret's value or an env value: each
is planted through the routes that take it (jobs, batches, schedules, secrets, users, keys,
notification targets, logins), then every column of every entry is searched for it."""

from __future__ import annotations

import re

import sqlalchemy as sa

from jobbalancer import db
from jobbalancer.db import schema
from tests.security.conftest import App

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
PLANTED = {
    "env": "planted-env-value-1",
    "env2": "planted-env-value-2",
    "schedule_env": "planted-env-value-3",
    "schedule_env2": "planted-env-value-4",
    "secret": "planted-secret-value-1",
    "secret2": "planted-secret-value-2",
    "secret3": "planted-secret-value-3",
    "password": "planted password one",
    "password2": "planted password two",
    "wrong": "planted wrong password",
    "target_secret": "planted-target-secret",
    "target_secret2": "planted-target-secret-2",
    "url_token": "plantedurltoken123",
}


def _ok(r: object) -> None:
    status = getattr(r, "status_code", 0)
    assert 200 <= status < 300, getattr(r, "text", "")


def _all_audit_text(app: App) -> str:
    with db.read(app.engine) as conn:
        rows = conn.execute(sa.select(schema.audit_log)).all()
    assert rows
    return "\n".join(" ".join(str(v) for v in row) for row in rows)


def test_no_audit_entry_holds_a_password_key_secret_or_env_value(secapp: App) -> None:
    api, p = secapp.admin, PLANTED
    _ok(api.post("/api/v1/jobs", json={"command": "true", "env": {"DB_PASS": p["env"]}}))
    _ok(api.post("/api/v1/jobs/batch", json={"jobs": [
        {"command": "true", "env": {"A": p["env2"]}}, {"command": "true"}]}))  # fmt: skip
    job = {"command": "true", "env": {"TOKEN": p["schedule_env"]}}
    r = api.post("/api/v1/schedules", json={"name": "nightly", "cron": "0 3 * * *", "job": job})
    _ok(r)
    job2 = {"command": "true", "env": {"TOKEN": p["schedule_env2"]}, "priority": 5}
    _ok(api.patch("/api/v1/schedules/nightly", json={"job": job2}))
    _ok(api.post("/api/v1/secrets", json={"name": "prod-db", "value": p["secret"]}))
    _ok(api.put("/api/v1/secrets/prod-db", json={"value": p["secret2"]}))
    _ok(api.patch("/api/v1/secrets/prod-db", json={"value": p["secret3"]}))
    r = api.post("/api/v1/users", json={"name": "carol", "role": "submitter",
                                         "password": p["password"]})  # fmt: skip
    _ok(r)
    carol = r.json()["id"]
    _ok(api.patch(f"/api/v1/users/{carol}", json={"password": p["password2"]}))
    r = api.post(f"/api/v1/users/{carol}/api-keys", json={"name": "ci", "scope": "submit"})
    _ok(r)
    key = r.json()["key"]
    target = {"name": "hook", "kind": "webhook", "secret": p["target_secret"],
              "url": f"http://127.0.0.1:9/hooks/{p['url_token']}"}  # fmt: skip
    _ok(api.post("/api/v1/notification-targets", json=target))
    _ok(api.patch("/api/v1/notification-targets/hook", json={"secret": p["target_secret2"]}))
    browser = secapp.client(follow_redirects=False)
    token = _CSRF.search(browser.get("/login").text)
    assert token is not None
    for name in ("carol", p["wrong"]):  # a password typed in the name field, too
        r = browser.post("/login", data={"name": name, "password": p["wrong"],
                                         "csrf_token": token.group(1)})  # fmt: skip
        assert r.status_code in (200, 401, 403, 429), r.text

    text = _all_audit_text(secapp)
    for what, value in p.items():
        assert value not in text, f"the audit log holds the planted {what}"
    assert key not in text and key[11:] not in text
    assert secapp.admin_key not in text and secapp.admin_key[11:] not in text
    # the entries are there, only without the values; a schedule's job says what changed
    assert "job.env (changed)" in text and "job.priority: " in text
    for action in ("job.submit", "schedule.update", "secret.update", "user.update",
                   "key.create", "notification_target.update", "login.failed"):  # fmt: skip
        assert action in text, action
