"""Starting later and retrying later over the API: `not_before`, `delay` and the retry
policy on a submission (single and batch), what a job's answer says, kill, restart, and
every bad input (422 naming the field, nothing half-submitted)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from apihelpers import Api, submit

from jobbalancer import db, jobs
from jobbalancer.db import schema


def _count_jobs(api: Api) -> int:
    with db.read(api.engine) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(schema.jobs)).scalar_one())


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_job_with_a_delay_is_delayed_with_its_time(api: Api) -> None:
    api.worker("node-1")
    before = datetime.now(UTC)
    job = submit(api.admin, command="true", delay=600)
    assert job["state"] == "delayed" and job["worker"] is None
    at = _parse(job["not_before"])
    assert timedelta(seconds=590) < at - before < timedelta(seconds=620)
    assert api.admin.get(f"/api/v1/jobs/{job['id']}").json()["not_before"] == job["not_before"]
    listed = api.admin.get("/api/v1/jobs", params={"state": "delayed"}).json()["items"]
    assert [j["id"] for j in listed] == [job["id"]]
    stats = api.admin.get("/api/v1/stats").json()
    assert stats["jobs"]["delayed"] == 1
    metrics = api.admin.get("/metrics").text
    assert 'jobbalancer_jobs{state="delayed"} 1.0' in metrics


def test_not_before_with_an_offset(api: Api) -> None:
    at = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    local = at.astimezone(datetime.now().astimezone().tzinfo).isoformat()
    job = submit(api.admin, command="true", not_before=at.astimezone().isoformat())
    assert job["state"] == "delayed" and _parse(job["not_before"]) == at
    plus_one = at.astimezone(UTC).replace(tzinfo=None).isoformat() + "+00:00"
    assert submit(api.admin, command="true", not_before=plus_one)["state"] == "delayed"
    assert local  # any offset names one instant


def test_a_time_in_the_past_runs_now(api: Api) -> None:
    api.worker("node-1")
    past = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    job = submit(api.admin, command="true", not_before=past)
    assert job["state"] == "assigned" and job["not_before"] is None


def test_retry_policy_is_in_the_answer_and_copied(api: Api) -> None:
    api.worker("node-1")
    policy = {
        "retry_delay": 30, "retry_backoff": 2, "retry_max_delay": 300, "retry_jitter": 0.1,
        "retry_on": ["failed", "timeout", 75],
    }  # fmt: skip
    job = submit(api.admin, command="false", retries=3, **policy)
    for key, value in policy.items():
        assert job[key] == value
    api.finish(job["id"], jobs.State.FAILED, exit_code=75)
    retry = api.admin.get("/api/v1/jobs", params={"state": "delayed"}).json()["items"][0]
    assert retry["retry_of"] == job["id"] and retry["attempt"] == 2
    for key, value in policy.items():
        assert retry[key] == value
    ended = _parse(api.admin.get(f"/api/v1/jobs/{job['id']}").json()["finished_at"])
    wait = (_parse(retry["not_before"]) - ended).total_seconds()
    assert 27 - 0.01 <= wait <= 33 + 0.01  # 30 s ± 10 %
    # Killing the retry that waits ends the job's attempts.
    killed = api.admin.post(f"/api/v1/jobs/{retry['id']}/kill")
    assert killed.status_code == 202 and killed.json()["state"] == "killed"
    assert api.admin.get("/api/v1/jobs", params={"state": "delayed"}).json()["items"] == []


def test_defaults_in_the_answer(api: Api) -> None:
    job = submit(api.admin, command="true")
    for key in ("not_before", "retry_delay", "retry_backoff", "retry_max_delay",
                "retry_jitter", "retry_on"):  # fmt: skip
        assert job[key] is None


def test_kill_restart_and_delete_of_a_delayed_job(api: Api) -> None:
    api.worker("node-1")
    job = submit(api.admin, command="true", delay=3600, retries=1, retry_delay=5)
    restarted = api.admin.post(f"/api/v1/jobs/{job['id']}/restart")
    assert restarted.status_code == 201, restarted.text
    new = restarted.json()
    assert new["state"] == "assigned" and new["not_before"] is None  # a restart runs now
    assert new["retry_delay"] == 5
    killed = api.admin.post(f"/api/v1/jobs/{job['id']}/kill").json()
    assert killed["state"] == "killed" and killed["finished_at"] is not None
    other = submit(api.admin, command="true", delay=3600)
    assert api.admin.delete(f"/api/v1/jobs/{other['id']}").status_code == 204


def test_batch_with_later_jobs(api: Api) -> None:
    r = api.admin.post(
        "/api/v1/jobs/batch",
        json={"jobs": [{"command": "a"}, {"command": "b", "delay": 60}]},
    )
    assert r.status_code == 201, r.text
    assert [j["state"] for j in r.json()["jobs"]] == ["waiting", "delayed"]


_SOON = (datetime.now(UTC) + timedelta(days=30)).isoformat()


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"delay": -1}, "delay", "greater than or equal to 0"),
        ({"delay": 366 * 86400}, "delay", "less than or equal"),
        ({"delay": "soon"}, "delay", "number"),
        ({"not_before": "2026-12-24T18:00:00"}, "not_before", "time zone offset"),
        ({"not_before": "tomorrow"}, "not_before", "datetime"),
        ({"not_before": "9999-01-01T00:00:00Z"}, "not_before", "at most a year"),
        ({"not_before": _SOON, "delay": 5}, "delay", "not both"),
        ({"delay": 5, "need_realtime": True}, "delay", "need_realtime"),
        ({"not_before": _SOON, "need_realtime": True}, "not_before", "need_realtime"),
        ({"retry_delay": -1}, "retry_delay", "greater than or equal to 0"),
        ({"retry_delay": 10**9}, "retry_delay", "less than or equal"),
        ({"retry_backoff": 0.5}, "retry_backoff", "greater than or equal to 1"),
        ({"retry_max_delay": -5}, "retry_max_delay", "greater than or equal to 0"),
        ({"retry_jitter": 1.5}, "retry_jitter", "less than or equal to 1"),
        ({"retry_jitter": -0.1}, "retry_jitter", "greater than or equal to 0"),
        ({"retry_on": []}, "retry_on", "at least 1"),
        ({"retry_on": ["killed"]}, "retry_on.0", "one of failed, timeout, lost"),
        ({"retry_on": [0]}, "retry_on.0", "1 to 255"),
        ({"retry_on": [256]}, "retry_on.0", "1 to 255"),
        ({"retry_on": [True]}, "retry_on.0", "one of failed"),
        ({"retry_on": "failed"}, "retry_on", "list"),
    ],
)
def test_bad_input_names_the_field(api: Api, spec: dict[str, Any], field: str, words: str) -> None:
    before = _count_jobs(api)
    body = submit(api.admin, expect=422, command="true", **spec)
    assert body["field"] == field, body
    assert words in body["message"], body
    batch = api.admin.post(
        "/api/v1/jobs/batch", json={"jobs": [{"command": "ok"}, {"command": "x", **spec}]}
    )
    assert batch.status_code == 422, batch.text
    assert batch.json()["field"] == f"jobs.1.{field}"
    assert _count_jobs(api) == before  # nothing half-submitted


def test_a_submitters_delayed_jobs_count_as_waiting(api: Api) -> None:
    r = api.admin.patch("/api/v1/settings", json={"max_waiting_per_user": 2})
    assert r.status_code == 200, r.text
    _, key = api.user("sub")
    client = api.client(key)
    submit(client, command="true", delay=600)
    submit(client, command="true", delay=600)
    r = client.post("/api/v1/jobs", json={"command": "true", "delay": 600})
    assert r.status_code == 409 and r.json()["error"] == "waiting_limit"
