"""Users and API keys: admins manage users; keys are shown once, work, and can be revoked."""

from __future__ import annotations

from apihelpers import TIME, Api


def test_user_crud(api: Api) -> None:
    api.admin.post("/api/v1/worker-classes", json={"name": "gpu"})
    r = api.admin.post(
        "/api/v1/users",
        json={
            "name": "carol",
            "role": "operator",
            "password": "long enough",
            "worker_classes": ["gpu", 1],
        },
    )
    assert r.status_code == 201, r.text
    carol = r.json()
    assert "password" not in carol and "password_hash" not in carol
    assert (carol["role"], carol["commands_allowed"], carol["disabled"]) == (
        "operator",
        True,
        False,
    )
    assert carol["worker_classes"] == ["gpu", "default"]
    assert TIME.match(carol["created_at"])
    url = f"/api/v1/users/{carol['id']}"
    assert api.admin.get(url).json() == carol
    assert [u["name"] for u in api.admin.get("/api/v1/users").json()] == ["admin", "carol"]

    r = api.admin.patch(
        url, json={"role": "viewer", "worker_classes": None, "commands_allowed": False}
    )
    assert r.status_code == 200
    assert (r.json()["role"], r.json()["worker_classes"], r.json()["commands_allowed"]) == (
        "viewer", None, False
    )  # fmt: skip
    r = api.admin.post("/api/v1/users", json={"name": "carol"})
    assert r.status_code == 409 and r.json()["field"] == "name"
    r = api.admin.patch(url, json={"name": "admin"})
    assert r.status_code == 409 and r.json()["field"] == "name"
    for bad, field in (
        ({"name": "x", "role": "god"}, "role"),
        ({"name": "x", "password": "short"}, "password"),
        ({"name": "x", "worker_classes": ["nope"]}, "worker_classes.0"),
        ({"name": ""}, "name"),
        ({"name": "x", "disabled": "perhaps"}, "disabled"),
    ):
        r = api.admin.post("/api/v1/users", json=bad)
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    assert api.admin.delete(url).status_code == 204
    assert api.admin.get(url).status_code == 404

    # The last enabled admin stays one: nobody could undo that.
    me = api.admin.get("/api/v1/me").json()
    url = f"/api/v1/users/{me['id']}"
    for change in ({"role": "viewer"}, {"disabled": True}):
        r = api.admin.patch(url, json=change)
        assert r.status_code == 409 and "last enabled admin" in r.json()["message"]
    assert api.admin.delete(url).status_code == 409
    api.user("second", "admin")
    assert api.admin.patch(url, json={"role": "operator"}).status_code == 200


def test_api_keys(api: Api) -> None:
    user_id, own_key = api.user("kim")
    kim = api.client(own_key)
    keys_url = f"/api/v1/users/{user_id}/api-keys"

    r = api.admin.post(keys_url, json={"name": "ci"})
    assert r.status_code == 201
    created = r.json()
    assert created["key"].startswith(created["prefix"]) and created["name"] == "ci"
    listed = api.admin.get(keys_url).json()
    assert [k["name"] for k in listed] == ["test", "ci"]
    assert all("key" not in k for k in listed)
    assert api.client(created["key"]).get("/api/v1/me").json()["name"] == "kim"

    # Kim manages her own keys, but nobody else's.
    assert kim.get(keys_url).status_code == 200
    assert kim.post(keys_url, json={}).status_code == 201
    assert kim.get("/api/v1/users/1/api-keys").status_code == 403
    assert kim.get("/api/v1/users").status_code == 403
    assert kim.get(f"/api/v1/users/{user_id}").json()["name"] == "kim"

    assert kim.delete(f"{keys_url}/{created['id']}").status_code == 204
    assert api.client(created["key"]).get("/api/v1/me").status_code == 401
    assert kim.delete(f"{keys_url}/{created['id']}").status_code == 404
    assert api.admin.get("/api/v1/users/9999/api-keys").status_code == 404
