"""Reading and acting on jobs: list filters and pages, visibility, kill, restart, delete."""

from __future__ import annotations

from apihelpers import Api, submit
from fastapi.testclient import TestClient

from jobbalancer import jobs


def test_list_filters(api: Api) -> None:
    api.worker("node-1", max_jobs=1)
    api.admin.post("/api/v1/worker-classes", json={"name": "gpu"})
    gpu_worker = api.worker("node-gpu", worker_class="gpu", max_jobs=1)
    _, key = api.user("alice")
    alice = api.client(key)
    running = submit(api.admin, command="FFmpeg -i a.mp4", labels={"project": "x"})
    waiting = submit(alice, command="sleep 1", labels={"project": "y", "tier": "a"})
    on_gpu = submit(alice, command="train 100%_done", worker_class="gpu")
    api.start(running["id"])

    def ids(query: str) -> list[int]:
        r = api.admin.get(f"/api/v1/jobs?{query}")
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["items"]]

    assert ids("") == [on_gpu["id"], waiting["id"], running["id"]]  # newest first
    assert ids("state=running") == [running["id"]]
    assert ids("state=waiting,assigned") == [on_gpu["id"], waiting["id"]]
    assert ids("state=running,%20WAITING") == [waiting["id"], running["id"]]
    assert ids("worker=node-gpu") == [on_gpu["id"]]
    assert ids(f"worker={gpu_worker}") == [on_gpu["id"]]
    assert ids("worker=nobody") == []
    assert ids("worker_class=gpu") == [on_gpu["id"]]
    assert ids("worker_class=1") == [waiting["id"], running["id"]]
    assert ids("user=alice") == [on_gpu["id"], waiting["id"]]
    assert ids("q=ffmpeg") == [running["id"]]  # case-insensitive
    assert ids("q=100%25_") == [on_gpu["id"]]  # % and _ are literal
    assert ids("q=%25") == [on_gpu["id"]]
    assert ids("label=project=y") == [waiting["id"]]
    assert ids("label=project=y&label=tier=b") == []
    assert ids("state=running&user=alice") == []

    r = api.admin.get("/api/v1/jobs?state=bogus")
    assert r.status_code == 422 and r.json()["field"] == "state"
    for bad in ("limit=0", "limit=501", "cursor=zzz", "label=noequals", "q=%00"):
        r = api.admin.get(f"/api/v1/jobs?{bad}")
        assert r.status_code == 422, bad
        assert r.json()["field"] == bad.split("=")[0], bad


def test_cursor_pages_through_everything_once(api: Api) -> None:
    created = api.admin.post(
        "/api/v1/jobs/batch", json={"jobs": [{"command": f"echo {i}"} for i in range(7)]}
    ).json()["jobs"]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        query = "limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = api.admin.get(f"/api/v1/jobs?{query}").json()
        seen += [j["id"] for j in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        submit(api.admin, command="new while paging")  # must not shift later pages
    assert pages == 3
    assert seen == sorted((j["id"] for j in created), reverse=True)


def test_submitter_sees_only_own_jobs(api: Api) -> None:
    _, alice_key = api.user("alice")
    _, bob_key = api.user("bob")
    alice, bob = api.client(alice_key), api.client(bob_key)
    mine = submit(alice, command="mine")
    theirs = submit(bob, command="theirs")
    assert [j["id"] for j in alice.get("/api/v1/jobs").json()["items"]] == [mine["id"]]
    assert [j["id"] for j in alice.get("/api/v1/jobs?user=bob").json()["items"]] == []
    for r in (
        alice.get(f"/api/v1/jobs/{theirs['id']}"),
        alice.get(f"/api/v1/jobs/{theirs['id']}/log"),
        alice.post(f"/api/v1/jobs/{theirs['id']}/kill"),
        alice.post(f"/api/v1/jobs/{theirs['id']}/restart"),
        alice.delete(f"/api/v1/jobs/{theirs['id']}"),
    ):
        assert r.status_code == 404
        assert r.json()["error"] == "not_found"
    assert alice.post(f"/api/v1/jobs/{mine['id']}/kill").status_code == 202
    # Viewers see everything but change nothing.
    _, viewer_key = api.user("vic", "viewer")
    viewer = api.client(viewer_key)
    assert len(viewer.get("/api/v1/jobs").json()["items"]) == 2
    assert viewer.post(f"/api/v1/jobs/{theirs['id']}/kill").status_code == 403


def test_kill(api: Api) -> None:
    api.worker("node-1", max_jobs=2)
    running = submit(api.admin, command="sleep 99")
    assigned = submit(api.admin, command="sleep 99")
    waiting = submit(api.admin, command="sleep 99")
    api.start(running["id"])

    r = api.admin.post(f"/api/v1/jobs/{waiting['id']}/kill")
    assert r.status_code == 202 and r.json()["state"] == "killed"
    r = api.admin.post(f"/api/v1/jobs/{running['id']}/kill")
    assert r.status_code == 202
    assert r.json()["state"] == "running" and r.json()["kill_requested"] is True
    r = api.admin.post(f"/api/v1/jobs/{assigned['id']}/kill")
    assert r.status_code == 202 and r.json()["state"] == "killed"

    r = api.admin.post(f"/api/v1/jobs/{waiting['id']}/kill")
    assert r.status_code == 409 and r.json()["error"] == "conflict"
    assert api.admin.post("/api/v1/jobs/999999/kill").status_code == 404
    assert api.admin.post("/api/v1/jobs/0/kill").status_code == 422
    assert api.admin.post("/api/v1/jobs/99999999999999999999/kill").status_code == 422


def test_restart_makes_a_new_job_that_starts_at_once(api: Api) -> None:
    api.worker("node-1", max_jobs=1)
    first = submit(api.admin, command="exit 3", params=["p"], labels={"k": "v"})
    api.finish(first["id"], jobs.State.FAILED, exit_code=3)
    _, op_key = api.user("olga", "operator")
    r = api.client(op_key).post(f"/api/v1/jobs/{first['id']}/restart")
    assert r.status_code == 201
    again = r.json()
    assert again["id"] != first["id"]
    assert again["restarted_from"] == first["id"]
    assert again["state"] == "assigned"  # the slot is free again: started at once
    assert (again["command"], again["params"], again["labels"]) == ("exit 3", ["p"], {"k": "v"})
    assert again["user"] == "admin"  # the owner's still, not the restarter's
    old = api.admin.get(f"/api/v1/jobs/{first['id']}").json()
    assert old["state"] == "failed" and old["exit_code"] == 3

    # need_realtime, and the slot is taken (by the restarted job): occupied, as on submit.
    rt = submit(api.admin, expect=409, command="x", need_realtime=True)["job"]
    r = api.admin.post(f"/api/v1/jobs/{rt['id']}/restart")
    assert r.status_code == 409
    assert r.json()["error"] == "occupied" and r.json()["job"]["restarted_from"] == rt["id"]


def test_delete(api: Api) -> None:
    api.worker("node-1", max_jobs=1)
    job = submit(api.admin, command="echo")
    api.start(job["id"])
    api.write_output(job["id"], ("stdout", b"hello\n"))
    r = api.admin.delete(f"/api/v1/jobs/{job['id']}")
    assert r.status_code == 409 and "kill it first" in r.json()["message"]
    api.finish(job["id"])
    assert api.admin.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert api.admin.get(f"/api/v1/jobs/{job['id']}").status_code == 404
    assert api.admin.get(f"/api/v1/jobs/{job['id']}/log").status_code == 404
    assert api.admin.delete(f"/api/v1/jobs/{job['id']}").status_code == 404


def test_list_by_ids_and_retries(api: Api) -> None:
    """`id` and `retry_of` (what `jobbalancer parallel` follows a run by): these jobs, and
    the next attempts of these jobs; a submitter still sees only their own."""
    api.worker("node-1", max_jobs=4)
    first, second, third = (submit(api.admin, command=f"c{i}", retries=1) for i in range(3))
    api.balance()
    api.finish(first["id"], jobs.State.FAILED, exit_code=3)  # → a retry, attempt 2

    def ids(query: str, client: TestClient | None = None) -> list[int]:
        r = (client or api.admin).get(f"/api/v1/jobs?{query}")
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["items"]]

    assert ids(f"id={third['id']},{first['id']}") == [third["id"], first["id"]]
    assert ids(f"id={second['id']}&state=done") == []
    retry = ids(f"retry_of={first['id']},{second['id']}")
    assert len(retry) == 1 and retry[0] > third["id"]
    assert api.admin.get(f"/api/v1/jobs/{retry[0]}").json()["retry_of"] == first["id"]
    _, key = api.user("alice")
    # not hers: neither the jobs nor their retries, named by id or by the job they retry
    alice = api.client(key)
    assert ids(f"id={first['id']},{retry[0]}", alice) == []
    assert ids(f"retry_of={first['id']}", alice) == []
    assert ids(f"retry_of={first['id']}&id={retry[0]}") == retry  # the filters combine
    many = ",".join(str(i) for i in range(1, 502))
    for bad in ("id=x", "id=1,,-2", f"id={many}", "retry_of=0", "id=%2C"):
        r = api.admin.get(f"/api/v1/jobs?{bad}")
        assert r.status_code == 422, bad
        assert r.json()["field"] == bad.split("=")[0], bad
