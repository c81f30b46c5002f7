"""Submitting jobs: commands, scripts, batches, need_realtime, validation, user limits."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from apihelpers import JSON, TIME, Api, submit

from jobbalancer import db
from jobbalancer.db import schema


def _count_jobs(api: Api) -> int:
    with db.read(api.engine) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(schema.jobs)).scalar_one())


def test_submit_command_is_assigned_at_once(api: Api) -> None:
    waiting = submit(api.admin, command="true")
    assert waiting["state"] == "waiting" and waiting["worker"] is None  # no worker yet
    worker_id = api.worker("node-1")
    job = submit(
        api.admin,
        command="echo hello",
        params=["a", 2, 1.5],
        watchdog=600,
        priority=3,
        retries=1,
        env={"GREETING": "hi"},
        labels={"project": "x"},
    )
    assert job["state"] == "assigned"
    assert job["worker"] == {"id": worker_id, "name": "node-1"}
    assert job["params"] == ["a", "2", "1.5"]
    assert job["watchdog"] == 600
    assert (job["priority"], job["retries"], job["attempt"]) == (3, 1, 1)
    assert job["env"] == {"GREETING": "hi"} and job["labels"] == {"project": "x"}
    assert job["user"] == "admin" and job["worker_class"] == "default"
    assert job["script"] is None and job["retry_of"] is None and job["output_bytes"] == 0
    assert TIME.match(job["created_at"]) and TIME.match(job["assigned_at"])
    assert job["started_at"] is None
    assert api.admin.get(f"/api/v1/jobs/{job['id']}").json() == job


def test_submit_script_by_name_and_by_id_copies_it(api: Api) -> None:
    script = api.admin.post(
        "/api/v1/scripts",
        json={"name": "transcode", "interpreter": "bash", "content": "echo $1"},
    ).json()
    by_name = submit(api.admin, script="transcode", params=["in.mp4"])
    by_id = submit(api.admin, script=script["id"])
    by_id_text = submit(api.admin, script=str(script["id"]))
    for job in (by_name, by_id, by_id_text):
        assert job["script"] == {"id": script["id"], "name": "transcode"}
        assert job["interpreter"] == "bash" and job["command"] is None
    # Editing the script later does not change the submitted jobs.
    api.admin.patch(f"/api/v1/scripts/{script['id']}", json={"interpreter": "sh"})
    assert api.admin.get(f"/api/v1/jobs/{by_name['id']}").json()["interpreter"] == "bash"


def test_batch_is_all_or_nothing(api: Api) -> None:
    api.worker("node-1", max_jobs=1)
    r = api.admin.post(
        "/api/v1/jobs/batch",
        json={"jobs": [{"command": f"echo {i}"} for i in range(3)]},
    )
    assert r.status_code == 201
    created = r.json()["jobs"]
    assert [j["command"] for j in created] == ["echo 0", "echo 1", "echo 2"]
    assert [j["state"] for j in created] == ["assigned", "waiting", "waiting"]

    before = _count_jobs(api)
    r = api.admin.post(
        "/api/v1/jobs/batch",
        json={"jobs": [{"command": "true"}, {"script": "nope"}, {"command": "true"}]},
    )
    assert r.status_code == 422
    assert r.json()["field"] == "jobs.1.script"
    r = api.admin.post(
        "/api/v1/jobs/batch", json={"jobs": [{"command": "a"}, {"env": {"1X": "y"}}]}
    )
    assert r.status_code == 422 and r.json()["field"] == "jobs.1.env"
    assert api.admin.post("/api/v1/jobs/batch", json={"jobs": []}).status_code == 422
    too_many = {"jobs": [{"command": "true"}] * 1001}
    assert api.admin.post("/api/v1/jobs/batch", json=too_many).json()["field"] == "jobs"
    assert _count_jobs(api) == before


def test_need_realtime_without_a_free_slot_is_409_with_the_job(api: Api) -> None:
    api.worker("node-1", max_jobs=1)
    first = submit(api.admin, command="sleep 9", need_realtime=True)
    assert first["state"] == "assigned"
    r = api.admin.post("/api/v1/jobs", json={"command": "sleep 9", "need_realtime": True})
    assert r.status_code == 409
    body = r.json()
    assert body["error"] == "occupied" and body["message"]
    assert body["job"]["state"] == "occupied" and body["job"]["need_realtime"] is True
    # Kept for the record.
    assert api.admin.get(f"/api/v1/jobs/{body['job']['id']}").json()["state"] == "occupied"


BAD_SPECS: list[tuple[dict[str, Any], str]] = [
    ({}, "command"),
    ({"command": "a", "script": "b"}, "command"),
    ({"command": "   "}, "command"),
    ({"command": 5}, "command"),
    ({"command": "a", "params": [{"x": 1}]}, "params.0"),
    ({"command": "a", "params": [True]}, "params.0"),
    ({"command": "a", "params": "notalist"}, "params"),
    ({"command": "a", "env": {"BAD-NAME": "1"}}, "env"),
    ({"command": "a", "env": {"OK": 1}}, "env.OK"),
    ({"command": "a", "watchdog": -1}, "watchdog"),
    ({"command": "a", "watchdog": "soon"}, "watchdog"),
    ({"command": "a", "retries": 101}, "retries"),
    ({"command": "a", "priority": 10**30}, "priority"),
    ({"command": "a", "worker_class": "nope"}, "worker_class"),
    ({"command": "a", "worker_class": 99999}, "worker_class"),
    ({"command": "a", "worker_class": 10**20}, "worker_class"),
    ({"command": "a", "labels": {"bad key": "x"}}, "labels"),
    ({"command": "a", "labels": {"k": 1}}, "labels.k"),
    ({"command": "a\x00b"}, "command"),
    ({"command": "a", "params": ["\x00"]}, "params.0"),
    ({"command": "a", "env": {"A": "\ud800"}}, "env.A"),
    ({"script": "no-such-script"}, "script"),
    ({"script": 0}, "script"),
    ({"command": "a", "need_realtime": "maybe"}, "need_realtime"),
    ({"command": "a", "unknown": 1}, "unknown"),
    ({"command": "x" * 200_000}, "command"),
]


def test_invalid_specs_are_422_naming_the_field(api: Api) -> None:
    for spec, field in BAD_SPECS:
        # json.dumps escapes the lone surrogate as JSON allows; httpx would refuse it.
        r = api.admin.post("/api/v1/jobs", content=json.dumps(spec), headers=JSON)
        assert r.status_code == 422, (spec, r.text)
        body = r.json()
        assert body["error"] == "invalid"
        assert body["field"] == field, (spec, body)
        assert field.split(".")[0] in body["message"], body
    assert _count_jobs(api) == 0


def test_user_limits_commands_and_classes(api: Api) -> None:
    api.admin.post("/api/v1/worker-classes", json={"name": "gpu"})
    api.admin.post("/api/v1/scripts", json={"name": "s", "interpreter": "sh", "content": "true"})
    _, key = api.user("sam", commands_allowed=False, worker_classes=["gpu"])
    sam = api.client(key)
    r = sam.post("/api/v1/jobs", json={"command": "true", "worker_class": "gpu"})
    assert r.status_code == 403 and r.json()["field"] == "command"
    r = sam.post("/api/v1/jobs", json={"script": "s"})  # class default: not sam's
    assert r.status_code == 403 and r.json()["field"] == "worker_class"
    assert submit(sam, script="s", worker_class="gpu")["user"] == "sam"
