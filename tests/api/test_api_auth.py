"""Who may call what: keys in either header, 401 without a valid one, 403 by role."""

from __future__ import annotations

from apihelpers import Api, submit


def test_missing_and_unknown_keys_are_401_json(api: Api) -> None:
    for client in (api.client(), api.client("jb_not-a-real-key"), api.client("garbage")):
        r = client.get("/api/v1/jobs")
        assert r.status_code == 401
        assert r.json()["error"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
    r = api.client().get("/api/v1/jobs", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert r.status_code == 401


def test_both_headers_are_accepted_and_some_paths_need_none(api: Api) -> None:
    assert api.admin.get("/api/v1/me").json()["name"] == "admin"
    r = api.client(**{"X-API-Key": api.admin_key}).get("/api/v1/me")
    assert r.status_code == 200
    assert r.json()["role"] == "admin"
    anon = api.client()
    r = anon.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": "ok"}
    assert anon.get("/openapi.json").status_code == 401
    assert api.admin.get("/openapi.json").json()["info"]["title"] == "jobbalancer"


def test_roles_are_enforced_with_403(api: Api) -> None:
    _, viewer_key = api.user("vera", "viewer")
    _, operator_key = api.user("otto", "operator")
    viewer, operator = api.client(viewer_key), api.client(operator_key)

    assert viewer.get("/api/v1/jobs").status_code == 200  # read-only is fine
    r = viewer.post("/api/v1/jobs", json={"command": "true"})
    assert r.status_code == 403
    assert r.json()["error"] == "forbidden"
    assert viewer.post("/api/v1/scripts", json={}).status_code == 403
    assert viewer.patch("/api/v1/settings", json={"kill_grace": 1}).status_code == 403

    assert operator.get("/api/v1/users").status_code == 403
    assert operator.post("/api/v1/worker-classes", json={"name": "gpu"}).status_code == 201
    submit(operator, command="true")

    # A disabled user's keys stop working at once.
    user_id, key = api.user("dora")
    assert api.client(key).get("/api/v1/me").status_code == 200
    assert api.admin.patch(f"/api/v1/users/{user_id}", json={"disabled": True}).status_code == 200
    assert api.client(key).get("/api/v1/me").status_code == 401
