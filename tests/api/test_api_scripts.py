"""Stored scripts: CRUD and what a valid script is."""

from __future__ import annotations

from apihelpers import TIME, Api


def test_script_crud(api: Api) -> None:
    r = api.admin.post(
        "/api/v1/scripts",
        json={"name": "hello", "interpreter": "python3", "content": "print(1)\n"},
    )
    assert r.status_code == 201
    s = r.json()
    assert (s["name"], s["interpreter"], s["content"], s["description"]) == (
        "hello", "python3", "print(1)\n", ""
    )  # fmt: skip
    assert TIME.match(s["created_at"]) and TIME.match(s["updated_at"])
    url = f"/api/v1/scripts/{s['id']}"
    assert api.admin.get(url).json() == s
    assert [x["name"] for x in api.admin.get("/api/v1/scripts").json()] == ["hello"]

    r = api.admin.patch(url, json={"interpreter": "/usr/bin/python3", "description": "d"})
    assert r.status_code == 200
    assert r.json()["interpreter"] == "/usr/bin/python3" and r.json()["description"] == "d"
    assert r.json()["content"] == "print(1)\n"
    # A body with a #! line needs no interpreter.
    r = api.admin.patch(url, json={"interpreter": None, "content": "#!/bin/sh\necho hi\n"})
    assert r.status_code == 200 and r.json()["interpreter"] is None

    r = api.admin.post(
        "/api/v1/scripts", json={"name": "hello", "interpreter": "sh", "content": "x"}
    )
    assert r.status_code == 409 and r.json()["field"] == "name"

    _, key = api.user("viewer", "viewer")
    assert api.client(key).get(url).status_code == 200
    assert api.client(key).delete(url).status_code == 403
    assert api.admin.delete(url).status_code == 204
    assert api.admin.get(url).status_code == 404
    assert api.admin.delete(url).status_code == 404


def test_script_validation(api: Api) -> None:
    good = {"name": "s", "interpreter": "bash", "content": "echo"}
    for change, field in (
        ({"interpreter": "bash -e"}, "interpreter"),
        ({"interpreter": "../bin/sh"}, "interpreter"),
        ({"interpreter": "/usr/bin/env python3"}, "interpreter"),
        ({"interpreter": None}, "interpreter"),  # no #! line either
        ({"content": ""}, "content"),
        ({"content": "  \n"}, "content"),
        ({"content": None}, "content"),
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "42"}, "name"),
        ({"description": 5}, "description"),
    ):
        r = api.admin.post("/api/v1/scripts", json={**good, **change})
        assert r.status_code == 422, (change, r.text)
        assert r.json()["field"] == field, (change, r.json())
    for interpreter in ("php8.2", "node", "python3", "/opt/my-tools/php"):
        r = api.admin.post(
            "/api/v1/scripts", json={**good, "name": interpreter, "interpreter": interpreter}
        )
        assert r.status_code == 201, r.text
