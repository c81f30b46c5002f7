"""Placement through the API: requests and constraints accepted, shown, refused naming
the field, a request no worker could ever fit refused with the largest capacity, and the
workers' capacity, use and labels."""

from __future__ import annotations

import pytest
from apihelpers import Api, submit

from jobbalancer import db
from jobbalancer import registry as workers

GiB = 1 << 30


def big_worker(api: Api, name: str = "render-2") -> int:
    with db.write(api.engine) as conn:
        worker_id, _ = workers.register(
            conn, name=name, host="test-host", worker_class="default", max_jobs=4,
            pid=4242, version="test", stats=workers.Stats(),
            capacity=workers.Capacity(cpus=8, memory=16 * GiB, gpus=1, labels={"ffmpeg": "6"}),
        )  # fmt: skip
    return worker_id


def test_requests_are_stored_shown_and_placed(api: Api) -> None:
    worker_id = big_worker(api)
    job = submit(
        api.admin,
        command="true",
        cpus=1.5,
        memory="512M",
        gpus=1,
        constraints={"ffmpeg": "6", "ssd": False},
    )
    assert (job["cpus"], job["memory"], job["gpus"]) == (1.5, 512 << 20, 1)
    assert job["constraints"] == {"ffmpeg": "6", "ssd": False}
    assert job["state"] == "assigned" and job["pending_reason"] is None
    # The worker shows its capacity, what its jobs use, and its labels
    w = api.admin.get(f"/api/v1/workers/{worker_id}").json()
    assert w["capacity"] == {"slots": 4, "cpus": 8.0, "memory": 16 * GiB, "gpus": 1}
    assert w["used"] == {"slots": 1, "cpus": 1.5, "memory": 512 << 20, "gpus": 1}
    assert w["labels"] == {"ffmpeg": "6"}
    # A second GPU job waits, saying why
    second = submit(api.admin, command="true", gpus=1)
    assert second["state"] == "waiting"
    assert second["pending_reason"] == "needs 1 gpus; the most free is 0 on render-2"
    assert (
        api.admin.get(f"/api/v1/jobs/{second['id']}").json()["pending_reason"]
        == (second["pending_reason"])
    )


def test_a_request_no_worker_could_ever_fit_is_422_with_the_largest_capacity(api: Api) -> None:
    big_worker(api)
    r = api.admin.post("/api/v1/jobs", json={"command": "true", "memory": "32G"})
    assert r.status_code == 422 and r.json()["field"] == "memory"
    assert "16 GiB" in r.json()["message"]
    r = api.admin.post(
        "/api/v1/jobs/batch", json={"jobs": [{"command": "true"}, {"command": "x", "cpus": 64}]}
    )
    assert r.status_code == 422 and r.json()["field"] == "jobs.1.cpus"
    assert "8" in r.json()["message"]


def test_a_label_no_worker_has_is_accepted_with_a_reason(api: Api) -> None:
    big_worker(api)
    job = submit(api.admin, command="true", constraints={"os": "plan9"})
    assert job["state"] == "waiting"
    assert job["pending_reason"] == "no worker has label os=plan9"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"memory": "12X"}, "memory"),
        ({"memory": "-1G"}, "memory"),
        ({"memory": -5}, "memory"),
        ({"memory": "9999999T"}, "memory"),
        ({"memory": True}, "memory"),
        ({"cpus": -1}, "cpus"),
        ({"cpus": 1e9}, "cpus"),
        ({"gpus": -1}, "gpus"),
        ({"gpus": 1.5}, "gpus"),
        ({"constraints": {"bad label!": "x"}}, "constraints"),
        ({"constraints": {"os": ["a"]}}, "constraints"),
        ({"constraints": {"os": "!"}}, "constraints"),
        ({"constraints": "os=debian"}, "constraints"),
    ],
)
def test_bad_requests_are_422_naming_the_field(
    api: Api, body: dict[str, object], field: str
) -> None:
    r = api.admin.post("/api/v1/jobs", json={"command": "true", **body})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field, r.text


def test_classes_and_scripts_carry_default_requests(api: Api) -> None:
    big_worker(api)
    r = api.admin.post(
        "/api/v1/worker-classes",
        json={"name": "render", "requests": {"cpus": 2, "memory": "1G"}},
    )
    assert r.status_code == 201, r.text
    assert r.json()["requests"] == {"cpus": 2.0, "memory": 1 << 30}
    r = api.admin.post(
        "/api/v1/scripts",
        json={"name": "encode", "interpreter": "sh", "content": "true",
              "requests": {"memory": "2G", "constraints": {"ffmpeg": "6"}}},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["requests"] == {"memory": 2 << 30, "constraints": {"ffmpeg": "6"}}
    # A job takes what it does not ask itself: the script's before the class's
    job = submit(api.admin, script="encode", worker_class="render")
    assert (job["cpus"], job["memory"], job["constraints"]) == (2.0, 2 << 30, {"ffmpeg": "6"})
    own = submit(api.admin, script="encode", worker_class="render", memory="512M", cpus=0)
    assert (own["cpus"], own["memory"]) == (None, 512 << 20)
    anywhere = submit(api.admin, script="encode", worker_class="render", constraints={})
    assert (anywhere["memory"], anywhere["constraints"]) == (2 << 30, None)  # {}: none
    plain = submit(api.admin, command="true", worker_class="render")
    assert (plain["cpus"], plain["memory"]) == (2.0, 1 << 30)
    # Changed and cleared like any field; bad ones are 422 naming the field
    cid = api.admin.get("/api/v1/worker-classes").json()
    render = next(c for c in cid if c["name"] == "render")
    r = api.admin.patch(f"/api/v1/worker-classes/{render['id']}", json={"requests": None})
    assert r.status_code == 200 and r.json()["requests"] is None
    r = api.admin.patch(
        f"/api/v1/worker-classes/{render['id']}", json={"requests": {"memory": "1Q"}}
    )
    assert r.status_code == 422 and r.json()["field"] == "requests.memory", r.text


def test_get_job_says_why_it_waits_now_not_an_old_stored_reason(api: Api) -> None:
    import sqlalchemy as sa

    from jobbalancer.db import schema

    job = submit(api.admin, command="true", memory="4G")  # no worker yet
    assert job["pending_reason"] == "no online worker of class default"
    big_worker(api)
    with db.write(api.engine) as conn:  # render-2 came, but was disabled before any pass
        conn.execute(sa.update(schema.workers).values(enabled=False))
    r = api.admin.get(f"/api/v1/jobs/{job['id']}")
    assert r.status_code == 200, r.text
    assert r.json()["pending_reason"] == "worker render-2 is disabled"
