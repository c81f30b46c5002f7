"""``/api/v1/schedules``: create, read with the next runs, change, pause, resume, run now,
delete, preview; bad input is a 422 naming the field with nothing saved; who may what."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from apihelpers import TIME, Api

from jobbalancer.service import firing

BODY: dict[str, Any] = {
    "name": "nightly-backup",
    "cron": "30 2 * * *",
    "timezone": "Europe/Berlin",
    "job": {"command": "echo backup", "labels": {"kind": "backup"}},
    "overlap": "skip",
    "catch_up": "latest",
    "enabled": True,
}


def create(api: Api, key: str | None = None, **fields: Any) -> dict[str, Any]:
    client = api.client(key) if key else api.admin
    r = client.post("/api/v1/schedules", json={**BODY, **fields})
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_create_read_and_list(api: Api) -> None:
    made = create(api)
    assert made["name"] == "nightly-backup"
    assert made["job"] == {"command": "echo backup", "labels": {"kind": "backup"}}
    assert made["user"] == "admin" and made["occurrences"] == [] and made["last"] is None
    runs = made["next_runs"]
    assert len(runs) == 5
    assert all(TIME.match(r["utc"]) for r in runs)
    assert all(r["local"][11:19] == "02:30:00" for r in runs)
    assert runs[0]["local"][19:] in ("+01:00", "+02:00")
    assert made["next_fire_at"] == runs[0]["utc"]
    got = api.admin.get("/api/v1/schedules/nightly-backup").json()
    assert got["id"] == made["id"] and got["next_runs"] == runs
    assert api.admin.get(f"/api/v1/schedules/{made['id']}").json()["name"] == "nightly-backup"
    [listed] = api.admin.get("/api/v1/schedules").json()
    assert listed["name"] == "nightly-backup" and listed["next_runs"] is None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * *"}, "cron"),
        ({"cron": "@sometimes"}, "cron"),
        ({"cron": ""}, "cron"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"start_at": "2027-01-02T00:00:00Z", "end_at": "2027-01-01T00:00:00Z"}, "end_at"),
        ({"start_at": "2027-01-02T00:00:00"}, "start_at"),  # no zone
        ({"catch_up_max": 0}, "catch_up_max"),
        ({"catch_up_max": 1001}, "catch_up_max"),
        ({"overlap": "sometimes"}, "overlap"),
        ({"catch_up": "some"}, "catch_up"),
        ({"job": {"command": "true", "worker_class": "nope"}}, "job.worker_class"),
        ({"job": {"command": "true", "priority": 10**10}}, "job.priority"),
        ({"job": {"command": "true", "after": [1]}}, "job.after"),
        ({"job": {"command": "true", "not_before": "2020-01-01T00:00:00Z"}}, "job.not_before"),
        ({"job": {"command": "true", "delay": -1}}, "job.delay"),
        ({"job": {"command": "true", "delay": 60, "need_realtime": True}}, "job.delay"),
        ({"job": {"command": "true", "retry_on": ["sometimes"]}}, "job.retry_on.0"),
        ({"job": {"command": "true", "secret_env": {"X": "nope"}}}, "job.secret_env.X"),
        ({"job": {"command": "true", "typo": 1}}, "job.typo"),
        ({"job": {}}, "job.command"),
        ({"name": ""}, "name"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_input_names_the_field_and_saves_nothing(
    api: Api, fields: dict[str, Any], field: str
) -> None:
    r = api.admin.post("/api/v1/schedules", json={**BODY, **fields})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field, r.text
    assert api.admin.get("/api/v1/schedules").json() == []


def test_the_job_takes_delay_and_a_retry_policy_not_a_fixed_start(api: Api) -> None:
    job = {"command": "true", "delay": 600, "retries": 3, "retry_delay": 30,
           "retry_backoff": 2, "retry_max_delay": 300, "retry_jitter": 0.1,
           "retry_on": ["timeout", 75]}  # fmt: skip
    made = create(api, job=job)
    assert made["job"] == job
    r = api.admin.patch(
        f"/api/v1/schedules/{made['id']}",
        json={"job": {"command": "true", "not_before": "2020-01-01T00:00:00Z"}},
    )
    assert r.status_code == 422 and r.json()["field"] == "job.not_before", r.text
    assert "delay" in r.text
    assert api.admin.get(f"/api/v1/schedules/{made['id']}").json()["job"] == job


def test_a_name_is_taken_once(api: Api) -> None:
    create(api)
    r = api.admin.post("/api/v1/schedules", json=BODY)
    assert r.status_code == 409 and r.json()["field"] == "name"


def test_patch_changes_only_what_it_sends_and_a_bad_patch_nothing(api: Api) -> None:
    made = create(api)
    r = api.admin.patch(f"/api/v1/schedules/{made['id']}", json={"cron": "@hourly"})
    assert r.status_code == 200, r.text
    changed = r.json()
    assert changed["cron"] == "@hourly" and changed["timezone"] == "Europe/Berlin"
    assert all(run["utc"][14:] == "00:00.000Z" for run in changed["next_runs"])
    for bad, field in (
        ({"cron": "nope", "description": "x"}, "cron"),
        ({"timezone": "Nowhere"}, "timezone"),
        ({"enabled": None}, "enabled"),
        ({"end_at": "2000-01-01T00:00:00Z", "start_at": "2001-01-01T00:00:00Z"}, "end_at"),
        ({"job": {"command": "true", "worker_class": "gpu"}}, "job.worker_class"),
    ):
        r = api.admin.patch(f"/api/v1/schedules/{made['id']}", json=bad)
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    again = api.admin.get(f"/api/v1/schedules/{made['id']}").json()
    assert (again["cron"], again["description"], again["end_at"]) == ("@hourly", "", None)


def test_pause_resume_and_delete(api: Api) -> None:
    made = create(api)
    paused = api.admin.post(f"/api/v1/schedules/{made['id']}/pause").json()
    assert paused["enabled"] is False and paused["next_fire_at"] is None
    assert paused["next_runs"] == []
    resumed = api.admin.post(f"/api/v1/schedules/{made['id']}/resume").json()
    assert resumed["enabled"] is True and resumed["next_fire_at"] is not None
    assert api.admin.delete(f"/api/v1/schedules/{made['id']}").status_code == 204
    assert api.admin.get(f"/api/v1/schedules/{made['id']}").status_code == 404


def test_run_now_makes_a_job_that_carries_the_schedule(api: Api) -> None:
    made = create(api)
    r = api.admin.post("/api/v1/schedules/nightly-backup/run")
    assert r.status_code == 201, r.text
    occ = r.json()
    assert occ["outcome"] == "fired" and occ["manual"] is True and occ["job_state"] == "waiting"
    job = api.admin.get(f"/api/v1/jobs/{occ['job_id']}").json()
    assert job["schedule_id"] == made["id"] and job["command"] == "echo backup"
    api.admin.post("/api/v1/jobs", json={"command": "true"})  # not the schedule's
    listed = api.admin.get(f"/api/v1/jobs?schedule_id={made['id']}").json()["items"]
    assert [j["id"] for j in listed] == [occ["job_id"]]
    got = api.admin.get("/api/v1/schedules/nightly-backup").json()
    assert [o["job_id"] for o in got["occurrences"]] == [occ["job_id"]]
    assert got["last"]["job_id"] == occ["job_id"]
    history = api.admin.get("/api/v1/schedules/nightly-backup/history").json()
    assert [o["id"] for o in history] == [occ["id"]]
    assert api.admin.get("/api/v1/jobs?schedule_id=0").status_code == 422


def test_run_now_of_a_disabled_owner_is_refused(api: Api) -> None:
    user_id, key = api.user("sue", "submitter")
    create(api, key)
    r = api.admin.patch(f"/api/v1/users/{user_id}", json={"disabled": True})
    assert r.status_code == 200, r.text
    r = api.admin.post("/api/v1/schedules/nightly-backup/run")
    assert r.status_code == 409 and "owner sue disabled" in r.json()["message"]


def test_preview_saves_nothing(api: Api) -> None:
    r = api.admin.post(
        "/api/v1/schedules/preview",
        json={"cron": "0 9 * * 1-5", "timezone": "Asia/Kolkata", "count": 3},
    )
    assert r.status_code == 200, r.text
    runs = r.json()["next_runs"]
    assert [run["local"][11:] for run in runs] == ["09:00:00+05:30"] * 3
    assert [run["utc"][11:] for run in runs] == ["03:30:00.000Z"] * 3
    r = api.admin.post("/api/v1/schedules/preview", json={"cron": "0 25 * * *"})
    assert r.status_code == 422 and r.json()["field"] == "cron"
    assert r.json()["message"] == "cron: bad hour in '0 25 * * *'"
    assert api.admin.get("/api/v1/schedules").json() == []


def test_submitters_own_their_schedules_and_see_no_others(api: Api) -> None:
    _, sue = api.user("sue", "submitter")
    _, bob = api.user("bob", "submitter")
    mine = create(api, sue, job={"command": "true", "env": {"TOKEN": "s3cret"}})
    assert mine["user"] == "sue"
    bob_client = api.client(bob)
    assert bob_client.get("/api/v1/schedules").json() == []
    assert bob_client.get(f"/api/v1/schedules/{mine['id']}").status_code == 404
    assert bob_client.patch(f"/api/v1/schedules/{mine['id']}", json={}).status_code == 404
    sue_client = api.client(sue)
    r = sue_client.patch(f"/api/v1/schedules/{mine['id']}", json={"description": "mine"})
    assert r.status_code == 200 and r.json()["job"]["env"] == {"TOKEN": "s3cret"}
    _, olga = api.user("olga", "operator")
    seen = api.client(olga).get(f"/api/v1/schedules/{mine['id']}").json()
    assert seen["job"]["env"] == {"TOKEN": "****"}  # env values are the owner's
    _, vic = api.user("vic", "viewer")
    assert len(api.client(vic).get("/api/v1/schedules").json()) == 1
    r = api.client(vic).post("/api/v1/schedules", json={**BODY, "name": "v"})
    assert r.status_code == 403


def test_a_scripts_only_submitter_cannot_schedule_a_command(api: Api) -> None:
    _, key = api.user("scripty", "submitter", commands_allowed=False)
    r = api.client(key).post("/api/v1/schedules", json=BODY)
    assert r.status_code == 422 and r.json()["field"] == "job.command", r.text
    assert api.admin.get("/api/v1/schedules").json() == []


def test_metrics_count_fired_skipped_and_late(api: Api) -> None:
    made = create(api, cron="* * * * *")
    assert api.admin.post(f"/api/v1/schedules/{made['id']}/run").status_code == 201
    due = datetime.fromisoformat(made["next_fire_at"].replace("Z", "+00:00"))
    # the leader fires the next occurrence 2 s late; the run-now job still waits: skipped
    firing.Firer(api.engine, clock=lambda: due + timedelta(seconds=2)).tick()
    api.admin.post("/api/v1/schedules", json={**BODY, "name": "off", "enabled": False})
    text = api.admin.get("/metrics").text
    assert "jobbalancer_schedule_occurrences_fired_total 1.0" in text
    assert 'jobbalancer_schedule_occurrences_skipped_total{reason="overlap"} 1.0' in text
    assert 'jobbalancer_schedule_occurrences_skipped_total{reason="missed"} 0.0' in text
    assert "jobbalancer_schedule_occurrences_late_total 0.0" in text
    assert 'jobbalancer_schedules{state="enabled"} 1.0' in text
    assert 'jobbalancer_schedules{state="paused"} 1.0' in text
    [occ] = [o for o in api.admin.get("/api/v1/schedules/nightly-backup/history").json()
             if not o["manual"]]  # fmt: skip
    assert occ["reason"].startswith("previous run ") and occ["late_ms"] == 2000
