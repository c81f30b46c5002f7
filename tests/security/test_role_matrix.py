"""Each role against each action gets exactly what docs/design.md and docs/api.md say.

admin: everything. operator: submit, manage any job, workers, classes, scripts; not users
or settings. submitter: submit, see and manage only its own jobs (others' do not exist for
it: 404). viewer: read-only. Any user: itself and its own API keys. Users limited to
stored scripts cannot run commands; users limited to classes cannot reach other classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.security.conftest import App

ROLES = ("admin", "operator", "submitter", "viewer")


@dataclass
class World:
    """Fresh objects for one action: made by the admin, so the actor owns none of them
    unless stated."""

    app: App
    actor_id: int
    actor_key: str

    def job(self, *, own: bool = False, state: str = "waiting") -> int:
        key = self.actor_key if own else self.app.admin_key
        body: dict[str, Any] = {"command": "true"}
        if state == "delayed":
            body["delay"] = 3600
        r = self.app.client(key).post("/api/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        job_id = int(r.json()["id"])
        if state == "killed":
            r = self.app.admin.post(f"/api/v1/jobs/{job_id}/kill")
            assert r.status_code == 202, r.text
        return job_id

    def script(self) -> int:
        r = self.app.admin.post(
            "/api/v1/scripts",
            json={"name": f"s{self.app.admin.get('/api/v1/scripts').json().__len__()}",
                  "interpreter": "sh", "content": "echo hi"},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def klass(self) -> int:
        n = len(self.app.admin.get("/api/v1/worker-classes").json())
        r = self.app.admin.post("/api/v1/worker-classes", json={"name": f"c{n}"})
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def worker(self) -> int:
        n = len(self.app.admin.get("/api/v1/workers").json())
        return self.app.worker(f"w{n}")

    def secret(self) -> str:
        n = len(self.app.admin.get("/api/v1/secrets").json())
        r = self.app.admin.post("/api/v1/secrets", json={"name": f"sec{n}", "value": "v4lue"})
        assert r.status_code == 201, r.text
        return str(r.json()["name"])

    def other_user(self) -> int:
        n = len(self.app.admin.get("/api/v1/users").json())
        return self.app.user(f"other{n}", "viewer")[0]

    def schedule(self) -> int:
        n = len(self.app.admin.get("/api/v1/schedules").json())
        body = {"name": f"sched{n}", "cron": "@daily", "job": {"command": "true"}}
        r = self.app.admin.post("/api/v1/schedules", json=body)
        assert r.status_code == 201, r.text
        return int(r.json()["id"])


Action = tuple[str, str, Callable[[World], tuple[str, Any]], dict[str, int]]


def _all(status: int) -> dict[str, int]:
    return dict.fromkeys(ROLES, status)


def _only(allowed: tuple[str, ...], ok: int, *, otherwise: int = 403) -> dict[str, int]:
    return {role: ok if role in allowed else otherwise for role in ROLES}


STAFF = ("admin", "operator")
SUBMITTERS = ("admin", "operator", "submitter")
# A submitter does not see others' jobs at all (404, ids do not leak); a viewer sees them
# but may not change them (403).
OTHERS_JOB = {"admin": 0, "operator": 0, "submitter": 404, "viewer": 403}

ACTIONS: list[Action] = [
    ("GET", "me", lambda w: ("/api/v1/me", None), _all(200)),
    ("GET", "list jobs", lambda w: ("/api/v1/jobs", None), _all(200)),
    ("POST", "submit", lambda w: ("/api/v1/jobs", {"command": "true"}), _only(SUBMITTERS, 201)),
    (
        "POST",
        "submit batch",
        lambda w: ("/api/v1/jobs/batch", {"jobs": [{"command": "true"}]}),
        _only(SUBMITTERS, 201),
    ),
    (
        "GET",
        "see another's job",
        lambda w: (f"/api/v1/jobs/{w.job()}", None),
        {"admin": 200, "operator": 200, "submitter": 404, "viewer": 200},
    ),
    (
        "GET",
        "read another's log",
        lambda w: (f"/api/v1/jobs/{w.job()}/log", None),
        {"admin": 200, "operator": 200, "submitter": 404, "viewer": 200},
    ),
    (
        "POST",
        "kill another's job",
        lambda w: (f"/api/v1/jobs/{w.job()}/kill", None),
        {**OTHERS_JOB, "admin": 202, "operator": 202},
    ),
    (
        "POST",
        "restart another's job",
        lambda w: (f"/api/v1/jobs/{w.job()}/restart", None),
        {**OTHERS_JOB, "admin": 201, "operator": 201},
    ),
    (
        "DELETE",
        "delete another's job",
        lambda w: (f"/api/v1/jobs/{w.job(state='killed')}", None),
        {**OTHERS_JOB, "admin": 204, "operator": 204},
    ),
    (
        "POST",
        "kill another's delayed job",
        lambda w: (f"/api/v1/jobs/{w.job(state='delayed')}/kill", None),
        {**OTHERS_JOB, "admin": 202, "operator": 202},
    ),
    (
        "DELETE",
        "delete another's delayed job",
        lambda w: (f"/api/v1/jobs/{w.job(state='delayed')}", None),
        {**OTHERS_JOB, "admin": 204, "operator": 204},
    ),
    ("GET", "list workers", lambda w: ("/api/v1/workers", None), _all(200)),
    (
        "PATCH",
        "change a worker",
        lambda w: (f"/api/v1/workers/{w.worker()}", {"enabled": False}),
        _only(STAFF, 200),
    ),
    ("GET", "list classes", lambda w: ("/api/v1/worker-classes", None), _all(200)),
    (
        "POST",
        "create a class",
        lambda w: ("/api/v1/worker-classes", {"name": "newclass"}),
        _only(STAFF, 201),
    ),
    (
        "PATCH",
        "change a class",
        lambda w: (f"/api/v1/worker-classes/{w.klass()}", {"max_jobs": 3}),
        _only(STAFF, 200),
    ),
    (
        "DELETE",
        "delete a class",
        lambda w: (f"/api/v1/worker-classes/{w.klass()}", None),
        _only(STAFF, 204),
    ),
    ("GET", "list scripts", lambda w: ("/api/v1/scripts", None), _all(200)),
    ("GET", "read a script", lambda w: (f"/api/v1/scripts/{w.script()}", None), _all(200)),
    (
        "POST",
        "create a script",
        lambda w: ("/api/v1/scripts", {"name": "new", "interpreter": "sh", "content": "true"}),
        _only(STAFF, 201),
    ),
    (
        "PATCH",
        "change a script",
        lambda w: (f"/api/v1/scripts/{w.script()}", {"content": "false"}),
        _only(STAFF, 200),
    ),
    (
        "DELETE",
        "delete a script",
        lambda w: (f"/api/v1/scripts/{w.script()}", None),
        _only(STAFF, 204),
    ),
    ("GET", "list users", lambda w: ("/api/v1/users", None), _only(("admin",), 200)),
    (
        "POST",
        "create a user",
        lambda w: ("/api/v1/users", {"name": "newbie", "role": "viewer"}),
        _only(("admin",), 201),
    ),
    (
        "GET",
        "see another user",
        lambda w: (f"/api/v1/users/{w.other_user()}", None),
        _only(("admin",), 200),
    ),
    (
        "PATCH",
        "promote oneself",
        lambda w: (f"/api/v1/users/{w.actor_id}", {"role": "admin"}),
        _only(("admin",), 200),
    ),
    (
        "DELETE",
        "delete another user",
        lambda w: (f"/api/v1/users/{w.other_user()}", None),
        _only(("admin",), 204),
    ),
    ("GET", "see oneself", lambda w: (f"/api/v1/users/{w.actor_id}", None), _all(200)),
    (
        "POST",
        "make a key for oneself",
        lambda w: (f"/api/v1/users/{w.actor_id}/api-keys", {"name": "mine"}),
        # A viewer's key has scope read, which changes nothing (its keys neither: the web
        # session of the account page does that).
        _only(SUBMITTERS, 201),
    ),
    (
        "POST",
        "make a key for another user",
        lambda w: (f"/api/v1/users/{w.other_user()}/api-keys", {"name": "theirs"}),
        _only(("admin",), 201),
    ),
    (
        "GET",
        "list another's keys",
        lambda w: (f"/api/v1/users/{w.other_user()}/api-keys", None),
        _only(("admin",), 200),
    ),
    ("GET", "read settings", lambda w: ("/api/v1/settings", None), _all(200)),
    (
        "PATCH",
        "change settings",
        lambda w: ("/api/v1/settings", {"kill_grace": 2}),
        _only(("admin",), 200),
    ),
    ("GET", "stats", lambda w: ("/api/v1/stats", None), _all(200)),
    ("GET", "metrics", lambda w: ("/metrics", None), _all(200)),
    # Secrets: admins manage them (not operators: see service/secrets.py); everyone lists
    # those they may use, and may submit a job naming one (if they may submit at all).
    ("GET", "list secrets", lambda w: ("/api/v1/secrets", None), _all(200)),
    ("GET", "see a secret", lambda w: (f"/api/v1/secrets/{w.secret()}", None), _all(200)),
    (
        "POST",
        "create a secret",
        lambda w: ("/api/v1/secrets", {"name": "mine", "value": "v"}),
        _only(("admin",), 201),
    ),
    (
        "PUT",
        "replace a secret",
        lambda w: (f"/api/v1/secrets/{w.secret()}", {"value": "known-to-me"}),
        _only(("admin",), 200),
    ),
    (
        "PATCH",
        "widen a secret's users",
        lambda w: (f"/api/v1/secrets/{w.secret()}", {"users": None}),
        _only(("admin",), 200),
    ),
    (
        "DELETE",
        "delete a secret",
        lambda w: (f"/api/v1/secrets/{w.secret()}", None),
        _only(("admin",), 204),
    ),
    (
        "POST",
        "submit with a secret",
        lambda w: ("/api/v1/jobs", {"command": "true", "secret_env": {"P": w.secret()}}),
        _only(SUBMITTERS, 201),
    ),
    (
        "POST",
        "legacy submit",
        lambda w: ("/addJob", {"command": "true", "apiKey": w.actor_key}),
        _only(SUBMITTERS, 200),
    ),
]


# Schedules: admins and operators manage all; a submitter only its own (others' do not
# exist for it); viewers read.
_SCHEDULE = {"name": "mine", "cron": "*/15 * * * *", "job": {"command": "true"}}
ACTIONS += [
    ("GET", "list schedules", lambda w: ("/api/v1/schedules", None), _all(200)),
    ("POST", "create a schedule", lambda w: ("/api/v1/schedules", _SCHEDULE),
     _only(SUBMITTERS, 201)),
    ("POST", "preview a schedule", lambda w: ("/api/v1/schedules/preview", {"cron": "@hourly"}),
     _all(200)),
    ("GET", "see another's schedule", lambda w: (f"/api/v1/schedules/{w.schedule()}", None),
     {"admin": 200, "operator": 200, "submitter": 404, "viewer": 200}),
    ("GET", "another's schedule history",
     lambda w: (f"/api/v1/schedules/{w.schedule()}/history", None),
     {"admin": 200, "operator": 200, "submitter": 404, "viewer": 200}),
    ("PATCH", "change another's schedule",
     lambda w: (f"/api/v1/schedules/{w.schedule()}", {"cron": "@hourly"}),
     {**OTHERS_JOB, "admin": 200, "operator": 200}),
    ("POST", "pause another's schedule",
     lambda w: (f"/api/v1/schedules/{w.schedule()}/pause", None),
     {**OTHERS_JOB, "admin": 200, "operator": 200}),
    ("POST", "resume another's schedule",
     lambda w: (f"/api/v1/schedules/{w.schedule()}/resume", None),
     {**OTHERS_JOB, "admin": 200, "operator": 200}),
    ("POST", "run another's schedule now",
     lambda w: (f"/api/v1/schedules/{w.schedule()}/run", None),
     {**OTHERS_JOB, "admin": 201, "operator": 201}),
    ("DELETE", "delete another's schedule",
     lambda w: (f"/api/v1/schedules/{w.schedule()}", None),
     {**OTHERS_JOB, "admin": 204, "operator": 204}),
]  # fmt: skip


@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_exactly_what_the_design_says(secapp: App, role: str) -> None:
    if role == "admin":
        actor_id, key = secapp.user("actor", "admin")  # a second admin: the first stays
    else:
        actor_id, key = secapp.user("actor", role)
    world = World(secapp, actor_id, key)
    actor = secapp.client(key)
    wrong = []
    for method, what, make, expected in ACTIONS:
        path, body = make(world)
        r = (
            actor.request(method, path, json=body)
            if body is not None
            else actor.request(method, path)
        )
        if r.status_code != expected[role]:
            wrong.append(f"{role} {what} ({method} {path}): {r.status_code}, not "
                         f"{expected[role]}: {r.text[:200]}")  # fmt: skip
    assert not wrong, "\n".join(wrong)


def test_submitters_manage_their_own_jobs_and_see_only_them(secapp: App) -> None:
    _, key = secapp.user("sam", "submitter")
    world = World(secapp, 0, key)
    sam = secapp.client(key)
    others = world.job()
    own = [world.job(own=True) for _ in range(3)]
    listed = {j["id"] for j in sam.get("/api/v1/jobs").json()["items"]}
    assert listed == set(own)
    assert others in {j["id"] for j in secapp.admin.get("/api/v1/jobs").json()["items"]}
    assert sam.post(f"/api/v1/jobs/{own[0]}/kill").status_code == 202
    assert sam.post(f"/api/v1/jobs/{own[1]}/restart").status_code == 201
    assert sam.delete(f"/api/v1/jobs/{own[0]}").status_code == 204
    # and cannot reach another's job's log stream either
    assert sam.get(f"/api/v1/jobs/{others}/log/stream").status_code == 404


def test_scripts_only_users_cannot_run_commands_in_any_way(secapp: App) -> None:
    _, key = secapp.user("scripty", "operator", commands_allowed=False)
    world = World(secapp, 0, key)
    script = world.script()
    user = secapp.client(key)
    # Commands are refused: alone, in a batch, through the legacy endpoint, by restart.
    r = user.post("/api/v1/jobs", json={"command": "id"})
    assert r.status_code == 403
    assert r.json()["field"] == "command"
    r = user.post("/api/v1/jobs/batch", json={"jobs": [{"script": script}, {"command": "id"}]})
    assert r.status_code == 403
    r = user.post("/addJob", json={"command": "id", "apiKey": key})
    assert r.status_code == 403
    assert r.json()["result"] is False
    assert user.post(f"/api/v1/jobs/{world.job()}/restart").status_code == 403
    # Nothing of it was queued: only the admin's job exists besides the script job below.
    r = user.post("/api/v1/jobs", json={"script": script, "params": ["a; id"]})
    assert r.status_code == 201, r.text
    commands = [j["command"] for j in secapp.admin.get("/api/v1/jobs").json()["items"]]
    assert commands.count("id") == 0


def test_class_restricted_users_cannot_reach_other_classes(secapp: App) -> None:
    assert secapp.admin.post("/api/v1/worker-classes", json={"name": "gpu"}).status_code == 201
    _, key = secapp.user("gina", "operator", worker_classes=["gpu"])
    user = secapp.client(key)
    world = World(secapp, 0, key)
    r = user.post("/api/v1/jobs", json={"command": "true"})  # the default class
    assert r.status_code == 403
    assert r.json()["field"] == "worker_class"
    r = user.post("/api/v1/jobs", json={"command": "true", "worker_class": 1})
    assert r.status_code == 403
    r = user.post(
        "/api/v1/jobs/batch",
        json={"jobs": [{"command": "true", "worker_class": "gpu"}, {"command": "true"}]},
    )
    assert r.status_code == 403
    r = user.post("/addJob", json={"command": "true", "workerClassId": "1", "apiKey": key})
    assert r.status_code == 403
    assert user.post(f"/api/v1/jobs/{world.job()}/restart").status_code == 403
    # Its own class works.
    r = user.post("/api/v1/jobs", json={"command": "true", "worker_class": "gpu"})
    assert r.status_code == 201, r.text
    assert r.json()["worker_class"] == "gpu"
