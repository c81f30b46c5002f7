"""A job's ``workdir``: where it runs on the worker. Only its form is checked here (the
worker says whether it exists): absolute, no NUL, at most 4096 bytes; scripts-only users
may not choose one; restarts and retries keep it."""

from __future__ import annotations

import pytest
from apihelpers import Api, submit

from jobbalancer import db, jobs
from jobbalancer.db import schema


def _count_jobs(api: Api) -> int:
    with db.read(api.engine) as conn:
        return len(conn.execute(schema.jobs.select()).all())


def test_workdir_is_echoed_and_absent_means_a_private_directory(api: Api) -> None:
    api.worker("node-1")
    job = submit(api.admin, command="./encode.sh in.mp4", workdir="/srv/media")
    plain = submit(api.admin, command="true")

    assert job["workdir"] == "/srv/media"
    assert api.admin.get(f"/api/v1/jobs/{job['id']}").json()["workdir"] == "/srv/media"
    assert plain["workdir"] is None
    assert submit(api.admin, command="true", workdir=None)["workdir"] is None


@pytest.mark.parametrize(
    ("workdir", "says"),
    [
        ("srv/media", "absolute"),
        ("./media", "absolute"),
        ("", "absolute"),
        ("/srv/\x00x", "NUL"),
        ("/" + "d" * 4096, "4096 bytes"),
        (17, "string"),
    ],
)
def test_bad_workdir_is_a_422_naming_the_field(api: Api, workdir: object, says: str) -> None:
    r = api.admin.post("/api/v1/jobs", json={"command": "true", "workdir": workdir})

    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == "workdir"
    assert "workdir" in body["message"] and says.lower() in body["message"].lower(), body
    assert _count_jobs(api) == 0


def test_longest_workdir_is_accepted(api: Api) -> None:
    longest = "/" + "d" * 4095  # 4096 bytes

    assert submit(api.admin, command="true", workdir=longest)["workdir"] == longest


def test_batch_names_the_job_whose_workdir_is_bad(api: Api) -> None:
    r = api.admin.post(
        "/api/v1/jobs/batch",
        json={"jobs": [{"command": "true", "workdir": "/ok"}, {"command": "true", "workdir": "x"}]},
    )

    assert r.status_code == 422
    assert r.json()["field"] == "jobs.1.workdir"
    assert _count_jobs(api) == 0


def test_scripts_only_user_may_not_choose_a_workdir(api: Api) -> None:
    api.admin.post("/api/v1/scripts", json={"name": "s", "interpreter": "sh", "content": "pwd"})
    _, key = api.user("sam", commands_allowed=False)
    sam = api.client(key)

    r = sam.post("/api/v1/jobs", json={"script": "s", "workdir": "/srv/media"})
    two = [{"script": "s"}, {"script": "s", "workdir": "/srv"}]
    batch = sam.post("/api/v1/jobs/batch", json={"jobs": two})

    assert r.status_code == 403 and r.json()["field"] == "workdir", r.text
    assert "scripts only" in r.json()["message"]
    assert batch.status_code == 403 and batch.json()["field"] == "jobs.1.workdir"
    assert _count_jobs(api) == 0
    assert submit(sam, script="s")["workdir"] is None  # without one, as before


def test_restart_and_retry_keep_the_workdir(api: Api) -> None:
    api.worker("node-1", max_jobs=1)
    first = submit(api.admin, command="exit 3", workdir="/srv/media", retries=1)
    api.start(first["id"])
    api.finish(first["id"], jobs.State.FAILED, exit_code=3)

    retry = next(
        j for j in api.admin.get("/api/v1/jobs").json()["items"] if j["retry_of"] == first["id"]
    )
    restarted = api.admin.post(f"/api/v1/jobs/{first['id']}/restart").json()

    assert retry["workdir"] == "/srv/media"
    assert restarted["restarted_from"] == first["id"]
    assert restarted["workdir"] == "/srv/media"
