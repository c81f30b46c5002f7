"""Settings, statistics, metrics, the legacy /addJob, and input that must never be a 5xx."""

from __future__ import annotations

import json
from typing import Any

from apihelpers import JSON, TIME, Api, submit

from jobbalancer import jobs


def test_settings(api: Api) -> None:
    _, key = api.user("vee", "viewer")
    current = api.client(key).get("/api/v1/settings").json()
    assert current["algorithm"] == "round_robin" and current["max_log_bytes"] == 10 * 1024 * 1024
    r = api.admin.patch("/api/v1/settings", json={"algorithm": "least_loaded", "kill_grace": 2})
    assert r.status_code == 200
    assert (r.json()["algorithm"], r.json()["kill_grace"]) == ("least_loaded", 2)
    assert api.admin.get("/api/v1/settings").json()["algorithm"] == "least_loaded"
    for bad, field in (
        ({"algorithm": "fastest"}, "algorithm"),
        ({"worker_timeout": 1}, "worker_timeout"),
        ({"retention_days": "x"}, "retention_days"),
        ({"nope": 1}, "nope"),
    ):
        r = api.admin.patch("/api/v1/settings", json=bad)
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    assert api.admin.patch("/api/v1/settings", json=[1]).status_code == 422


def test_stats(api: Api) -> None:
    worker_id = api.worker("node-1", max_jobs=3)
    done = submit(api.admin, command="a")
    submit(api.admin, command="b")
    api.finish(done["id"])
    s = api.admin.get("/api/v1/stats").json()
    assert s["jobs"]["done"] == 1 and s["jobs"]["assigned"] == 1 and s["jobs"]["running"] == 0
    assert s["slots"] == {"total": 3, "used": 1, "free": 2}
    [w] = s["workers"]
    assert (w["id"], w["active_jobs"], w["jobs"]) == (worker_id, 1, {"done": 1, "assigned": 1})
    minutes = s["finished_per_minute"]
    assert len(minutes) == 60 and all(TIME.match(m["minute"]) for m in minutes)
    assert sum(m["count"] for m in minutes) == 1 and minutes[-1]["count"] == 1


def test_metrics(api: Api) -> None:
    api.worker("node-1", max_jobs=2)
    submit(api.admin, command="a")
    assert api.client().get("/metrics").status_code == 401
    r = api.admin.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'jobbalancer_jobs{state="assigned"} 1.0' in r.text
    assert 'jobbalancer_workers{state="online"} 1.0' in r.text
    assert 'jobbalancer_slots{kind="free"} 1.0' in r.text
    assert 'jobbalancer_worker_active_jobs{worker="node-1"} 1.0' in r.text
    api.admin.patch("/api/v1/settings", json={"metrics_public": True})
    assert api.client().get("/metrics").status_code == 200


def test_add_job_legacy(api: Api) -> None:
    api.worker("node-1", max_jobs=1)
    script = api.admin.post(
        "/api/v1/scripts", json={"name": "s", "interpreter": "sh", "content": "echo"}
    ).json()
    anon = api.client()
    as_strings = {
        "scriptId": str(script["id"]),
        "params": ["a", 1],
        "watchdog": "10",
        "workerClassId": "1",
        "need_realtime": "false",
        "userName": "legacy",
        "apiKey": api.admin_key,
        "command": "",
    }
    r = anon.post("/addJob", json=as_strings)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["result"] is True and body["message"]
    job = api.admin.get(f"/api/v1/jobs/{body['jobId']}").json()
    assert job["script"]["id"] == script["id"] and job["watchdog"] == 10
    assert job["params"] == ["a", "1"] and job["worker_class"] == "default"

    as_numbers = {"command": "ls", "watchdog": 5, "workerClassId": 1, "need_realtime": 1}
    r = api.admin.post("/addJob", json=as_numbers)  # key in the header; no free slot left
    assert r.status_code == 409
    assert r.json()["result"] is False and r.json()["jobId"] > body["jobId"]
    assert api.admin.get(f"/api/v1/jobs/{r.json()['jobId']}").json()["state"] == "occupied"

    r = anon.post("/addJob", data={"command": "ls", "apiKey": api.admin_key, "watchdog": "3"})
    assert r.status_code == 200 and r.json()["result"] is True  # a form works too

    rejections: list[tuple[Any, int, str | None]] = [
        ({"command": "ls"}, 401, None),
        ({"command": "ls", "apiKey": "jb_wrong"}, 401, None),
        ({"apiKey": api.admin_key}, 422, "command"),
        ({"scriptId": "999", "apiKey": api.admin_key}, 422, "scriptId"),
        ({"command": "ls", "workerClassId": "7", "apiKey": api.admin_key}, 422, "workerClassId"),
        ({"command": "ls", "watchdog": "ten", "apiKey": api.admin_key}, 422, "watchdog"),
        (
            {"command": "ls", "need_realtime": "maybe", "apiKey": api.admin_key},
            422,
            "need_realtime",
        ),
        ({"command": "ls", "params": [{}], "apiKey": api.admin_key}, 422, "params"),
        ({"command": 5, "apiKey": api.admin_key}, 422, "command"),
        ([1, 2], 400, None),
    ]
    for payload, status, field in rejections:
        r = anon.post("/addJob", json=payload)
        assert r.status_code == status, (payload, r.text)
        assert r.json()["result"] is False and r.json()["message"]
        if field:
            assert r.json()["field"] == field, r.json()
    r = anon.post("/addJob", content=b"{not json", headers=JSON)
    assert r.status_code == 400 and r.json()["result"] is False


GARBAGE: list[bytes] = [
    b"",
    b"null",
    b"[]",
    b'"text"',
    b"12",
    b"{",
    b"\xff\xfe\x00",
    b"[" * 5000 + b"]" * 5000,
    json.dumps({"command": "ok", "priority": 10**400}).encode(),
    json.dumps({"command": "ok", "watchdog": 1e308}).encode(),
    b'{"command": "ok", "watchdog": NaN}',
    b'{"command": "ok", "watchdog": Infinity}',
    json.dumps({"command": "ünïcödé ✓ 🚀", "labels": {"k": "🚀"}}).encode(),
    json.dumps({"script": -1}).encode(),
    json.dumps({"script": True}).encode(),
    json.dumps({"jobs": "x"}).encode(),
    json.dumps({"command": {"nested": [1, 2]}}).encode(),
    json.dumps({"command": "ok", "env": []}).encode(),
    json.dumps({"command": "ok", "params": [None]}).encode(),
    json.dumps({"name": "\x00", "interpreter": "\x00", "content": "\x00"}).encode(),
    json.dumps({"name": "n", "max_jobs": "many", "role": 7, "password": ["x"]}).encode(),
]
ROUTES = [
    ("POST", "/api/v1/jobs"),
    ("POST", "/api/v1/jobs/batch"),
    ("POST", "/api/v1/scripts"),
    ("POST", "/api/v1/worker-classes"),
    ("POST", "/api/v1/users"),
    ("PATCH", "/api/v1/settings"),
    ("PATCH", "/api/v1/workers/1"),
    ("PATCH", "/api/v1/worker-classes/1"),
    ("POST", "/addJob"),
]


def test_garbage_is_never_a_5xx(api: Api) -> None:
    api.worker("node-1")
    admin = api.admin
    for method, url in ROUTES:
        for payload in GARBAGE:
            r = admin.request(method, url, content=payload, headers=JSON)
            assert r.status_code < 500, (method, url, payload[:80], r.text)
            assert isinstance(r.json(), dict), (url, payload[:80])
    # 10 MB: under the body limit, over every field's; parsed, refused, never stored.
    big = json.dumps({"command": "x" * 10_000_000, "content": "x" * 10_000_000}).encode()
    for url in ("/api/v1/jobs", "/api/v1/scripts", "/addJob"):
        r = admin.post(url, content=big, headers=JSON)
        assert 400 <= r.status_code < 500, (url, r.text[:200])
    for url in (
        "/api/v1/jobs/abc",
        "/api/v1/jobs/-1",
        "/api/v1/jobs/1%00",
        "/api/v1/jobs?limit=abc",
        "/api/v1/jobs?worker=%00",
        "/api/v1/jobs?user=%F0%9F%9A%80",
        "/api/v1/jobs?worker_class=99999999999999999999",
        "/api/v1/jobs?worker=%C2%B2",
        "/api/v1/jobs?cursor=%00",
        "/api/v1/jobs/1/log?offset=99999999999999999999999",
        "/api/v1/users/99999999999",
        "/nowhere",
    ):
        r = admin.get(url)
        assert r.status_code < 500, (url, r.text)
        assert r.status_code == 200 or "error" in r.json(), (url, r.text)
    assert admin.delete("/api/v1/settings").status_code == 405
    # Bodies over the limit are refused as JSON, declared or not.
    r = admin.post("/api/v1/jobs", content=b"x" * (21 * 1024 * 1024), headers=JSON)
    assert r.status_code == 413 and r.json()["error"] == "too_large"

    def chunks() -> Any:
        for _ in range(22):
            yield b" " * (1024 * 1024)

    r = admin.post("/api/v1/jobs", content=chunks(), headers=JSON)
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    # Whatever happened, the state is sane and the server answers.
    states = {j["state"] for j in admin.get("/api/v1/jobs?limit=500").json()["items"]}
    assert states <= {s.value for s in jobs.State}
