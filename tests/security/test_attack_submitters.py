"""A hostile submitter and a scripts-only user against the app, on every backend: code run
through ``env``, other users' env values through any read route, flooding the queue, the
priority, held-open log streams, and restarts of jobs of deleted scripts. The last test
runs real workers: what a scripts-only user may pass reaches the script, and what is
refused never runs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from jobbalancer import balancer, db, jobs
from jobbalancer.api import sse
from jobbalancer.app import create_app
from jobbalancer.service import submission
from jobbalancer.settings import Settings
from tests.e2e import conftest as e2e
from tests.e2e.conftest import Cluster
from tests.security.conftest import App

_make_cluster = e2e.make_cluster  # the e2e tests' fixture (a cluster of real processes)

SECRET = "hunter2-do-not-leak"


@pytest.fixture
def app(engine: sa.Engine, cheap_hashing: None) -> Iterator[App]:
    """The app on the backend under test (``engine`` is parametrized over all three)."""
    made = create_app(Settings(), engine, supervise=False)
    first = made.state.first_admin
    assert first is not None
    result = App(app=made, engine=engine, admin_key=first[2])
    yield result
    for c in result.clients:
        c.close()


def _greet_script(app: App) -> None:
    r = app.admin.post(
        "/api/v1/scripts", json={"name": "greet", "interpreter": "bash", "content": "echo hi"}
    )
    assert r.status_code == 201, r.text


def _job_count(app: App) -> int:
    with db.read(app.engine) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(jobs.J)).scalar_one())


ESCALATIONS = [
    {"BASH_ENV": "$(id >&2)"},
    {"ENV": "$(id >&2)"},
    {"SHELLOPTS": "xtrace", "PS4": "$(id >&2)"},
    {"LD_PRELOAD": "/tmp/evil.so"},
    {"LD_AUDIT": "/tmp/evil.so"},
    {"BASH_FUNC_echo%%": "() { id; }"},
    {"PYTHONSTARTUP": "/tmp/x.py"},
    {"PYTHONPATH": "/tmp"},
    {"PERL5OPT": "-Mevil"},
    {"RUBYOPT": "-revil"},
    {"NODE_OPTIONS": "--require /tmp/evil.js"},
    {"OPENSSL_CONF": "/tmp/evil.cnf"},
    {"GCONV_PATH": "/tmp"},
    {"PATH": "/tmp/evil:/usr/bin"},
    {"IFS": "/"},
    {"JAVA_TOOL_OPTIONS": "-javaagent:/tmp/x.jar"},
]


@pytest.mark.parametrize("env", ESCALATIONS, ids=lambda e: "+".join(e))
def test_a_scripts_only_user_cannot_shape_the_interpreter_through_env(
    app: App, env: dict[str, str]
) -> None:
    _greet_script(app)
    _, key = app.user("mallory", "submitter", commands_allowed=False)
    client = app.client(key)
    r = client.post("/api/v1/jobs", json={"script": "greet", "env": env})
    assert r.status_code == 422 and r.json()["field"] == "env", r.text
    batch = {"jobs": [{"script": "greet"}, {"script": "greet", "env": env}]}
    assert client.post("/api/v1/jobs/batch", json=batch).status_code == 422
    assert _job_count(app) == 0


def test_other_users_env_values_never_leave_through_any_read_route(app: App) -> None:
    alice_id, alice = app.user("alice", "submitter")
    owner = app.client(alice)
    app.worker("node-1")
    app.worker("node-2")
    r = owner.post("/api/v1/jobs", json={"command": "sleep 60", "env": {"TOKEN": SECRET}})
    assert r.status_code == 201
    job_id = r.json()["id"]
    done = owner.post("/api/v1/jobs", json={"command": "true", "env": {"TOKEN": SECRET}}).json()
    _finish(app, done["id"])
    attackers = [app.client(app.user(n, role)[1]) for n, role in
                 (("mallory", "submitter"), ("vic", "viewer"), ("olga", "operator"))]  # fmt: skip
    for who in attackers:
        seen = [
            who.get(f"/api/v1/jobs/{job_id}"),
            who.get("/api/v1/jobs"),
            who.get("/api/v1/jobs", params={"q": "sleep", "user": "alice"}),
            who.get(f"/api/v1/jobs/{done['id']}/log/stream"),
            who.get(f"/api/v1/jobs/{done['id']}/log"),
            who.get("/api/v1/stats"),
            who.post(f"/api/v1/jobs/{done['id']}/restart"),
            who.post(f"/api/v1/jobs/{job_id}/kill"),
        ]
        for answer in seen:
            assert SECRET not in answer.text, (answer.request.url, answer.text)
    # Their owner sees the value, and the operator's re-run still carries it.
    assert owner.get(f"/api/v1/jobs/{job_id}").json()["env"]["TOKEN"] == SECRET
    with db.read(app.engine) as conn:
        reruns = conn.execute(sa.select(jobs.J.c.id).where(jobs.J.c.restarted_from == done["id"]))
        for rerun in reruns.scalars():
            assert jobs.get(conn, rerun).env == {"TOKEN": SECRET}
            assert jobs.get(conn, rerun).user_id == alice_id


def _finish(app: App, job_id: int) -> None:
    with db.write(app.engine) as conn:
        balancer.assign_waiting(conn)
        job = jobs.get(conn, job_id)
        assert job.worker_id is not None and job.token is not None
        assert jobs.claim(conn, job_id, job.worker_id, job.token)
        assert jobs.finish(conn, job_id, job.token, jobs.State.DONE, exit_code=0)


def test_a_flooding_submitter_is_held_to_the_waiting_and_rate_caps(app: App) -> None:
    assert app.admin.patch(
        "/api/v1/settings", json={"max_waiting_per_user": 50, "submit_burst": 5, "submit_rate": 1}
    ).status_code == 200  # fmt: skip
    now = [0.0]
    app.app.state.submit_limiter = submission.RateLimiter(clock=lambda: now[0])
    _, key = app.user("mallory", "submitter")
    client = app.client(key)
    batch = {"jobs": [{"command": "x"}] * 30}
    answers = []
    for _ in range(8):  # 8 batches of 30 in 80 ms, with no workers to take them
        answers.append(client.post("/api/v1/jobs/batch", json=batch).status_code)
        now[0] += 0.01
    assert answers[:2] == [201, 409] and set(answers[2:5]) == {409}
    assert set(answers[5:]) == {429}
    assert _job_count(app) == 30  # whole batches or nothing
    # The admin's jobs are not held back by mallory's.
    assert app.admin.post("/api/v1/jobs", json={"command": "y"}).status_code == 201


def test_a_submitter_cannot_jump_the_queue(app: App) -> None:
    _, key = app.user("mallory", "submitter")
    r = app.client(key).post("/api/v1/jobs", json={"command": "x", "priority": 10**9})
    assert r.status_code == 422 and r.json()["field"] == "priority"
    r = app.client(key).post("/addJob", json={"command": "x"})
    assert r.status_code == 200  # the legacy path has no priority, so none to cap


def test_a_log_stream_stops_once_its_key_is_revoked(app: App) -> None:
    app.app.state.sse_recheck_seconds = 0.05
    vic_id, vic = app.user("vic", "viewer")
    app.worker("node-1")
    job_id = app.admin.post("/api/v1/jobs", json={"command": "sleep 60"}).json()["id"]
    with db.write(app.engine) as conn:
        job = jobs.get(conn, job_id)
        assert job.token is not None and job.worker_id is not None
        assert jobs.claim(conn, job_id, job.worker_id, job.token)
    [key] = app.admin.get(f"/api/v1/users/{vic_id}/api-keys").json()

    def guard() -> None:  # a stream that never stops fails instead of hanging
        with db.write(app.engine) as conn:
            assert job.token is not None
            jobs.finish(conn, job_id, job.token, jobs.State.DONE, exit_code=0)

    timer = threading.Timer(20, guard)
    timer.start()
    try:
        with app.client(vic).stream("GET", f"/api/v1/jobs/{job_id}/log/stream") as r:
            assert r.status_code == 200
            revoked = app.admin.delete(f"/api/v1/users/{vic_id}/api-keys/{key['id']}")
            assert revoked.status_code == 204
            lines = [line for line in r.iter_lines() if line.startswith(("event:", "data:"))]
    finally:
        timer.cancel()
    assert lines[-2] == "event: error" and json.loads(lines[-1][6:])["error"] == "unauthorized"
    assert sse.stream_slots(app.app.state).count(vic_id) == 0


def test_held_open_streams_are_capped_per_user(app: App) -> None:
    assert app.admin.patch("/api/v1/settings", json={"max_streams_per_user": 1}).status_code == 200
    vic_id, vic = app.user("vic", "viewer")
    app.worker("node-1")
    job_id = app.admin.post("/api/v1/jobs", json={"command": "true"}).json()["id"]
    release = sse.stream_slots(app.app.state).acquire(vic_id, 1)  # one held open
    r = app.client(vic).get(f"/api/v1/jobs/{job_id}/log/stream")
    assert r.status_code == 429
    release()


def test_a_scripts_only_user_cannot_revive_a_deleted_script(app: App) -> None:
    _greet_script(app)
    _, key = app.user("mallory", "submitter", commands_allowed=False)
    job = app.client(key).post("/api/v1/jobs", json={"script": "greet"}).json()
    [script] = app.admin.get("/api/v1/scripts").json()
    assert app.admin.delete(f"/api/v1/scripts/{script['id']}").status_code == 204
    r = app.client(key).post(f"/api/v1/jobs/{job['id']}/restart")
    assert r.status_code == 409 and "deleted" in r.json()["message"]
    assert _job_count(app) == 1


# -- with real workers --------------------------------------------------------------------


def _scripts_only_key(cluster: Cluster) -> str:
    r = cluster.api.post(
        "/api/v1/users", json={"name": "sam", "role": "submitter", "commands_allowed": False}
    )
    assert r.status_code == 201, r.text
    r = cluster.api.post(f"/api/v1/users/{r.json()['id']}/api-keys", json={"name": "t"})
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def test_a_scripts_only_users_allowed_env_runs_and_a_refused_one_never_does(
    _make_cluster: Any, tmp_path: Path
) -> None:
    cluster: Cluster = _make_cluster()
    cluster.start_worker("w", "--allow-root")
    r = cluster.api.post(
        "/api/v1/scripts",
        json={"name": "greet", "interpreter": "bash", "content": 'echo "who=$JOB_WHO"\n'},
    )
    assert r.status_code == 201, r.text
    sam = {"Authorization": f"Bearer {_scripts_only_key(cluster)}"}
    ok = cluster.api.post(
        "/api/v1/jobs", json={"script": "greet", "env": {"JOB_WHO": "world"}}, headers=sam
    )
    assert ok.status_code == 201, ok.text
    assert cluster.wait_job(ok.json()["id"])["state"] == "done"
    assert cluster.log(ok.json()["id"], "stdout") == "who=world\n"
    canary = tmp_path / "pwned"
    for env in ({"BASH_ENV": f"$(touch {canary})"},
                {"SHELLOPTS": "xtrace", "PS4": f"$(touch {canary})"}):  # fmt: skip
        bad = cluster.api.post("/api/v1/jobs", json={"script": "greet", "env": env}, headers=sam)
        assert bad.status_code == 422, bad.text
    # Run something after the refusals and wait for it: had they run, they would be done.
    last = cluster.submit(command="true")
    cluster.wait_job(last["id"])
    assert not canary.exists()
    assert [j["id"] for j in cluster.api.get("/api/v1/jobs").json()["items"]] == [
        last["id"], ok.json()["id"]
    ]  # fmt: skip
