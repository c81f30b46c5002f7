"""Workers (list, change, remove) and worker classes (CRUD, what may not be deleted)."""

from __future__ import annotations

from apihelpers import TIME, Api, submit


def test_worker_list_and_patch(api: Api) -> None:
    worker_id = api.worker("node-1", max_jobs=None)
    [w] = api.admin.get("/api/v1/workers").json()
    assert w["id"] == worker_id and w["name"] == "node-1" and w["host"] == "test-host"
    assert (w["state"], w["enabled"], w["worker_class"]) == ("online", True, "default")
    assert (w["max_jobs"], w["own_max_jobs"], w["active_jobs"]) == (5, None, 0)
    assert w["memory"] == {"total": 8 << 30, "available": 4 << 30}
    assert (w["load"], w["cpu_count"], w["version"]) == (0.5, 4, "test")
    assert TIME.match(w["started_at"]) and TIME.match(w["last_heartbeat_at"])

    url = f"/api/v1/workers/{worker_id}"
    r = api.admin.patch(url, json={"max_jobs": 1})
    assert r.status_code == 200 and (r.json()["max_jobs"], r.json()["own_max_jobs"]) == (1, 1)
    r = api.admin.patch(url, json={"max_jobs": None})  # back to the class's
    assert (r.json()["max_jobs"], r.json()["own_max_jobs"]) == (5, None)

    job = submit(api.admin, command="x", worker_class="default")
    r = api.admin.patch(url, json={"enabled": False})
    assert r.json()["state"] == "disabled" and r.json()["active_jobs"] == 1
    assert submit(api.admin, command="y")["state"] == "waiting"  # takes no new jobs
    r = api.admin.patch(url, json={"enabled": True})
    assert r.json()["active_jobs"] == 2  # the waiting job was assigned at once
    assert api.admin.get(f"/api/v1/jobs/{job['id']}").json()["state"] == "assigned"

    api.admin.post("/api/v1/worker-classes", json={"name": "gpu", "max_jobs": 3})
    r = api.admin.patch(url, json={"worker_class": "gpu"})
    assert (r.json()["worker_class"], r.json()["max_jobs"]) == ("gpu", 3)

    for bad, field in (
        ({"worker_class": "nope"}, "worker_class"),
        ({"max_jobs": 0}, "max_jobs"),
        ({"enabled": None}, "enabled"),
        ({"name": "x"}, "name"),
    ):
        r = api.admin.patch(url, json=bad)
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    assert api.admin.patch("/api/v1/workers/9999", json={}).status_code == 404
    _, key = api.user("sub")
    assert api.client(key).patch(url, json={"max_jobs": 2}).status_code == 403
    assert api.client(key).get("/api/v1/workers").status_code == 200
    assert api.client(key).delete(url).status_code == 403

    # Only an offline worker can be removed.
    r = api.admin.delete(f"/api/v1/workers/{worker_id}")
    assert r.status_code == 409 and "offline" in r.json()["message"]
    api.set_offline(worker_id)
    assert api.admin.delete(f"/api/v1/workers/{worker_id}").status_code == 204
    assert api.admin.get("/api/v1/workers").json() == []
    assert api.admin.delete(f"/api/v1/workers/{worker_id}").status_code == 404


def test_class_crud(api: Api) -> None:
    r = api.admin.post(
        "/api/v1/worker-classes", json={"name": "gpu", "max_jobs": 2, "description": "GPUs"}
    )
    assert r.status_code == 201
    gpu = r.json()
    assert gpu == {
        "id": gpu["id"], "name": "gpu", "max_jobs": 2, "description": "GPUs", "requests": None
    }  # fmt: skip
    names = [c["name"] for c in api.admin.get("/api/v1/worker-classes").json()]
    assert names == ["default", "gpu"]
    url = f"/api/v1/worker-classes/{gpu['id']}"
    r = api.admin.patch(url, json={"name": "cuda", "max_jobs": 4})
    assert r.json()["name"] == "cuda" and r.json()["max_jobs"] == 4
    assert api.admin.get(url).json()["name"] == "cuda"

    r = api.admin.post("/api/v1/worker-classes", json={"name": "cuda"})
    assert r.status_code == 409 and r.json()["field"] == "name"
    for bad, field in (
        ({"name": ""}, "name"),
        ({"name": "123"}, "name"),
        ({"name": "a\nb"}, "name"),
        ({"name": "x", "max_jobs": 0}, "max_jobs"),
        ({"name": "x", "max_jobs": 10**12}, "max_jobs"),
    ):
        r = api.admin.post("/api/v1/worker-classes", json=bad)
        assert r.status_code == 422 and r.json()["field"] == field, r.text

    r = api.admin.patch("/api/v1/worker-classes/1", json={"name": "other"})
    assert r.status_code == 409
    r = api.admin.delete("/api/v1/worker-classes/1")
    assert r.status_code == 409 and "default" in r.json()["message"]
    assert api.admin.patch("/api/v1/worker-classes/1", json={"max_jobs": 7}).json()["max_jobs"] == 7
    assert api.admin.delete(url).status_code == 204
    assert api.admin.get(url).status_code == 404


def test_class_delete_refused_while_in_use(api: Api) -> None:
    cls = api.admin.post("/api/v1/worker-classes", json={"name": "gpu"}).json()
    url = f"/api/v1/worker-classes/{cls['id']}"
    job = submit(api.admin, command="x", worker_class="gpu")
    r = api.admin.delete(url)
    assert r.status_code == 409 and "waiting" in r.json()["message"]

    worker_id = api.worker("g1", worker_class="gpu")
    api.balance()  # the worker takes the job
    r = api.admin.delete(url)
    assert r.status_code == 409 and "worker" in r.json()["message"]

    api.finish(job["id"])
    api.set_offline(worker_id)
    api.admin.delete(f"/api/v1/workers/{worker_id}")
    assert api.admin.delete(url).status_code == 204
    # The finished job is kept, filed under default.
    assert api.admin.get(f"/api/v1/jobs/{job['id']}").json()["worker_class"] == "default"
