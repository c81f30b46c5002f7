"""Every route that changes something writes exactly one audit entry, and a key scoped
``read`` reaches none of them.

The routes are enumerated from the app itself (as test_routes_need_auth.py does): a
state-changing route (POST, PUT, PATCH, DELETE) added later without an entry in CASES
fails here, by name. To add one: call ``audit.record(conn, user, "thing.verb", "thing",
id, name, summary)`` in the service function the route calls (in its transaction), and
add a case below that performs the route once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from jobbalancer import auth, db
from jobbalancer.api import deps
from jobbalancer.db import schema
from tests.security.conftest import App
from tests.security.test_routes_need_auth import _walk

CHANGES = {"POST", "PUT", "PATCH", "DELETE"}
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
PASSWORD = "correct horse battery"


@dataclass
class World:
    """The app, an admin's API client and logged-in browser, and objects to act on."""

    app: App
    browser: Any = None
    csrf: str = ""
    made: dict[str, int] = field(default_factory=dict)

    @property
    def api(self) -> Any:
        return self.app.admin

    def n(self, kind: str) -> int:
        self.made[kind] = self.made.get(kind, 0) + 1
        return self.made[kind]

    def login(self, name: str = "admin", password: str | None = None) -> tuple[Any, str]:
        client = self.app.client(follow_redirects=False)
        form = client.get("/login")
        token = _CSRF.search(form.text)
        assert token is not None
        first = self.app.app.state.first_admin
        r = client.post("/login", data={"name": name, "password": password or first[1],
                                        "csrf_token": token.group(1)})  # fmt: skip
        assert r.status_code == 303, r.text
        home = client.get("/")
        found = _CSRF.search(home.text)
        assert found is not None
        return client, found.group(1)

    def post(self, path: str, data: dict[str, Any] | None = None) -> Any:
        return self.browser.post(path, data={**(data or {}), "csrf_token": self.csrf})

    # -- objects ------------------------------------------------------------------------

    def job(self, *, state: str = "waiting") -> int:
        r = self.api.post("/api/v1/jobs", json={"command": "true"})
        assert r.status_code == 201, r.text
        job_id = int(r.json()["id"])
        if state == "killed":
            assert self.api.post(f"/api/v1/jobs/{job_id}/kill").status_code == 202
        return job_id

    def script(self) -> int:
        body = {"name": f"s{self.n('script')}", "interpreter": "sh", "content": "echo hi\n"}
        r = self.api.post("/api/v1/scripts", json=body)
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def klass(self) -> int:
        r = self.api.post("/api/v1/worker-classes", json={"name": f"c{self.n('class')}"})
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def worker(self, *, offline: bool = False) -> int:
        worker_id = self.app.worker(f"w{self.n('worker')}")
        if offline:
            with db.write(self.app.engine) as conn:
                w = schema.workers
                conn.execute(sa.update(w).where(w.c.id == worker_id).values(state="offline"))
        return worker_id

    def user(self, role: str = "viewer", password: str | None = None) -> int:
        with db.write(self.app.engine) as conn:
            return auth.create_user(conn, f"u{self.n('user')}", role, password).id

    def key(self, user_id: int = 1) -> int:
        r = self.api.post(f"/api/v1/users/{user_id}/api-keys", json={"name": "k"})
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def target(self) -> int:
        body = {"name": f"t{self.n('target')}", "kind": "webhook",
                "url": "http://127.0.0.1:9/hook"}  # fmt: skip
        r = self.api.post("/api/v1/notification-targets", json=body)
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def schedule(self) -> int:
        body = {"name": f"sch{self.n('schedule')}", "cron": "0 3 * * *",
                "job": {"command": "true"}}  # fmt: skip
        r = self.api.post("/api/v1/schedules", json=body)
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def secret(self) -> int:
        body = {"name": f"sec{self.n('secret')}", "value": "planted-secret-value"}
        r = self.api.post("/api/v1/secrets", json=body)
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def rule(self) -> int:
        body = {"on": ["failed"], "target": self.target()}
        r = self.api.post("/api/v1/notification-rules", json=body)
        assert r.status_code == 201, r.text
        return int(r.json()["id"])


# A case sets up what the route needs, and returns the call that performs it (once) and
# the action its entry must have.
Call = Callable[[], Any]
Case = Callable[[World], tuple[Call, str]]


def _web_password_change(w: World) -> tuple[Call, str]:
    user_id = w.user("viewer", PASSWORD)
    client, csrf = w.login(f"u{w.made['user']}", PASSWORD)
    data = {"current_password": PASSWORD, "new_password": "another horse battery",
            "repeat_password": "another horse battery", "csrf_token": csrf}  # fmt: skip
    assert user_id
    return lambda: client.post("/account/password", data=data), "user.password"


def _web_login(w: World) -> tuple[Call, str]:
    client = w.app.client(follow_redirects=False)
    token = _CSRF.search(client.get("/login").text)
    assert token is not None
    data = {"name": "admin", "password": w.app.app.state.first_admin[1],
            "csrf_token": token.group(1)}  # fmt: skip
    return lambda: client.post("/login", data=data), "login"


def _web_logout(w: World) -> tuple[Call, str]:
    client, csrf = w.login()
    return lambda: client.post("/logout", data={"csrf_token": csrf}), "logout"


def _legacy(w: World) -> tuple[Call, str]:
    body = {"command": "true", "apiKey": w.app.admin_key}
    return lambda: w.app.client().post("/addJob", json=body), "job.submit"


# Routes that take a POST but change nothing (nothing to record; a read key may use them).
NOT_CHANGES = {("POST", path) for path in deps.LOOKS_ONLY}

SCHEDULE_FORM = {"name": "websched", "cron": "0 4 * * *", "timezone": "UTC",
                 "overlap": "skip", "catch_up": "latest", "catch_up_max": "10",
                 "enabled": "on", "kind": "command", "command": "true",
                 "worker_class": "default"}  # fmt: skip

CASES: dict[tuple[str, str], Case] = {
    # -- the JSON API --
    ("POST", "/api/v1/jobs"): lambda w: (
        lambda: w.api.post("/api/v1/jobs", json={"command": "true"}), "job.submit"),
    ("POST", "/api/v1/jobs/batch"): lambda w: (
        lambda: w.api.post("/api/v1/jobs/batch",
                           json={"jobs": [{"command": "true"}, {"command": "false"}]}),
        "job.submit"),
    ("POST", "/api/v1/jobs/{job_id}/kill"): lambda w: (
        (lambda j: lambda: w.api.post(f"/api/v1/jobs/{j}/kill"))(w.job()), "job.kill"),
    ("POST", "/api/v1/jobs/{job_id}/restart"): lambda w: (
        (lambda j: lambda: w.api.post(f"/api/v1/jobs/{j}/restart"))(w.job()), "job.restart"),
    ("DELETE", "/api/v1/jobs/{job_id}"): lambda w: (
        (lambda j: lambda: w.api.delete(f"/api/v1/jobs/{j}"))(w.job(state="killed")),
        "job.delete"),
    ("POST", "/addJob"): _legacy,
    ("PATCH", "/api/v1/workers/{worker_id}"): lambda w: (
        (lambda i: lambda: w.api.patch(f"/api/v1/workers/{i}", json={"max_jobs": 3}))(
            w.worker()), "worker.update"),
    ("DELETE", "/api/v1/workers/{worker_id}"): lambda w: (
        (lambda i: lambda: w.api.delete(f"/api/v1/workers/{i}"))(w.worker(offline=True)),
        "worker.remove"),
    ("POST", "/api/v1/worker-classes"): lambda w: (
        lambda: w.api.post("/api/v1/worker-classes", json={"name": "fresh"}), "class.create"),
    ("PATCH", "/api/v1/worker-classes/{class_id}"): lambda w: (
        (lambda i: lambda: w.api.patch(f"/api/v1/worker-classes/{i}", json={"max_jobs": 4}))(
            w.klass()), "class.update"),
    ("DELETE", "/api/v1/worker-classes/{class_id}"): lambda w: (
        (lambda i: lambda: w.api.delete(f"/api/v1/worker-classes/{i}"))(w.klass()),
        "class.delete"),
    ("POST", "/api/v1/scripts"): lambda w: (
        lambda: w.api.post("/api/v1/scripts",
                           json={"name": "fresh", "interpreter": "sh", "content": "true"}),
        "script.create"),
    ("PATCH", "/api/v1/scripts/{script_id}"): lambda w: (
        (lambda i: lambda: w.api.patch(f"/api/v1/scripts/{i}", json={"content": "false\n"}))(
            w.script()), "script.update"),
    ("DELETE", "/api/v1/scripts/{script_id}"): lambda w: (
        (lambda i: lambda: w.api.delete(f"/api/v1/scripts/{i}"))(w.script()), "script.delete"),
    ("POST", "/api/v1/users"): lambda w: (
        lambda: w.api.post("/api/v1/users", json={"name": "fresh", "role": "viewer"}),
        "user.create"),
    ("PATCH", "/api/v1/users/{user_id}"): lambda w: (
        (lambda i: lambda: w.api.patch(f"/api/v1/users/{i}", json={"role": "submitter"}))(
            w.user()), "user.update"),
    ("DELETE", "/api/v1/users/{user_id}"): lambda w: (
        (lambda i: lambda: w.api.delete(f"/api/v1/users/{i}"))(w.user()), "user.delete"),
    ("POST", "/api/v1/users/{user_id}/api-keys"): lambda w: (
        (lambda i: lambda: w.api.post(f"/api/v1/users/{i}/api-keys", json={"name": "ci"}))(
            w.user()), "key.create"),
    ("DELETE", "/api/v1/users/{user_id}/api-keys/{key_id}"): lambda w: (
        (lambda k: lambda: w.api.delete(f"/api/v1/users/1/api-keys/{k}"))(w.key()),
        "key.revoke"),
    ("PATCH", "/api/v1/settings"): lambda w: (
        lambda: w.api.patch("/api/v1/settings", json={"kill_grace": 7}), "setting.update"),
    ("POST", "/api/v1/notification-targets"): lambda w: (
        lambda: w.api.post("/api/v1/notification-targets",
                           json={"name": "fresh", "kind": "webhook",
                                 "url": "http://127.0.0.1:9/x", "secret": "s3cr3t-value"}),
        "notification_target.create"),
    ("PATCH", "/api/v1/notification-targets/{ref}"): lambda w: (
        (lambda i: lambda: w.api.patch(f"/api/v1/notification-targets/{i}",
                                       json={"url": "http://127.0.0.1:9/y"}))(w.target()),
        "notification_target.update"),
    ("DELETE", "/api/v1/notification-targets/{ref}"): lambda w: (
        (lambda i: lambda: w.api.delete(f"/api/v1/notification-targets/{i}"))(w.target()),
        "notification_target.delete"),
    ("POST", "/api/v1/notification-targets/{ref}/test"): lambda w: (
        (lambda i: lambda: w.api.post(f"/api/v1/notification-targets/{i}/test"))(w.target()),
        "notification_target.test"),
    ("POST", "/api/v1/notification-rules"): lambda w: (
        (lambda t: lambda: w.api.post("/api/v1/notification-rules",
                                      json={"on": ["failed"], "target": t}))(w.target()),
        "notification_rule.create"),
    ("DELETE", "/api/v1/notification-rules/{rule_id}"): lambda w: (
        (lambda i: lambda: w.api.delete(f"/api/v1/notification-rules/{i}"))(w.rule()),
        "notification_rule.delete"),
    ("POST", "/api/v1/schedules"): lambda w: (
        lambda: w.api.post("/api/v1/schedules", json={"name": "fresh", "cron": "0 3 * * *",
                                                      "job": {"command": "true"}}),
        "schedule.create"),
    ("PATCH", "/api/v1/schedules/{ref}"): lambda w: (
        (lambda i: lambda: w.api.patch(f"/api/v1/schedules/{i}", json={"cron": "0 5 * * *"}))(
            w.schedule()), "schedule.update"),
    ("DELETE", "/api/v1/schedules/{ref}"): lambda w: (
        (lambda i: lambda: w.api.delete(f"/api/v1/schedules/{i}"))(w.schedule()),
        "schedule.delete"),
    ("POST", "/api/v1/schedules/{ref}/pause"): lambda w: (
        (lambda i: lambda: w.api.post(f"/api/v1/schedules/{i}/pause"))(w.schedule()),
        "schedule.pause"),
    ("POST", "/api/v1/schedules/{ref}/resume"): lambda w: (
        (lambda i: lambda: w.api.post(f"/api/v1/schedules/{i}/resume"))(w.schedule()),
        "schedule.resume"),
    ("POST", "/api/v1/schedules/{ref}/run"): lambda w: (
        (lambda i: lambda: w.api.post(f"/api/v1/schedules/{i}/run"))(w.schedule()),
        "schedule.run"),
    ("POST", "/api/v1/secrets"): lambda w: (
        lambda: w.api.post("/api/v1/secrets", json={"name": "fresh-secret",
                                                    "value": "planted-secret-value"}),
        "secret.create"),
    ("PUT", "/api/v1/secrets/{ref}"): lambda w: (
        (lambda i: lambda: w.api.put(f"/api/v1/secrets/{i}",
                                     json={"value": "planted-secret-value-2"}))(w.secret()),
        "secret.update"),
    ("PATCH", "/api/v1/secrets/{ref}"): lambda w: (
        (lambda i: lambda: w.api.patch(f"/api/v1/secrets/{i}", json={"description": "d"}))(
            w.secret()), "secret.update"),
    ("DELETE", "/api/v1/secrets/{ref}"): lambda w: (
        (lambda i: lambda: w.api.delete(f"/api/v1/secrets/{i}"))(w.secret()), "secret.delete"),
    # -- the web UI --
    ("POST", "/schedules"): lambda w: (
        lambda: w.post("/schedules", SCHEDULE_FORM), "schedule.create"),
    ("POST", "/schedules/{schedule_id}"): lambda w: (
        (lambda i: lambda: w.post(f"/schedules/{i}", {**SCHEDULE_FORM,
                                                      "name": f"sch{w.made['schedule']}",
                                                      "cron": "0 6 * * *"}))(w.schedule()),
        "schedule.update"),
    ("POST", "/schedules/{schedule_id}/delete"): lambda w: (
        (lambda i: lambda: w.post(f"/schedules/{i}/delete"))(w.schedule()), "schedule.delete"),
    ("POST", "/schedules/{schedule_id}/pause"): lambda w: (
        (lambda i: lambda: w.post(f"/schedules/{i}/pause"))(w.schedule()), "schedule.pause"),
    ("POST", "/schedules/{schedule_id}/resume"): lambda w: (
        (lambda i: lambda: w.post(f"/schedules/{i}/resume"))(w.schedule()), "schedule.resume"),
    ("POST", "/schedules/{schedule_id}/run"): lambda w: (
        (lambda i: lambda: w.post(f"/schedules/{i}/run"))(w.schedule()), "schedule.run"),
    ("POST", "/secrets"): lambda w: (
        lambda: w.post("/secrets", {"name": "web-secret", "value": "planted-secret-value"}),
        "secret.create"),
    ("POST", "/secrets/{secret_id}/delete"): lambda w: (
        (lambda i: lambda: w.post(f"/secrets/{i}/delete"))(w.secret()), "secret.delete"),
    ("POST", "/login"): _web_login,
    ("POST", "/logout"): _web_logout,
    ("POST", "/account/password"): _web_password_change,
    ("POST", "/account/keys"): lambda w: (
        lambda: w.post("/account/keys", {"name": "mine", "scope": "submit"}), "key.create"),
    ("POST", "/account/keys/{key_id}/revoke"): lambda w: (
        (lambda k: lambda: w.post(f"/account/keys/{k}/revoke"))(w.key()), "key.revoke"),
    ("POST", "/classes"): lambda w: (
        lambda: w.post("/classes", {"name": "webclass", "max_jobs": "2"}), "class.create"),
    ("POST", "/classes/{class_id}/edit"): lambda w: (
        (lambda i: lambda: w.post(f"/classes/{i}/edit", {"max_jobs": "5"}))(w.klass()),
        "class.update"),
    ("POST", "/classes/{class_id}/delete"): lambda w: (
        (lambda i: lambda: w.post(f"/classes/{i}/delete"))(w.klass()), "class.delete"),
    ("POST", "/jobs"): lambda w: (
        lambda: w.post("/jobs", {"kind": "command", "command": "true",
                                 "worker_class": "default"}), "job.submit"),
    ("POST", "/jobs/bulk"): lambda w: (
        (lambda j: lambda: w.post("/jobs/bulk", {"action": "kill", "ids": [str(j)]}))(w.job()),
        "job.kill"),
    ("POST", "/jobs/{job_id}/kill"): lambda w: (
        (lambda j: lambda: w.post(f"/jobs/{j}/kill"))(w.job()), "job.kill"),
    ("POST", "/jobs/{job_id}/restart"): lambda w: (
        (lambda j: lambda: w.post(f"/jobs/{j}/restart"))(w.job()), "job.restart"),
    ("POST", "/jobs/{job_id}/delete"): lambda w: (
        (lambda j: lambda: w.post(f"/jobs/{j}/delete"))(w.job(state="killed")), "job.delete"),
    ("POST", "/notifications/targets"): lambda w: (
        lambda: w.post("/notifications/targets", {"name": "webtarget", "kind": "webhook",
                                                  "url": "http://127.0.0.1:9/z"}),
        "notification_target.create"),
    ("POST", "/notifications/targets/{target_id}/test"): lambda w: (
        (lambda i: lambda: w.post(f"/notifications/targets/{i}/test"))(w.target()),
        "notification_target.test"),
    ("POST", "/notifications/targets/{target_id}/delete"): lambda w: (
        (lambda i: lambda: w.post(f"/notifications/targets/{i}/delete"))(w.target()),
        "notification_target.delete"),
    ("POST", "/notifications/rules"): lambda w: (
        (lambda t: lambda: w.post("/notifications/rules", {"on": "failed", "target": str(t)}))(
            w.target()), "notification_rule.create"),
    ("POST", "/notifications/rules/{rule_id}/delete"): lambda w: (
        (lambda i: lambda: w.post(f"/notifications/rules/{i}/delete"))(w.rule()),
        "notification_rule.delete"),
    ("POST", "/scripts"): lambda w: (
        lambda: w.post("/scripts", {"name": "webscript", "interpreter_choice": "sh",
                                    "content": "echo hi\n"}), "script.create"),
    ("POST", "/scripts/{script_id}"): lambda w: (
        (lambda i: lambda: w.post(f"/scripts/{i}", {"name": f"s{w.made['script']}",
                                                    "interpreter_choice": "sh",
                                                    "content": "echo bye\n"}))(w.script()),
        "script.update"),
    ("POST", "/scripts/{script_id}/delete"): lambda w: (
        (lambda i: lambda: w.post(f"/scripts/{i}/delete"))(w.script()), "script.delete"),
    ("POST", "/scripts/{script_id}/run"): lambda w: (
        (lambda i: lambda: w.post(f"/scripts/{i}/run", {"params": "a"}))(w.script()),
        "job.submit"),
    ("POST", "/settings"): lambda w: (
        lambda: w.post("/settings", {"algorithm": "random"}), "setting.update"),
    ("POST", "/users"): lambda w: (
        lambda: w.post("/users", {"name": "webuser", "role": "viewer",
                                  "password": "long enough password"}), "user.create"),
    ("POST", "/users/{user_id}/edit"): lambda w: (
        (lambda i: lambda: w.post(f"/users/{i}/edit", {"role": "submitter"}))(w.user()),
        "user.update"),
    ("POST", "/users/{user_id}/password"): lambda w: (
        (lambda i: lambda: w.post(f"/users/{i}/password"))(w.user()), "user.update"),
    ("POST", "/users/{user_id}/disable"): lambda w: (
        (lambda i: lambda: w.post(f"/users/{i}/disable"))(w.user()), "user.update"),
    ("POST", "/users/{user_id}/enable"): lambda w: (
        (lambda i: lambda: w.post(f"/users/{i}/enable"))(w.user()), "user.update"),
    ("POST", "/users/{user_id}/delete"): lambda w: (
        (lambda i: lambda: w.post(f"/users/{i}/delete"))(w.user()), "user.delete"),
    ("POST", "/users/{user_id}/keys"): lambda w: (
        (lambda i: lambda: w.post(f"/users/{i}/keys", {"name": "k", "expires": "30d"}))(
            w.user()), "key.create"),
    ("POST", "/users/{user_id}/keys/{key_id}/revoke"): lambda w: (
        (lambda k: lambda: w.post(f"/users/1/keys/{k}/revoke"))(w.key()), "key.revoke"),
    ("POST", "/workers/{worker_id}/edit"): lambda w: (
        (lambda i: lambda: w.post(f"/workers/{i}/edit", {"worker_class": "default",
                                                         "max_jobs": "4"}))(w.worker()),
        "worker.update"),
    ("POST", "/workers/{worker_id}/disable"): lambda w: (
        (lambda i: lambda: w.post(f"/workers/{i}/disable"))(w.worker()), "worker.disable"),
    ("POST", "/workers/{worker_id}/enable"): lambda w: (
        (lambda i: lambda: w.post(f"/workers/{i}/enable"))(w.worker()), "worker.enable"),
    ("POST", "/workers/{worker_id}/remove"): lambda w: (
        (lambda i: lambda: w.post(f"/workers/{i}/remove"))(w.worker(offline=True)),
        "worker.remove"),
}  # fmt: skip


def changing_routes(secapp: App) -> list[tuple[str, str]]:
    """(method, path) of every route of the app that may change something."""
    found = {(m, p) for p, ms in _walk(list(secapp.app.routes)) for m in ms if m in CHANGES}
    return sorted(found, key=lambda r: (r[1], r[0]))


def _entries(app: App) -> list[Any]:
    with db.read(app.engine) as conn:
        a = schema.audit_log
        return list(conn.execute(sa.select(a).order_by(a.c.id)))


def test_every_state_changing_route_writes_exactly_one_audit_entry(secapp: App) -> None:
    routes = changing_routes(secapp)
    routes = [r for r in routes if r not in NOT_CHANGES]
    missing = [f"{m} {p}" for m, p in routes if (m, p) not in CASES]
    assert not missing, (
        "these routes change something but are not checked for an audit entry: give each "
        "an audit.record(...) call in the service function it calls, then a case in "
        "CASES of tests/security/test_audit_every_change.py:\n  " + "\n  ".join(missing)
    )
    assert len(routes) >= 50  # the enumeration really sees the app
    world = World(secapp)
    world.browser, world.csrf = world.login()
    wrong = []
    for method, path in routes:
        call, action = CASES[(method, path)](world)
        before = len(_entries(secapp))
        r = call()
        new = _entries(secapp)[before:]
        actions = [e.action for e in new]
        if r.status_code >= 400 or actions != [action]:
            wrong.append(f"{method} {path}: {r.status_code}, wrote {actions or 'nothing'}, "
                         f"not [{action!r}]: {r.text[:200]}")  # fmt: skip
    assert not wrong, "\n".join(wrong)
    # Nothing secret went into the log: passwords, keys, a target's secret.
    text = " ".join(f"{e.summary} {e.object_name}" for e in _entries(secapp))
    assert "s3cr3t-value" not in text and "long enough password" not in text
    assert "planted-secret-value" not in text
    assert "jb_" not in text.replace("prefix jb_", "")
    assert secapp.admin_key not in text


def test_a_failed_change_writes_no_entry(secapp: App) -> None:
    before = len(_entries(secapp))
    r = secapp.admin.post("/api/v1/jobs/batch", json={"jobs": [{"command": "true"},
                                                               {"command": ""}]})  # fmt: skip
    assert r.status_code == 422
    r = secapp.admin.patch("/api/v1/users/1", json={"role": "viewer"})  # the last admin
    assert r.status_code == 409
    assert len(_entries(secapp)) == before


@pytest.mark.parametrize("owner_role", ["admin", "viewer"])
def test_a_read_key_reaches_no_state_changing_route(secapp: App, owner_role: str) -> None:
    owner_id, _ = secapp.user(f"reader_{owner_role}", owner_role)
    r = secapp.admin.post(
        f"/api/v1/users/{owner_id}/api-keys", json={"name": "ro", "scope": "read"}
    )
    assert r.status_code == 201 and r.json()["scope"] == "read", r.text
    reader = secapp.client(r.json()["key"], follow_redirects=False)
    assert reader.get("/api/v1/jobs").status_code == 200  # it may look
    world = World(secapp)
    routes = changing_routes(secapp)
    reached = []
    for method, path in routes:
        if path == "/login" or (method, path) in NOT_CHANGES:  # open, or changes nothing
            continue
        concrete = re.sub(r"\{[^}]+\}", "1", path)
        before = len(_entries(secapp))
        body = {"command": "true", "apiKey": r.json()["key"]} if path == "/addJob" else {}
        answer = reader.request(method, concrete, json=body)
        refused = answer.status_code in (401, 403) or (
            answer.status_code in (302, 303, 307) and "login" in answer.headers["location"]
        )
        if not refused or len(_entries(secapp)) != before:
            reached.append(f"{method} {path}: {answer.status_code} {answer.text[:120]}")
    assert not reached, "\n".join(reached)
    assert world.app is secapp
