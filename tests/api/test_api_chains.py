"""Dependencies over the API: `after` on a submission, batch refs, what a job's answer
says about its parents and children, and bad input (nothing half-submitted)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from apihelpers import Api, submit

from jobbalancer import db, jobs
from jobbalancer.db import schema


def _count_jobs(api: Api) -> int:
    with db.read(api.engine) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(schema.jobs)).scalar_one())


def batch(api: Api, jobs_: list[dict[str, Any]], expect: int = 201, key: str | None = None) -> Any:
    client = api.client(key) if key else api.admin
    r = client.post("/api/v1/jobs/batch", json={"jobs": jobs_})
    assert r.status_code == expect, r.text
    return r.json()


def test_a_pipeline_in_one_batch(api: Api) -> None:
    api.worker("node-1")
    body = batch(
        api,
        [
            {"command": "transcode"},
            {"command": "upload", "after": [{"ref": 0}]},
            {"command": "cleanup", "after": [{"ref": 0, "on": "any"}, {"ref": 1, "on": "any"}]},
        ],
    )
    first, upload, cleanup = (j["id"] for j in body["jobs"])
    assert [j["state"] for j in body["jobs"]] == ["assigned", "held", "held"]
    got = api.admin.get(f"/api/v1/jobs/{upload}").json()
    assert got["parents"] == [{"id": first, "on": "success", "met": False, "state": "assigned"}]
    assert got["children"] == [{"id": cleanup, "on": "any", "met": False, "state": "held"}]
    assert got["waiting_for"] == f"waits for job {first} to succeed"
    api.finish(first, jobs.State.FAILED, exit_code=1)
    upload_job = api.admin.get(f"/api/v1/jobs/{upload}").json()
    assert upload_job["state"] == "skipped" and upload_job["error"] == f"job {first} ended failed"
    assert upload_job["waiting_for"] is None
    cleanup_job = api.admin.get(f"/api/v1/jobs/{cleanup}").json()
    assert cleanup_job["state"] in ("waiting", "assigned")
    listed = api.admin.get("/api/v1/jobs", params={"state": "skipped"}).json()["items"]
    assert [j["id"] for j in listed] == [upload] and listed[0]["parents"] is None


def test_after_on_a_single_submit(api: Api) -> None:
    parent = submit(api.admin, command="true")
    child = submit(api.admin, command="true", after=[parent["id"]])
    assert child["state"] == "held"
    assert child["parents"] == [
        {"id": parent["id"], "on": "success", "met": False, "state": "waiting"}
    ]
    assert api.admin.get(f"/api/v1/jobs/{child['id']}").json() == child
    assert (
        api.admin.get("/api/v1/jobs", params={"state": "held"}).json()["items"][0]["id"]
        == (child["id"])
    )
    api.worker("node-1")
    done = submit(api.admin, command="true")
    api.finish(done["id"])
    released = submit(api.admin, command="true", after=[{"job": done["id"], "on": "success"}])
    assert released["state"] in ("waiting", "assigned")  # decided at once
    skipped = submit(api.admin, command="true", after=[{"job": done["id"], "on": "failure"}])
    assert skipped["state"] == "skipped" and skipped["error"] == f"job {done['id']} ended done"


def test_kill_and_delete_of_held_jobs(api: Api) -> None:
    parent = submit(api.admin, command="true")
    child = submit(api.admin, command="true", after=[parent["id"]])
    grandchild = submit(api.admin, command="true", after=[{"job": child["id"], "on": "any"}])
    killed = api.admin.post(f"/api/v1/jobs/{child['id']}/kill").json()
    assert killed["state"] == "killed"
    assert api.admin.get(f"/api/v1/jobs/{grandchild['id']}").json()["state"] == "waiting"
    other = submit(api.admin, command="true", after=[parent["id"]])
    assert api.admin.delete(f"/api/v1/jobs/{parent['id']}").status_code == 204
    gone = api.admin.get(f"/api/v1/jobs/{other['id']}").json()
    assert gone["state"] == "skipped" and gone["error"] == f"job {parent['id']} was deleted"
    assert gone["parents"] == [{"id": parent["id"], "on": "success", "met": False, "state": None}]
    assert api.admin.delete(f"/api/v1/jobs/{other['id']}").status_code == 204


def test_restart_of_a_skipped_child_checks_its_parents_again(api: Api) -> None:
    parent = submit(api.admin, command="true")
    child = submit(api.admin, command="true", after=[{"job": parent["id"], "on": "failure"}])
    api.admin.post(f"/api/v1/jobs/{parent['id']}/kill")
    assert api.admin.get(f"/api/v1/jobs/{child['id']}").json()["state"] == "skipped"
    again = api.admin.post(f"/api/v1/jobs/{child['id']}/restart").json()
    assert again["state"] == "skipped" and again["restarted_from"] == child["id"]
    assert again["error"] == f"job {parent['id']} ended killed"


def test_bad_input_is_refused_naming_the_field_and_nothing_is_submitted(api: Api) -> None:
    parent = submit(api.admin, command="true")
    before = _count_jobs(api)

    def refused(
        jobs_: list[dict[str, Any]], status: int, field: str, key: str | None = None
    ) -> str:
        body = batch(api, jobs_, expect=status, key=key)
        assert body["field"] == field, body
        assert field in body["message"]
        return str(body["message"])

    ok = {"command": "true"}
    refused([ok, {"command": "true", "after": [99999]}], 404, "jobs.1.after.0.job")
    refused([ok, {"command": "true", "after": [{"ref": 1}]}], 422, "jobs.1.after.0.ref")
    refused([ok, {"command": "true", "after": [{"ref": 5}]}], 422, "jobs.1.after.0.ref")
    refused([{"command": "true", "after": [{"ref": 0}]}], 422, "jobs.0.after.0.ref")
    refused(
        [ok, {"command": "true", "after": [parent["id"]], "need_realtime": True}],
        422,
        "jobs.1.after",
    )
    refused([ok, {"command": "true", "after": [{"ref": 0}, {"ref": 0}]}], 422, "jobs.1.after.1")
    refused([ok, {"command": "true", "after": [{"job": 1, "ref": 0}]}], 422, "jobs.1.after.0")
    refused(
        [ok, {"command": "true", "after": [{"job": 1, "on": "maybe"}]}], 422, "jobs.1.after.0.on"
    )
    many = [{"job": parent["id"] + i} for i in range(101)]
    refused([ok, {"command": "true", "after": many}], 422, "jobs.1.after")
    r = api.admin.post("/api/v1/jobs", json={"command": "true", "after": [{"ref": 0}]})
    assert r.status_code == 422 and r.json()["field"] == "after.0.ref"
    # Another user's job does not exist for a submitter.
    _, key = api.user("sam")
    refused([ok, {"command": "true", "after": [parent["id"]]}], 404, "jobs.1.after.0.job", key=key)
    assert _count_jobs(api) == before


def test_a_submitter_may_chain_their_own_jobs(api: Api) -> None:
    _, key = api.user("sam")
    client = api.client(key)
    mine = submit(client, command="true")
    child = submit(client, command="true", after=[mine["id"]])
    assert child["state"] == "held"
    admins = submit(api.admin, command="true", after=[mine["id"]])
    # The submitter sees their job's children that are theirs, not the admin's.
    seen = client.get(f"/api/v1/jobs/{mine['id']}").json()["children"]
    assert [c["id"] for c in seen] == [child["id"]]
    assert {c["id"] for c in api.admin.get(f"/api/v1/jobs/{mine['id']}").json()["children"]} == {
        child["id"],
        admins["id"],
    }


def test_held_jobs_count_towards_the_waiting_cap(api: Api) -> None:
    r = api.admin.patch("/api/v1/settings", json={"max_waiting_per_user": 2})
    assert r.status_code == 200, r.text
    _, key = api.user("sam")
    client = api.client(key)
    body = batch(api, [{"command": "a"}, {"command": "b", "after": [{"ref": 0}]}], key=key)
    assert [j["state"] for j in body["jobs"]] == ["waiting", "held"]
    r = client.post("/api/v1/jobs", json={"command": "c"})
    assert r.status_code == 409 and r.json()["error"] == "waiting_limit"


def test_a_job_skipped_for_its_parent_writes_its_skipped_notification(api: Api) -> None:
    """A child skipped because its parent failed (and its own child, by the cascade; and
    one submitted after the failure, skipped at once) gets the `skipped` notification it
    asked for, written with the skip; a sibling that asked for none gets none."""
    r = api.admin.post(
        "/api/v1/notification-targets",
        json={"name": "ops-hook", "kind": "webhook", "url": "http://127.0.0.1:9/x"},
    )
    assert r.status_code == 201, r.text
    api.worker("node-1")
    rule = [{"on": ["skipped"], "target": "ops-hook"}]
    body = batch(
        api,
        [
            {"command": "false"},
            {"command": "upload", "after": [{"ref": 0}], "notify": rule},
            {"command": "publish", "after": [{"ref": 1}], "notify": rule},
            {"command": "quiet", "after": [{"ref": 0}]},
        ],
    )
    parent, child, grandchild, quiet = (j["id"] for j in body["jobs"])
    api.finish(parent, jobs.State.FAILED, exit_code=1)
    late = submit(api.admin, command="late", after=[parent], notify=rule)
    assert late["state"] == "skipped"

    def events(job_id: int) -> list[tuple[str, str]]:
        r = api.admin.get("/api/v1/notifications", params={"job": job_id})
        assert r.status_code == 200, r.text
        return [(n["event"], n["target"]) for n in r.json()]

    for job_id in (child, grandchild, late["id"]):
        assert api.admin.get(f"/api/v1/jobs/{job_id}").json()["state"] == "skipped"
        assert events(job_id) == [("skipped", "ops-hook")], job_id
    assert api.admin.get(f"/api/v1/jobs/{quiet}").json()["state"] == "skipped"
    assert events(quiet) == []


def test_a_batch_naming_more_parents_than_a_statement_takes_is_a_404_not_a_503(
    api: Api,
) -> None:
    """700 jobs naming 100 parents each: 70 000 ids, past PostgreSQL's 65 535 parameters
    in one statement (the look-up was one IN, and the database's refusal a 503)."""
    jobs_ = [
        {"command": "true", "after": list(range(1 + 100 * i, 101 + 100 * i))} for i in range(700)
    ]
    body = batch(api, jobs_, expect=404)
    assert body["field"] == "jobs.0.after.0.job"
    assert _count_jobs(api) == 0
