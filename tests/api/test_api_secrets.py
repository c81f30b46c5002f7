"""``/api/v1/secrets`` and jobs that name secrets, through the API: admins manage them,
values never come back (in any answer or error), bad input is a 422 naming the field, and
a submission's rights are checked (the secret exists, the user and the class may use it).
The backends are tests/backends/test_secrets.py's; here SQLite."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from apihelpers import Api, submit

from jobbalancer import db
from jobbalancer.db import schema

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])
SECRETS = "/api/v1/secrets"
VALUE = "pg-Pa55w0rd-7f3a91"


def make(api: Api, expect: int = 201, **spec: Any) -> dict[str, Any]:
    r = api.admin.post(SECRETS, json={"name": "prod-db", "value": VALUE, **spec})
    assert r.status_code == expect, r.text
    body: dict[str, Any] = r.json()
    return body


def test_crud_never_returns_the_value(api: Api) -> None:
    made = make(api, description="the production database")
    assert made["name"] == "prod-db" and made["created_by"] == "admin"
    assert made["worker_classes"] is None and made["users"] is None
    assert "value" not in made and VALUE not in str(made)

    got = api.admin.get(f"{SECRETS}/prod-db")
    listed = api.admin.get(SECRETS)
    assert got.status_code == 200 and listed.status_code == 200
    assert [s["name"] for s in listed.json()] == ["prod-db"]
    assert VALUE not in got.text + listed.text

    # PUT replaces it whole (200), or makes one (201); PATCH changes what is given.
    replaced = api.admin.put(f"{SECRETS}/prod-db", json={"value": "new-value-1"})
    assert replaced.status_code == 200 and replaced.json()["description"] == ""
    assert "new-value-1" not in replaced.text
    created = api.admin.put(f"{SECRETS}/other", json={"value": "other-value"})
    assert created.status_code == 201 and created.json()["name"] == "other"
    patched = api.admin.patch(f"{SECRETS}/prod-db", json={"description": "again"})
    assert patched.status_code == 200 and patched.json()["description"] == "again"
    assert patched.json()["updated_at"] >= made["updated_at"]

    assert api.admin.delete(f"{SECRETS}/prod-db").status_code == 204
    assert api.admin.get(f"{SECRETS}/prod-db").status_code == 404
    assert api.admin.delete(f"{SECRETS}/prod-db").status_code == 404


def test_the_value_is_stored_encrypted(api: Api) -> None:
    made = make(api)
    with db.read(api.engine) as conn:
        row = conn.execute(sa.select(schema.secrets)).one()
    assert VALUE not in str(tuple(row)) and row.value.startswith("v1:")
    assert made["id"] == row.id


def test_a_name_in_use_is_409(api: Api) -> None:
    make(api)
    again = make(api, 409)
    assert again["field"] == "name" and VALUE not in str(again)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x"}, "value"),
        ({"name": "x", "value": ""}, "value"),
        ({"name": "x", "value": "a\x00b"}, "value"),
        ({"name": "x", "value": "v" * 70_000}, "value"),
        ({"name": "", "value": "v"}, "name"),
        ({"name": "123", "value": "v"}, "name"),
        ({"name": "x", "value": "v", "worker_classes": ["nope"]}, "worker_classes.0"),
        ({"name": "x", "value": "v", "users": ["nobody"]}, "users.0"),
        ({"name": "x", "value": "v", "colour": "red"}, "colour"),
        ({"name": "x", "value": 5}, "value"),
    ],
)
def test_bad_input_is_422_naming_the_field_and_saves_nothing(
    api: Api, body: dict[str, Any], field: str
) -> None:
    r = api.admin.post(SECRETS, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert "a\x00b" not in r.text and "v" * 100 not in r.text
    assert api.admin.get(SECRETS).json() == []


def test_a_value_never_shows_in_an_error(api: Api) -> None:
    r = api.admin.put(f"{SECRETS}/prod-db", json={"value": VALUE, "users": ["ghost"]})
    assert r.status_code == 422 and VALUE not in r.text
    r = api.admin.patch(f"{SECRETS}/none", json={"value": VALUE})
    assert r.status_code == 404 and VALUE not in r.text
    r = api.admin.patch(f"{SECRETS}/none", json={"value": None})
    assert r.status_code == 422 and r.json()["field"] == "value"


def test_only_admins_manage_others_see_what_they_may_use(api: Api) -> None:
    _, alice = api.user("alice")
    _, bob = api.user("bob")
    _, oper = api.user("oper", "operator")
    _, viewer = api.user("vera", "viewer")
    make(api, users=["alice"], worker_classes=["default"])
    api.admin.post(SECRETS, json={"name": "open", "value": "open-value"})

    for key in (alice, oper, viewer):
        c = api.client(key)
        assert c.post(SECRETS, json={"name": "x", "value": "y"}).status_code == 403
        assert c.put(f"{SECRETS}/prod-db", json={"value": "mine"}).status_code == 403
        assert c.patch(f"{SECRETS}/prod-db", json={"users": None}).status_code == 403
        assert c.delete(f"{SECRETS}/prod-db").status_code == 403

    seen = {s["name"]: s for s in api.client(alice).get(SECRETS).json()}
    # Limited: alice sees herself in it (never the others), so it never reads as "anyone".
    assert set(seen) == {"open", "prod-db"} and seen["prod-db"]["users"] == ["alice"]
    assert seen["open"]["users"] is None
    assert [s["name"] for s in api.client(bob).get(SECRETS).json()] == ["open"]
    assert api.client(bob).get(f"{SECRETS}/prod-db").status_code == 404
    by_operator = {s["name"]: s for s in api.client(oper).get(SECRETS).json()}
    assert by_operator["prod-db"]["users"] == ["alice"]


def test_a_job_names_secrets_and_never_shows_a_value(api: Api) -> None:
    make(api)
    job = submit(api.admin, command="psql", secret_env={"PGPASSWORD": "prod-db"})
    assert job["secret_env"] == {"PGPASSWORD": "prod-db"} and job["env"] == {}
    got = api.admin.get(f"/api/v1/jobs/{job['id']}")
    assert got.json()["secret_env"] == {"PGPASSWORD": "prod-db"} and VALUE not in got.text
    with db.read(api.engine) as conn:
        row = conn.execute(sa.select(schema.jobs).where(schema.jobs.c.id == job["id"])).one()
    assert VALUE not in str(tuple(row))

    # A restart carries the reference (never a value).
    restarted = api.admin.post(f"/api/v1/jobs/{job['id']}/restart")
    assert restarted.status_code == 201, restarted.text
    assert restarted.json()["secret_env"] == {"PGPASSWORD": "prod-db"}


def test_submit_checks_the_rights(api: Api) -> None:
    _, alice = api.user("alice")
    _, bob = api.user("bob")
    _, scripts_only = api.user("sam", commands_allowed=False)
    api.admin.post("/api/v1/worker-classes", json={"name": "gpu"})
    make(api, users=["alice", "sam"], worker_classes=["default"])
    a, b = api.client(alice), api.client(bob)

    ok = submit(a, command="true", secret_env={"PGPASSWORD": "prod-db"})
    assert ok["secret_env"] == {"PGPASSWORD": "prod-db"}

    missing = submit(a, 422, command="true", secret_env={"PGPASSWORD": "nope"})
    assert missing["field"] == "secret_env.PGPASSWORD" and "does not exist" in missing["message"]
    not_theirs = submit(b, 422, command="true", secret_env={"PGPASSWORD": "prod-db"})
    assert not_theirs["field"] == "secret_env.PGPASSWORD"
    wrong_class = submit(
        a, 403, command="true", worker_class="gpu", secret_env={"PGPASSWORD": "prod-db"}
    )
    assert wrong_class["field"] == "secret_env.PGPASSWORD" and "gpu" in wrong_class["message"]
    twice = submit(a, 422, command="true", env={"X": "1"}, secret_env={"X": "prod-db"})
    assert twice["field"] == "secret_env.X"
    bad_name = submit(a, 422, command="true", secret_env={"1X": "prod-db"})
    assert bad_name["field"] == "secret_env"
    # A scripts-only user's variables stay in the JOB_ namespace, from secrets too.
    api.admin.post("/api/v1/scripts", json={"name": "s", "interpreter": "sh", "content": "true"})
    loader = submit(api.client(scripts_only), 422, script="s", secret_env={"LD_PRELOAD": "prod-db"})
    assert loader["field"] == "secret_env"
    submit(api.client(scripts_only), script="s", secret_env={"JOB_DB": "prod-db"})
    # In a batch the field says which job.
    r = a.post("/api/v1/jobs/batch", json={"jobs": [
        {"command": "true"}, {"command": "true", "secret_env": {"P": "nope"}}]})  # fmt: skip
    assert r.status_code == 422 and r.json()["field"] == "jobs.1.secret_env.P"
    with db.read(api.engine) as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(schema.jobs)).scalar()
    assert count == 2  # the two accepted above, nothing of the refused ones


def test_a_restart_checks_again(api: Api) -> None:
    alice_id, alice = api.user("alice")
    api.worker("w1")
    make(api, users=["alice"])
    job = submit(api.client(alice), command="true", secret_env={"P": "prod-db"})
    api.finish(job["id"])
    api.admin.patch(f"{SECRETS}/prod-db", json={"users": []})
    r = api.client(alice).post(f"/api/v1/jobs/{job['id']}/restart")
    assert r.status_code == 422 and "prod-db" in r.json()["message"]
    # An owner disabled since: an operator's restart is refused (the worker would refuse
    # the new job its secrets anyway).
    api.admin.patch(f"{SECRETS}/prod-db", json={"users": ["alice"]})
    api.admin.patch(f"/api/v1/users/{alice_id}", json={"disabled": True})
    r = api.admin.post(f"/api/v1/jobs/{job['id']}/restart")
    assert r.status_code == 409 and "is disabled" in r.json()["message"], r.text


def test_no_key_means_no_secrets_but_a_clear_503(api: Api) -> None:
    api.app.state.secret_key = None
    r = api.admin.post(SECRETS, json={"name": "x", "value": "v"})
    assert r.status_code == 503 and r.json()["error"] == "no_secret_key"
    assert api.admin.get(SECRETS).status_code == 200


def test_notification_target_secrets_are_stored_encrypted(api: Api) -> None:
    r = api.admin.post(
        "/api/v1/notification-targets",
        json={"name": "hook", "kind": "webhook", "url": "https://x.test/", "secret": "hook-s3cret"},
    )
    assert r.status_code == 201 and r.json()["has_secret"] is True
    with db.read(api.engine) as conn:
        stored = conn.execute(sa.select(schema.notification_targets.c.secret)).scalar_one()
    assert stored.startswith("v1:") and "hook-s3cret" not in stored
