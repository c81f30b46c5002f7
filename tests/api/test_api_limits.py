"""What one user may do to others through jobs: a scripts-only user's env, env values of
others' jobs, the caps on waiting jobs, submit rate, priority and open log streams, the
log stream's re-check of access, and restarts of jobs of deleted scripts."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from apihelpers import Api, submit

from jobbalancer import db, jobs
from jobbalancer.api import sse
from jobbalancer.service import submission


def _script(api: Api, name: str = "greet") -> int:
    r = api.admin.post(
        "/api/v1/scripts",
        json={"name": name, "interpreter": "bash", "content": 'echo "$JOB_WHO"'},
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _limits(api: Api, **values: Any) -> None:
    r = api.admin.patch("/api/v1/settings", json=values)
    assert r.status_code == 200, r.text


def _count(api: Api) -> int:
    return len(api.admin.get("/api/v1/jobs", params={"limit": 500}).json()["items"])


# -- a scripts-only user's env --------------------------------------------------------------

REFUSED = ["BASH_ENV", "ENV", "SHELLOPTS", "PS4", "LD_PRELOAD", "LD_LIBRARY_PATH", "PATH",
           "IFS", "PYTHONSTARTUP", "PERL5OPT", "NODE_OPTIONS", "OPENSSL_CONF", "GCONV_PATH",
           "BASH_FUNC_x%%", "job_lower", "JOB_", "JOB_x", "HOME", "TMPDIR"]  # fmt: skip


@pytest.mark.parametrize("key", REFUSED)
def test_a_scripts_only_user_may_set_only_job_names(api: Api, key: str) -> None:
    _script(api)
    _, key_ = api.user("sam", commands_allowed=False)
    r = api.client(key_).post("/api/v1/jobs", json={"script": "greet", "env": {key: "x"}})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "env" or r.json()["field"].startswith("env")
    assert repr(key) in r.json()["message"] or key in r.json()["message"]
    assert _count(api) == 0


def test_a_scripts_only_users_job_names_pass_and_others_keep_full_env(api: Api) -> None:
    _script(api)
    _, sam = api.user("sam", commands_allowed=False)
    ok = submit(api.client(sam), script="greet", env={"JOB_WHO": "world", "JOB_2_X": "y"})
    assert ok["env"] == {"JOB_WHO": "world", "JOB_2_X": "y"}
    # Whoever may run any command may set any variable: it gives them nothing more.
    _, free = api.user("fran")
    assert submit(api.client(free), script="greet", env={"LD_PRELOAD": "x"})["env"]
    _, op = api.user("olga", "operator", commands_allowed=False)
    assert submit(api.client(op), script="greet", env={"BASH_ENV": "x"})["env"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"LD_LIBRARY_PATH": "/a\n/b"},
            "the value of LD_LIBRARY_PATH must not contain a line break",
        ),
        ({"LD_A": "x" * 20_000, "TMOUT": "y" * 20_000}, "the variables LD_A, TMOUT take 40"),
    ],
)
def test_variables_that_act_as_a_process_starts_must_pass_a_gate(
    api: Api, env: dict[str, str], message: str
) -> None:
    # A worker gives them to a job only after the job is in its cgroup, through a pipe,
    # a line each (docs/api.md, Limits): what it could not start is refused at once.
    r = api.admin.post("/api/v1/jobs", json={"command": "true", "env": env})

    assert r.status_code == 422, r.text
    assert r.json()["field"] == "env" and message in r.json()["message"]
    assert _count(api) == 0
    ok = {"LD_LIBRARY_PATH": "/a:/b", "OTHER": "line\nbreak", "MANY": "x" * 100_000}
    assert submit(api.admin, command="true", env=ok)["env"]


def test_a_bad_env_in_a_batch_names_the_job_and_submits_none(api: Api) -> None:
    _script(api)
    _, sam = api.user("sam", commands_allowed=False)
    batch = [{"script": "greet", "env": {"JOB_A": "1"}}, {"script": "greet", "env": {"PS4": "x"}}]
    r = api.client(sam).post("/api/v1/jobs/batch", json={"jobs": batch})
    assert r.status_code == 422 and r.json()["field"] == "jobs.1.env"
    assert _count(api) == 0


def test_a_scripts_only_user_cannot_restart_a_job_with_env_of_the_old_rules(api: Api) -> None:
    _script(api)
    _, sam = api.user("sam", commands_allowed=False)
    job = submit(api.client(sam), script="greet", env={"JOB_A": "1"})
    with db.write(api.engine) as conn:  # as a job submitted before the rule was
        conn.execute(jobs.J.update().where(jobs.J.c.id == job["id"]).values(env={"BASH_ENV": "x"}))
    r = api.client(sam).post(f"/api/v1/jobs/{job['id']}/restart")
    assert r.status_code == 422 and "BASH_ENV" in r.json()["message"]


# -- env values of others' jobs -------------------------------------------------------------


def test_env_values_are_the_owners_and_admins_only(api: Api) -> None:
    api.worker("node-1", max_jobs=1)
    _, alice = api.user("alice")
    owner = api.client(alice)
    job = submit(owner, command="true", env={"TOKEN": "s3cret", "MODE": "fast"})
    assert job["env"] == {"TOKEN": "s3cret", "MODE": "fast"}
    _, vic = api.user("vic", "viewer")
    _, olga = api.user("olga", "operator")
    for who, shown in ((owner, "s3cret"), (api.admin, "s3cret"), (api.client(vic), "****"),
                       (api.client(olga), "****")):  # fmt: skip
        assert who.get(f"/api/v1/jobs/{job['id']}").json()["env"]["TOKEN"] == shown
        [listed] = who.get("/api/v1/jobs").json()["items"]
        assert listed["env"] == {"TOKEN": shown, "MODE": "fast" if shown != "****" else "****"}
    # The operator's restart runs with the real values (copied in the database), stays
    # alice's job, and shows the operator no values.
    r = api.client(olga).post(f"/api/v1/jobs/{job['id']}/restart")
    assert r.status_code == 201 and r.json()["env"] == {"TOKEN": "****", "MODE": "****"}
    assert r.json()["user"] == "alice"
    with db.read(api.engine) as conn:
        assert jobs.get(conn, r.json()["id"]).env == {"TOKEN": "s3cret", "MODE": "fast"}
    assert api.client(olga).get(f"/api/v1/jobs/{r.json()['id']}").json()["env"]["TOKEN"] == "****"
    assert owner.get(f"/api/v1/jobs/{r.json()['id']}").json()["env"]["TOKEN"] == "s3cret"
    killed = api.client(olga).post(f"/api/v1/jobs/{r.json()['id']}/kill")
    assert killed.json()["env"]["TOKEN"] == "****"


def test_the_end_event_of_a_stream_masks_too(api: Api) -> None:
    api.worker("node-1")
    job = submit(api.admin, command="true", env={"TOKEN": "s3cret"})
    api.finish(job["id"])
    _, vic = api.user("vic", "viewer")
    text = api.client(vic).get(f"/api/v1/jobs/{job['id']}/log/stream").text
    assert "s3cret" not in text and '"TOKEN":"****"' in text


# -- caps -------------------------------------------------------------------------------------


def test_the_priority_a_submitter_may_set_is_capped(api: Api) -> None:
    _limits(api, max_submitter_priority=10)
    _, sue = api.user("sue")
    r = api.client(sue).post("/api/v1/jobs", json={"command": "x", "priority": 11})
    assert r.status_code == 422 and r.json()["field"] == "priority" and "10" in r.text
    batch = [{"command": "x", "priority": 10}, {"command": "x", "priority": 500}]
    r = api.client(sue).post("/api/v1/jobs/batch", json={"jobs": batch})
    assert r.status_code == 422 and r.json()["field"] == "jobs.1.priority"
    assert _count(api) == 0
    job = submit(api.client(sue), command="x", priority=10)
    _, olga = api.user("olga", "operator")
    assert submit(api.client(olga), command="x", priority=10**6)["priority"] == 10**6
    _limits(api, max_submitter_priority=5)  # effective at once, restarts too
    r = api.client(sue).post(f"/api/v1/jobs/{job['id']}/restart")
    assert r.status_code == 422 and r.json()["field"] == "priority"


def test_waiting_jobs_per_user_are_capped_whole_batches_or_none(api: Api) -> None:
    _limits(api, max_waiting_per_user=3)
    _, sue = api.user("sue")
    client = api.client(sue)
    batch = {"jobs": [{"command": "x"}, {"command": "y"}]}
    assert client.post("/api/v1/jobs/batch", json=batch).status_code == 201
    r = client.post("/api/v1/jobs/batch", json=batch)
    assert r.status_code == 409 and r.json()["error"] == "waiting_limit"
    assert "at most 3" in r.json()["message"]
    assert _count(api) == 2  # nothing of the refused batch
    job = submit(client, command="z")
    assert client.post("/api/v1/jobs", json={"command": "w"}).status_code == 409
    assert client.post(f"/api/v1/jobs/{job['id']}/restart").status_code == 409
    # Others are not held back by sue's jobs; admins are not capped.
    _, tom = api.user("tom")
    submit(api.client(tom), command="t")
    for _ in range(4):
        submit(api.admin, command="a")
    # A job that starts no longer waits: room again.
    api.worker("node-1", max_jobs=10)
    api.balance()
    submit(client, command="again")


def test_submissions_a_second_are_capped_per_user(api: Api) -> None:
    now = [1000.0]
    api.app.state.submit_limiter = submission.RateLimiter(clock=lambda: now[0])
    _limits(api, submit_rate=2, submit_burst=3)
    _, sue = api.user("sue")
    client = api.client(sue)
    for _ in range(3):
        submit(client, command="x")
    r = client.post("/api/v1/jobs/batch", json={"jobs": [{"command": "x"}]})
    assert r.status_code == 429 and r.json()["error"] == "rate_limited"
    assert "2 submissions a second" in r.json()["message"]
    assert client.post("/addJob", json={"command": "x"}).status_code == 429
    assert _count(api) == 3
    submit(api.admin, command="admins are not limited")
    now[0] += 0.5  # one token back
    submit(client, command="x")
    assert client.post("/api/v1/jobs", json={"command": "x"}).status_code == 429


@pytest.mark.parametrize(
    "bad",
    [{"max_waiting_per_user": 0}, {"submit_rate": 0}, {"submit_burst": 0},
     {"max_streams_per_user": 0}, {"max_submitter_priority": "high"},
     {"submit_rate": -1}],
)  # fmt: skip
def test_bad_limits_are_refused_naming_the_setting(api: Api, bad: dict[str, Any]) -> None:
    r = api.admin.patch("/api/v1/settings", json=bad)
    assert r.status_code == 422 and r.json()["field"] == next(iter(bad))


def test_only_admins_change_limits(api: Api) -> None:
    _, olga = api.user("olga", "operator")
    r = api.client(olga).patch("/api/v1/settings", json={"max_waiting_per_user": 10**8})
    assert r.status_code == 403


# -- log streams ----------------------------------------------------------------------------


def _running(api: Api, client: Any, **spec: Any) -> int:
    api.worker("node-1", max_jobs=5)
    job = submit(client, command="sleep 60", **spec)
    api.start(job["id"])
    api.write_output(job["id"], ("stdout", b"first\n"))
    return int(job["id"])


def _stream_until_end(api: Api, client: Any, job_id: int, act: Any) -> list[tuple[str, Any]]:
    """Stream the job; once the first output arrived, ``act()``; the events seen. A guard
    finishes the job after 20 s, so a stream that never stops fails rather than hangs."""
    guard = threading.Timer(20, lambda: api.finish(job_id))
    guard.start()
    events: list[tuple[str, Any]] = []
    try:
        with client.stream("GET", f"/api/v1/jobs/{job_id}/log/stream") as r:
            assert r.status_code == 200
            name = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name:
                    events.append((name, json.loads(line[6:])))
                    if name == "output" and len(events) == 1:
                        act()
    finally:
        guard.cancel()
    return events


def test_a_stream_ends_when_its_key_is_revoked(api: Api) -> None:
    api.app.state.sse_recheck_seconds = 0.05
    vic_id, vic = api.user("vic", "viewer")
    job_id = _running(api, api.admin)
    [key] = api.admin.get(f"/api/v1/users/{vic_id}/api-keys").json()

    def revoke() -> None:
        r = api.admin.delete(f"/api/v1/users/{vic_id}/api-keys/{key['id']}")
        assert r.status_code == 204

    events = _stream_until_end(api, api.client(vic), job_id, revoke)
    assert events[-1][0] == "error" and events[-1][1]["error"] == "unauthorized"
    assert sse.stream_slots(api.app.state).count(vic_id) == 0


@pytest.mark.parametrize("how", ["disable", "delete_user", "demote"])
def test_a_stream_ends_when_its_user_is_disabled_or_loses_sight_of_the_job(
    api: Api, how: str
) -> None:
    api.app.state.sse_recheck_seconds = 0.05
    vic_id, vic = api.user("vic", "viewer")
    job_id = _running(api, api.admin)

    def act() -> None:
        if how == "disable":
            r = api.admin.patch(f"/api/v1/users/{vic_id}", json={"disabled": True})
            assert r.status_code == 200
        elif how == "delete_user":
            assert api.admin.delete(f"/api/v1/users/{vic_id}").status_code == 204
        else:  # a submitter sees their own jobs only
            r = api.admin.patch(f"/api/v1/users/{vic_id}", json={"role": "submitter"})
            assert r.status_code == 200

    events = _stream_until_end(api, api.client(vic), job_id, act)
    expected = "not_found" if how == "demote" else "unauthorized"
    assert events[-1][0] == "error" and events[-1][1]["error"] == expected


def test_open_streams_per_user_are_capped(api: Api) -> None:
    _limits(api, max_streams_per_user=2)
    api.worker("node-1")
    job = submit(api.admin, command="true")
    api.finish(job["id"])
    vic_id, vic = api.user("vic", "viewer")
    slots = sse.stream_slots(api.app.state)
    held = [slots.acquire(vic_id, 2), slots.acquire(vic_id, 2)]  # two streams open
    r = api.client(vic).get(f"/api/v1/jobs/{job['id']}/log/stream")
    assert r.status_code == 429 and r.json()["error"] == "too_many_streams"
    assert api.admin.get(f"/api/v1/jobs/{job['id']}/log/stream").status_code == 200
    held[0]()
    held[0]()  # releasing twice frees one slot only
    r = api.client(vic).get(f"/api/v1/jobs/{job['id']}/log/stream")
    assert r.status_code == 200 and "event: end" in r.text
    assert slots.count(vic_id) == 1  # the finished stream gave its slot back


# -- restarts of jobs of deleted scripts ----------------------------------------------------


def test_a_scripts_only_user_cannot_restart_a_job_of_a_deleted_script(api: Api) -> None:
    script_id = _script(api)
    _, sam = api.user("sam", commands_allowed=False)
    job = submit(api.client(sam), script="greet")
    assert api.admin.delete(f"/api/v1/scripts/{script_id}").status_code == 204
    r = api.client(sam).post(f"/api/v1/jobs/{job['id']}/restart")
    assert r.status_code == 409 and "deleted" in r.json()["message"]
    _, olga = api.user("olga", "operator")
    again = api.client(olga).post(f"/api/v1/jobs/{job['id']}/restart")
    assert again.status_code == 201 and again.json()["script"]["name"] == "greet"
